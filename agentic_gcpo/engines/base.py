"""The engine interface: token ids in, token ids + logprobs out.

The agent loop talks only to this interface, so a rollout on the in-process transformers engine
and one on an SGLang or vLLM server produce the same ledger. Engines never see text they did not
decode themselves for stop-string checks; what they return is always the sampled ids.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)  # generation ends once the new text contains one
    stop_token_ids: list[int] = field(default_factory=list)  # e.g. the end-of-turn token
    seed: int | None = None
    # Streaming for interactive use (the REPL): called with each sampled id as soon as it is drawn.
    # None in training. An engine that cannot stream may skip it; callers must not rely on it firing.
    on_token: Callable[[int], None] | None = field(default=None, repr=False, compare=False)


@dataclass
class Completion:
    token_ids: list[int]  # every sampled token, including a matched stop token / stop string
    logprobs: list[float]  # log p of each sampled token under the (temperature-scaled) sampler
    finish_reason: str  # "stop" (stop token or string) | "length" (max_new_tokens reached)
    stop_reason: int | str | None = None  # the matched stop token id or stop string


class Engine(ABC):
    """Generates completions for token-id prompts; receives new policy weights after each step."""

    @abstractmethod
    def generate(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Completion]:
        """One completion per prompt, in input order. `params` has one entry per prompt."""

    @abstractmethod
    def update_weights(self, state_dict: dict[str, Any] | None = None) -> None:
        """Make the engine sample from the latest policy. `None`: the engine shares the trainer's module."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release servers, processes or memory held by the engine."""
