"""A real HTTP server that speaks SGLang's native protocol, backed by our HFEngine (tests only).

SGLang itself cannot run on CPU-only machines (its server imports the CUDA-only sgl_kernel at
start-up and PyPI has no CPU build), so tests/test_engine_sglang.py runs the SGLang client against
this server instead: a separate process, real sockets, the request and answer shapes of SGLang's
io_struct.py / tokenizer_manager.py (see /work/shared/reference/engines.md), and SGLang's rules
where they matter to a client:
- /generate takes `input_ids` (one list, or a list of lists = a batch answered with a list), a
  `sampling_params` dict whose unknown keys are refused with 400, `return_logprob`; it answers
  {"text", "output_ids", "meta_info": {"id", "finish_reason", "output_token_logprobs": [[lp, id,
  null], ...], ...}}; finish_reason is {"type": "stop", "matched": id|str} or {"type": "length"}.
- it stops at the tokenizer's EOS id even when `stop_token_ids` does not list it (unless ignore_eos);
  temperature below 1e-6 is greedy; `sampling_seed` seeds the row.
- /health (503 while "loading"), /get_model_info, /get_server_info, /flush_cache,
  /update_weights_from_disk {model_path} -> {success, message}, 400 when the folder cannot be loaded.
The flags are those the engine passes to `sglang.launch_server`; an unknown flag ends the process
with argparse's error, as SGLang's does. Test-only knobs: --start-delay (health answers 503 that
long), POST /test/fail {"count", "status"} (the next requests get that status), POST /test/die
(the next /generate kills the process mid-request), POST /test/delay {"s"}, GET /test/requests
(the last /generate bodies), POST /test/legacy {"on"} (refuse sampling_seed, as older SGLang), GET /test/aborted (rids
given to /abort_request).

Run: python tests/sglang_protocol_server.py --model-path tiny:0 --port 30000 --dtype float32
(`tiny:SEED` is agentic_gcpo.models.tiny_model(seed); otherwise a transformers model folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SAMPLING_KEYS = {  # SGLang's SamplingParams fields; anything else is a 400, as there
    "max_new_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "stop_token_ids", "stop_regex",
    "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim", "n",
    "min_new_tokens", "frequency_penalty", "presence_penalty", "repetition_penalty", "logit_bias",
    "sampling_seed", "json_schema", "regex", "ebnf", "custom_params",
}  # fmt: skip


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser("sglang_protocol_server")
    ap.add_argument("--model-path", "--model", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--tp-size", "--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--mem-fraction-static", type=float)
    ap.add_argument("--base-gpu-id", type=int, default=0)
    ap.add_argument("--start-delay", type=float, default=0.0, help="test: /health answers 503 this long")
    ap.add_argument("--replay", help="test: answer /generate from this recording (tests/record_sglang.py)")
    return ap.parse_args(argv)


def replay_key(body: dict[str, Any]) -> str:
    return json.dumps([body.get("input_ids"), body.get("sampling_params")], sort_keys=True)


class State:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.replay: dict[str, Any] | None = None
        if args.replay:  # answers recorded from a real SGLang server (tests/record_sglang.py); no model
            doc = json.loads(open(args.replay).read())
            self.replay = {replay_key(r["request"]): r["response"] for r in doc["records"]}
        else:
            import torch

            from agentic_gcpo.engines.hf import HFEngine

            torch.set_num_threads(1)
            self.model, self.tok = load(args.model_path)
            dtypes = {"auto": "auto", "float": "float32", "float32": "float32", "bfloat16": "bfloat16"}
            if args.dtype not in dtypes:
                sys.exit(f"--dtype {args.dtype}: this test server supports {', '.join(dtypes)}")
            self.engine = HFEngine(self.model, self.tok, dtype=dtypes[args.dtype])
            self.eos = {i for i in [self.tok.eos_token_id] if i is not None}
        self.lock = threading.Lock()  # one engine call at a time (generation or weight update)
        self.ready_at = time.monotonic() + args.start_delay
        self.weight_version = "default"
        self.fail = {"count": 0, "status": 503}
        self.die = False
        self.delay_s = 0.0
        self.legacy = False  # True: refuse sampling_seed, as SGLang releases before that field do
        self.requests: list[Any] = []
        self.flushes = 0
        self.aborted: list[str] = []


def load(path: str) -> tuple[Any, Any]:
    if path.startswith("tiny:"):
        from agentic_gcpo.models import tiny_model

        return tiny_model(seed=int(path.split(":", 1)[1]))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype="float32"), AutoTokenizer.from_pretrained(path)


class BadRequest(ValueError):
    pass


def to_params(sp: dict[str, Any], eos: set[int], legacy: bool = False) -> Any:
    from agentic_gcpo.engines.base import SamplingParams

    unknown = set(sp) - (SAMPLING_KEYS - {"sampling_seed"} if legacy else SAMPLING_KEYS)
    if unknown:
        raise BadRequest(
            f"SamplingParams.__init__() got an unexpected keyword argument '{sorted(unknown)[0]}'"
        )
    if sp.get("top_k", -1) not in (-1, None) or sp.get("min_p", 0.0) or sp.get("n", 1) != 1:
        raise BadRequest("this test server implements top_k=-1, min_p=0, n=1 only")
    if sp.get("repetition_penalty", 1.0) != 1.0:
        raise BadRequest("this test server implements repetition_penalty=1 only")
    t = float(sp.get("temperature", 1.0))
    stop = sp.get("stop") or []
    stop_ids = set(sp.get("stop_token_ids") or [])
    if not sp.get("ignore_eos", False):
        stop_ids |= eos  # SGLang stops at the model's EOS whatever stop_token_ids says
    return SamplingParams(
        max_new_tokens=int(sp.get("max_new_tokens", 128)),
        temperature=0.0 if t < 1e-6 else t,
        top_p=float(sp.get("top_p", 1.0)),
        stop=[stop] if isinstance(stop, str) else list(stop),
        stop_token_ids=sorted(stop_ids),
        seed=sp.get("sampling_seed"),
    )


def generate(st: State, body: dict[str, Any]) -> Any:
    ids = body.get("input_ids")
    if body.get("text") is not None:
        raise BadRequest("this test server takes input_ids only")
    if not ids:
        raise BadRequest("input_ids is empty")
    if not all(isinstance(t, int) for p in (ids if isinstance(ids[0], list) else [ids]) for t in p):
        raise BadRequest("input_ids must be a list of token ids (ints) or a list of such lists")
    batch = isinstance(ids[0], list)
    prompts = ids if batch else [ids]
    sps = body.get("sampling_params") or {}
    sps = sps if isinstance(sps, list) else [sps] * len(prompts)
    if len(sps) != len(prompts) or any(not p for p in prompts):
        raise BadRequest(f"{len(prompts)} prompts (some empty?) but {len(sps)} sampling_params")
    params = [to_params(sp, st.eos, st.legacy) for sp in sps]
    with st.lock:
        if st.delay_s:
            time.sleep(st.delay_s)
        t0 = time.monotonic()
        done = st.engine.generate(prompts, params)
        latency = time.monotonic() - t0
    rid = body.get("rid") or "r"
    out = []
    for i, (p, c) in enumerate(zip(prompts, done)):
        if c.finish_reason == "stop":
            fr: dict[str, Any] = {"type": "stop", "matched": c.stop_reason}
        else:
            fr = {"type": "length", "length": len(c.token_ids)}
        meta = {
            "id": rid if not batch else f"{rid}_{i}",
            "finish_reason": fr,
            "prompt_tokens": len(p),
            "completion_tokens": len(c.token_ids),
            "cached_tokens": 0,
            "weight_version": st.weight_version,
            "e2e_latency": latency,
        }
        if body.get("return_logprob"):
            meta["output_token_logprobs"] = [[lp, t, None] for lp, t in zip(c.logprobs, c.token_ids)]
            meta["output_token_logprobs_length"] = len(c.token_ids)
        out.append({"text": st.tok.decode(c.token_ids), "output_ids": c.token_ids, "meta_info": meta})
    return out if batch else out[0]


def update_from_disk(st: State, body: dict[str, Any]) -> tuple[int, Any]:
    path = body.get("model_path")
    try:
        from transformers import AutoModelForCausalLM

        new = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    except Exception as e:  # SGLang answers a failed load with 400 and success false
        return 400, {"success": False, "message": f"Failed to update weights: {e}.", "num_paused_requests": 0}
    with st.lock:
        st.engine.update_weights(new.state_dict())
        st.weight_version = str(body.get("weight_version") or st.weight_version)
        if body.get("flush_cache", True):
            st.flushes += 1
    return 200, {"success": True, "message": "Succeeded to update model weights.", "num_paused_requests": 0}


def make_handler(st: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *a: Any) -> None:
            print(f"[server] {self.command} {self.path} " + fmt % a, flush=True)

        def send(self, code: int, body: Any) -> None:
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n)) if n else {}

        def do_GET(self) -> None:
            self.route(None)

        def do_POST(self) -> None:
            try:
                body = self.body()
            except ValueError as e:
                return self.send(400, {"error": {"message": f"invalid JSON: {e}"}})
            self.route(body)

        def route(self, body: Any) -> None:
            path = self.path.split("?")[0]
            if path in ("/health", "/health_generate"):
                return self.send(200 if time.monotonic() >= st.ready_at else 503, "")
            if path == "/get_model_info":
                return self.send(200, {"model_path": st.args.model_path, "is_generation": True,
                                       "weight_version": st.weight_version})  # fmt: skip
            if path == "/get_server_info":
                return self.send(200, {**vars(st.args), "version": "protocol-test", "test_flushes": st.flushes,
                                       "weight_version": st.weight_version})  # fmt: skip
            if path == "/flush_cache":
                with st.lock:
                    st.flushes += 1
                return self.send(200, "Cache flushed.\n")
            if path == "/update_weights_from_disk":
                return self.send(*update_from_disk(st, body or {}))
            if path == "/abort_request":
                st.aborted.append((body or {}).get("rid"))  # generation here cannot stop midway
                return self.send(200, "")
            if path == "/test/aborted":
                return self.send(200, st.aborted)
            if path == "/test/fail":
                st.fail = {"count": int(body.get("count", 1)), "status": int(body.get("status", 503))}
                return self.send(200, {"ok": True})
            if path == "/test/die":
                st.die = True
                return self.send(200, {"ok": True})
            if path == "/test/legacy":
                st.legacy = bool(body.get("on", True))
                return self.send(200, {"ok": True})
            if path == "/test/delay":
                st.delay_s = float(body.get("s", 0.0))
                return self.send(200, {"ok": True})
            if path == "/test/requests":
                return self.send(200, st.requests[-50:])
            if path != "/generate" or body is None:
                return self.send(404, {"detail": "Not Found"})
            if st.die:  # the request has arrived; the process goes away before answering
                print("[server] dying mid-request (test knob)", flush=True)
                os._exit(1)
            st.requests.append(body)
            if st.fail["count"] > 0:
                st.fail["count"] -= 1
                return self.send(st.fail["status"], {"error": {"message": "test: server overloaded"}})
            if st.replay is not None:
                if replay_key(body) in st.replay:
                    return self.send(200, st.replay[replay_key(body)])
                msg = f"no recording for this request: {replay_key(body)[-300:]}"
                return self.send(400, {"error": {"message": msg}})
            try:
                return self.send(200, generate(st, body))
            except BadRequest as e:
                return self.send(400, {"error": {"message": str(e)}})
            except Exception as e:  # a bug of this server: say so, as SGLang's 500 would
                return self.send(500, {"error": {"message": f"{type(e).__name__}: {e}"}})

    return Handler


def main(argv: list[str]) -> None:
    args = parse_args(argv)  # before the heavy imports: a bad flag fails at once, as in SGLang
    st = State(args)
    httpd = ThreadingHTTPServer((args.host, args.port), make_handler(st))
    httpd.daemon_threads = True
    print(f"[server] The server is fired up and ready to roll! http://{args.host}:{args.port}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(sys.argv[1:])
