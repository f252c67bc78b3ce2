"""The training loop: sample -> rollout -> verify -> inject -> advantages -> loss -> step -> sync -> log.

The update itself (mini-batches of whole groups, epochs, old log-probs from the generating policy,
the learning-rate schedule) is `train/update.py`. Golden trajectories get their old log-probs from
the same teacher-forced pass of the pre-update policy as every rollout, as DESIGN §4 asks.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agentic_gcpo.algorithms import get_algorithm
from agentic_gcpo.config import Config, save_config
from agentic_gcpo.data import Problem, batches, load_problems
from agentic_gcpo.engines import make_engine
from agentic_gcpo.evaluate import eval_metrics
from agentic_gcpo.ledger import Trajectory
from agentic_gcpo.metrics import MetricsLogger, Timer, atomic_write_text
from agentic_gcpo.models import load_named
from agentic_gcpo.precision import cpu_description
from agentic_gcpo.precision import resolve as resolve_precision
from agentic_gcpo.rollout.agent_loop import AgentLoop, LoopLimits
from agentic_gcpo.rollout.chat import ChatFormat
from agentic_gcpo.rollout.golden import GoldenSource
from agentic_gcpo.rollout.golden_teacher import teacher_from_config
from agentic_gcpo.sandbox import make_sandbox
from agentic_gcpo.tool_registry import get_tools
from agentic_gcpo.train import distributed, lora, sampling
from agentic_gcpo.train import state as run_state
from agentic_gcpo.train.ahead import RolloutAhead
from agentic_gcpo.train.checkpoint import (
    make_run_dir,
    prune_checkpoints,
    remove_partial_saves,
    save_checkpoint,
)
from agentic_gcpo.train.interrupt import close_all, interrupt_report, kill_sandbox_now
from agentic_gcpo.train.policy import interruptible_backward
from agentic_gcpo.train.reward import resolve_buffer
from agentic_gcpo.train.update import policy_update, slots_per_update

log = logging.getLogger(__name__)


def load_split(section: Any) -> list[Problem]:
    """The problems a data-like config section (`data`, `eval`) names."""
    return load_problems(section.path, section.limit, section.format, section.fields)


def load_policy(cfg: Config, model: Any = None, tokenizer: Any = None) -> tuple[Any, Any]:
    """The model and tokenizer a run trains (`model.path` unless given), ready for training."""
    if model is None:
        model, tokenizer = load_named(cfg.model.path)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.model.lora.enabled:  # a peft model; train and sample through lora.trained_module(model)
        model = lora.wrap(model, cfg.model.lora, cfg.model.gradient_checkpointing)
    return model, tokenizer


def config_tools(cfg: Config) -> dict[str, Any]:
    """The tools `tools.*` names, with its limits."""
    t = cfg.tools
    return get_tools(t.names, t.modules, timeout_s=t.timeout_s, max_output_chars=t.max_output_chars)


@dataclass
class StepResult:
    metrics: dict[str, float]
    trajectories: list[Trajectory] = field(default_factory=list)


class Trainer:
    # Where a run stands, for the message of an interrupted run (`interrupt_report`); set by train().
    current_step = 0  # the step in progress (1-based); `step` in metrics.jsonl = updates done
    updates_logged = 0  # training rows written to metrics.jsonl
    phase = "setup"  # setup | eval | step | logging | checkpoint | final checkpoint | done
    last_checkpoint: Path | None = None
    interrupted = False
    first_step = 0  # updates done before this process started (> 0 when resumed: train/resume.py)
    _timer: Timer | None = None  # the running step's, whose `current` names its phase

    def __init__(
        self, cfg: Config, run_dir: Path | None = None, model: Any = None, tokenizer: Any = None
    ) -> None:
        self.cfg = cfg
        # One process, or a rank of `accelerate launch` (train/distributed.py; docs/scale.md).
        self.dist = distributed.setup()
        self.local_prompts = self.dist.local_prompts(cfg.train.prompts_per_step)
        torch.manual_seed(cfg.run.seed)  # the same on every rank: the same initial weights
        random.seed(cfg.run.seed)
        self.run_dir = run_dir or self.dist.broadcast(make_run_dir(cfg) if self.dist.is_main else None)
        if self.dist.is_main:
            save_config(cfg, self.run_dir / "config.yaml")
        self.algo = get_algorithm(cfg.algorithm.name)
        self.problems = load_split(cfg.data)
        self.eval_problems = load_split(cfg.eval) if cfg.eval.path and cfg.eval.every else []
        model, tokenizer = load_policy(cfg, model, tokenizer)
        self.peft_model = model if cfg.model.lora.enabled else None  # what save() writes (the adapter)
        model = lora.trained_module(model)  # with LoRA: the transformers model its adapters sit in
        if self.dist.device:
            model.to(self.dist.device)
        self.dist.sync_module(model)
        self.sampled_model = self.dist.sampling_copy(model)  # FSDP: an unsharded copy; else `model`
        model = self.dist.shard_model(model)
        self.model, self.tok = model, tokenizer
        self.tools = config_tools(cfg)
        self.sandbox = make_sandbox(cfg.sandbox)
        self.chat = ChatFormat(
            tokenizer, self.tools, cfg.prompt.call_format, cfg.prompt.system, cfg.prompt.fewshot
        )
        self.engine = make_engine(
            cfg.engine.backend,
            self.sampled_model,
            tokenizer,
            dtype=cfg.engine.dtype,
            max_batch_size=cfg.engine.max_batch_size,
            prefix_cache_mb=cfg.engine.prefix_cache_mb,
            options=getattr(cfg.engine, cfg.engine.backend, None),  # engine.sglang etc.; hf has none
            # generating ahead: the in-process engine must not read weights the learner is writing
            **(
                {"separate_weights": True}
                if cfg.rollout.off_policy_steps and cfg.engine.backend == "hf"
                else {}
            ),
        )
        # Decided once from the hardware and written down, so a slow run can be explained.
        device = next(model.parameters()).device
        self.precision = resolve_precision(cfg.train.precision, device)
        engine_precision = getattr(self.engine, "precision", None)
        lines = {
            "cpu": cpu_description(),
            "device": str(device),
            "engine_dtype": engine_precision.dtype if engine_precision else cfg.engine.dtype,
            "engine_dtype_reason": engine_precision.reason if engine_precision else "set by the backend",
            "train_dtype": self.precision.dtype,
            "train_dtype_reason": self.precision.reason,
        }
        if self.dist.is_main:
            (self.run_dir / "precision.json").write_text(json.dumps(lines, indent=2) + "\n")
            print(
                f"precision: sampling {lines['engine_dtype']} ({lines['engine_dtype_reason']}); "
                f"training {lines['train_dtype']} ({lines['train_dtype_reason']})",
                flush=True,
            )
        r = cfg.rollout
        self.loop = AgentLoop(
            self.engine,
            self.chat,
            self.tools,
            self.sandbox,
            LoopLimits.from_rollout(r),
        )
        self.golden = GoldenSource(
            self.chat,
            self.tools,
            self.sandbox,
            style=cfg.golden.style,
            teacher=teacher_from_config(cfg, self.tools, self.sandbox) if self.algo.injects_golden else None,
            limits=self.loop.limits,
            refuse_over_limits=cfg.golden.over_limits == "refuse",
        )
        self.opt = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],  # with LoRA: the adapters only
            lr=cfg.train.lr,
            weight_decay=cfg.train.weight_decay,
        )
        self.lr_slot = 0  # position in the learning-rate schedule, in optimizer-step slots
        self.logger = (
            MetricsLogger.for_run(self.run_dir, cfg) if self.dist.is_main else distributed.NullLogger()
        )
        self.batches = batches(self.problems, cfg.train.prompts_per_step, cfg.run.seed, cfg.data.shuffle)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._next_gid = 0  # group ids stay unique across steps and sampling rounds
        self.overlong_buffer = resolve_buffer(cfg.reward.overlong_buffer, self.algo.overlong_buffer)
        self.ahead: RolloutAhead | None = None  # rollout.off_policy_steps: 1 (train/ahead.py)
        if cfg.rollout.off_policy_steps:
            if self.dist.active:
                raise ValueError(
                    "rollout.off_policy_steps: 1 runs in one process only (its rollout thread's collectives "
                    "would interleave with the update's); set it to 0 under accelerate launch"
                )
            self.ahead = RolloutAhead(self.sample, cfg.train.steps, self.loop.stop)

    # --- one step ----------------------------------------------------------------------------
    def inject(
        self, trajs: list[Trajectory], problems: list[Problem], first_gid: int
    ) -> tuple[int, int, int, int]:
        """GCPO's golden injection into all-fail groups (train/sampling.py)."""
        return sampling.inject(self, trajs, problems, first_gid)

    def sample(self, step: int, timer: Timer) -> tuple[list[Trajectory], dict[str, float]]:
        """Rollouts for one update (train/sampling.py)."""
        return sampling.sample(self, step, timer)

    def step(self, step: int) -> StepResult:
        timer = self._timer = Timer()
        trajs, metrics = self.ahead.take(step, timer) if self.ahead else self.sample(step, timer)
        for t in trajs:
            t.check()
        with timer("train"):
            metrics.update(self.update(trajs))  # an empty batch still logs (and advances the LR schedule)
        with timer("sync"):
            if self.ahead:  # the next batch is being drawn by the old weights: let it finish first
                self.ahead.wait_idle(timer)
            self.engine.update_weights(self.dist.full_weights(self.model))  # None: the engine shares it
        metrics.update(timer.times)
        metrics["time/step_s"] = sum(timer.times.values())
        return StepResult(metrics, trajs)

    def update(self, trajs: list[Trajectory]) -> dict[str, float]:
        """All optimizer steps for one rollout batch (`train/update.py`); advances the LR schedule."""
        out = policy_update(
            self.model,
            self.opt,
            self.algo,
            self.cfg,
            trajs,
            bf16=self.precision.bf16,
            pad_id=self.pad_id,
            first_slot=self.lr_slot,
            dist=self.dist,
        )
        self.lr_slot += slots_per_update(self.cfg.train)
        return out

    def evaluate(self) -> dict[str, float]:
        """Held-out accuracy and tool use of the current policy (same engine, tools and sandbox)."""
        if not self.eval_problems or not self.dist.is_main:  # rank 0 evaluates; the others wait
            return {}
        e, r = self.cfg.eval, self.cfg.rollout
        limits = LoopLimits.from_rollout(r, temperature=e.temperature, top_p=1.0)
        return eval_metrics(
            self.engine, self.chat, self.tools, self.sandbox, self.eval_problems, limits, k=e.k, seed=0
        )

    # --- the run -----------------------------------------------------------------------------
    def save(self, name: str) -> Path:
        """checkpoints/NAME, whole or not at all (see train/checkpoint.py); rank 0's copy (every rank
        holds the same weights). With LoRA: the adapter in peft's format (lora.py)."""
        d = self.run_dir / "checkpoints" / name
        opt_state = self.dist.optimizer_state(self.model, self.opt)  # FSDP: every rank gathers
        if self.dist.is_main:
            model = self.peft_model or self.sampled_model
            state = lambda tmp: run_state.write_state(self, tmp, opt_state)  # noqa: E731 - into the temp dir
            self.last_checkpoint = save_checkpoint(model, self.tok, d, state)
            prune_checkpoints(d.parent, self.cfg.train.keep_checkpoints)
        return d

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the weights that the next step depends on (train/state.py)."""
        return run_state.trainer_state(self, self.dist.optimizer_state(self.model, self.opt))

    def load_state_dict(self, state: dict[str, Any], checkpoint: Path | None = None) -> None:
        """Continue after the step `state` was saved at (the weights are loaded separately)."""
        run_state.restore(self, state, checkpoint)

    def train(self) -> Path:
        """Run every step, then save the final policy. Ctrl-C (KeyboardInterrupt) anywhere stops the
        run within seconds: the sandbox's workers are killed, queued tool calls cancelled,
        engine and logger closed, summary.json says `interrupted`, and the KeyboardInterrupt
        propagates (the CLI prints `interrupt_report()` and exits 130)."""
        cfg = self.cfg
        steps = range(self.first_step, cfg.train.steps)  # from a checkpoint's step when resumed
        remove_partial_saves(self.run_dir / "checkpoints")
        bar = None
        if cfg.log.progress and self.dist.is_main:
            from tqdm import tqdm

            bar = tqdm(
                total=cfg.train.steps, initial=self.first_step, desc="train", unit="step", dynamic_ncols=True
            )
        completed = False
        unhook = interruptible_backward(self.model)  # Ctrl-C lands inside a micro-batch's backward
        try:
            if cfg.eval.every and not self.first_step:  # the starting point (a resumed run has it)
                # eval rows share metrics.jsonl, keys eval/*
                self.phase = "eval"
                self.logger.log(0, self.evaluate())
            for step in steps:
                self.current_step, self.phase, self._timer = step + 1, "step", None
                res = self.step(step)
                self.phase = "logging"
                self.logger.log(step + 1, res.metrics)  # `step` in metrics.jsonl = updates done
                self.updates_logged = step + 1
                if cfg.eval.every and ((step + 1) % cfg.eval.every == 0 or step + 1 == cfg.train.steps):
                    self.phase = "eval"
                    ev = self.evaluate()
                    self.logger.log(step + 1, ev)
                    res.metrics.update(ev)
                if cfg.train.samples_per_step:
                    self.phase = "logging"
                    shown = res.trajectories[: cfg.train.samples_per_step]
                    golden = [t for t in res.trajectories if t.is_golden][:1]  # always one, if any
                    shown += [t for t in golden if not any(t is s for s in shown)]
                    self.logger.samples(step + 1, shown, self.tok)
                if cfg.train.checkpoint_every and (step + 1) % cfg.train.checkpoint_every == 0:
                    self.phase = "checkpoint"
                    self.save(f"step-{step + 1}")
                m = res.metrics
                summary = (
                    f"reward {m.get('reward/mean', 0):.2f} | tool calls/traj {m.get('tools/calls_per_traj', 0):.2f} | "
                    f"injected {m.get('gcpo/injected_frac', 0):.2f} | loss {m.get('loss/policy', 0):+.4f} | "
                    f"{m.get('time/step_s', 0):.0f}s"
                )
                if "eval/pass@1" in m:
                    summary += f" | held-out pass@1 {m['eval/pass@1']:.3f}"
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(summary)
                elif self.dist.is_main:
                    print(f"step {step + 1}/{cfg.train.steps} | {summary}", flush=True)
            if cfg.train.save_final:
                self.phase = "final checkpoint"
                self.save("final")
            self.phase, completed = "done", True
        except KeyboardInterrupt:
            self.interrupted = True
            raise
        finally:
            unhook()
            if bar is not None:
                bar.close()
            self.close(interrupted=not completed)
            if (completed or self.interrupted) and self.dist.is_main:
                outcome = {
                    "run_dir": str(self.run_dir),
                    "steps": cfg.train.steps,
                    "updates": self.updates_logged,
                    "interrupted": self.interrupted,
                    "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
                }
                atomic_write_text(self.run_dir / "summary.json", json.dumps(outcome))
        return self.run_dir

    def close(self, interrupted: bool = False) -> None:
        """Release the run's processes, threads and files; each part even if another fails.

        The sandbox goes first: its workers are killed, so a tool call still running returns at
        once. interrupted (Ctrl-C, an error): queued tool calls are cancelled and running ones not
        joined."""
        parts = [("sandbox", self.sandbox.close)]
        if self.ahead is not None:  # after the sandbox: a tool call it is waiting on returns at once
            parts.append(("rollouts ahead", self.ahead.close))
        parts.append(("agent loop", lambda: self.loop.close(wait=not interrupted)))
        if self.golden.teacher is not None:
            parts.append(("teacher", lambda: self.golden.teacher.close(wait=not interrupted)))
        code = 130 if self.interrupted else int(interrupted)  # the exit code W&B records
        parts += [("engine", self.engine.close), ("metrics logger", lambda: self.logger.close(code))]
        parts.append(("process group", self.dist.close))
        close_all(parts)

    def kill_now(self) -> None:
        kill_sandbox_now(self.sandbox)

    def interrupt_report(self) -> str:
        """What an interrupted run did, where its files are and how to continue (the CLI prints it)."""
        return interrupt_report(self)
