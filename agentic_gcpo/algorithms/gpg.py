"""GPG: Group Policy Gradient (Chu et al., arXiv 2504.02546).

Differs from GRPO by dropping the surrogate entirely: the loss is plain REINFORCE, -A * logp per policy
token, token-mean over the batch, with no importance ratio, no clip, no old policy and no KL
(old_logp is only read for monitoring metrics). The advantage is r - group mean, without std
scaling. Accurate Gradient Estimation (AGE, cfg.gpg_use_age): groups whose rewards are all equal
add no gradient but still count in the token-mean denominator, so advantages are multiplied by
alpha = B / (B - M), with B the samples in the batch and M the samples in such groups (the paper's
rule; verl's port counts non-zero rewards instead and would give 8/3 on TV4, not 2). When the whole
batch is degenerate (M == B) there is nothing to learn from: all advantages are 0, not inf.

The threshold beta_th is a sampling rule, not a loss (paper section 3.3, official code's
`min_inverse_alpha` loop): the trainer keeps generating rounds of groups while fewer than
beta_th x (groups per batch) informative groups have been collected (``gpg_needs_resample``), then
rebuilds a batch of the original size, informative groups first, filled up with degenerate groups
of the last round. On that batch alpha = B / (B - M) is exactly 1 / min(1, valid / total), the
paper's scaling, so AGE needs no extra term for the resampled case.
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
    group_stats,
    reject_golden,
)


def informative_counts(rewards: Tensor, group_ids: Tensor) -> tuple[int, int]:
    """(B, B - M): all samples, and samples whose group does not have identical rewards."""
    check_group_inputs(rewards, group_ids)
    total = int(rewards.numel())
    degenerate = int(group_stats(rewards, group_ids).identical.sum()) if total else 0
    return total, total - degenerate


def gpg_alpha(rewards: Tensor, group_ids: Tensor) -> float:
    """AGE factor B / (B - M); 0.0 when every group is degenerate (advantages are all zero then anyway)."""
    total, valid = informative_counts(rewards, group_ids)
    return total / valid if valid else 0.0


def gpg_needs_resample(rewards: Tensor, group_ids: Tensor, beta_th: float, target_groups: int) -> bool:
    """True while the informative groups collected so far are strictly fewer than beta_th x target_groups.

    `rewards`/`group_ids` cover every round generated for this update; `target_groups` is the
    batch's size in groups. Counting groups against the batch size (not the informative share of the
    growing pool) is the paper's rule: a steady informative rate below beta_th still stops once
    enough informative groups have accumulated. Strictly below, as in the official code: exactly
    half with beta_th = 0.5 is enough. An empty pool always asks for more.
    """
    if rewards.numel() == 0:
        return True
    check_group_inputs(rewards, group_ids)
    mixed = ~group_stats(rewards, group_ids).identical  # [N]
    valid_groups = int(torch.unique(group_ids[mixed]).numel())
    return valid_groups < beta_th * target_groups


def gpg_advantages(rewards: Tensor, group_ids: Tensor, is_golden: Tensor, cfg: AlgorithmConfig) -> Tensor:
    check_group_inputs(rewards, group_ids, is_golden)
    reject_golden(is_golden, "gpg")
    adv = group_baseline_advantages(rewards, group_ids, scale_by_std=False, eps=cfg.adv_eps)  # [N]
    if cfg.gpg_use_age:
        # Folding alpha into A is the same as dividing the loss by the informative fraction, since the
        # loss is linear in A; degenerate members are exactly 0 either way.
        adv = adv * gpg_alpha(rewards, group_ids)
    return adv


def gpg_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, loss_mask: Tensor, cfg: AlgorithmConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    check_loss_inputs(logp, old_logp, advantages, loss_mask)
    if cfg.ratio_level is not None or not cfg.length_normalize:
        raise ValueError(
            f"gpg has no importance ratio: got ratio_level={cfg.ratio_level!r}, "
            f"length_normalize={cfg.length_normalize}; leave them at None / True"
        )
    keep = loss_mask > 0  # [N,T]
    zeros = torch.zeros_like(logp)
    lp = torch.where(keep, logp, zeros)  # [N,T]; junk logprobs on masked tokens never enter the graph
    adv = advantages.detach().to(logp.dtype).unsqueeze(-1)  # [N,1]
    loss = torch.where(keep, -adv * lp, zeros)  # [N,T]
    delta = torch.where(keep, logp.detach() - old_logp.detach(), zeros)  # [N,T] monitoring only
    m = keep.float()
    n_tok = m.sum().clamp(min=1.0)
    metrics = {
        "clip_frac": torch.zeros((), device=logp.device),  # nothing is ever clipped
        "ratio_mean": ((torch.exp(delta.float()) * m).sum() / n_tok).detach(),
        "approx_kl": approx_kl(delta, loss_mask),
    }
    return loss, metrics


ALGORITHM = Algorithm(
    name="gpg",
    paper="arXiv 2504.02546",
    summary=(
        "Plain policy gradient: loss -A*logp, token-mean, no ratio/clip/KL; A = r - group mean scaled by "
        "AGE alpha = B/(B-M); the trainer resamples until gpg_beta_th x batch groups are informative."
    ),
    advantages=gpg_advantages,
    policy_loss=gpg_policy_loss,
    aggregation="token-mean",
    injects_golden=False,
    needs_more=lambda rewards, group_ids, cfg, target_groups: gpg_needs_resample(
        rewards, group_ids, cfg.gpg_beta_th, target_groups
    ),
    rebuild_batch=True,
)
