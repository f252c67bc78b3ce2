"""The verifier on the hand-checked pair table: agreement per category, and throughput.

    python bench/verify.py --table        # agreement with the truth column, ours vs plain math-verify
    python bench/verify.py --throughput   # pairs/second, exact-number path and helper path apart
    python bench/verify.py --table --disagreements   # also list every pair either checker gets wrong

The table is tests/verify_cases.py (truth decided by hand, never by running a checker). Both
checkers get the same text: the prediction as ``\\boxed{pred}``, the reference as given. Plain
math-verify is called as its README shows (``verify(parse(gold), parse(answer))``, the reference
wrapped in ``\\boxed{}``), from the main thread with its own 5 s timeouts; ours is
``agentic_gcpo.verify.verify`` with a 5 s deadline.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from verify_cases import CASES  # noqa: E402

from agentic_gcpo.verify import verify  # noqa: E402


def ours(pred: str, ref: str) -> bool:
    return verify(f"\\boxed{{{pred}}}", ref, timeout_s=5.0).correct


def plain_math_verify(pred: str, ref: str) -> bool:
    from math_verify import parse
    from math_verify import verify as mv_verify

    try:
        gold = parse(f"\\boxed{{{ref}}}", parsing_timeout=5)
        answer = parse(f"\\boxed{{{pred}}}", parsing_timeout=5)
        return bool(mv_verify(gold, answer, timeout_seconds=5))
    except Exception:  # it raises on some inputs; count that as "not equivalent"
        return False


def _md(x: str) -> str:
    return "`" + x.replace("|", "\\|").replace("`", "'") + "`" if x else "(empty)"


def table(show_disagreements: bool) -> str:
    import math_verify

    rows = [(p, r, t, c, ours(p, r), plain_math_verify(p, r)) for p, r, t, c in CASES]
    by_cat: dict[str, list] = defaultdict(list)
    for row in rows:
        by_cat[row[3]].append(row)
    version = getattr(math_verify, "__version__", None) or _installed_version("math-verify")
    n, n_true = len(rows), sum(r[2] for r in rows)
    out = [
        f"{n} pairs ({n_true} equivalent, {n - n_true} not); math-verify {version}.",
        "",
        "| category | pairs (equiv / not) | ours agrees | ours false + | math-verify agrees | math-verify false + |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def line(name: str, group: list) -> str:
        k, eq = len(group), sum(g[2] for g in group)
        o_ok = sum(g[4] == g[2] for g in group)
        m_ok = sum(g[5] == g[2] for g in group)
        o_fp = sum(g[4] and not g[2] for g in group)
        m_fp = sum(g[5] and not g[2] for g in group)
        return f"| {name} | {k} ({eq} / {k - eq}) | {o_ok}/{k} | {o_fp} | {m_ok}/{k} | {m_fp} |"

    out += [line(c, g) for c, g in sorted(by_cat.items())]
    out.append(line("**all**", rows))
    if show_disagreements:
        out += [
            "",
            "| prediction | reference | truth | ours | math-verify | category |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for p, r, t, c, o, m in rows:
            if o != t or m != t:
                out.append(f"| {_md(p)} | {_md(r)} | {t} | {o} | {m} | {c} |")
    return "\n".join(out)


def _installed_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def throughput(rounds: int) -> str:
    """Pairs/second of `verify` on the table, single thread, warm helpers; grouped by the rule that
    decided each pair on a first (warm-up) pass: "exact" (no helper process) vs everything else."""
    fast, slow = [], []
    for p, r, _, _ in CASES:
        res = verify(f"\\boxed{{{p}}}", r, timeout_s=5.0)
        (fast if res.rule in ("exact", "refused", "units") else slow).append((p, r))
    out = []
    for name, group in (("exact numbers / no helper", fast), ("helper (math-verify, SymPy)", slow)):
        t0 = time.perf_counter()
        for _ in range(rounds):
            for p, r in group:
                verify(f"\\boxed{{{p}}}", r, timeout_s=5.0)
        dt = time.perf_counter() - t0
        k = len(group) * rounds
        out.append(
            f"{name}: {len(group)} pairs x {rounds} rounds = {k} in {dt:.2f} s -> {k / dt:,.0f} pairs/s"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", action="store_true", help="agreement per category (needs math-verify)")
    ap.add_argument("--disagreements", action="store_true", help="with --table: list every miss")
    ap.add_argument("--throughput", action="store_true", help="pairs/second on the table")
    ap.add_argument("--rounds", type=int, default=3, help="passes over the table for --throughput")
    args = ap.parse_args(argv)
    if not (args.table or args.throughput):
        args.table = args.throughput = True
    if args.table:
        print(table(args.disagreements))
    if args.throughput:
        print(throughput(args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
