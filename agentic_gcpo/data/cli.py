"""`agentic-gcpo data arith`: print or (re)write the generated arithmetic problems.

agentic-gcpo data arith --split test --size 5     # JSONL on stdout
agentic-gcpo data arith --split train --size 300 --seed 3 --out my_train.jsonl
agentic-gcpo data arith --write                    # regenerate builtin:arith_train / arith_val / arith_test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _arith(args: argparse.Namespace) -> int:
    from agentic_gcpo.data.arith import SIZES, generate, to_jsonl, write_builtin

    if args.write:
        if args.size is not None or args.seed is not None or args.out:
            print(
                "error: --write regenerates the shipped files; it takes no --size/--seed/--out",
                file=sys.stderr,
            )
            return 2
        for path in write_builtin():
            print(f"wrote {path}")
        return 0
    size = args.size if args.size is not None else SIZES[args.split]
    try:
        text = to_jsonl(generate(args.split, size, args.seed or 0))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {size} {args.split} problems to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _build(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_cmd", required=True)
    a = sub.add_parser(
        "arith", help="seeded multi-step arithmetic word problems (gsm8k rows; train/test split by hash)"
    )
    a.add_argument("--split", choices=["train", "test"], default="train")
    a.add_argument("--size", type=int, default=None, help="rows (default: the shipped size of the split)")
    a.add_argument("--seed", type=int, default=None, help="draw seed (default 0, the shipped files')")
    a.add_argument("--out", help="write JSONL here instead of stdout")
    a.add_argument(
        "--write", action="store_true", help="regenerate agentic_gcpo/assets/arith_{train,val,test}.jsonl"
    )
    a.set_defaults(fn=_arith)


def add_data_parser(subparsers: Any) -> None:
    """Add `data arith` to the main CLI's subparsers."""
    _build(subparsers.add_parser("data", help="generate built-in datasets"))


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m agentic_gcpo.data.cli arith ...`)."""
    p = argparse.ArgumentParser(prog="agentic-gcpo data")
    _build(p)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
