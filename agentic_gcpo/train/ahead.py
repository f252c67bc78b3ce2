"""One-step off-policy rollouts (`rollout.off_policy_steps: 1`): the next batch is generated while the
learner trains on this one.

    step k:  [ take batch k ] [ start generating batch k+1 (policy k-1) ] [ update -> policy k ]
             [ wait for batch k+1 ] [ sync policy k to the engine ]

Batch k+1 is drawn by the policy one update older than the one that trains on it. The update uses
the engine's log-probs of the drawn tokens as the old log-probs (train.behaviour_logprobs 'auto' ->
'sampler'), so the importance ratio is policy k over policy k-1 per token, and the algorithm's
clip bounds how far the lagged batch can move the policy. This is the one-step asynchronous scheme
of verl's and AReaL's off-policy trainers, at the smallest lag.

What it buys depends on the hardware: with the engine on its own device (a GPU SGLang / vLLM server)
generation and the update overlap; with both on one 2-core CPU they share the cores, and the gain is
only that tool calls and the update overlap. The engine must sample from its own copy of the weights
while the learner writes its own (the in-process engine is given `separate_weights`), and the
weight sync waits until the engine is idle. One process only: the rollout thread's collectives
would interleave with the update's.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from agentic_gcpo.metrics import Timer

Batch = tuple[list[Any], dict[str, float]]  # (trajectories, rollout metrics), as Trainer.sample returns


class RolloutAhead:
    def __init__(self, sample: Callable[[int, Timer], Batch], steps: int, stop: Callable[[], None]) -> None:
        self._sample, self._steps, self._stop = sample, steps, stop
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-ahead")
        self._future: Future | None = None  # batch of step `_for`, being generated
        self._for = -1
        self.ready: tuple[int, Batch] | None = None  # (step, batch) generated and not yet trained on

    def _timed(self, step: int) -> Batch:
        t = Timer()
        trajs, metrics = self._sample(step, t)
        # the generating thread's phase times, named apart from the step's own (time/ahead_*)
        metrics.update({k.replace("time/", "time/ahead_", 1): v for k, v in t.times.items()})
        return trajs, metrics

    def take(self, step: int, timer: Timer) -> Batch:
        """Batch `step` (generated ahead, or now when nothing was), and start generating `step + 1`."""
        if self.ready is not None and self.ready[0] == step:
            batch, self.ready = self.ready[1], None
        elif self._future is not None and self._for == step:
            with timer("rollout_wait"):
                batch = self._future.result()
            self._future = None
        else:  # the first step of a run (or of a resumed run without a batch in its checkpoint)
            batch = self._sample(step, timer)
        if step + 1 < self._steps:
            self._for, self._future = step + 1, self._pool.submit(self._timed, step + 1)
        return batch

    def wait_idle(self, timer: Timer) -> None:
        """Block until the batch being generated is done (the engine must be idle for a weight sync)."""
        if self._future is not None:
            with timer("rollout_wait"):
                self.ready = (self._for, self._future.result())
            self._future = None

    def close(self) -> None:
        """Stop a generation in progress (its loop raises at its next decode step) and join the thread."""
        self._stop()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._future = None
