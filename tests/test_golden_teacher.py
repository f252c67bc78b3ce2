"""Golden source (b): a real (tiny) teacher model solves problems through the same agent loop.

The teacher is the tiny random Llama after it has memorised one tool-using solution by plain
teacher forcing (a few hundred Adam steps on one sequence, seconds on CPU): a real model whose
greedy rollout is known, so the test can check what is kept, re-rendered, verified and cached.
"""

from __future__ import annotations

import json

import pytest
import torch

from agentic_gcpo.config import load_config
from agentic_gcpo.data import Problem
from agentic_gcpo.ledger import ToolCallRecord, Trajectory
from agentic_gcpo.models import tiny_model
from agentic_gcpo.rollout.agent_loop import LoopLimits
from agentic_gcpo.rollout.chat import ChatFormat
from agentic_gcpo.rollout.golden import GoldenSource
from agentic_gcpo.rollout.golden_teacher import TeacherGoldens, clean_turns
from agentic_gcpo.train.policy import pack, token_logprobs

SOLVED = Problem(
    "six7",
    "What is 6 times 7?",
    "42",
    "",
    golden=[
        {"role": "assistant", "content": "```python\nprint(6*7)\n```\n"},
        {"role": "assistant", "content": "So \\boxed{42}."},
    ],
)
UNSOLVED = Problem("hard", "What is 13 plus 0?", "13", "")
LIMITS = LoopLimits(max_turns=3, max_new_tokens_per_turn=24, max_total_tokens=512, temperature=0.0)


@pytest.fixture(scope="module")
def teacher_model(python_tools, sandbox):
    """A tiny model that has memorised SOLVED's golden (built by the row-golden path)."""
    model, tok = tiny_model(seed=1)
    chat = ChatFormat(tok, python_tools)
    target = GoldenSource(chat, python_tools, sandbox).get(SOLVED, 0)
    assert target is not None
    batch = pack([target], tok.pad_token_id or 0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        lp = token_logprobs(model, batch.input_ids, batch.attention_mask, autocast_bf16=False)
        loss = -(lp * batch.loss_mask).sum() / batch.loss_mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if float(loss.detach()) < 0.02:  # greedy already reproduces it; tighter only costs time
            break
    model.eval()
    return model, tok, target


def _teacher(teacher_model, python_tools, sandbox, cache=None, path="memorised"):
    model, tok, _ = teacher_model
    return TeacherGoldens(
        path,
        model,
        tok,
        chat_args={},
        tools=python_tools,
        sandbox=sandbox,
        limits=LIMITS,
        samples=2,
        engine_args={"backend": "hf", "dtype": "float32"},
        cache_path=cache,
    )


def test_teacher_golden_is_kept_rerendered_verified_and_cached(
    teacher_model, tiny, python_tools, sandbox, tmp_path
):
    cache = tmp_path / "teacher.jsonl"
    teacher = _teacher(teacher_model, python_tools, sandbox, cache)
    student_tok = tiny[1]
    source = GoldenSource(ChatFormat(student_tok, python_tools), python_tools, sandbox, teacher=teacher)
    plain = Problem(SOLVED.id, SOLVED.question, SOLVED.reference, "")  # no row golden: the teacher's turn
    source.prefetch([plain, UNSOLVED])
    assert teacher.stats.problems == 2 and teacher.stats.samples == 4 and teacher.stats.solved == 1
    g = source.get(plain, group_id=3)
    assert g is not None and g.is_golden and g.correct and g.group_id == 3
    assert [c.observation for c in g.tool_calls] == ["42"]  # the call ran again in the sandbox
    # Same tokens as the memorised sequence: re-rendered in the student's format, token for token.
    assert g.token_ids == teacher_model[2].token_ids
    assert source.get(UNSOLVED, 0) is None  # none of k samples verified: no golden, no retry
    assert teacher.stats.samples == 4
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert [r["turns"] is None for r in rows] == [False, True]
    # A second run with the same cache file generates nothing.
    again = _teacher(teacher_model, python_tools, sandbox, cache)
    assert again.solve([plain, UNSOLVED])[plain.id] is not None
    assert again.stats.samples == 0 and again.stats.cache_hits == 2
    teacher.close()
    again.close()


def test_cache_ignores_other_teachers_changed_questions_and_torn_lines(
    teacher_model, python_tools, sandbox, tmp_path
):
    cache = tmp_path / "teacher.jsonl"
    first = _teacher(teacher_model, python_tools, sandbox, cache)
    first.solve([UNSOLVED])
    first.close()
    with cache.open("a") as f:
        f.write('{"key": "torn')  # a crash mid-write
    other = _teacher(teacher_model, python_tools, sandbox, cache, path="another-teacher")
    other.solve([UNSOLVED])
    assert other.stats.samples == 2  # the other teacher's line is not reused
    changed = Problem(UNSOLVED.id, UNSOLVED.question + " Answer quickly.", "13", "")
    same = _teacher(teacher_model, python_tools, sandbox, cache)
    same.solve([UNSOLVED, changed])
    assert same.stats.cache_hits == 1 and same.stats.problems == 1  # the edited question is new
    other.close()
    same.close()


def _traj(finish="stop", status="ok", parse_errors=()):
    t = Trajectory(problem_id="p", group_id=0, reference="4")
    t.turn_texts = ["```python\nprint(2+2)\n```\n", "\\boxed{4}"]
    t.tool_calls = [ToolCallRecord(0, "python", {"code": "print(2+2)"}, "4", status)]
    t.finish_reason, t.parse_errors = finish, list(parse_errors)
    return t


def test_only_clean_trajectories_qualify():
    assert clean_turns(_traj()) == [
        ("```python\nprint(2+2)\n```\n", [{"name": "python", "arguments": {"code": "print(2+2)"}}]),
        ("\\boxed{4}", []),
    ]
    assert clean_turns(_traj(finish="length")) is None
    assert clean_turns(_traj(finish="max_turns")) is None
    assert clean_turns(_traj(status="tool_error")) is None
    assert clean_turns(_traj(parse_errors=["malformed"])) is None


def test_teacher_source_needs_a_path():
    with pytest.raises(Exception, match="golden.teacher.path"):
        load_config("configs/tiny_cpu.yaml", ["golden.source=teacher"])


def test_trainer_runs_with_a_teacher_source(tmp_path):
    from agentic_gcpo.train.trainer import Trainer

    cache = tmp_path / "cache.jsonl"
    cfg = load_config(
        "configs/tiny_cpu.yaml",
        [
            "model.path=tiny",
            f"run.output_dir={tmp_path}",
            "train.steps=1",
            "train.prompts_per_step=2",
            "rollout.group_size=2",
            "rollout.max_new_tokens_per_turn=8",
            "data.limit=4",
            "golden.source=teacher",
            "golden.teacher.path=tiny",
            "golden.teacher.samples=2",
            f"golden.teacher.cache={cache}",
            "log.progress=false",
        ],
    )
    tr = Trainer(cfg)
    res = tr.step(0)
    tr.close()
    m = res.metrics
    # The random tiny teacher solves nothing: both all-fail groups stay without a golden.
    assert m["gcpo/all_fail_groups"] == 2.0 and m["gcpo/injected"] == 0.0
    assert m["gcpo/teacher_samples"] == 4.0 and m["gcpo/teacher_solved_frac"] == 0.0
    assert len(cache.read_text().splitlines()) == 2
