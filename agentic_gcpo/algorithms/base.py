"""Shared contract of the policy-gradient algorithms: config, record type, group statistics, aggregation.

Every algorithm is two pure tensor functions with the same signature for all of them, so the trainer
never special-cases one:

* ``advantages(rewards [N], group_ids [N], is_golden [N], cfg) -> advantages [N]``
* ``policy_loss(logp [N,T], old_logp [N,T], advantages [N], loss_mask [N,T], cfg)
  -> (per_token_loss [N,T], metrics)``

``aggregate`` then reduces per-token losses with denominators taken over the whole optimiser step,
so micro-batches can be summed without changing the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

AggregationMode = Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]
AGGREGATION_MODES: tuple[str, ...] = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")


class AlgorithmConfig(BaseModel):
    """Knobs of the advantage estimator and policy loss (one section of the run config)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("gcpo", description="Registered algorithm: gcpo, gpg, grpo, dapo, dr_grpo, gspo.")
    clip_low: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Lower clip epsilon (ratio >= 1 - clip_low); None = algorithm default "
        "(gcpo/gspo: 3e-4 on the sequence ratio, 0.2 with ratio_level='token').",
    )
    clip_high: float | None = Field(
        None,
        ge=0.0,
        description="Upper clip epsilon (ratio <= 1 + clip_high); None = algorithm default "
        "(gcpo/gspo: 4e-4 on the sequence ratio, 0.2 with ratio_level='token').",
    )
    adv_eps: float = Field(1e-6, gt=0.0, description="Added to the group std before dividing the advantage.")
    ratio_level: Literal["sequence", "token"] | None = Field(
        None, description="GCPO/GSPO ablation: importance ratio per sequence or per token; None = default."
    )
    length_normalize: bool = Field(
        True,
        description="GCPO/GSPO ablation: divide the sequence log-ratio by the number of policy tokens. "
        "False uses the plain sum, clamped at max_log_ratio.",
    )
    max_log_ratio: float = Field(
        10.0, gt=0.0, description="Upper clamp on a sequence log-ratio (overflow guard)."
    )
    gpg_beta_th: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="GPG: keep generating rounds of prompts (up to train.max_sampling_rounds) while fewer "
        "than gpg_beta_th x train.prompts_per_step groups with mixed correctness have been collected.",
    )
    gpg_use_age: bool = Field(True, description="GPG: scale advantages by alpha = B / (B - M) (AGE).")
    dr_grpo_norm_len: int = Field(
        1024, ge=1, description="Dr.GRPO constant loss normaliser (max generation length)."
    )

    @field_validator("name")
    @classmethod
    def _known_name(cls, value: str) -> str:
        # Imported lazily: the registry module imports this one.
        from agentic_gcpo.algorithms import REGISTRY

        if value not in REGISTRY:
            raise ValueError(f"unknown algorithm {value!r}; valid names: {', '.join(sorted(REGISTRY))}")
        return value


SamplingRule = Callable[[Tensor, Tensor, "AlgorithmConfig", int], bool]
AdvantageFn = Callable[[Tensor, Tensor, Tensor, AlgorithmConfig], Tensor]
PolicyLossFn = Callable[[Tensor, Tensor, Tensor, Tensor, AlgorithmConfig], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class Algorithm:
    name: str
    paper: str
    summary: str
    advantages: AdvantageFn
    policy_loss: PolicyLossFn
    aggregation: AggregationMode
    injects_golden: bool
    # Dynamic sampling, as data rather than trainer branches. `drop_degenerate_groups`: groups whose
    # members are all correct or all wrong are discarded before the update (DAPO). `needs_more(rewards, group_ids,
    # cfg, target_groups)`: after a sampling round, True asks the trainer for another round of
    # prompts (up to train.max_sampling_rounds); GPG's beta_th rule and DAPO's "fill the batch".
    # The trainer passes correctness (not the shaped reward) as `rewards`.
    drop_degenerate_groups: bool = False
    needs_more: SamplingRule | None = None
    # After more than one round: rebuild a batch of the original size from the informative groups of
    # every round, filled up with degenerate groups of the last round (GPG's beta_th loop).
    rebuild_batch: bool = False
    # Overlong reward shaping used when reward.overlong_buffer is unset: the ramp as a fraction of
    # the token budget (see reward.py); 0 = off.
    overlong_buffer: float = 0.0
    # Reward of a wrong (or unverifiable) answer; a correct one gets 1. DAPO's rule reward is on a
    # +-1 scale. Correctness itself (t.correct) never depends on this.
    reward_wrong: float = 0.0
    # The advantage contrasts a rollout with the other rollouts of its problem, so a group of one
    # has nothing to contrast with: the config refuses rollout.group_size < 2 for such algorithms.
    group_relative: bool = True


# ----------------------------------------------------------------------------------------- groups


def check_group_inputs(rewards: Tensor, group_ids: Tensor, is_golden: Tensor | None = None) -> None:
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must both be [N]; got {tuple(rewards.shape)}, {tuple(group_ids.shape)}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    if is_golden is not None and is_golden.shape != rewards.shape:
        raise ValueError(f"is_golden must be [N] like rewards; got {tuple(is_golden.shape)}")
    if not torch.isfinite(rewards.detach().to(torch.float64)).all():
        raise ValueError("rewards contain NaN or inf")


def reject_golden(is_golden: Tensor, name: str) -> None:
    """Algorithms without injection refuse golden members: one showing up means a trainer bug."""
    if bool(is_golden.any()):
        raise ValueError(f"{name} does not use golden trajectories, but is_golden has True entries")


@dataclass(frozen=True)
class GroupStats:
    mean: Tensor  # [N] float64, the member's group mean
    std: Tensor  # [N] float64, unbiased group std (0 for a singleton)
    size: Tensor  # [N] long, members in the member's group
    identical: Tensor  # [N] bool, every reward of the member's group is equal (singletons included)


def group_stats(rewards: Tensor, group_ids: Tensor) -> GroupStats:
    """Per-group statistics broadcast back to members; ids may be any integers in any order."""
    r = rewards.detach().to(torch.float64)  # [N]; float64 so the statistics do not depend on input dtype
    _, inv = torch.unique(group_ids, return_inverse=True)  # inv [N]: dense group index 0..G-1
    n_groups = int(inv.max()) + 1 if r.numel() else 0
    count = torch.zeros(n_groups, dtype=torch.float64, device=r.device).index_add_(0, inv, torch.ones_like(r))
    mean = torch.zeros_like(count).index_add_(0, inv, r) / count  # [G]
    dev = r - mean[inv]  # [N]
    sq = torch.zeros_like(count).index_add_(0, inv, dev * dev)  # [G]
    std = (sq / (count - 1).clamp(min=1)).sqrt()  # [G]; Bessel divisor like torch.std
    hi = torch.full_like(count, -torch.inf).scatter_reduce(0, inv, r, "amax")
    lo = torch.full_like(count, torch.inf).scatter_reduce(0, inv, r, "amin")
    return GroupStats(mean=mean[inv], std=std[inv], size=count[inv].long(), identical=(hi == lo)[inv])


def group_baseline_advantages(
    rewards: Tensor, group_ids: Tensor, *, scale_by_std: bool, eps: float
) -> Tensor:
    """A = r - group mean, optionally divided by (unbiased std + eps).

    Groups whose rewards are all equal get exact zeros. Testing equality directly (rather than trusting
    r - mean to be 0) keeps rewards like 0.1 from leaking a 1e-9/eps residue. A singleton group is such
    a group: with no peer there is no baseline to contrast against, so we give it 0 instead of verl's
    mean-0/std-1 convention (which would push by the raw reward).
    """
    st = group_stats(rewards, group_ids)
    adv = rewards.detach().to(torch.float64) - st.mean  # [N]
    if scale_by_std:
        adv = adv / (st.std + eps)
    adv = torch.where(st.identical, torch.zeros_like(adv), adv)
    out_dtype = rewards.dtype if rewards.dtype.is_floating_point else torch.get_default_dtype()
    return adv.to(out_dtype)


# ------------------------------------------------------------------------------------ loss helpers


def check_loss_inputs(logp: Tensor, old_logp: Tensor, advantages: Tensor, loss_mask: Tensor) -> None:
    if logp.dim() != 2 or old_logp.shape != logp.shape or loss_mask.shape != logp.shape:
        raise ValueError(
            f"logp, old_logp, loss_mask must all be [N,T]; got {tuple(logp.shape)}, "
            f"{tuple(old_logp.shape)}, {tuple(loss_mask.shape)}"
        )
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [N]={tuple(logp.shape[:1])}, got {tuple(advantages.shape)}")


def resolve_clip(cfg: AlgorithmConfig, default_low: float, default_high: float) -> tuple[float, float]:
    low = default_low if cfg.clip_low is None else cfg.clip_low
    high = default_high if cfg.clip_high is None else cfg.clip_high
    return low, high


def reject_sequence_switches(cfg: AlgorithmConfig, name: str) -> None:
    """Token-ratio algorithms refuse the GCPO/GSPO ablation switches instead of silently ignoring them."""
    if cfg.ratio_level == "sequence":
        raise ValueError(f"ratio_level='sequence' is only supported by gcpo and gspo, not {name}")
    if not cfg.length_normalize:
        raise ValueError(f"length_normalize=False only applies to a sequence ratio (gcpo/gspo), not {name}")


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over mask > 0; 0 when nothing is selected. Detached: used for metrics only."""
    m = (mask > 0).to(torch.float32)
    return ((x.detach().to(torch.float32) * m).sum() / m.sum().clamp(min=1.0)).detach()


def approx_kl(delta: Tensor, mask: Tensor) -> Tensor:
    """k3 estimate of KL(old || new) over policy tokens; delta = logp - old_logp, already 0 where masked."""
    d = delta.detach()
    return masked_mean(torch.expm1(d) - d, mask)


# ------------------------------------------------------------------------------------- aggregation


def aggregate(
    per_token_loss: Tensor,
    loss_mask: Tensor,
    mode: str,
    *,
    num_seqs: int,
    num_tokens: float | Tensor,
    norm_len: int = 1024,
) -> Tensor:
    """Reduce one micro-batch's per-token losses [n,T] to a scalar, with global-batch denominators.

    num_seqs / num_tokens describe the whole optimiser step (all micro-batches), so summing the
    results of every micro-batch gives exactly the full-batch loss, whatever the split.
    """
    if per_token_loss.shape != loss_mask.shape or per_token_loss.dim() != 2:
        raise ValueError(
            f"per_token_loss and loss_mask must be the same [n,T]; got {tuple(per_token_loss.shape)}"
        )
    if num_seqs <= 0:
        raise ValueError(f"num_seqs must be positive, got {num_seqs}")
    keep = loss_mask > 0
    masked = torch.where(keep, per_token_loss, torch.zeros_like(per_token_loss))  # [n,T]
    if mode == "seq-mean-token-mean":
        lengths = keep.to(masked.dtype).sum(-1).clamp(min=1.0)  # [n]; an all-masked row contributes 0
        return (masked.sum(-1) / lengths).sum() / num_seqs
    if mode == "token-mean":
        # A step with no policy token at all has a zero numerator; the clamp only avoids 0/0.
        return masked.sum() / max(float(num_tokens), 1.0)
    if mode == "seq-mean-token-sum-norm":
        return masked.sum() / (num_seqs * norm_len)
    raise ValueError(f"unknown aggregation mode {mode!r}; valid: {', '.join(AGGREGATION_MODES)}")
