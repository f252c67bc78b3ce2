"""The token ledger: one typed record per rollout, the only seam between rollout and training.

Every token of the conversation is stored once, as the id the engine produced or the id the chat
template rendered, together with where it came from. Training never looks at text: `loss_mask`
is derived from `sources` (1 exactly where the policy sampled the token), so tool output and
template glue can never leak into the loss by a text-offset mistake.

A golden trajectory is the same record with `is_golden=True`; the parts the policy is meant to
write are marked SAMPLED (with no sampler logprob), so it trains exactly like a rollout.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any


class Source(IntEnum):
    PROMPT = 0  # system / user / few-shot turns, rendered once before generation
    SAMPLED = 1  # emitted by the policy (or written for it, in a golden trajectory)
    TOOL = 2  # tool observation content
    TEMPLATE = 3  # chat-template glue around tool turns (<|im_end|>, role headers, ...)


@dataclass
class ToolCallRecord:
    turn: int  # index of the assistant turn that made the call
    name: str | None  # None when the call could not be parsed at all
    arguments: dict[str, Any] | None
    observation: str  # exactly the text the model was shown
    status: str  # "ok" | "tool_error" | "malformed" | "unknown_tool" | "invalid_args"
    duration_s: float = 0.0


@dataclass
class Trajectory:
    problem_id: str
    group_id: int
    reference: str
    token_ids: list[int] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)  # Source values, one per token
    sampler_logprobs: list[float] = field(default_factory=list)  # NaN where not sampled by the engine
    turn_spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of each assistant turn
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    turn_texts: list[str] = field(default_factory=list)  # decoded assistant turns, for parsing/logging only
    finish_reason: str = "running"  # stop | length | max_turns | budget | error
    final_text: str = ""  # the last assistant turn, which the verifier reads
    extracted_answer: str | None = None
    reward: float = 0.0
    correct: bool = False
    is_golden: bool = False
    parse_errors: list[str] = field(default_factory=list)  # counters: malformed / unknown_tool / no_call ...

    # --- building -------------------------------------------------------------------------
    def append(self, ids: list[int], source: Source, logprobs: list[float] | None = None) -> None:
        if logprobs is not None and len(logprobs) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(logprobs)} logprobs")
        start = len(self.token_ids)
        self.token_ids.extend(int(i) for i in ids)
        self.sources.extend([int(source)] * len(ids))
        self.sampler_logprobs.extend(logprobs if logprobs is not None else [math.nan] * len(ids))
        if source == Source.SAMPLED:
            self.turn_spans.append((start, len(self.token_ids)))

    # --- derived views ----------------------------------------------------------------------
    @property
    def loss_mask(self) -> list[int]:
        """1 for tokens the policy wrote, 0 for prompt, tool output and template glue."""
        return [1 if s == Source.SAMPLED else 0 for s in self.sources]

    @property
    def prompt_len(self) -> int:
        n = 0
        while n < len(self.sources) and self.sources[n] == Source.PROMPT:
            n += 1
        return n

    @property
    def num_policy_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def num_turns(self) -> int:
        return len(self.turn_spans)

    def check(self) -> None:
        """Invariants every trajectory handed to the trainer must satisfy."""
        n = len(self.token_ids)
        if not (len(self.sources) == len(self.sampler_logprobs) == n):
            raise AssertionError("ledger columns have different lengths")
        for i, (s, lp) in enumerate(zip(self.sources, self.sampler_logprobs)):
            if s != Source.SAMPLED and not math.isnan(lp):
                raise AssertionError(f"token {i} has a sampler logprob but source {Source(s).name}")
            if s == Source.SAMPLED and not self.is_golden and math.isnan(lp):
                raise AssertionError(f"sampled token {i} of a rollout has no sampler logprob")

    def to_json(self, tokenizer: Any = None) -> dict[str, Any]:
        """A readable record: turns as text with their source, plus the raw ledger columns."""
        d = asdict(self)
        d["sampler_logprobs"] = [None if math.isnan(x) else round(x, 5) for x in self.sampler_logprobs]
        if tokenizer is not None:
            d["segments"] = [
                {"source": Source(src).name.lower(), "text": tokenizer.decode(ids)}
                for src, ids in self.segments()
            ]
        return d

    def segments(self) -> list[tuple[int, list[int]]]:
        """Consecutive runs of tokens that share a source: [(source, ids), ...]."""
        out: list[tuple[int, list[int]]] = []
        for tok, src in zip(self.token_ids, self.sources):
            if out and out[-1][0] == src:
                out[-1][1].append(tok)
            else:
                out.append((src, [tok]))
        return out
