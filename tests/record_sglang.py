"""Record a real SGLang server's answers to the requests our engine sends, for replay in tests.

On a machine with a CUDA GPU and sglang installed (on a CPU-only machine: see docs/engines.md, which
starts SGLang's torch-native CPU path with tests/sglang_cpu_shim on PYTHONPATH):
    python -m sglang.launch_server --model-path HuggingFaceTB/SmolLM2-135M-Instruct --port 30000 &
    python tests/record_sglang.py --url http://127.0.0.1:30000 \
        --tokenizer HuggingFaceTB/SmolLM2-135M-Instruct --out tests/data/sglang_recorded.json
tests/test_engine_sglang.py::test_recorded_sglang_answers then replays the file (through
tests/sglang_protocol_server.py --replay) and checks that our engine sends byte-for-byte the same
requests and reads the recorded answers correctly. Requests are built by the engine's own
`sglang_request`, so a change to what we send shows up as "no recording for this request".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

CASES = [  # name, SamplingParams fields (stop_token_ids: "eos" = the tokenizer's EOS id)
    ("greedy", {"max_new_tokens": 16, "temperature": 0.0, "stop_token_ids": "eos"}),
    ("sampled", {"max_new_tokens": 24, "temperature": 1.0, "seed": 1, "stop_token_ids": "eos"}),
    ("stop_string", {"max_new_tokens": 32, "temperature": 0.0, "stop": [".", "!"]}),
    # a stop string the greedy output is sure to contain (a random model never writes "."):
    # the text of greedy tokens 4..5, so the match ends mid-output
    ("stop_string_hit", {"max_new_tokens": 32, "temperature": 0.0, "stop": "greedy_text[4:6]"}),
    # the next turn of a conversation: prompt + greedy output + more, as the agent loop sends it
    ("continuation", {"max_new_tokens": 8, "temperature": 0.0, "stop_token_ids": "eos"}),
    ("stop_token", {"max_new_tokens": 32, "temperature": 0.0, "stop_token_ids": "greedy[2]"}),
    ("one_token", {"max_new_tokens": 1, "temperature": 0.7, "top_p": 0.9}),
]
QUESTIONS = ["What is 2+2? Answer briefly.", "Name a prime number larger than 10."]


def prompt_ids(tok, text: str) -> list[int]:
    enc = tok.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    return list(enc["input_ids"]) if hasattr(enc, "keys") else list(enc)


def record(url: str, tok, out: Path) -> list[dict]:
    from agentic_gcpo.engines.base import SamplingParams
    from agentic_gcpo.engines.remote import get, post
    from agentic_gcpo.engines.sglang_api import sglang_request

    url = url.rstrip("/")
    records = []
    for qi, q in enumerate(QUESTIONS):
        ids = prompt_ids(tok, q)
        greedy_ids: list[int] = []
        for name, fields in CASES:
            f = dict(fields)
            if f.get("stop_token_ids") == "eos":
                f["stop_token_ids"] = [tok.eos_token_id]
            elif f.get("stop_token_ids") == "greedy[2]":
                f["stop_token_ids"] = greedy_ids[2:3]
            if f.get("stop") == "greedy_text[4:6]":
                f["stop"] = [tok.decode(greedy_ids[4:6])]
            prompt = ids
            if name == "continuation":
                prompt = ids + greedy_ids + tok("\nGo on.", add_special_tokens=False).input_ids
            body = sglang_request(prompt, SamplingParams(**f), rid=f"rec-{qi}-{name}")
            resp = post(f"{url}/generate", body, timeout_s=300)
            if name == "greedy":
                greedy_ids = resp["output_ids"]
            records.append({"name": f"{qi}-{name}", "request": body, "response": resp})
    info = get(f"{url}/get_server_info", timeout_s=60)
    doc = {
        "server": {k: info.get(k) for k in ("version", "model_path", "dtype", "tp_size")},
        "records": records,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="the SGLang server, e.g. http://127.0.0.1:30000")
    ap.add_argument("--tokenizer", required=True, help="the server model's tokenizer (folder or hub id)")
    ap.add_argument("--out", default="tests/data/sglang_recorded.json")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    n = len(record(args.url, tok, Path(args.out)))
    print(f"recorded {n} requests to {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
