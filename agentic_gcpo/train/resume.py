"""`agentic-gcpo train --resume RUN_DIR`: continue a stopped run (Ctrl-C, kill -9, a lost node) in
its own directory, as if it had never stopped.

The run's newest complete checkpoint (step-N or final with a trainer state, `train/state.py`) gives
the weights, the optimizer, the LR-schedule position, the data position, the goldens and the RNG
states. The config is the run's config.yaml; dotted overrides may change only what cannot make the
resumed run differ from an uninterrupted one (SAFE_KEYS: more steps, checkpoint and log settings);
other changes are refused with the list of them unless `--allow-changes`. metrics.jsonl and
samples.jsonl are cut back to the checkpoint's step (rows of steps the checkpoint does not hold
are computed again), so every step appears once.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentic_gcpo.config import Config, load_config
from agentic_gcpo.metrics import atomic_write_text
from agentic_gcpo.train import state as run_state
from agentic_gcpo.train.checkpoint import CKPT_TMP_PREFIX, complete_checkpoints, remove_partial_saves

log = logging.getLogger(__name__)

# Config keys an override may change on resume: none of them changes what a step computes. A
# pattern ending in ".*" covers its whole section. train.steps with a cosine schedule stretches the
# schedule over the new total (said at start-up).
SAFE_KEYS = (
    "train.steps",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.save_final",
    "train.samples_per_step",
    "log.*",
    "sandbox.pool_size",
    "sandbox.preload",
)


class ResumeError(ValueError):
    """A run directory that cannot be resumed; the message says why and what to do instead."""


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _safe(key: str) -> bool:
    return any(key == s or (s.endswith(".*") and key.startswith(s[:-1])) for s in SAFE_KEYS)


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs."""
    a, b = _flat(old), _flat(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


@dataclass
class ResumePlan:
    run_dir: Path
    cfg: Config
    checkpoint: Path
    step: int  # updates the checkpoint holds
    changes: list[tuple[str, Any, Any]]  # config changes against the checkpoint's config (allowed ones)


def plan_resume(
    run_dir: str | Path, overrides: list[str] | None = None, allow_changes: bool = False
) -> ResumePlan:
    """Check `run_dir` and pick its newest complete checkpoint; ResumeError/ConfigError if it cannot
    be resumed. Removes the temporary directories of a save the stopped run did not finish."""
    d = Path(run_dir)
    if not d.is_dir():
        raise ResumeError(
            f"--resume {d}: no such run directory. Pass a directory that `agentic-gcpo train` printed as "
            "'run directory: ...' (under run.output_dir, default runs/)."
        )
    if not (d / "config.yaml").is_file():
        raise ResumeError(f"--resume {d}: not a run directory (it has no config.yaml)")
    ckpt_dir = d / "checkpoints"
    if ckpt_dir.is_dir():
        remove_partial_saves(ckpt_dir)
    found = complete_checkpoints(ckpt_dir)
    if not found:
        legacy = sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir()) if ckpt_dir.is_dir() else []
        why = (
            f"its checkpoints ({', '.join(legacy)}) hold weights only (written before resume existed, "
            "or under FSDP by a version before FSDP resume)"
            if legacy
            else "the run stopped before its first checkpoint"
        )
        raise ResumeError(
            f"--resume {d}: no complete checkpoint to resume from: {why}. Start a fresh run with the same "
            f"config: agentic-gcpo train -c {d / 'config.yaml'} (set train.checkpoint_every=N to be able "
            "to resume it"
            + (f"; or start from saved weights with model.path={ckpt_dir / legacy[-1]})" if legacy else ")")
        )
    step, ckpt = found[-1]
    cfg = load_config(d / "config.yaml", overrides)
    saved = run_state.read_info(ckpt)["config"]
    changes = config_changes(saved, cfg.model_dump(mode="json"))
    unsafe = [c for c in changes if not _safe(c[0])]
    if unsafe and not allow_changes:
        listing = "\n".join(f"  {k}: {old!r} -> {new!r}" for k, old, new in unsafe)
        raise ResumeError(
            f"--resume {d}: the config differs from the one {ckpt.name} was trained with in keys that change "
            f"what the next steps compute:\n{listing}\nOn resume these may change: {', '.join(SAFE_KEYS)}. "
            "Drop the other overrides (or restore config.yaml), or pass --allow-changes to continue with "
            "them anyway (the run is then no longer the one it would have been)."
        )
    return ResumePlan(d, cfg, ckpt, step, changes)


def load_weights(tr: Any, ckpt: Path) -> None:
    """Copy the checkpoint's tensors into the trainer's model (with LoRA: into its adapters), so
    that the model built from the config (LoRA wrapping, device placement) is the one trained on."""
    from safetensors.torch import load_file

    files = sorted(ckpt.glob("*.safetensors"))
    if not files:
        raise ResumeError(f"{ckpt} holds no *.safetensors weights; it cannot be resumed from")
    tensors: dict[str, Any] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    peft_model = getattr(tr, "peft_model", None)
    if peft_model is not None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(peft_model, tensors)
        bad = list(getattr(result, "unexpected_keys", []) or [])
        if bad:
            raise ResumeError(f"{ckpt}: adapter weights {bad[:5]} do not fit the configured LoRA model")
    else:
        # Under FSDP the trained module is sharded: the weights go into its unsharded sampling copy
        # first (the checks below need whole tensors), then are sharded from there.
        fsdp = getattr(getattr(tr, "dist", None), "fsdp", False)
        target = tr.sampled_model if fsdp else tr.model
        result = target.load_state_dict(tensors, strict=False)
        # a tied weight (lm_head = embeddings) is saved once; it is loaded through its twin
        loaded = {id(p) for n, p in target.named_parameters(remove_duplicate=False) if n in tensors}
        params = dict(target.named_parameters(remove_duplicate=False))
        missing = [k for k in result.missing_keys if k not in params or id(params[k]) not in loaded]
        if missing or result.unexpected_keys:
            raise ResumeError(
                f"{ckpt}: its weights do not fit the configured model (missing {missing[:5]}, unexpected "
                f"{result.unexpected_keys[:5]}); model.* in config.yaml must be what the run trained"
            )
        if fsdp:
            tr.dist.load_full_weights(tr.model, target.state_dict())
    tr.engine.update_weights(None)  # the engine's sampling copy (bf16) and prefix cache follow


def truncate_jsonl(path: Path, step: int) -> int:
    """Keep the rows of `path` with step <= `step` (and drop torn lines); whole or not at all.
    Returns how many rows were dropped."""
    if not path.exists():
        return 0
    keep, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            ok = int(json.loads(line)["step"]) <= step
        except (ValueError, KeyError, TypeError):
            ok = False  # a line cut short by the kill
        if ok:
            keep.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(keep))
    return dropped


def _copy_as_final(ckpt: Path) -> Path:
    """A finished run stopped while saving `final`: its last step's checkpoint is the same policy."""
    final = ckpt.parent / "final"
    tmp = ckpt.parent / f"{CKPT_TMP_PREFIX}final-copy"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ckpt, tmp)
    tmp.rename(final)
    return final


def _precision(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "precision.json").read_text())
    except (OSError, ValueError):
        return {}


def build_resumed(plan: ResumePlan) -> Any:
    """The Trainer of `plan`, at the checkpoint's step, its log files cut back to that step."""
    from agentic_gcpo.train.trainer import Trainer

    before = _precision(plan.run_dir)
    tr = Trainer(plan.cfg, run_dir=plan.run_dir)
    load_weights(tr, plan.checkpoint)
    tr.load_state_dict(run_state.load_state(plan.checkpoint), plan.checkpoint)
    now = _precision(plan.run_dir)
    for key in ("engine_dtype", "train_dtype"):
        if before.get(key) and now.get(key) and before[key] != now[key]:
            print(
                f"warning: {key} was {before[key]} before and is {now[key]} now ({now.get(key + '_reason')}): "
                "results will not match the uninterrupted run exactly; set engine.dtype / train.precision "
                "explicitly to keep them",
                file=sys.stderr,
            )
    dropped = 0
    if getattr(getattr(tr, "dist", None), "is_main", True):  # one writer under `accelerate launch`
        dropped = sum(truncate_jsonl(plan.run_dir / f, plan.step) for f in ("metrics.jsonl", "samples.jsonl"))
    if plan.cfg.log.tensorboard:
        log.warning("TensorBoard events after step %d from the stopped run are not removed", plan.step)
    if dropped:
        print(f"dropped {dropped} log rows after step {plan.step} (they are computed again)", flush=True)
    return tr


def start_resumed(args: argparse.Namespace, guard: Any) -> Any | int:
    """What `train --resume` runs before training: the Trainer (registered with `guard`), or an exit
    code when there is nothing to train (0: the run had finished) or it cannot be resumed (2)."""
    from agentic_gcpo.config import ConfigError

    try:
        plan = plan_resume(args.resume, args.overrides, args.allow_changes)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    steps = plan.cfg.train.steps
    for key, old, new in plan.changes:
        print(f"config change on resume: {key}: {old!r} -> {new!r}", flush=True)
        if key == "train.steps" and plan.cfg.train.lr_schedule == "cosine":
            print("  (the cosine schedule is stretched over the new train.steps from here on)", flush=True)
    if plan.step >= steps:
        final = plan.run_dir / "checkpoints" / "final"
        if plan.cfg.train.save_final and not final.is_dir():
            _copy_as_final(plan.checkpoint)
            print(f"{final} was missing (stopped while saving it): copied from {plan.checkpoint.name}")
        print(
            f"{plan.run_dir} already finished: {plan.step} of train.steps={steps} updates done "
            f"({plan.checkpoint.name}). Nothing to do; to train further pass a larger train.steps, e.g. "
            f"agentic-gcpo train --resume {plan.run_dir} train.steps={plan.step + steps}",
            flush=True,
        )
        return 0
    from agentic_gcpo.models import ModelLoadError  # imports transformers: only when training

    try:
        tr = build_resumed(plan)
    except (ConfigError, ModelLoadError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    guard.trainer = tr
    print(f"run directory: {tr.run_dir}", flush=True)
    print(
        f"resuming from {plan.checkpoint} at step {plan.step} of {steps}: the next update is step {plan.step + 1}",
        flush=True,
    )
    return tr
