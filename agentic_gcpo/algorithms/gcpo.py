"""GCPO: Group Contrastive Policy Optimization (Wu & Liu, arXiv 2510.07790), as DESIGN.md section 4 defines it.

Differs from GRPO in two ways. (1) Golden injection: when every rollout of a prompt fails and a verified
golden trajectory exists, the trainer replaces one failed member with it *before* advantages are
computed, so an all-fail group (zero gradient under GRPO) becomes a contrast of one success against
G-1 failures (G=4: A_golden = 1.5, A_fail = -0.5). The advantage itself is GRPO's, over the
post-injection group; is_golden only marks the member. (2) A sequence-level, length-normalised ratio
over policy tokens with GSPO's clip (3e-4 / 4e-4); loss -min(s_i A_i, clip(s_i) A_i) averaged over
sequences. No KL term. Ablations: cfg.ratio_level="token" (per-token PPO ratio, with PPO's 0.2 clip) and
cfg.length_normalize=False (summed log-ratio, clamped at cfg.max_log_ratio).

The golden member's old logprobs come from a teacher-forced pass of the pre-update policy (trainer).
"""

from __future__ import annotations

import torch
from torch import Tensor

from agentic_gcpo.algorithms.base import (
    Algorithm,
    AlgorithmConfig,
    check_group_inputs,
    group_baseline_advantages,
)
from agentic_gcpo.algorithms.gspo import sequence_family_loss


def gcpo_advantages(rewards: Tensor, group_ids: Tensor, is_golden: Tensor, cfg: AlgorithmConfig) -> Tensor:
    check_group_inputs(rewards, group_ids, is_golden)
    golden = is_golden.to(torch.bool)
    if bool(golden.any()):
        # Injection replaces exactly one member; two goldens in a group means the trainer double-injected.
        _, inv = torch.unique(group_ids, return_inverse=True)
        per_group = torch.zeros(int(inv.max()) + 1, dtype=torch.long, device=inv.device)
        per_group.index_add_(0, inv, golden.long())
        if int(per_group.max()) > 1:
            raise ValueError(
                "gcpo: a group holds more than one golden trajectory; injection replaces one member"
            )
    return group_baseline_advantages(rewards, group_ids, scale_by_std=True, eps=cfg.adv_eps)


def gcpo_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, loss_mask: Tensor, cfg: AlgorithmConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    return sequence_family_loss(logp, old_logp, advantages, loss_mask, cfg, "gcpo")


ALGORITHM = Algorithm(
    name="gcpo",
    paper="arXiv 2510.07790",
    summary=(
        "GRPO advantage over groups where the trainer swapped a verified golden trajectory into all-fail "
        "groups; GSPO-style length-normalised sequence ratio (policy tokens only), clip 3e-4/4e-4, "
        "loss averaged over sequences, no KL."
    ),
    advantages=gcpo_advantages,
    policy_loss=gcpo_policy_loss,
    aggregation="seq-mean-token-mean",
    injects_golden=True,
)
