"""GRPO: Group Relative Policy Optimization (Shao et al., DeepSeekMath, arXiv 2402.03300).

The baseline the others are measured against: advantage (r - group mean) / (unbiased group std + eps),
shared by every token of a response; per-token PPO ratio exp(logp - old_logp) with a symmetric clip
(0.2); each sequence's token losses are averaged, then sequences are averaged (seq-mean-token-mean).
The paper also adds a k3 KL penalty to a frozen reference model. This project keeps no reference
model, so there is no KL term here (as in GCPO, GSPO, DAPO, Dr.GRPO and GPG).

This module also holds the token-level clipped loss that DAPO, Dr.GRPO and GCPO's token ablation share.
"""

from __future__ import annotations

import torch
from torch import Tensor

from agentic_gcpo.algorithms.base import (
    Algorithm,
    AlgorithmConfig,
    approx_kl,
    check_group_inputs,
    check_loss_inputs,
    group_baseline_advantages,
    masked_mean,
    reject_golden,
    reject_sequence_switches,
    resolve_clip,
)

# exp() of a token log-ratio beyond this is meaningless for a clipped loss and could overflow; the
# clamp has zero gradient outside, which only matters for tokens whose clip is already active.
TOKEN_LOG_RATIO_LIMIT = 20.0
# PPO's symmetric per-token clip, as GRPO uses it; also the default of GCPO/GSPO's token-ratio ablation.
TOKEN_CLIP = 0.2


def token_clip_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, loss_mask: Tensor, clip_low: float, clip_high: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped loss per token: max(-A rho, -A clip(rho, 1-clip_low, 1+clip_high)), rho = exp(logp - old)."""
    check_loss_inputs(logp, old_logp, advantages, loss_mask)
    keep = loss_mask > 0  # [N,T]
    # Masked tokens (tool output, template, padding) may carry junk logprobs (verl pads 0.0). Zeroing
    # their log-ratio before exp keeps inf/NaN out of both the forward and the backward pass.
    delta = torch.where(keep, logp - old_logp.detach(), torch.zeros_like(logp))  # [N,T]
    ratio = torch.exp(delta.clamp(-TOKEN_LOG_RATIO_LIMIT, TOKEN_LOG_RATIO_LIMIT))  # [N,T]
    adv = advantages.detach().to(logp.dtype).unsqueeze(-1)  # [N,1], same for every token of a response
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high))  # [N,T]
    loss = torch.where(keep, loss, torch.zeros_like(loss))
    # The clip only bites (removes the gradient) when it is on the side the advantage pushes towards.
    clipped = ((adv > 0) & (ratio > 1.0 + clip_high)) | ((adv < 0) & (ratio < 1.0 - clip_low))  # [N,T]
    metrics = {
        "clip_frac": masked_mean(clipped.float(), loss_mask),
        "ratio_mean": masked_mean(ratio, loss_mask),
        "approx_kl": approx_kl(delta, loss_mask),
    }
    return loss, metrics


def grpo_advantages(rewards: Tensor, group_ids: Tensor, is_golden: Tensor, cfg: AlgorithmConfig) -> Tensor:
    check_group_inputs(rewards, group_ids, is_golden)
    reject_golden(is_golden, "grpo")
    return group_baseline_advantages(rewards, group_ids, scale_by_std=True, eps=cfg.adv_eps)


def grpo_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, loss_mask: Tensor, cfg: AlgorithmConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    reject_sequence_switches(cfg, "grpo")
    low, high = resolve_clip(cfg, TOKEN_CLIP, TOKEN_CLIP)
    return token_clip_loss(logp, old_logp, advantages, loss_mask, low, high)


ALGORITHM = Algorithm(
    name="grpo",
    paper="arXiv 2402.03300",
    summary=(
        "Reference baseline: std-normalised group advantage, per-token PPO ratio clipped at 0.2/0.2, "
        "seq-mean-token-mean aggregation. No KL term (this project has no reference model)."
    ),
    advantages=grpo_advantages,
    policy_loss=grpo_policy_loss,
    aggregation="seq-mean-token-mean",
    injects_golden=False,
)
