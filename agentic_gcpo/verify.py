"""The verifier: is the model's final answer equivalent to the reference? (the RL reward)

A wrong verifier silently turns RL into reward hacking, so this module prefers a false "wrong" to
a false "right", never raises, and never hangs.

Pipeline
  1. ``extract_answer`` (``modes`` picks and orders the extractors; default all, in this order):
     the last complete ``\\boxed{...}``/``\\fbox{...}`` (nested braces); else the
     last "the answer is X" / "answer: X"; else the last "#### X" (GSM8K); else the last number
     (``1,234.5``, ``-3``, ``3/4``, ``.5``). A truncated last box falls back to an earlier one.
  2. Both sides are normalised (``verify_normalise``): ``$``, ``\\$``, ``%``/``\\%``, ``^\\circ``,
     thousands separators (``1,200``, ``1\\,200``, ``1{,}200``), LaTeX (``\\frac``/``\\dfrac``/
     ``\\tfrac``, ``\\sqrt[n]{}``, ``\\left( \\right)``, ``\\cdot``, ``\\times``, ``\\text{}``), a
     leading ``x =``, trailing unit words (``5 apples``, ``18 dollars``) and trailing periods.
     The reference gets the same treatment; a full GSM8K solution is cut after its last ``####``.
  3. Tuples ``(1, 2)``, intervals ``[1, 2)`` and lists are compared element-wise (brackets must
     match); sets ``\\{1, 2\\}`` and bare comma lists ignore order.
  4. Plain arithmetic on numbers is decided exactly in pure Python with Fractions (all of GSM8K:
     no SymPy, no subprocess, tens of microseconds).
  5. Anything else goes to SymPy in a persistent helper process with a hard deadline
     (``verify_sympy``): implicit multiplication (``2x``, ``(x-1)(x+1)``), ``^``, ``sqrt``,
     ``pi``, ``e``, ``i``; equal if ``expand``/``simplify`` of the difference is 0, or, for
     expressions without symbols, if they agree numerically to ~25 significant digits.

Policy choices (tested in tests/test_verify.py)
  * Integers and exact fractions must be *exactly* equal ("1000001" != "1000000"; a 1e-6 relative
    tolerance would accept that). The 1e-6 relative / 1e-9 absolute tolerance applies only when
    one side is written as a decimal, i.e. was rounded: "0.3333333" == "1/3", "0.333" != "1/3".
  * A percent sign on one side only allows both readings of that side: "18%" == "18" (GSM8K
    writes percentages as plain numbers) and "18%" == "0.18" (the value); "0.18" != "18" because
    neither side wrote "%". Both sides with "%" compare the numbers as written.
  * Timeout, unparseable input or an internal error all mean "not equivalent".

Not covered (candidly): unit conversion ("5 m" vs "500 cm"), units glued to a number ("5cm" is
read as 5*c*m), single-letter unit words ("5 m"), ``\\pm``, inequalities and interval unions,
matrices, multiple-choice letters beyond plain string equality, mixed numbers ("2 1/2" is not
5/2), base subscripts (``1010_2``), words as answers ("yes"), and equations compared up to a
scalar factor. SymPy's assumption-free symbols mean ``sqrt(x^2)`` != ``x`` (correctly).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from agentic_gcpo.verify_normalise import (
    EXTRACT_MODES,
    finish,
    numbers_close,
    parse_number,
    prepare,
    reference_answer,
    split_structure,
)
from agentic_gcpo.verify_normalise import extract_answer as _extract_answer
from agentic_gcpo.verify_sympy import symbolic_equal

__all__ = ["EXTRACT_MODES", "VerifyResult", "check_modes", "extract_answer", "is_equivalent", "verify"]

_HUGE_EXPONENT = re.compile(r"\d[eE][-+]?\d{5,}")
_PERCENT = re.compile(r"%|\bpercent\b", re.IGNORECASE)
MAX_ELEMENTS = 16  # tuples/sets longer than this are refused rather than matched pairwise


@dataclass(frozen=True)
class VerifyResult:
    correct: bool
    extracted: str | None
    reason: str  # "match", "no answer found", "mismatch", "timeout", "unparseable", "error"


def check_modes(modes: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """Validated extraction modes (None: all, in the default order); ValueError names the bad one."""
    if modes is None:
        return EXTRACT_MODES
    modes = tuple(modes)
    bad = [m for m in modes if m not in EXTRACT_MODES]
    if bad or not modes:
        raise ValueError(f"unknown extraction mode(s) {bad}; valid: {', '.join(EXTRACT_MODES)}")
    return modes


def extract_answer(text: str, modes: tuple[str, ...] | list[str] | None = None) -> str | None:
    """The model's final answer as written (see module docstring for the order); None if none.

    `modes` picks and orders the extractors: "boxed", "answer_is", "gsm8k" (####), "last_number".
    """
    modes = check_modes(modes)
    try:
        return _extract_answer(text, modes)
    except Exception:
        return None


def _compare_single(a: str, b: str, deadline: float, percent: str = "") -> tuple[bool, str]:
    a, b = finish(a), finish(b)
    if a == b:
        return True, "match"
    ok, reason = _compare_values(a, b, deadline)
    if ok or reason == "timeout" or not percent:
        return ok, reason
    # Exactly one side carried a percent sign: "18%" also means 0.18 (the GSM8K reading, 18,
    # was tried above). Only the side that wrote "%" is rescaled, so "0.18" never equals "18".
    a, b = (f"({a})/100", b) if percent == "pred" else (a, f"({b})/100")
    ok2, reason2 = _compare_values(a, b, deadline)
    return (True, "match") if ok2 else (ok, reason if reason2 != "timeout" else reason2)


def _compare_values(a: str, b: str, deadline: float) -> tuple[bool, str]:
    na, nb = parse_number(a), parse_number(b)
    if na is not None and nb is not None:
        # Both are plain numbers: the exact path has the last word, SymPy is never consulted.
        ok = numbers_close(na[0], nb[0], inexact=na[1] or nb[1])
        return ok, "match" if ok else "mismatch"
    if _HUGE_EXPONENT.search(a) or _HUGE_EXPONENT.search(b):
        return False, "unparseable"  # 1e999999999: no real answer; SymPy would just burn the timeout
    return symbolic_equal(a, b, max(0.0, deadline - time.monotonic()))


def _compare(pred: str, ref: str, timeout_s: float) -> tuple[bool, str]:
    deadline = time.monotonic() + timeout_s
    try:
        a, b = prepare(pred), prepare(ref)
    except (ValueError, RecursionError):
        return False, "unparseable"
    if a == b:
        return True, "match"
    (ka, ea), (kb, eb) = split_structure(a), split_structure(b)
    if ka != kb or len(ea) != len(eb):
        if ka == kb == "single":
            return False, "unparseable"
        return False, "mismatch"
    if len(ea) > MAX_ELEMENTS:
        return False, "unparseable"
    try:
        if ka != "set":  # ordered: tuples, intervals, single answers
            pa, pb = bool(_PERCENT.search(pred)), bool(_PERCENT.search(ref))
            percent = "" if ka != "single" or pa == pb else ("pred" if pa else "ref")
            for x, y in zip(ea, eb, strict=True):  # lengths checked above
                ok, reason = _compare_single(x, y, deadline, percent)
                if not ok:
                    return False, reason
            return True, "match"
        unused = list(eb)
        for x in ea:  # greedy matching is enough: equivalence is transitive
            for y in unused:
                ok, reason = _compare_single(x, y, deadline)
                if reason == "timeout":
                    return False, reason
                if ok:
                    unused.remove(y)
                    break
            else:
                return False, "mismatch"
        return True, "match"
    except (ValueError, RecursionError):
        return False, "unparseable"


def is_equivalent(pred: str, ref: str, timeout_s: float = 2.0) -> bool:
    """True when two answer strings are mathematically equivalent. Never raises or hangs."""
    return _compare_safe(pred, ref, timeout_s)[0]


def _compare_safe(pred: object, ref: object, timeout_s: float) -> tuple[bool, str]:
    if not isinstance(pred, str) or not isinstance(ref, str):
        return False, "unparseable"
    try:
        return _compare(pred, ref, float(timeout_s))
    except Exception:  # the reward must never crash the trainer; count it as wrong
        return False, "error"


def verify(
    text: str, reference: str, timeout_s: float = 2.0, modes: tuple[str, ...] | list[str] | None = None
) -> VerifyResult:
    """Extract the final answer from model text and compare it with the reference answer.

    `modes` restricts/reorders extraction (see `extract_answer`); a bad mode raises ValueError
    (a configuration error, raised before any text is looked at).
    """
    extracted = extract_answer(text, check_modes(modes))
    if extracted is None:
        return VerifyResult(False, None, "no answer found")
    try:
        ref = reference_answer(reference) if isinstance(reference, str) else reference
    except Exception:
        return VerifyResult(False, extracted, "unparseable")
    ok, reason = _compare_safe(extracted, ref, timeout_s)
    return VerifyResult(ok, extracted, reason)
