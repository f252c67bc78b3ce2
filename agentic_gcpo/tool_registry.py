"""The tool registry: a tool is a typed Python function (or a class) with a docstring.

    from agentic_gcpo.tool_registry import tool

    @tool
    def add(a: int, b: int = 0) -> int:
        '''Add two integers.

        Args:
            a: The first summand.
            b: The second summand.
        '''
        return a + b

The JSON schema the model sees comes from the signature (pydantic); the tool's description is the
docstring text before its sections, and each parameter's description comes from the `Args:`
(Google) or `Parameters` (numpy) section. Arguments are validated before the call. Everything that
can go wrong — invalid arguments, an exception, a hang, megabytes of output, an unprintable result —
becomes an observation for the model and a status for the metrics, never an exception here.

A parameter annotated `ToolContext` is filled in by the agent loop (the trajectory's sandbox and
session) and is hidden from the schema. Stateful tools are classes: `@tool` instantiates the class
once, the schema comes from `__call__`, and per-trajectory state lives in a `SessionState` keyed by
`ctx.session` (concurrent trajectories call the same instance from different threads).
"""

from __future__ import annotations

import enum
import hashlib
import importlib
import importlib.util
import inspect
import json
import re
import sys
import threading
import time
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from agentic_gcpo.sandbox import truncate_middle
from agentic_gcpo.tool_schema import args_model, parse_docstring, tidy_schema

BUILTIN_MODULES = (
    "agentic_gcpo.builtin_tools.python_tool",
    "agentic_gcpo.builtin_tools.sympy_tools",
    "agentic_gcpo.builtin_tools.calculator",
)
ENTRY_POINT_GROUP = "agentic_gcpo.tools"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_OUTPUT_CHARS = 4000
# Threads of timed-out calls cannot be killed; past this many still running, a tool is refused
# rather than letting a hanging tool eat threads and memory for the rest of the run.
MAX_HUNG_CALLS = 8
STATUSES = ("ok", "tool_error", "invalid_args")  # what Tool.call reports
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")  # what OpenAI-style function schemas allow


class _Unset(enum.Enum):
    DEFAULT = "default"


DEFAULT = _Unset.DEFAULT  # "use the run's default timeout" (as opposed to None: no timeout)


class ToolLoadError(ValueError):
    """A tool module or entry point could not be imported or registered; the message says why."""


@dataclass
class ToolContext:
    """What a tool may use besides its arguments: the trajectory's sandbox session."""

    session: str
    sandbox: Any = None


@dataclass
class ToolResult:
    """Optional richer return value: the text plus whether it reports a failure (for metrics)."""

    text: str
    is_error: bool = False


@dataclass
class ToolOutcome:
    observation: str
    status: str  # "ok" | "tool_error" | "invalid_args" (the agent loop adds parser statuses)
    duration_s: float


T = TypeVar("T")


class SessionState(Generic[T]):
    """Per-trajectory state for class tools: `self.state[ctx.session]` (created on first use).

    Thread-safe. Bounded: the least recently used sessions are dropped beyond `max_sessions`, so a
    long run never accumulates the state of finished trajectories even if nobody calls `pop`.
    """

    def __init__(self, factory: Callable[[], T], max_sessions: int = 1024) -> None:
        self._factory, self._max = factory, max_sessions
        self._data: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()

    def __getitem__(self, session: str) -> T:
        with self._lock:
            if session not in self._data:
                self._data[session] = self._factory()
                while len(self._data) > self._max:
                    self._data.popitem(last=False)
            self._data.move_to_end(session)
            return self._data[session]

    def pop(self, session: str) -> None:
        with self._lock:
            self._data.pop(session, None)

    def __len__(self) -> int:
        return len(self._data)


@dataclass
class Tool:
    name: str
    description: str
    fn: Callable[..., Any]
    args_model: type[BaseModel]
    context_param: str | None
    source: str
    timeout_s: float | None | _Unset = DEFAULT  # None: the tool bounds itself (sandbox-backed)
    max_output_chars: int | None = None  # None: DEFAULT_MAX_OUTPUT_CHARS
    target: Any = None  # what was decorated: the function, or the class instance
    _hung: list[threading.Thread] = field(default_factory=list, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def schema(self) -> dict[str, Any]:
        """OpenAI/Hermes-style function schema, the shape chat templates' `tools=` expect."""
        params = tidy_schema(self.args_model.model_json_schema())
        # Extra arguments are still refused (with an observation saying so); the flag itself only
        # costs prompt tokens, which a small model's context can least afford.
        params.pop("additionalProperties", None)
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": params},
        }

    def usage(self) -> str:
        """A Python-like signature for error messages: `evaluate(expression, digits=15)`."""
        parts = []
        for n, f in self.args_model.model_fields.items():
            parts.append(
                n
                if f.is_required()
                else f"{n}={json.dumps(f.get_default(call_default_factory=True), default=str)}"
            )
        return f"{self.name}({', '.join(parts)})"

    def close_session(self, session: str) -> None:
        """Forget a finished trajectory's state (calls the class tool's `close_session` if any)."""
        hook = getattr(self.target, "close_session", None)
        if callable(hook) and not inspect.isfunction(self.target):
            hook(session)

    def call(self, arguments: Any, ctx: ToolContext) -> ToolOutcome:
        t0 = time.perf_counter()
        if not isinstance(arguments, dict):
            return ToolOutcome(
                f"Error: arguments for '{self.name}' must be a JSON object, got {type(arguments).__name__}. "
                f"Usage: {self.usage()}",
                "invalid_args",
                0.0,
            )
        try:
            args = self.args_model.model_validate(arguments)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(map(str, x['loc'])) or '(args)'}: {x['msg']}" for x in e.errors()
            )
            return ToolOutcome(
                f"Error: invalid arguments for '{self.name}': {problems}. Usage: {self.usage()}",
                "invalid_args",
                0.0,
            )
        except Exception as e:  # a user validator that raises something pydantic does not wrap
            return ToolOutcome(
                f"Error: invalid arguments for '{self.name}': {_describe(e)}", "invalid_args", 0.0
            )
        # getattr, not model_dump: nested pydantic models reach the tool as model instances.
        kwargs = {k: getattr(args, k) for k in type(args).model_fields}
        if self.context_param:
            kwargs[self.context_param] = ctx
        ok, value = self._invoke(kwargs)
        if ok:
            text, is_error = _to_text(value)
        else:
            text, is_error = value, True
        limit = self.max_output_chars or DEFAULT_MAX_OUTPUT_CHARS
        text = truncate_middle(text, limit)[0]
        # Lone surrogates would make the tokenizer raise; the model sees U+FFFD-like '?' instead.
        text = text.encode("utf-8", "replace").decode("utf-8")
        return ToolOutcome(text, "tool_error" if is_error else "ok", time.perf_counter() - t0)

    def _invoke(self, kwargs: dict[str, Any]) -> tuple[bool, Any]:
        """(True, result) or (False, error text). Runs under the wall timeout unless it is None."""
        timeout = DEFAULT_TIMEOUT_S if self.timeout_s is DEFAULT else self.timeout_s
        if timeout is None:
            try:
                return True, self.fn(**kwargs)
            except (Exception, SystemExit) as e:  # a tool calling sys.exit must not end the run
                return False, _describe(e)
        with self._lock:  # tool calls of different trajectories run in different threads
            self._hung[:] = [t for t in self._hung if t.is_alive()]
            hung = len(self._hung)
        if hung >= MAX_HUNG_CALLS:
            return False, f"Error: tool '{self.name}' is unavailable: {hung} earlier calls are still hung"
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = self.fn(**kwargs)
            except BaseException as e:  # noqa: BLE001 - reported to the model below
                box["error"] = e
            finally:
                done.set()

        # A daemon thread, not an executor: a call that never returns must not block interpreter
        # exit, and Python threads cannot be killed, so the thread is abandoned on timeout.
        th = threading.Thread(target=run, name=f"tool-{self.name}", daemon=True)
        th.start()
        if not done.wait(timeout):
            with self._lock:
                self._hung.append(th)
            return False, f"Error: tool '{self.name}' timed out after {timeout:g} s"
        if "error" in box:
            return False, _describe(box["error"])
        return True, box.get("value")


def _describe(e: BaseException) -> str:
    try:
        msg = str(e)
    except Exception:
        msg = "<unprintable error>"
    return f"Error: {type(e).__name__}: {msg}".rstrip(": ")


def _to_text(value: Any) -> tuple[str, bool]:
    """A tool's return value as observation text: JSON for containers, "(no output)" for None."""
    is_error = False
    if isinstance(value, ToolResult):
        value, is_error = value.text, value.is_error
    try:
        if value is None:
            text = ""
        elif isinstance(value, str):
            text = value
        elif isinstance(value, BaseModel):
            text = value.model_dump_json()
        elif isinstance(value, (dict, list, tuple)):
            text = json.dumps(value, ensure_ascii=False, default=str)
        elif isinstance(value, bytes):
            text = value.decode("utf-8", "replace")
        else:
            text = str(value)
    except Exception as e:  # circular containers, a __str__ that raises, a 10**10000 int ...
        return (
            f"Error: the tool returned a {type(value).__name__} that cannot be shown as text ({_describe(e)})",
            True,
        )
    return (text if text.strip() else "(no output)"), is_error


# --- registration -----------------------------------------------------------------------------
_REGISTRY: dict[str, Tool] = {}
_FILE_MODULES: dict[str, str] = {}  # module name given to a .py file -> the path, for `source`
_LOADED_EPS: set[tuple[str, str]] = set()
_EP_PROBLEMS: list[str] = []


def _snake(name: str) -> str:
    """Notepad -> notepad, UnitConverter -> unit_converter, HTTPFetch -> http_fetch."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _make_tool(
    target: Any, name: str | None, timeout_s: float | None | _Unset, max_output_chars: int | None
) -> Tool:
    if inspect.isclass(target):
        if not any("__call__" in vars(k) for k in target.__mro__[:-1]):
            raise TypeError(f"tool class {target.__qualname__} needs a __call__ method")
        cls, instance = target, target()
        fn: Callable[..., Any] = instance.__call__
    elif inspect.isfunction(target) or inspect.ismethod(target):
        cls, instance, fn = None, target, target
    elif callable(target):
        cls, instance, fn = type(target), target, target.__call__
    else:
        raise TypeError(f"@tool needs a function, a class or a callable object, got {type(target).__name__}")
    default_name = _snake(cls.__name__) if cls is not None else target.__name__
    tool_name = name or default_name
    if not _NAME_RE.match(tool_name):
        raise ValueError(f"tool name '{tool_name}' must match {_NAME_RE.pattern}")
    description, docs = parse_docstring((cls.__doc__ if cls is not None else None) or fn.__doc__)
    if cls is not None:  # __call__'s own Args section documents the parameters too
        docs = {**docs, **parse_docstring(fn.__doc__)[1]}
        description = description or parse_docstring(fn.__doc__)[0]
    model, ctx_param = args_model(fn, tool_name, docs, ToolContext)
    owner = cls if cls is not None else target
    module = getattr(owner, "__module__", "?")
    where = _FILE_MODULES.get(module, module)
    source = f"{where}:{getattr(owner, '__qualname__', tool_name)}"
    return Tool(tool_name, description, fn, model, ctx_param, source, timeout_s, max_output_chars, instance)


def tool(
    obj: Any = None,
    *,
    name: str | None = None,
    timeout_s: float | None | _Unset = DEFAULT,
    max_output_chars: int | None = None,
) -> Any:
    """Register a function, a class (instantiated once) or a callable object as a tool.

    `@tool`, `@tool(name="...")`, `tool(MyTool(config), name="...")`. `timeout_s`: per-call wall
    limit (default: the run's default, DEFAULT_TIMEOUT_S); None for tools that bound themselves,
    like the sandbox-backed ones. `max_output_chars`: longer observations keep head and tail.
    """

    def register(target: Any) -> Any:
        t = _make_tool(target, name, timeout_s, max_output_chars)
        old = _REGISTRY.get(t.name)
        if old is not None and old.source != t.source:
            raise ValueError(
                f"tool name '{t.name}' is already registered by {old.source} (now from {t.source}); "
                f"give one of them another name with @tool(name=...)"
            )
        _REGISTRY[t.name] = t
        return target

    return register(obj) if obj is not None else register


def load_tool_module(spec: str) -> None:
    """Import a module path ('pkg.mod') or a .py file so that its @tool functions register."""
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"tool module file '{spec}' not found")
        resolved = str(path.resolve())
        mod_name = "agentic_gcpo_user_tools_" + hashlib.sha1(resolved.encode()).hexdigest()[:12]
        if mod_name in sys.modules:
            return
        s = importlib.util.spec_from_file_location(mod_name, path)
        if s is None or s.loader is None:
            raise ToolLoadError(f"tool module file '{spec}' cannot be imported as Python")
        module = importlib.util.module_from_spec(s)
        sys.modules[mod_name] = module
        _FILE_MODULES[mod_name] = spec
        try:
            s.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(mod_name, None)
            raise ToolLoadError(f"importing tool module file '{spec}' failed: {type(e).__name__}: {e}") from e
    else:
        try:
            importlib.import_module(spec)
        except ModuleNotFoundError as e:
            raise ToolLoadError(
                f"tool module '{spec}' not found ({e}); give an importable module path or a path to a .py file"
            ) from e
        except Exception as e:
            raise ToolLoadError(f"importing tool module '{spec}' failed: {type(e).__name__}: {e}") from e


def _load_entry_points() -> None:
    """Packages declare `[project.entry-points."agentic_gcpo.tools"] name = "pkg.module[:obj]"`.

    A module entry registers its @tool functions on import; an object entry (a plain function or
    class) is registered under the entry point's name. A broken plugin warns instead of breaking
    every run; its error is repeated when a tool name turns out to be unknown.
    """
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        key = (ep.name, ep.value)
        if key in _LOADED_EPS:
            continue
        _LOADED_EPS.add(key)
        try:
            obj = ep.load()
            if not isinstance(obj, types.ModuleType) and not any(
                t.target is obj or t.fn is obj for t in _REGISTRY.values()
            ):
                tool(obj, name=ep.name)
        except Exception as e:
            msg = f"tool entry point '{ep.name} = {ep.value}' failed: {type(e).__name__}: {e}"
            _EP_PROBLEMS.append(msg)
            warnings.warn(msg, stacklevel=2)


def available_tools(extra_modules: list[str] | tuple[str, ...] = ()) -> dict[str, Tool]:
    for m in BUILTIN_MODULES:
        importlib.import_module(m)
    _load_entry_points()
    for m in extra_modules:
        load_tool_module(m)
    return dict(_REGISTRY)


def get_tools(
    names: list[str],
    extra_modules: list[str] | tuple[str, ...] = (),
    *,
    timeout_s: float | None = None,
    max_output_chars: int | None = None,
) -> dict[str, Tool]:
    """Resolve the tool names a config asks for; unknown names list the known ones.

    `timeout_s` / `max_output_chars` replace the defaults for this run's copies of the tools (a
    tool that set its own values keeps them).
    """
    known = available_tools(extra_modules)
    missing = [n for n in names if n not in known]
    if missing:
        hint = "".join(f"\n  ({p})" for p in _EP_PROBLEMS)
        raise ValueError(
            f"unknown tool(s) {missing}; known tools: {', '.join(sorted(known)) or '(none)'}{hint}"
        )
    out = {}
    for n in names:
        t = known[n]
        if timeout_s is not None and t.timeout_s is DEFAULT:
            t = replace(t, timeout_s=timeout_s)
        if max_output_chars is not None and t.max_output_chars is None:
            t = replace(t, max_output_chars=max_output_chars)
        out[n] = t
    return out
