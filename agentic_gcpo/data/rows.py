"""Problems from JSONL files. A bad row is reported with its line number, never silently dropped.

Row shapes (``fmt``), each with default field names that ``fields`` can remap:

- ``gsm8k``: ``{"question", "answer": "<worked solution>\\n#### 72"}``; the number after ``####`` is
  the reference, the text before it the worked solution golden trajectories are built from.
- ``math`` (MATH / MATH-500 style): ``{"problem", "solution": "... \\boxed{ans} ...", "answer"?}``;
  the reference is ``answer`` when present, else the last ``\\boxed{}`` of the solution.
- ``aime`` (AIME / AMC style): ``{"question" (or "problem"), "answer"}``; numeric answers are fine.
- ``svamp``: ``{"Body", "Question", "Answer"}``; the question shown is Body + " " + Question.
- ``generic``: ``{"prompt", "answer"}``.

``fields`` maps a role (question, answer, solution, body, id) to the row's key, e.g.
``{"question": "input", "answer": "target"}`` reads a generic file with other column names.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("gsm8k", "math", "aime", "svamp", "generic")
ROLES = ("question", "answer", "solution", "body", "id")

# Default keys per format and role; a tuple lists alternatives tried in order (the first present wins).
DEFAULT_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "gsm8k": {"question": ("question",), "answer": ("answer",), "id": ("id",)},
    "math": {
        "question": ("problem", "question"),
        "answer": ("answer",),
        "solution": ("solution",),
        "id": ("unique_id", "id"),
    },
    "aime": {
        "question": ("question", "problem"),
        "answer": ("answer",),
        "solution": ("solution",),
        "id": ("id", "ID"),
    },
    "svamp": {"body": ("Body",), "question": ("Question",), "answer": ("Answer",), "id": ("ID", "id")},
    "generic": {"question": ("prompt",), "answer": ("answer",), "solution": ("solution",), "id": ("id",)},
}


class DataError(ValueError):
    """A dataset row or file that cannot be used; the message names the file and line."""


@dataclass
class Problem:
    id: str
    question: str
    reference: str  # the final answer, e.g. "72"
    solution: str = ""  # worked solution text, if the dataset has one
    golden: list[dict[str, Any]] | None = field(default=None)  # optional message list from the row


def _golden(row: dict[str, Any], where: str) -> list[dict[str, Any]] | None:
    golden = row.get("golden")
    if golden is not None and not (isinstance(golden, list) and all(isinstance(m, dict) for m in golden)):
        raise DataError(f"{where}: 'golden' must be a list of message objects")
    return golden


def parse_gsm8k_row(row: Any, where: str, fields: dict[str, str] | None = None) -> Problem:
    if not isinstance(row, dict):
        raise DataError(f"{where}: row must be a JSON object, got {type(row).__name__}")
    qk, ak = (fields or {}).get("question", "question"), (fields or {}).get("answer", "answer")
    q, a = row.get(qk), row.get(ak)
    if not isinstance(q, str) or not q.strip():
        raise DataError(f"{where}: missing or empty '{qk}'")
    if not isinstance(a, str) or "####" not in a:
        raise DataError(f"{where}: '{ak}' must be a string ending in '#### <number>' (GSM8K format)")
    solution, ref = a.rsplit("####", 1)
    ref = ref.strip().replace(",", "")
    if not ref:
        raise DataError(f"{where}: nothing after '####' in '{ak}'")
    idk = (fields or {}).get("id", "id")
    return Problem(str(row.get(idk, where)), q.strip(), ref, solution.strip(), _golden(row, where))


def _answer_text(value: Any) -> str | None:
    """A reference as text: 27.0 -> '27' (SVAMP stores floats), strings stripped; None if unusable."""
    if isinstance(value, bool):
        return None  # true/false is never a math reference; most likely a wrong column
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


class _Row:
    """Field lookup for one row under a format's defaults and the user's mapping."""

    def __init__(self, row: Any, fmt: str, fields: dict[str, str] | None, where: str) -> None:
        if not isinstance(row, dict):
            raise DataError(f"{where}: row must be a JSON object, got {type(row).__name__}")
        self.row, self.where = row, where
        self.keys = dict(DEFAULT_FIELDS[fmt])
        for role, key in (fields or {}).items():
            self.keys[role] = (key,)

    def get(self, role: str) -> tuple[str, Any]:
        """(key used, value); the value is None when no candidate key is present."""
        cands = self.keys.get(role, ())
        for k in cands:
            if k in self.row and self.row[k] is not None:
                return k, self.row[k]
        return "' or '".join(cands) or role, None

    def text(self, role: str) -> str:
        key, v = self.get(role)
        if not isinstance(v, str) or not v.strip():
            raise DataError(f"{self.where}: missing or empty '{key}'")
        return v.strip()


def _fill(p: Problem, r: _Row) -> Problem:
    _, rid = r.get("id")
    if rid is not None:
        p.id = str(rid)
    p.golden = _golden(r.row, r.where)
    return p


def parse_row(row: Any, where: str, fmt: str = "gsm8k", fields: dict[str, str] | None = None) -> Problem:
    """One row of any supported format as a Problem; DataError (naming `where`) if it is unusable."""
    if fmt == "gsm8k":
        return parse_gsm8k_row(row, where, fields)
    if fmt not in FORMATS:
        raise DataError(f"unknown dataset format '{fmt}'; valid: {', '.join(FORMATS)}")
    r = _Row(row, fmt, fields, where)
    if fmt == "svamp":
        question = f"{r.text('body')} {r.text('question')}".strip()
    else:
        question = r.text("question")
    akey, raw = r.get("answer")
    solution = ""
    if "solution" in r.keys:
        skey, sol = r.get("solution")
        if sol is not None and not isinstance(sol, str):
            raise DataError(f"{where}: '{skey}' must be a string")
        solution = (sol or "").strip()
    ref = _answer_text(raw)
    if raw is not None and ref is None:
        raise DataError(f"{where}: '{akey}' must be a non-empty string or a number, got {raw!r:.60}")
    if ref is None and fmt == "math" and solution:
        from agentic_gcpo.verify.extract import last_boxed  # MATH keeps its answer in the solution

        ref = last_boxed(solution) or None
        if ref is None:
            raise DataError(f"{where}: no '{akey}' and no \\boxed{{}} answer in the solution")
    if ref is None:
        raise DataError(f"{where}: missing '{akey}'")
    return _fill(Problem(where, question, ref, solution), r)


ASSETS = Path(__file__).resolve().parents[1] / "assets"


def resolve_data_path(path: str | Path) -> Path:
    """'builtin:NAME' -> the shipped asset; relative paths resolve against the CWD, then the repo root.

    An unknown built-in name raises DataError listing the valid ones."""
    path = str(path)
    if path.startswith("builtin:"):
        name = path.split(":", 1)[1]
        asset = ASSETS / f"{name}.jsonl"
        if not asset.is_file():
            valid = ", ".join(f"builtin:{a.stem}" for a in sorted(ASSETS.glob("*.jsonl")))
            raise DataError(f"unknown built-in dataset '{path}'; valid: {valid}")
        return asset
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    repo = Path(__file__).resolve().parents[2]
    return repo / p if (repo / p).exists() else p


def load_problems(
    path: str | Path,
    limit: int | None = None,
    fmt: str = "gsm8k",
    fields: dict[str, str] | None = None,
) -> list[Problem]:
    """Read every row; raise DataError naming the first bad line (fix the file rather than lose rows).

    `path` may name a shipped dataset as 'builtin:NAME' (arith_train, arith_val, arith_test, ...)."""
    p = resolve_data_path(path)
    if not p.is_file():
        raise DataError(f"dataset '{p}' not found")
    if fmt not in FORMATS:
        raise DataError(f"unknown dataset format '{fmt}'; valid: {', '.join(FORMATS)}")
    bad_roles = sorted(set(fields or {}) - set(ROLES))
    if bad_roles:
        raise DataError(f"unknown field role(s) {', '.join(bad_roles)}; valid: {', '.join(ROLES)}")
    out: list[Problem] = []
    seen: set[str] = set()
    with p.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{p.name}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg})") from None
            prob = parse_row(row, where, fmt, fields)
            # Ids come from line numbers when rows have none (or repeat one): results are per problem.
            if prob.id == where or prob.id in seen:
                prob.id = f"{p.stem}-{n}"
            seen.add(prob.id)
            out.append(prob)
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise DataError(f"dataset '{p}' has no rows")
    return out


class ProblemStream:
    """Endless stream of problem batches; a new seeded permutation each epoch.

    Resumable: `state_dict()` is (epoch, batches taken in it) and `load_state_dict` rebuilds the
    stream at exactly that point by replaying the epochs' seeded shuffles (cheap next to a step),
    so a resumed run draws the same problems, in the same order, as an uninterrupted one."""

    def __init__(self, problems: list[Problem], batch_size: int, seed: int, shuffle: bool = True) -> None:
        if not problems:
            raise DataError("no problems to draw batches from")
        self.problems, self.batch_size, self.seed, self.shuffle = problems, batch_size, seed, shuffle
        self._rng = random.Random(seed)
        self.epoch, self.index = -1, 0  # index: batches taken from the current epoch's order
        self._order: list[int] = []
        self._next_epoch()

    def _next_epoch(self) -> None:
        order = list(range(len(self.problems)))
        if self.shuffle:
            self._rng.shuffle(order)
        self._order, self.epoch, self.index = order, self.epoch + 1, 0

    def _per_epoch(self) -> int:
        return max(1, len(self._order) // self.batch_size)

    def __iter__(self) -> ProblemStream:
        return self

    def __next__(self) -> list[Problem]:
        if self.index >= self._per_epoch():
            self._next_epoch()
        k, order = self.index * self.batch_size, self._order
        self.index += 1
        if len(order) < self.batch_size:  # fewer problems than a batch: repeat them
            return [self.problems[order[i % len(order)]] for i in range(self.batch_size)]
        return [self.problems[i] for i in order[k : k + self.batch_size]]

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is, plus what it was built from (so a changed dataset is caught)."""
        return {
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "problem_ids": _ids_digest(self.problems),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state` was taken; DataError if the stream was built differently."""
        mine = self.state_dict()
        differ = [k for k in ("seed", "batch_size", "shuffle", "problem_ids") if state.get(k) != mine[k]]
        if differ:
            raise DataError(
                f"the saved data position does not fit this dataset ({', '.join(differ)} differ): the "
                "problems, their order or the batch size changed since the checkpoint was written"
            )
        self._rng = random.Random(self.seed)
        self.epoch = -1
        for _ in range(int(state["epoch"]) + 1):
            self._next_epoch()
        self.index = int(state["index"])


def _ids_digest(problems: list[Problem]) -> str:
    import hashlib

    h = hashlib.sha1()
    for p in problems:
        h.update(p.id.encode() + b"\0" + p.question.encode() + b"\0")
    return h.hexdigest()[:16]


def batches(problems: list[Problem], batch_size: int, seed: int, shuffle: bool = True) -> ProblemStream:
    """Endless stream of problem batches; a new seeded permutation each epoch (see ProblemStream)."""
    return ProblemStream(problems, batch_size, seed, shuffle)
