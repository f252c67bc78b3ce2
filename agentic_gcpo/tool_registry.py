"""The tool registry: a tool is a typed Python function with a docstring.

    from agentic_gcpo.tool_registry import tool

    @tool
    def add(a: int, b: int) -> str:
        '''Add two integers.'''
        return str(a + b)

The JSON schema the model sees comes from the signature (pydantic), the description from the
docstring's first paragraph. Arguments are validated before the call; a validation error, an
exception inside the tool or a non-string result becomes an observation for the model, never an
exception in the trainer. A parameter annotated `ToolContext` is filled in by the agent loop
(sandbox and session of the trajectory) and is hidden from the schema.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

BUILTIN_MODULES = ("agentic_gcpo.builtin_tools.python_tool",)
ENTRY_POINT_GROUP = "agentic_gcpo.tools"


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
    status: str  # "ok" | "tool_error" | "invalid_args" | "unknown_tool"
    duration_s: float


@dataclass
class Tool:
    name: str
    description: str
    fn: Callable[..., Any]
    args_model: type[BaseModel]
    context_param: str | None
    source: str

    def schema(self) -> dict[str, Any]:
        """OpenAI/Hermes-style function schema, the shape chat templates' `tools=` expect."""
        params = self.args_model.model_json_schema()
        params.pop("title", None)
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": params}}

    def call(self, arguments: Any, ctx: ToolContext) -> ToolOutcome:
        t0 = time.perf_counter()
        if not isinstance(arguments, dict):
            return ToolOutcome(
                f"Error: arguments for '{self.name}' must be a JSON object, got {type(arguments).__name__}",
                "invalid_args",
                0.0,
            )
        try:
            args = self.args_model.model_validate(arguments)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, x['loc'])) or '(args)'}: {x['msg']}" for x in e.errors())
            return ToolOutcome(f"Error: invalid arguments for '{self.name}': {problems}", "invalid_args", 0.0)
        kwargs = {k: getattr(args, k) for k in type(args).model_fields}
        if self.context_param:
            kwargs[self.context_param] = ctx
        try:
            result = self.fn(**kwargs)
        except Exception as e:  # a tool bug is the model's observation, not our crash
            return ToolOutcome(f"Error: {type(e).__name__}: {e}", "tool_error", time.perf_counter() - t0)
        dt = time.perf_counter() - t0
        if isinstance(result, ToolResult):
            return ToolOutcome(result.text, "tool_error" if result.is_error else "ok", dt)
        return ToolOutcome(result if isinstance(result, str) else repr(result), "ok", dt)


_REGISTRY: dict[str, Tool] = {}


def _first_paragraph(doc: str | None) -> str:
    return inspect.cleandoc(doc or "").split("\n\n")[0].replace("\n", " ").strip()


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Register `fn` as a tool (usable as `@tool` or `@tool(name="...")`)."""

    def register(f: Callable[..., Any]) -> Callable[..., Any]:
        tool_name = name or f.__name__
        sig = inspect.signature(f)
        try:
            hints = inspect.get_annotations(f, eval_str=True)
        except Exception:
            hints = dict(getattr(f, "__annotations__", {}))
        fields: dict[str, Any] = {}
        ctx_param = None
        for pname, p in sig.parameters.items():
            ann = hints.get(pname, Any)
            if ann is ToolContext:
                ctx_param = pname
                continue
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"tool '{tool_name}': *args/**kwargs cannot be described to a model")
            fields[pname] = (ann, ... if p.default is p.empty else p.default)
        model = create_model(f"{tool_name}_args", __config__=ConfigDict(extra="forbid"), **fields)
        t = Tool(tool_name, _first_paragraph(f.__doc__), f, model, ctx_param, f"{f.__module__}.{f.__qualname__}")
        old = _REGISTRY.get(tool_name)
        if old is not None and old.source != t.source:
            raise ValueError(f"tool name '{tool_name}' is already registered by {old.source}")
        _REGISTRY[tool_name] = t
        return f

    return register(fn) if fn is not None else register


def load_tool_module(spec: str) -> None:
    """Import a module path ('pkg.mod') or a .py file so that its @tool functions register."""
    if spec.endswith(".py") or "/" in spec:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"tool module file '{spec}' not found")
        mod_name = f"agentic_gcpo_user_tools_{abs(hash(str(path.resolve())))}"
        if mod_name in sys.modules:
            return
        s = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(s)  # type: ignore[arg-type]
        sys.modules[mod_name] = module
        s.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        importlib.import_module(spec)


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def available_tools(extra_modules: list[str] | tuple[str, ...] = ()) -> dict[str, Tool]:
    for m in BUILTIN_MODULES:
        importlib.import_module(m)
    _load_entry_points()
    for m in extra_modules:
        load_tool_module(m)
    return dict(_REGISTRY)


def get_tools(names: list[str], extra_modules: list[str] | tuple[str, ...] = ()) -> dict[str, Tool]:
    """Resolve the tool names a config asks for; unknown names list the known ones."""
    known = available_tools(extra_modules)
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"unknown tool(s) {missing}; known tools: {', '.join(sorted(known)) or '(none)'}")
    return {n: known[n] for n in names}
