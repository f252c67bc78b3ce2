"""Finding the final answer in model text (pure Python): \\boxed{}, "the answer is", ####, last number."""

from __future__ import annotations

import re

MAX_TEXT_CHARS = 1_000_000  # only the tail of a longer model output is searched


_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_RE = re.compile(r"\banswer\b\s*(?:is\b\s*:?|:|=)[ \t]*(.*)", re.IGNORECASE)
_GSM_RE = re.compile(r"####[ \t]*(.*)")
_NUMBER_RE = re.compile(
    r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|(?<![\w.])-?\.\d+"
)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")


def balanced_group(text: str, i: int) -> tuple[str, int] | None:
    """Content of the brace group opening at text[i] == '{' and the index after it; None if unclosed.

    Escaped braces (set notation ``\\{1,2\\}``) do not count towards the depth.
    """
    depth, j, n = 0, i, len(text)
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j], j + 1
        j += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} / \\fbox{...} (or ``\\boxed 5``); None if none."""
    for m in reversed(list(_BOX_RE.finditer(text))):
        i = m.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            group = balanced_group(text, i)
            if group is not None:  # a truncated last box falls back to an earlier complete one
                return group[0].strip()
        else:
            tok = re.match(r"[^\s$]+", text[i:])
            if tok:
                return tok.group(0)
    return None


_MATH_DOLLAR = re.compile(r"(?<!\\)\$+")  # an unescaped $ or $$ (\$ is a currency sign)


def _clean_phrase(x: str) -> str:
    x = x.strip().strip("*").strip()
    delims = list(_MATH_DOLLAR.finditer(x))
    # "$\frac{1}{2}$" is math: take what the first pair encloses; "$1,200." is currency.
    if x.startswith("$") and len(delims) >= 2:
        return x[delims[0].end() : delims[1].start()].strip()
    if x.startswith("\\(") and "\\)" in x:
        return x[2 : x.index("\\)")].strip()
    m = _SENTENCE_END.search(x)
    if m:
        x = x[: m.start()]
    return x.strip().rstrip(".").strip("*").strip()


EXTRACT_MODES = ("boxed", "answer_is", "gsm8k", "last_number")


def extract_answer(text: str, modes: tuple[str, ...] | list[str] = EXTRACT_MODES) -> str | None:
    """The final answer by the first mode (in the order given) that finds one; None if none does."""
    if not isinstance(text, str) or not text:
        return None
    unknown = [m for m in modes if m not in EXTRACT_MODES]
    if unknown:
        raise ValueError(f"unknown extraction mode(s) {unknown}; valid: {', '.join(EXTRACT_MODES)}")
    text = text[-MAX_TEXT_CHARS:]
    for mode in modes:
        if mode == "boxed":
            boxed = last_boxed(text)
            if boxed is not None:
                return boxed
        elif mode == "last_number":
            numbers = _NUMBER_RE.findall(text)
            if numbers:
                return numbers[-1]
        else:
            pattern = _ANSWER_RE if mode == "answer_is" else _GSM_RE
            for m in reversed(list(pattern.finditer(text))):
                phrase = _clean_phrase(m.group(1))
                if phrase:
                    return phrase
    return None


def reference_answer(ref: str) -> str:
    """Light normaliser for references: a full GSM8K solution keeps what follows its last ####."""
    if "####" in ref:
        return ref.rsplit("####", 1)[1].strip()
    boxed = last_boxed(ref)
    return boxed if boxed is not None else ref
