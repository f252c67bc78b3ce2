"""The agent loop: an explicit state machine per trajectory over any engine.

    GENERATING --(turn has tool calls)--> TOOLS --(observations appended)--> GENERATING
    GENERATING --(turn has no call)-----> DONE  finish_reason = stop | length
    any state --(limits)----------------> DONE  finish_reason = max_turns | budget

Each trajectory advances on its own. Its turn goes to the engine (`Engine.submit`) the moment it
is GENERATING; its tool calls start in a thread pool, in its own sandbox session, the moment the
turn comes back (`Engine.poll`); its next turn is submitted the moment they return. On an engine
that batches continuously (the in-process one, vLLM, SGLang servers) a trajectory therefore never
waits for another's slow turn or slow tool call, and the engine's batch refills as tool results
arrive. On an engine that does not, a round's requests are gathered and sent together. The loop
never knows which engine it runs on; it only sees token ids and logprobs.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from enum import Enum
from typing import Any

from agentic_gcpo.data import Problem
from agentic_gcpo.engines.base import Engine, SamplingParams
from agentic_gcpo.ledger import Source, ToolCallRecord, Trajectory
from agentic_gcpo.rollout.chat import ChatFormat
from agentic_gcpo.rollout.tool_calls import parse_turn
from agentic_gcpo.tool_registry import Tool, ToolContext


class AgentState(Enum):
    GENERATING = "generating"
    TOOLS = "tools"
    DONE = "done"


@dataclass
class LoopLimits:
    max_turns: int = 4
    max_new_tokens_per_turn: int = 256
    max_total_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    tool_threads: int = 8

    @classmethod
    def from_rollout(
        cls, rollout: Any, temperature: float | None = None, top_p: float | None = None
    ) -> LoopLimits:
        """The limits of a config's `rollout:` section (config.RolloutConfig). Training samples at
        its temperature; evaluation passes its own (eval.temperature, greedy by default) with top_p 1,
        and a golden writer passes the teacher's; the token budgets stay the rollout's so that what
        is evaluated or imitated is what the policy may write in training."""
        return cls(
            max_turns=rollout.max_turns,
            max_new_tokens_per_turn=rollout.max_new_tokens_per_turn,
            max_total_tokens=rollout.max_total_tokens,
            temperature=rollout.temperature if temperature is None else temperature,
            top_p=rollout.top_p if top_p is None else top_p,
            tool_threads=rollout.tool_threads,
        )


@dataclass
class _Episode:
    traj: Trajectory
    session: str
    state: AgentState = AgentState.GENERATING
    pending: list[Any] | None = None  # parsed calls waiting for the TOOLS state
    room: int = 0  # max_new_tokens of the turn in flight


_RUNS = itertools.count()  # engine request keys are (run, episode): unique across loops and calls


class RolloutStopped(RuntimeError):
    """A run ended early by AgentLoop.stop()."""


# An observer of a run, for interactive use (the REPL): on_event(kind, trajectory, payload) with
# kind "token" (a sampled id, as the engine draws it), "turn" (the turn's Completion, once appended),
# "tools" (that turn's ToolCallRecords, once run) or "done" (the finish reason).
EventHook = Callable[[str, Trajectory, Any], None]


class AgentLoop:
    def __init__(
        self,
        engine: Engine,
        chat: ChatFormat,
        tools: dict[str, Tool],
        sandbox: Any,
        limits: LoopLimits,
        on_event: EventHook | None = None,
    ) -> None:
        self.engine, self.chat, self.tools, self.sandbox, self.limits = engine, chat, tools, sandbox, limits
        self.on_event = on_event  # None in training and eval: nothing extra runs
        self._stopping = False  # set by stop(): a run on another thread ends at its next step
        self._pool = ThreadPoolExecutor(max_workers=limits.tool_threads, thread_name_prefix="tool")

    def stop(self) -> None:
        """Make a run in progress (on another thread) raise RolloutStopped at its next decode step
        or tool result; later runs are refused. For a trainer generating ahead when Ctrl-C comes."""
        self._stopping = True

    def close(self, wait: bool = True) -> None:
        """wait=False (an interrupted run): cancel queued tool calls and do not join running ones;
        they return as soon as the sandbox is closed (its workers killed)."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def run(
        self, problems: list[Problem], group_size: int, seed: int = 0, first_group_id: int = 0
    ) -> list[Trajectory]:
        """G rollouts for each problem; trajectories come back grouped, group by group."""
        episodes: list[_Episode] = []
        for gi, prob in enumerate(problems):
            prompt = self.chat.prompt_ids(prob.question)
            for _ in range(group_size):
                t = Trajectory(problem_id=prob.id, group_id=first_group_id + gi, reference=prob.reference)
                t.append(prompt, Source.PROMPT)
                episodes.append(_Episode(t, f"traj-{uuid.uuid4().hex[:12]}"))
        try:
            self._drive(episodes, seed)
        finally:
            for e in episodes:
                if self.sandbox is not None:
                    self.sandbox.close_session(e.session)
        return [e.traj for e in episodes]

    def _drive(self, episodes: list[_Episode], seed: int) -> None:
        """Advance every episode until all are DONE (see the module docstring)."""
        run = next(_RUNS)
        tools: dict[int, Future] = {}  # episode index -> its turn's tool calls, running
        eng = self.engine
        try:
            for i, e in enumerate(episodes):
                self._submit(run, i, e, seed)
            while True:
                if self._stopping:
                    raise RolloutStopped("the agent loop was stopped (the run is shutting down)")
                for i in [i for i, f in tools.items() if f.done()]:
                    self._tools_done(episodes[i], tools.pop(i).result())
                    self._submit(run, i, episodes[i], seed)
                if eng.outstanding() and (eng.continuous or not tools):
                    for key, c in eng.poll():
                        i = key[1]
                        self._turn_done(episodes[i], c)
                        if episodes[i].state is AgentState.TOOLS:
                            tools[i] = self._pool.submit(self._call_all, episodes[i])
                elif tools:  # nothing to decode until a tool result is back
                    wait(tools.values(), return_when=FIRST_COMPLETED if eng.continuous else ALL_COMPLETED)
                else:  # nothing queued, decoding or calling tools: every episode is DONE
                    return
        except BaseException:  # Ctrl-C, an engine error: queued calls must not start; re-raised
            for f in tools.values():
                f.cancel()
            eng.cancel_all()
            raise

    # --- GENERATING --------------------------------------------------------------------------
    def _submit(self, run: int, i: int, e: _Episode, seed: int) -> None:
        """Send episode i's next turn to the engine, unless it is not GENERATING or out of budget."""
        if e.state is not AgentState.GENERATING:
            return
        lim = self.limits
        room = lim.max_total_tokens - len(e.traj.token_ids)
        if room <= 0:
            self._finish(e, "budget")
            return
        e.room = min(lim.max_new_tokens_per_turn, room)
        params = SamplingParams(
            max_new_tokens=e.room,
            temperature=lim.temperature,
            top_p=lim.top_p,
            stop=list(self.chat.stop),
            stop_token_ids=list(self.chat.eos_ids),
            # from the episode and turn alone, so the samples do not depend on arrival order
            seed=hash((seed, e.traj.group_id, i, e.traj.num_turns)) & 0x7FFFFFFF,
            on_token=self._token_hook(e.traj) if self.on_event else None,
        )
        self.engine.submit((run, i), e.traj.token_ids, params)

    def _turn_done(self, e: _Episode, c: Any) -> None:
        lim = self.limits
        e.traj.append(c.token_ids, Source.SAMPLED, c.logprobs)
        text = self.chat.decode([t for t in c.token_ids if t not in self.chat.eos_ids])
        e.traj.turn_texts.append(text)
        e.traj.final_text = text
        if self.on_event:
            self.on_event("turn", e.traj, c)
        parsed = parse_turn(text, self.chat.call_format, self.chat.tool_names)
        if parsed.ignored_calls:
            e.traj.parse_errors.append("too_many_calls")
        if c.finish_reason == "length":
            # Cut off mid-turn: any call in it is unfinished (a closed one would have stopped
            # generation), so running tools would only spend budget on an error message.
            self._finish(e, "budget" if e.room < lim.max_new_tokens_per_turn else "length")
        elif not parsed.has_calls:
            self._finish(e, "stop")
        elif e.traj.num_turns >= lim.max_turns:
            self._finish(e, "max_turns")
        else:
            e.pending, e.state = parsed.calls, AgentState.TOOLS

    # --- TOOLS -------------------------------------------------------------------------------
    def _tools_done(self, e: _Episode, records: list[ToolCallRecord]) -> None:
        e.traj.tool_calls.extend(records)
        if self.on_event:
            self.on_event("tools", e.traj, records)
        last = e.traj.token_ids[-1] if e.traj.token_ids else None
        for ids, src in self.chat.tool_turn([r.observation for r in records], last).pieces:
            e.traj.append(ids, src)
        e.pending = None
        if len(e.traj.token_ids) >= self.limits.max_total_tokens:
            self._finish(e, "budget")
        else:
            e.state = AgentState.GENERATING

    def _call_all(self, e: _Episode) -> list[ToolCallRecord]:
        """Calls of one turn run in order (they share the session); errors become observations."""
        turn = e.traj.num_turns - 1
        out = []
        for c in e.pending or []:
            if c.status != "ok":
                e.traj.parse_errors.append(c.status)
                out.append(ToolCallRecord(turn, c.name, c.arguments, f"Error: {c.error}", c.status))
                continue
            try:
                r = self.tools[c.name].call(c.arguments, ToolContext(session=e.session, sandbox=self.sandbox))
                out.append(ToolCallRecord(turn, c.name, c.arguments, r.observation, r.status, r.duration_s))
            except Exception as ex:  # the registry already catches tool errors; this is the last net
                out.append(
                    ToolCallRecord(
                        turn, c.name, c.arguments, f"Error: {type(ex).__name__}: {ex}", "tool_error"
                    )
                )
        return out

    def _token_hook(self, traj: Trajectory) -> Callable[[int], None]:
        hook = self.on_event
        assert hook is not None
        return lambda tok: hook("token", traj, tok)

    def _finish(self, e: _Episode, reason: str) -> None:
        e.traj.finish_reason = reason
        e.state = AgentState.DONE
        if self.on_event:
            self.on_event("done", e.traj, reason)
        if self.sandbox is not None:
            self.sandbox.close_session(e.session)
        for t in self.tools.values():  # stateful (class) tools free this trajectory's state now
            t.close_session(e.session)
