"""The engine interface: token ids in, token ids + logprobs out.

The agent loop talks only to this interface, so a rollout on the in-process transformers engine
and one on an SGLang or vLLM server produce the same ledger. Engines never see text they did not
decode themselves for stop-string checks; what they return is always the sampled ids.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
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
    """Generates completions for token-id prompts; receives new policy weights after each step.

    Two ways in. `generate` is the batch call: a list of prompts in, their completions out. The
    agent loop uses `submit` / `poll` instead, so each trajectory advances on its own: a turn is
    submitted the moment the trajectory's tool results are back, and comes back from `poll` the
    moment it is finished, while other turns are still decoding. The default below serves those
    with one `generate` call over everything submitted (turn-synchronous); engines that batch
    continuously (hf) or talk to servers (vllm, sglang) override both.
    """

    # True when a request submitted mid-decode joins the running batch. The agent loop then sends
    # each turn as soon as it is ready; otherwise it gathers a turn's requests and sends them together.
    continuous = False

    def __init__(self) -> None:
        self._queued: list[tuple[Hashable, list[int], SamplingParams]] = []

    def submit(self, key: Hashable, prompt: list[int], params: SamplingParams) -> None:
        """Queue one request; its completion comes back from `poll` under `key` (unique while queued)."""
        if not hasattr(self, "_queued"):  # subclasses that do not call Engine.__init__
            self._queued = []
        self._queued.append((key, prompt, params))

    def poll(self, wait_s: float = 0.05) -> list[tuple[Hashable, Completion]]:
        """Advance generation and return the requests that finished since the last poll (maybe none).

        Engines that compute in-process do one unit of work (a decode step); engines that wait on
        servers block at most `wait_s` for a result. Never blocks when nothing is outstanding."""
        queued, self._queued = getattr(self, "_queued", []), []
        if not queued:
            return []
        done = self.generate([p for _, p, _ in queued], [sp for _, _, sp in queued])
        return [(k, c) for (k, _, _), c in zip(queued, done)]

    def outstanding(self) -> int:
        """Requests submitted and not yet returned by `poll`."""
        return len(getattr(self, "_queued", []))

    def cancel_all(self) -> None:
        """Forget every outstanding request (an interrupted rollout must not leak into the next)."""
        self._queued = []

    @abstractmethod
    def generate(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Completion]:
        """One completion per prompt, in input order. `params` has one entry per prompt."""

    @abstractmethod
    def update_weights(self, state_dict: dict[str, Any] | None = None) -> None:
        """Make the engine sample from the latest policy. `None`: the engine shares the trainer's module."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release servers, processes or memory held by the engine."""
