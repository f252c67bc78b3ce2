"""The training loop: sample -> rollout -> verify -> inject -> advantages -> loss -> step -> sync -> log.

One optimizer step per rollout batch. Old log-probs are the pre-update policy's: with a single
update per batch they equal the current log-probs detached (verl does the same), so the ratio
is exactly 1 at the step and the clip only matters once several updates reuse one batch. Golden
trajectories get theirs from the same teacher-forced forward pass, as DESIGN §4 asks.

Sequences whose advantage is exactly 0 contribute neither loss nor gradient under every registered
algorithm, so they are not forwarded at all; the loss denominators still count them, which keeps
the aggregation identical to a full-batch pass.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agentic_gcpo.algorithms import aggregate, get_algorithm
from agentic_gcpo.config import Config, save_config
from agentic_gcpo.data import Problem, batches, load_problems
from agentic_gcpo.engines import make_engine
from agentic_gcpo.evaluate import eval_metrics
from agentic_gcpo.ledger import Trajectory
from agentic_gcpo.metrics import MetricsLogger, Timer, rollout_metrics
from agentic_gcpo.models import load_named
from agentic_gcpo.precision import cpu_description
from agentic_gcpo.precision import resolve as resolve_precision
from agentic_gcpo.rollout.agent_loop import AgentLoop, LoopLimits
from agentic_gcpo.rollout.chat import ChatFormat
from agentic_gcpo.rollout.golden import GoldenSource
from agentic_gcpo.rollout.golden_teacher import teacher_from_config
from agentic_gcpo.sandbox import make_sandbox
from agentic_gcpo.tool_registry import get_tools
from agentic_gcpo.train.policy import pack, token_logprobs
from agentic_gcpo.train.reward import resolve_buffer, score


def make_run_dir(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.run.output_dir) / f"{cfg.run.name}-{stamp}"
    d, k = base, 1
    while d.exists():
        d, k = Path(f"{base}-{k}"), k + 1
    (d / "checkpoints").mkdir(parents=True)
    return d


def resolve_data_path(path: str) -> Path:
    """'builtin:NAME' -> the shipped asset; relative paths resolve against the CWD, then the repo root."""
    if path.startswith("builtin:"):
        return Path(__file__).resolve().parents[1] / "assets" / f"{path.split(':', 1)[1]}.jsonl"
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    repo = Path(__file__).resolve().parents[2]
    return repo / p if (repo / p).exists() else p


def pick_member(group: list[Trajectory], rule: str) -> int:
    if rule == "first":
        return 0
    if rule == "longest":
        return max(range(len(group)), key=lambda i: len(group[i].token_ids))
    return len(group) - 1


# What a step without a gradient logs, so every row has the same keys: the policy did not move
# (ratio 1, KL 0); the sampler/trainer logprob gap was not measured (NaN -> null in the JSONL).
NO_UPDATE: dict[str, float] = {
    "loss/policy": 0.0,
    "loss/grad_norm": 0.0,
    "loss/clip_frac": 0.0,
    "loss/ratio_mean": 1.0,
    "loss/approx_kl": 0.0,
    "loss/active_seqs": 0.0,
    "adv/abs_mean": 0.0,
    "loss/skipped": 1.0,
    "rollout/logprob_abs_diff": math.nan,
}


@dataclass
class StepResult:
    metrics: dict[str, float]
    trajectories: list[Trajectory] = field(default_factory=list)


class Trainer:
    def __init__(
        self, cfg: Config, run_dir: Path | None = None, model: Any = None, tokenizer: Any = None
    ) -> None:
        self.cfg = cfg
        torch.manual_seed(cfg.run.seed)
        random.seed(cfg.run.seed)
        self.run_dir = run_dir or make_run_dir(cfg)
        save_config(cfg, self.run_dir / "config.yaml")
        self.algo = get_algorithm(cfg.algorithm.name)
        self.problems = load_problems(
            resolve_data_path(cfg.data.path), cfg.data.limit, cfg.data.format, cfg.data.fields
        )
        self.eval_problems = (
            load_problems(resolve_data_path(cfg.eval.path), cfg.eval.limit, cfg.eval.format, cfg.eval.fields)
            if cfg.eval.path and cfg.eval.every
            else []
        )
        if model is None:
            model, tokenizer = load_named(cfg.model.path)
        self.model, self.tok = model, tokenizer
        if cfg.model.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.tools = get_tools(
            cfg.tools.names,
            cfg.tools.modules,
            timeout_s=cfg.tools.timeout_s,
            max_output_chars=cfg.tools.max_output_chars,
        )
        self.sandbox = make_sandbox(cfg.sandbox)
        self.chat = ChatFormat(
            tokenizer, self.tools, cfg.prompt.call_format, cfg.prompt.system, cfg.prompt.fewshot
        )
        self.engine = make_engine(
            cfg.engine.backend,
            model,
            tokenizer,
            dtype=cfg.engine.dtype,
            max_batch_size=cfg.engine.max_batch_size,
            prefix_cache_mb=cfg.engine.prefix_cache_mb,
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
            LoopLimits(
                r.max_turns,
                r.max_new_tokens_per_turn,
                r.max_total_tokens,
                r.temperature,
                r.top_p,
                r.tool_threads,
            ),
        )
        self.golden = GoldenSource(
            self.chat,
            self.tools,
            self.sandbox,
            style=cfg.golden.style,
            teacher=teacher_from_config(cfg, self.tools, self.sandbox) if self.algo.injects_golden else None,
        )
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.logger = MetricsLogger(
            self.run_dir,
            cfg.log.tensorboard,
            cfg.log.wandb,
            cfg.log.wandb_project,
            cfg.model_dump(mode="json"),
        )
        self.batches = batches(self.problems, cfg.train.prompts_per_step, cfg.run.seed, cfg.data.shuffle)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._next_gid = 0  # group ids stay unique across steps and sampling rounds
        self.overlong_buffer = resolve_buffer(cfg.reward.overlong_buffer, self.algo.overlong_buffer)

    # --- one step ----------------------------------------------------------------------------
    def inject(
        self, trajs: list[Trajectory], problems: list[Problem], first_gid: int
    ) -> tuple[int, int, int]:
        """GCPO: a verified golden replaces one member of each group in which every rollout failed.

        Returns (injected, all-fail groups, goldens refused by the verifier)."""
        cfg = self.cfg
        G = cfg.rollout.group_size
        injected = candidates = 0
        failures_before = self.golden.stats.verify_failures
        if self.algo.injects_golden and cfg.golden.enabled:
            all_fail = [
                gi for gi in range(len(problems)) if not any(t.correct for t in trajs[gi * G : (gi + 1) * G])
            ]
            candidates = len(all_fail)
            self.golden.prefetch([problems[gi] for gi in all_fail])  # a teacher solves them in one run
            for gi in all_fail:
                g = self.golden.get(problems[gi], first_gid + gi)
                if g is None:
                    continue
                group = trajs[gi * G : (gi + 1) * G]
                trajs[gi * G + pick_member(group, cfg.golden.replace)] = g
                injected += 1
        return injected, candidates, self.golden.stats.verify_failures - failures_before

    def sample(self, step: int, timer: Timer) -> tuple[list[Trajectory], dict[str, float]]:
        """Rollouts for one update: one round of prompts, more while the algorithm asks (DAPO, GPG)."""
        cfg, algo = self.cfg, self.algo
        G, target = cfg.rollout.group_size, cfg.train.prompts_per_step
        batch: list[Trajectory] = []
        own: list[Trajectory] = []  # the policy's rollouts, before injection or filtering
        n_problems = injected = candidates = refused = dropped = rounds = 0
        penalties: list[float] = []
        while True:
            problems = next(self.batches)
            first_gid, self._next_gid = self._next_gid, self._next_gid + len(problems)
            with timer("rollout"):
                seed = (cfg.run.seed * 100003 + step) * 101 + rounds
                new = self.loop.run(problems, G, seed=seed, first_group_id=first_gid)
            with timer("verify"):
                penalties += score(
                    new,
                    turn_max=cfg.rollout.max_new_tokens_per_turn,
                    max_turns=cfg.rollout.max_turns,
                    buffer=self.overlong_buffer,
                    factor=cfg.reward.overlong_penalty,
                )
            own += new
            with timer("golden"):
                i, c, r = self.inject(new, problems, first_gid)
            n_problems, injected, candidates, refused = (
                n_problems + len(problems),
                injected + i,
                candidates + c,
                refused + r,
            )
            if algo.drop_degenerate_groups:  # on correctness, as verl's DAPO recipe filters on acc
                groups = [new[k : k + G] for k in range(0, len(new), G)]
                kept = [g for g in groups if len({t.correct for t in g}) > 1]
                dropped += len(groups) - len(kept)
                new = [t for g in kept for t in g]
            batch += new
            rounds += 1
            if algo.needs_more is None or rounds >= cfg.train.max_sampling_rounds:
                break
            correct = torch.tensor([float(t.correct) for t in batch], dtype=torch.float32)
            gids = torch.tensor([t.group_id for t in batch], dtype=torch.long)
            if not algo.needs_more(correct, gids, cfg.algorithm, target):
                break
        if algo.drop_degenerate_groups:
            batch = batch[: target * G]  # a full batch of informative groups, as DAPO trims
        metrics = rollout_metrics(own)
        metrics.update(
            {
                "gcpo/injected_frac": injected / max(1, n_problems),
                "gcpo/injected": float(injected),
                "gcpo/all_fail_groups": float(candidates),
                "gcpo/golden_verify_failures": float(refused),
                "sampling/rounds": float(rounds),
                "sampling/dropped_groups": float(dropped),
                "sampling/train_seqs": float(len(batch)),
                "reward/overlong_penalty_mean": sum(penalties) / max(1, len(penalties)),
                "reward/overlong_frac": sum(p < 0 for p in penalties) / max(1, len(penalties)),
            }
        )
        if self.golden.teacher is not None:
            ts = self.golden.teacher.stats  # cumulative over the run
            metrics["gcpo/teacher_solved_frac"] = ts.solved / max(1, ts.problems)
            metrics["gcpo/teacher_samples"] = float(ts.samples)
        return batch, metrics

    def step(self, step: int) -> StepResult:
        timer = Timer()
        trajs, metrics = self.sample(step, timer)
        for t in trajs:
            t.check()
        with timer("train"):
            metrics.update(self.update(trajs) if trajs else NO_UPDATE)
        with timer("sync"):
            self.engine.update_weights(None)
        metrics.update(timer.times)
        metrics["time/step_s"] = sum(timer.times.values())
        return StepResult(metrics, trajs)

    def update(self, trajs: list[Trajectory]) -> dict[str, float]:
        cfg = self.cfg
        rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float32)
        gids = torch.tensor([t.group_id for t in trajs], dtype=torch.long)
        golden = torch.tensor([t.is_golden for t in trajs], dtype=torch.bool)
        adv = self.algo.advantages(rewards, gids, golden, cfg.algorithm)  # [N]
        num_seqs = len(trajs)
        num_tokens = float(sum(t.num_policy_tokens for t in trajs))
        active = [i for i in range(num_seqs) if adv[i].item() != 0.0 and trajs[i].num_policy_tokens > 0]
        out: dict[str, float] = {
            "loss/active_seqs": float(len(active)),
            "adv/abs_mean": float(adv.abs().mean()),
        }
        if not active:
            return {**NO_UPDATE, **out}
        self.model.train()
        active.sort(key=lambda i: len(trajs[i].token_ids))
        total, sums, weights = 0.0, {}, 0
        diffs, n_diff = 0.0, 0
        mb = cfg.train.micro_batch_size
        for k in range(0, len(active), mb):
            idx = active[k : k + mb]
            b = pack([trajs[i] for i in idx], self.pad_id)
            logp = token_logprobs(
                self.model,
                b.input_ids,
                b.attention_mask,
                self.precision.bf16,
                only=b.loss_mask,
                temperature=cfg.rollout.temperature,
            )  # [n, T-1], 0 where loss_mask is 0
            old = logp.detach()  # one update per batch: the pre-update policy is the current one
            per_tok, m = self.algo.policy_loss(logp, old, adv[idx], b.loss_mask, cfg.algorithm)
            loss = aggregate(
                per_tok,
                b.loss_mask,
                self.algo.aggregation,
                num_seqs=num_seqs,
                num_tokens=num_tokens,
                norm_len=cfg.algorithm.dr_grpo_norm_len,
            )
            loss.backward()
            total += float(loss.detach())
            for key, v in m.items():
                sums[key] = sums.get(key, 0.0) + float(v) * len(idx)
            weights += len(idx)
            sampled = b.loss_mask.bool() & ~torch.isnan(b.sampler_logprobs)
            if sampled.any():
                diffs += float((logp.detach() - b.sampler_logprobs)[sampled].abs().sum())
                n_diff += int(sampled.sum())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        if math.isfinite(float(grad_norm)):
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        out.update({f"loss/{k}": v / weights for k, v in sums.items()})
        out.update({"loss/policy": total, "loss/grad_norm": float(grad_norm), "loss/skipped": 0.0})
        out["rollout/logprob_abs_diff"] = diffs / n_diff if n_diff else 0.0
        return out

    def evaluate(self) -> dict[str, float]:
        """Held-out accuracy and tool use of the current policy (same engine, tools and sandbox)."""
        if not self.eval_problems:
            return {}
        e, r = self.cfg.eval, self.cfg.rollout
        limits = LoopLimits(
            r.max_turns, r.max_new_tokens_per_turn, r.max_total_tokens, e.temperature, 1.0, r.tool_threads
        )
        return eval_metrics(
            self.engine, self.chat, self.tools, self.sandbox, self.eval_problems, limits, k=e.k, seed=0
        )

    # --- the run -----------------------------------------------------------------------------
    def save(self, name: str) -> Path:
        d = self.run_dir / "checkpoints" / name
        self.model.save_pretrained(d, safe_serialization=True)
        self.tok.save_pretrained(d)
        return d

    def train(self) -> Path:
        cfg = self.cfg
        steps = range(cfg.train.steps)
        bar = None
        if cfg.log.progress:
            from tqdm import tqdm

            bar = tqdm(steps, desc="train", unit="step", dynamic_ncols=True)
        try:
            if cfg.eval.every:  # the starting point; eval rows share metrics.jsonl, keys eval/*
                self.logger.log(0, self.evaluate())
            for step in steps:
                res = self.step(step)
                self.logger.log(step + 1, res.metrics)  # `step` in metrics.jsonl = updates done
                if cfg.eval.every and ((step + 1) % cfg.eval.every == 0 or step + 1 == cfg.train.steps):
                    ev = self.evaluate()
                    self.logger.log(step + 1, ev)
                    res.metrics.update(ev)
                if cfg.train.samples_per_step:
                    self.logger.samples(
                        step + 1,
                        res.trajectories[: cfg.train.samples_per_step]
                        + [t for t in res.trajectories if t.is_golden][:1],
                        self.tok,
                    )
                if cfg.train.checkpoint_every and (step + 1) % cfg.train.checkpoint_every == 0:
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
                else:
                    print(f"step {step + 1}/{cfg.train.steps} | {summary}", flush=True)
            if cfg.train.save_final:
                self.save("final")
        finally:
            if bar is not None:
                bar.close()
            self.close()
        (self.run_dir / "summary.json").write_text(
            json.dumps({"run_dir": str(self.run_dir), "steps": cfg.train.steps})
        )
        return self.run_dir

    def close(self) -> None:
        self.loop.close()
        if self.golden.teacher is not None:
            self.golden.teacher.close()
        self.sandbox.close()
        self.logger.close()
