"""Seeded multi-step arithmetic word problems with disjoint train/test splits (docs/data.md).

A problem is one draw of a story template (`arith_templates.py`): 1-4 operations on numbers of
two to four digits, sometimes with a distractor sentence holding a number the answer does not
use. Rows are in the gsm8k format (`question`, `answer` = worked solution with `<<expr=value>>`
annotations + ``#### N``), so `load_problems` reads them and `golden.source: reference` builds
golden tool trajectories from them unchanged. Extra keys (`template`, `ops`, `distractor`) are
for analysis; the loader ignores them.

Splits are decided by a hash of a problem's canonical form (template id + operative numbers),
never by position or seed: a test problem cannot appear in any training set this module makes,
whatever the seed or size, and re-wording it (names, goods, distractor) does not move it.

`builtin:arith_train` / `builtin:arith_test` are `generate(split, SIZES[split], seed=0)`, written by
`agentic-gcpo data arith --write` (or `python -m agentic_gcpo.data.arith --write`).
`builtin:arith_val` (`validation()`) is the next VAL_SIZE train-partition rows of the same stream:
problems no shipped training row holds and no test row can hold, for choosing a learning rate or a
recipe without looking at the test split.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from random import Random
from typing import Any

from agentic_gcpo.data.arith_templates import (
    DISTRACTOR_RANGE,
    PERSON_DISTRACTORS,
    PLACE_DISTRACTORS,
    TEMPLATES,
    Story,
)
from agentic_gcpo.data.rows import ASSETS

SIZES = {"train": 2000, "test": 500}  # rows in the shipped files
TEST_PERCENT = 20  # share of canonical forms that belong to the test split
VAL_SIZE = 300  # rows of builtin:arith_val
SHIPPED_SEED = 0
DISTRACTOR_P = 0.5  # chance that a problem carries an irrelevant number


def canonical(template: str, numbers: tuple[int, ...]) -> str:
    """What makes two problems the same problem: the template and its operative numbers."""
    return f"{template}:{','.join(str(x) for x in numbers)}"


def split_of(template: str, numbers: tuple[int, ...]) -> str:
    """'train' or 'test', fixed for a canonical form by its hash (stable across Python runs)."""
    digest = hashlib.sha256(canonical(template, numbers).encode()).digest()
    return "test" if int.from_bytes(digest[:4], "big") % 100 < TEST_PERCENT else "train"


def _question(story: Story, rng: Random) -> tuple[str, bool]:
    sentences = list(story.context)
    distracted = rng.random() < DISTRACTOR_P
    if distracted:
        pool = PERSON_DISTRACTORS if story.person else PLACE_DISTRACTORS
        # An irrelevant number must not equal one the solution uses (a given or a step's result).
        used = {int(x) for x in re.findall(r"\d+", "\n".join(story.lines))}
        k = rng.randint(*DISTRACTOR_RANGE)
        while k in used:
            k = rng.randint(*DISTRACTOR_RANGE)
        # After the first sentence: the subject is introduced before a sentence talks about it.
        sentences.insert(rng.randint(1, len(sentences)), rng.choice(pool).format(who=story.who, k=k))
    return " ".join([*sentences, story.ask]), distracted


def generate(split: str, size: int, seed: int = 0) -> list[dict[str, Any]]:
    """`size` distinct problems of `split`; the same (split, size, seed) always gives the same rows.

    Row i has i % 4 + 1 operations, so every prefix (an eval `limit`) has an even difficulty mix.
    """
    if split not in SIZES:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SIZES)}")
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    rng = Random(f"arith/{split}/{seed}")  # a str seed is hashed deterministically (not PYTHONHASHSEED)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    draws = 0
    while len(rows) < size:
        ops = len(rows) % 4 + 1
        tid = rng.choice(list(TEMPLATES[ops]))
        story = None
        while story is None:  # a broken constraint: redraw the same template, so each stays equally likely
            draws += 1
            if draws > 100 * size + 1000:  # the templates' number ranges hold far more; a bug if hit
                raise RuntimeError(f"only {len(rows)} distinct {split} problems after {draws} draws")
            story = TEMPLATES[ops][tid](rng)
        key = canonical(tid, story.numbers)
        if key in seen or split_of(tid, story.numbers) != split:
            continue
        seen.add(key)
        question, distracted = _question(story, rng)
        rows.append(
            {
                "id": f"arith-{split}-{len(rows):04d}",
                "question": question,
                "answer": "\n".join(story.lines) + f"\n#### {story.answer}",
                "template": tid,
                "ops": ops,
                "distractor": distracted,
            }
        )
    return rows


def to_jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def validation(size: int = VAL_SIZE) -> list[dict[str, Any]]:
    """Validation rows: the train-partition problems drawn right after the shipped training rows.

    A larger size is a prefix of the same stream, so these rows are distinct from every shipped
    training row (the generator drops repeats) and, being of the train partition, from every test row.
    """
    n = SIZES["train"]
    rows = generate("train", n + size, SHIPPED_SEED)[n:]
    return [row | {"id": f"arith-val-{i:04d}"} for i, row in enumerate(rows)]


def shipped_text(split: str) -> str:
    """The exact content of the shipped `arith_<split>.jsonl` (split: train, val or test)."""
    if split == "val":
        return to_jsonl(validation())
    return to_jsonl(generate(split, SIZES[split], SHIPPED_SEED))


def write_builtin(assets: Path = ASSETS) -> list[Path]:
    """(Re)write `builtin:arith_{train,val,test}`; returns the paths written."""
    paths = []
    for split in ("train", "val", "test"):
        path = assets / f"arith_{split}.jsonl"
        path.write_text(shipped_text(split), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    import sys

    from agentic_gcpo.data.cli import main

    sys.exit(main(["arith", *sys.argv[1:]]))
