"""What an interrupted run tells the person who pressed Ctrl-C: where it was, what is saved, what next."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def close_all(parts: list[tuple[str, Callable[[], Any]]]) -> None:
    """Call each closer in order, each even if an earlier one failed (logged, not raised): a run's
    sandbox, engine and logger must all be released. KeyboardInterrupt is not caught."""
    for what, fn in parts:
        try:
            fn()
        except Exception:  # noqa: BLE001 - the rest must still be closed
            log.exception("closing the %s failed", what)


def kill_sandbox_now(sandbox: Any) -> None:
    """Last resort (a second Ctrl-C during cleanup): kill the sandbox's workers without waiting."""
    kill = getattr(sandbox, "kill_now", None)
    if kill is not None:
        kill()


# What `interrupt_report` calls each phase of a step (the Timer names in `step` and `sample`).
PHASES = {
    "rollout": "rollouts: generation and tool calls",
    "verify": "verifying answers",
    "golden": "building goldens",
    "train": "the learner update",
    "sync": "syncing weights to the engine",
}


def interrupt_report(trainer: Any) -> str:
    """What an interrupted run did, where its files are and how to continue (the CLI prints it)."""
    cfg, run = trainer.cfg, trainer.run_dir
    total, n = cfg.train.steps, trainer.updates_logged
    phase = trainer.phase
    if phase == "step":
        inner = trainer._timer.current if trainer._timer is not None else None
        where = f"in step {trainer.current_step}/{total} ({PHASES.get(inner or '', 'between phases')})"
    elif phase == "eval":
        where = f"in the held-out evaluation {'before training' if n == 0 else f'after update {n}'}"
    elif phase == "logging":
        where = f"while logging step {trainer.current_step}/{total}"
    elif phase == "checkpoint":
        where = f"while saving checkpoints/step-{trainer.current_step} (discarded: incomplete)"
    elif phase == "final checkpoint":
        where = "while saving checkpoints/final (discarded: incomplete)"
    elif phase == "done":
        where = "after the run had completed (its files are complete)"
    else:
        where = f"during {phase}"
    lines = [f"interrupted (Ctrl-C) {where}."]
    metrics = run / "metrics.jsonl"
    if n:
        lines.append(
            f"{n} of {total} updates were completed and logged: {metrics} (training rows step=1..{n})"
        )
    else:
        lines.append(f"no update was completed (no training row in {metrics}).")
    if trainer.current_step > n and (
        phase == "logging"
        or (phase == "step" and trainer._timer is not None and trainer._timer.current == "sync")
    ):
        lines.append(
            f"update {trainer.current_step} was applied to the in-memory weights but not logged or saved."
        )
    if trainer.last_checkpoint is not None:
        lines.append(f"last complete checkpoint: {trainer.last_checkpoint}")
    else:
        every = cfg.train.checkpoint_every
        why = (
            f"none due yet with train.checkpoint_every={every}"
            if every
            else "train.checkpoint_every=0: only the final policy, at the end"
        )
        lines.append(f"no checkpoint was saved ({why}).")
    lines.append("sandbox workers, engine and metrics logger were closed; nothing half-written was left.")
    if trainer.last_checkpoint is not None:
        lines.append(
            f"To continue from {trainer.last_checkpoint.name} (weights, optimizer, data position, RNGs; "
            "later steps are redone, their log rows replaced):"
        )
        lines.append(f"  agentic-gcpo train --resume {run}")
        lines.append("or, to start a fresh run with the same resolved config:")
    else:
        lines.append("To start a fresh run with the same resolved config:")
    lines.append(f"  agentic-gcpo train -c {run / 'config.yaml'}")
    return "\n".join(lines)
