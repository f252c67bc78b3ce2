"""`agentic-gcpo eval` and `agentic-gcpo plot`: thin shells over `evaluate` / `report` / `plot`.

`add_eval_parsers(subparsers)` adds both subcommands to the main CLI; `run_eval_cli(argv)` runs
them standalone (tests, `python -m agentic_gcpo.eval_cli`). Errors a user can fix (a missing file,
a bad row, an unknown tool) print one line and return 2; they never show a traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from agentic_gcpo.data import FORMATS


def _eval(args: argparse.Namespace) -> int:
    from agentic_gcpo.data import DataError, load_problems
    from agentic_gcpo.evaluate import evaluate
    from agentic_gcpo.models import ModelLoadError
    from agentic_gcpo.report import write_results
    from agentic_gcpo.rollout.agent_loop import LoopLimits
    from agentic_gcpo.sandbox import SandboxConfig
    from agentic_gcpo.tool_registry import ToolLoadError

    fields = {}
    for item in args.field or []:
        role, _, key = item.partition("=")
        if not key:
            print(f"error: --field '{item}' is not ROLE=KEY (e.g. question=prompt)", file=sys.stderr)
            return 2
        fields[role.strip()] = key.strip()
    # Greedy is the honest single-sample number; k > 1 needs diversity to mean anything.
    temperature = args.temperature if args.temperature is not None else (0.0 if args.k == 1 else 0.7)
    tools = [] if args.no_tools else [t.strip() for t in args.tools.split(",") if t.strip()]
    try:
        problems = load_problems(args.data, args.limit, args.format, fields or None)
        limits = LoopLimits(
            max_turns=args.max_turns,
            max_new_tokens_per_turn=args.max_new_tokens,
            max_total_tokens=args.max_total_tokens,
            temperature=temperature,
            top_p=args.top_p,
        )
        out = Path(
            args.out or f"runs/eval-{Path(args.data).stem.replace(':', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        print(f"evaluating {len(problems)} problems from {args.data} (k={args.k}); output: {out}", flush=True)
        result = evaluate(
            args.model,
            problems,
            k=args.k,
            tools=tools,
            limits=limits,
            tool_modules=args.tool_module,
            sandbox_cfg=SandboxConfig(timeout_s=args.tool_timeout, cpu_time_s=args.tool_timeout),
            dtype=args.dtype,
            max_batch_size=args.batch_size,
            call_format=args.call_format,
            fewshot=args.fewshot,
            seed=args.seed,
            verify_timeout_s=args.verify_timeout,
            extract_modes=args.extract.split(",") if args.extract else None,
            progress=not args.no_progress,
        )
    except (DataError, ModelLoadError, ToolLoadError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    argv = getattr(args, "argv", None)
    argv = argv if argv is not None else sys.argv[2:]  # wired into the main CLI: argv[1] is "eval"
    result.settings["command"] = "agentic-gcpo eval " + shlex.join(argv)
    result.settings["data"] = str(args.data)
    result.settings["format"] = args.format
    paths = write_results(result, out, args.failures, f"Evaluation of {args.model} on {Path(args.data).name}")
    m = result.metrics
    k = args.k
    head = f"pass@1 {m['pass@1']:.4f}" + (
        f" | pass@{k} {m[f'pass@{k}']:.4f} | maj@{k} {m[f'maj@{k}']:.4f}" if k > 1 else ""
    )
    print(
        f"{head} | tool calls/traj {m.get('tools/calls_per_traj', 0):.2f} | "
        f"tool errors {m.get('tools/error_rate', 0):.3f} | {m.get('time/wall_s', 0):.0f}s",
        flush=True,
    )
    print("wrote " + "  ".join(str(p) for p in paths.values()), flush=True)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from agentic_gcpo.plot import PlotError, plot_run

    try:
        paths = plot_run(args.run_dir, args.out)
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("wrote " + "  ".join(str(p) for p in paths), flush=True)
    return 0


def add_eval_parsers(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="evaluate a model on a JSONL benchmark (pass@k, maj@k, tool use)")
    e.add_argument("--model", required=True, help="'embedded', 'tiny', or a transformers model directory")
    e.add_argument(
        "--data",
        required=True,
        help="JSONL file, or builtin:NAME (arith_train, arith_val, arith_test, gsm8k_train_500, ...)",
    )
    e.add_argument("--format", default="gsm8k", choices=FORMATS, help="row shape (default gsm8k)")
    e.add_argument(
        "--field", action="append", metavar="ROLE=KEY", help="remap a column, e.g. --field question=input"
    )
    e.add_argument("--limit", type=int, default=None, help="first N rows only")
    e.add_argument("--k", type=int, default=1, help="samples per problem (pass@k, maj@k)")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--tools", default="python", help="comma-separated tool names (default python)")
    g.add_argument("--no-tools", action="store_true", help="offer no tools: plain chain-of-thought")
    e.add_argument("--tool-module", action="append", default=[], help="module or .py file registering tools")
    e.add_argument("--tool-timeout", type=float, default=5.0, help="seconds per tool call")
    e.add_argument("--out", default=None, help="output folder (default runs/eval-<data>-<time>)")
    e.add_argument("--max-turns", type=int, default=3)
    e.add_argument("--max-new-tokens", type=int, default=256, help="per assistant turn")
    e.add_argument("--max-total-tokens", type=int, default=1024, help="whole trajectory incl. prompt")
    e.add_argument("--temperature", type=float, default=None, help="default: 0 (greedy) for k=1, else 0.7")
    e.add_argument("--top-p", type=float, default=1.0)
    e.add_argument("--fewshot", type=int, default=0, choices=range(4), help="worked tool examples (0-3)")
    e.add_argument("--call-format", default="auto", choices=("auto", "fenced", "json"))
    e.add_argument("--batch-size", type=int, default=32, help="sequences per engine call")
    e.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "bfloat16", "float32"),
        help="sampling dtype; auto: bf16 only where the hardware has native bf16",
    )
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--extract", default=None, help="extraction modes in order, e.g. boxed,answer_is")
    e.add_argument("--verify-timeout", type=float, default=2.0, help="seconds per answer comparison")
    e.add_argument("--failures", type=int, default=5, help="worst failures shown in report.md")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(fn=_eval)
    p = sub.add_parser("plot", help="draw a run's training curves (metrics.jsonl) to PNG")
    p.add_argument("run_dir", help="run directory holding metrics.jsonl")
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/curves.png)")
    p.set_defaults(fn=_plot)


def run_eval_cli(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="agentic-gcpo")
    add_eval_parsers(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    args.argv = argv[1:]
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(run_eval_cli())
