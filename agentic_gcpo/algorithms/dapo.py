"""DAPO: Decoupled Clip and Dynamic sAmpling Policy Optimization (Yu et al., arXiv 2503.14476).

Differs from GRPO in the loss: clip-higher (asymmetric clip, 1 - 0.2 .. 1 + 0.28, leaving room for
low-probability tokens to grow) and token-mean aggregation over the whole batch, so long responses
weigh by their token count; no KL. The advantage is GRPO's. DAPO's other two pieces are not loss
functions and live elsewhere: dynamic sampling (drop groups whose rewards are all equal and sample
more; see ``base.group_stats(...).identical``) belongs to the trainer, and overlong reward shaping
to the reward function. The rule reward is the paper's +-1 (``Algorithm.reward_wrong = -1``): correct
+1, wrong -1, plus the overlong penalty. Group normalisation makes the scale irrelevant to the
advantage of unshaped rewards; it matters for how much the penalty weighs against correctness.
"""

from __future__ import annotations

import torch
from torch import Tensor

from agentic_gcpo.algorithms.base import (
    Algorithm,
    AlgorithmConfig,
    check_group_inputs,
    group_baseline_advantages,
    group_stats,
    reject_golden,
    reject_sequence_switches,
    resolve_clip,
)
from agentic_gcpo.algorithms.grpo import token_clip_loss


def dapo_advantages(rewards: Tensor, group_ids: Tensor, is_golden: Tensor, cfg: AlgorithmConfig) -> Tensor:
    check_group_inputs(rewards, group_ids, is_golden)
    reject_golden(is_golden, "dapo")
    return group_baseline_advantages(rewards, group_ids, scale_by_std=True, eps=cfg.adv_eps)


def dapo_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, loss_mask: Tensor, cfg: AlgorithmConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    reject_sequence_switches(cfg, "dapo")
    low, high = resolve_clip(cfg, 0.2, 0.28)
    return token_clip_loss(logp, old_logp, advantages, loss_mask, low, high)


def dapo_needs_more(rewards: Tensor, group_ids: Tensor, cfg: AlgorithmConfig, target_groups: int) -> bool:
    """Dynamic sampling: keep sampling until the batch holds `target_groups` informative groups."""
    if rewards.numel() == 0:
        return True
    mixed = ~group_stats(rewards, group_ids).identical  # [N]
    return int(torch.unique(group_ids[mixed]).numel()) < target_groups


ALGORITHM = Algorithm(
    name="dapo",
    paper="arXiv 2503.14476",
    summary=(
        "GRPO advantage and per-token ratio, but clip-higher (0.2 low / 0.28 high) and token-mean "
        "aggregation over the batch; dynamic sampling and overlong shaping are done by the trainer/reward."
    ),
    advantages=dapo_advantages,
    policy_loss=dapo_policy_loss,
    aggregation="token-mean",
    injects_golden=False,
    drop_degenerate_groups=True,
    needs_more=dapo_needs_more,
    # The recipe ramps over 4096 of 20480 tokens (0.2); our budgets are small, so a quarter.
    overlong_buffer=0.25,
    # The paper's rule reward: +1 equivalent, -1 otherwise (the overlong penalty is added to it).
    reward_wrong=-1.0,
)
