"""The run directory and checkpoints, written so that a crash or Ctrl-C never leaves one half-done.

A checkpoint is written under a hidden temporary name and renamed to checkpoints/<name> only once
complete, so a save cut short never leaves a `step-N` that loads wrong; leftovers of a killed
process are removed when the next run in that directory starts.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from agentic_gcpo.config import Config

CKPT_TMP_PREFIX = ".tmp-"


def make_run_dir(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.run.output_dir) / f"{cfg.run.name}-{stamp}"
    d, k = base, 1
    while d.exists():
        d, k = Path(f"{base}-{k}"), k + 1
    (d / "checkpoints").mkdir(parents=True)
    return d


def save_checkpoint(model: Any, tokenizer: Any, d: Path) -> Path:
    """Write `d` (transformers format) whole or not at all; an interrupted save removes its temp dir."""
    tmp = d.with_name(f"{CKPT_TMP_PREFIX}{d.name}-{os.getpid()}")
    old = d.with_name(f"{CKPT_TMP_PREFIX}{d.name}-old-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if d.exists():  # saving a name again: rename(2) cannot replace a non-empty directory
            os.replace(d, old)
        os.replace(tmp, d)
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return d


def remove_partial_saves(checkpoints: Path) -> None:
    """Temporary directories of a save that a kill -9 cut short."""
    for leftover in checkpoints.glob(f"{CKPT_TMP_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
