"""GSPO: Group Sequence Policy Optimization (Zheng et al., Qwen, arXiv 2507.18071).

Differs from GRPO in the importance ratio: one ratio per response, the geometric mean of its token
ratios, s_i = exp((1/L_i) sum_t m_it (logp_it - old_logp_it)), with L_i counting policy tokens only
(tool output and template tokens neither contribute nor count). The clip is correspondingly tight
(3e-4 / 4e-4) and the loss is -min(s_i A_i, clip(s_i) A_i) averaged over sequences. Same
std-normalised group advantage as GRPO, no KL, no golden injection.

This module also holds the sequence-ratio loss that GCPO uses.
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
    reject_golden,
    resolve_clip,
)
from agentic_gcpo.algorithms.grpo import TOKEN_CLIP, token_clip_loss

SEQ_CLIP_LOW = 3e-4
SEQ_CLIP_HIGH = 4e-4


def sequence_clip_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    clip_low: float,
    clip_high: float,
    *,
    length_normalize: bool = True,
    max_log_ratio: float = 10.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped loss on the sequence ratio, spread over tokens so gradients flow through token logprobs.

    Every policy token of sequence i carries the value log s_i (detached) plus k*(logp_it - sg(logp_it)),
    which is 0 in value but has gradient k. With k = 1 for the length-normalised ratio and k = L_i for
    the plain sum, the seq-mean-token-mean aggregate of these per-token losses has exactly the value and
    gradient of mean_i -min(s_i A_i, clip(s_i) A_i). It must be aggregated that way (gcpo/gspo are).
    """
    check_loss_inputs(logp, old_logp, advantages, loss_mask)
    keep = loss_mask > 0  # [N,T]
    zeros = torch.zeros_like(logp)
    lengths = keep.to(logp.dtype).sum(-1)  # [N] policy tokens per sequence
    safe_len = lengths.clamp(min=1.0)  # [N]; an all-masked sequence has loss 0 anyway
    # Junk logprobs on masked tokens must not reach exp() or the backward pass.
    delta = torch.where(keep, logp - old_logp.detach(), zeros)  # [N,T]
    log_s = delta.detach().sum(-1)  # [N]
    if length_normalize:
        log_s = log_s / safe_len
        grad_scale = torch.ones_like(safe_len)  # [N]
    else:
        grad_scale = safe_len  # [N]: d(sum_t logp_t) reaches each token with weight 1, not 1/L
    lp = torch.where(keep, logp, zeros)  # [N,T]
    tok_log_s = log_s.unsqueeze(-1) + grad_scale.unsqueeze(-1) * (lp - lp.detach())  # [N,T], value log s_i
    # Clamping the value (not only the detached part) also zeroes the gradient beyond the clamp, which
    # is what d/dx exp(min(x, c)) does; it guards the unnormalised sum against overflow.
    s_tok = torch.exp(tok_log_s.clamp(max=max_log_ratio))  # [N,T]
    adv = advantages.detach().to(logp.dtype).unsqueeze(-1)  # [N,1]
    loss = torch.maximum(-adv * s_tok, -adv * s_tok.clamp(1.0 - clip_low, 1.0 + clip_high))  # [N,T]
    loss = torch.where(keep, loss, zeros)

    s = torch.exp(log_s.clamp(max=max_log_ratio))  # [N] sequence ratios, for metrics
    a = advantages.detach()
    has_tokens = (lengths > 0).float()  # [N]; sequences without policy tokens are not counted
    clipped = (((a > 0) & (s > 1.0 + clip_high)) | ((a < 0) & (s < 1.0 - clip_low))).float()  # [N]
    n_seq = has_tokens.sum().clamp(min=1.0)
    metrics = {
        "clip_frac": ((clipped * has_tokens).sum() / n_seq).detach(),
        "ratio_mean": ((s * has_tokens).sum() / n_seq).detach(),
        "approx_kl": approx_kl(delta, loss_mask),
    }
    return loss, metrics


def sequence_family_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, loss_mask: Tensor, cfg: AlgorithmConfig, name: str
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO/GCPO loss honouring the ablation switches ratio_level and length_normalize.

    Each ratio keeps the clip made for it unless cfg sets one: GSPO's 3e-4 / 4e-4 for the length-normalised
    sequence ratio, PPO's 0.2 per token for the token ablation. A single token's ratio moves by far more
    than 4e-4 in one optimizer step, so GSPO's clip on a per-token ratio would clip nearly every token of
    any second epoch and the ablation would compare clips rather than ratios.
    """
    if (cfg.ratio_level or "sequence") == "token":
        if not cfg.length_normalize:
            raise ValueError(f"{name}: length_normalize=False needs ratio_level='sequence'")
        low, high = resolve_clip(cfg, TOKEN_CLIP, TOKEN_CLIP)
        return token_clip_loss(logp, old_logp, advantages, loss_mask, low, high)
    low, high = resolve_clip(cfg, SEQ_CLIP_LOW, SEQ_CLIP_HIGH)
    return sequence_clip_loss(
        logp,
        old_logp,
        advantages,
        loss_mask,
        low,
        high,
        length_normalize=cfg.length_normalize,
        max_log_ratio=cfg.max_log_ratio,
    )


def gspo_advantages(rewards: Tensor, group_ids: Tensor, is_golden: Tensor, cfg: AlgorithmConfig) -> Tensor:
    check_group_inputs(rewards, group_ids, is_golden)
    reject_golden(is_golden, "gspo")
    return group_baseline_advantages(rewards, group_ids, scale_by_std=True, eps=cfg.adv_eps)


def gspo_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, loss_mask: Tensor, cfg: AlgorithmConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    return sequence_family_loss(logp, old_logp, advantages, loss_mask, cfg, "gspo")


ALGORITHM = Algorithm(
    name="gspo",
    paper="arXiv 2507.18071",
    summary=(
        "GRPO advantage, but one length-normalised importance ratio per sequence (policy tokens only), "
        "clipped at 3e-4/4e-4; loss -min(sA, clip(s)A) averaged over sequences. No KL, no injection."
    ),
    advantages=gspo_advantages,
    policy_loss=gspo_policy_loss,
    aggregation="seq-mean-token-mean",
    injects_golden=False,
)
