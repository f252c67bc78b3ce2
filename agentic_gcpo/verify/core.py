"""The verifier: is the model's final answer equivalent to the reference? (the RL reward)

A wrong verifier silently turns RL into reward hacking, so this module prefers a false "wrong" to
a false "right", never raises, and never hangs.

Pipeline (``_decide``; docs/verifier.md has the cases behind each step)
  1. ``extract_answer``: the last ``\\boxed{}``, "the answer is X", "#### X" or the last number
     (``modes`` picks and orders them). A full GSM8K reference is cut after its last ``####``.
  2. Our LaTeX rules (``rules.rewrite``): ``x \\in`` prefix, inequality -> interval, plain-text
     mixed numbers; then units (``units.split_unit``): converted when both sides carry one of the
     same dimension, "wrong" when the dimensions differ, dropped when only one side wrote one.
  3. Exact numbers (``numeric``): when both sides are plain arithmetic on numbers (after our
     normaliser: thousands separators, percent, ``1e6``, ``\\$``, unit words), Fractions decide,
     exactly for integers and fractions, with a 1e-6 tolerance only when a decimal was written.
     No helper process, tens of microseconds (all of GSM8K and AIME).
  4. math-verify 0.9 (in a killable helper) on the rewritten LaTeX, when both answers have
     compatible shapes (``rules.shape``): its "match" decides.
  5. Our SymPy check (in a killable helper) on our normalised forms, element-wise for tuples and
     unordered for sets: ``i`` is the imaginary unit, ``e`` Euler's number, ``oo`` infinity.
  Timeout, unparseable input, a refusal (``normalise.Refused``) or an internal error mean "wrong".

Policy choices (tested in tests/test_verify.py)
  * Integers and exact fractions must be *exactly* equal ("1000001" != "1000000").
  * A percent sign on one side allows both readings of that side: "18%" == "18" (GSM8K) and
    "18%" == "0.18"; "0.18" != "18" because neither side wrote "%".
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from agentic_gcpo.verify.extract import EXTRACT_MODES, reference_answer
from agentic_gcpo.verify.extract import extract_answer as _extract_answer
from agentic_gcpo.verify.helper_pool import helper_equal
from agentic_gcpo.verify.normalise import MAX_ANSWER_CHARS, Refused, finish, prepare, split_structure
from agentic_gcpo.verify.numeric import absurd_number, numbers_close, parse_number
from agentic_gcpo.verify.rules import fit_for_math_verify, named_variable, rewrite, shape, shapes_compatible
from agentic_gcpo.verify.units import split_unit

_HUGE_EXPONENT = re.compile(r"\d[eE][-+]?\d{5,}")
_PERCENT = re.compile(r"%|\bpercent\b", re.IGNORECASE)
MAX_ELEMENTS = 16  # tuples/sets longer than this are refused rather than matched pairwise


@dataclass(frozen=True)
class VerifyResult:
    correct: bool
    extracted: str | None
    reason: str  # "match", "no answer found", "mismatch", "timeout", "unparseable", "error"
    # Which step decided ("exact": our normaliser and exact numbers, "math-verify", "sympy",
    # "units", "refused", ...), to debug a reward (`agentic-gcpo verify --explain`); not compared.
    rule: str = field(default="", compare=False)


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
    """The model's final answer as written; None if none.

    `modes` picks and orders the extractors: "boxed", "answer_is", "gsm8k" (####), "last_number".
    """
    modes = check_modes(modes)
    try:
        return _extract_answer(text, modes)
    except Exception:
        return None


class _NeedsHelper(Exception):
    """Raised by the helper-free pass when a comparison is not plain numbers."""


def _compare_values(a: str, b: str, deadline: float, helpers: bool) -> tuple[bool, str]:
    na, nb = parse_number(a), parse_number(b)
    if na is not None and nb is not None:
        # Both are plain numbers: the exact path has the last word, no other checker is asked.
        ok = numbers_close(na[0], nb[0], inexact=na[1] or nb[1])
        return ok, "match" if ok else "mismatch"
    if _HUGE_EXPONENT.search(a) or _HUGE_EXPONENT.search(b) or absurd_number(a) or absurd_number(b):
        raise Refused("absurdly large number")  # 1e999999999, 9**9**9**9: SymPy would burn the deadline
    if not helpers:
        raise _NeedsHelper
    return helper_equal(a, b, max(0.0, deadline - time.monotonic()))


def _compare_single(a: str, b: str, deadline: float, helpers: bool, percent: str = "") -> tuple[bool, str]:
    a, b = finish(a), finish(b)
    if a == b:
        return True, "match"
    ok, reason = _compare_values(a, b, deadline, helpers)
    if ok or reason == "timeout" or not percent:
        return ok, reason
    # Exactly one side carried a percent sign: "18%" also means 0.18 (the GSM8K reading, 18,
    # was tried above). Only the side that wrote "%" is rescaled, so "0.18" never equals "18".
    a, b = (f"({a})/100", b) if percent == "pred" else (a, f"({b})/100")
    ok2, reason2 = _compare_values(a, b, deadline, helpers)
    return (True, "match") if ok2 else (ok, reason if reason2 != "timeout" else reason2)


def _ours(pred: str, ref: str, percent: str, deadline: float, helpers: bool) -> tuple[bool, str, bool]:
    """Our normaliser + exact numbers (+ SymPy when `helpers`): (equal, reason, final).

    Not final means "I could not decide without a helper" or "the shapes differ as I read them":
    the next checker may still say "match".
    """
    try:
        a, b = prepare(pred), prepare(ref)
    except Refused:
        return False, "unparseable", True
    except (ValueError, RecursionError):
        return False, "unparseable", False
    if a == b:
        return True, "match", True
    (ka, ea), (kb, eb) = split_structure(a), split_structure(b)
    if ka != kb or len(ea) != len(eb):
        return False, "unparseable" if ka == kb == "single" else "mismatch", False
    if len(ea) > MAX_ELEMENTS:
        return False, "unparseable", True
    try:
        if ka != "set":  # ordered: tuples, intervals, single answers
            pct = percent if ka == "single" else ""
            for x, y in zip(ea, eb):  # lengths checked above
                ok, reason = _compare_single(x, y, deadline, helpers, pct)
                if not ok:
                    return False, reason, True
            return True, "match", True
        unused = list(eb)
        for x in ea:  # greedy matching is enough: equivalence is transitive
            for y in unused:
                ok, reason = _compare_single(x, y, deadline, helpers)
                if reason == "timeout":
                    return False, reason, True
                if ok:
                    unused.remove(y)
                    break
            else:
                return False, "mismatch", True
        return True, "match", True
    except _NeedsHelper:
        return False, "deferred", False
    except Refused:
        return False, "unparseable", True
    except (ValueError, RecursionError):
        return False, "unparseable", False


def _percent_side(pred: str, ref: str) -> str:
    pa, pb = bool(_PERCENT.search(pred)), bool(_PERCENT.search(ref))
    return "" if pa == pb else ("pred" if pa else "ref")


def _decide(pred: str, ref: str, timeout_s: float, notes: list[str] | None = None) -> tuple[bool, str, str]:
    """(equal, reason, rule that decided). `notes`, when given, collects the why for --explain."""
    note = notes.append if notes is not None else (lambda _: None)
    deadline = time.monotonic() + timeout_s
    if len(pred) > MAX_ANSWER_CHARS or len(ref) > MAX_ANSWER_CHARS:
        note("refused: an answer over 2,000 characters")
        return False, "unparseable", "refused"
    la, fired_a = rewrite(pred)
    lb, fired_b = rewrite(ref)
    note(f"our LaTeX rules: answer {fired_a or 'none'}; reference {fired_b or 'none'}")
    note(f"rewritten: answer {la!r}; reference {lb!r}")
    va, vb = named_variable(pred, fired_a), named_variable(ref, fired_b)
    if va and vb and va != vb:  # "x = 2" is not "y = 2" (a vertical vs a horizontal line)
        note(f"variables differ: answer about {va}, reference about {vb}")
        return False, "mismatch", "variable"
    (na, ua), (nb, ub) = split_unit(la), split_unit(lb)
    if ua is not None and ub is not None:
        if not ua.same_dimension(ub):
            note(f"units: {ua.written!r} and {ub.written!r} measure different things")
            return False, "mismatch", "units"
        r = ua.scale / ub.scale
        la, lb = (na if r == 1 else f"({na})\\cdot\\frac{{{r.numerator}}}{{{r.denominator}}}"), nb
        note(f"units: {ua.written!r} -> {ub.written!r} (x {r})")
    elif ua is not None or ub is not None:
        la, lb = na, nb
        note(f"units: {(ua or ub).written!r} written on one side only: dropped")  # type: ignore[union-attr]
    sa, sb = shape(la), shape(lb)
    note(f"shapes: answer {sa}; reference {sb}")
    percent = _percent_side(pred, ref)
    matrix = bool({"matrix", "determinant"} & {sa, sb})  # our normaliser does not read matrices
    if not matrix:
        try:
            note(f"normalised (ours): answer {prepare(la)!r}; reference {prepare(lb)!r}")
        except ValueError as e:
            note(f"normalised (ours): not readable ({e})")
        ok, reason, final = _ours(la, lb, percent, deadline, helpers=False)
        note(f"exact numbers: {reason}{' (final)' if final else ''}")
        if ok or final:
            return ok, reason, "exact" if reason != "unparseable" else "refused"
    if not (fit_for_math_verify(la) and fit_for_math_verify(lb)):
        note("math-verify: not asked (characters that are not maths)")
    elif shapes_compatible(sa, sb):
        ok, reason = helper_equal(la, lb, max(0.0, deadline - time.monotonic()), kind="math_verify")
        note(f"math-verify: {reason}")
        if ok or reason == "timeout":
            return ok, reason, "math-verify"
    else:
        note("math-verify: not asked (shapes differ)")
    if matrix:
        return False, "mismatch", "math-verify"
    ok, reason, _ = _ours(la, lb, percent, deadline, helpers=True)
    note(f"sympy (ours): {reason}")
    return ok, reason, "sympy"


def _decide_safe(pred: object, ref: object, timeout_s: float, notes: list[str] | None = None):
    if not isinstance(pred, str) or not isinstance(ref, str):
        return False, "unparseable", "refused"
    try:
        return _decide(pred, ref, float(timeout_s), notes)
    except Exception as e:  # the reward must never crash the trainer; count it as wrong
        if notes is not None:
            notes.append(f"internal error: {type(e).__name__}: {e}")
        return False, "error", "error"


def is_equivalent(pred: str, ref: str, timeout_s: float = 2.0) -> bool:
    """True when two answer strings are mathematically equivalent. Never raises or hangs."""
    return _decide_safe(pred, ref, timeout_s)[0]


def verify(
    text: str,
    reference: str,
    timeout_s: float = 2.0,
    modes: tuple[str, ...] | list[str] | None = None,
    notes: list[str] | None = None,
) -> VerifyResult:
    """Extract the final answer from model text and compare it with the reference answer.

    `modes` restricts/reorders extraction (see `extract_answer`); a bad mode raises ValueError
    (a configuration error, raised before any text is looked at). `notes`, when given, receives
    one line per step saying what it found (``agentic-gcpo verify --explain``).
    """
    extracted = extract_answer(text, check_modes(modes))
    if extracted is None:
        return VerifyResult(False, None, "no answer found", "extraction")
    try:
        ref = reference_answer(reference) if isinstance(reference, str) else reference
    except Exception:
        return VerifyResult(False, extracted, "unparseable", "extraction")
    if notes is not None:
        notes.append(f"extracted answer: {extracted!r}; reference answer: {ref!r}")
    ok, reason, rule = _decide_safe(extracted, ref, timeout_s, notes)
    return VerifyResult(ok, extracted, reason, rule)
