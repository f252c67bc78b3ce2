"""Golden source (b): a teacher model solves the problem through the same agent loop.

The teacher is any model `models.load_named` accepts. It gets the policy's prompt, tools, sandbox
and per-turn limits, samples k rollouts per problem, and the first one that is verified correct
*and clean* (it stopped on its own, every tool call parsed and ran) is kept. A golden should be an
example worth imitating, so a lucky answer after a crashed call does not qualify.

What is kept is text plus tool calls, not token ids: the teacher's tokenizer may differ from the
policy's. `GoldenSource` re-renders the turns in the policy's own chat format and runs the calls
again in the sandbox, the same path a row's `golden` message list takes, and verifies once more.

Results (misses too, so an unsolvable problem is not retried every step) are cached per problem in
memory and, with `golden.teacher.cache`, in a JSONL file that later runs reuse. A cache line names
its teacher and a hash of the question, so a changed dataset or another teacher never hits it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agentic_gcpo.data import Problem
from agentic_gcpo.ledger import Trajectory
from agentic_gcpo.metrics import append_lines
from agentic_gcpo.rollout.agent_loop import AgentLoop, LoopLimits
from agentic_gcpo.rollout.chat import ChatFormat
from agentic_gcpo.verify import verify

logger = logging.getLogger(__name__)

Turn = tuple[str, list[dict[str, Any]]]  # (assistant text, tool calls made in that turn)


@dataclass
class TeacherStats:
    problems: int = 0  # problems the teacher was run on (cache hits excluded)
    solved: int = 0  # of those, problems with a kept trajectory
    samples: int = 0  # teacher rollouts generated
    cache_hits: int = 0


def clean_turns(t: Trajectory) -> list[Turn] | None:
    """A trajectory's turns as (text, calls), or None when it is not a usable golden."""
    if t.finish_reason != "stop" or t.parse_errors or any(c.status != "ok" for c in t.tool_calls):
        return None
    turns: list[Turn] = []
    for k, text in enumerate(t.turn_texts):
        calls = [{"name": c.name, "arguments": c.arguments} for c in t.tool_calls if c.turn == k]
        turns.append((text, calls))
    return turns


class TeacherGoldens:
    """Runs the teacher on problems that have no golden yet; one batched agent-loop call per request."""

    def __init__(
        self,
        model_path: str,
        model: Any,
        tokenizer: Any,
        *,
        chat_args: dict[str, Any],
        tools: dict[str, Any],
        sandbox: Any,
        limits: LoopLimits,
        samples: int,
        engine_args: dict[str, Any],
        cache_path: str | None = None,
        seed: int = 0,
    ) -> None:
        from agentic_gcpo.engines import make_engine

        self.model_path, self.samples, self.seed = model_path, samples, seed
        chat = ChatFormat(tokenizer, tools, **chat_args)
        self.loop = AgentLoop(
            make_engine(model=model, tokenizer=tokenizer, **engine_args), chat, tools, sandbox, limits
        )
        self.stats = TeacherStats()
        self._lock = threading.Lock()
        self._cache: dict[str, list[Turn] | None] = {}
        self._file = Path(cache_path) if cache_path else None
        if self._file is not None and self._file.exists():
            self._load()

    def _key(self, p: Problem) -> str:
        return f"{p.id}:{hashlib.sha1(p.question.encode()).hexdigest()[:12]}"

    def _load(self) -> None:
        assert self._file is not None
        for n, line in enumerate(self._file.read_text().splitlines(), 1):
            try:
                row = json.loads(line)
                if row["teacher"] != self.model_path:
                    continue
                turns = row["turns"]
                self._cache[row["key"]] = None if turns is None else [(t["text"], t["calls"]) for t in turns]
            except (ValueError, KeyError, TypeError) as e:  # a torn last line after a crash, say
                logger.warning(
                    "teacher cache %s line %d skipped (%s: %s)", self._file, n, type(e).__name__, e
                )

    def _store(self, key: str, turns: list[Turn] | None) -> None:
        self._cache[key] = turns
        if self._file is None:
            return
        self._file.parent.mkdir(parents=True, exist_ok=True)
        row = {
            "key": key,
            "teacher": self.model_path,
            "turns": None if turns is None else [{"text": x, "calls": c} for x, c in turns],
        }
        append_lines(self._file, [json.dumps(row)])  # one write: a Ctrl-C leaves no torn row

    def state_dict(self) -> dict[str, Any]:
        """The in-memory cache and counters (the sampling seed of the next request follows them)."""
        with self._lock:
            return {"cache": dict(self._cache), "stats": asdict(self.stats)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._cache = dict(state["cache"])
            self.stats = TeacherStats(**state["stats"])

    def solve(self, problems: list[Problem]) -> dict[str, list[Turn] | None]:
        """problem.id -> the kept teacher turns, or None when none of the k samples qualified."""
        with self._lock:
            todo, seen = [], set()
            for p in problems:
                k = self._key(p)
                if k in self._cache:
                    self.stats.cache_hits += 1
                elif k not in seen:
                    seen.add(k)
                    todo.append(p)
            if todo:
                trajs = self.loop.run(todo, self.samples, seed=self.seed + self.stats.problems)
                self.stats.problems += len(todo)
                self.stats.samples += len(trajs)
                for gi, p in enumerate(todo):
                    kept = None
                    for t in trajs[gi * self.samples : (gi + 1) * self.samples]:
                        turns = clean_turns(t)
                        if turns is not None and verify(t.final_text, p.reference).correct:
                            kept = turns
                            break
                    self.stats.solved += kept is not None
                    self._store(self._key(p), kept)
            return {p.id: self._cache[self._key(p)] for p in problems}

    def close(self, wait: bool = True) -> None:
        """wait=False (an interrupted run): do not join tool calls still running."""
        self.loop.close(wait=wait)
        self.loop.engine.close()


def teacher_from_config(cfg: Any, tools: dict[str, Any], sandbox: Any) -> TeacherGoldens | None:
    """golden.source='teacher' (and injection on): the teacher behind the policy's prompt, tools, limits."""
    if cfg.golden.source != "teacher" or not cfg.golden.enabled:
        return None
    from agentic_gcpo.models import load_named

    t, r, p, e = cfg.golden.teacher, cfg.rollout, cfg.prompt, cfg.engine
    model, tok = load_named(t.path)
    return TeacherGoldens(
        t.path,
        model,
        tok,
        chat_args={"call_format": p.call_format, "system": p.system, "fewshot": p.fewshot},
        tools=tools,
        sandbox=sandbox,
        limits=LoopLimits.from_rollout(r, temperature=t.temperature, top_p=1.0),
        samples=t.samples,
        engine_args={"backend": e.backend, "dtype": e.dtype, "max_batch_size": e.max_batch_size},
        cache_path=t.cache,
        seed=cfg.run.seed,
    )
