"""Rollout benchmark: the multi-turn agent loop (tools on) against plain batched `generate`.

    python bench/rollout.py                       # embedded SmolLM2, 8 problems x G=4, auto dtype
    python bench/rollout.py --dtype float32 --problems 4 --group-size 4     # smaller / forced dtype

Everything below runs in one process on the machine at hand, so the ratios compare like with like:

1. `agent loop`: our AgentLoop over the HF engine with the python tool in the local sandbox,
   multi-turn (up to --max-turns), 3 worked tool-using examples in the prompt so the untrained
   model really writes code. Rate = sampled tokens / wall time, tool execution included.
   Run twice with the same seeds: continuously batched (a turn whose tool result is back joins
   the running decode batch) and turn-synchronous (each round of turns waits for its slowest row).
2. `engine`: the same engine, one turn, no tools, same first-turn prompts (what the loop costs
   over the bare engine).
3. `plain generate`: transformers' `model.generate` on the same prompts, sampling, same
   per-turn token limit, the model in the same dtype (a bf16 copy when bf16, so it gets the best
   case). Rate = tokens up to and including each row's end-of-turn token / wall time.
4. `matmul limit`: the dtype's measured GEMM throughput on this CPU at this model's shapes, and
   the FLOPs the loop achieved (2 x parameters per generated token, attention ignored) against it.

`--repeats N` runs 1 and 3 N times, interleaved (sync loop, continuous loop, plain generate, then
again), and reports each repeat's ratios and their median: on a small shared VM the rate drifts by
~10 % between minutes, and pairing each loop run with a plain run taken right after it keeps that
drift out of the ratio.

Prints the CPU model and flags, the chosen dtype and why, and the ratios; `--json` writes them.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentic_gcpo.data import load_problems  # noqa: E402
from agentic_gcpo.engines import SamplingParams, make_engine  # noqa: E402
from agentic_gcpo.models import load_named  # noqa: E402
from agentic_gcpo.precision import cpu_description, resolve  # noqa: E402
from agentic_gcpo.rollout.agent_loop import AgentLoop, LoopLimits  # noqa: E402
from agentic_gcpo.rollout.chat import ChatFormat  # noqa: E402
from agentic_gcpo.sandbox import SandboxConfig, make_sandbox  # noqa: E402
from agentic_gcpo.tool_registry import get_tools  # noqa: E402


def matmul_flops(dtype: torch.dtype, hidden: int, inner: int, rows: int = 512, seconds: float = 1.0) -> float:
    """Sustained FLOP/s of [rows, hidden] @ [hidden, inner] in `dtype` on this CPU."""
    a, w = torch.randn(rows, hidden).to(dtype), torch.randn(hidden, inner).to(dtype)
    a @ w
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ w
        n += 1
    return 2 * rows * hidden * inner * n / (time.perf_counter() - t0)


def plain_generate(m, tok, prompts, max_new, temperature, eos_ids, pad_id) -> tuple[int, float]:
    """transformers' generate on left-padded prompts; returns (useful tokens, seconds)."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :], attn[i, T - len(p) :] = torch.tensor(p), 1
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = m.generate(
            input_ids=ids,
            attention_mask=attn,
            do_sample=True,
            temperature=temperature,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max_new,
            eos_token_id=eos_ids,
            pad_token_id=pad_id,
        )
    secs = time.perf_counter() - t0
    useful = 0
    for row in out[:, T:].tolist():
        end = next((k for k, t in enumerate(row) if t in eos_ids), len(row) - 1)
        useful += end + 1
    return useful, secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=192, help="per turn")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--fewshot", type=int, default=3)
    ap.add_argument("--data", default="builtin:gsm8k_train_500", help="problems file or builtin:NAME")
    ap.add_argument("--admit-every", type=int, default=8, help="engine: decode steps between admissions")
    ap.add_argument("--compact-at", type=float, default=None, help="engine: finished share before compaction")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved loop/plain pairs; median reported")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")

    prec = resolve(args.dtype)
    print(f"cpu: {cpu_description()}\ntorch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"dtype: {prec.dtype} ({prec.reason})")
    model, tok = load_named(args.model)
    model.eval()
    tools = get_tools(["python"])
    chat = ChatFormat(tok, tools, "auto", None, args.fewshot)
    problems = load_problems(args.data, args.problems)
    G, n_rows = args.group_size, args.problems * args.group_size
    prompts = [chat.prompt_ids(p.question) for p in problems for _ in range(G)]
    print(f"{args.problems} problems x G={G}; prompt tokens {len(prompts[0])}..{max(map(len, prompts))}")

    engine = make_engine("hf", model, tok, dtype=prec.dtype, max_batch_size=n_rows)
    engine.admit_every = args.admit_every
    if args.compact_at is not None:
        engine.compact_at = args.compact_at
    limits = LoopLimits(args.max_turns, args.max_new_tokens, 4096, args.temperature, 1.0, 8)
    sandbox = make_sandbox(SandboxConfig())
    loop = AgentLoop(engine, chat, tools, sandbox, limits)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    plain_model = model if next(model.parameters()).dtype == prec.torch_dtype else copy.deepcopy(model)
    plain_model = plain_model.to(prec.torch_dtype).eval()
    reps = []
    try:
        # warm-up: sandbox pool, oneDNN kernels, first-call allocations
        loop.run(problems[:1], 2, seed=123)
        for rep in range(args.repeats):
            # The same loop, turn-synchronous (every turn waits for the round's slowest row and tool
            # call before the next round starts): what continuous batching gains, measured here.
            engine.update_weights(None)
            engine.continuous = False
            t0 = time.perf_counter()
            sync_trajs = loop.run(problems, G, seed=0)
            sync_s = time.perf_counter() - t0
            engine.continuous = True
            engine.update_weights(None)
            t0 = time.perf_counter()
            trajs = loop.run(problems, G, seed=0)
            loop_s = time.perf_counter() - t0
            plain_tokens, plain_s = plain_generate(
                plain_model, tok, prompts, args.max_new_tokens, args.temperature, list(chat.eos_ids), pad
            )
            sync_tokens = sum(t.num_policy_tokens for t in sync_trajs)
            loop_tokens = sum(t.num_policy_tokens for t in trajs)
            r = dict(
                loop_tok_s=loop_tokens / loop_s,
                turn_sync_tok_s=sync_tokens / sync_s,
                plain_tok_s=plain_tokens / plain_s,
            )
            r["loop_over_plain"] = r["loop_tok_s"] / r["plain_tok_s"]
            r["turn_sync_over_plain"] = r["turn_sync_tok_s"] / r["plain_tok_s"]
            reps.append(r)
            print(
                f"repeat {rep + 1}: loop {r['loop_tok_s']:.1f} tok/s ({loop_tokens} tokens), turn-sync "
                f"{r['turn_sync_tok_s']:.1f} ({sync_tokens}), plain generate {r['plain_tok_s']:.1f} "
                f"({plain_tokens}) -> loop/plain {r['loop_over_plain']:.2f}, sync/plain "
                f"{r['turn_sync_over_plain']:.2f}",
                flush=True,
            )
    finally:
        loop.close()
        sandbox.close()
    calls = sum(len(t.tool_calls) for t in trajs)
    turns = sum(t.num_turns for t in trajs)
    cache = engine.cache
    print(
        f"agent loop (last repeat): {turns} turns, {calls} tool calls, "
        f"{sum(bool(t.tool_calls) for t in trajs)}/{n_rows} trajectories with a call; "
        f"prefix cache: {cache.hits} hits, {cache.reused_tokens} prefill tokens reused"
    )

    params = [
        SamplingParams(args.max_new_tokens, args.temperature, 1.0, [], list(chat.eos_ids), seed=i)
        for i in range(n_rows)
    ]
    engine.update_weights(None)
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params)
    eng_s = time.perf_counter() - t0
    eng_tokens = sum(len(o.token_ids) for o in outs)
    print(f"engine, 1 turn: {eng_tokens} tokens in {eng_s:.1f} s = {eng_tokens / eng_s:.1f} tok/s")
    med = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
    loop_rate = med["loop_tok_s"]

    cfg = model.config
    peak = matmul_flops(prec.torch_dtype, cfg.hidden_size, cfg.intermediate_size)
    n_params = sum(p.numel() for p in model.parameters())
    achieved = 2 * n_params * loop_rate
    res = {
        "cpu": cpu_description(),
        "dtype": prec.dtype,
        "dtype_reason": prec.reason,
        "rows": n_rows,
        "agent_loop_tok_s": loop_rate,
        "agent_loop_turn_sync_tok_s": med["turn_sync_tok_s"],
        "admit_every": args.admit_every,
        "compact_at": engine.compact_at,
        "engine_tok_s": eng_tokens / eng_s,
        "plain_generate_tok_s": med["plain_tok_s"],
        "repeats": reps,
        "tool_calls": calls,
        "turns": turns,
        "prefix_cache_reused_tokens": cache.reused_tokens,
        "matmul_gflops": peak / 1e9,
        "loop_gflops": achieved / 1e9,
    }
    res["loop_over_plain"] = med["loop_over_plain"]  # median of the paired ratios
    res["engine_over_plain"] = res["engine_tok_s"] / res["plain_generate_tok_s"]
    res["turn_sync_over_plain"] = med["turn_sync_over_plain"]
    res["loop_over_matmul_limit"] = achieved / peak
    print(
        f"\nmedians over {len(reps)} repeat(s) of the paired ratios:\n"
        f"agent loop / plain generate = {res['loop_over_plain']:.2f}   (target >= 0.9)\n"
        f"turn-synchronous / plain    = {res['turn_sync_over_plain']:.2f}\n"
        f"engine / plain generate     = {res['engine_over_plain']:.2f}\n"
        f"agent loop / matmul limit   = {res['loop_over_matmul_limit']:.3f}  "
        f"({res['loop_gflops']:.1f} of {res['matmul_gflops']:.0f} GFLOP/s in {prec.dtype}; decode is "
        "bound by memory traffic, not FLOPs, at these batch sizes)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
