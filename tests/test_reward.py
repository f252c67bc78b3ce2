"""Reward = verified correctness + DAPO's soft overlong punishment (hand-computed numbers)."""

from __future__ import annotations

import pytest

from agentic_gcpo.algorithms import get_algorithm
from agentic_gcpo.ledger import Source, Trajectory
from agentic_gcpo.train.reward import overlong_penalty, resolve_buffer, score, trajectory_penalty


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
    dapo, gcpo = get_algorithm("dapo").overlong_buffer, get_algorithm("gcpo").overlong_buffer
    assert resolve_buffer(None, dapo) == 0.25
    assert resolve_buffer(None, gcpo) == 0.0  # off unless asked for
    assert resolve_buffer(0.1, gcpo) == 0.1
    assert resolve_buffer(0.0, dapo) == 0.0


def _traj(text: str, *turns: int) -> Trajectory:
    """A trajectory whose assistant turns have the given policy-token lengths, tool output between."""
    t = Trajectory(problem_id="p", group_id=0, reference="4")
    t.append([1, 2, 3], Source.PROMPT)
    for k, n in enumerate(turns):
        if k:
            t.append([7] * 50, Source.TOOL)  # tool output never counts toward a length
        t.append(list(range(10, 10 + n)), Source.SAMPLED)
    t.final_text = text
    return t


def test_turn_and_trajectory_ramps_keep_the_worse():
    # turn budget 16, 3 turns -> trajectory budget 48; buffer 0.25 -> ramps of 4 and 12 tokens
    kw = {"turn_max": 16, "max_turns": 3, "buffer": 0.25, "factor": 1.0}
    assert trajectory_penalty(_traj("", 10, 10), **kw) == 0.0  # 20 <= 36 and each turn <= 12
    assert trajectory_penalty(_traj("", 14), **kw) == pytest.approx(-0.5)  # one turn: (12 - 14) / 4
    assert trajectory_penalty(_traj("", 16), **kw) == pytest.approx(-1.0)  # cut at the turn budget
    # three 12-token turns: no turn ramps, the trajectory (36) sits exactly at its ramp start
    assert trajectory_penalty(_traj("", 12, 12, 12), **kw) == 0.0
    # 12 + 12 + 15: turn 3 gives (12 - 15) / 4 = -0.75, the trajectory (39) (36 - 39) / 12 = -0.25
    assert trajectory_penalty(_traj("", 12, 12, 15), **kw) == pytest.approx(-0.75)
    assert trajectory_penalty(_traj("", 16), 16, 3, 0.0, 1.0) == 0.0  # off


def test_score_keeps_correctness_and_shaped_reward_apart():
    right_long, wrong_long, right_short = (
        _traj("\\boxed{4}", 14),
        _traj("\\boxed{5}", 14),
        _traj("\\boxed{4}", 5),
    )
    pens = score([right_long, wrong_long, right_short], turn_max=16, max_turns=3, buffer=0.25)
    assert pens == pytest.approx([-0.5, -0.5, 0.0])
    assert [t.correct for t in (right_long, wrong_long, right_short)] == [True, False, True]
    assert [t.reward for t in (right_long, wrong_long, right_short)] == pytest.approx([0.5, -0.5, 1.0])
    plain = _traj("\\boxed{4}", 16)
    score([plain])  # no shaping by default
    assert plain.reward == 1.0 and plain.extracted_answer == "4"
