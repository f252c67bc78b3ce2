"""Exact numeric fast path: + - * / ^ ** and parentheses over decimal numbers, with Fractions.

Plain numbers (all of GSM8K, AIME) are decided here in tens of microseconds, with no SymPy, no
math-verify and no helper process; integers and fractions must match exactly.
"""

from __future__ import annotations

import re
from fractions import Fraction

_TOKEN = re.compile(r"\s*(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\*\*|[-+*/^()])")


def _number(tok: str) -> Fraction:
    m = re.fullmatch(r"(\d*\.?\d*)(?:[eE]([-+]?\d+))?", tok)
    assert m is not None
    mantissa, exp = m.group(1), int(m.group(2) or 0)
    if len(mantissa) > 1000 or abs(exp) > 400:  # Fraction('1e999999999') would build 10**1e9
        raise ValueError("number too large for the fast path")
    return Fraction(mantissa) * Fraction(10) ** exp


ABSURD_BITS = 1_000_000  # no answer is a number over 2**1e6 (about 10**301030)
_FACTORIAL = re.compile(r"factorial\s*\(([^()]*(?:\([^()]*\)[^()]*)*)\)|(\d+)\s*!")


class TooLarge(ValueError):
    """The expression is plain arithmetic whose value is astronomically large."""


def parse_number(s: str) -> tuple[Fraction, bool] | None:
    """(value, written_as_decimal) for a plain arithmetic expression, else None (not an error)."""
    try:
        return _parse(s)
    except TooLarge:
        return None


def absurd_number(s: str) -> bool:
    """Is s arithmetic on numbers whose value no answer has (``9**9**9**9``, ``factorial(10^9)``)?

    Such text would only burn the helper's whole deadline (and cost a respawn), so it is refused
    up front, like ``1e999999999``.
    """
    for m in _FACTORIAL.finditer(s):
        n = parse_number(m.group(1) or m.group(2))
        if n is not None and n[0] > 100_000:
            return True
    try:
        _parse(s)
    except TooLarge:
        return True
    return False


def _parse(s: str) -> tuple[Fraction, bool] | None:
    toks, pos = [], 0
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if m is None:
            if s[pos:].strip():
                return None  # not plain arithmetic on numbers
            break
        toks.append(m.group(1))
        pos = m.end()
    return _eval(toks)


def _eval(toks: list[str]) -> tuple[Fraction, bool] | None:
    inexact = any(t[0].isdigit() or t[0] == "." for t in toks if ("." in t or "e" in t.lower()))
    k = 0

    def peek() -> str | None:
        return toks[k] if k < len(toks) else None

    def take() -> str:
        nonlocal k
        k += 1
        return toks[k - 1]

    def expr(d: int) -> Fraction:
        if d > 100:
            raise ValueError("too deep")
        v = term(d)
        while peek() in ("+", "-"):
            v = v + term(d) if take() == "+" else v - term(d)
        return v

    def term(d: int) -> Fraction:
        v = unary(d)
        while peek() in ("*", "/"):
            if take() == "*":
                v *= unary(d)
            else:
                v /= unary(d)  # ZeroDivisionError -> None below
        return v

    def unary(d: int) -> Fraction:
        if peek() in ("+", "-"):
            return unary(d + 1) if take() == "+" else -unary(d + 1)
        base = atom(d)
        if peek() in ("^", "**"):
            take()
            e = unary(d + 1)
            if e > 0 and abs(base) > 1:
                bits = max(base.numerator.bit_length(), base.denominator.bit_length()) - 1
                if bits * e > ABSURD_BITS:
                    raise TooLarge("a power beyond 2**1e6")
            if e.denominator != 1 or abs(e) > 10_000 or (base == 0 and e < 0):
                raise ValueError("power outside the fast path")
            bits = max(base.numerator.bit_length(), base.denominator.bit_length())
            if bits * abs(e) > 100_000:
                raise ValueError("power too large for the fast path")
            return base ** int(e)
        return base

    def atom(d: int) -> Fraction:
        t = take() if peek() is not None else None
        if t == "(":
            v = expr(d + 1)
            if take() != ")":
                raise ValueError("unbalanced")
            return v
        if t is None or not (t[0].isdigit() or t[0] == "."):
            raise ValueError("expected a number")
        return _number(t)

    try:
        value = expr(0)
        return (value, inexact) if k == len(toks) else None
    except TooLarge:
        raise
    except (ValueError, ZeroDivisionError, IndexError, OverflowError, RecursionError):
        return None


def numbers_close(a: Fraction, b: Fraction, inexact: bool) -> bool:
    """Exact equality, or math.isclose-style (rel 1e-6, abs 1e-9) when a decimal was written."""
    if a == b:
        return True
    if not inexact:
        return False
    return abs(a - b) <= max(Fraction(1, 10**6) * max(abs(a), abs(b)), Fraction(1, 10**9))
