"""Record a real vLLM server's /v1/completions answers to the requests our server-mode engine sends.

    ../venv-vllm/bin/python tests/record_vllm.py                  # launches vLLM (CPU, tiny model, ~1 min)
    python tests/record_vllm.py --url http://127.0.0.1:8000       # or attach (serving the same tiny model)

Writes tests/data/vllm_recorded.json: the tiny model's config, then per case the request body (built by
the engine's own `completion_body`) and the server's raw answer. tests/test_engine_vllm_client.py
replays it without vllm installed, so a change to what we send shows up as "no recording".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

OUT = REPO / "tests" / "data" / "vllm_recorded.json"
CASES = [  # name, SamplingParams fields
    ("greedy", {"max_new_tokens": 12, "temperature": 0.0}),
    ("sampled", {"max_new_tokens": 12, "temperature": 0.7}),
    ("stop_string", {"max_new_tokens": 40, "temperature": 0.0, "stop": ["e"]}),
    ("stop_token", {"max_new_tokens": 40, "temperature": 0.0, "stop_token_ids": [45694]}),
]
TEXT = "Once upon a time"


def main() -> None:
    from agentic_gcpo.engines import SamplingParams, make_engine
    from agentic_gcpo.engines.remote import post
    from agentic_gcpo.engines.vllm_server import completion_body
    from agentic_gcpo.models import tiny_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default=None, help="attach to this server instead of launching one")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    model, tok = tiny_model(seed=0, hidden_size=128, num_heads=4)
    opts = {"mode": "server", "url": args.url, "cpu_kvcache_gb": 1.0, "max_model_len": 512}
    eng = make_engine("vllm", model, tok, dtype="float32", options=opts)
    try:
        prompt = tok(TEXT)["input_ids"]
        cases = []
        for name, fields in CASES:
            body = completion_body(eng.model_name, prompt, SamplingParams(**fields))
            cases.append(
                {
                    "name": name,
                    "params": fields,
                    "request": body,
                    "response": post(eng.url + "/v1/completions", body),
                }
            )
        data = {
            "text": TEXT,
            "model_name": eng.model_name,
            "max_model_len": eng.max_model_len,
            "cases": cases,
        }
        args.out.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.out} ({len(cases)} cases)")
    finally:
        eng.close()


if __name__ == "__main__":
    main()
