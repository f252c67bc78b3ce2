"""The token ledger: loss_mask is derived from sources; invariants catch a corrupted record."""

from __future__ import annotations

import math

import pytest

from agentic_gcpo.ledger import Source, Trajectory


def _traj() -> Trajectory:
    t = Trajectory("p", 0, "1")
    t.append([1, 2, 3], Source.PROMPT)
    t.append([4, 5], Source.SAMPLED, [-0.1, -0.2])
    t.append([6], Source.TEMPLATE)
    t.append([7, 8], Source.TOOL)
    t.append([9], Source.TEMPLATE)
    t.append([10, 11], Source.SAMPLED, [-0.3, -0.4])
    return t


def test_mask_is_derived_from_sources():
    t = _traj()
    assert t.loss_mask == [0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1]
    assert t.prompt_len == 3 and t.num_policy_tokens == 4 and t.num_turns == 2
    assert t.turn_spans == [(3, 5), (9, 11)]
    t.check()


def test_segments_and_json():
    t = _traj()
    assert [(Source(s).name, ids) for s, ids in t.segments()][:2] == [
        ("PROMPT", [1, 2, 3]),
        ("SAMPLED", [4, 5]),
    ]
    d = t.to_json()
    assert d["sampler_logprobs"][:4] == [None, None, None, -0.1]


def test_invariants_catch_corruption():
    t = _traj()
    t.sampler_logprobs[0] = -1.0  # a prompt token with a sampler logprob
    with pytest.raises(AssertionError, match="source PROMPT"):
        t.check()
    t = _traj()
    t.sampler_logprobs[3] = math.nan  # a rollout's sampled token without one
    with pytest.raises(AssertionError, match="no sampler logprob"):
        t.check()
    t = _traj()
    t.sources.pop()
    with pytest.raises(AssertionError, match="different lengths"):
        t.check()
    with pytest.raises(ValueError, match="logprobs"):
        _traj().append([1, 2], Source.SAMPLED, [-0.1])


def test_golden_sampled_tokens_need_no_logprob():
    t = Trajectory("p", 0, "1", is_golden=True)
    t.append([1], Source.PROMPT)
    t.append([2, 3], Source.SAMPLED)
    t.check()
    assert t.loss_mask == [0, 1, 1]
