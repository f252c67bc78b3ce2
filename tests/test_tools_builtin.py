"""Built-in tools through a real sandbox: SymPy tools, calculator, python; and `agentic-gcpo tools`."""

from __future__ import annotations

import json
import os

import pytest
from agentic_gcpo.builtin_tools.calculator import MAX_BITS, calculate

from agentic_gcpo.sandbox import SandboxConfig, make_sandbox
from agentic_gcpo.tool_registry import ToolContext, get_tools
from agentic_gcpo.tools_cli import run_tools_cli

SYMPY = ["simplify", "solve", "differentiate", "integrate", "evaluate"]


@pytest.fixture(scope="module")
def box():
    sb = make_sandbox(SandboxConfig(pool_size=1))
    yield sb
    sb.close()


@pytest.fixture(scope="module")
def tools():
    return get_tools(["python", "calculator", *SYMPY])


@pytest.mark.parametrize(
    "name,args,expected",
    [
        ("simplify", {"expression": "sin(x)^2 + cos(x)^2"}, "1"),
        ("simplify", {"expression": "(x^2 - 1)/(x - 1)"}, "x + 1"),
        ("solve", {"equation": "x^2 - 5x + 6 = 0"}, "x = 2 or x = 3"),
        ("solve", {"equation": "x + y = 3; x - y = 1"}, "x = 2, y = 1"),
        ("solve", {"equation": "a*x - 6", "variable": "x"}, "x = 6/a"),
        ("solve", {"equation": "x^2 + 1 = 0", "variable": "x"}, "x = -I or x = I"),
        ("differentiate", {"expression": "x^3"}, "3*x**2"),
        ("differentiate", {"expression": "x^3", "order": 3}, "6"),
        ("integrate", {"expression": "2x"}, "x**2 + C"),
        ("integrate", {"expression": "x^2", "lower": "0", "upper": "3"}, "9"),
        ("integrate", {"expression": "exp(-x^2)", "lower": "-oo", "upper": "oo"}, "sqrt(pi)"),
        ("evaluate", {"expression": "sqrt(2) * pi", "digits": 6}, "4.44288"),
        ("evaluate", {"expression": "e^2", "digits": 4}, "7.389"),
        ("evaluate", {"expression": "N + 1 - N"}, "1.00000000000000"),  # N is a symbol, not sympy.N
    ],
)
def test_sympy_tools(box, tools, name, args, expected):
    out = tools[name].call(args, ToolContext("sympy-ok", box))
    assert (out.status, out.observation) == ("ok", expected)


@pytest.mark.parametrize(
    "name,args,status,fragment",
    [
        ("simplify", {"expression": "((("}, "tool_error", "could not parse '((('"),
        ("evaluate", {"expression": "x + 1"}, "tool_error", "unknowns ['x']"),
        ("integrate", {"expression": "x*y"}, "tool_error", "say which variable"),
        ("integrate", {"expression": "x", "lower": "0"}, "tool_error", "give both lower and upper"),
        ("solve", {"equation": "3 = 3"}, "tool_error", "nothing to solve for"),
        (
            "evaluate",
            {"expression": "1", "digits": 1000},
            "invalid_args",
            "digits: Input should be less than",
        ),
        ("simplify", {"expression": "x" * 3000}, "invalid_args", "at most 2000 characters"),
        ("simplify", {"expr": "x"}, "invalid_args", "Usage: simplify(expression)"),
    ],
)
def test_sympy_tool_errors(box, tools, name, args, status, fragment):
    out = tools[name].call(args, ToolContext("sympy-err", box))
    assert out.status == status and fragment in out.observation, out.observation


def test_model_strings_run_only_in_the_sandbox(box, tools):
    """parse_expr evaluates Python, so hostile input does run -- in the sandbox worker, not here."""
    out = tools["evaluate"].call({"expression": "__import__('os').getpid()"}, ToolContext("hostile", box))
    assert out.status == "ok" and int(float(out.observation)) != os.getpid()
    # Quotes and newlines in the model's text cannot break out of the string literal.
    out = tools["simplify"].call({"expression": "x')\nprint('escaped"}, ToolContext("hostile", box))
    assert out.status == "tool_error" and "could not parse" in out.observation


def test_sympy_tools_leave_python_state_alone(box, tools):
    ctx = ToolContext("shared", box)
    assert tools["python"].call({"code": "x = 41"}, ctx).status == "ok"
    assert tools["solve"].call({"equation": "x^2 = 4"}, ctx).observation == "x = -2 or x = 2"
    out = tools["python"].call({"code": "print(x + 1, sorted(k for k in globals() if 'agc' in k))"}, ctx)
    assert out.observation == "42 []"


def test_sympy_tools_without_a_sandbox(tools):
    out = tools["simplify"].call({"expression": "x"}, ToolContext("none"))
    assert out.status == "tool_error" and "no sandbox" in out.observation


@pytest.mark.parametrize(
    "expr,expected",
    [
        ("1 + 2 * 3", "7"),
        ("(17 * 23 + 4) / 5", "79"),  # exact: an integral quotient prints as an integer
        ("7 / 2", "3.5 (exactly 7/2)"),
        ("1/3 * 3", "1"),
        ("2^10 % 7", "2"),
        ("2^3*2", "16"),
        ("-2 ** 2", "-4"),
        ("17 // 5", "3"),
        ("2 ** -3", "0.125 (exactly 1/8)"),
        ("2 ** 0.5", "1.4142135623730951"),
        ("1e3 + 1", "1001.0"),
    ],
)
def test_calculator_values(expr, expected):
    assert calculate(expr) == expected


@pytest.mark.parametrize(
    "expr,fragment",
    [
        ("9 ** 9 ** 9", f"more than {MAX_BITS} bits"),
        ("(1/2) ** 100000", f"more than {MAX_BITS} bits"),
        ("1 / 0", "division by zero"),
        ("(-8) ** (1/3)", "not a real number"),
        ("1e308 * 10", "too large"),
        ("x + 1", "not the name 'x'"),
        ("__import__('os').system('true')", "not Call"),
        ("(1).__class__", "not Attribute"),
        ("[1, 2][0]", "not Subscript"),
        ("'a' * 3", "not the literal 'a'"),
        ("True + 1", "not the literal True"),
        ("1 +", "not an arithmetic expression"),
        ("-" * 990 + "1", "nested too deeply"),
    ],
)
def test_calculator_refuses(expr, fragment):
    out = get_tools(["calculator"])["calculator"].call({"expression": expr}, ToolContext("c"))
    assert out.status == "tool_error" and fragment in out.observation, out.observation


# --- CLI ---------------------------------------------------------------------------------------
def test_cli_list(capsys):
    assert run_tools_cli(["list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {r["name"]: r for r in rows}
    assert {"python", "calculator", *SYMPY} <= set(by_name)
    assert by_name["calculator"]["source"] == "agentic_gcpo.builtin_tools.calculator:calculator"
    assert by_name["solve"]["schema"]["function"]["parameters"]["required"] == ["equation"]
    assert run_tools_cli(["list", "--modules", "agentic_gcpo.builtin_tools.example_tools"]) == 0
    assert "notepad  (agentic_gcpo.builtin_tools.example_tools:Notepad)" in capsys.readouterr().out


def test_cli_call(capsys):
    assert run_tools_cli(["call", "calculator", '{"expression": "6*7"}']) == 0
    assert capsys.readouterr().out == "42\n"
    assert run_tools_cli(["call", "solve", '{"equation": "2x = 10"}']) == 0  # through a real sandbox
    assert capsys.readouterr().out == "x = 5\n"
    args = [
        "call",
        "unit_convert",
        '{"value": 1, "from_unit": "km"}',
        "-m",
        "agentic_gcpo.builtin_tools.example_tools",
    ]
    assert run_tools_cli(args) == 0 and capsys.readouterr().out == "1000 m\n"


@pytest.mark.parametrize(
    "argv,code,fragment",
    [
        (["call", "calculator", "{not json"], 1, "arguments are not valid JSON"),
        (["call", "calculator", "[1]"], 1, "must be a JSON object"),
        (["call", "nope", "{}"], 1, "unknown tool 'nope'; known tools:"),
        (["call", "calculator", '{"expression": "1/0"}'], 1, "status 'tool_error'"),
        (["call", "calculator", "{}"], 1, "status 'invalid_args'"),
        (["list", "--modules", "no_such_module_xyz"], 2, "tool module 'no_such_module_xyz' not found"),
    ],
)
def test_cli_errors(capsys, argv, code, fragment):
    assert run_tools_cli(argv) == code
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["auto", "json"])
def test_docs_show_the_prompt_as_rendered(capsys, fmt):
    """docs/tools.md quotes `tools prompt` output; when the prompt changes, paste the new output."""
    from pathlib import Path

    argv = ["prompt", "-n", "python", "unit_convert", "-m", "agentic_gcpo.builtin_tools.example_tools"]
    assert run_tools_cli([*argv, "--call-format", fmt]) == 0
    rendered = capsys.readouterr().out
    docs = (Path(__file__).resolve().parent.parent / "docs" / "tools.md").read_text()
    assert f"```text\n{rendered}```" in docs, f"regenerate docs/tools.md: agentic-gcpo tools {' '.join(argv)}"
