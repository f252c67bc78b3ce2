"""Learning bench (issue 11): GCPO vs GRPO, GPG, SFT-only and SFT -> GCPO at an equal budget,
plus the paper's ablations, judged on >= 300 held-out problems per eval set.

    python bench/learning.py                                     # honest budget, all arms (hours)
    python bench/learning.py --steps 8 --final-limit 100 --arms gcpo,grpo,sft+gcpo   # reduced
    python bench/learning.py --model tiny --arms gcpo,sft,sft+gcpo --steps 1 --prompts-per-step 2 \\
        --group-size 2 --eval-every 1 --eval-limit 2 --final-limit 3 rollout.max_new_tokens_per_turn=16

Arms (`--arms`, default all): `gcpo` (from the untouched model), `grpo`, `gpg`, `sft` (SFT only),
`sft+gcpo` (SFT, then GCPO from its checkpoint), `sft+grpo` (the same SFT stage, then GRPO: the
control that says what GCPO adds after SFT; when both are in --arms they share one SFT run),
`gcpo-decay` (gcpo with the lr decayed to a tenth by a cosine: constant-1e-4 GCPO runs lose their
tool use late, to turns that never end: after ~8 updates of 2 x G=8, after ~28 of 4 x G=4), and
the ablations `gcpo-noinject`
(golden.enabled=false) and the ratio pair `gcpo-seq-ratio` / `gcpo-token-ratio`. With one
optimizer step per rollout batch every ratio is 1, so the ratio pair both run `train.epochs`
= max(2, --epochs) and differ in `algorithm.ratio_level` and its clip (--ablation-steps sets their steps);
they see the same rollouts per step as the other arms but train each twice (twice the passes).
Each ratio keeps the clip made for it: GSPO's 3e-4 / 4e-4 for the sequence ratio, GRPO's 0.2 per token.
The untouched model is always evaluated too (row `untouched`). Every run uses
configs/embedded_gcpo.yaml (0-shot prompt, python tool, 2 turns of <= 192 tokens), the same seed
and training problems (`--train-set arith`: builtin:arith_train, `gsm8k`: builtin:gsm8k_train_500,
`gsm8k-full`: GSM8K's 7,473 train rows less the 64 validation rows)
and the extra dotted overrides given after the flags (they also set the final eval's limits).

Budget = trained sequence passes. An RL arm trains steps x prompts_per_step x group_size x epochs
(each rollout sequence is generated once, trained `epochs` times). `sft` trains the same number of
golden sequence passes (sft.limit = budget / --sft-epochs problems, batches of 8, warmup 1, cosine).
`sft+gcpo` (and `sft+grpo`) split it: --sft-share (0.5) of the passes go to the SFT stage, then RL runs
round((1 - share) x steps) steps at --rl-lr (1e-5: at --lr's 1e-4 the RL updates after SFT turned
the policy's output into text that never ends and lost its tool calls; docs/notes.md). SFT passes generate nothing, so SFT arms use less wall-clock
at equal passes: each arm's wall time, generated tokens and passes are recorded and printed, so
the budgets actually used are visible.

Default budget (an estimate, not a measurement): 12 updates x 3 problems x G=8 at ~60 s per update
on the 2-core dev machine (bf16; docs/notes.md: 34-79 s) plus 4 periodic evals of 32 problems,
about 15 min per RL arm; ~1.5x longer on an AVX2-only CPU (README: 8 updates in 18 min 24 s).
The final evaluations (greedy, every arm and the untouched model, --final-limit problems of each
eval set) come on top and are timed separately.

All arms at the default budget: roughly 8 x 15 min of training plus 9 policies x 2 sets x 300
greedy final evals; `--arms` and `--final-limit` cut it down.

Curves: the trainer's periodic eval (greedy, --eval-limit problems of arith_val, or of
gsm8k_heldout_64 with `--train-set gsm8k`, every --eval-every updates; SFTRun evaluates only
before and after), x = sequence passes trained. Final: `evaluate()` on the first
--final-limit problems of each `--eval-sets` set: `arith` (builtin:arith_test, disjoint from
arith_train) and `gsm8k` (GSM8K test, ../shared/data/gsm8k/test.jsonl), pass@1 with a 95 % Wilson
interval and the tool-call rate. Nothing is tuned on these splits. Writes <out>/results.json
(rewritten after every arm, so Ctrl-C keeps what is done), <out>/learning.png, and prints a
markdown table and the issue's bar checks (met / not met, with numbers). "Best GCPO recipe" on
GSM8K is the better of `gcpo` and `sft+gcpo` there, as the issue words the bar. An arm that raises
is reported with its error and the others run; an arm stopped by Ctrl-C keeps its run directory
(metrics.jsonl) under <out>/runs but no curve or final eval in results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from learning_report import cells, checks, plot, table, wilson  # noqa: E402

from agentic_gcpo.config import load_config  # noqa: E402

ACC, TOOLS = "eval/pass@1", "eval/tools/traj_with_call_frac"
GSM8K_TRAIN = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
# gsm8k-full: the whole GSM8K train split less the 64 validation rows (written under --out at start)
TRAIN_SETS = {"arith": "builtin:arith_train", "gsm8k": "builtin:gsm8k_train_500", "gsm8k-full": None}
# curves: a validation split of the training distribution; the test splits are for the final eval only
VAL_SETS = {  # gsm8k_heldout_64 is GSM8K *train* rows 501-564
    "arith": "builtin:arith_val",
    "gsm8k": "builtin:gsm8k_heldout_64",
    "gsm8k-full": "builtin:gsm8k_heldout_64",
}
EVAL_SETS = {
    "arith": "builtin:arith_test",
    "gsm8k": str(REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"),
}
SFT_OVERRIDES = "sft.eval=true sft.batch_size=8 sft.warmup_steps=1 sft.lr_schedule=cosine".split()
RATIO_PAIR = ("gcpo-seq-ratio", "gcpo-token-ratio")
ARMS: dict[str, tuple[str, list[str]]] = {  # name -> (kind, overrides)
    "gcpo": ("rl", ["algorithm.name=gcpo"]),
    "grpo": ("rl", ["algorithm.name=grpo"]),
    "gpg": ("rl", ["algorithm.name=gpg"]),
    "sft": ("sft", []),
    "sft+gcpo": ("sft+rl", ["algorithm.name=gcpo"]),
    "sft+grpo": ("sft+rl", ["algorithm.name=grpo"]),
    "gcpo-decay": ("rl", ["algorithm.name=gcpo", "train.lr_schedule=cosine", "train.min_lr_ratio=0.1"]),
    "gcpo-noinject": ("rl", ["algorithm.name=gcpo", "golden.enabled=false"]),
    "gcpo-seq-ratio": ("rl", ["algorithm.name=gcpo", "algorithm.ratio_level=sequence"]),
    # Each ratio gets the clip made for it by default (algorithms/gspo.py, sequence_family_loss).
    "gcpo-token-ratio": ("rl", ["algorithm.name=gcpo", "algorithm.ratio_level=token"]),
}


def config(args: argparse.Namespace, name: str, extra: list[str]):
    epochs = max(2, args.epochs) if name in RATIO_PAIR else args.epochs
    steps = args.ablation_steps if name in RATIO_PAIR and args.ablation_steps else args.steps
    overrides = [
        f"model.path={args.model}",
        f"run.name={name.replace('+', '-')}",
        f"run.output_dir={args.out / 'runs'}",
        f"run.seed={args.seed}",
        f"data.path={TRAIN_SETS[args.train_set] or args.out / 'gsm8k_train_full.jsonl'}",
        f"train.steps={steps}",
        f"train.prompts_per_step={args.prompts_per_step}",
        f"train.epochs={epochs}",
        f"rollout.group_size={args.group_size}",
        f"train.lr={args.lr}",
        "prompt.fewshot=0",
        f"eval.path={VAL_SETS[args.train_set]}",
        f"eval.limit={args.eval_limit}",
        f"eval.every={args.eval_every}",
        "log.progress=false",
        *ARMS[name][1],
        *extra,
        *args.override,
    ]
    return load_config(REPO / "configs" / "embedded_gcpo.yaml", overrides)


def write_gsm8k_full(path: Path) -> int:
    """GSM8K's train split without the rows of gsm8k_heldout_64 (matched by question), as JSONL at
    `path`; returns the row count. Those rows are the curves' validation set, so no arm trains on them."""
    from agentic_gcpo.data import load_problems

    held = {p.question for p in load_problems(VAL_SETS["gsm8k-full"], None, "gsm8k")}
    rows = [x for x in GSM8K_TRAIN.read_text().splitlines() if x.strip()]
    keep = [x for x in rows if json.loads(x)["question"] not in held]
    path.write_text("\n".join(keep) + "\n")
    return len(keep)


def rows_of(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def point(r: dict, x: float, stage: str) -> dict:
    return dict(x=x, step=r["step"], stage=stage, accuracy=r[ACC], tool_call_rate=r.get(TOOLS, 0.0))


def run_rl(cfg, arm: dict, x0: float = 0.0) -> Path:
    from agentic_gcpo.train.trainer import Trainer

    run_dir = Trainer(cfg).train()
    rows, ep, g = rows_of(run_dir), cfg.train.epochs, cfg.rollout.group_size
    train = {r["step"]: r for r in rows if "sampling/train_seqs" in r}
    passes = lambda s: x0 + ep * sum(r["sampling/train_seqs"] for k, r in train.items() if k <= s)  # noqa: E731
    arm["curve"] += [
        point(r, passes(r["step"]), "rl") for r in rows if ACC in r and not (x0 and r["step"] == 0)
    ]
    b = arm["budget"]
    b["rl_updates"] = len(train)
    b["trained_seq_passes"] += passes(max(train, default=0)) - x0
    b["generated_tokens"] += sum(
        r.get("response/policy_tokens_mean", 0.0) * r["sampling/rounds"] * cfg.train.prompts_per_step * g
        for r in train.values()
    )
    b["goldens_injected"] = sum(r.get("gcpo/injected", 0.0) for r in train.values())
    b["clip_frac_mean"] = sum(r.get("loss/clip_frac", 0.0) for r in train.values()) / max(1, len(train))
    b["curve_eval_s"] += sum(r.get("eval/time/wall_s", 0.0) for r in rows if ACC in r)
    arm["run_dirs"].append(str(run_dir))
    return run_dir / "checkpoints" / "final"


def run_sft(cfg, arm: dict) -> Path:
    from agentic_gcpo.train.sft import SFTRun

    sft = SFTRun(cfg)
    ckpt = sft.run()
    rows, bs = rows_of(sft.run_dir), cfg.sft.batch_size
    n = int(next((r["sft/goldens"] for r in rows if "sft/goldens" in r), 0))
    sizes = [min(bs, n - k) for k in range(0, n, bs)] * cfg.sft.epochs  # sequences per SFT step
    passes = lambda s: float(sum(sizes[:s]))  # noqa: E731
    arm["curve"] += [point(r, passes(r["step"]), "sft") for r in rows if ACC in r]
    b = arm["budget"]
    b["sft_steps"], b["sft_goldens"] = sft.steps_done, n
    b["sft_trained_policy_tokens"] = sum(r.get("sft/tokens", 0.0) for r in rows)
    b["trained_seq_passes"] += passes(sft.steps_done)
    b["curve_eval_s"] += sum(r.get("eval/time/wall_s", 0.0) for r in rows if ACC in r)
    arm["run_dirs"].append(str(sft.run_dir))
    return Path(ckpt)


# SFT stages already run in this bench, by (out, limit, epochs): sft+gcpo and sft+grpo share one, so
# both RL stages start from the same checkpoint (bf16 training is not bit-reproducible between runs).
SFT_STAGES: dict[tuple, tuple[str, Path, dict]] = {}


def sft_stage(args: argparse.Namespace, name: str, limit: int, arm: dict) -> Path:
    """Runs (or reuses) the SFT stage of `name` and adds its curve and budget to `arm`. A reused stage
    counts in full: its passes, its curve points and its wall time (`sft_stage_reused_wall_s`)."""
    key = (str(args.out), limit, args.sft_epochs)
    if key not in SFT_STAGES:
        stage = dict(curve=[], run_dirs=[], budget=dict(trained_seq_passes=0.0, curve_eval_s=0.0))
        t0 = time.time()
        cfg = config(args, name, [f"sft.limit={limit}", f"sft.epochs={args.sft_epochs}", *SFT_OVERRIDES])
        ckpt = run_sft(cfg, stage)
        SFT_STAGES[key] = (name, ckpt, stage | {"wall_s": time.time() - t0})
    else:
        first, ckpt, stage = SFT_STAGES[key]
        arm["sft_stage_of"] = first
        arm["budget"]["sft_stage_reused_wall_s"] = stage["wall_s"]
    arm["curve"] += stage["curve"]
    arm["run_dirs"] += stage["run_dirs"]
    for k, v in stage["budget"].items():  # all counts: passes, seconds, steps, goldens, tokens
        arm["budget"][k] = arm["budget"].get(k, 0.0) + v
    return ckpt


def train_arm(name: str, args: argparse.Namespace, arm: dict) -> Path:
    kind = ARMS[name][0]
    base = config(args, name, [])
    total = base.train.steps * base.train.prompts_per_step * base.rollout.group_size * base.train.epochs
    arm["budget"]["planned_seq_passes"] = total
    if kind == "rl":
        return run_rl(base, arm)
    share = args.sft_share if kind == "sft+rl" else 1.0
    limit = max(1, math.ceil(share * total / args.sft_epochs))
    ckpt = sft_stage(args, name, limit, arm)
    if kind == "sft":
        return ckpt
    steps = max(1, round((1 - share) * base.train.steps))
    rl_cfg = config(
        args,
        name,
        [
            f"model.path={ckpt}",
            f"train.steps={steps}",
            f"run.name={name.replace('+', '-')}-rl",
            f"train.lr={args.rl_lr}",
        ],
    )
    return run_rl(rl_cfg, arm, x0=arm["budget"]["trained_seq_passes"])


def final_eval(model: str, args: argparse.Namespace, problems: dict) -> dict:
    from agentic_gcpo.evaluate import evaluate
    from agentic_gcpo.rollout.agent_loop import LoopLimits

    cfg, out = config(args, "gcpo", []), {}
    r = cfg.rollout
    limits = LoopLimits.from_rollout(r, temperature=0.0, top_p=1.0)  # greedy pass@1
    for name, probs in problems.items():
        if isinstance(probs, str):  # the set could not be loaded
            out[name] = {"error": probs}
            continue
        t0 = time.time()
        res = evaluate(
            model,
            probs,
            k=1,
            tools=cfg.tools.names,
            limits=limits,
            tool_modules=cfg.tools.modules,
            sandbox_cfg=cfg.sandbox,
            dtype=cfg.engine.dtype,
            max_batch_size=cfg.engine.max_batch_size,
            call_format=cfg.prompt.call_format,
            system=cfg.prompt.system,
            fewshot=0,
            seed=args.seed,
            progress=sys.stderr.isatty(),
        )
        c, n = sum(p.c for p in res.problems), len(res.problems)
        lo, hi = wilson(c, n)
        tools = res.metrics.get("tools/traj_with_call_frac", 0.0)
        out[name] = dict(
            n=n, correct=c, accuracy=c / n, ci95=[lo, hi], wall_s=time.time() - t0, tool_call_rate=tools
        )
        print(
            f"  final {name}: {' | '.join(cells(out[name]))} tool calls | {out[name]['wall_s']:.0f}s",
            flush=True,
        )
    return out


def git(*cmd: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *cmd], capture_output=True, text=True).stdout.strip()


def save(res: dict, out: Path) -> None:
    res["checks"] = checks(res["arms"])
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(res, indent=2))
    os.replace(tmp, out / "results.json")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)}")
    p.add_argument("--model", default="embedded", help="embedded, tiny or a model directory")
    p.add_argument("--train-set", default="arith", choices=sorted(TRAIN_SETS))
    p.add_argument("--eval-sets", default="arith,gsm8k", help="final evaluation sets: arith, gsm8k")
    p.add_argument("--steps", type=int, default=12, help="RL updates per arm (the budget)")
    p.add_argument(
        "--ablation-steps", type=int, default=None, help="steps of the ratio pair (default --steps)"
    )
    p.add_argument("--prompts-per-step", type=int, default=3)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=1, help="train.epochs of the RL arms (ratio pair: >= 2)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument(
        "--rl-lr",
        type=float,
        default=1e-5,
        help="lr of the RL stage of sft+gcpo / sft+grpo (1e-4 after SFT destroyed tool use; chosen on arith_val)",
    )
    p.add_argument("--sft-epochs", type=int, default=2)
    p.add_argument(
        "--sft-share", type=float, default=0.5, help="budget share of the SFT stage of sft+gcpo / sft+grpo"
    )
    p.add_argument("--eval-every", type=int, default=4, help="periodic (curve) eval every N updates")
    p.add_argument("--eval-limit", type=int, default=32, help="problems of the periodic eval")
    p.add_argument("--final-limit", type=int, default=300, help="problems per final eval set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--skip-untouched",
        action="store_true",
        help="do not evaluate the untouched model again (when adding arms to an earlier table)",
    )
    p.add_argument(
        "--out", type=Path, default=REPO / "bench" / "out" / time.strftime("learning-%Y%m%d-%H%M%S")
    )
    p.add_argument("override", nargs="*", help="extra dotted config overrides for every run")
    args = p.parse_args()
    names = [a.strip() for a in args.arms.split(",") if a.strip()]
    sets = [s.strip() for s in args.eval_sets.split(",") if s.strip()]
    bad = [a for a in names if a not in ARMS] + [s for s in sets if s not in EVAL_SETS]
    if bad or not 0 < args.sft_share < 1:
        p.error(f"unknown arm/eval set {bad} (or --sft-share not in (0, 1))")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.train_set == "gsm8k-full":
        print(
            f"gsm8k-full: {write_gsm8k_full(args.out / 'gsm8k_train_full.jsonl')} training rows", flush=True
        )
    from agentic_gcpo.data import load_problems

    problems: dict = {}
    for s in sets:
        try:
            problems[s] = load_problems(EVAL_SETS[s], args.final_limit, "gsm8k")
        except Exception as e:  # noqa: BLE001 - reported per set, the rest still runs
            problems[s] = f"{type(e).__name__}: {e}"
    res = {
        "command": "python bench/learning.py " + shlex.join(sys.argv[1:]),
        "commit": git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "args": {k: str(v) for k, v in vars(args).items()} | {"eval_sets": ",".join(sets)},
        "budget_rule": f"trained sequence passes = steps x prompts x G x epochs; sft: same passes of goldens "
        f"({args.sft_epochs} epochs); sft+gcpo/sft+grpo: {args.sft_share:.0%} SFT passes + {1 - args.sft_share:.0%} of the RL steps",
        "eval_sets": {s: EVAL_SETS[s] for s in sets},
        "arms": {},
        "interrupted": False,
    }
    # SIGTERM (a timeout, a scheduler) ends the bench like Ctrl-C: finished arms are written.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        for name in ([] if args.skip_untouched else ["untouched"]) + names:
            print(f"\n=== {name} ===", flush=True)
            trained = name != "untouched"
            b = dict(trained_seq_passes=0.0, generated_tokens=0.0, curve_eval_s=0.0) if trained else {}
            arm = res["arms"][name] = dict(kind=ARMS.get(name, ("none",))[0], curve=[], run_dirs=[], budget=b)
            try:
                t0 = time.time()
                model = str(train_arm(name, args, arm)) if trained else args.model
                if trained:  # wall_s: training + periodic evals; train_wall_s: without those evals
                    b["wall_s"] = time.time() - t0 + b.get("sft_stage_reused_wall_s", 0.0)
                    b["train_wall_s"] = b["wall_s"] - b["curve_eval_s"]
                arm["final"] = final_eval(model, args, problems)
            except Exception as e:  # noqa: BLE001 - an arm that fails is reported; the others run
                traceback.print_exc()
                arm["error"] = f"{type(e).__name__}: {e}"
            save(res, args.out)
    except KeyboardInterrupt:
        res["interrupted"] = True
        for arm in res["arms"].values():  # the arm that was running when Ctrl-C came
            if "final" not in arm and "error" not in arm:
                arm["error"] = "interrupted (Ctrl-C)"
        print("\ninterrupted: writing what is done so far", flush=True)
    save(res, args.out)
    plot(res, args.out / "learning.png", VAL_SETS[args.train_set])
    print("\n" + table(res))
    print(f"\nresults: {args.out / 'results.json'}  plot: {args.out / 'learning.png'}")
    return 130 if res["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
