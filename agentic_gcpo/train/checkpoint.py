"""The run directory and checkpoints, written so that a crash or Ctrl-C never leaves one half-done.

A checkpoint is written under a hidden temporary name, flushed to disk (fsync) and renamed to
checkpoints/<name> only once complete, so a save cut short (Ctrl-C, kill -9, power loss) never
leaves a `step-N` that loads wrong; leftovers of a killed process are removed when the next run in
that directory starts (or a resumed one). A checkpoint of a training run also holds the trainer's
state (`train/state.py`, STATE_FILE): what `agentic-gcpo train --resume` continues from.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentic_gcpo.config import Config

CKPT_TMP_PREFIX = ".tmp-"
STATE_FILE = "trainer_state.pt"  # optimizer, RNGs, data position, ... (train/state.py)
STATE_INFO = "trainer_state.json"  # the step and what is in STATE_FILE; written last, read without torch
# Test-only: "NAME:MARKER" makes the save of checkpoint NAME touch MARKER and stop for an hour after
# the model files are written and before the trainer state, so a test can kill -9 it there.
PAUSE_ENV = "AGENTIC_GCPO_TEST_SAVE_PAUSE"
_STEP = re.compile(r"step-(\d+)")


def make_run_dir(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.run.output_dir) / f"{cfg.run.name}-{stamp}"
    d, k = base, 1
    while d.exists():
        d, k = Path(f"{base}-{k}"), k + 1
    (d / "checkpoints").mkdir(parents=True)
    return d


def save_checkpoint(model: Any, tokenizer: Any, d: Path, extra: Callable[[Path], None] | None = None) -> Path:
    """Write `d` (transformers format) whole or not at all; an interrupted save removes its temp dir.

    `extra(tmp)` writes further files (the trainer state) into the temporary directory before it
    is flushed and renamed, so they appear together with the weights or not at all."""
    tmp = d.with_name(f"{CKPT_TMP_PREFIX}{d.name}-{os.getpid()}")
    old = d.with_name(f"{CKPT_TMP_PREFIX}{d.name}-old-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _test_pause(d.name)
        if extra is not None:
            extra(tmp)
        _fsync_tree(tmp)  # the data on disk before the name says "complete"
        if d.exists():  # saving a name again: rename(2) cannot replace a non-empty directory
            os.replace(d, old)  # (a kill between the two renames is undone by remove_partial_saves)
        os.replace(tmp, d)
        _fsync_dir(d.parent)
    finally:
        if old.exists() and not d.exists():  # interrupted between the two renames: keep the earlier save
            os.replace(old, d)
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return d


def _test_pause(name: str) -> None:
    spec = os.environ.get(PAUSE_ENV, "")
    if spec and spec.split(":", 1)[0] == name:
        Path(spec.split(":", 1)[1]).touch()
        time.sleep(3600)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(d: Path) -> None:
    for p in sorted(d.rglob("*")):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for sub in [d, *(p for p in d.rglob("*") if p.is_dir())]:
        _fsync_dir(sub)


def remove_partial_saves(checkpoints: Path) -> None:
    """Temporary directories of a save that a kill -9 cut short. The one exception: a complete
    earlier save of a name that was being saved again, set aside and not yet replaced, is put back."""
    for leftover in sorted(checkpoints.glob(f"{CKPT_TMP_PREFIX}*")):
        m = re.fullmatch(rf"{re.escape(CKPT_TMP_PREFIX)}(.+)-old-\d+", leftover.name)
        target = checkpoints / m.group(1) if m else None
        if target is not None and not target.exists():
            with contextlib.suppress(FileNotFoundError):  # another rank of the same run was first
                os.replace(leftover, target)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def _remove(d: Path) -> None:
    """Delete a checkpoint so that a kill midway leaves a temporary name, never a partial `step-N`."""
    doomed = d.with_name(f"{CKPT_TMP_PREFIX}delete-{d.name}-{os.getpid()}")
    os.replace(d, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def prune_checkpoints(checkpoints: Path, keep: int) -> None:
    """Keep the newest `keep` step-N checkpoints (0: all); `final` is never removed."""
    if keep <= 0:
        return
    steps = sorted(
        (int(m.group(1)), p) for p in checkpoints.iterdir() if (m := _STEP.fullmatch(p.name)) and p.is_dir()
    )
    for _, p in steps[:-keep]:
        _remove(p)


def complete_checkpoints(checkpoints: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every checkpoint a run can resume from, oldest first: step-N or final with a
    trainer state (checkpoints written before resume existed have weights only)."""
    found: list[tuple[int, Path]] = []
    if not checkpoints.is_dir():
        return found
    for p in checkpoints.iterdir():
        if not (p.is_dir() and (_STEP.fullmatch(p.name) or p.name == "final")):
            continue
        try:
            step = int(json.loads((p / STATE_INFO).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if (p / STATE_FILE).is_file():
            found.append((step, p))
    # final after step-N of the same step: both hold the same state; prefer the numbered one
    return sorted(found, key=lambda sp: (sp[0], sp[1].name != "final"))
