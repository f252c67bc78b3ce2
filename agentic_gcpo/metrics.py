"""Metrics: what a step did, computed from trajectories, written as JSONL (+ optional sinks).

Names are stable and documented in the README. Training accuracy is always reported *without*
golden members (`reward/mean`), so injected answers cannot inflate it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agentic_gcpo.ledger import Trajectory

FINISH_REASONS = ("stop", "length", "max_turns", "budget")


def rollout_metrics(trajs: list[Trajectory]) -> dict[str, float]:
    """Metrics over the policy's own rollouts (golden members excluded)."""
    rs = [t for t in trajs if not t.is_golden]
    if not rs:
        return {}
    n = len(rs)
    calls = [len(t.tool_calls) for t in rs]
    all_calls = [c for t in rs for c in t.tool_calls]
    m: dict[str, float] = {
        "reward/mean": sum(t.reward for t in rs) / n,
        "reward/accuracy": sum(t.correct for t in rs) / n,
        "tools/calls_per_traj": sum(calls) / n,
        "tools/traj_with_call_frac": sum(c > 0 for c in calls) / n,
        "tools/error_rate": (sum(c.status != "ok" for c in all_calls) / len(all_calls)) if all_calls else 0.0,
        "response/policy_tokens_mean": sum(t.num_policy_tokens for t in rs) / n,
        "response/total_tokens_mean": sum(len(t.token_ids) - t.prompt_len for t in rs) / n,
        "response/turns_mean": sum(t.num_turns for t in rs) / n,
    }
    # -log p of each sampled token under the distribution it was drawn from: its mean estimates the
    # sampler's entropy per token, for free. A climb is the first sign of a too-large step turning
    # the policy's text into noise (turns that run to their token limit follow).
    nll = [-lp for t in rs for lp, s in zip(t.sampler_logprobs, t.loss_mask) if s and not math.isnan(lp)]
    if nll:
        m["response/sampled_nll"] = sum(nll) / len(nll)
    statuses = Counter(c.status for c in all_calls)
    for s in ("malformed", "unknown_tool", "invalid_args", "tool_error"):
        m[f"tools/{s}"] = float(statuses.get(s, 0))
    m["tools/no_call_traj"] = float(sum(c == 0 for c in calls))
    m["tools/too_many_calls"] = float(sum(e == "too_many_calls" for t in rs for e in t.parse_errors))
    reasons = Counter(t.finish_reason for t in rs)
    for r in FINISH_REASONS:
        m[f"finish/{r}"] = reasons.get(r, 0) / n
    groups: dict[int, list[Trajectory]] = {}
    for t in rs:
        groups.setdefault(t.group_id, []).append(t)
    m["groups/all_correct_frac"] = sum(all(t.correct for t in g) for g in groups.values()) / len(groups)
    m["groups/all_fail_frac"] = sum(not any(t.correct for t in g) for g in groups.values()) / len(groups)
    return m


def append_lines(path: Path, lines: list[str]) -> None:
    """Append whole lines with one write(2) on an O_APPEND descriptor: no Python buffer to flush,
    and a Ctrl-C, which Python raises before or after that call (a signal does not cut a write to a
    regular file short), leaves every line whole or absent."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:  # a short write only happens on a full disk, say
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `path` whole or not at all: a temporary sibling, renamed over it once complete."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class Timer:
    """Accumulates wall time per phase: `with timer("rollout"): ...` -> time/rollout_s.

    `current` names the phase running now; an exception leaves it set, so an interrupted step can
    say where it stopped."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.current: str | None = None

    @contextmanager
    def __call__(self, name: str):
        t0, outer = time.perf_counter(), self.current
        self.current = name
        try:
            yield
            self.current = outer
        finally:
            self.times[f"time/{name}_s"] = self.times.get(f"time/{name}_s", 0.0) + time.perf_counter() - t0


class MetricsLogger:
    """metrics.jsonl always; TensorBoard and W&B when asked for (and installed)."""

    @classmethod
    def for_run(cls, run_dir: Path, cfg: Any) -> MetricsLogger:
        """The logger a run's `log.*` config asks for, with the whole config recorded."""
        log = cfg.log
        return cls(run_dir, log.tensorboard, log.wandb, log.wandb_project, cfg.model_dump(mode="json"))

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool = False,
        wandb: bool = False,
        project: str = "",
        config: Any = None,
    ) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.jsonl"
        self._tb = self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("log.tensorboard=true needs `pip install tensorboard`") from e
            self._tb = SummaryWriter(str(run_dir / "tb"))
        if wandb:
            try:
                import wandb as wb
            except ImportError as e:
                raise RuntimeError("log.wandb=true needs `pip install wandb`") from e
            self._wandb = wb.init(project=project, dir=str(run_dir), config=config, name=run_dir.name)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()
        }
        append_lines(self.path, [json.dumps({"step": step, **clean})])
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def samples(self, step: int, trajs: list[Trajectory], tokenizer: Any) -> None:
        append_lines(self.samples_path, [json.dumps({"step": step, **t.to_json(tokenizer)}) for t in trajs])

    def close(self, exit_code: int = 0) -> None:
        """metrics.jsonl needs nothing (each row is written through); flush and close the other
        sinks. exit_code: what W&B records for the run (130: interrupted)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish(exit_code=exit_code)
            self._wandb = None
