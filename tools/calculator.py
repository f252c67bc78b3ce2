"""The `calculator` tool: exact arithmetic on numbers, evaluated in-process.

Why this is safe without the sandbox: the expression is parsed with `ast.parse` (parsing runs no
code) and then interpreted by a tiny evaluator that knows only number literals, + - * / // % **
(^ is read as **), unary signs and parentheses. There are no names, calls, attributes, subscripts
or comprehensions, so there is nothing to execute. Cost is bounded too: the input is at most 1000
characters (which bounds parsing and nesting), and every intermediate integer (numerator and
denominator of fractions) is kept below MAX_BITS, checked *before* a power is computed, so
`9**9**9` is refused instead of taking the machine's memory.
"""

from __future__ import annotations

import ast
import math
from fractions import Fraction
from typing import Annotated

from pydantic import Field

from agentic_gcpo.tool_registry import ToolResult, tool

MAX_BITS = 12_000  # ~3600 decimal digits: below Python's int->str limit (4300 digits)

Number = int | Fraction | float


def _divide(a: Number, b: Number) -> Number:
    # Exact unless a float is involved: 1/3 stays 1/3, so (1/3)*3 is exactly 1.
    if isinstance(a, float) or isinstance(b, float):
        return a / b
    return Fraction(a) / Fraction(b)


_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: _divide,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
}


class CalcError(ValueError):
    pass


def _bits(x: Number) -> int:
    if isinstance(x, Fraction):
        return max(x.numerator.bit_length(), x.denominator.bit_length())
    return x.bit_length() if isinstance(x, int) else 0


def _checked(x: Number) -> Number:
    if isinstance(x, complex):
        raise CalcError("the result is not a real number")
    if isinstance(x, float) and not math.isfinite(x):
        raise CalcError("the result is too large (or not a number)")
    if _bits(x) > MAX_BITS:
        raise CalcError(f"the result is too large (more than {MAX_BITS} bits)")
    if isinstance(x, Fraction) and x.denominator == 1:
        return x.numerator
    return x


def _power(a: Number, b: Number) -> Number:
    if isinstance(b, Fraction):  # 4 ** (1/2): fractional exponents go through floats
        b = float(b)
    if isinstance(b, int) and not isinstance(a, float):
        if a not in (0, 1, -1) and abs(b) * _bits(a) > MAX_BITS:
            raise CalcError(f"the result is too large (more than {MAX_BITS} bits)")
        return Fraction(a) ** b if b < 0 else a**b
    return float(a) ** float(b)


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _eval(node.operand)
        return v if isinstance(node.op, ast.UAdd) else -v
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _checked(_power(a, b))
        op = _BINOPS.get(type(node.op))
        if op is not None:
            return _checked(op(a, b))
    what = type(node).__name__
    if isinstance(node, ast.Constant):
        what = f"the literal {node.value!r}"
    elif isinstance(node, ast.Name):
        what = f"the name '{node.id}'"
    raise CalcError(f"only numbers, + - * / // % ** ^ and parentheses are allowed, not {what}")


def calculate(expression: str) -> str:
    """Evaluate `expression`; returns the result text or raises CalcError."""
    try:
        # Textual, not BitXor-as-power: ^ must bind like ** (2^3*2 is 16). Safe to do on the text
        # because no string literal can survive the evaluator anyway.
        tree = ast.parse(expression.strip().replace("^", "**"), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise CalcError(f"not an arithmetic expression ({type(e).__name__})") from None
    try:
        value = _eval(tree)
    except ZeroDivisionError:
        raise CalcError("division by zero") from None
    except OverflowError:
        raise CalcError("the result is too large") from None
    except RecursionError:
        raise CalcError("the expression is nested too deeply") from None
    if isinstance(value, Fraction):
        try:
            return f"{float(value)!r} (exactly {value})"
        except OverflowError:
            return str(value)
    return repr(value)


@tool
def calculator(expression: Annotated[str, Field(min_length=1, max_length=1000)]) -> ToolResult:
    """Evaluate an arithmetic expression exactly, e.g. "(17 * 23 + 4) / 5" or "2^10 % 7".

    Args:
        expression: Numbers with + - * / // % ** (or ^ for power) and parentheses; no variables.
    """
    try:
        return ToolResult(calculate(expression))
    except CalcError as e:
        return ToolResult(f"Error: {e}", is_error=True)
