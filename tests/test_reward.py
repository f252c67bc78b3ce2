"""Reward = verified correctness + DAPO's soft overlong punishment (hand-computed numbers)."""

from __future__ import annotations

import pytest

from agentic_gcpo.ledger import Source, Trajectory
from agentic_gcpo.reward import overlong_penalty, resolve_buffer, score


@pytest.mark.parametrize(
    "length, expected",
    [
        (0, 0.0),
        (288, 0.0),  # L_max - L_cache = 384 - 96: the ramp starts after this
        (312, -0.25),  # (288 - 312) / 96
        (336, -0.5),
        (384, -1.0),  # at the budget
        (385, -1.0),  # past it: flat
        (10_000, -1.0),
    ],
)
def test_overlong_penalty_ramp(length, expected):
    assert overlong_penalty(length, max_len=384, buffer=96) == pytest.approx(expected)


def test_overlong_penalty_factor_and_off():
    assert overlong_penalty(336, 384, 96, factor=0.5) == pytest.approx(-0.25)
    assert overlong_penalty(10_000, 384, 0) == 0.0  # buffer 0: shaping off


def test_resolve_buffer_defaults():
    assert resolve_buffer(None, "dapo", 384) == 96  # a quarter of the budget
    assert resolve_buffer(None, "gcpo", 384) == 0  # off unless asked for
    assert resolve_buffer(50, "gcpo", 384) == 50
    assert resolve_buffer(1000, "dapo", 384) == 384  # never wider than the budget
    assert resolve_buffer(0, "dapo", 384) == 0


def _traj(text: str, policy_tokens: int) -> Trajectory:
    t = Trajectory(problem_id="p", group_id=0, reference="4")
    t.append([1, 2, 3], Source.PROMPT)
    t.append(list(range(10, 10 + policy_tokens)), Source.SAMPLED)
    t.append([7] * 50, Source.TOOL)  # tool output never counts toward the length
    t.final_text = text
    return t


def test_score_keeps_correctness_and_shaped_reward_apart():
    right_long, wrong_long, right_short = (
        _traj("\\boxed{4}", 336),
        _traj("\\boxed{5}", 336),
        _traj("\\boxed{4}", 10),
    )
    pens = score([right_long, wrong_long, right_short], max_len=384, buffer=96)
    assert pens == pytest.approx([-0.5, -0.5, 0.0])
    assert [t.correct for t in (right_long, wrong_long, right_short)] == [True, False, True]
    assert [t.reward for t in (right_long, wrong_long, right_short)] == pytest.approx([0.5, -0.5, 1.0])
    plain = _traj("\\boxed{4}", 336)
    score([plain])  # no shaping by default
    assert plain.reward == 1.0 and plain.extracted_answer == "4"
