"""Our LaTeX-level rules, applied before any comparison, where math-verify 0.9 is wrong or silent.

Each rule here exists because a pair in tests/verify_cases.py needs it (docs/verifier.md lists
them with their cases):

* ``x \\in [1, 2)`` -> ``[1, 2)``: math-verify parses the prefix as ``Eq(x, Interval)``, our
  normaliser not at all;
* an inequality in one variable -> the interval it describes (``x > 3`` -> ``(3, \\infty)``,
  ``-2 < x \\le 5`` -> ``(-2, 5]``, ``x < 0 \\text{ or } x > 1`` -> a union): math-verify compares
  an inequality with an interval as different objects and says "wrong";
* a plain-text mixed number ``2 1/2`` -> ``2\\frac{1}{2}`` (proper fraction only): both checkers
  read two numbers side by side.

``shape`` classifies an answer (number, set, interval/tuple, matrix, equation, ...) so that
math-verify's "match" only counts between answers of compatible shapes: it equates a one-element
set with its element (``\\{5\\}`` = ``5``) and an open interval with a two-element list
(``(0, 1)`` = ``0, 1``), which a grader does not.
"""

from __future__ import annotations

import re

_IN_PREFIX = re.compile(r"^\s*[A-Za-z](?:_\{?\w+\}?)?\s*(?:\\in|\u2208)\s*")
_RELATION = re.compile(r"\\leqslant|\\geqslant|\\leq|\\geq|\\le|\\ge|\\lt|\\gt|<=|>=|[<>\u2264\u2265]")
_LESS = {"<", "\\lt"}
_LESS_EQ = {"\\le", "\\leq", "\\leqslant", "<=", "\u2264"}
_GREATER = {">", "\\gt"}
_GREATER_EQ = {"\\ge", "\\geq", "\\geqslant", ">=", "\u2265"}
_OR = re.compile(r"\\text\s*\{\s*or\s*\}|\\mathrm\s*\{\s*or\s*\}|\\lor|\\vee|\bor\b|\\cup")
_VARIABLE = re.compile(r"[A-Za-z]")
_REALS = re.compile(r"^(?:\\mathbb\s*\{?R\}?|\\R|\\text\s*\{\s*all real numbers\s*\}|all real numbers)$")
_NOT_EQUAL = re.compile(r"^([A-Za-z])\s*(?:\\neq?|!=|\u2260)\s*([^=<>]+)$")
_MIXED_TEXT = re.compile(r"^\s*(-?)\s*(\d+)\s+(\d+)\s*/\s*(\d+)\s*$")
_SIZING = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])\s*")


def strip_math(latex: str) -> str:
    """The answer without ``$``/``\\(``/``\\[`` delimiters and trailing full stops."""
    s = latex.strip()
    s = re.sub(r"^(?:\$+|\\\(|\\\[)|(?:\$+|\\\)|\\\])$", "", s).strip()
    return s.rstrip(".").strip()


def _bound(op: str, value: str, var_on_left: bool) -> tuple[str, str, str] | None:
    """('lower'|'upper', value, bracket) for "var op value" (or "value op var")."""
    if not var_on_left:  # "3 < x" is "x > 3"
        flip = {"<": ">", ">": "<"}
        kind = "<" if op in _LESS | _LESS_EQ else ">"
        op = (
            (flip[kind] + ("=" if op in _LESS_EQ | _GREATER_EQ else ""))
            .replace("<=", "\\le")
            .replace(">=", "\\ge")
        )
    if op in _LESS:
        return "upper", value, ")"
    if op in _LESS_EQ:
        return "upper", value, "]"
    if op in _GREATER:
        return "lower", value, "("
    if op in _GREATER_EQ:
        return "lower", value, "["
    return None


def _one_inequality(text: str) -> tuple[str, str] | None:
    """('(a, b]', variable) for a chain like 'a < x <= b' or 'x > a'; None if it is not one."""
    pieces = _RELATION.split(text)
    ops = _RELATION.findall(text)
    parts = [p.strip() for p in pieces]
    if len(parts) not in (2, 3) or any(not p for p in parts):
        return None
    names = [i for i, p in enumerate(parts) if re.fullmatch(r"[A-Za-z]", p)]
    if len(names) != 1:
        return None
    k = names[0]
    var = parts[k]
    if len(parts) == 3 and k != 1:
        return None
    bounds = {}
    for i, op in enumerate(ops):
        value_index = i if i != k else i + 1
        value = parts[value_index]
        if var in _VARIABLE.findall(re.sub(r"\\[A-Za-z]+", "", value)):
            return None  # "x < 2x + 1" is not a bound
        b = _bound(op, value, var_on_left=(i == k))
        if b is None or b[0] in bounds:
            return None  # "1 < x > 3": two lower bounds
        bounds[b[0]] = b
    lo = bounds.get("lower", ("lower", "-\\infty", "("))
    hi = bounds.get("upper", ("upper", "\\infty", ")"))
    return f"{lo[2]}{lo[1]}, {hi[1]}{hi[2]}", var


def inequality_to_interval(latex: str) -> tuple[str, str] | None:
    """(interval LaTeX, variable) for an answer that is inequalities in one variable joined by
    "or"; None otherwise."""
    if not _RELATION.search(latex) or "," in latex or "=" in latex.replace("<=", "").replace(">=", ""):
        return None
    intervals, variables = [], set()
    for piece in _OR.split(latex):
        one = _one_inequality(piece)
        if one is None:
            return None
        intervals.append(one[0])
        variables.add(one[1])
    if len(variables) != 1:
        return None
    return " \\cup ".join(intervals), variables.pop()


def rewrite(latex: str) -> tuple[str, list[str]]:
    """The answer after our LaTeX-level rules, and the names of the rules that fired."""
    s, fired = strip_math(latex), []
    s2 = _IN_PREFIX.sub("", s)
    if s2 != s:
        s, fired = s2, fired + ["x-in-prefix"]
    m = _MIXED_TEXT.match(s)
    if m and 0 < int(m.group(3)) < int(m.group(4)):
        s, fired = f"{m.group(1)}{m.group(2)}\\frac{{{m.group(3)}}}{{{m.group(4)}}}", fired + ["mixed-number"]
    if _REALS.match(s):
        s, fired = "(-\\infty, \\infty)", fired + ["reals"]
    m = _NOT_EQUAL.match(s)
    if m and m.group(1) not in re.sub(r"\\[A-Za-z]+", "", m.group(2)):
        v = m.group(2).strip()
        s, fired = f"(-\\infty, {v}) \\cup ({v}, \\infty)", fired + [f"inequality-to-interval ({m.group(1)})"]
    interval = inequality_to_interval(_SIZING.sub("", s))
    if interval is not None:
        s, fired = interval[0], fired + [f"inequality-to-interval ({interval[1]})"]
    return s, fired


# ---------------------------------------------------------------------------------------------
# Shapes


def _top_level_commas(s: str) -> int:
    depth, count, i = 0, 0, 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in "{}":
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            count += 1
        i += 1
    return count


def _encloses(s: str) -> bool:
    """Does the bracket opening at s[0] close at the last character ("(1)+(2)" does not)?"""
    depth = 0
    for i, c in enumerate(s):
        depth += c in "(["
        depth -= c in ")]"
        if depth == 0:
            return i == len(s) - 1
    return False


def shape(latex: str) -> str:
    """'matrix', 'determinant', 'interval' (also tuples and unions), 'relation', 'set',
    'equation', 'assignment' (``x = ...``) or 'scalar'."""
    s = _SIZING.sub("", strip_math(latex)).replace("\\!", "").replace("{,}", "")
    if re.search(r"\\begin\s*\{[vV]matrix\}", s):
        return "determinant"
    if re.search(r"\\begin\s*\{(?:[pbB]?matrix|smallmatrix|array)\}", s):
        return "matrix"
    if re.search(r"\\cup|\\cap|\\setminus", s):
        return "interval"
    if _RELATION.search(s) or re.search(r"\\neq?(?![A-Za-z])|\\in(?![A-Za-z])", s):
        return "relation"
    if (s.startswith("\\{") and s.endswith("\\}")) or re.search(r"\\pm|\\mp|\u00b1", s):
        return "set"
    if s[:1] in "([" and s[-1:] in ")]" and _encloses(s) and _top_level_commas(s[1:-1]):
        return "interval"  # a tuple or an interval: math-verify tells them apart by the brackets
    if _top_level_commas(s):
        return "set"
    if "=" in s:
        lhs = s.split("=", 1)[0].strip()
        if re.fullmatch(r"[A-Za-z](?:_\{?\w+\}?)?(?:\([A-Za-z]\))?", lhs):
            return "assignment"
        return "equation"
    return "scalar"


# What a LaTeX or plain maths answer is written with. math-verify's parser is lenient and finds an
# expression inside anything ("(lambda: 1)()" parses as 1), so text outside this set, Python
# attribute access or dunders is never shown to it.
_MATH_TEXT = re.compile(r"[A-Za-z0-9\s\\{}()\[\]^_+\-*/=<>,.!|&'%$~]*")


def fit_for_math_verify(latex: str) -> bool:
    """Is this answer plain maths text (no code) that math-verify may read?"""
    return bool(_MATH_TEXT.fullmatch(latex)) and "__" not in latex and not re.search(r"\.[A-Za-z_]", latex)


_COMPATIBLE = {
    frozenset({"assignment", "scalar"}),
    frozenset({"assignment", "equation"}),
    frozenset({"determinant", "scalar"}),  # math-verify reads \\begin{vmatrix} as the determinant
}

_ASSIGNED = re.compile(r"^\s*([A-Za-z](?:_\{?\w+\}?)?)\s*(?:=(?!=)|\\in(?![A-Za-z])|\u2208)")


def named_variable(latex: str, fired: list[str]) -> str | None:
    """The variable an answer is about: "x" for "x = 2", "x \\in [0, 1)" or an inequality in x."""
    for rule in fired:
        if rule.startswith("inequality-to-interval ("):
            return rule[len("inequality-to-interval (") : -1]
    m = _ASSIGNED.match(strip_math(latex))
    return m.group(1) if m else None


def shapes_compatible(a: str, b: str) -> bool:
    """May math-verify's "match" count between answers of these shapes?"""
    return a == b or frozenset({a, b}) in _COMPATIBLE
