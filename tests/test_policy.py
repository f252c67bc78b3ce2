"""train/policy.py: packing and the shared-prompt forward. A prompt forwarded once and continued by
its group's sequences must give the log-probs and the gradients of full forwards."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from agentic_gcpo.algorithms import get_algorithm
from agentic_gcpo.config import load_config
from agentic_gcpo.ledger import Source, Trajectory
from agentic_gcpo.train.policy import SharedPrefixes, batch_logprobs, pack, token_logprobs
from agentic_gcpo.train.update import policy_update


def _traj(gid: int, prompt: list[int], parts: list[tuple[Source, int]], seed: int) -> Trajectory:
    """A trajectory with the given prompt, then runs of (source, length) with pseudo-random ids."""
    g = torch.Generator().manual_seed(seed)
    t = Trajectory(problem_id=f"p{gid}", group_id=gid, reference="1", is_golden=seed < 0)
    t.append(prompt, Source.PROMPT)
    for src, n in parts:
        ids = torch.randint(10, 2000, (n,), generator=g).tolist()
        lp = [-1.0] * n if src == Source.SAMPLED and not t.is_golden else None
        t.append(ids, src, lp)
    return t


def _batch() -> list[Trajectory]:
    """Three groups with prompts of different lengths; members of different lengths, with tool
    output and template glue between turns, and a golden (no sampler log-probs)."""
    S, T, G = Source.SAMPLED, Source.TOOL, Source.TEMPLATE
    prompts = [list(range(100, 117)), list(range(300, 309)), list(range(500, 530))]
    shapes = [
        [(S, 12)],
        [(S, 5), (G, 3), (T, 7), (G, 2), (S, 9)],
        [(S, 30)],
        [(S, 2), (G, 2), (T, 4), (G, 2), (S, 3)],
    ]
    out = []
    for gid, prompt in enumerate(prompts):
        for k, shape in enumerate(shapes[: 3 if gid == 1 else 4]):
            out.append(_traj(gid, prompt, shape, seed=10 * gid + k))
    out.append(_traj(1, prompts[1], [(S, 6), (G, 2), (T, 3), (G, 2), (S, 4)], seed=-1))  # golden
    return out


@pytest.fixture()
def model64(tiny):
    return copy.deepcopy(tiny[0]).double().train()


def test_shared_prefix_logprobs_equal_full_forwards(model64):
    trajs = _batch()
    shared = SharedPrefixes(trajs, pad_id=0)
    assert shared.ids.shape == (3, 29)  # three distinct prompts, each less its last token
    with torch.no_grad():
        shared.forward(model64, bf16=False)
        for idx in ([0, 1, 2], [3, 4, 5, 6, 7, 8, 9, 10, 11]):  # two micro-batches, groups mixed
            sub = [trajs[i] for i in idx]
            b = pack(sub, 0, shared)
            lp = batch_logprobs(model64, b, False, temperature=0.7)
            full = pack(sub, 0)
            ref = token_logprobs(model64, full.input_ids, full.attention_mask, False, full.loss_mask, 0.7)
            for row, t in enumerate(sub):
                off, n = t.prompt_len - 1, len(t.token_ids) - 1
                assert b.positions(row) == n - off
                torch.testing.assert_close(lp[row, : n - off], ref[row, off:n], atol=1e-10, rtol=0)
                assert torch.equal(b.loss_mask[row, : n - off], full.loss_mask[row, off:n])
                assert int(b.loss_mask[row].sum()) == t.num_policy_tokens  # nothing lost at the cut


def test_shared_prefix_gradients_equal_full_forwards(model64):
    """Two micro-batches' backwards plus the prompts' one backward = the full forwards' gradient."""
    trajs = _batch()
    w = torch.linspace(-1.0, 1.0, len(trajs), dtype=torch.float64)  # signed, like advantages
    micro = [[0, 4, 8], [1, 2, 3, 5, 6, 7, 9, 10, 11]]

    def grads(share: bool) -> dict[str, torch.Tensor]:
        model64.zero_grad(set_to_none=True)
        shared = SharedPrefixes(trajs, 0) if share else None
        if shared:
            shared.forward(model64, bf16=False)
        for idx in micro:
            b = pack([trajs[i] for i in idx], 0, shared)
            lp = batch_logprobs(model64, b, False, temperature=1.0)
            (lp.sum(-1) * w[idx]).sum().backward()
        if shared:
            shared.backward()
        return {n: p.grad.clone() for n, p in model64.named_parameters()}

    full, sharedg = grads(False), grads(True)
    for name, g in full.items():
        assert g.abs().max() > 0, name  # every parameter, embeddings included, gets a gradient
        # float64, but LlamaRMSNorm normalises in float32: the two paths' matmuls round differently
        # in the last float64 bits and that cast can flip an fp32 rounding (seen: 5e-7 of 4.6).
        torch.testing.assert_close(sharedg[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_policy_update_with_and_without_sharing_moves_the_weights_alike(tiny):
    trajs = _batch()
    for i, t in enumerate(trajs):
        t.reward = float(i % 2)  # mixed rewards in every group: non-zero advantages
    cfg = load_config(
        None, ["algorithm.name=gcpo", "train.micro_batch_size=3", "train.epochs=2", "train.lr=1e-2"]
    )
    after = []
    for share in (False, True):
        cfg.train.share_prefix = share
        model = copy.deepcopy(tiny[0]).double()
        opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)  # linear: weight gap = lr x grad gap
        m = policy_update(model, opt, get_algorithm("gcpo"), cfg, trajs, bf16=False, pad_id=0, first_slot=0)
        assert m["loss/skipped"] == 0.0 and m["loss/active_seqs"] == len(trajs)
        after.append((m, dict(model.named_parameters())))
    (m0, p0), (m1, p1) = after
    assert math.isclose(m0["loss/grad_norm"], m1["loss/grad_norm"], rel_tol=1e-6)
    assert math.isclose(m0["loss/policy"], m1["loss/policy"], rel_tol=1e-6, abs_tol=1e-9)
    for name, p in p0.items():  # tolerance: see the gradient test (RMSNorm's float32 step)
        torch.testing.assert_close(p1[name], p, atol=1e-8, rtol=1e-7, msg=name)
    moved = sum(float((p.detach() - tiny[0].state_dict()[n].double()).abs().sum()) for n, p in p0.items())
    assert moved > 0.0


def test_sharing_is_not_used_where_it_cannot_be_exact(tiny):
    t = _traj(0, [7], [(Source.SAMPLED, 4)], seed=1)  # a 1-token prompt leaves nothing to share
    assert not SharedPrefixes.applies([t], tiny[0])
    assert SharedPrefixes.applies(_batch(), tiny[0])
