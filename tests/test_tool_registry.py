"""Tool registry: schema derivation, argument validation, bad tool behaviour, module/entry-point loading.

Every tool here is registered for real through `@tool` (names start with `t_` so they cannot clash
with built-in or other tests' tools); nothing in the registry is mocked.
"""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import time
import warnings
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from agentic_gcpo import tool_registry as reg
from agentic_gcpo.tool_registry import (
    SessionState,
    ToolContext,
    ToolLoadError,
    ToolResult,
    available_tools,
    get_tools,
    load_tool_module,
    parse_docstring,
    tool,
)

CTX = ToolContext(session="s")


def _params(name: str) -> dict:
    return available_tools()[name].schema()["function"]["parameters"]


# --- schema derivation ------------------------------------------------------------------------
class Point(BaseModel):
    x: float
    y: float = 0.0


class Polygon(BaseModel):
    vertices: list[Point]
    label: str | None = None


class Tree(BaseModel):
    value: int
    children: list[Tree] = []


@tool
def t_defaults(a: int, b: float = 2.5, c: str = "hi", flag: bool = False) -> str:
    """Defaults become JSON defaults; parameters without one are required."""
    return f"{a} {b} {c} {flag}"


@tool
def t_optional(n: int | None = None, m: int | None = None, ctx: ToolContext | None = None) -> str:
    """Optional values; `ToolContext | None` is filled in like ToolContext."""
    return f"{n} {m} {ctx.session if ctx else '-'}"


@tool
def t_literal(mode: Literal["fast", "exact"], level: Literal[1, 2, 3] = 1) -> str:
    """Literal choices become enums."""
    return f"{mode}{level}"


@tool
def t_lists(xs: list[int], tags: list[str] | None = None, grid: list[list[float]] | None = None) -> int:
    """Lists and nested lists."""
    return sum(xs)


@tool
def t_nested(poly: Polygon, origin: Point | None = None) -> float:
    """Nested pydantic models arrive as model instances."""
    assert isinstance(poly.vertices[0], Point)
    return sum(v.x for v in poly.vertices)


@tool
def t_tree(tree: Tree) -> int:
    """A recursive model."""
    return tree.value


@tool
def t_google(expression: str, ctx: ToolContext, digits: int = 10) -> str:
    """Evaluate something.

    A second paragraph of description.

    Args:
        expression: The expression to evaluate,
            continued on a second line.
        digits (int): How many digits.

    Returns:
        The value.
    """
    return expression


@tool
def t_numpy(first: str, second: int = 3) -> str:
    """Numpy-style docs.

    Parameters
    ----------
    first : str
        The first one.
    second : int, optional
        The second one.

    Returns
    -------
    str
    """
    return first


@tool
def t_annotated(n: Annotated[int, Field(ge=0, le=9, description="Own description wins.")]) -> int:
    """Annotated fields keep their constraints.

    Args:
        n: Docstring description loses.
    """
    return n


def test_defaults_and_required():
    p = _params("t_defaults")
    assert p["required"] == ["a"]
    assert p["properties"]["a"] == {"type": "integer"}
    assert p["properties"]["b"] == {"type": "number", "default": 2.5}
    assert p["properties"]["c"]["default"] == "hi" and p["properties"]["flag"]["default"] is False
    assert "additionalProperties" not in p  # extras are refused at call time, see below


def test_optional_is_nullable_and_context_hidden():
    p = _params("t_optional")
    assert "ctx" not in p["properties"] and "required" not in p
    assert {"type": "null"} in p["properties"]["n"]["anyOf"] and p["properties"]["n"]["default"] is None


def test_optional_toolcontext_is_filled_in():
    assert available_tools()["t_optional"].call({"n": 1}, CTX).observation == "1 None s"


def test_literal_becomes_enum():
    p = _params("t_literal")
    assert p["properties"]["mode"]["enum"] == ["fast", "exact"]
    assert p["properties"]["level"]["enum"] == [1, 2, 3]
    assert available_tools()["t_literal"].call({"mode": "slow"}, CTX).status == "invalid_args"


def test_lists():
    p = _params("t_lists")
    assert p["properties"]["xs"] == {"type": "array", "items": {"type": "integer"}}
    grid = p["properties"]["grid"]["anyOf"][0]
    assert grid == {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
    assert available_tools()["t_lists"].call({"xs": [1, 2, 3]}, CTX).observation == "6"


def test_nested_models_are_inlined_without_titles():
    p = _params("t_nested")
    text = json.dumps(p)
    assert "$ref" not in text and "$defs" not in text and '"title"' not in text
    vertex = p["properties"]["poly"]["properties"]["vertices"]["items"]
    assert vertex["properties"]["x"] == {"type": "number"} and vertex["required"] == ["x"]
    out = available_tools()["t_nested"].call({"poly": {"vertices": [{"x": 1}, {"x": 2.5, "y": 1}]}}, CTX)
    assert (out.status, out.observation) == ("ok", "3.5")


def test_recursive_model_keeps_its_definition():
    p = _params("t_tree")
    assert "Tree" in p["$defs"] and "$ref" in json.dumps(p["properties"])
    assert (
        available_tools()["t_tree"].call({"tree": {"value": 4, "children": [{"value": 1}]}}, CTX).observation
        == "4"
    )


def test_google_docstring_descriptions():
    f = available_tools()["t_google"].schema()["function"]
    assert f["description"] == "Evaluate something. A second paragraph of description."
    props = f["parameters"]["properties"]
    assert props["expression"]["description"] == "The expression to evaluate, continued on a second line."
    assert props["digits"]["description"] == "How many digits."
    assert "ctx" not in props


def test_numpy_docstring_descriptions():
    f = available_tools()["t_numpy"].schema()["function"]
    assert f["description"] == "Numpy-style docs."
    assert f["parameters"]["properties"]["first"]["description"] == "The first one."
    assert f["parameters"]["properties"]["second"]["description"] == "The second one."


def test_annotated_field_keeps_constraints_and_own_description():
    n = _params("t_annotated")["properties"]["n"]
    assert n == {"type": "integer", "minimum": 0, "maximum": 9, "description": "Own description wins."}
    assert available_tools()["t_annotated"].call({"n": 12}, CTX).status == "invalid_args"


def test_parse_docstring_without_sections():
    assert parse_docstring("Just one line.") == ("Just one line.", {})
    assert parse_docstring(None) == ("", {})


def test_bad_signatures_are_refused_at_registration():
    def star(*args: int) -> int:
        return 0

    def private(_x: int) -> int:
        return 0

    with pytest.raises(TypeError, match="ordinary named parameter"):
        tool(star, name="t_star")
    with pytest.raises(TypeError, match="starts with '_'"):
        tool(private, name="t_private")
    with pytest.raises(ValueError, match="must match"):
        tool(lambda x: x, name="bad name!")


def test_name_collision_names_both_sources():
    def calculator(expression: str) -> str:
        return expression

    with pytest.raises(ValueError, match="already registered by agentic_gcpo.builtin_tools.calculator"):
        tool(calculator)


# --- stateful class tools ---------------------------------------------------------------------
@tool
class TCounter:
    """Count calls per trajectory."""

    def __init__(self) -> None:
        self.counts: SessionState[list[int]] = SessionState(lambda: [0], max_sessions=2)

    def __call__(self, ctx: ToolContext, step: int = 1) -> int:
        """
        Args:
            step: How much to add.
        """
        c = self.counts[ctx.session]
        c[0] += step
        return c[0]

    def close_session(self, session: str) -> None:
        self.counts.pop(session)


def test_class_tool_state_is_per_session():
    t = available_tools()["t_counter"]
    assert t.schema()["function"]["description"] == "Count calls per trajectory."
    assert t.schema()["function"]["parameters"]["properties"]["step"]["description"] == "How much to add."
    a, b = ToolContext("a"), ToolContext("b")
    assert [t.call({}, a).observation, t.call({"step": 5}, a).observation, t.call({}, b).observation] == [
        "1",
        "6",
        "1",
    ]
    t.close_session("a")
    assert t.call({}, a).observation == "1"
    t.call({}, ToolContext("c"))  # max_sessions=2: the least recently used ("b") is dropped
    assert t.call({}, b).observation == "1"


# --- validation and bad tools -----------------------------------------------------------------
RELEASE = threading.Event()


@tool(timeout_s=0.3)
def t_hang() -> str:
    """Never returns on its own."""
    RELEASE.wait(60)
    return "late"


@tool
def t_bad(kind: str) -> object:
    """Misbehaves in the way asked for."""
    if kind == "raise":
        raise RuntimeError("boom")
    if kind == "exit":
        sys.exit(3)
    if kind == "dict":
        return {"a": 1, "b": [1, 2]}
    if kind == "none":
        return None
    if kind == "int":
        return 42
    if kind == "model":
        return Point(x=1)
    if kind == "unprintable":

        class Weird:
            def __str__(self) -> str:
                raise ValueError("no")

        return Weird()
    if kind == "surrogate":
        return "a\ud800b"
    if kind == "megabytes":
        return "x" * 3_000_000 + "THE END"
    if kind == "error_result":
        return ToolResult("Error: it went wrong", is_error=True)
    return kind


@pytest.mark.parametrize(
    "args,fragment",
    [
        ({}, "kind: Field required"),
        ({"kind": "x", "extra": 1}, "extra: Extra inputs are not permitted"),
        ({"kind": ["not", "a", "string"]}, "kind: Input should be a valid string"),
    ],
)
def test_invalid_args_become_observations(args, fragment):
    out = available_tools()["t_bad"].call(args, CTX)
    assert out.status == "invalid_args"
    assert fragment in out.observation and "Usage: t_bad(kind)" in out.observation


@pytest.mark.parametrize("arguments", [None, 5, "kind", ["kind"]])
def test_non_object_arguments(arguments):
    out = available_tools()["t_bad"].call(arguments, CTX)
    assert out.status == "invalid_args" and "must be a JSON object" in out.observation


@pytest.mark.parametrize(
    "kind,status,observation",
    [
        ("raise", "tool_error", "Error: RuntimeError: boom"),
        ("exit", "tool_error", "Error: SystemExit: 3"),
        ("dict", "ok", '{"a": 1, "b": [1, 2]}'),
        ("none", "ok", "(no output)"),
        ("int", "ok", "42"),
        ("model", "ok", '{"x":1.0,"y":0.0}'),
        ("surrogate", "ok", "a?b"),
        ("error_result", "tool_error", "Error: it went wrong"),
    ],
)
def test_bad_return_values_and_exceptions(kind, status, observation):
    out = available_tools()["t_bad"].call({"kind": kind}, CTX)
    assert (out.status, out.observation) == (status, observation)


def test_unprintable_result_is_a_tool_error():
    out = available_tools()["t_bad"].call({"kind": "unprintable"}, CTX)
    assert out.status == "tool_error" and "cannot be shown as text" in out.observation


def test_megabytes_are_truncated_head_and_tail():
    out = available_tools()["t_bad"].call({"kind": "megabytes"}, CTX)
    assert out.status == "ok" and len(out.observation) < reg.DEFAULT_MAX_OUTPUT_CHARS + 100
    assert (
        out.observation.startswith("xxx")
        and out.observation.endswith("THE END")
        and "truncated" in out.observation
    )
    small = get_tools(["t_bad"], max_output_chars=100)["t_bad"].call({"kind": "megabytes"}, CTX)
    assert len(small.observation) < 200


def test_hanging_tool_times_out_and_is_capped():
    t = available_tools()["t_hang"]
    try:
        t0 = time.perf_counter()
        out = t.call({}, CTX)
        assert time.perf_counter() - t0 < 5
        assert out.status == "tool_error" and "timed out after 0.3 s" in out.observation
        for _ in range(reg.MAX_HUNG_CALLS):
            t.call({}, CTX)
        # Refused at once: no worker thread is started, so the call cannot wait out another timeout.
        threads = threading.active_count()
        refused = t.call({}, CTX)
        assert threading.active_count() == threads, "a tool with too many hung calls starts no new call"
        assert refused.status == "tool_error" and "still hung" in refused.observation
    finally:
        RELEASE.set()


def test_run_default_timeout_applies_only_to_tools_without_their_own():
    def t_slow(seconds: float) -> str:
        time.sleep(seconds)
        return "done"

    tool(t_slow)
    tools = get_tools(["t_slow", "t_hang", "python"], timeout_s=0.2)
    assert tools["t_slow"].timeout_s == 0.2 and tools["t_hang"].timeout_s == 0.3
    assert tools["python"].timeout_s is None  # sandbox-bounded tools opt out
    assert tools["t_slow"].call({"seconds": 1.0}, CTX).status == "tool_error"
    assert tools["t_slow"].call({"seconds": 0.0}, CTX).observation == "done"
    assert available_tools()["t_slow"].timeout_s is reg.DEFAULT  # the registry itself is unchanged


# --- loading ----------------------------------------------------------------------------------
def test_unknown_tool_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown tool\(s\) \['nope'\]; known tools: .*calculator.*python"):
        get_tools(["python", "nope"])


def test_file_module(tmp_path):
    f = tmp_path / "user_tools.py"
    f.write_text(
        textwrap.dedent('''
        from agentic_gcpo.tool_registry import tool

        @tool
        def t_file_tool(n: int) -> int:
            """Square a number.

            Args:
                n: The number.
            """
            return n * n
        ''')
    )
    tools = get_tools(["t_file_tool"], [str(f)])
    assert tools["t_file_tool"].source == f"{f}:t_file_tool"
    assert tools["t_file_tool"].call({"n": 7}, CTX).observation == "49"
    load_tool_module(str(f))  # loading twice is a no-op, not a name collision


def test_broken_file_module_and_missing_module(tmp_path):
    f = tmp_path / "broken.py"
    f.write_text("def oops(:\n")
    with pytest.raises(ToolLoadError, match="broken.py' failed: SyntaxError"):
        load_tool_module(str(f))
    with pytest.raises(FileNotFoundError):
        load_tool_module(str(tmp_path / "missing.py"))
    with pytest.raises(ToolLoadError, match="not found"):
        load_tool_module("no_such_package_xyz.tools")


def test_entry_points_from_an_installed_distribution(tmp_path, monkeypatch):
    """A real dist-info on sys.path: importlib.metadata finds it like a pip-installed plugin."""
    pkg = tmp_path / "t_plugin_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent('''
        from agentic_gcpo.tool_registry import tool

        @tool
        def t_plugin_decorated(a: int) -> int:
            """Registered by importing the module."""
            return a + 1

        def plain(a: int) -> int:
            """Registered under the entry point's name."""
            return a * 10
        ''')
    )
    dist = tmp_path / "t_plugin_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: t-plugin-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[agentic_gcpo.tools]\n"
        "t_plugin_module = t_plugin_pkg\n"
        "t_plugin_plain = t_plugin_pkg:plain\n"
        "t_plugin_broken = t_plugin_missing_module:thing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tools = available_tools()
    assert tools["t_plugin_decorated"].call({"a": 1}, CTX).observation == "2"
    assert tools["t_plugin_plain"].call({"a": 2}, CTX).observation == "20"
    assert tools["t_plugin_plain"].description == "Registered under the entry point's name."
    assert any("t_plugin_broken" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="t_plugin_broken = t_plugin_missing_module:thing' failed"):
        get_tools(["t_plugin_broken"])


def test_session_state_is_thread_safe():
    s: SessionState[list[int]] = SessionState(list)

    def work(i: int) -> None:
        for _ in range(200):
            s[f"s{i % 4}"].append(1)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(s) == 4 and sum(len(s[f"s{i}"]) for i in range(4)) == 1600
