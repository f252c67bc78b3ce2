"""Pool the learning bench's results over seeds: one arm's final accuracy per seed, their mean and
spread, and a Wilson interval over all the seeds' evaluations together.

    python bench/seeds.py bench/results/learning-arith-30x4x4-cosine.json \\
        bench/results/learning-arith-30x4x4-cosine-seed1.json

Only runs of the same recipe pool: every recorded bench argument except --seed and --out must match
(and the overrides), or the script names the ones that differ and stops. The pooled interval treats
the seeds' evaluations as one sample of problems, so it covers the evaluation noise only; the spread
between seeds is the training noise, and a handful of seeds estimates it poorly, so both are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_report import pc, wilson  # noqa: E402

# Arguments that may differ between the runs pooled: the seed itself, where it wrote, whether the
# untouched model was evaluated again (its row is not pooled), and the arm list (only arms that every
# run has are pooled).
FREE_ARGS = {"seed", "out", "skip_untouched", "arms"}


class MismatchError(ValueError):
    pass


def check_same_recipe(runs: list[tuple[str, dict]]) -> None:
    (first_name, first), rest = runs[0], runs[1:]
    for name, res in rest:
        keys = sorted(set(first["args"]) | set(res["args"]))
        diff = [k for k in keys if k not in FREE_ARGS and first["args"].get(k) != res["args"].get(k)]
        if diff:
            shown = ", ".join(f"{k}: {first['args'].get(k)!r} vs {res['args'].get(k)!r}" for k in diff)
            raise MismatchError(
                f"{name} is not the recipe of {first_name} ({shown}); pool runs that differ only in --seed"
            )
    seeds = [res["args"].get("seed") for _, res in runs]
    if len(set(seeds)) != len(seeds):
        raise MismatchError(f"the runs repeat a seed ({seeds}); each seed should be pooled once")


def pool(runs: list[tuple[str, dict]]) -> list[dict]:
    """One row per (arm, eval set) that every run measured: per-seed accuracy, mean, spread, pooled CI."""
    check_same_recipe(runs)
    seeds = [res["args"].get("seed") for _, res in runs]
    rows = []
    arms = [a for a in runs[0][1]["arms"] if all(a in res["arms"] for _, res in runs)]
    for arm in arms:
        finals = [res["arms"][arm].get("final", {}) for _, res in runs]
        for ev in [e for e in finals[0] if all(e in f for f in finals)]:
            per = [f[ev] for f in finals]
            k, n = sum(p["correct"] for p in per), sum(p["n"] for p in per)
            accs = [p["correct"] / p["n"] for p in per]
            rows.append(
                dict(
                    arm=arm,
                    eval_set=ev,
                    seeds=seeds,
                    accuracies=accs,
                    mean=statistics.fmean(accs),
                    spread=max(accs) - min(accs),
                    correct=k,
                    n=n,
                    pooled_ci95=list(wilson(k, n)),
                    tool_call_rate=statistics.fmean(p.get("tool_call_rate", 0.0) for p in per),
                )
            )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| arm | eval set | seeds | per seed | mean | spread | pooled [95 % CI] | tool calls |",
        "|---|---|---|---|---:|---:|---|---:|",
    ]
    for r in rows:
        lo, hi = r["pooled_ci95"]
        lines.append(
            f"| {r['arm']} | {r['eval_set']} | {', '.join(map(str, r['seeds']))} | "
            f"{' / '.join(pc(a) for a in r['accuracies'])} | {pc(r['mean'])} | {pc(r['spread'])} | "
            f"{r['correct']}/{r['n']} [{pc(lo)}, {pc(hi)}] | {pc(r['tool_call_rate'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "results", nargs="+", type=Path, help="results.json of bench/learning.py runs, one per seed"
    )
    args = p.parse_args(argv)
    if len(args.results) < 2:
        p.error("give at least two results files (one per seed)")
    try:
        runs = [(str(f), json.loads(f.read_text())) for f in args.results]
        rows = pool(runs)
    except (OSError, json.JSONDecodeError, KeyError) as e:
        print(f"error: cannot read a bench result ({type(e).__name__}: {e})", file=sys.stderr)
        return 2
    except MismatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not rows:
        print("error: no arm has a final evaluation in every run", file=sys.stderr)
        return 2
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
