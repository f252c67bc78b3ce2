"""SymPy tools: simplify, solve, differentiate, integrate, evaluate.

Written against the public registry API, exactly as a user would write tools. The expressions
come from the model, and `parse_expr` evaluates Python internally, so none of this runs in the
trainer process: each call sends a fixed program to the trajectory's sandbox session, with the
model's strings embedded only as `repr()` literals (data, never code), and the sandbox's
wall/CPU/memory limits apply. The program keeps the session's namespace clean (one function,
deleted afterwards), so the `python` tool's variables are untouched.

One shared session per trajectory means a call that runs into the sandbox's hard timeout would
reset that trajectory's python variables; an alarm inside the program stops SymPy a little
earlier with an ordinary error, so that only happens for work stuck in C code.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from agentic_gcpo.tool_registry import ToolContext, ToolResult, tool

Expr = Annotated[str, Field(min_length=1, max_length=2000)]
Var = Annotated[str, Field(min_length=1, max_length=200)]

# The program run in the sandbox. OP and ARGS are substituted as repr() literals. Names are
# dunder-prefixed and deleted so they cannot clash with the model's own python variables.
_PROGRAM = r"""
def __agc_sympy(op, args, limit):
    import signal
    import sympy
    from sympy.parsing.sympy_parser import (
        convert_xor, function_exponentiation, implicit_application, implicit_multiplication,
        parse_expr, standard_transformations,
    )

    rules = standard_transformations + (
        implicit_multiplication, implicit_application, function_exponentiation, convert_xor
    )
    # Letters SymPy reserves (N is a function, S a singleton ...) stay plain symbols; e is Euler's.
    names = {n: sympy.Symbol(n) for n in ("N", "S", "Q", "C", "O")}
    names["e"] = sympy.E

    def parse(text):
        try:
            return sympy.sympify(parse_expr(text, local_dict=dict(names), transformations=rules))
        except Exception as exc:
            raise ValueError(f"could not parse {text!r}: {type(exc).__name__}: {exc}") from None

    def equation(text):
        if "==" in text:
            lhs, _, rhs = text.partition("==")
        elif text.count("=") == 1 and not any(c in text for c in "<>!"):
            lhs, _, rhs = text.partition("=")
        else:
            return parse(text)
        return parse(lhs) - parse(rhs)

    def symbols(text, exprs):
        if text:
            return [sympy.Symbol(v.strip()) for v in text.split(",") if v.strip()]
        free = set().union(*(x.free_symbols for x in exprs))
        return sorted(free, key=str)

    def one_var(text, expr):
        found = symbols(text, [expr])
        if len(found) != 1:
            raise ValueError(f"say which variable to use (the expression has {len(found)}: {found})")
        return found[0]

    def run():
        if op == "simplify":
            return str(sympy.simplify(parse(args["expression"])))
        if op == "solve":
            eqs = [equation(t) for t in args["equation"].split(";") if t.strip()]
            unknowns = symbols(args["variable"], eqs)
            if not unknowns:
                raise ValueError("nothing to solve for: the equation has no variables")
            sols = sympy.solve(eqs, unknowns, dict=True)
            if not isinstance(sols, list):
                return str(sols)
            if not sols:
                return "no solution"
            return " or ".join(", ".join(f"{k} = {v}" for k, v in s.items()) for s in sols)
        if op == "differentiate":
            expr = parse(args["expression"])
            return str(sympy.diff(expr, one_var(args["variable"], expr), args["order"]))
        if op == "integrate":
            expr = parse(args["expression"])
            x = one_var(args["variable"], expr)
            if args["lower"] is None:
                return f"{sympy.integrate(expr, x)} + C"
            return str(sympy.simplify(sympy.integrate(expr, (x, parse(args["lower"]), parse(args["upper"])))))
        if op == "evaluate":
            expr = parse(args["expression"])
            if expr.free_symbols:
                raise ValueError(f"the expression has unknowns {sorted(map(str, expr.free_symbols))}; give numbers")
            return str(sympy.N(expr, args["digits"]))
        raise ValueError(f"unknown operation {op}")

    def alarm(*_):
        raise TimeoutError(f"SymPy did not finish within {limit:g} s")

    try:
        old = signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
    except ValueError:  # not the main thread: the sandbox's own timeout is the only limit
        old = None
    try:
        return run()
    finally:
        if old is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


try:
    print(__agc_sympy(OP, ARGS, LIMIT))
finally:
    del __agc_sympy
"""


def _run(op: str, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    if ctx.sandbox is None:
        return ToolResult("Error: no sandbox is configured for this run", is_error=True)
    wall = float(getattr(getattr(ctx.sandbox, "cfg", None), "timeout_s", 5.0))
    limit = max(0.5, 0.8 * wall)
    # repr() of str/int/None values is a literal: the model's text can only ever be data here.
    code = _PROGRAM.replace("OP, ARGS, LIMIT", f"{op!r}, {args!r}, {limit!r}")
    result = ctx.sandbox.execute(code, ctx.session)
    if not result.ok:
        msg = "SymPy took too long" if result.timed_out else f"{result.error_type}: {result.error or ''}"
        return ToolResult(f"Error: {msg}".rstrip(": "), is_error=True)
    return ToolResult(result.stdout.strip() or "(no output)")


@tool(timeout_s=None)  # bounded by the sandbox's limits (see the module docstring)
def simplify(expression: Expr, ctx: ToolContext) -> ToolResult:
    """Simplify a math expression with SymPy, e.g. "sin(x)^2 + cos(x)^2" -> 1.

    Args:
        expression: The expression; ^ means power, 2x means 2*x.
    """
    return _run("simplify", {"expression": expression}, ctx)


@tool(timeout_s=None)
def solve(equation: Expr, ctx: ToolContext, variable: Var | None = None) -> ToolResult:
    """Solve an equation, or a system separated by ";", exactly with SymPy, e.g. "x^2 = 4".

    Args:
        equation: One equation like "x^2 - 5x + 6 = 0" ("= 0" may be left out), or several separated by ";".
        variable: The unknown(s) to solve for, comma-separated ("x, y"); default: every symbol.
    """
    return _run("solve", {"equation": equation, "variable": variable}, ctx)


@tool(timeout_s=None)
def differentiate(
    expression: Expr,
    ctx: ToolContext,
    variable: Var | None = None,
    order: Annotated[int, Field(ge=1, le=10)] = 1,
) -> ToolResult:
    """Differentiate an expression with SymPy.

    Args:
        expression: The expression to differentiate, e.g. "x^3 sin(x)".
        variable: The variable; may be left out when the expression has only one.
        order: How many times to differentiate.
    """
    return _run("differentiate", {"expression": expression, "variable": variable, "order": order}, ctx)


@tool(timeout_s=None)
def integrate(
    expression: Expr,
    ctx: ToolContext,
    variable: Var | None = None,
    lower: Annotated[str, Field(max_length=200)] | None = None,
    upper: Annotated[str, Field(max_length=200)] | None = None,
) -> ToolResult:
    """Integrate an expression with SymPy: indefinite, or definite when lower and upper are given.

    Args:
        expression: The integrand, e.g. "x^2 + 1".
        variable: The integration variable; may be left out when the expression has only one.
        lower: Lower limit of a definite integral, e.g. "0" or "-oo".
        upper: Upper limit of a definite integral, e.g. "pi".
    """
    if (lower is None) != (upper is None):
        return ToolResult(
            "Error: give both lower and upper for a definite integral, or neither", is_error=True
        )
    return _run(
        "integrate", {"expression": expression, "variable": variable, "lower": lower, "upper": upper}, ctx
    )


@tool(timeout_s=None)
def evaluate(
    expression: Expr, ctx: ToolContext, digits: Annotated[int, Field(ge=1, le=100)] = 15
) -> ToolResult:
    """Evaluate an exact expression numerically with SymPy, e.g. "sqrt(2) * pi" -> 4.44288293815837.

    Args:
        expression: An expression without unknowns.
        digits: Significant digits of the result.
    """
    return _run("evaluate", {"expression": expression, "digits": digits}, ctx)
