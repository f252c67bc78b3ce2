"""The answer-pair table for the verifier (tests/test_verify.py runs it) and the math-verify comparison.

Each case is (prediction, reference, truth, category): `truth` is what a careful grader says, not
what any checker does. Predictions are final answers as a model writes them inside \\boxed{}.
The pairs come from the field's known trouble spots: MATH / MATH-500 answer formats, GSM8K
formatting, math-verify's and lm-eval-harness's issue trackers (percent, units, \\text{}, intervals,
sets, implicit multiplication, near-miss decimals, huge integers).

`KNOWN_GAPS` lists the pairs where this project's verifier disagrees with the truth on purpose or
by a documented limitation (docs/verifier.md); the test marks them xfail (strict) so a fix shows up.

Run as a script to compare with math-verify (not a dependency; `pip install math-verify`):

    python tests/verify_cases.py            # prints the Markdown tables used in docs/verifier.md
"""

from __future__ import annotations

T, F = True, False

CASES: list[tuple[str, str, bool, str]] = [
    # --- integers and GSM8K-style formatting
    ("72", "72", T, "integer"),
    ("072", "72", T, "integer"),
    ("+72", "72", T, "integer"),
    ("72.0", "72", T, "integer"),
    ("72.00", "72", T, "integer"),
    ("71", "72", F, "integer"),
    ("720", "72", F, "integer"),
    ("7.2", "72", F, "integer"),
    ("-72", "72", F, "integer"),
    ("1,200", "1200", T, "integer"),
    ("1{,}200", "1200", T, "integer"),
    ("1\\,200", "1200", T, "integer"),
    ("1,234,567", "1234567", T, "integer"),
    ("1,201", "1200", F, "integer"),
    ("12,00", "1200", F, "integer"),
    ("1000001", "1000000", F, "integer"),
    ("999999999999999999999", "999999999999999999998", F, "integer"),
    ("123456789012345678901234567890", "123456789012345678901234567890", T, "integer"),
    ("10^{6}", "1000000", T, "integer"),
    ("1e6", "1000000", T, "integer"),
    ("2^{10}", "1024", T, "integer"),
    ("2^{10}", "1000", F, "integer"),
    ("0", "0", T, "integer"),
    ("-0", "0", T, "integer"),
    ("0", "1", F, "integer"),
    # --- currency and units (stripped; no conversion)
    ("\\$18", "18", T, "units"),
    ("\\$18.00", "18", T, "units"),
    ("18 dollars", "18", T, "units"),
    ("\\$1,200.50", "1200.5", T, "units"),
    ("18\\text{ dollars}", "18", T, "units"),
    ("\\text{18 dollars}", "18", T, "units"),
    ("5 apples", "5", T, "units"),
    ("5\\text{ cm}", "5", T, "units"),
    ("5 \\text{cm}^2", "5", T, "units"),
    ("12 square feet", "12", T, "units"),
    ("90^\\circ", "90", T, "units"),
    ("90^{\\circ}", "90", T, "units"),
    ("90 degrees", "90", T, "units"),
    ("45^\\circ", "90", F, "units"),
    ("\\$17", "18", F, "units"),
    ("18 dollars", "17", F, "units"),
    ("3 hours", "180", F, "units"),
    ("2\\mbox{ km}", "2", T, "units"),
    ("7\\ \\text{meters}", "7", T, "units"),
    ("40 \\mathrm{mph}", "40", T, "units"),
    # --- decimals, fractions, tolerance
    ("0.5", "1/2", T, "fraction"),
    ("\\frac{1}{2}", "0.5", T, "fraction"),
    ("\\frac12", "0.5", T, "fraction"),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", T, "fraction"),
    ("\\tfrac{3}{4}", "0.75", T, "fraction"),
    ("\\frac{2}{4}", "\\frac{1}{2}", T, "fraction"),
    ("\\frac{6}{8}", "\\frac{3}{4}", T, "fraction"),
    ("-\\frac{1}{2}", "-0.5", T, "fraction"),
    ("\\frac{-1}{2}", "-\\frac{1}{2}", T, "fraction"),
    ("\\frac{1}{-2}", "-0.5", T, "fraction"),
    ("\\frac{1}{2}", "-\\frac{1}{2}", F, "fraction"),
    ("\\frac{1}{3}", "0.3333333", T, "fraction"),
    ("\\frac{1}{3}", "0.333", F, "fraction"),
    ("\\frac{1}{3}", "0.33", F, "fraction"),
    ("\\frac{2}{3}", "0.6666667", T, "fraction"),
    ("\\frac{2}{3}", "0.67", F, "fraction"),
    ("0.1+0.2", "0.3", T, "fraction"),
    ("3.14", "\\pi", F, "fraction"),
    ("3.14159265", "\\pi", T, "fraction"),
    ("2.5", "\\frac{5}{2}", T, "fraction"),
    ("2.50", "2.5", T, "fraction"),
    (".5", "0.5", T, "fraction"),
    ("\\frac{7}{2}", "3.5", T, "fraction"),
    ("\\frac{7}{2}", "3.6", F, "fraction"),
    ("\\frac{10}{4}", "\\frac{5}{2}", T, "fraction"),
    ("\\frac{a}{b}", "a/b", T, "fraction"),
    ("\\frac{1}{0}", "1", F, "fraction"),
    ("1/2", "2/4", T, "fraction"),
    ("1/2", "1/3", F, "fraction"),
    ("0.125", "\\frac{1}{8}", T, "fraction"),
    ("\\frac{1}{8}", "0.12", F, "fraction"),
    ("3\\frac{1}{2}", "3.5", T, "fraction"),  # a mixed number in MATH's answers
    ("3\\frac{1}{2}", "1.5", F, "fraction"),
    ("x\\frac{1}{2}", "\\frac{x}{2}", T, "fraction"),
    # --- percentages
    ("18\\%", "18", T, "percent"),
    ("18%", "18", T, "percent"),
    ("18\\%", "0.18", T, "percent"),
    ("50\\%", "\\frac{1}{2}", T, "percent"),
    ("12.5\\%", "0.125", T, "percent"),
    ("12.5\\%", "12.5", T, "percent"),
    ("18\\%", "18\\%", T, "percent"),
    ("0.18", "18", F, "percent"),
    ("18", "0.18", F, "percent"),
    ("18\\%", "1.8", F, "percent"),
    ("19\\%", "18", F, "percent"),
    ("25 percent", "25", T, "percent"),
    ("25 percent", "0.25", T, "percent"),
    ("100\\%", "1", T, "percent"),
    ("0.25", "25\\%", T, "percent"),
    ("25", "25\\%", T, "percent"),
    ("2.5", "25\\%", F, "percent"),
    # --- LaTeX forms
    ("\\left(\\frac{1}{2}\\right)", "0.5", T, "latex"),
    ("\\displaystyle\\frac{1}{2}", "0.5", T, "latex"),
    ("\\sqrt{4}", "2", T, "latex"),
    ("\\sqrt{2}", "2^{1/2}", T, "latex"),
    ("\\sqrt{8}", "2\\sqrt{2}", T, "latex"),
    ("\\sqrt{12}", "2\\sqrt{3}", T, "latex"),
    ("\\sqrt{12}", "3\\sqrt{2}", F, "latex"),
    ("\\sqrt[3]{27}", "3", T, "latex"),
    ("\\sqrt[3]{8}", "3", F, "latex"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", T, "latex"),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", T, "latex"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{\\sqrt{3}}{2}", F, "latex"),
    ("2\\cdot 3", "6", T, "latex"),
    ("2 \\times 3", "6", T, "latex"),
    ("3 \\times 10^{3}", "3000", T, "latex"),
    ("6 \\div 2", "3", T, "latex"),
    ("\\pi", "\\pi", T, "latex"),
    ("2\\pi", "\\pi \\cdot 2", T, "latex"),
    ("\\frac{\\pi}{2}", "\\frac{1}{2}\\pi", T, "latex"),
    ("\\frac{\\pi}{3}", "\\frac{\\pi}{6}", F, "latex"),
    ("\\frac{3\\pi}{4}", "0.75\\pi", T, "latex"),
    ("\\infty", "\\infty", T, "latex"),
    ("-\\infty", "\\infty", F, "latex"),
    ("e^{i\\pi}", "-1", T, "latex"),
    ("\\mathbf{5}", "5", T, "latex"),
    ("\\textbf{5}", "5", T, "latex"),
    ("{5}", "5", T, "latex"),
    ("\\{5\\}", "5", F, "latex"),  # a one-element set is not a number
    ("5!", "120", T, "latex"),
    ("\\binom{5}{2}", "10", T, "latex"),
    ("\\dbinom{6}{3}", "15", F, "latex"),
    ("\\log_2 8", "3", T, "latex"),
    ("\\ln e", "1", T, "latex"),
    ("\\sin \\frac{\\pi}{6}", "\\frac{1}{2}", T, "latex"),
    ("\\cos 0", "1", T, "latex"),
    ("\\tan \\frac{\\pi}{4}", "2", F, "latex"),
    # --- symbolic (SymPy)
    ("x^2-1", "(x-1)(x+1)", T, "symbolic"),
    ("x^2+1", "(x-1)(x+1)", F, "symbolic"),
    ("(x+1)^2", "x^2+2x+1", T, "symbolic"),
    ("(x+1)^2", "x^2+x+1", F, "symbolic"),
    ("2x+3x", "5x", T, "symbolic"),
    ("5x", "5", F, "symbolic"),
    ("\\frac{x}{2}", "0.5x", T, "symbolic"),
    ("\\frac{x^2-1}{x-1}", "x+1", T, "symbolic"),
    ("\\sin^2 x + \\cos^2 x", "1", T, "symbolic"),
    ("\\sqrt{x^2}", "x", F, "symbolic"),
    ("2\\sqrt{2}+1", "1+\\sqrt{8}", T, "symbolic"),
    ("a+b", "b+a", T, "symbolic"),
    ("a-b", "b-a", F, "symbolic"),
    ("3+4i", "3+4i", T, "symbolic"),
    ("3-4i", "3+4i", F, "symbolic"),
    ("i^2", "-1", T, "symbolic"),
    ("\\frac{1}{1+i}", "\\frac{1-i}{2}", T, "symbolic"),
    ("e^{\\ln 5}", "5", T, "symbolic"),
    ("\\log_{10} 1000", "3", T, "symbolic"),
    ("2^{x+1}", "2\\cdot 2^x", T, "symbolic"),
    ("x^3", "x^2", F, "symbolic"),
    ("\\frac{1}{x}", "x^{-1}", T, "symbolic"),
    ("\\frac{2}{x}", "\\frac{1}{2x}", F, "symbolic"),
    ("\\sqrt{2}", "1.41421356", T, "symbolic"),
    ("\\sqrt{2}", "1.414", F, "symbolic"),
    ("10\\sqrt{5}", "\\sqrt{500}", T, "symbolic"),
    ("4\\sqrt{3}", "\\sqrt{48}", T, "symbolic"),
    ("4\\sqrt{3}", "\\sqrt{47}", F, "symbolic"),
    # --- equations and assignments
    ("x = 5", "5", T, "equation"),
    ("x=5", "x = 5", T, "equation"),
    ("y = 2x+1", "2x+1", T, "equation"),
    ("x=6", "5", F, "equation"),
    ("a = b = 5", "5", T, "equation"),
    ("k = \\frac{1}{2}", "0.5", T, "equation"),
    ("n = 10", "11", F, "equation"),
    ("f(x) = x^2", "x^2", T, "equation"),
    # --- tuples, intervals, sets, lists
    ("(1, 2)", "(1,2)", T, "structure"),
    ("(2, 1)", "(1,2)", F, "structure"),
    ("(1, 2, 3)", "(1,2)", F, "structure"),
    ("(\\frac{1}{2}, \\sqrt{4})", "(0.5, 2)", T, "structure"),
    ("(-1, 3)", "(-1,3)", T, "structure"),
    ("[1, 2)", "[1,2)", T, "structure"),
    ("[1, 2]", "[1,2)", F, "structure"),
    ("(1, 2]", "(1,2]", T, "structure"),
    ("(-\\infty, 3)", "(-\\infty,3)", T, "structure"),
    ("(-\\infty, 3]", "(-\\infty,3)", F, "structure"),
    ("[0, \\infty)", "[0,\\infty)", T, "structure"),
    ("\\{1, 2\\}", "\\{2,1\\}", T, "structure"),
    ("\\{1, 2, 3\\}", "\\{1,2\\}", F, "structure"),
    ("\\{1, 2\\}", "\\{1,3\\}", F, "structure"),
    ("3, 2", "2, 3", T, "structure"),
    ("3, 2", "2, 3, 4", F, "structure"),
    ("1, 2, 3", "3, 2, 1", T, "structure"),
    ("-2, 2", "\\pm 2", T, "structure"),
    ("1 \\pm \\sqrt{2}", "1+\\sqrt{2}, 1-\\sqrt{2}", T, "structure"),
    ("\\pm 3", "3", F, "structure"),
    ("x = 1, 2", "1, 2", T, "structure"),
    ("\\frac{1}{2}, \\frac{1}{3}", "0.5, 0.3333333", T, "structure"),
    ("(1,2) \\cup (3,4)", "(1,2) \\cup (3,4)", T, "structure"),  # identical text only
    ("(0, 1)", "0, 1", F, "structure"),  # a tuple is not an unordered list
    ("[1,2]", "[2,1]", F, "structure"),
    # --- text answers and multiple choice
    ("\\text{(A)}", "(A)", T, "text"),
    ("A", "A", T, "text"),
    ("B", "A", F, "text"),
    ("\\text{yes}", "yes", T, "text"),
    ("\\text{no}", "yes", F, "text"),
    ("\\text{Monday}", "Monday", T, "text"),
    ("\\text{Tuesday}", "Monday", F, "text"),
    # --- traps: things that look alike and are not, and hostile answers
    ("12", "1/2", F, "trap"),
    ("1/2", "12", F, "trap"),
    ("2/3", "3/2", F, "trap"),
    ("0.5", "5", F, "trap"),
    ("5", "0.5", F, "trap"),
    ("1.5", "15", F, "trap"),
    ("100", "10", F, "trap"),
    ("3", "3.01", F, "trap"),
    ("3.0000001", "3", T, "trap"),  # within the 1e-6 relative tolerance of a decimal
    ("3.00001", "3", F, "trap"),
    ("1e-7", "0", F, "trap"),  # outside the 1e-9 absolute tolerance
    ("1e-10", "0", T, "trap"),  # inside it: a rounded decimal that is zero for any grader
    ("-3", "3", F, "trap"),
    ("3-", "3", F, "trap"),
    ("", "5", F, "trap"),
    ("five", "5", F, "trap"),
    ("x", "5", F, "trap"),
    ("5", "x", F, "trap"),
    ("9**9**9**9", "1", F, "trap"),
    ("__import__('os')", "0", F, "trap"),
    ("\\frac{1}{2} \\frac{1}{2}", "1", F, "trap"),
    ("\\frac{1}{2}\\frac{1}{2}", "\\frac{1}{4}", T, "trap"),
    ("2 3", "6", F, "trap"),
    ("1 200", "1200", T, "trap"),  # SI thousands grouping
    ("\\infty", "1000000000", F, "trap"),
    ("oo", "\\infty", T, "trap"),
    ("1e999999999", "1", F, "trap"),
    # --- known gaps (KNOWN_GAPS below): equivalent, but this verifier says no
    ("2 1/2", "\\frac{5}{2}", T, "gap"),
    ("1010_2", "10", T, "gap"),
    ("\\text{five}", "5", T, "gap"),
    ("5 m", "500 cm", T, "gap"),
]

# Where this project's verifier parts from the truth column, and why (docs/verifier.md). The test
# marks these xfail(strict=True): fixing one turns the test red until the entry is removed.
KNOWN_GAPS: dict[tuple[str, str], str] = {
    ("2 1/2", "\\frac{5}{2}"): "plain-text mixed numbers: two numbers side by side are refused",
    ("1010_2", "10"): "base subscripts are not read",
    ("\\text{five}", "5"): "number words are not read",
    ("5 m", "500 cm"): "units are stripped, never converted",
}


def _ours(pred: str, ref: str) -> bool:
    from agentic_gcpo.verify import verify

    return verify(f"\\boxed{{{pred}}}", ref, timeout_s=5.0).correct


def _math_verify(pred: str, ref: str) -> bool | str:
    """math-verify 0.9 as its README uses it: parse(gold), parse(answer), verify(gold, answer).

    Both sides are wrapped in \\boxed{} (the same text our verifier gets). Its own timeouts use
    signals, which only work in the main thread: we call it from the main thread with them on.
    """
    from math_verify import parse, verify

    try:
        gold = parse(f"\\boxed{{{ref}}}", parsing_timeout=5)
        answer = parse(f"\\boxed{{{pred}}}", parsing_timeout=5)
        return bool(verify(gold, answer, timeout_seconds=5))
    except Exception as e:  # math-verify raises on some inputs; record it, do not crash the report
        return f"error: {type(e).__name__}"


def compare() -> list[tuple[str, str, bool, str, bool, bool | str]]:
    return [(p, r, t, c, _ours(p, r), _math_verify(p, r)) for p, r, t, c in CASES]


def _md(x: str) -> str:
    return "`" + x.replace("|", "\\|").replace("`", "'") + "`" if x else "(empty)"


def markdown(rows: list[tuple[str, str, bool, str, bool, bool | str]]) -> str:
    import math_verify

    n = len(rows)
    agree = sum(o == m for _, _, _, _, o, m in rows)
    ours_ok = sum(o == t for _, _, t, _, o, _ in rows)
    mv_ok = sum(m == t for _, _, t, _, _, m in rows)
    version = getattr(math_verify, "__version__", "0.9.0")
    out = [
        f"{n} pairs ({sum(t for _, _, t, _, _, _ in rows)} equivalent, "
        f"{sum(not t for _, _, t, _, _, _ in rows)} not); math-verify {version}.",
        "",
        "| | agrees with truth | agrees with the other |",
        "| --- | --- | --- |",
        f"| this project | {ours_ok}/{n} | {agree}/{n} |",
        f"| math-verify | {mv_ok}/{n} | {agree}/{n} |",
        "",
        "Disagreements (truth = what a careful grader says):",
        "",
        "| # | prediction | reference | truth | ours | math-verify | category |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    k = 0
    for p, r, t, c, o, m in rows:
        if o != m:
            k += 1
            out.append(f"| {k} | {_md(p)} | {_md(r)} | {t} | {o} | {m} | {c} |")
    wrong = [(p, r, t, c, o) for p, r, t, c, o, _ in rows if o != t]
    out += ["", "Where this project's verifier differs from the truth column:", ""]
    out += [f"- {_md(p)} vs {_md(r)}: truth {t}, ours {o} ({c})" for p, r, t, c, o in wrong] or ["- none"]
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover - a report generator, not a test
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    print(markdown(compare()))
