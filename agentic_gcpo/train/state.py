"""A training run's state between steps, saved inside each checkpoint so `--resume` continues it.

A resumed run must draw the same problems, sample the same tokens and take the same optimizer
steps as a run that was never stopped. Sampling seeds already derive from (run.seed, step), so what
else decides the next step is listed here, and all of it is saved:

- the optimizer's state (AdamW's moments and step counts) and the learning-rate schedule position
  (`Trainer.lr_slot`, in optimizer-step slots);
- the step (updates done) and the next group id (`Trainer._next_gid`: group ids stay unique);
- the data stream's position (`data.ProblemStream`: epoch and batches taken in it);
- the golden source's built goldens, misses and counters, and the teacher's cache and counters
  (the teacher's sampling seed follows its counters);
- the RNG states: Python's `random`, torch CPU, CUDA (when present), numpy (when imported).

The weights are the checkpoint's transformers files next to this state. What is *not* saved
because it is rebuilt identically from the config: the overlong buffer, the precision decision
(re-resolved and compared, see `train/resume.py`), the engine (its prefix cache is emptied at every
weight sync anyway), tools and sandbox (sessions do not outlive a trajectory).

Two files: STATE_FILE (torch.save; pickled Python objects, so only load checkpoints you wrote) and
STATE_INFO, a small JSON with the step and the config, written last and readable without torch.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path
from typing import Any

import torch

from agentic_gcpo.train.checkpoint import STATE_FILE, STATE_INFO

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the state's layout changes; `restore` refuses other formats


def rng_state() -> dict[str, Any]:
    """Every RNG a step may draw from."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if "numpy" in sys.modules:  # only when something imported it; the trainer itself does not
        state["numpy"] = sys.modules["numpy"].random.get_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:  # another machine: the CPU-side streams still match; GPU draws may differ
            log.warning(
                "the checkpoint has RNG states of %d GPUs, this machine has %d: CUDA RNGs not restored",
                len(state["cuda"]),
                torch.cuda.device_count(),
            )
    if "numpy" in state:
        import numpy

        numpy.random.set_state(state["numpy"])


def trainer_state(tr: Any, optimizer: tuple[str, dict]) -> dict[str, Any]:
    """What `tr` (a Trainer between steps) carries into its next step. `optimizer`: (layout, state)
    from `Dist.optimizer_state`, gathered beforehand by every rank under FSDP."""
    layout, opt_state = optimizer
    return {
        "format": FORMAT,
        "step": tr.updates_logged,
        "lr_slot": tr.lr_slot,
        "next_gid": tr._next_gid,
        "optimizer": opt_state,
        "optimizer_layout": layout,  # absent in older checkpoints: 'torch'
        "data": tr.batches.state_dict(),
        "golden": tr.golden.state_dict(),
        "rng": rng_state(),
        # rollout.off_policy_steps: the next step's batch, already drawn by the previous policy
        "ahead": tr.ahead.ready if getattr(tr, "ahead", None) is not None else None,
    }


def write_state(tr: Any, d: Path, optimizer: tuple[str, dict]) -> None:
    """STATE_FILE, then STATE_INFO, into the checkpoint directory `d` being written (by rank 0;
    under FSDP `optimizer` is the gathered optimizer state, see `trainer_state`)."""
    state = trainer_state(tr, optimizer)
    torch.save(state, d / STATE_FILE)
    info = {
        "format": FORMAT,
        "step": state["step"],
        "steps_planned": tr.cfg.train.steps,
        "lr_slot": state["lr_slot"],
        "data": {k: state["data"][k] for k in ("epoch", "index")},
        "config": tr.cfg.model_dump(mode="json"),
    }
    (d / STATE_INFO).write_text(json.dumps(info, indent=1) + "\n")


def read_info(d: Path) -> dict[str, Any]:
    return json.loads((d / STATE_INFO).read_text())


def load_state(d: Path) -> dict[str, Any]:
    """The trainer state of checkpoint `d`. weights_only=False: it holds pickled goldens and RNG
    tuples; the file is one this project wrote into its own run directory."""
    state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{d / STATE_FILE} has trainer-state format {got!r}, this version reads {FORMAT}: "
            "resume it with the version that wrote it, or start a fresh run from its weights "
            f"(model.path={d})"
        )
    return state


def restore(tr: Any, state: dict[str, Any], checkpoint: Path | None = None) -> None:
    """Put `tr` (freshly built from the same config, with the checkpoint's weights) where the run
    stood when `state` was saved: its next step is step `state['step'] + 1`."""
    layout = state.get("optimizer_layout", "torch")  # older checkpoints: torch's own
    tr.dist.load_optimizer_state(tr.model, tr.opt, layout, state["optimizer"])
    tr.lr_slot = int(state["lr_slot"])
    tr._next_gid = int(state["next_gid"])
    tr.batches.load_state_dict(state["data"])
    tr.golden.load_state_dict(state["golden"])
    step = int(state["step"])
    tr.first_step = tr.updates_logged = tr.current_step = step
    tr.last_checkpoint = checkpoint
    if state.get("ahead") is not None and getattr(tr, "ahead", None) is not None:
        tr.ahead.ready = state["ahead"]
    set_rng_state(state["rng"])  # last: nothing above may draw from them after this
