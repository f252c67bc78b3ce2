"""Problems from JSONL files. A bad row is reported with its line number, never silently dropped.

GSM8K rows are `{"question": ..., "answer": "<worked solution>\\n#### 72"}`; the number after
`####` is the reference, the text before it is the worked solution that golden trajectories are
built from.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A dataset row or file that cannot be used; the message names the file and line."""


@dataclass
class Problem:
    id: str
    question: str
    reference: str  # the final answer, e.g. "72"
    solution: str = ""  # worked solution text, if the dataset has one
    golden: list[dict[str, Any]] | None = field(default=None)  # optional message list from the row


def parse_gsm8k_row(row: Any, where: str) -> Problem:
    if not isinstance(row, dict):
        raise DataError(f"{where}: row must be a JSON object, got {type(row).__name__}")
    q, a = row.get("question"), row.get("answer")
    if not isinstance(q, str) or not q.strip():
        raise DataError(f"{where}: missing or empty 'question'")
    if not isinstance(a, str) or "####" not in a:
        raise DataError(f"{where}: 'answer' must be a string ending in '#### <number>' (GSM8K format)")
    solution, ref = a.rsplit("####", 1)
    ref = ref.strip().replace(",", "")
    if not ref:
        raise DataError(f"{where}: nothing after '####' in 'answer'")
    golden = row.get("golden")
    if golden is not None and not (isinstance(golden, list) and all(isinstance(m, dict) for m in golden)):
        raise DataError(f"{where}: 'golden' must be a list of message objects")
    return Problem(str(row.get("id", where)), q.strip(), ref, solution.strip(), golden)


def load_problems(path: str | Path, limit: int | None = None, fmt: str = "gsm8k") -> list[Problem]:
    """Read every row; raise DataError naming the first bad line (fix the file rather than lose rows)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"dataset '{p}' not found")
    if fmt != "gsm8k":
        raise DataError(f"unknown dataset format '{fmt}'; valid: gsm8k")
    out: list[Problem] = []
    with p.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{p.name}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg})") from None
            prob = parse_gsm8k_row(row, where)
            if "id" not in row:
                prob.id = f"{p.stem}-{n}"
            out.append(prob)
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise DataError(f"dataset '{p}' has no rows")
    return out


def batches(
    problems: list[Problem], batch_size: int, seed: int, shuffle: bool = True
) -> Iterator[list[Problem]]:
    """Endless stream of problem batches; a new seeded permutation each epoch."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(problems)))
        if shuffle:
            rng.shuffle(order)
        for k in range(0, len(order) - batch_size + 1, batch_size):
            yield [problems[i] for i in order[k : k + batch_size]]
        if len(order) < batch_size:  # fewer problems than a batch: repeat them
            yield [problems[order[i % len(order)]] for i in range(batch_size)]
