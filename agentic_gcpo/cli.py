"""`agentic-gcpo` command line. Each subcommand is a thin shell over a library function."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from agentic_gcpo.data.cli import add_data_parser
from agentic_gcpo.eval_cli import add_eval_parsers
from agentic_gcpo.repl.cli import add_repl_parsers
from agentic_gcpo.sandbox.cli import add_sandbox_parser
from agentic_gcpo.tools_cli import add_tools_parser
from agentic_gcpo.train.sft_cli import add_sft_parser
from agentic_gcpo.verify.cli import add_verify_parser

INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C


def _hard_exit(trainer: Any, why: str) -> None:
    """Kill the sandbox workers and SymPy helpers without waiting, say why, and exit 130 at once."""
    try:
        if trainer is not None:
            trainer.kill_now()
        from agentic_gcpo.verify import helper_pool

        helper_pool.kill_all()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.write(why + "\n")
            sys.stderr.flush()
        finally:
            os._exit(INTERRUPTED)


class _SigintGuard:
    """The SIGINT policy of a training run. The first Ctrl-C raises KeyboardInterrupt where the run
    is (between decode steps, micro-batches, tool-call waits), so it cleans up and reports; a second
    one, during that cleanup, kills the sandbox workers and exits at once."""

    def __init__(self) -> None:
        self.trainer: Any = None
        self.count = 0
        self._previous: Any = None
        self.threads_before = set(threading.enumerate())  # the caller's own, never waited for

    def __enter__(self) -> _SigintGuard:
        if threading.current_thread() is threading.main_thread():  # signal.signal needs the main thread
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            raise KeyboardInterrupt
        _hard_exit(self.trainer, "second Ctrl-C: sandbox workers killed, exiting without further cleanup")


def _interrupted_exit(guard: _SigintGuard) -> int:
    """INTERRUPTED, once the run's threads have ended. A thread still inside a call nothing can
    interrupt (an in-process tool running on to its own timeout) would hold the interpreter's exit,
    so after a short grace the process exits at once instead (its files are already closed)."""
    from agentic_gcpo.verify import helper_pool

    helper_pool.kill_all()  # a SymPy helper busy for the interrupted verification
    deadline = time.monotonic() + 2.0
    others = [t for t in threading.enumerate() if t not in guard.threads_before and not t.daemon]
    for t in others:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in others):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(INTERRUPTED)
    helper_pool.shutdown()
    return INTERRUPTED


def run_guarded(
    run: Callable[[argparse.Namespace, _SigintGuard], int], args: argparse.Namespace, before_start: str
) -> int:
    """A long command (train, sft) under one Ctrl-C policy: anywhere (imports, setup, the run, the
    last print) it ends in one message and exit 130. `run` sets `guard.trainer` once it has one, whose
    `interrupt_report()` is that message; before that, `before_start` says what was lost."""
    with _SigintGuard() as guard:
        try:
            return run(args, guard)
        except KeyboardInterrupt:
            if guard.trainer is None:
                print(f"interrupted (Ctrl-C) during setup, {before_start}", file=sys.stderr)
            else:
                print(guard.trainer.interrupt_report(), file=sys.stderr, flush=True)
            return _interrupted_exit(guard)


def _train(args: argparse.Namespace) -> int:
    if args.allow_changes and not args.resume:
        print("error: --allow-changes only applies to --resume RUN_DIR", file=sys.stderr)
        return 2
    if args.resume:
        again = f"nothing was changed: run `agentic-gcpo train --resume {args.resume}` again."
        return run_guarded(_run_training, args, again)
    return run_guarded(_run_training, args, "before any update: nothing to resume.")


def start_run(args: argparse.Namespace, guard: _SigintGuard, make: Callable[[Any], Any]) -> Any | None:
    """Load the config and build the run with `make` (Trainer, SFTRun), registered with `guard`.
    A bad config, dataset, model or tool name is printed as one error line and gives None (the
    caller exits 2); DataError, ToolLoadError and SFTError are ValueErrors."""
    from agentic_gcpo.config import ConfigError, load_config  # here: it imports torch (~2 s)
    from agentic_gcpo.models import ModelLoadError

    try:
        cfg = load_config(args.config, args.overrides)
        run = make(cfg)
    except (ConfigError, ModelLoadError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    guard.trainer = run
    print(f"run directory: {run.run_dir}", flush=True)
    return run


def _run_training(args: argparse.Namespace, guard: _SigintGuard) -> int:
    if args.resume:  # train/resume.py: the run's own config and newest complete checkpoint
        from agentic_gcpo.train.resume import start_resumed

        trainer = start_resumed(args, guard)
        if isinstance(trainer, int):
            return trainer
    else:
        from agentic_gcpo.train.trainer import Trainer

        trainer = start_run(args, guard, Trainer)
    if trainer is None:
        return 2
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
    how = t.add_mutually_exclusive_group()
    how.add_argument("--config", "-c", help="YAML file under configs/ (defaults when omitted)")
    how.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a stopped run from its newest complete checkpoint, in its own directory with its "
        "config.yaml; overrides may only raise train.steps or change checkpoint/log settings (docs/resume.md)",
    )
    t.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume: accept overrides that change what the next steps compute",
    )
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=3 rollout.group_size=4")
    t.set_defaults(fn=_train)
    add_tools_parser(sub)
    add_sandbox_parser(sub)
    add_eval_parsers(sub)
    add_verify_parser(sub)
    add_repl_parsers(sub)
    add_data_parser(sub)
    add_sft_parser(sub)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
