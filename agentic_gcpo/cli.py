"""`agentic-gcpo` command line. Each subcommand is a thin shell over a library function."""

from __future__ import annotations

import argparse
import sys

from agentic_gcpo.config import ConfigError, load_config
from agentic_gcpo.eval_cli import add_eval_parsers
from agentic_gcpo.sandbox.cli import add_sandbox_parser
from agentic_gcpo.tools_cli import add_tools_parser


def _train(args: argparse.Namespace) -> int:
    from agentic_gcpo.data import DataError
    from agentic_gcpo.models import ModelLoadError
    from agentic_gcpo.train.trainer import Trainer

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        trainer = Trainer(cfg)
    except (ModelLoadError, DataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"run directory: {trainer.run_dir}", flush=True)
    run_dir = trainer.train()
    print(
        f"done. metrics: {run_dir / 'metrics.jsonl'}  samples: {run_dir / 'samples.jsonl'}  "
        f"final policy: {run_dir / 'checkpoints' / 'final'}",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="agentic-gcpo", description="Train and run tool-using math agents.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a policy with the algorithm named in the config")
    t.add_argument("--config", "-c", help="YAML file under configs/ (defaults when omitted)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=3 rollout.group_size=4")
    t.set_defaults(fn=_train)
    add_tools_parser(sub)
    add_sandbox_parser(sub)
    add_eval_parsers(sub)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
