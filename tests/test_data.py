"""GSM8K loading: real rows parse; every bad row is reported with file and line, never dropped."""

from __future__ import annotations

import json

import pytest

from agentic_gcpo.data import DataError, batches, load_problems
from agentic_gcpo.trainer import resolve_data_path


def test_shipped_subset_loads():
    probs = load_problems(resolve_data_path("builtin:gsm8k_train_500"))
    assert len(probs) == 500
    first = probs[0]
    assert first.reference == "72" and first.question.startswith("Natalia")
    assert "<<48/2=24>>" in first.solution and "####" not in first.solution


def _write(tmp_path, rows):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return p


@pytest.mark.parametrize(
    "row, message",
    [
        ({"question": "q"}, "d.jsonl:2: 'answer' must be a string"),
        ({"answer": "#### 3"}, "d.jsonl:2: missing or empty 'question'"),
        ({"question": "q", "answer": "no marker"}, "d.jsonl:2: 'answer' must be a string ending in '####"),
        ({"question": "q", "answer": "#### "}, "d.jsonl:2: nothing after '####'"),
        ("{not json", "d.jsonl:2: not valid JSON"),
        ("[1, 2]", "d.jsonl:2: row must be a JSON object"),
        ({"question": "q", "answer": "#### 1", "golden": "x"}, "d.jsonl:2: 'golden' must be a list"),
    ],
)
def test_bad_rows_name_their_line(tmp_path, row, message):
    p = _write(tmp_path, [{"question": "ok", "answer": "#### 1"}, row])
    with pytest.raises(DataError) as e:
        load_problems(p)
    assert message in str(e.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_problems(tmp_path / "none.jsonl")
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no rows"):
        load_problems(empty)


def test_reference_commas_and_limit(tmp_path):
    p = _write(tmp_path, [{"question": "q", "answer": "x\n#### 1,200"}] * 3)
    probs = load_problems(p, limit=2)
    assert [x.reference for x in probs] == ["1200", "1200"]
    assert probs[0].id != probs[1].id  # ids come from line numbers when rows have none


def test_batches_cover_an_epoch_without_repeats():
    from agentic_gcpo.data import Problem

    probs = [Problem(str(i), "q", "1") for i in range(10)]
    it = batches(probs, 5, seed=0)
    epoch = [p.id for b in (next(it), next(it)) for p in b]
    assert sorted(epoch) == sorted(p.id for p in probs)
    small = batches(probs[:2], 3, seed=0)
    assert len(next(small)) == 3  # fewer problems than a batch: repeat rather than stall
