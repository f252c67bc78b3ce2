"""Eval throughput: how many problems reach the engine at once, and the engine's batch size.

    python bench/eval_speed.py --model RUN/checkpoints/final --problems 128
    python bench/eval_speed.py --settings 32:32,32:all,64:all --repeats 2

`evaluate` hands the agent loop `chunk` problems per call and the engine decodes at most
`max_batch_size` sequences together. Each call ends when its slowest trajectory ends, so while the
last few of a chunk finish, the batch runs part-empty; a chunk larger than the batch keeps it full
(the engine queues the rest). Each setting `B:C` (batch B, chunk C problems, `all` = every problem
in one call) evaluates the same greedy problems with the same limits as the learning bench's final
eval; settings are timed in interleaved rounds and each keeps its fastest. Greedy decoding should
give the same pass@1 in every setting, up to bf16 batch-company rounding (docs/notes.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentic_gcpo.config import load_config  # noqa: E402
from agentic_gcpo.data import load_problems  # noqa: E402
from agentic_gcpo.engines import make_engine  # noqa: E402
from agentic_gcpo.evaluate import make_chat, run_problems, summarise  # noqa: E402
from agentic_gcpo.models import load_named  # noqa: E402
from agentic_gcpo.rollout.agent_loop import AgentLoop, LoopLimits  # noqa: E402
from agentic_gcpo.sandbox import make_sandbox  # noqa: E402
from agentic_gcpo.tool_registry import get_tools  # noqa: E402


def parse_setting(s: str) -> tuple[int, int | None]:
    batch, _, chunk = s.partition(":")
    return int(batch), None if chunk == "all" else int(chunk or batch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded", help="embedded, tiny or a model directory")
    p.add_argument("--data", default="builtin:arith_test")
    p.add_argument("--problems", type=int, default=128)
    p.add_argument("--settings", default="32:32,32:all,64:all", help="comma-separated BATCH:CHUNK")
    p.add_argument(
        "--repeats", type=int, default=1, help="interleaved rounds; each setting keeps its fastest"
    )
    p.add_argument("--dtype", default=None, help="engine dtype (default: the config's, auto)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    cfg = load_config(REPO / "configs" / "embedded_gcpo.yaml", ["prompt.fewshot=0"])  # as bench/learning.py
    problems = load_problems(args.data, args.problems, "gsm8k")
    limits = LoopLimits.from_rollout(cfg.rollout, temperature=0.0, top_p=1.0)  # the final eval's
    model, tok = load_named(args.model)
    tools = get_tools(cfg.tools.names, cfg.tools.modules)
    chat = make_chat(tok, tools, cfg.prompt.call_format, cfg.prompt.system, 0)
    sandbox = make_sandbox(cfg.sandbox)
    settings = [parse_setting(s) for s in args.settings.split(",")]
    best: dict[str, dict] = {}
    try:
        for r in range(args.repeats):
            for batch, chunk in settings:
                name = f"batch {batch}, chunk {chunk or 'all'}"
                eng = make_engine(
                    "hf", model, tok, dtype=args.dtype or cfg.engine.dtype, max_batch_size=batch
                )
                loop = AgentLoop(eng, chat, tools, sandbox, limits)
                t0 = time.perf_counter()
                res = run_problems(loop, problems, 1, seed=0, chunk=chunk or len(problems))
                wall = time.perf_counter() - t0
                loop.close()
                m = summarise(res, 1, wall)
                row = dict(
                    wall_s=wall,
                    pass1=m["pass@1"],
                    tokens_per_s=m["time/generated_tokens_per_s"],
                    tokens=m["tokens/generated_per_problem"] * len(problems),
                )
                print(
                    f"round {r + 1} | {name}: {wall:.1f}s | pass@1 {row['pass1']:.3f} | "
                    f"{row['tokens_per_s']:.0f} tok/s",
                    flush=True,
                )
                if name not in best or wall < best[name]["wall_s"]:
                    best[name] = row
    finally:
        sandbox.close()
    base = next(iter(best.values()))["wall_s"]
    print(
        f"\n{len(problems)} problems of {args.data}, model {args.model}, greedy, "
        f"{cfg.rollout.max_turns} turns x {cfg.rollout.max_new_tokens_per_turn} tokens"
    )
    print("| setting | wall (s) | speed-up vs first | generated tok/s | pass@1 |")
    print("|---|---:|---:|---:|---:|")
    for name, row in best.items():
        print(
            f"| {name} | {row['wall_s']:.1f} | {base / row['wall_s']:.2f}x | {row['tokens_per_s']:.0f} | "
            f"{row['pass1']:.3f} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(dict(args=vars(args) | {"json": str(args.json)}, best=best), indent=2)
        )


if __name__ == "__main__":
    main()
