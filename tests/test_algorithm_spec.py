"""What each registered algorithm *is*, pinned: aggregation, clip range, ratio level, advantage rule,
reward scale and dynamic-sampling filter, each checked both as registry data and numerically.

Changing any one of them in `agentic_gcpo/algorithms/` must fail a test here. The numeric check
builds one batch by hand (unequal lengths, a tool block, ratios on both sides of every clip bound
in use) and compares value and gradient with the formula written out below from SPEC alone.
"""

from __future__ import annotations

import pytest
import torch

from agentic_gcpo.algorithms import REGISTRY, AlgorithmConfig, aggregate, get_algorithm

# ratio: "token" (PPO per token), "sequence" (GSPO, length-normalised), None (plain policy gradient).
# adv: "std" = (r - mean) / (std + eps); "mean" = r - mean; "mean*age" = GPG's alpha-scaled form.
SPEC = {
    "gcpo": dict(agg="seq-mean-token-mean", clip=(3e-4, 4e-4), ratio="sequence", adv="std", inject=True),
    "gspo": dict(agg="seq-mean-token-mean", clip=(3e-4, 4e-4), ratio="sequence", adv="std"),
    "grpo": dict(agg="seq-mean-token-mean", clip=(0.2, 0.2), ratio="token", adv="std"),
    "dapo": dict(
        agg="token-mean",
        clip=(0.2, 0.28),
        ratio="token",
        adv="std",
        drop=True,
        wrong=-1.0,
        overlong=0.25,
        more="filled",
    ),
    "dr_grpo": dict(agg="seq-mean-token-sum-norm", clip=(0.2, 0.2), ratio="token", adv="mean"),
    "gpg": dict(agg="token-mean", clip=None, ratio=None, adv="mean*age", rebuild=True, more="beta_th"),
}
NORM_LEN = 1024  # AlgorithmConfig.dr_grpo_norm_len default

# One hand-built batch: 4 sequences of 3, 4 (around a 2-token tool block), 1 and 6 policy tokens.
MASK = torch.tensor(
    [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 1],
        [1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1],
    ],
    dtype=torch.float64,
)
ADV = torch.tensor([1.0, -0.5, 2.0, -1.5], dtype=torch.float64)
OLD = -torch.linspace(0.3, 2.5, 24, dtype=torch.float64).view(4, 6)
# Token ratios far from 1: 1.25 with A > 0 is clipped by 0.2 but not by 0.28; 0.75 with A < 0 is
# clipped by 0.2 but not by a 0.28 lower bound; 1.4 / 0.6 are clipped by both.
TOKEN_RATIOS = torch.tensor(
    [
        [1.25, 1.1, 0.9, 9.0, 9.0, 9.0],
        [0.75, 1.3, 9.0, 9.0, 0.6, 1.05],
        [1.4, 9.0, 9.0, 9.0, 9.0, 9.0],
        [0.75, 0.85, 1.25, 1.1, 0.6, 1.0],
    ],
    dtype=torch.float64,
)
# Sequence log-ratios next to GSPO's bounds: +3.5e-4 (A > 0) is inside 4e-4 but beyond 3e-4;
# -3.5e-4 (A < 0) is beyond 3e-4 but inside 4e-4; +1e-3 is clipped; -1e-4 is inside. Token deltas
# spread around each mean (+-2e-3), so token-level ratios would differ from the sequence ones.
SEQ_LOG_S = torch.tensor([3.5e-4, -3.5e-4, 1e-3, -1e-4], dtype=torch.float64)


def _seq_deltas() -> torch.Tensor:
    spread = torch.tensor([2e-3, -2e-3, 1e-3, -1e-3, 5e-4, -5e-4], dtype=torch.float64).repeat(4, 1)
    spread = spread * MASK
    spread = spread - (spread.sum(-1, keepdim=True) / MASK.sum(-1, keepdim=True)) * MASK  # mean 0
    return (spread + SEQ_LOG_S[:, None]) * MASK


BATCHES = {
    "token-ratios": torch.log(TOKEN_RATIOS) * MASK,
    "sequence-ratios": _seq_deltas(),
}


def reference_loss(name: str, logp: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """The loss written out from SPEC, independently of the project's code."""
    spec, m, a = SPEC[name], MASK, ADV
    lengths = m.sum(-1)
    if spec["ratio"] is None:  # -A * logp per policy token
        per_tok = -a[:, None] * logp * m
    elif spec["ratio"] == "token":
        lo, hi = spec["clip"]
        rho = torch.exp((logp - old) * m)
        per_tok = torch.maximum(-a[:, None] * rho, -a[:, None] * rho.clamp(1 - lo, 1 + hi)) * m
    else:
        lo, hi = spec["clip"]
        s = torch.exp(((logp - old) * m).sum(-1) / lengths)
        per_seq = torch.maximum(-a * s, -a * s.clamp(1 - lo, 1 + hi))
        assert spec["agg"] == "seq-mean-token-mean"  # the sequence loss is a mean over sequences
        return per_seq.mean()
    if spec["agg"] == "token-mean":
        return per_tok.sum() / m.sum()
    if spec["agg"] == "seq-mean-token-mean":
        return (per_tok.sum(-1) / lengths).mean()
    assert spec["agg"] == "seq-mean-token-sum-norm"
    return per_tok.sum() / (len(a) * NORM_LEN)


def project_loss(name: str, logp: torch.Tensor, old: torch.Tensor) -> tuple[torch.Tensor, dict]:
    alg, cfg = get_algorithm(name), AlgorithmConfig(name=name)
    per_tok, metrics = alg.policy_loss(logp, old, ADV, MASK, cfg)
    value = aggregate(
        per_tok, MASK, alg.aggregation, num_seqs=4, num_tokens=MASK.sum(), norm_len=cfg.dr_grpo_norm_len
    )
    return value, metrics


def test_spec_covers_the_registry() -> None:
    assert sorted(SPEC) == sorted(REGISTRY)


@pytest.mark.parametrize("name", sorted(SPEC))
def test_registry_data_is_pinned(name: str) -> None:
    spec, alg = SPEC[name], REGISTRY[name]
    assert alg.aggregation == spec["agg"]
    assert alg.injects_golden == spec.get("inject", False)
    assert alg.drop_degenerate_groups == spec.get("drop", False)
    assert alg.rebuild_batch == spec.get("rebuild", False)
    assert (alg.needs_more is not None) == ("more" in spec)
    assert alg.reward_wrong == spec.get("wrong", 0.0)
    assert alg.overlong_buffer == spec.get("overlong", 0.0)
    assert alg.group_relative


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("name", sorted(SPEC))
def test_loss_value_and_gradient_equal_the_pinned_formula(name: str, batch: str) -> None:
    delta = BATCHES[batch]
    logp = (OLD + delta).clone().requires_grad_(True)
    value, metrics = project_loss(name, logp, OLD)
    value.backward()
    ref_logp = (OLD + delta).clone().requires_grad_(True)
    expected = reference_loss(name, ref_logp, OLD)
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), abs=1e-12, rel=1e-10)
    torch.testing.assert_close(logp.grad, ref_logp.grad, atol=1e-12, rtol=1e-9)
    assert torch.equal(logp.grad[MASK == 0], torch.zeros(int((MASK == 0).sum()), dtype=logp.dtype))
    designed_for = {"token": "token-ratios", "sequence": "sequence-ratios"}.get(SPEC[name]["ratio"])
    if batch == designed_for:  # the batch built for this ratio level reaches the clip, not everywhere
        assert 0.0 < metrics["clip_frac"].item() < 1.0, (name, batch)


def _variants(spec: dict) -> list[dict]:
    """Every spec that differs from `spec` in exactly one pinned part of the loss."""
    out = []
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        if agg != spec["agg"] and spec["ratio"] != "sequence":
            out.append({**spec, "agg": agg})
    if spec["ratio"] is not None:
        for clip in ((0.2, 0.2), (0.2, 0.28), (0.28, 0.2), (3e-4, 4e-4), (4e-4, 3e-4), (3e-4, 3e-4)):
            if clip != spec["clip"]:
                out.append({**spec, "clip": clip})
    for ratio in ("token", "sequence", None):
        if ratio != spec["ratio"]:
            agg = "seq-mean-token-mean" if ratio == "sequence" else spec["agg"]
            out.append({**spec, "ratio": ratio, "agg": agg, "clip": spec["clip"] or (0.2, 0.2)})
    return out


@pytest.mark.parametrize("name", sorted(SPEC))
def test_the_batches_tell_every_variant_apart(name: str) -> None:
    """The numeric check is only a pin if changing one part (aggregation, clip, ratio level) of an
    algorithm's loss changes its value on one of the two batches."""
    for variant in _variants(SPEC[name]):
        SPEC["_variant"] = variant
        try:
            gaps = [
                abs(
                    reference_loss("_variant", OLD + d, OLD).item()
                    - reference_loss(name, OLD + d, OLD).item()
                )
                for d in BATCHES.values()
            ]
        finally:
            del SPEC["_variant"]
        assert max(gaps) > 1e-7, (name, variant)


@pytest.mark.parametrize("name", sorted(SPEC))
def test_advantage_rule_is_pinned(name: str) -> None:
    # two informative groups of unequal shape and one degenerate group
    r = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 1])
    g = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    golden = torch.zeros(12, dtype=torch.bool)
    a = get_algorithm(name).advantages(r, g, golden, AlgorithmConfig(name=name))
    expected = torch.zeros(12)
    for k in (0, 1):
        x = r[g == k]
        expected[g == k] = x - x.mean()
        if SPEC[name]["adv"] == "std":
            expected[g == k] = expected[g == k] / (x.std() + 1e-6)
    if SPEC[name]["adv"] == "mean*age":
        expected = expected * 12 / 8  # alpha = B / (B - M)
    torch.testing.assert_close(a, expected)


@pytest.mark.parametrize("name", sorted(SPEC))
def test_dynamic_sampling_rule_is_pinned(name: str) -> None:
    """needs_more(correctness, group ids, cfg, target groups) on pools of 1, 2 and 4 informative groups
    (target 4, groups of 2, the rest degenerate): DAPO fills the batch, GPG stops at beta_th x target."""
    alg, cfg = get_algorithm(name), AlgorithmConfig(name=name)
    want = {None: None, "filled": [True, True, False], "beta_th": [True, False, False]}[
        SPEC[name].get("more")
    ]
    got = []
    for n_informative in (1, 2, 4):
        rows = [[1.0, 0.0]] * n_informative + [[0.0, 0.0]] * (6 - n_informative)
        r = torch.tensor(rows).flatten()
        g = torch.arange(len(rows)).repeat_interleave(2)
        got.append(None if alg.needs_more is None else alg.needs_more(r, g, cfg, 4))
    assert got == (want or [None] * 3)


def test_gpg_beta_th_counts_groups_against_the_batch_not_the_pool_share() -> None:
    """A steady 25 % informative rate with beta_th 0.5: the old share-of-pool rule never stops; the
    paper's rule stops once 0.5 x 8 = 4 informative groups have been collected (second round)."""
    from agentic_gcpo.algorithms import gpg_needs_resample

    one_round = [[1.0, 0.0]] * 2 + [[0.0, 0.0]] * 6  # 2 of 8 groups informative
    for rounds, expect in ((1, True), (2, False), (3, False)):
        r = torch.tensor(one_round * rounds).flatten()
        g = torch.arange(8 * rounds).repeat_interleave(2)
        assert gpg_needs_resample(r, g, 0.5, 8) is expect
        assert gpg_needs_resample(r, g, 0.0, 8) is False
        assert gpg_needs_resample(r, g, 1.0, 8) is True  # 2 x rounds < 8 for rounds <= 3


def _policy(n: int, t: int, v: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.nn.Parameter(torch.randn(n, t, v, generator=gen, dtype=torch.float64))
    tokens = torch.randint(0, v, (n, t), generator=gen)

    def logp() -> torch.Tensor:  # [N,T] log-prob of the fixed tokens
        return torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)

    return logits, logp


@pytest.mark.parametrize("name", sorted(SPEC))
def test_off_policy_step_moves_logprobs_with_the_advantage_sign(name: str) -> None:
    """The path several optimizer steps per batch opens: old != current. Inside the clip range a step
    still follows the advantage's sign; beyond it, on the side the advantage pushes, no gradient."""
    spec, alg, cfg = SPEC[name], get_algorithm(name), AlgorithmConfig(name=name)
    small = 1e-4 if spec["ratio"] == "sequence" else 0.05  # inside 3e-4 / 0.2 on both sides
    big = 1e-3 if spec["ratio"] == "sequence" else 0.5  # beyond 4e-4 / 0.28
    logits, logp_fn = _policy(4, 6)
    signs = torch.tensor([[1.0, -1, 1, -1, 1, -1]] * 4, dtype=torch.float64)
    before = logp_fn().detach()
    old = before - small * torch.sign(ADV)[:, None] * torch.where(MASK > 0, signs.abs(), signs)
    per_tok, _ = alg.policy_loss(logp_fn(), old, ADV, MASK, cfg)
    aggregate(per_tok, MASK, alg.aggregation, num_seqs=4, num_tokens=MASK.sum(), norm_len=8).backward()
    torch.optim.SGD([logits], lr=0.5).step()
    change = (logp_fn().detach() - before) * MASK
    for i in range(4):
        moved = change[i][MASK[i] > 0]
        assert (moved * ADV[i] > 0).all(), (name, i, moved)

    logits.grad = None
    beyond = before - big * torch.sign(ADV)[:, None]  # ratio > 1 + high for A > 0, < 1 - low for A < 0
    per_tok, metrics = alg.policy_loss(logp_fn(), beyond, ADV, MASK, cfg)
    aggregate(per_tok, MASK, alg.aggregation, num_seqs=4, num_tokens=MASK.sum(), norm_len=8).backward()
    if spec["ratio"] is None:  # GPG has no clip: the gradient does not care about old
        assert logits.grad.abs().sum() > 0 and metrics["clip_frac"].item() == 0.0
    else:
        assert torch.equal(logits.grad, torch.zeros_like(logits.grad))
        assert metrics["clip_frac"].item() == 1.0
