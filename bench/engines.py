"""Engine benchmark: the same prompts, G, lengths and model through every rollout engine available.

    python bench/engines.py                                   # tiny random model, every engine found
    ../venv-vllm/bin/python bench/engines.py --model embedded  # SmolLM2-135M; vLLM from .ci/setup-vllm.sh
    python bench/engines.py --engines hf,vllm --prompts 8 --group-size 4 --max-new-tokens 64

Each engine gets the same job: P problems (GSM8K, chat template, the python tool described) x G
samples, temperature 1, exactly --max-new-tokens sampled tokens per row (no stop token, so every
engine does the same work), one `generate` call after a short warm-up. tok/s = sampled tokens / wall
time of that call. Start-up (model load, vLLM's engine build) is reported apart. Engines: `hf`
always; `vllm` (in-process, VLLM_ENABLE_V1_MULTIPROCESSING=0) when `import vllm` works; `sglang`
when `import sglang` works (it needs a CUDA GPU: on a CPU its failure is printed, not fatal).

`--model tiny` is the tiny random Llama with hidden size 128 (head size 32: vLLM's CPU attention has
no kernel for the default tiny model's 16). Prints the CPU, the dtype chosen and why, and the ratios
to `hf`; `--json` writes them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentic_gcpo.data import load_problems  # noqa: E402
from agentic_gcpo.engines import SamplingParams, make_engine  # noqa: E402
from agentic_gcpo.models import load_named, tiny_model  # noqa: E402
from agentic_gcpo.precision import cpu_description, resolve  # noqa: E402
from agentic_gcpo.rollout.chat import ChatFormat  # noqa: E402
from agentic_gcpo.tool_registry import get_tools  # noqa: E402


def available(name: str) -> bool:
    return name == "hf" or importlib.util.find_spec(name) is not None


def run_engine(name, model, tok, prompts, max_new, dtype, batch, kv_gb) -> dict:
    opts = {"cpu_kvcache_gb": kv_gb} if name == "vllm" else None
    t0 = time.perf_counter()
    eng = make_engine(name, model, tok, dtype=dtype, max_batch_size=batch, options=opts)
    start_s = time.perf_counter() - t0
    try:
        eng.generate(prompts[:2], [SamplingParams(max_new_tokens=4)] * 2)  # warm-up
        params = [SamplingParams(max_new_tokens=max_new, temperature=1.0) for _ in prompts]
        t0 = time.perf_counter()
        outs = eng.generate(prompts, params)
        gen_s = time.perf_counter() - t0
    finally:
        eng.close()
    tokens = sum(len(c.token_ids) for c in outs)
    assert all(len(c.logprobs) == len(c.token_ids) for c in outs)
    return {"engine": name, "start_s": start_s, "gen_s": gen_s, "tokens": tokens, "tok_s": tokens / gen_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny (hidden 128), embedded, or a model directory")
    ap.add_argument("--engines", default="hf,vllm,sglang", help="comma list; unavailable ones are skipped")
    ap.add_argument("--prompts", type=int, default=8, help="problems")
    ap.add_argument("--group-size", type=int, default=4, help="G: samples per problem")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--vllm-kvcache-gb", type=float, default=1.0, help="vLLM's CPU KV cache (RAM is shared)")
    ap.add_argument("--data", default="builtin:gsm8k_train_500")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(args.vllm_kvcache_gb))))
    prec = resolve(args.dtype)
    print(f"cpu: {cpu_description()}\ntorch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"dtype: {prec.dtype} ({prec.reason}); load average {os.getloadavg()[0]:.1f}")
    if args.model == "tiny":
        model, tok = tiny_model(seed=0, hidden_size=128, num_heads=4)
    else:
        model, tok = load_named(args.model)
    model.eval()
    chat = ChatFormat(tok, get_tools(["python"]), "auto", None, 0)
    problems = load_problems(args.data, args.prompts)
    G = args.group_size
    prompts = [chat.prompt_ids(p.question) for p in problems for _ in range(G)]
    print(
        f"model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params); "
        f"{args.prompts} prompts x G={G} x {args.max_new_tokens} new tokens; "
        f"prompt tokens {min(map(len, prompts))}..{max(map(len, prompts))}"
    )
    rows = []
    for name in [e.strip() for e in args.engines.split(",") if e.strip()]:
        if not available(name):
            print(f"{name:7s} skipped: `import {name}` fails in {sys.executable}")
            continue
        try:
            r = run_engine(
                name, model, tok, prompts, args.max_new_tokens, prec.dtype, len(prompts), args.vllm_kvcache_gb
            )
        except Exception as e:  # e.g. SGLang on a CPU: report and go on with the others
            print(f"{name:7s} failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
            continue
        rows.append(r)
        print(
            f"{name:7s} start {r['start_s']:6.1f} s   generate {r['gen_s']:7.1f} s   "
            f"{r['tokens']} tokens   {r['tok_s']:8.1f} tok/s",
            flush=True,
        )
    base = next((r for r in rows if r["engine"] == "hf"), None)
    if base:
        for r in rows:
            r["vs_hf"] = r["tok_s"] / base["tok_s"]
        print("ratios to hf: " + ", ".join(f"{r['engine']} {r['vs_hf']:.2f}x" for r in rows))
    if args.json:
        meta = {
            "cpu": cpu_description(),
            "dtype": prec.dtype,
            "dtype_reason": prec.reason,
            "args": vars(args),
        }
        meta["load_average_end"] = os.getloadavg()[0]  # a shared machine slows every engine
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
