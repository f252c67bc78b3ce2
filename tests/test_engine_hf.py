"""The in-process engine: sampled ids, their logprobs, stops, lengths, shared prefill."""

from __future__ import annotations

import copy
import math

import torch

from agentic_gcpo.engines import SamplingParams, make_engine
from agentic_gcpo.train.policy import token_logprobs


def _engine(tiny, dtype="float32"):
    model, tok = tiny
    return make_engine("hf", model, tok, dtype=dtype, max_batch_size=4)


def _prompt(tok, text):
    return tok.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )


def _ids(x):
    return list(x["input_ids"]) if isinstance(x, dict) or hasattr(x, "keys") else list(x)


def test_logprobs_match_teacher_forced_forward(tiny):
    """The sampler's logprob of every sampled token equals the trainer's fp32 recomputation."""
    model, tok = tiny
    eng = _engine(tiny)
    prompts = [
        _ids(_prompt(tok, "What is 2+2?")),
        _ids(_prompt(tok, "A longer question about apples and pears?")),
    ]
    outs = eng.generate(prompts, [SamplingParams(12, temperature=1.0, seed=s) for s in (1, 2)])
    for p, o in zip(prompts, outs):
        assert len(o.token_ids) == len(o.logprobs) == 12 and o.finish_reason == "length"
        ids = torch.tensor([p + o.token_ids])
        lp = token_logprobs(model, ids, torch.ones_like(ids), autocast_bf16=False)[0, len(p) - 1 :]
        assert torch.allclose(lp, torch.tensor(o.logprobs), atol=1e-4), (lp, o.logprobs)


def test_seeded_sampling_is_reproducible_and_batch_independent(tiny):
    _, tok = tiny
    eng = _engine(tiny)
    p = _ids(_prompt(tok, "Count to three."))
    other = _ids(_prompt(tok, "Something else entirely, longer prompt here."))
    a = eng.generate([p], [SamplingParams(10, seed=5)])[0]
    b = eng.generate(
        [other, p, p], [SamplingParams(10, seed=1), SamplingParams(10, seed=5), SamplingParams(10, seed=6)]
    )
    assert a.token_ids == b[1].token_ids  # same seed, different batch company and padding
    assert all(math.isfinite(x) for x in a.logprobs)


def test_shared_prefill_equals_separate_prefill(tiny):
    """Identical prompts share one prefill; greedy results must equal one-at-a-time decoding."""
    _, tok = tiny
    eng = _engine(tiny)
    p = _ids(_prompt(tok, "Shared prompt"))
    q = _ids(_prompt(tok, "A different prompt"))
    alone = [eng.generate([x], [SamplingParams(8, temperature=0)])[0].token_ids for x in (p, q)]
    together = eng.generate([p, q, p, p], [SamplingParams(8, temperature=0)] * 4)
    assert [c.token_ids for c in together] == [alone[0], alone[1], alone[0], alone[0]]


def test_stop_token_and_per_row_lengths(tiny):
    _, tok = tiny
    eng = _engine(tiny)
    p = _ids(_prompt(tok, "hi"))
    greedy = eng.generate([p], [SamplingParams(6, temperature=0)])[0].token_ids
    stop_tok = greedy[2]
    outs = eng.generate(
        [p, p],
        [SamplingParams(6, temperature=0, stop_token_ids=[stop_tok]), SamplingParams(3, temperature=0)],
    )
    assert outs[0].token_ids == greedy[: greedy.index(stop_tok) + 1] and outs[0].finish_reason == "stop"
    assert outs[0].stop_reason == stop_tok
    assert outs[1].token_ids == greedy[:3] and outs[1].finish_reason == "length"


def test_stop_string_keeps_the_ids(tiny):
    _, tok = tiny
    eng = _engine(tiny)
    p = _ids(_prompt(tok, "hi"))
    greedy = eng.generate([p], [SamplingParams(8, temperature=0)])[0].token_ids
    text = tok.decode(greedy[:4])
    stop = text[-2:] if len(text) >= 2 else text
    out = eng.generate([p], [SamplingParams(8, temperature=0, stop=[stop])])[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert stop in tok.decode(out.token_ids) and out.token_ids == greedy[: len(out.token_ids)]


def test_bad_requests_are_clear(tiny):
    eng = _engine(tiny)
    import pytest

    with pytest.raises(ValueError, match="empty"):
        eng.generate([[]], [SamplingParams(4)])
    with pytest.raises(ValueError, match="sampling params"):
        eng.generate([[1, 2]], [])


def test_unknown_backend_lists_valid(tiny):
    import pytest

    model, tok = tiny
    with pytest.raises(ValueError, match="valid: hf"):
        make_engine("tgi", model, tok)


def test_selective_logprobs_equal_full_ones(tiny):
    """The trainer projects only loss_mask positions onto the vocabulary; values and grads must match."""
    # float64 weights: the two paths sum in different orders, and fp32 rounding of the tied
    # embedding's gradient (~2e-5 seen) would otherwise decide the test rather than the maths
    model = copy.deepcopy(tiny[0]).double()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 1000, (3, 12), generator=g)
    attn = torch.ones_like(ids)
    only = (torch.rand(3, 11, generator=g) > 0.5).float()
    full = token_logprobs(model, ids, attn, autocast_bf16=False)
    sel = token_logprobs(model, ids, attn, autocast_bf16=False, only=only)
    assert torch.allclose(sel, full * only, atol=1e-5)
    g_full = torch.autograd.grad((full * only).sum(), model.lm_head.weight)[0]
    g_sel = torch.autograd.grad(sel.sum(), model.lm_head.weight)[0]
    assert torch.allclose(g_full, g_sel, atol=1e-5)


def test_tempered_logprobs_match_the_sampler(tiny):
    model, tok = tiny
    eng = _engine(tiny)
    p = _ids(_prompt(tok, "Temperature check"))
    o = eng.generate([p], [SamplingParams(8, temperature=0.7, seed=3)])[0]
    ids = torch.tensor([p + o.token_ids])
    only = torch.zeros(1, ids.shape[1] - 1)
    only[0, len(p) - 1 :] = 1
    lp = token_logprobs(model, ids, torch.ones_like(ids), autocast_bf16=False, only=only, temperature=0.7)
    assert torch.allclose(lp[0, len(p) - 1 :], torch.tensor(o.logprobs), atol=1e-4)


def test_generation_hands_the_shared_module_back_in_its_mode(tiny):
    model, tok = tiny
    eng = _engine(tiny)
    model.train()
    eng.generate([_ids(_prompt(tok, "hi"))], [SamplingParams(2, temperature=0)])
    assert model.training
    model.eval()
    eng.generate([_ids(_prompt(tok, "hi"))], [SamplingParams(2, temperature=0)])
    assert not model.training
