"""`agentic-gcpo sft`: the cold-start SFT stage (sft.py) from the command line.

It ends by printing the exact `agentic-gcpo train` command that continues from its checkpoint.
Ctrl-C follows `train`'s policy (cli._SigintGuard): the first one stops the run where it is, closes
what it started and exits 130 with a report; a second one, during that cleanup, exits at once.
"""

from __future__ import annotations

import argparse
import shlex
import sys


def continue_command(config: str | None, overrides: list[str], checkpoint: str, run_name: str) -> str:
    """The `agentic-gcpo train` command that starts RL from `checkpoint` with the same config.

    The SFT overrides are kept (sft.* is ignored by `train`, the rest must stay the same); a
    model.path or run.name override is replaced by the checkpoint and a run name of its own."""
    keep = [o for o in overrides if o.split("=", 1)[0].strip() not in ("model.path", "run.name")]
    parts = ["agentic-gcpo", "train"] + (["-c", config] if config else []) + keep
    parts += [f"model.path={checkpoint}", f"run.name={run_name}-rl"]
    return shlex.join(parts)


def _sft(args: argparse.Namespace) -> int:
    from agentic_gcpo.cli import run_guarded  # cli imports this module first

    return run_guarded(_run, args, "before any SFT step.")


def _run(args: argparse.Namespace, guard: object) -> int:
    from agentic_gcpo.cli import start_run
    from agentic_gcpo.train.sft import SFTError, SFTRun

    run = start_run(args, guard, SFTRun)  # type: ignore[arg-type]
    if run is None:
        return 2
    cfg = run.cfg
    try:
        ckpt = run.run()
    except SFTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done. metrics: {run.run_dir / 'metrics.jsonl'}  SFT policy: {ckpt}", flush=True)
    print("continue with RL from it:", flush=True)
    print("  " + continue_command(args.config, args.overrides, str(ckpt.resolve()), cfg.run.name), flush=True)
    return 0


def add_sft_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "sft", help="supervised cold start on verified golden tool trajectories (before GCPO/GRPO)"
    )
    s.add_argument("--config", "-c", help="YAML file under configs/ (defaults when omitted)")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sft.epochs=1 sft.limit=64")
    s.set_defaults(fn=_sft)
