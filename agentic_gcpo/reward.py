"""The reward of a trajectory: verified correctness, plus DAPO's soft overlong punishment when on.

Correctness (`t.correct`, 1.0 or 0.0) is what accuracy metrics, golden triggers and dynamic-sampling
filters read; `t.reward` is what advantages are computed from, so shaping never leaks into accuracy.

Overlong shaping (DAPO, arXiv 2503.14476, §3.4), with |y| counted in *policy* tokens (loss_mask = 1):

    R_len(y) = 0                                 if |y| <= L_max - L_cache
             = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
             = -1                                if |y| > L_max

times `overlong_penalty`. Tool outputs and chat-template tokens do not count: the penalty is about
the model's own verbosity, and a long tool output is not something it should be punished for
(verl counts the whole response mask, tool tokens included; we decided against that on purpose).
L_max is the policy's generation budget, rollout.max_turns x max_new_tokens_per_turn.
"""

from __future__ import annotations

from agentic_gcpo.ledger import Trajectory
from agentic_gcpo.verify import verify

# Algorithms that shape by default when reward.overlong_buffer is None, with the buffer as a
# fraction of L_max (the DAPO recipe: 4096 of 20480 tokens, one fifth; we round to a quarter since
# our budgets are small and a quarter of 384 tokens is still a soft ramp of 96).
DEFAULT_BUFFER_FRACTION = {"dapo": 0.25}


def overlong_penalty(length: int, max_len: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment for a response of `length` tokens (0 or negative)."""
    if buffer <= 0 or length <= max_len - buffer:
        return 0.0
    if length > max_len:
        return -factor
    return factor * ((max_len - buffer) - length) / buffer


def resolve_buffer(buffer: int | None, algorithm: str, max_len: int) -> int:
    """reward.overlong_buffer as configured, or the algorithm's default (0 = off)."""
    if buffer is not None:
        return min(buffer, max_len)
    return int(DEFAULT_BUFFER_FRACTION.get(algorithm, 0.0) * max_len)


def score(trajs: list[Trajectory], *, max_len: int = 0, buffer: int = 0, factor: float = 1.0) -> list[float]:
    """Verify each trajectory and set correct / extracted_answer / reward; returns the penalties."""
    penalties = []
    for t in trajs:
        r = verify(t.final_text, t.reference)
        t.extracted_answer, t.correct = r.extracted, r.correct
        pen = overlong_penalty(t.num_policy_tokens, max_len, buffer, factor) if buffer else 0.0
        t.reward = (1.0 if r.correct else 0.0) + pen
        penalties.append(pen)
    return penalties
