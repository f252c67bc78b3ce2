"""The eval harness: estimators by hand, majority votes, bad input, and a real end-to-end run.

Real parts throughout: the tiny random model (real tokenizer and chat template), the HF engine,
the agent loop, the local sandbox and the verifier.
"""

from __future__ import annotations

import json
import math
import time

import pytest

from agentic_gcpo.data import Problem
from agentic_gcpo.engines import make_engine
from agentic_gcpo.eval_cli import run_eval_cli
from agentic_gcpo.evaluate import (
    eval_metrics,
    evaluate,
    majority_vote,
    make_chat,
    pass_at_k,
    problems_per_call,
)
from agentic_gcpo.ledger import Source, ToolCallRecord, Trajectory
from agentic_gcpo.report import transcript
from agentic_gcpo.rollout.agent_loop import LoopLimits


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 2 / 5),  # pass@1 is c/n
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (4, 0, 2, 0.0),
        (4, 4, 2, 1.0),
        (4, 3, 2, 1.0),  # n - c < k: every k-subset holds a correct sample
        (1, 1, 1, 1.0),
        (200, 1, 100, 0.5),  # 1 - C(199,100)/C(200,100) = 1 - 100/200
    ],
)
def test_pass_at_k_by_hand(n: int, c: int, k: int, expected: float) -> None:
    assert math.isclose(pass_at_k(n, c, k), expected, rel_tol=1e-12, abs_tol=1e-12)


def test_pass_at_k_rejects_impossible_counts() -> None:
    for n, c, k in [(2, 3, 1), (2, -1, 1), (2, 1, 0), (2, 1, 3)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_majority_vote_is_equivalence_aware() -> None:
    # 0.5 and \frac{1}{2} are one vote (2) against "3" (2): a tie goes to the earliest sample.
    answers = ["0.5", "3", "\\frac{1}{2}", "3", None]
    assert majority_vote(answers, [True, False, True, False, False]) == ("0.5", True, 2)
    assert majority_vote(["3", "7", "3.0", "\\frac{1}{2}"], [False, True, False, False]) == ("3", False, 2)
    assert majority_vote([None, None], [False, False]) == (None, False, 0)  # nobody answered: wrong
    assert majority_vote(["5"], [True]) == ("5", True, 1)


def test_majority_vote_with_hanging_answers_returns_in_time() -> None:
    t0 = time.monotonic()
    answer, ok, votes = majority_vote(["9**9**9**9", "10^(10^(10^10))", "factorial(10^9)"], [False] * 3, 0.5)
    assert time.monotonic() - t0 < 3 * 0.5 + 3.0  # each comparison is cut at its deadline
    assert ok is False and votes >= 1


PROBLEMS = [
    Problem("a", "What is 2+3?", "5"),
    Problem("b", "What is 6*7?", "42"),
    Problem("c", "What is 10-4?", "6"),
    Problem("d", "What is 9/3?", "3"),
]


def test_model_that_never_stops_gets_a_named_finish_reason(tiny) -> None:
    model, tok = tiny
    cut = evaluate(
        model, PROBLEMS[:2], k=1, tools=None, tokenizer=tok, progress=False,
        limits=LoopLimits(max_turns=2, max_new_tokens_per_turn=6, max_total_tokens=4096, temperature=0.0),
    )  # fmt: skip
    reasons = {t.finish_reason for t in cut.trajectories}
    assert reasons <= {"length", "stop"} and "length" in reasons  # a random model does not stop in 6
    assert cut.metrics["finish/length"] > 0
    prompt_len = cut.trajectories[0].prompt_len
    budget = evaluate(
        model, PROBLEMS[:1], k=1, tools=None, tokenizer=tok, progress=False,
        limits=LoopLimits(max_new_tokens_per_turn=64, max_total_tokens=prompt_len + 4, temperature=0.0),
    )  # fmt: skip
    assert {t.finish_reason for t in budget.trajectories} <= {"budget", "stop"}
    assert all(len(t.token_ids) <= prompt_len + 4 for t in budget.trajectories)


def test_no_tools_prompt_has_no_tool_instructions(tiny, python_tools) -> None:
    _, tok = tiny
    plain = make_chat(tok, {})
    assert not plain.tool_names and plain.stop == []
    text = plain.tok.apply_chat_template(plain.prompt_messages("q"), tokenize=False)
    for word in ("python", "tool", "```"):
        assert word not in text.lower()
    assert "\\boxed" in plain.system
    with_tools = make_chat(tok, python_tools)
    assert "python" in with_tools.system.lower() and with_tools.stop


def test_eval_cli_end_to_end_writes_three_files(tmp_path) -> None:
    data = tmp_path / "four.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": p.question, "answer": f"#### {p.reference}"}) + "\n" for p in PROBLEMS
        )
    )
    out = tmp_path / "out"
    argv = ["eval", "--model", "tiny", "--data", str(data), "--k", "2", "--out", str(out)]
    argv += ["--max-new-tokens", "12", "--max-turns", "2", "--no-progress", "--failures", "2"]
    assert run_eval_cli(argv) == 0
    res = json.loads((out / "results.json").read_text())
    for key in ("pass@1", "pass@2", "maj@2", "tools/calls_per_traj", "tools/error_rate",
                "tokens/generated_per_problem", "finish/length"):  # fmt: skip
        assert key in res["metrics"], key
    assert res["metrics"]["problems"] == 4 and res["settings"]["tools"] == ["python"]
    assert res["settings"]["command"].startswith("agentic-gcpo eval --model tiny")
    lines = (out / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 4
    rec = json.loads(lines[0])
    assert rec["n"] == 2 and len(rec["samples"]) == 2
    assert {s["source"] for s in rec["samples"][0]["segments"]} >= {"prompt", "sampled"}
    report = (out / "report.md").read_text()
    assert "pass@2" in report and "## Worst failures" in report and "**Model, turn 1**" in report


def test_eval_cli_bad_rows_and_files_are_clear_errors(tmp_path, capsys) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"problem": "x", "answer": "1"}) + "\n" + json.dumps({"problem": "y"}) + "\n")
    assert run_eval_cli(["eval", "--model", "tiny", "--data", str(data), "--format", "math"]) == 2
    assert "bad.jsonl:2: missing 'answer'" in capsys.readouterr().err
    assert run_eval_cli(["eval", "--model", "tiny", "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err
    good = ["--format", "math", "--limit", "1"]
    assert run_eval_cli(["eval", "--model", "tiny", "--data", str(data), *good, "--tools", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_transcript_decodes_by_ledger_segment(tiny) -> None:
    _, tok = tiny
    t = Trajectory("p", 0, "42")
    t.append(tok("SYSTEM AND QUESTION", add_special_tokens=False).input_ids, Source.PROMPT)
    code = tok("```python\nprint(6*7)\n```\n", add_special_tokens=False).input_ids
    t.append(code, Source.SAMPLED, [0.0] * len(code))
    t.append(tok("<|im_end|>\n<|im_start|>tool\n", add_special_tokens=False).input_ids, Source.TEMPLATE)
    t.append(tok("42", add_special_tokens=False).input_ids, Source.TOOL)
    t.tool_calls.append(ToolCallRecord(0, "python", {"code": "print(6*7)"}, "42", "ok"))
    t.finish_reason, t.extracted_answer = "length", None
    md = transcript(t, tok, "What is 6*7?")
    assert md.index("**User**") < md.index("**Model, turn 1**") < md.index("**Tool output**")
    assert "print(6*7)" in md and "im_start" not in md  # template glue is not content
    assert "finish: `length`" in md and "python:ok" in md


def test_in_training_eval_metrics_are_prefixed(tiny, sandbox, python_tools) -> None:
    model, tok = tiny
    chat = make_chat(tok, python_tools)
    engine = make_engine("hf", model, tok, dtype="float32", max_batch_size=8)
    m = eval_metrics(engine, chat, python_tools, sandbox, PROBLEMS[:2], LoopLimits(2, 8, 1024, 0.0), k=2)
    assert m and all(name.startswith("eval/") for name in m)
    assert {"eval/pass@1", "eval/pass@2", "eval/maj@2", "eval/tools/error_rate"} <= set(m)


def test_problems_per_call_fills_the_engine_batch_once():
    # 32 sequences a batch, 4 samples a problem: 8 problems; a k above the batch still runs one
    assert problems_per_call(32, 4) == 8
    assert problems_per_call(32, 5) == 6
    assert problems_per_call(2, 4) == 1
