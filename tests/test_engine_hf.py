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


def _two_turns(
    eng, tok, prompts, tool_text="\n<|im_start|>user\nresult: 42<|im_end|>\n<|im_start|>assistant\n"
):
    """Turn 1 from `prompts`, then turn 2 from prompt + completion + a tool-like delta (greedy)."""
    first = eng.generate(prompts, [SamplingParams(7, temperature=0)] * len(prompts))
    delta = tok(tool_text, add_special_tokens=False).input_ids
    second_prompts = [p + c.token_ids + delta for p, c in zip(prompts, first)]
    # a fresh prompt in the same batch: one row hits the cache, another does not
    second_prompts.append(_ids(_prompt(tok, "A brand new question with no history")))
    second = eng.generate(second_prompts, [SamplingParams(9, temperature=0)] * len(second_prompts))
    return first, second


def test_prefix_cache_gives_the_same_tokens_and_logprobs_as_a_full_prefill(tiny):
    """Turn 2 prefills only the new tokens when turn 1's KV is kept; the result must not change."""
    model, tok = tiny
    prompts = [_ids(_prompt(tok, "First question?")), _ids(_prompt(tok, "Second, a longer question here?"))]
    cached = make_engine("hf", model, tok, dtype="float32", max_batch_size=8)
    plain = make_engine("hf", model, tok, dtype="float32", max_batch_size=8, prefix_cache_mb=0)
    f1, s1 = _two_turns(cached, tok, prompts)
    f2, s2 = _two_turns(plain, tok, prompts)
    assert cached.cache.hits == 2 and plain.cache.hits == 0
    assert cached.cache.reused_tokens == sum(len(p) + len(c.token_ids) - 1 for p, c in zip(prompts, f1))
    for a, b in zip(f1 + s1, f2 + s2):
        assert a.token_ids == b.token_ids
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)


def test_prefix_cache_is_dropped_when_the_weights_change(tiny):
    model, tok = tiny
    eng = make_engine("hf", model, tok, dtype="float32")
    eng.generate([_ids(_prompt(tok, "hi"))], [SamplingParams(3, temperature=0)])
    assert len(eng.cache) == 1
    eng.update_weights(None)
    assert len(eng.cache) == 0


def test_bf16_engine_samples_from_its_own_copy_refreshed_at_sync(tiny):
    """bf16: a bf16 copy of the weights samples (no per-step autocast); a sync copies new weights."""
    model, tok = tiny
    model = copy.deepcopy(model)
    eng = make_engine("hf", model, tok, dtype="bfloat16")
    assert eng.sampler is not model and next(eng.sampler.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32  # the trainer's master weights untouched
    with torch.no_grad():
        model.lm_head.weight.add_(0.5)
    eng.update_weights(None)
    assert torch.equal(eng.sampler.lm_head.weight, model.lm_head.weight.to(torch.bfloat16))
    p = _ids(_prompt(tok, "bf16 check"))
    o = eng.generate([p], [SamplingParams(6, temperature=1.0, seed=1)])[0]
    ids = torch.tensor([p + o.token_ids])
    lp = token_logprobs(model, ids, torch.ones_like(ids), autocast_bf16=False)[0, len(p) - 1 :]
    # bf16 sampling vs the fp32 trainer: close, not equal (the gap is logged as rollout/logprob_abs_diff)
    assert (lp - torch.tensor(o.logprobs)).abs().max() < 0.1


def test_float32_engine_shares_the_trainers_module(tiny):
    model, tok = tiny
    assert make_engine("hf", model, tok, dtype="float32").sampler is model


def test_top_p_keeps_sampling_inside_the_nucleus(tiny):
    """With top_p tiny, sampling at T=1 must pick the most likely token (the nucleus is one token)."""
    model, tok = tiny
    eng = _engine(tiny)
    p = _ids(_prompt(tok, "nucleus"))
    greedy = eng.generate([p], [SamplingParams(6, temperature=0)])[0].token_ids
    nucleus = eng.generate([p], [SamplingParams(6, temperature=1.0, top_p=1e-6, seed=s) for s in (1,)])[0]
    assert nucleus.token_ids == greedy


def test_batched_sampler_draws_from_the_tempered_distribution():
    """Inverse-CDF sampling with per-row RNGs: frequencies match softmax(logits / T)."""
    import random

    from agentic_gcpo.engines.hf import sample_batch

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(4000, 1)
    params = [SamplingParams(1, temperature=0.5)] * 4000
    toks, lps = sample_batch(logits, params, [random.Random(i) for i in range(4000)])
    want = torch.softmax(logits[0] / 0.5, -1)
    freq = torch.bincount(torch.tensor(toks), minlength=4).float() / 4000
    assert torch.allclose(freq, want, atol=0.02), (freq, want)
    assert all(abs(lp - float(want[t].log())) < 1e-5 for t, lp in zip(toks[:50], lps[:50]))


# --- continuous batching: requests that arrive mid-decode join the running batch ----------------
def _drain(eng, done):
    while eng.outstanding():
        done.update(eng.poll())


def test_request_submitted_mid_decode_joins_the_batch_and_samples_as_if_alone(tiny):
    """B arrives while A is 5 tokens in; both come out exactly as when each runs alone, and B was
    decoded in the same batch as A (not after it). Both length orders: B's prompt longer than A's
    running length (A's rows get padded) and shorter (B's rows get padded)."""
    _, tok = tiny
    a = _ids(_prompt(tok, "Count from one to twenty, slowly."))
    for b in (_ids(_prompt(tok, "x " * 60)), _ids(_prompt(tok, "ok"))):
        pa, pb = SamplingParams(16, seed=3), SamplingParams(9, temperature=0.7, seed=4)
        eng = _engine(tiny)
        alone_a = eng.generate([a], [pa])[0]
        alone_b = eng.generate([b], [pb])[0]
        eng = _engine(tiny)
        eng.admit_every = 1
        eng.submit("a", a, pa)
        done = {}
        for _ in range(5):
            done.update(eng.poll())
        eng.submit("b", b, pb)
        done.update(eng.poll())
        assert len(eng._run.rows) == 2, "B should have joined the running batch"
        _drain(eng, done)
        for got, want in ((done["a"], alone_a), (done["b"], alone_b)):
            assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason
            assert torch.allclose(torch.tensor(got.logprobs), torch.tensor(want.logprobs), atol=1e-5)


def test_continued_conversation_joins_mid_decode_and_reuses_its_prefix(tiny):
    """A finished turn's KV is kept; its continuation, submitted while another row decodes,
    prefills only the new tokens and matches a from-scratch prefill."""
    _, tok = tiny
    p = _ids(_prompt(tok, "Tell me a story."))
    eng = _engine(tiny)
    eng.admit_every = 1
    first = eng.generate([p], [SamplingParams(6, temperature=0)])[0]
    cont = p + first.token_ids + _ids(tok("\nmore please", add_special_tokens=False))
    eng.submit("long", _ids(_prompt(tok, "Another, unrelated and long request.")), SamplingParams(20, seed=1))
    done = dict(eng.poll())
    reused = eng.cache.reused_tokens
    eng.submit("cont", cont, SamplingParams(8, temperature=0))
    _drain(eng, done)
    assert eng.cache.reused_tokens - reused == len(p) + len(first.token_ids) - 1
    fresh = _engine(tiny).generate([cont], [SamplingParams(8, temperature=0)])[0]
    assert done["cont"].token_ids == fresh.token_ids
    assert torch.allclose(torch.tensor(done["cont"].logprobs), torch.tensor(fresh.logprobs), atol=1e-5)


def test_more_requests_than_batch_slots_are_admitted_as_rows_finish(tiny):
    _, tok = tiny
    eng = _engine(tiny)  # max_batch_size=4
    prompts = [_ids(_prompt(tok, f"question number {i}")) for i in range(7)]
    params = [SamplingParams(3 + i, seed=i) for i in range(7)]
    outs = eng.generate(prompts, params)
    assert [len(o.token_ids) for o in outs] == [3 + i for i in range(7)]
    alone = [_engine(tiny).generate([p], [sp])[0].token_ids for p, sp in zip(prompts, params)]
    assert [o.token_ids for o in outs] == alone
    assert eng.outstanding() == 0


def test_finished_rows_keep_their_slot_until_compaction_without_changing_any_row(tiny):
    """Rows finishing at different steps: removed at once (compact_at 0), kept as masked slots until
    a quarter has finished (the default), or until the batch is done (1.0): the same ids and
    logprobs as decoding each alone, and the KV kept for a next turn is the same."""
    _, tok = tiny
    prompts = [_ids(_prompt(tok, f"row {i}: " + "word " * (3 * i))) for i in range(4)]
    params = [SamplingParams(4 + 3 * i, temperature=0.9, seed=i) for i in range(4)]
    alone = [_engine(tiny).generate([p], [sp])[0] for p, sp in zip(prompts, params)]
    for compact_at in (0.0, 0.25, 1.0):
        eng = _engine(tiny)
        eng.compact_at = compact_at
        for i, (p, sp) in enumerate(zip(prompts, params)):
            eng.submit(i, p, sp)
        done, slots = {}, []
        while eng.outstanding():
            done.update(eng.poll())
            slots.append(len(eng._run.rows) if eng._run else 0)
        assert [done[i].token_ids for i in range(4)] == [a.token_ids for a in alone]
        for i in range(4):
            assert torch.allclose(torch.tensor(done[i].logprobs), torch.tensor(alone[i].logprobs), atol=1e-5)
        # 0: a slot goes as its row finishes; 1.0: all four stay until the last row is done
        assert max(slots[:-1]) == 4 and (min(slots[:-1]) == 4) == (compact_at == 1.0), (compact_at, slots)
        # the next turn of the first row to finish reuses the KV its slot held when it finished
        cont = prompts[0] + done[0].token_ids + _ids(tok(" and?", add_special_tokens=False))
        again = eng.generate([cont], [SamplingParams(5, temperature=0)])[0]
        fresh = _engine(tiny).generate([cont], [SamplingParams(5, temperature=0)])[0]
        assert eng.cache.hits >= 1 and again.token_ids == fresh.token_ids


def test_generate_keeps_completions_of_requests_submitted_before_it(tiny):
    _, tok = tiny
    eng = _engine(tiny)
    eng.submit("early", _ids(_prompt(tok, "early bird")), SamplingParams(12, seed=0))
    out = eng.generate([_ids(_prompt(tok, "now"))], [SamplingParams(4, seed=1)])
    assert len(out[0].token_ids) == 4
    done = {}
    _drain(eng, done)
    assert len(done["early"].token_ids) == 12


def test_an_interrupted_poll_leaves_no_request_behind(tiny):
    _, tok = tiny
    eng = _engine(tiny)

    def boom(_tok):
        raise KeyboardInterrupt

    eng.submit("x", _ids(_prompt(tok, "hi")), SamplingParams(5, seed=0, on_token=boom))
    eng.submit("y", _ids(_prompt(tok, "there")), SamplingParams(5, seed=0))
    try:
        eng.poll()
    except KeyboardInterrupt:
        pass
    assert eng.outstanding() == 0 and eng.poll() == []
    assert len(eng.generate([_ids(_prompt(tok, "again"))], [SamplingParams(3, seed=0)])[0].token_ids) == 3
