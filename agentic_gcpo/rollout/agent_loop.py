"""The agent loop: an explicit state machine per trajectory over any engine.

    GENERATING --(turn has tool calls)--> TOOLS --(observations appended)--> GENERATING
    GENERATING --(turn has no call)-----> DONE  finish_reason = stop | length
    any state --(limits)----------------> DONE  finish_reason = max_turns | budget

All trajectories that are GENERATING go to the engine together (one batched call); tool calls of
all trajectories run concurrently in a thread pool, each in its trajectory's sandbox session, so
a slow tool call never holds up another trajectory's tool call. The loop never knows which engine
it runs on; it only sees token ids and logprobs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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


@dataclass
class _Episode:
    traj: Trajectory
    session: str
    state: AgentState = AgentState.GENERATING
    pending: list[Any] | None = None  # parsed calls waiting for the TOOLS state


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
        self._pool = ThreadPoolExecutor(max_workers=limits.tool_threads, thread_name_prefix="tool")

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
            turn = 0
            while any(e.state is not AgentState.DONE for e in episodes):
                self._generate([e for e in episodes if e.state is AgentState.GENERATING], seed, turn)
                self._run_tools([e for e in episodes if e.state is AgentState.TOOLS])
                turn += 1
        finally:
            for e in episodes:
                if self.sandbox is not None:
                    self.sandbox.close_session(e.session)
        return [e.traj for e in episodes]

    # --- GENERATING --------------------------------------------------------------------------
    def _generate(self, eps: list[_Episode], seed: int, turn: int) -> None:
        lim = self.limits
        ready = []
        for e in eps:
            room = lim.max_total_tokens - len(e.traj.token_ids)
            if room <= 0:
                self._finish(e, "budget")
            else:
                ready.append((e, min(lim.max_new_tokens_per_turn, room)))
        if not ready:
            return
        params = [
            SamplingParams(
                max_new_tokens=n,
                temperature=lim.temperature,
                top_p=lim.top_p,
                stop=list(self.chat.stop),
                stop_token_ids=list(self.chat.eos_ids),
                seed=hash((seed, e.traj.group_id, i, turn)) & 0x7FFFFFFF,
                on_token=self._token_hook(e.traj) if self.on_event else None,
            )
            for i, (e, n) in enumerate(ready)
        ]
        completions = self.engine.generate([e.traj.token_ids for e, _ in ready], params)
        for (e, room), c in zip(ready, completions):
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
                self._finish(e, "budget" if room < lim.max_new_tokens_per_turn else "length")
            elif not parsed.has_calls:
                self._finish(e, "stop")
            elif e.traj.num_turns >= lim.max_turns:
                self._finish(e, "max_turns")
            else:
                e.pending, e.state = parsed.calls, AgentState.TOOLS

    # --- TOOLS -------------------------------------------------------------------------------
    def _run_tools(self, eps: list[_Episode]) -> None:
        futures = {id(e): self._pool.submit(self._call_all, e) for e in eps}
        try:
            for e in eps:
                futures[id(e)].result()
        except BaseException:  # Ctrl-C while waiting: queued calls must not start; re-raised
            for f in futures.values():
                f.cancel()
            raise
        for e in eps:
            records = futures[id(e)].result()
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
