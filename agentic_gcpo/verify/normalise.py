"""Our normaliser (pure Python, no SymPy): LaTeX-ish or plain answer -> plain ASCII expression.

``prepare`` turns a whole answer into text that both the exact numeric parser (``numeric``) and
SymPy's tokenizer read: ``\\frac{3}{4}`` ->
``((3)/(4))``, ``\\sqrt[3]{x}`` -> ``((x)^(1/(3)))``, ``\\$1,200.`` -> ``1200``, ``18\\%`` -> ``18``;
then ``finish`` cleans each element of a tuple/set: ``x = 5`` -> ``5``, ``5 apples`` -> ``5``.
The policy choices are documented in ``agentic_gcpo.verify.core`` and docs/verifier.md.
"""

from __future__ import annotations

import re
import unicodedata

from agentic_gcpo.verify.extract import balanced_group, last_boxed

MAX_ANSWER_CHARS = 2_000  # longer "answers" are rejected: no real math answer is this long


class Refused(ValueError):
    """An answer refused on purpose (too long, two numbers side by side): final, never "equal",
    and no other checker is asked (math-verify would read "2 3" as a product)."""


_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u00d7": "*", "\u00b7": "*", "\u22c5": "*", "\u00f7": "/",
    "\u221a": "\\sqrt", "\u03c0": "\\pi", "\u221e": "\\infty", "\u00b2": "^2", "\u00b3": "^3",
    "\u00b0": "", "\u2248": "=", "\u00a0": " ", "\u2009": "",
}  # fmt: skip
_DROP = {"left", "right", "big", "Big", "bigg", "Bigg", "displaystyle", "textstyle", "circ", "degree",
         "limits", "mathstrut", "%", "$", ",", ";", ":", "!", " ", "quad", "qquad"}  # fmt: skip
_TEXT = {"text", "textbf", "textit", "textrm", "textnormal", "mathrm", "mathbf", "mathit", "mbox",
         "operatorname", "mathbb", "hbox"}  # fmt: skip
_FRAC = {"frac", "dfrac", "tfrac", "cfrac"}
_SYMBOLS = {"cdot": "*", "times": "*", "ast": "*", "div": "/", "infty": " oo ", "approx": "=",
            "{": "{", "}": "}", "\\": " ", "neq": "!=", "ne": "!="}  # fmt: skip
_FUNCTIONS = {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh",
              "tanh", "log", "ln", "exp"}  # fmt: skip
# Words that are maths, not units: never stripped from the end of an answer.
_MATH_WORDS = {"pi", "sqrt", "oo", "inf", "infinity", "sin", "cos", "tan", "cot", "sec", "csc", "log",
               "ln", "exp", "abs", "asin", "acos", "atan", "sinh", "cosh", "tanh", "root"}  # fmt: skip


def _arg(s: str, i: int) -> tuple[str, int]:
    """One LaTeX macro argument at s[i:]: a {group}, a \\command, or a single character."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return "", i
    if s[i] == "{":
        g = balanced_group(s, i)
        if g is None:
            raise ValueError("unbalanced braces")
        return g[0], g[1]
    if s[i] == "\\":
        m = re.match(r"\\(?:[A-Za-z]+|.)", s[i:])
        assert m is not None
        return m.group(0), i + m.end()
    return s[i], i + 1


def _command_with_args(s: str, i: int) -> tuple[str, int]:
    """The LaTeX source of one command at s[i] with its arguments (\\frac{a}{b}, \\sqrt[3]{x})."""
    m = re.match(r"\\(?:[A-Za-z]+|.)", s[i:])
    assert m is not None
    name, j = m.group(0)[1:], i + m.end()
    if name == "sqrt" and j < len(s) and s[j] == "[":
        close = s.find("]", j)
        j = close + 1 if close >= 0 else j
    for _ in range(2 if name in _FRAC else 1 if name == "sqrt" else 0):
        _, j = _arg(s, j)
    return s[i:j], j


def latex_to_plain(s: str, depth: int = 0) -> str:
    if depth > 50:
        raise ValueError("nesting too deep")
    out: list[str] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            m = re.match(r"\\([A-Za-z]+|.)", s[i:])
            if m is None:
                i += 1
                continue
            name, i = m.group(1), i + m.end()
            if name in _FRAC:
                a, i = _arg(s, i)
                b, i = _arg(s, i)
                out.append(f"(({latex_to_plain(a, depth + 1)})/({latex_to_plain(b, depth + 1)}))")
            elif name == "sqrt":
                index = None
                if i < n and s[i] == "[":
                    close = s.find("]", i)
                    if close < 0:
                        raise ValueError("unclosed root index")
                    index, i = s[i + 1 : close], close + 1
                a, i = _arg(s, i)
                body = latex_to_plain(a, depth + 1)
                if index is None:
                    out.append(f"sqrt({body})")
                else:
                    out.append(f"(({body})^(1/({latex_to_plain(index, depth + 1)})))")
            elif name in ("binom", "dbinom", "tbinom", "choose"):
                a, i = _arg(s, i)
                b, i = _arg(s, i)
                out.append(f" binomial({latex_to_plain(a, depth + 1)}, {latex_to_plain(b, depth + 1)})")
            elif name in _TEXT:
                a, i = _arg(s, i)
                out.append(f" {latex_to_plain(a, depth + 1)} ")
            elif name in _FUNCTIONS:
                # \sin^2 x means (sin(x))^2; the argument is a group, a command or a word.
                power = base = ""
                while i < n and s[i] in "^_":
                    op = s[i]
                    p, i = _arg(s, i + 1)
                    if op == "^":
                        power = latex_to_plain(p, depth + 1)
                    else:
                        base = latex_to_plain(p, depth + 1)
                while i < n and s[i] == " ":
                    i += 1
                if i < n and s[i] == "(":
                    close, level = i, 0
                    for close in range(i, n):
                        level += {"(": 1, ")": -1}.get(s[close], 0)
                        if level == 0:
                            break
                    if level != 0:
                        raise ValueError("unbalanced parentheses")
                    a, i = s[i + 1 : close], close + 1
                elif i < n and s[i] == "{":
                    a, i = _arg(s, i)
                elif i < n and s[i] == "\\":
                    a, i = _command_with_args(s, i)
                else:
                    m = re.match(r"[A-Za-z0-9.]*", s[i:])
                    a, i = (m.group(0) if m else ""), i + (m.end() if m else 0)
                call = f" {name}({latex_to_plain(a, depth + 1)})"
                if base:
                    call = f"({call}/log({base}))"
                out.append(f"({call})^({power})" if power else call)
            elif name in ("left", "right") and i < n and s[i] == ".":
                i += 1  # \left. and \right. are invisible delimiters
            elif name in _DROP:
                pass
            elif name in _SYMBOLS:
                out.append(_SYMBOLS[name])
            else:  # \pi, \sin, \alpha ...: the bare name, kept apart from its neighbours
                out.append(f" {name} ")
        elif c in "^_":
            a, i = _arg(s, i + 1)
            body = latex_to_plain(a, depth + 1).strip()
            if body:  # ^\circ converts to nothing: drop the ^ with it
                out.append(f"^({body})" if c == "^" else "_" + re.sub(r"\W", "", body))
        elif c == "{":
            g = balanced_group(s, i)
            if g is None:
                raise ValueError("unbalanced braces")
            out.append(f"({latex_to_plain(g[0], depth + 1)})")
            i = g[1]
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _strip_units(s: str) -> str:
    """'5 apples' -> '5', '18 square feet' -> '18'; single letters and maths words stay."""
    tokens = s.split(" ")
    while len(tokens) > 1:
        word = tokens[-1].rstrip(".")
        word = re.sub(r"\^\(?\d\)?$", "", word)  # cm^2
        if len(word) >= 2 and word.isalpha() and word.isascii() and word.lower() not in _MATH_WORDS:
            tokens.pop()
        else:
            break
    return " ".join(tokens)


_MIXED = re.compile(r"(?<![\d.}^_])(\d+)\s*\\[dt]?frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}")
_PM = re.compile(r"\\pm|\u00b1")


def _expand_pm(s: str) -> str:
    """'a \\pm b' -> 'a+(b), a-(b)' (a set of two answers); only a single top-level \\pm."""
    found = list(_PM.finditer(s))
    if len(found) != 1:
        return s
    m = found[0]
    left, right = s[: m.start()].strip(), s[m.end() :].strip()
    if not right or "," in s or "=" in s:
        return s
    return f"{left}+({right}), {left}-({right})" if left else f"{right}, -({right})"


def prepare(s: str) -> str:
    """Plain ASCII form of a whole answer (before splitting tuples/sets); ValueError if unreadable."""
    if len(s) > MAX_ANSWER_CHARS:
        raise Refused("answer too long")
    s = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", s)
    for k, v in _UNICODE.items():
        s = s.replace(k, v)
    s = unicodedata.normalize("NFKC", s).strip()
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    s = s.replace("{,}", "")  # European LaTeX thousands separator
    # A whole number written right before a numeric fraction is a mixed number (MATH writes
    # 3\frac{1}{2} for 7/2); a product would be written with \cdot or \times.
    s = _MIXED.sub(lambda m: f"({m.group(1)}+{m.group(2)}/{m.group(3)})", s)
    s = _expand_pm(s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = re.sub(r"\\[()\[\]]", " ", s)  # \( \) \[ \] math delimiters
    s = latex_to_plain(s)
    s = re.sub(r"([A-Za-z])\s+\^", r"\1^", s)  # "\text{cm}^2" -> "cm^(2)": one unit word to strip
    # "1 200" groups thousands with a space (SI style); any other "2 3" is not one answer (SymPy
    # would read it as 2*3), so it is refused rather than multiplied.
    s = re.sub(r"(?<![\d.])\d{1,3}(?: \d{3})+(?![\d.])", lambda m: m.group(0).replace(" ", ""), s)
    if re.search(r"\d\s+\d", s):
        raise Refused("two numbers side by side")
    s = re.sub(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d])", lambda m: m.group(1).replace(",", ""), s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".;").strip()
    if not s:
        raise ValueError("empty answer")
    return s


def finish(s: str) -> str:
    """One element of an answer: drop 'x =', units and stray punctuation."""
    s = s.strip().lstrip("=").strip()
    # "x = 5", "y=2x+1", "a = b = 5": keep what follows the last "=" when the left is a name.
    if "=" in s and "!=" not in s and "<" not in s and ">" not in s:
        parts = s.split("=")
        if re.fullmatch(r"\s*[A-Za-z]\w*(?:\(\w+\))?\s*", parts[0]):
            s = parts[-1].strip()
    s = _strip_units(s).strip().rstrip(".").strip()
    if not s:
        raise ValueError("empty answer")
    # A one-letter name before "(" is a product, x(x+1), not a call: SymPy would read a call, which
    # the helper's allow-list refuses. (Function names are longer: sin(, log(, sqrt(.)
    return re.sub(r"(?<![A-Za-z_])([A-Za-z])\s*\(", r"\1*(", s)


def split_structure(s: str) -> tuple[str, list[str]]:
    """('single', [s]) or (kind, elements) for tuples '(...)', intervals, '[...]', sets and lists.

    kind is the pair of outer brackets, 'set' (braces or a bare comma list: order ignored).
    """
    parts, depth, start = [], 0, 0
    for j, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(s[start:j].strip())
            start = j + 1
    if parts:
        return "set", parts + [s[start:].strip()]
    if len(s) >= 2 and s[0] in "([{" and s[-1] in ")]}":
        inner = s[1:-1]
        # The outer pair must enclose everything: "(1)(2)" is not a tuple.
        depth = 0
        for c in inner:
            depth += c in "([{"
            depth -= c in ")]}"
            if depth < 0:
                return "single", [s]
        kind, elems = split_structure(inner)
        if kind == "set" and len(elems) > 1:
            return ("set" if s[0] == "{" else s[0] + s[-1]), elems
    return "single", [s]
