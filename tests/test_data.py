"""GSM8K loading: real rows parse; every bad row is reported with file and line, never dropped."""

from __future__ import annotations

import json

import pytest

from agentic_gcpo.data import DataError, batches, load_problems


def test_shipped_subset_loads():
    probs = load_problems("builtin:gsm8k_train_500")
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


def test_builtin_names_load_and_unknown_ones_list_the_valid(tmp_path):
    val = load_problems("builtin:arith_val", limit=3)
    assert [p.id for p in val] == ["arith-val-0000", "arith-val-0001", "arith-val-0002"]
    with pytest.raises(DataError) as e:
        load_problems("builtin:arith_vall")
    assert "unknown built-in dataset 'builtin:arith_vall'" in str(e.value)
    assert all(f"builtin:{n}" in str(e.value) for n in ("arith_train", "arith_val", "arith_test"))


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


# --- the other benchmark shapes -------------------------------------------------------------------

GOOD = {
    "math": {"problem": "Find x.", "solution": "So $x = \\boxed{\\frac{1}{2}}$.", "unique_id": "m1"},
    "aime": {"problem": "AIME problem", "answer": 33, "id": 7},
    "svamp": {"Body": "Tom has 3 apples.", "Question": "How many now?", "Answer": 5.0, "ID": "s1"},
    "generic": {"prompt": "What is 1+1?", "answer": "2"},
}


@pytest.mark.parametrize(
    ("fmt", "question", "reference", "pid"),
    [
        ("math", "Find x.", "\\frac{1}{2}", "m1"),  # reference from the solution's last \boxed{}
        ("aime", "AIME problem", "33", "7"),  # numeric answers become text; 'problem' is accepted
        ("svamp", "Tom has 3 apples. How many now?", "5", "s1"),  # Body + Question; 5.0 -> "5"
        ("generic", "What is 1+1?", "2", "d-1"),  # no id: file stem + line number
    ],
)
def test_formats_parse(tmp_path, fmt, question, reference, pid):
    probs = load_problems(_write(tmp_path, [GOOD[fmt]]), fmt=fmt)
    assert (probs[0].question, probs[0].reference, probs[0].id) == (question, reference, pid)


def test_math_answer_field_wins_over_the_boxed_solution(tmp_path):
    row = {"problem": "p", "solution": "\\boxed{3}", "answer": "4"}
    assert load_problems(_write(tmp_path, [row]), fmt="math")[0].reference == "4"
    svamp = {"Body": "b", "Question": "q", "Answer": 2.5}
    assert load_problems(_write(tmp_path, [svamp]), fmt="svamp")[0].reference == "2.5"


@pytest.mark.parametrize(
    ("fmt", "row", "message"),
    [
        ("math", {"solution": "\\boxed{1}"}, "d.jsonl:2: missing or empty 'problem' or 'question'"),
        ("math", {"problem": "p", "solution": "no box"}, "d.jsonl:2: no 'answer' and no \\boxed{} answer"),
        ("math", {"problem": "p"}, "d.jsonl:2: missing 'answer'"),
        ("math", {"problem": "p", "solution": 5, "answer": "1"}, "d.jsonl:2: 'solution' must be a string"),
        ("aime", {"question": "q"}, "d.jsonl:2: missing 'answer'"),
        ("aime", {"answer": 3}, "d.jsonl:2: missing or empty 'question' or 'problem'"),
        (
            "aime",
            {"question": "q", "answer": ""},
            "d.jsonl:2: 'answer' must be a non-empty string or a number",
        ),
        ("aime", {"question": "q", "answer": True}, "d.jsonl:2: 'answer' must be a non-empty string"),
        ("svamp", {"Question": "q", "Answer": 1}, "d.jsonl:2: missing or empty 'Body'"),
        ("svamp", {"Body": "b", "Answer": 1}, "d.jsonl:2: missing or empty 'Question'"),
        ("svamp", {"Body": "b", "Question": "q"}, "d.jsonl:2: missing 'Answer'"),
        ("svamp", {"Body": "b", "Question": "q", "Answer": float("nan")}, "d.jsonl:2: 'Answer' must be"),
        ("generic", {"answer": "1"}, "d.jsonl:2: missing or empty 'prompt'"),
        ("generic", {"prompt": "p"}, "d.jsonl:2: missing 'answer'"),
        ("generic", "[1]", "d.jsonl:2: row must be a JSON object"),
        ("generic", {"prompt": "p", "answer": "1", "golden": 3}, "d.jsonl:2: 'golden' must be a list"),
    ],
)
def test_bad_rows_name_their_line_in_every_format(tmp_path, fmt, row, message):
    p = _write(tmp_path, [GOOD[fmt], row])
    with pytest.raises(DataError) as e:
        load_problems(p, fmt=fmt)
    assert message in str(e.value)


def test_field_mapping(tmp_path):
    p = _write(tmp_path, [{"input": "What is 2+2?", "target": 4, "uid": "x9"}])
    prob = load_problems(p, fmt="generic", fields={"question": "input", "answer": "target", "id": "uid"})[0]
    assert (prob.question, prob.reference, prob.id) == ("What is 2+2?", "4", "x9")
    with pytest.raises(DataError, match="d.jsonl:1: missing or empty 'input2'"):
        load_problems(p, fmt="generic", fields={"question": "input2"})
    with pytest.raises(DataError, match="unknown field role"):
        load_problems(p, fmt="generic", fields={"questions": "input"})
    gsm = _write(tmp_path, [{"q": "x", "a": "#### 3"}])
    assert load_problems(gsm, fields={"question": "q", "answer": "a"})[0].reference == "3"


def test_unknown_format(tmp_path):
    with pytest.raises(DataError, match="valid: gsm8k, math, aime, svamp, generic"):
        load_problems(_write(tmp_path, [GOOD["generic"]]), fmt="csv")


def test_duplicate_ids_get_line_ids(tmp_path):
    rows = [{"prompt": "a", "answer": "1", "id": 1}, {"prompt": "b", "answer": "2", "id": 1}]
    assert [p.id for p in load_problems(_write(tmp_path, rows), fmt="generic")] == ["1", "d-2"]
