"""Tests for the verifier: the reward signal, so false positives are the failures that matter."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest
from verify_cases import CASES as PAIRS  # tests/ is on sys.path (rootdir conftest)
from verify_cases import KNOWN_GAPS

from agentic_gcpo.verify import VerifyResult, extract_answer, is_equivalent, verify
from agentic_gcpo.verify.rules import (
    fit_for_math_verify,
    inequality_to_interval,
    shape,
    shapes_compatible,
)
from agentic_gcpo.verify.units import split_unit

# (model text, reference, expected verify(...).correct)
CASES: list[tuple[str, str, bool]] = [
    # --- GSM8K-style plain numbers
    ("#### 72", "72", True),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72", True),
    ("#### 71", "72", False),
    ("The answer is $1,200.", "1200", True),
    ("The answer is $1,200.", "1,200", True),
    ("The answer is 1200.", "1,200", True),
    ("The answer is 1,201.", "1,200", False),
    ("So she earns 18 dollars.", "18", True),
    ("Total: $18.00", "18", True),
    ("The answer is: 18.", "18", True),
    ("answer: 5 apples", "5", True),
    ("He has 5 apples and 3 pears, so 8 fruits", "8", True),
    ("He has 5 apples and 3 pears, so 8 fruits", "5", False),
    ("The temperature dropped to -3 degrees", "-3", True),
    ("The temperature dropped to -3 degrees", "3", False),
    ("x = 5 - 8 = -3", "-3", True),
    ("It costs .5 dollars", "0.5", True),
    ("The final answer is 1,234.5", "1234.5", True),
    ("Full GSM8K reference passed in", "Janet... <<16-3-4=9>>9 eggs\n#### 18", False),
    ("#### 18", "Janet... <<16-3-4=9>>9 eggs\n#### 18", True),
    ("**Answer:** 42", "42", True),
    ("Answer: $\\$5$", "5", True),
    ("The answer is $$\\frac{1}{2}$$.", "0.5", True),
    ("The answer is \\( -\\frac{3}{2} \\).", "-1.5", True),
    ("the answer is 42. Then I double-checked with 43", "42", True),
    ("I computed 10 then 20 then 30", "30", True),
    ("I computed 10 then 20 then 30", "10", False),
    # --- boxed
    ("\\boxed{5}", "5", True),
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{\\frac{1}{2}}", "1/2", True),
    ("\\boxed{\\frac{1}{2}}", "\\frac{2}{4}", True),
    ("\\boxed{\\frac{1}{3}}", "0.5", False),
    ("First \\boxed{3}, on reflection \\boxed{4}", "4", True),
    ("First \\boxed{3}, on reflection \\boxed{4}", "3", False),
    ("\\boxed{\\boxed{7}}", "7", True),
    ("\\fbox{7}", "7", True),
    ("$\\boxed{12}$.", "12", True),
    ("\\boxed 9", "9", True),
    ("\\boxed{3} and then truncated \\boxed{4", "3", True),
    ("The answer is 6 but \\boxed{5}", "5", True),
    ("\\boxed{\\text{5 apples}}", "5", True),
    ("\\boxed{\\$1,200}", "1200", True),
    # --- decimals, fractions, tolerance
    ("\\boxed{0.75}", "3/4", True),
    ("\\boxed{3/4}", "\\frac{3}{4}", True),
    ("\\boxed{\\dfrac{3}{4}}", "0.75", True),
    ("\\boxed{\\tfrac34}", "0.75", True),
    ("\\boxed{0.333}", "1/3", False),
    ("\\boxed{0.3333333}", "\\frac{1}{3}", True),
    ("\\boxed{1000001}", "1000000", False),
    ("\\boxed{1000000.0}", "1000000", True),
    ("\\boxed{2.5}", "5/2", True),
    ("\\boxed{2.50}", "2.5", True),
    ("\\boxed{-\\frac{1}{2}}", "-0.5", True),
    ("\\boxed{\\frac{-1}{2}}", "-1/2", True),
    ("\\boxed{\\frac{1}{2}}", "-1/2", False),
    ("\\boxed{1e3}", "1000", True),
    ("\\boxed{3 \\times 10^{3}}", "3000", True),
    ("\\boxed{2 \\cdot 3}", "6", True),
    ("\\boxed{\\left( \\frac{1}{2} \\right)}", "0.5", True),
    # --- percent (policy: the sign is dropped, no /100)
    ("\\boxed{18\\%}", "18", True),
    ("The answer is 18%.", "18", True),
    ("\\boxed{18\\%}", "0.18", True),  # the value reading of a percent
    ("\\boxed{25 percent}", "25", True),
    # --- symbolic
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
    ("\\boxed{2*sqrt(2)}", "sqrt(8)", True),
    ("\\boxed{\\sqrt{2}}", "1.41421356", True),
    ("\\boxed{\\sqrt{2}}", "1.414", False),
    ("\\boxed{\\sqrt[3]{27}}", "3", True),
    ("\\boxed{x^2-1}", "(x-1)(x+1)", True),
    ("\\boxed{x^2+1}", "(x-1)(x+1)", False),
    ("\\boxed{2x+3x}", "5x", True),
    ("\\boxed{5x}", "5", False),
    ("\\boxed{\\pi}", "3.14159265", True),
    ("\\boxed{2\\pi}", "2", False),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", True),
    ("\\boxed{\\sin^2 x + \\cos^2 x}", "1", True),
    ("\\boxed{\\sqrt{x^2}}", "x", False),
    ("\\boxed{e^{i\\pi}}", "-1", True),
    ("\\boxed{3+4i}", "3+4i", True),
    ("\\boxed{3-4i}", "3+4i", False),
    ("\\boxed{x = 5}", "5", True),
    ("\\boxed{y = 2x+1}", "2x+1", True),
    ("\\boxed{x=6}", "5", False),
    ("\\boxed{\\infty}", "\\infty", True),
    ("\\boxed{-\\infty}", "\\infty", False),
    ("\\boxed{5!}", "120", True),
    ("\\boxed{90^\\circ}", "90", True),
    # --- tuples, intervals, sets
    ("\\boxed{(1, 2)}", "(1,2)", True),
    ("\\boxed{(2, 1)}", "(1,2)", False),
    ("\\boxed{[1, 2)}", "[1,2)", True),
    ("\\boxed{[1, 2]}", "[1,2)", False),
    ("\\boxed{\\{1, 2\\}}", "\\{2,1\\}", True),
    ("\\boxed{3, 2}", "2, 3", True),
    ("\\boxed{3, 2}", "2, 3, 4", False),
    ("\\boxed{(\\frac{1}{2}, \\sqrt{4})}", "(0.5, 2)", True),
    # --- nothing to find, garbage, hostile input
    ("", "5", False),
    ("I don't know.", "5", False),
    ("\\boxed{}", "5", False),
    ("\\boxed{five}", "5", False),
    ("\x00\x00\x00", "5", False),
    ("\x00 5 \x00", "5", True),
    ("答案是 \\boxed{５}", "5", True),
    ("🤖🤖🤖 \\boxed{🤖}", "5", False),
    ("\\boxed{" * 500 + "5" + "}" * 500, "5", True),
    ("\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}", "1", False),
    ("\\boxed{" + "9" * 5000 + "}", "9" * 5000, False),
    ("\\boxed{" + "1" + "0" * 300 + "}", "1e300", True),
    ("\\boxed{" + "1" + "0" * 300 + "}", "1e301", False),
    ("\\boxed{1e999999999}", "1", False),
    ("\\boxed{__import__('os').system('true')}", "0", False),
    ("\\boxed{(lambda: 1)()}", "1", False),
    ("\\boxed{x.__class__}", "x", False),
    ("\\boxed{\\frac{1}{0}}", "1", False),
    ("\\boxed{5}", "", False),
    ("\\boxed{5}", "\x00", False),
]


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 80
    assert sum(1 for c in CASES if not c[2]) >= 30  # plenty of must-reject cases


@pytest.mark.parametrize(("text", "reference", "expected"), CASES)
def test_verify_table(text: str, reference: str, expected: bool) -> None:
    result = verify(text, reference)
    assert isinstance(result, VerifyResult)
    assert result.correct is expected, result


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{\\sqrt{\\frac{a}{b}}}", "\\sqrt{\\frac{a}{b}}"),
        ("The answer is $1,200.", "$1,200"),
        ("The answer is $\\frac{3}{4}$ exactly", "\\frac{3}{4}"),
        ("Final answer: 3.5.", "3.5"),
        ("blah\n#### 1,234", "1,234"),
        ("we get 3/4 of it", "3/4"),
        ("it is -3 now", "-3"),
        ("about .5 left", ".5"),
        ("a total of 1,234.5 kg.", "1,234.5"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_reasons() -> None:
    assert verify("\\boxed{5}", "5") == VerifyResult(True, "5", "match")
    assert verify("\\boxed{6}", "5").reason == "mismatch"
    assert verify("nothing", "5") == VerifyResult(False, None, "no answer found")
    assert verify("\\boxed{}", "5").reason == "unparseable"
    assert is_equivalent("x^2-1", "(x-1)(x+1)")
    assert not is_equivalent("0.333", "1/3")


@pytest.mark.parametrize("bad", [None, 5, b"5", ["5"]])
def test_never_raises_on_wrong_types(bad: object) -> None:
    assert verify(bad, "5").correct is False  # type: ignore[arg-type]
    assert verify("5", bad).correct is False  # type: ignore[arg-type]
    assert is_equivalent(bad, "5") is False  # type: ignore[arg-type]


def test_huge_text_is_fast() -> None:
    text = ("lorem 12 ipsum " * 200_000) + "#### 7"
    t0 = time.monotonic()
    assert verify(text, "7").correct
    assert time.monotonic() - t0 < 2.0


@pytest.mark.parametrize("evil", ["9**9**9**9", "10^(10^(10^10))", "factorial(10^9)"])
def test_adversarial_sympy_input_times_out(evil: str) -> None:
    assert is_equivalent("x+1", "1+x")  # warm a helper so startup is not part of the timing
    t0 = time.monotonic()
    result = verify(f"\\boxed{{{evil}}}", "1", timeout_s=0.5)
    assert time.monotonic() - t0 < 0.5 + 1.0
    assert result.correct is False
    assert result.reason in ("timeout", "mismatch", "unparseable")
    # The helper that hung was replaced: symbolic checks still work afterwards.
    assert is_equivalent("2\\sqrt{2}", "\\sqrt{8}")


def test_thread_safety() -> None:
    jobs = [(t, r, e) for t, r, e in CASES if len(t) < 200] * 2
    jobs.append(("\\boxed{9**9**9**9}", "1", False))
    results: dict[int, bool] = {}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(k, len(jobs), 8):
                text, ref, _ = jobs[i]
                # 3 s: generous enough that 8 threads on a loaded 2-core machine never time out a
                # plain case; the hanging power tower is still cut off by it
                results[i] = verify(text, ref, timeout_s=3.0).correct
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors
    assert time.monotonic() - t0 < 30
    assert [results[i] for i in range(len(jobs))] == [e for _, _, e in jobs]


def test_numeric_path_needs_no_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    # GSM8K answers never reach SymPy or math-verify: cheap enough to call per rollout. Counted, not timed.
    import agentic_gcpo.verify.core as core

    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(core, "helper_equal", lambda a, b, *args, **kw: calls.append((a, b)) or (False, "x"))
    for pred, ref, correct in [
        ("so the total is 1,200 dollars.\n#### 1200", "1,200", True),
        ("#### 0.5", "1/2", True),
        ("#### 7", "8", False),
    ]:
        assert verify(pred, ref).correct is correct, (pred, ref)
    assert calls == []


# --- the answer-pair table (tests/verify_cases.py; compared with math-verify in docs/verifier.md)


def test_pair_table_covers_the_formats() -> None:
    assert len(PAIRS) >= 400
    assert sum(not truth for _, _, truth, _ in PAIRS) >= 150  # plenty of near misses to reject
    categories = {c for *_, c in PAIRS}
    assert {"integer", "units", "fraction", "percent", "latex", "symbolic", "structure"} <= categories
    assert {"gsm8k", "aime", "matrix", "interval", "inequality", "set", "equation", "mixed"} <= categories
    assert len({(p, r) for p, r, _, _ in PAIRS}) == len(PAIRS)  # no pair counted twice


@pytest.mark.parametrize(
    ("pred", "ref", "truth"),
    [
        pytest.param(p, r, t, marks=pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[(p, r)]))
        if (p, r) in KNOWN_GAPS
        else (p, r, t)
        for p, r, t, _ in PAIRS
    ],
)
def test_answer_pairs(pred: str, ref: str, truth: bool) -> None:
    assert verify(f"\\boxed{{{pred}}}", ref, timeout_s=5.0).correct is truth


@pytest.mark.parametrize(
    ("modes", "expected"),
    [
        (None, "3"),  # boxed first
        (("answer_is",), "7"),
        (("gsm8k",), "9"),
        (("last_number",), "11"),
        (("last_number", "boxed"), "11"),
        (("answer_is", "boxed"), "7"),
    ],
)
def test_extraction_modes(modes: tuple[str, ...] | None, expected: str) -> None:
    text = "\\boxed{3} The answer is 7.\n#### 9\nand finally 11"
    assert extract_answer(text, modes) == expected
    assert verify(text, expected, modes=modes).correct


def test_extraction_mode_not_found_and_unknown() -> None:
    assert extract_answer("no box, 42", ("boxed",)) is None
    assert verify("no box, 42", "42", modes=("boxed",)).reason == "no answer found"
    with pytest.raises(ValueError, match="unknown extraction mode"):
        verify("\\boxed{1}", "1", modes=("boxd",))


# --- our rules where math-verify is wrong or silent (agentic_gcpo/verify/rules.py, units.py)


@pytest.mark.parametrize(
    ("answer", "interval"),
    [
        ("x > 3", "(3, \\infty)"),
        ("x \\ge 3", "[3, \\infty)"),
        ("3 \\le x", "[3, \\infty)"),
        ("3 > x", "(-\\infty, 3)"),
        ("-2 < x \\le 5", "(-2, 5]"),
        ("2 > x > 1", "(1, 2)"),
        ("x < 0 \\text{ or } x > 1", "(-\\infty, 0) \\cup (1, \\infty)"),
    ],
)
def test_inequality_becomes_its_interval(answer: str, interval: str) -> None:
    assert inequality_to_interval(answer) == (interval, "x")


@pytest.mark.parametrize("answer", ["x < 2x + 1", "1 < x > 3", "x + y > 3", "x > 3, y < 2", "x = 3", "5"])
def test_not_an_inequality_in_one_variable(answer: str) -> None:
    assert inequality_to_interval(answer) is None


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("\\{5\\}", "set"),
        ("0, 1", "set"),
        ("\\pm 2", "set"),
        ("(0, 1)", "interval"),
        ("(1,2)\\cup(3,4)", "interval"),
        ("\\begin{pmatrix}1&2\\end{pmatrix}", "matrix"),
        ("\\begin{vmatrix}1&2\\\\3&4\\end{vmatrix}", "determinant"),
        ("y = 2x + 1", "assignment"),
        ("2y = 4x + 2", "equation"),
        ("5", "scalar"),
        ("(1)+(2)", "scalar"),
    ],
)
def test_shapes(answer: str, expected: str) -> None:
    assert shape(answer) == expected


def test_math_verify_match_needs_compatible_shapes() -> None:
    # math-verify alone says "match" to both of these (docs/verifier.md); a grader does not.
    assert not shapes_compatible(shape("\\{5\\}"), shape("5"))
    assert not shapes_compatible(shape("(0, 1)"), shape("0, 1"))
    assert shapes_compatible(shape("y = 2x + 1"), shape("2y = 4x + 2"))


@pytest.mark.parametrize(
    ("answer", "number", "dim", "scale"),
    [
        ("5 cm", "5", "length", Fraction(1, 100)),
        ("5cm", "5", "length", Fraction(1, 100)),
        ("5\\text{ cm}^2", "5", "length", Fraction(1, 10000)),
        ("12 square feet", "12", "length", Fraction(3048, 10000) ** 2),
        ("2.5 h", "2.5", "time", Fraction(3600)),
        ("3,\\!600 \\text{ seconds}", "3,600", "time", Fraction(1)),
    ],
)
def test_split_unit(answer: str, number: str, dim: str, scale: Fraction) -> None:
    num, unit = split_unit(answer)
    assert unit is not None and (num, unit.dim, unit.scale) == (number, dim, scale)


@pytest.mark.parametrize("answer", ["2\\pi m", "x in", "2x m", "5 apples", "5"])
def test_split_unit_leaves_non_units(answer: str) -> None:
    assert split_unit(answer) == (answer, None)


def test_math_verify_is_not_shown_code() -> None:
    assert not fit_for_math_verify("(lambda: 1)()")  # math-verify alone parses this as 1
    assert not fit_for_math_verify("x.__class__")
    assert fit_for_math_verify("\\frac{1}{2}\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}")


def test_rule_names_the_deciding_step() -> None:
    assert verify("#### 1,200", "1200").rule == "exact"
    matrix = "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}"
    assert verify(f"\\boxed{{{matrix}}}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", timeout_s=5.0).rule == (
        "math-verify"
    )
    assert verify("\\boxed{e^{i\\pi}}", "-1", timeout_s=5.0).rule == "sympy"  # math-verify: i is a symbol
    assert verify("\\boxed{2 kg}", "2 m").rule == "units"
    assert verify("\\boxed{x = 2}", "y = 2").rule == "variable"


# --- `agentic-gcpo verify CANDIDATE REFERENCE --explain`, through the real CLI


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentic_gcpo.cli", "verify", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )


def test_cli_verify_explain_correct() -> None:
    out = _cli("The set is \\boxed{x > 3}.", "(3,\\infty)", "--explain")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("correct (reason: match; decided by: exact)")
    assert "extracted answer: 'x > 3'" in out.stdout
    assert "inequality-to-interval (x)" in out.stdout
    assert "shapes: answer interval; reference interval" in out.stdout


def test_cli_verify_explain_wrong() -> None:
    out = _cli("\\boxed{\\{5\\}}", "5", "--explain", "--timeout", "10")
    assert out.returncode == 1, out.stderr
    assert out.stdout.startswith("wrong (reason:")
    assert "shapes: answer set; reference scalar" in out.stdout
    assert "math-verify: not asked (shapes differ)" in out.stdout


def test_cli_verify_explain_unparseable() -> None:
    out = _cli("\\boxed{2 3}", "6", "--explain")
    assert out.returncode == 1, out.stderr
    assert out.stdout.startswith("wrong (reason: unparseable; decided by: refused)")
    assert "not readable (two numbers side by side)" in out.stdout
    out = _cli("I do not know", "6", "--explain")
    assert out.stdout.startswith("wrong (reason: no answer found; decided by: extraction)")
    assert "extracted answer: none" in out.stdout


def test_cli_verify_plain_and_bad_mode() -> None:
    out = _cli("#### 72", "72")
    assert (out.returncode, out.stdout.strip()) == (0, "correct (reason: match; decided by: exact)")
    out = _cli("#### 72", "72", "--extract", "boxd")
    assert out.returncode == 2 and "unknown extraction mode" in out.stdout
