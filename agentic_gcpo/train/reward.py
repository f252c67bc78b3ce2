"""The reward of a trajectory: verified correctness (1, else the algorithm's `reward_wrong`: 0, or -1 for
DAPO's +-1 scale), plus DAPO's soft overlong punishment when on.

Correctness (`t.correct`, 1.0 or 0.0) is what accuracy metrics, golden triggers and dynamic-sampling
filters read; `t.reward` is what advantages are computed from, so shaping never leaks into accuracy.

Overlong shaping (DAPO, arXiv 2503.14476, §3.4), for a length |y| and a budget L_max with a ramp of
L_cache = buffer x L_max tokens:

    R_len(y) = 0                                 if |y| <= L_max - L_cache
             = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
             = -1                                if |y| > L_max

times `overlong_penalty`. DAPO has one budget, the response length at which it truncates. A
multi-turn rollout is truncated in two places, so we apply the ramp to both and keep the worse:
each assistant turn against rollout.max_new_tokens_per_turn (a turn cut there has no answer and
no closed tool call) and the whole trajectory against max_turns x max_new_tokens_per_turn. Lengths
count *policy* tokens only (loss_mask = 1): tool outputs and chat glue are not the model's verbosity
(verl counts the whole response mask, tool tokens included; we decided against that on purpose).
"""

from __future__ import annotations

from agentic_gcpo.ledger import Trajectory
from agentic_gcpo.verify import verify


def overlong_penalty(length: int, max_len: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment for a response of `length` tokens (0 or negative)."""
    if buffer <= 0 or length <= max_len - buffer:
        return 0.0
    if length > max_len:
        return -factor
    return factor * ((max_len - buffer) - length) / buffer


def resolve_buffer(buffer: float | None, algorithm_default: float) -> float:
    """reward.overlong_buffer as configured, or the algorithm's own default (`Algorithm.overlong_buffer`)."""
    return algorithm_default if buffer is None else buffer


def trajectory_penalty(t: Trajectory, turn_max: int, max_turns: int, buffer: float, factor: float) -> float:
    """The worse of the per-turn and whole-trajectory ramps (see the module docstring)."""
    if buffer <= 0:
        return 0.0
    total_max = turn_max * max_turns
    worst = overlong_penalty(t.num_policy_tokens, total_max, round(buffer * total_max), factor)
    for start, end in t.turn_spans:
        worst = min(worst, overlong_penalty(end - start, turn_max, round(buffer * turn_max), factor))
    return worst


def score(
    trajs: list[Trajectory],
    *,
    turn_max: int = 1,
    max_turns: int = 1,
    buffer: float = 0.0,
    factor: float = 1.0,
    reward_wrong: float = 0.0,
) -> list[float]:
    """Verify each trajectory and set correct / extracted_answer / reward; returns the penalties.

    reward = 1 if correct else `reward_wrong` (the algorithm's `Algorithm.reward_wrong`: 0, or -1 for
    DAPO's +-1 rule reward), plus the overlong penalty. `correct` stays a plain bool."""
    penalties = []
    for t in trajs:
        r = verify(t.final_text, t.reference)
        t.extracted_answer, t.correct = r.extracted, r.correct
        pen = trajectory_penalty(t, turn_max, max_turns, buffer, factor)
        t.reward = (1.0 if r.correct else reward_wrong) + pen
        penalties.append(pen)
    return penalties
