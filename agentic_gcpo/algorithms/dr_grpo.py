"""Dr.GRPO: "GRPO done right" (Liu et al., Understanding R1-Zero-Like Training, arXiv 2503.20783).

Differs from GRPO by removing its two normalisations, which the paper shows bias optimisation:
the advantage is r - group mean (no division by the std, so easy/hard prompts are not reweighted),
and token losses are summed per sequence and divided by a constant (batch sequences x max generation
length, cfg.dr_grpo_norm_len) instead of each response's own length, so long wrong answers are not
penalised less per token. Per-token PPO ratio with the usual 0.2 clip; no KL.
"""

from __future__ import annotations

from torch import Tensor

from agentic_gcpo.algorithms.base import (
    Algorithm,
    AlgorithmConfig,
    check_group_inputs,
    group_baseline_advantages,
    reject_golden,
    reject_sequence_switches,
    resolve_clip,
)
from agentic_gcpo.algorithms.grpo import TOKEN_CLIP, token_clip_loss


def dr_grpo_advantages(rewards: Tensor, group_ids: Tensor, is_golden: Tensor, cfg: AlgorithmConfig) -> Tensor:
    check_group_inputs(rewards, group_ids, is_golden)
    reject_golden(is_golden, "dr_grpo")
    return group_baseline_advantages(rewards, group_ids, scale_by_std=False, eps=cfg.adv_eps)


def dr_grpo_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, loss_mask: Tensor, cfg: AlgorithmConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    reject_sequence_switches(cfg, "dr_grpo")
    low, high = resolve_clip(cfg, TOKEN_CLIP, TOKEN_CLIP)
    return token_clip_loss(logp, old_logp, advantages, loss_mask, low, high)


ALGORITHM = Algorithm(
    name="dr_grpo",
    paper="arXiv 2503.20783",
    summary=(
        "GRPO without its normalisations: advantage r - mean (no std), token losses summed and divided "
        "by the constant num_seqs * dr_grpo_norm_len instead of each length; token ratio, clip 0.2."
    ),
    advantages=dr_grpo_advantages,
    policy_loss=dr_grpo_policy_loss,
    aggregation="seq-mean-token-sum-norm",
    injects_golden=False,
)
