"""Algorithm tests: hand-computed vectors TV1-TV6 (shared/reference/algorithms.md section 9), edge cases,
gradient direction and masking for every loss, micro-batch aggregation, and the registry."""

from __future__ import annotations

import math

import pytest
import torch

from agentic_gcpo.algorithms import (
    REGISTRY,
    Algorithm,
    AlgorithmConfig,
    UnknownAlgorithmError,
    aggregate,
    get_algorithm,
    gpg_alpha,
    gpg_needs_resample,
    register,
)

ALL = ["gcpo", "gpg", "grpo", "dapo", "dr_grpo", "gspo"]
# (algorithm, config overrides): every loss path, the GCPO ablations included.
LOSS_CASES = [(n, {}) for n in ALL] + [
    ("gcpo", {"ratio_level": "token"}),
    ("gcpo", {"length_normalize": False}),
]


def cfg(**kw) -> AlgorithmConfig:
    return AlgorithmConfig(**kw)


def adv(name: str, rewards, group_ids, golden=None, **kw) -> torch.Tensor:
    r = torch.tensor(rewards, dtype=torch.float32)
    g = torch.tensor(group_ids, dtype=torch.long)
    gold = torch.zeros(len(rewards), dtype=torch.bool) if golden is None else torch.tensor(golden)
    return get_algorithm(name).advantages(r, g, gold, cfg(name=name, **kw))


def full_loss(name: str, logp, old, advantages, mask, **kw) -> tuple[torch.Tensor, dict]:
    alg, c = get_algorithm(name), cfg(name=name, **kw)
    per_tok, metrics = alg.policy_loss(logp, old, advantages, mask, c)
    value = aggregate(
        per_tok,
        mask,
        alg.aggregation,
        num_seqs=logp.shape[0],
        num_tokens=mask.sum(),
        norm_len=c.dr_grpo_norm_len,
    )
    return value, metrics


# ------------------------------------------------------------------------------------- advantages


@pytest.mark.parametrize("name", ["gcpo", "grpo", "dapo", "gspo"])
def test_tv1_injected_group_g4_and_g8(name: str) -> None:
    golden = [True, False, False, False] if name == "gcpo" else None
    a = adv(name, [1, 0, 0, 0], [0] * 4, golden)
    torch.testing.assert_close(a, torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-4, rtol=0)
    golden8 = [True] + [False] * 7 if name == "gcpo" else None
    a8 = adv(name, [1] + [0] * 7, [0] * 8, golden8)
    torch.testing.assert_close(a8[0], torch.tensor(2.474867), atol=1e-4, rtol=0)
    torch.testing.assert_close(a8[1:], torch.full((7,), -0.353552), atol=1e-4, rtol=0)


def test_tv1_mean_only_rules() -> None:
    torch.testing.assert_close(
        adv("dr_grpo", [1, 0, 0, 0], [0] * 4), torch.tensor([0.75, -0.25, -0.25, -0.25])
    )
    a8 = adv("dr_grpo", [1] + [0] * 7, [0] * 8)
    torch.testing.assert_close(a8, torch.tensor([0.875] + [-0.125] * 7))


def test_tv2_groups_without_injection() -> None:
    ids = [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    rewards = [1, 1, 1, 1] + [0, 0, 0, 0] + [1, 0, 1, 0] + [1, 1, 1, 0]
    a = adv("grpo", rewards, ids)
    s = 0.866025
    expected = [0.0] * 8 + [s, -s, s, -s] + [0.5, 0.5, 0.5, -1.5]
    torch.testing.assert_close(a, torch.tensor(expected), atol=1e-4, rtol=0)
    assert torch.equal(a[:8], torch.zeros(8))  # exact zeros, not eps residue
    d = adv("dr_grpo", rewards, ids)
    torch.testing.assert_close(d[8:], torch.tensor([0.5, -0.5, 0.5, -0.5, 0.25, 0.25, 0.25, -0.75]))


def _tv3_batch(n_valid: int = 4, n_right: int = 2, n_wrong: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [[1.0, 0, 0, 0]] * n_valid + [[1.0] * 4] * n_right + [[0.0] * 4] * n_wrong
    # Non-contiguous, unsorted group ids on purpose.
    ids = [[7 * k + 3] * 4 for k in reversed(range(len(rows)))]
    return torch.tensor(rows).flatten(), torch.tensor(ids).flatten()


def test_tv3_tv4_gpg_alpha_and_advantages() -> None:
    r, g = _tv3_batch()
    assert gpg_alpha(r, g) == pytest.approx(2.0)  # paper rule: B/(B-M) = 32/16
    assert gpg_alpha(r, g) != pytest.approx(32 / 12)  # TV4: verl's non-zero-reward count is NOT used
    gold = torch.zeros(32, dtype=torch.bool)
    a = get_algorithm("gpg").advantages(r, g, gold, cfg(name="gpg"))
    torch.testing.assert_close(a[:16], torch.tensor([1.5, -0.5, -0.5, -0.5] * 4))
    assert torch.equal(a[16:], torch.zeros(16))
    no_age = get_algorithm("gpg").advantages(r, g, gold, cfg(name="gpg", gpg_use_age=False))
    torch.testing.assert_close(no_age[:16], torch.tensor([0.75, -0.25, -0.25, -0.25] * 4))


def test_tv3_gpg_resample_rule() -> None:
    r, g = _tv3_batch()
    assert not gpg_needs_resample(r, g, 0.5, 8)  # 4 of 8 groups informative: 4 is not < 0.5 x 8
    assert gpg_needs_resample(r, g, 0.6, 8)  # 4 < 4.8
    r6, g6 = _tv3_batch(n_valid=2, n_right=3, n_wrong=3)
    assert gpg_alpha(r6, g6) == pytest.approx(4.0)
    assert gpg_needs_resample(r6, g6, 0.5, 8)  # 2 of 8 groups informative


def test_gpg_whole_batch_degenerate_gives_zeros() -> None:
    a = adv("gpg", [1, 1, 0, 0], [0, 0, 1, 1])
    assert torch.equal(a, torch.zeros(4)) and torch.isfinite(a).all()


@pytest.mark.parametrize("name", ALL)
def test_edge_cases_all_equal_singleton_and_zero_std(name: str) -> None:
    assert torch.equal(adv(name, [1, 1, 1, 1], [0] * 4), torch.zeros(4))  # all correct
    assert torch.equal(adv(name, [0, 0, 0, 0], [0] * 4), torch.zeros(4))  # all fail, nothing injected
    # 0.1 is not exactly representable: r - mean would leave ~1e-9, divided by eps ~1e-3. Must be exact 0.
    assert torch.equal(adv(name, [0.1, 0.1, 0.1], [5, 5, 5]), torch.zeros(3))
    # Documented choice: a singleton group has no baseline, so it gets advantage 0.
    a = adv(name, [1, 1, 0, 0.7], [4, 4, 4, 9])
    assert a[3].item() == 0.0 and a[:3].abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_interleaved_non_contiguous_ids_match_per_group_loop(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    r = torch.rand(12, generator=gen).round()
    r[0], r[1] = 1.0, 0.0  # group 42 is informative
    g = torch.tensor([42, -3, 42, 1000, -3, 42, 1000, -3, 42, 1000, -3, 1000])
    r[g == 42] = torch.tensor([1.0, 0.0, 1.0, 1.0])
    got = get_algorithm(name).advantages(r, g, torch.zeros(12, dtype=torch.bool), cfg(name=name))
    c = cfg(name=name)
    expected = torch.zeros(12)
    for gid in g.unique():
        sel = g == gid
        x = r[sel]
        if bool((x == x[0]).all()):
            continue
        a = x - x.mean()
        if name in ("gcpo", "grpo", "dapo", "gspo"):
            a = a / (x.std() + c.adv_eps)
        expected[sel] = a
    if name == "gpg":
        total, valid = 12, sum(int(not bool((r[g == k] == r[g == k][0]).all())) * 4 for k in g.unique())
        expected = expected * total / valid
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", ["grpo", "dapo", "dr_grpo", "gspo", "gpg"])
def test_non_injecting_algorithms_reject_golden_flags(name: str) -> None:
    assert not get_algorithm(name).injects_golden
    with pytest.raises(ValueError, match="golden"):
        adv(name, [1, 0], [0, 0], [True, False])


def test_gcpo_rejects_two_goldens_in_one_group() -> None:
    assert get_algorithm("gcpo").injects_golden
    with pytest.raises(ValueError, match="more than one golden"):
        adv("gcpo", [1, 1, 0, 0], [0] * 4, [True, True, False, False])


# ------------------------------------------------------------------------------------------ losses


def test_tv5_sequence_ratio_counts_policy_tokens_only() -> None:
    mask = torch.tensor([[1.0, 1, 0, 0, 1]])
    delta = torch.tensor([[0.1, 0.2, 5.0, -7.0, 0.3]])  # tool-token deltas are junk and must be ignored
    old = torch.tensor([[-1.0, -2.0, 0.0, 0.0, -0.5]])
    for name in ("gcpo", "gspo"):
        for a, expect_value in ((1.0, -1.0004), (-1.0, 1.2214028)):
            logp = (old + delta).requires_grad_(True)
            value, metrics = full_loss(name, logp, old, torch.tensor([a]), mask)
            assert metrics["ratio_mean"].item() == pytest.approx(1.2214028, abs=1e-6)
            assert value.item() == pytest.approx(expect_value, abs=1e-6)
            value.backward()
            if a > 0:  # clipped branch active: no gradient at all
                assert torch.equal(logp.grad, torch.zeros_like(logp))
                assert metrics["clip_frac"].item() == 1.0
            else:  # unclipped: d(-A s)/d logp_t = s / L on policy tokens, 0 on tool tokens
                g = 1.2214028 / 3
                torch.testing.assert_close(logp.grad, torch.tensor([[g, g, 0.0, 0.0, g]]))
                assert metrics["clip_frac"].item() == 0.0


def _seq_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """6 sequences whose mean log-ratio straddles the GSPO clip, with mixed-sign advantages."""
    gen = torch.Generator().manual_seed(1)
    n, t = 6, 7
    mask = (torch.rand(n, t, generator=gen) > 0.3).float()
    mask[:, 0] = 1.0
    logp = -torch.rand(n, t, generator=gen) * 3
    noise = torch.randn(n, t, generator=gen) * 1e-3
    targets = torch.tensor([1e-4, 1e-3, -1e-3, -1e-4, 5e-4, -5e-4])  # mean log-ratio per sequence
    per_seq = (noise * mask).sum(-1) / mask.sum(-1)
    noise = (noise - per_seq[:, None] + targets[:, None]) * mask  # each row now averages to its target
    old = logp - noise + (1 - mask) * 9.0  # junk on masked tokens
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0, -0.5, 0.5])
    return logp, old, advantages, mask


@pytest.mark.parametrize("name", ["gcpo", "gspo"])
@pytest.mark.parametrize("length_normalize", [True, False])
def test_gcpo_matches_direct_sequence_formula(name: str, length_normalize: bool) -> None:
    logp0, old, a, mask = _seq_batch()
    if not length_normalize:
        old = torch.where(mask > 0, logp0 - (logp0 - old) / mask.sum(-1, keepdim=True), old)
    lo, hi = 3e-4, 4e-4

    logp = logp0.clone().requires_grad_(True)
    value, metrics = full_loss(name, logp, old, a, mask, length_normalize=length_normalize)
    value.backward()

    ref = logp0.clone().requires_grad_(True)
    log_s = ((ref - old) * mask).sum(-1)
    if length_normalize:
        log_s = log_s / mask.sum(-1)
    s = torch.exp(log_s.clamp(max=10.0))
    direct = (-torch.minimum(s * a, s.clamp(1 - lo, 1 + hi) * a)).mean()
    direct.backward()

    assert value.item() == pytest.approx(direct.item(), abs=1e-6)
    torch.testing.assert_close(logp.grad, ref.grad, atol=1e-6, rtol=1e-5)
    clipped = ((a > 0) & (s > 1 + hi)) | ((a < 0) & (s < 1 - lo))
    assert 0 < clipped.sum() < len(a)  # the batch exercises both branches
    assert metrics["clip_frac"].item() == pytest.approx(clipped.float().mean().item())


def test_gcpo_unnormalised_log_ratio_is_clamped() -> None:
    logp = torch.zeros(1, 3, requires_grad=True)
    old = torch.full((1, 3), -5.0)  # summed log-ratio 15 > 10
    value, metrics = full_loss(
        "gcpo", logp, old, torch.tensor([-1.0]), torch.ones(1, 3), length_normalize=False
    )
    assert value.item() == pytest.approx(math.exp(10.0), rel=1e-5)
    value.backward()
    assert torch.isfinite(logp.grad).all() and torch.equal(logp.grad, torch.zeros_like(logp))


@pytest.mark.parametrize("name", ["gcpo", "gspo"])
@pytest.mark.parametrize(
    "clip, expected_clip",
    [({}, (0.2, 0.2)), ({"clip_low": 3e-4, "clip_high": 4e-4}, (3e-4, 4e-4))],
    ids=["token-default-0.2", "explicit-clip-kept"],
)
def test_token_ablation_equals_token_ppo_with_its_clip(name, clip, expected_clip) -> None:
    # A per-token ratio defaults to PPO's 0.2 clip (GSPO's 3e-4 / 4e-4 is for the sequence ratio);
    # an explicit clip_low / clip_high still wins.
    logp0, old, a, mask = _seq_batch()
    logp = logp0.clone().requires_grad_(True)
    value, _ = full_loss(name, logp, old, a, mask, ratio_level="token", **clip)
    rho = torch.exp(torch.where(mask > 0, logp0 - old, torch.zeros_like(old)))
    low, high = expected_clip
    per_tok = torch.maximum(-a[:, None] * rho, -a[:, None] * rho.clamp(1 - low, 1 + high)) * mask
    expected = ((per_tok.sum(-1) / mask.sum(-1)).mean()).item()
    assert value.item() == pytest.approx(expected, abs=1e-6)


def test_grpo_token_loss_value_and_clip() -> None:
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # old_logp = 0 -> ratios 1.5, 0.5, 1.1
    old, mask = torch.zeros(1, 3), torch.ones(1, 3)
    pos, m = full_loss("grpo", logp, old, torch.tensor([1.0]), mask)
    assert pos.item() == pytest.approx(-(1.2 + 0.5 + 1.1) / 3)
    assert m["clip_frac"].item() == pytest.approx(1 / 3)
    neg, m = full_loss("grpo", logp, old, torch.tensor([-1.0]), mask)
    assert neg.item() == pytest.approx((1.5 + 0.8 + 1.1) / 3)
    assert m["clip_frac"].item() == pytest.approx(1 / 3)
    dapo, _ = full_loss("dapo", logp, old, torch.tensor([1.0]), mask)
    assert dapo.item() == pytest.approx(-(1.28 + 0.5 + 1.1) / 3)


def _policy(n: int, t: int, v: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.nn.Parameter(torch.randn(n, t, v, generator=gen))
    tokens = torch.randint(0, v, (n, t), generator=gen)

    def logp() -> torch.Tensor:  # [N,T] log-prob of the fixed tokens
        return torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)

    return logits, logp


@pytest.mark.parametrize(("name", "overrides"), LOSS_CASES)
def test_one_step_moves_logprobs_with_the_advantage_sign(name: str, overrides: dict) -> None:
    rewards = torch.tensor([1.0, 0, 0, 0, 0, 1, 1, 1])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    golden = torch.zeros(8, dtype=torch.bool)
    alg, c = get_algorithm(name), cfg(name=name, **overrides)
    a = alg.advantages(rewards, groups, golden, c)
    logits, logp_fn = _policy(8, 6)
    mask = torch.ones(8, 6)
    mask[:, 2:4] = 0.0  # a tool block
    before = logp_fn().detach()
    per_tok, _ = alg.policy_loss(logp_fn(), before, a, mask, c)  # on-policy: ratio exactly 1
    aggregate(per_tok, mask, alg.aggregation, num_seqs=8, num_tokens=mask.sum(), norm_len=8).backward()
    torch.optim.SGD([logits], lr=0.5).step()
    change = (logp_fn().detach() - before)[mask > 0].view(8, 4)
    assert (change[a > 0] > 0).all(), f"{name}: positive-advantage tokens must gain probability"
    assert (change[a < 0] < 0).all(), f"{name}: negative-advantage tokens must lose probability"


@pytest.mark.parametrize(("name", "overrides"), LOSS_CASES)
def test_masked_tokens_get_exactly_zero_gradient(name: str, overrides: dict) -> None:
    alg, c = get_algorithm(name), cfg(name=name, **overrides)
    logits, logp_fn = _policy(4, 6, seed=3)
    mask = torch.tensor([[1.0, 1, 0, 0, 1, 0]] * 3 + [[0.0] * 6])  # last row: no policy token at all
    logp = logp_fn()
    gen = torch.Generator().manual_seed(4)
    old = logp.detach() + torch.randn(4, 6, generator=gen) * 0.05
    old = torch.where(mask > 0, old, torch.tensor(1e4))  # junk old logprobs on tool tokens
    logp = torch.where(mask > 0, logp, logp - 1e4)  # and extreme current ones
    per_tok, metrics = alg.policy_loss(logp, old, torch.tensor([1.0, -1.0, 0.5, 2.0]), mask, c)
    assert torch.equal(per_tok[mask == 0], torch.zeros(int((mask == 0).sum())))
    aggregate(per_tok, mask, alg.aggregation, num_seqs=4, num_tokens=mask.sum()).backward()
    grad = logits.grad
    assert torch.isfinite(grad).all()
    assert torch.equal(grad[mask == 0], torch.zeros_like(grad[mask == 0]))
    assert {"clip_frac", "ratio_mean", "approx_kl"} <= set(metrics)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in metrics.values())


# ------------------------------------------------------------------------------------- aggregation


def test_tv6_aggregation_modes() -> None:
    loss = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    kw = {"num_seqs": 2, "num_tokens": 6.0, "norm_len": 4}
    assert aggregate(loss, mask, "token-mean", **kw).item() == pytest.approx(2 / 6)
    assert aggregate(loss, mask, "seq-mean-token-mean", **kw).item() == pytest.approx(0.5)
    assert aggregate(loss, mask, "seq-mean-token-sum-norm", **kw).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(loss, mask, "seq-sum", **kw)


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_sum_to_full_batch(mode: str) -> None:
    gen = torch.Generator().manual_seed(2)
    loss = torch.randn(6, 9, generator=gen)
    mask = (torch.rand(6, 9, generator=gen) > 0.4).float()
    mask[5] = 0.0  # a row without policy tokens
    kw = {"num_seqs": 6, "num_tokens": mask.sum(), "norm_len": 16}
    full = aggregate(loss, mask, mode, **kw)
    parts = sum(aggregate(loss[s], mask[s], mode, **kw) for s in (slice(0, 2), slice(2, 5), slice(5, 6)))
    torch.testing.assert_close(parts, full, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------- registry/config


def test_registry_lists_all_six_with_metadata() -> None:
    assert sorted(REGISTRY) == sorted(ALL)
    for name, alg in REGISTRY.items():
        assert alg.name == name and alg.paper.startswith("arXiv ") and alg.summary
    assert [n for n, a in REGISTRY.items() if a.injects_golden] == ["gcpo"]


def test_unknown_algorithm_names_the_valid_ones() -> None:
    with pytest.raises(KeyError) as info:
        get_algorithm("ppo")
    assert isinstance(info.value, ValueError) and isinstance(info.value, UnknownAlgorithmError)
    assert all(n in str(info.value) for n in ALL)
    with pytest.raises(ValueError, match="gcpo"):
        AlgorithmConfig(name="ppo")


def test_duplicate_registration_rejected() -> None:
    existing = REGISTRY["grpo"]
    assert register(existing) is existing  # same object: no-op
    clone = Algorithm(**{**existing.__dict__, "summary": "impostor"})
    with pytest.raises(ValueError, match="already registered"):
        register(clone)
    assert REGISTRY["grpo"] is existing


def test_config_rejects_unknown_keys_and_misapplied_switches() -> None:
    with pytest.raises(ValueError, match="golden_prob"):
        AlgorithmConfig(golden_prob=0.5)
    logp, old, mask = torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2)
    for name in ("grpo", "dapo", "dr_grpo", "gpg"):
        with pytest.raises(ValueError, match="sequence"):
            get_algorithm(name).policy_loss(
                logp, old, torch.ones(1), mask, cfg(name=name, ratio_level="sequence")
            )
