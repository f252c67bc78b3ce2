"""Learning benchmark: GCPO vs GRPO vs GPG on the same model, problems, seeds and budget.

    python bench/learning.py                      # the default budget (embedded model, CPU)
    python bench/learning.py --steps 2 --eval-every 1 --eval-limit 4 --model tiny   # a smoke run

Every algorithm starts from the same embedded SmolLM2 weights, sees the same training problems in
the same order (same run.seed), uses the same 0-shot prompt with the python tool and is evaluated
greedily on the same held-out problems (`builtin:gsm8k_heldout_64`: GSM8K *train* rows 501-564, not
the training subset and not the test split, so nothing here is tuned on test). Writes
`<out>/results.json` (eval curves: held-out accuracy and tool-call rate per evaluation point) and
`<out>/learning.png`, and prints the final table with the differences measured in this run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentic_gcpo.config import load_config  # noqa: E402
from agentic_gcpo.train.trainer import Trainer  # noqa: E402

ACC, TOOLS = "eval/pass@1", "eval/tools/traj_with_call_frac"


def run_one(algo: str, args: argparse.Namespace, out: Path) -> dict:
    overrides = [
        f"algorithm.name={algo}",
        f"model.path={args.model}",
        f"run.name={algo}",
        f"run.output_dir={out / 'runs'}",
        f"run.seed={args.seed}",
        f"train.steps={args.steps}",
        f"train.prompts_per_step={args.prompts_per_step}",
        f"rollout.group_size={args.group_size}",
        f"train.lr={args.lr}",
        "prompt.fewshot=0",
        "eval.path=builtin:gsm8k_heldout_64",
        f"eval.limit={args.eval_limit}",
        f"eval.every={args.eval_every}",
        "log.progress=false",
        *args.override,
    ]
    cfg = load_config(REPO / "configs" / "embedded_gcpo.yaml", overrides)
    t0 = time.time()
    run_dir = Trainer(cfg).train()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if ACC in r]
    train = [r for r in rows if "reward/mean" in r]
    return {
        "algorithm": algo,
        "run_dir": str(run_dir),
        "wall_s": time.time() - t0,
        "eval": [{"step": r["step"], "accuracy": r[ACC], "tool_call_rate": r.get(TOOLS, 0.0)} for r in evals],
        "train_reward": [r["reward/mean"] for r in train],
        "train_tool_call_rate": [r["tools/traj_with_call_frac"] for r in train],
        "injected_frac": [r.get("gcpo/injected_frac", 0.0) for r in train],
    }


def plot(results: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-.")]  # curves that coincide stay visible
    for k, r in enumerate(results):
        marker, line = styles[k % len(styles)]
        steps = [e["step"] for e in r["eval"]]
        kw = {"marker": marker, "linestyle": line, "label": r["algorithm"], "alpha": 0.85}
        axes[0].plot(steps, [e["accuracy"] for e in r["eval"]], **kw)
        axes[1].plot(steps, [e["tool_call_rate"] for e in r["eval"]], **kw)
    top = max([e["accuracy"] for r in results for e in r["eval"]] + [0.0])
    # A fixed floor of 20 %: one problem in 32 must not look like a large swing.
    axes[0].set(title="held-out accuracy (greedy pass@1)", xlabel="updates", ylim=(0, max(0.2, 1.2 * top)))
    axes[1].set(title="held-out trajectories with a tool call", xlabel="updates", ylim=(0, 1.05))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def replot(results_json: Path) -> None:
    """Redraw <dir>/learning.png from a results.json (python -c 'import bench.learning as b; ...')."""
    plot(json.loads(results_json.read_text())["results"], results_json.with_suffix(".png"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algos", default="gcpo,grpo,gpg")
    p.add_argument("--model", default="embedded")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)  # the embedded config's lr
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--eval-limit", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=REPO / "bench" / "out" / time.strftime("learning-%Y%m%d-%H%M%S")
    )
    p.add_argument("override", nargs="*", help="extra dotted config overrides for every run")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True
    ).stdout
    commit = (commit or "unknown") + ("+dirty" if dirty.strip() else "")
    results = [run_one(a.strip(), args, args.out) for a in args.algos.split(",") if a.strip()]
    (args.out / "results.json").write_text(
        json.dumps(
            {"commit": commit, "args": {k: str(v) for k, v in vars(args).items()}, "results": results},
            indent=2,
        )
    )
    plot(results, args.out / "learning.png")
    print(f"\n{'algorithm':<10} {'start acc':>9} {'final acc':>9} {'final tool rate':>15} {'wall':>8}")
    for r in results:
        first, last = r["eval"][0], r["eval"][-1]
        print(
            f"{r['algorithm']:<10} {first['accuracy']:>9.3f} {last['accuracy']:>9.3f} {last['tool_call_rate']:>15.3f} {r['wall_s']:>7.0f}s"
        )
    by = {r["algorithm"]: r["eval"][-1] for r in results}
    if "gcpo" in by:
        for other in ("grpo", "gpg"):
            if other in by:
                diff = 100 * (by["gcpo"]["accuracy"] - by[other]["accuracy"])
                print(f"gcpo - {other}: {diff:+.1f} accuracy points (target for gcpo - grpo: >= +10)")
    print(f"results: {args.out / 'results.json'}  plot: {args.out / 'learning.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
