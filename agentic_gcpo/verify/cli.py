"""`agentic-gcpo verify CANDIDATE REFERENCE [--explain]`: the reward's verdict on one pair, and why."""

from __future__ import annotations

import argparse
from typing import Any

from agentic_gcpo.verify.core import check_modes, verify


def add_verify_parser(subparsers: Any) -> None:
    """Add `verify` to the main CLI's subparsers."""
    v = subparsers.add_parser(
        "verify",
        help="is a model's answer equivalent to the reference? (the reward; exit 0 if correct, 1 if not)",
        description="Extract the final answer from CANDIDATE (model text or a bare answer) and compare "
        "it with REFERENCE exactly as the training reward does. Exit status 0: correct, 1: not.",
    )
    v.add_argument("candidate", help=r"model output or answer, e.g. '\boxed{\frac12}' or 'x > 3'")
    v.add_argument("reference", help="reference answer (a full GSM8K solution is cut after ####)")
    v.add_argument(
        "--explain", action="store_true", help="print each step: extraction, rules, forms, checker"
    )
    v.add_argument(
        "--timeout", type=float, default=2.0, help="deadline in seconds (default 2, as in training)"
    )
    v.add_argument(
        "--extract",
        default=None,
        help="extraction modes in order, comma-separated (boxed,answer_is,gsm8k,last_number); default all",
    )
    v.set_defaults(fn=_verify)


def _verify(args: argparse.Namespace) -> int:
    try:
        modes = check_modes(args.extract.split(",")) if args.extract else None
    except ValueError as e:
        print(f"error: {e}")
        return 2
    notes: list[str] = []
    result = verify(args.candidate, args.reference, timeout_s=args.timeout, modes=modes, notes=notes)
    verdict = "correct" if result.correct else "wrong"
    print(f"{verdict} (reason: {result.reason}; decided by: {result.rule})")
    if args.explain:
        if result.extracted is None:
            notes.insert(0, "extracted answer: none (no \\boxed{}, 'the answer is', '####' or number found)")
        for line in notes:
            print(f"  {line}")
    return 0 if result.correct else 1
