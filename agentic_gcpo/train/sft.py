"""Cold-start SFT (`agentic-gcpo sft`): supervised training on verified golden tool trajectories.

Tool-integrated RL recipes (ReTool among them) first fine-tune on tool-using solutions so that RL
starts from a policy that already calls the tool. Here the training examples are the same golden
trajectories GCPO injects (`rollout/golden.py`: built in the rollout's own token format, the tool
call really run in the sandbox, verified; refused and counted otherwise), and the loss goes
through the same ledger and code as RL:

- `pack` + `token_logprobs(..., only=loss_mask)` from `train/policy.py`, so the SFT and RL
  log-probs are one computation;
- only tokens the policy writes (`loss_mask`, Source.SAMPLED) are scored: prompt, tool output
  and chat-template glue get neither loss nor gradient;
- the loss of one optimizer step is the token mean over its batch: the sum of -log p over every
  loss_mask token of the step's `sft.batch_size` sequences, divided by that token count (the same
  normalisation as RL's token-mean aggregation, so long goldens weigh by their length).

Log-probs are at temperature 1 (the model's own distribution): SFT fits the model, not a sampler.
The final checkpoint is a transformers directory that `model.path: DIR` loads, written whole or
not at all (`train/checkpoint.py`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agentic_gcpo.config import Config, SFTConfig, save_config
from agentic_gcpo.data import Problem
from agentic_gcpo.ledger import Trajectory
from agentic_gcpo.metrics import MetricsLogger, atomic_write_text
from agentic_gcpo.train.interrupt import close_all, kill_sandbox_now
from agentic_gcpo.train.policy import interruptible_backward, pack, token_logprobs

log = logging.getLogger(__name__)


class SFTError(ValueError):
    """An SFT run that cannot start (e.g. no usable golden); the message says what to change."""


# --- the loss ------------------------------------------------------------------------------------
def sft_loss(
    model: torch.nn.Module,
    trajs: list[Trajectory],
    pad_id: int,
    *,
    bf16: bool = False,
    num_tokens: float | None = None,
) -> torch.Tensor:
    """Sum of -log p(token) over the loss_mask tokens of `trajs`, divided by `num_tokens`.

    `num_tokens`: the optimizer step's loss_mask token count when `trajs` is one micro-batch of
    it (gradient accumulation then sums to the step's token mean); None: this batch's own count."""
    b = pack(trajs, pad_id)
    logp = token_logprobs(model, b.input_ids, b.attention_mask, bf16, only=b.loss_mask)  # [N, T-1]
    denom = float(b.loss_mask.sum()) if num_tokens is None else num_tokens
    if denom <= 0:
        raise SFTError("SFT batch has no policy-written (loss_mask) token to learn from")
    return -(logp * b.loss_mask).sum() / denom


def sft_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    trajs: list[Trajectory],
    *,
    pad_id: int,
    lr: float,
    bf16: bool = False,
    micro_batch_size: int = SFTConfig.model_fields["micro_batch_size"].default,  # one source of truth
    grad_clip: float = 1.0,
) -> dict[str, float]:
    """One optimizer step on `trajs` (token-mean loss, micro-batched); returns its sft/* metrics."""
    model.train()
    for group in opt.param_groups:
        group["lr"] = lr
    tokens = float(sum(t.num_policy_tokens for t in trajs))
    order = sorted(range(len(trajs)), key=lambda i: len(trajs[i].token_ids))  # less padding
    loss_sum = 0.0
    for k in range(0, len(order), micro_batch_size):
        micro = [trajs[i] for i in order[k : k + micro_batch_size]]
        loss = sft_loss(model, micro, pad_id, bf16=bf16, num_tokens=tokens)
        loss.backward()
        loss_sum += float(loss.detach())
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    if math.isfinite(grad_norm):  # a non-finite gradient would poison the weights: skip the step
        opt.step()
    opt.zero_grad(set_to_none=True)
    return {"sft/loss": loss_sum, "sft/tokens": tokens, "sft/grad_norm": grad_norm, "sft/lr": lr}


def lr_at(step: int, total: int, sc: SFTConfig) -> float:
    """sft.lr at optimizer step `step` (0-based) of `total`: linear warmup, then constant or cosine.

    Warmup reaches sft.lr at its last step; the cosine then falls from there towards 0 without
    reaching it (the last step still learns), so no step repeats the peak and none is wasted."""
    if step < sc.warmup_steps:
        return sc.lr * (step + 1) / sc.warmup_steps  # the first step already learns
    if sc.lr_schedule == "constant":
        return sc.lr
    progress = (step - sc.warmup_steps + 1) / max(1, total - sc.warmup_steps + 1)
    return sc.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


# --- the goldens ---------------------------------------------------------------------------------
@dataclass
class GoldenSet:
    goldens: list[Trajectory]
    problems: int
    verify_failures: int  # the golden's answer did not verify
    tool_errors: int  # its tool call failed or named an unknown tool
    no_tool_call: int  # tool-free, refused under sft.require_tool_call
    unsolved: int  # golden.source='teacher': no verified teacher rollout
    over_limits: int = 0  # longer than the rollout limits
    over_limits_refused: bool = False  # golden.over_limits='refuse': those are among the refused

    def over_limits_text(self) -> str:
        if not self.over_limits:
            return ""
        fate = "refused" if self.over_limits_refused else "kept: golden.over_limits=keep"
        return f"; {self.over_limits} longer than the rollout limits ({fate})"

    @property
    def refused(self) -> int:
        return self.problems - len(self.goldens)

    def metrics(self) -> dict[str, float]:
        return {
            "sft/goldens": float(len(self.goldens)),
            "sft/goldens_refused": float(self.refused),
            "sft/goldens_verify_failures": float(self.verify_failures),
            "sft/goldens_tool_errors": float(self.tool_errors),
            "sft/goldens_no_tool_call": float(self.no_tool_call),
            "sft/goldens_unsolved": float(self.unsolved),
            "sft/goldens_over_limits": float(self.over_limits),
        }


def build_goldens(problems: list[Problem], source: Any, require_tool_call: bool = True) -> GoldenSet:
    """One verified golden per problem that has one (`source`: a rollout.golden.GoldenSource)."""
    v0, e0, o0 = source.stats.verify_failures, source.stats.tool_errors, source.stats.over_limits
    source.prefetch(problems)  # a teacher solves them all in one batched run
    out, no_call, missing = [], 0, 0
    for gid, p in enumerate(problems):
        g = source.get(p, gid)
        if g is None:
            missing += 1
        elif require_tool_call and not g.tool_calls:
            no_call += 1
        else:
            out.append(g)
    verify_failures = source.stats.verify_failures - v0
    tool_errors = source.stats.tool_errors - e0
    over = source.stats.over_limits - o0
    refuses = source.refuse_over_limits
    unsolved = missing - verify_failures - tool_errors - (over if refuses else 0)
    return GoldenSet(out, len(problems), verify_failures, tool_errors, no_call, unsolved, over, refuses)


def no_golden_message(gs: GoldenSet, data_path: str) -> str:
    return (
        f"no usable golden trajectory in {data_path}: of {gs.problems} problems, "
        f"{gs.verify_failures} goldens failed verification, {gs.tool_errors} had a failing tool call, "
        f"{gs.no_tool_call} made no tool call (sft.require_tool_call=true), {gs.unsolved} were not "
        f"solved by the teacher{gs.over_limits_text()}. Reference goldens need worked solutions whose calculator annotations "
        "(<<48/2=24>>) become python calls, or a row's own `golden` message list; otherwise use "
        "golden.source=teacher, or sft.require_tool_call=false to train on tool-free solutions."
    )


# --- the run -------------------------------------------------------------------------------------
class SFTRun:
    """Goldens -> (eval) -> epochs of optimizer steps -> checkpoints/final -> (eval).

    Ctrl-C (KeyboardInterrupt) anywhere: the sandbox, engine and logger are closed, summary.json
    says `interrupted`, and the exception propagates (the CLI prints `interrupt_report()`)."""

    phase = "setup"  # setup | goldens | eval | step | checkpoint | done
    steps_done = 0
    total_steps = 0
    last_checkpoint: Path | None = None
    interrupted = False

    def __init__(
        self, cfg: Config, run_dir: Path | None = None, model: Any = None, tokenizer: Any = None
    ) -> None:
        from agentic_gcpo.precision import resolve as resolve_precision
        from agentic_gcpo.rollout.chat import ChatFormat
        from agentic_gcpo.sandbox import make_sandbox
        from agentic_gcpo.train.checkpoint import make_run_dir
        from agentic_gcpo.train.trainer import config_tools, load_policy, load_split

        self.cfg = cfg
        if cfg.model.lora.enabled:  # its checkpoint must be a whole model for `train` to continue from
            raise ValueError(
                "sft trains every weight; model.lora.enabled=true is for `agentic-gcpo train` only: "
                "set model.lora.enabled=false for the SFT stage"
            )
        torch.manual_seed(cfg.run.seed)
        problems = load_split(cfg.data)
        self.problems = problems[: cfg.sft.limit] if cfg.sft.limit else problems
        self.eval_problems = load_split(cfg.eval) if cfg.sft.eval and cfg.eval.path else []
        model, tokenizer = load_policy(cfg, model, tokenizer)
        self.model, self.tok = model, tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.tools = config_tools(cfg)
        self.run_dir = run_dir or make_run_dir(cfg)
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / "config.yaml")
        self.precision = resolve_precision(cfg.train.precision, next(model.parameters()).device)
        self.sandbox = make_sandbox(cfg.sandbox)
        self.chat = ChatFormat(
            tokenizer, self.tools, cfg.prompt.call_format, cfg.prompt.system, cfg.prompt.fewshot
        )
        self.engine: Any = None
        self.teacher: Any = None
        self.logger = MetricsLogger.for_run(self.run_dir, cfg)

    def _golden_source(self) -> Any:
        from agentic_gcpo.rollout.golden import GoldenSource
        from agentic_gcpo.rollout.golden_teacher import teacher_from_config

        g = self.cfg.golden
        # golden.enabled switches GCPO's injection; SFT always wants the configured source.
        as_enabled = self.cfg.model_copy(update={"golden": g.model_copy(update={"enabled": True})})
        self.teacher = teacher_from_config(as_enabled, self.tools, self.sandbox)
        from agentic_gcpo.rollout.agent_loop import LoopLimits

        r = self.cfg.rollout
        return GoldenSource(
            self.chat,
            self.tools,
            self.sandbox,
            style=g.style,
            teacher=self.teacher,
            # the loop's limits: what a policy trained on these goldens may write when it is run
            limits=LoopLimits.from_rollout(r),
            refuse_over_limits=g.over_limits == "refuse",
        )

    def evaluate(self) -> dict[str, float]:
        """Held-out accuracy and tool use, as the trainer's in-training eval (greedy by default)."""
        if not self.eval_problems:
            return {}
        from agentic_gcpo.engines import make_engine
        from agentic_gcpo.evaluate import eval_metrics
        from agentic_gcpo.rollout.agent_loop import LoopLimits

        c = self.cfg
        if self.engine is None:
            self.engine = make_engine(
                c.engine.backend,
                self.model,
                self.tok,
                dtype=c.engine.dtype,
                max_batch_size=c.engine.max_batch_size,
                prefix_cache_mb=c.engine.prefix_cache_mb,
            )
        self.engine.update_weights(None)  # sample from the current weights (and drop stale KV caches)
        r, e = c.rollout, c.eval
        limits = LoopLimits.from_rollout(r, temperature=e.temperature, top_p=1.0)
        return eval_metrics(
            self.engine, self.chat, self.tools, self.sandbox, self.eval_problems, limits, k=e.k
        )

    def run(self) -> Path:
        """Train, save checkpoints/final and return its path. Raises SFTError without usable goldens."""
        from agentic_gcpo.train.checkpoint import remove_partial_saves, save_checkpoint

        cfg, sc = self.cfg, self.cfg.sft
        remove_partial_saves(self.run_dir / "checkpoints")
        unhook = interruptible_backward(self.model)  # Ctrl-C lands inside a backward pass
        completed = False
        try:
            print(f"precision: training {self.precision.dtype} ({self.precision.reason})", flush=True)
            self.phase = "goldens"
            t0 = time.perf_counter()
            gs = build_goldens(self.problems, self._golden_source(), sc.require_tool_call)
            if not gs.goldens:
                raise SFTError(no_golden_message(gs, cfg.data.path))
            print(
                f"goldens: {len(gs.goldens)} of {gs.problems} problems ({gs.refused} refused: "
                f"{gs.verify_failures} unverified, {gs.tool_errors} tool errors, {gs.no_tool_call} "
                f"without a tool call, {gs.unsolved} unsolved{gs.over_limits_text()}) "
                f"in {time.perf_counter() - t0:.0f}s",
                flush=True,
            )
            self.logger.log(0, {**gs.metrics(), "time/goldens_s": time.perf_counter() - t0})
            if self.eval_problems:
                self.phase = "eval"
                self._eval_and_log(0, "before")
            per_epoch = math.ceil(len(gs.goldens) / sc.batch_size)
            self.total_steps = sc.epochs * per_epoch
            opt = torch.optim.AdamW(self.model.parameters(), lr=sc.lr, weight_decay=cfg.train.weight_decay)
            rng = random.Random(cfg.run.seed)
            self.phase = "step"
            for epoch in range(sc.epochs):
                order = list(range(len(gs.goldens)))
                if cfg.data.shuffle:
                    rng.shuffle(order)
                for k in range(0, len(order), sc.batch_size):
                    t1 = time.perf_counter()
                    m = sft_step(
                        self.model,
                        opt,
                        [gs.goldens[i] for i in order[k : k + sc.batch_size]],
                        pad_id=self.pad_id,
                        lr=lr_at(self.steps_done, self.total_steps, sc),
                        bf16=self.precision.bf16,
                        micro_batch_size=sc.micro_batch_size,
                        grad_clip=cfg.train.grad_clip,
                    )
                    self.steps_done += 1
                    m.update({"sft/epoch": float(epoch + 1), "time/step_s": time.perf_counter() - t1})
                    self.logger.log(self.steps_done, m)
                    print(
                        f"sft step {self.steps_done}/{self.total_steps} | loss {m['sft/loss']:.4f} | "
                        f"{m['sft/tokens']:.0f} tokens | lr {m['sft/lr']:.2e} | {m['time/step_s']:.1f}s",
                        flush=True,
                    )
            self.phase = "checkpoint"
            self.last_checkpoint = save_checkpoint(
                self.model, self.tok, self.run_dir / "checkpoints" / "final"
            )
            if self.eval_problems:
                self.phase = "eval"
                self._eval_and_log(self.steps_done, "after")
            self.phase, completed = "done", True
        except KeyboardInterrupt:
            self.interrupted = True
            raise
        finally:
            unhook()
            self.close(interrupted=not completed)
            if completed or self.interrupted:
                summary = {
                    "run_dir": str(self.run_dir),
                    "steps": self.total_steps,
                    "updates": self.steps_done,
                    "interrupted": self.interrupted,
                    "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
                }
                atomic_write_text(self.run_dir / "summary.json", json.dumps(summary))
        return self.last_checkpoint

    def _eval_and_log(self, step: int, when: str) -> None:
        ev = self.evaluate()
        self.logger.log(step, ev)
        print(
            f"held-out {when} SFT: pass@1 {ev.get('eval/pass@1', 0):.3f} | trajectories with a tool call "
            f"{ev.get('eval/tools/traj_with_call_frac', 0):.2f} | {ev.get('eval/time/wall_s', 0):.0f}s",
            flush=True,
        )

    def close(self, interrupted: bool = False) -> None:
        """Release sandbox, teacher, engine and logger; each even if another fails."""
        parts: list[tuple[str, Any]] = [("sandbox", self.sandbox.close)]
        if self.teacher is not None:
            parts.append(("teacher", lambda: self.teacher.close(wait=not interrupted)))
        if self.engine is not None:
            parts.append(("engine", self.engine.close))
        code = 130 if self.interrupted else int(interrupted)
        parts.append(("metrics logger", lambda: self.logger.close(code)))
        close_all(parts)

    def kill_now(self) -> None:
        kill_sandbox_now(self.sandbox)

    def interrupt_report(self) -> str:
        where = {
            "goldens": "while building goldens",
            "eval": "in the held-out evaluation",
            "step": f"in SFT step {self.steps_done + 1}/{self.total_steps}",
            "checkpoint": "while saving checkpoints/final (discarded: incomplete)",
            "done": "after the run had completed (its files are complete)",
        }.get(self.phase, f"during {self.phase}")
        lines = [
            f"interrupted (Ctrl-C) {where}.",
            f"{self.steps_done} SFT steps were completed and logged: {self.run_dir / 'metrics.jsonl'}",
        ]
        if self.last_checkpoint is not None:
            lines.append(f"checkpoint: {self.last_checkpoint}")
        else:
            lines.append("no checkpoint was saved (SFT saves checkpoints/final once all steps are done).")
        lines.append("sandbox workers, engine and metrics logger were closed. To start again:")
        lines.append(f"  agentic-gcpo sft -c {self.run_dir / 'config.yaml'}")
        return "\n".join(lines)
