"""One update's rollouts: prompts, the agent loop, verification, golden injection, dynamic sampling.

Functions of the Trainer (`tr`), which holds the state they advance between steps (the data
stream, group ids, the golden source) and that train/state.py saves in checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch

from agentic_gcpo.data import Problem
from agentic_gcpo.ledger import Trajectory
from agentic_gcpo.metrics import Timer, rollout_metrics
from agentic_gcpo.train.reward import score


def pick_member(group: list[Trajectory], rule: str) -> int:
    if rule == "first":
        return 0
    if rule == "longest":
        return max(range(len(group)), key=lambda i: len(group[i].token_ids))
    return len(group) - 1


def inject(tr: Any, trajs: list[Trajectory], problems: list[Problem], first_gid: int) -> dict[str, int]:
    """GCPO: a verified golden replaces one member of each group in which every rollout failed.

    Returns counts named as their gcpo/* metrics: injected, all_fail_groups, and the goldens built
    in this call that were refused by the verifier, refused for a failed tool call, or longer than
    the rollout limits (GoldenStats.refusals)."""
    cfg = tr.cfg
    G = cfg.rollout.group_size
    injected = candidates = 0
    before = tr.golden.stats.refusals()
    if tr.algo.injects_golden and cfg.golden.enabled:
        all_fail = [
            gi for gi in range(len(problems)) if not any(t.correct for t in trajs[gi * G : (gi + 1) * G])
        ]
        candidates = len(all_fail)
        tr.golden.prefetch([problems[gi] for gi in all_fail])  # a teacher solves them in one run
        for gi in all_fail:
            g = tr.golden.get(problems[gi], first_gid + gi)
            if g is None:
                continue
            group = trajs[gi * G : (gi + 1) * G]
            trajs[gi * G + pick_member(group, cfg.golden.replace)] = g
            injected += 1
    after = tr.golden.stats.refusals()
    return {"injected": injected, "all_fail_groups": candidates} | {k: after[k] - before[k] for k in after}


def sample(tr: Any, step: int, timer: Timer) -> tuple[list[Trajectory], dict[str, float]]:
    """Rollouts for one update: one round of prompts, more while the algorithm asks (DAPO, GPG)."""
    cfg, algo = tr.cfg, tr.algo
    G, target = cfg.rollout.group_size, tr.local_prompts  # this rank's share of the problems
    batch: list[Trajectory] = []
    own: list[Trajectory] = []  # the policy's rollouts, before injection or filtering
    n_problems = rounds = 0
    counts: dict[str, int] = {}  # inject()'s counts, summed over the rounds
    informative: list[list[Trajectory]] = []  # groups with mixed correctness, every round
    last_degenerate: list[list[Trajectory]] = []  # all-equal groups of the latest round
    penalties: list[float] = []
    while True:
        problems = tr.dist.shard(next(tr.batches))  # every rank reads the same global batch
        first_gid = tr._next_gid + tr.dist.rank * len(problems)  # the ids one process gives
        tr._next_gid += tr.dist.world * len(problems)
        with timer("rollout"):
            seed = tr.dist.sampling_seed((cfg.run.seed * 100003 + step) * 101 + rounds)
            new = tr.loop.run(problems, G, seed=seed, first_group_id=first_gid)
        with timer("verify"):
            penalties += score(
                new,
                turn_max=cfg.rollout.max_new_tokens_per_turn,
                max_turns=cfg.rollout.max_turns,
                buffer=tr.overlong_buffer,
                factor=cfg.reward.overlong_penalty,
                reward_wrong=algo.reward_wrong,
            )
        own += new
        with timer("golden"):
            for k, v in tr.inject(new, problems, first_gid).items():
                counts[k] = counts.get(k, 0) + v
        n_problems += len(problems)
        # Informative = mixed correctness (after injection), as verl's DAPO recipe filters on acc.
        groups = [new[k : k + G] for k in range(0, len(new), G)]
        informative += [g for g in groups if len({t.correct for t in g}) > 1]
        last_degenerate = [g for g in groups if len({t.correct for t in g}) == 1]
        if algo.drop_degenerate_groups:
            new = [t for g in groups if len({t.correct for t in g}) > 1 for t in g]
        batch += new
        rounds += 1
        if algo.needs_more is None or rounds >= cfg.train.max_sampling_rounds:
            break
        correct = torch.tensor([float(t.correct) for t in batch], dtype=torch.float32)
        gids = torch.tensor([t.group_id for t in batch], dtype=torch.long)
        if not tr.dist.any(algo.needs_more(correct, gids, cfg.algorithm, target)):
            break  # every rank reads the same number of batches: another round if any rank asks
    if algo.drop_degenerate_groups:
        batch = batch[: target * G]  # a full batch of informative groups, as DAPO trims
    elif algo.rebuild_batch and rounds > 1:
        # GPG's beta_th loop: a batch of the original size, informative groups first, filled up
        # with degenerate groups of the last round. Its AGE alpha is then 1/min(1, valid/total).
        keep = informative[:target]
        keep += last_degenerate[: target - len(keep)]
        batch = [t for g in keep for t in g]
    dropped = n_problems - len(batch) // G  # groups generated but not trained on
    n_batch = len(batch)
    if tr.dist.active:  # the whole step's rollouts and counts, as one process would log them
        parts = tr.dist.gather((own, penalties, n_problems, counts))
        own, penalties = [t for p in parts for t in p[0]], [x for p in parts for x in p[1]]
        n_problems = sum(p[2] for p in parts)
        counts = {k: sum(p[3][k] for p in parts) for k in counts}
        dropped, n_batch = (int(x) for x in tr.dist.sum([dropped, n_batch]))
    metrics = rollout_metrics(own)
    metrics.update(
        {
            "gcpo/injected_frac": counts["injected"] / max(1, n_problems),
            **{f"gcpo/{k}": float(v) for k, v in counts.items()},
            "sampling/rounds": float(rounds),
            "sampling/dropped_groups": float(dropped),
            "sampling/train_seqs": float(n_batch),
            "reward/overlong_penalty_mean": sum(penalties) / max(1, len(penalties)),
            "reward/overlong_frac": sum(p < 0 for p in penalties) / max(1, len(penalties)),
        }
    )
    if tr.golden.teacher is not None:
        ts = tr.golden.teacher.stats  # cumulative over the run
        metrics["gcpo/teacher_solved_frac"] = ts.solved / max(1, ts.problems)
        metrics["gcpo/teacher_samples"] = float(ts.samples)
    return batch, metrics
