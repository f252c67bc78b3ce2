"""One REPL's state: the model, and training's own chat format, tools, sandbox and agent loop.

Nothing here re-implements a rollout. A run is `AgentLoop.run` with the config's limits, chat format
and tools, observed through `AgentLoop.on_event`; it is scored by the evaluation's verifier call;
`/golden` is `GoldenSource.get`, exactly what the trainer injects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentic_gcpo.config import Config
from agentic_gcpo.data import Problem
from agentic_gcpo.ledger import Trajectory
from agentic_gcpo.rollout.agent_loop import AgentLoop, EventHook, LoopLimits

# /set KEY VALUE: key -> (LoopLimits field, type, lowest allowed, meaning)
SETTINGS: dict[str, tuple[str, type, float, str]] = {
    "temperature": ("temperature", float, 0.0, "sampling temperature (0 = greedy)"),
    "top_p": ("top_p", float, 1e-6, "nucleus sampling mass, at most 1"),
    "tokens": ("max_new_tokens_per_turn", int, 1, "tokens per assistant turn"),
    "turns": ("max_turns", int, 1, "assistant turns per trajectory"),
    "budget": ("max_total_tokens", int, 16, "tokens per trajectory, prompt included"),
}


class SessionError(ValueError):
    """Something the person asked for cannot be done; the message says what to do instead."""


def resolve_model(name: str) -> tuple[str, Path | None]:
    """(model to load, the run's config.yaml or None). A run directory gives its `final` checkpoint,
    else its latest `step-N`, and the config it was trained with."""
    p = Path(name).expanduser()
    ckpts = p / "checkpoints"
    if name in ("embedded", "tiny") or not ckpts.is_dir():
        return name, None
    found = [d for d in ckpts.iterdir() if (d / "config.json").is_file()]
    if not found:
        raise SessionError(
            f"run directory {p} has no checkpoint yet (nothing under {ckpts}); give another model"
        )

    def rank(d: Path) -> tuple[int, int]:
        m = re.fullmatch(r"step-(\d+)", d.name)
        return (1, 0) if d.name == "final" else (0, int(m.group(1)) if m else -1)

    cfg = p / "config.yaml"
    return str(max(found, key=rank)), cfg if cfg.is_file() else None


@dataclass
class Session:
    cfg: Config
    tool_names: list[str]  # what '/tools on' brings back
    tools_on: bool = True
    problem: Problem | None = None
    has_reference: bool = False
    last: list[Trajectory] = field(default_factory=list)  # the last run's trajectories
    golden: Trajectory | None = None  # the last /golden, for /save
    golden_note: str | None = None  # why the last /golden could not be written under the limits
    seed: int = 0
    model_name: str = ""
    model: Any = None
    tokenizer: Any = None
    engine: Any = None
    chat: Any = None
    tools: dict[str, Any] = field(default_factory=dict)
    sandbox: Any = None
    loop: AgentLoop | None = None

    def __post_init__(self) -> None:
        r = self.cfg.rollout
        self.limits = LoopLimits.from_rollout(r)
        self.seed = self.cfg.run.seed

    # --- model, tools, loop -------------------------------------------------------------------
    def load_model(self, name: str) -> None:
        """Load `name` ('embedded', 'tiny', a model or run directory); the old one stays on failure."""
        from agentic_gcpo.engines import make_engine
        from agentic_gcpo.models import load_named

        path, _ = resolve_model(name)
        model, tok = load_named(path)
        e = self.cfg.engine
        engine = make_engine(
            e.backend,
            model,
            tok,
            dtype=e.dtype,
            max_batch_size=e.max_batch_size,
            prefix_cache_mb=e.prefix_cache_mb,
        )
        if self.engine is not None:
            self.engine.close()
        self.model_name, self.model, self.tokenizer, self.engine = path, model, tok, engine
        self.rebuild()

    def set_tools(self, names: list[str] | None) -> None:
        """None: the last chosen tools back on (else the config's); []: tools off; names: exactly
        those (checked first)."""
        if names is None and not self.tool_names:
            names = list(self.cfg.tools.names)
        if names:
            self._get_tools(names)  # unknown names fail here, before anything changes
            self.tool_names = list(names)
        self.tools_on = names is None or bool(names)
        self.rebuild()

    def _get_tools(self, names: list[str]) -> dict[str, Any]:
        from agentic_gcpo.tool_registry import get_tools

        t = self.cfg.tools
        return get_tools(names, t.modules, timeout_s=t.timeout_s, max_output_chars=t.max_output_chars)

    def rebuild(self) -> None:
        """Chat format and agent loop for the current model and tools, as the trainer builds them."""
        from agentic_gcpo.evaluate import make_chat

        self.tools = self._get_tools(self.tool_names) if self.tools_on and self.tool_names else {}
        p = self.cfg.prompt
        if self.tools:
            from agentic_gcpo.rollout.chat import ChatFormat

            self.chat = ChatFormat(self.tokenizer, self.tools, p.call_format, p.system, p.fewshot)
            if self.sandbox is None:
                from agentic_gcpo.sandbox import make_sandbox

                self.sandbox = make_sandbox(self.cfg.sandbox)
        else:  # what `eval --no-tools` uses: no tool instructions, no call stop strings
            self.chat = make_chat(self.tokenizer, {}, p.call_format, p.system, 0)
        if self.loop is not None:
            self.loop.close(wait=False)
        self.loop = AgentLoop(self.engine, self.chat, self.tools, self.sandbox, self.limits)

    def close(self) -> None:
        if self.sandbox is not None:  # first: a tool call still running returns once its worker dies
            self.sandbox.close()
        if self.loop is not None:
            self.loop.close(wait=False)
        if self.engine is not None:
            self.engine.close()

    # --- settings -----------------------------------------------------------------------------
    def set_value(self, key: str, raw: str) -> None:
        if key not in SETTINGS:
            raise SessionError(f"unknown setting '{key}'; valid: {', '.join(SETTINGS)}")
        attr, kind, low, meaning = SETTINGS[key]
        try:
            value = kind(raw)
        except ValueError:
            raise SessionError(
                f"{key} needs {'an integer' if kind is int else 'a number'} ({meaning}), got '{raw}'"
            ) from None
        if value < low or (key == "top_p" and value > 1):
            raise SessionError(f"{key}={raw} is out of range ({meaning}; at least {low:g})")
        setattr(self.limits, attr, value)

    def settings_line(self) -> str:
        lim = self.limits
        tools = ", ".join(sorted(self.tools)) if self.tools else "off"
        return (
            f"temperature {lim.temperature:g} · top_p {lim.top_p:g} · tokens/turn {lim.max_new_tokens_per_turn} · "
            f"turns {lim.max_turns} · budget {lim.max_total_tokens} · tools: {tools} · "
            f"call format {self.chat.call_format} · fewshot {self.chat.fewshot}"
        )

    # --- problems and runs --------------------------------------------------------------------
    def set_problem(self, problem: Problem, has_reference: bool) -> None:
        self.problem, self.has_reference = problem, has_reference
        self.last, self.golden = [], None

    def run(self, k: int, on_event: EventHook | None) -> list[Trajectory]:
        """k trajectories of the current problem through the agent loop, scored like eval's."""
        from agentic_gcpo.evaluate import score_trajectories

        if self.problem is None or self.loop is None:
            raise SessionError("no problem yet: type one, or /load DATASET N")
        self.loop.on_event = on_event
        seed, self.seed = self.seed, self.seed + 1  # /retry samples afresh (greedy stays greedy)
        try:
            trajs = self.loop.run([self.problem], k, seed=seed)
        finally:
            self.loop.on_event = None
        if self.has_reference:
            score_trajectories(trajs)
        else:  # no reference: extract the answer only; nothing to be correct against
            from agentic_gcpo.verify import extract_answer

            for t in trajs:
                t.extracted_answer = extract_answer(t.final_text)
        self.last = trajs
        return trajs

    def set_reference(self, answer: str) -> None:
        from agentic_gcpo.evaluate import score_trajectories

        if self.problem is None:
            raise SessionError("no problem yet: type one first, then /ref ANSWER")
        self.problem.reference, self.has_reference = answer, True
        for t in self.last:
            t.reference = answer
        score_trajectories(self.last)

    def build_golden(self) -> Trajectory:
        """The golden trajectory the trainer would inject for the current problem."""
        from agentic_gcpo.rollout.golden import GoldenSource

        p = self.problem
        if p is None:
            raise SessionError("no problem yet: /load DATASET N one that has a worked solution")
        if not (p.solution or p.golden):
            raise SessionError(
                "this problem has no worked solution or golden messages, so there is no golden "
                "trajectory; /load one from a dataset that has them (e.g. builtin:gsm8k_train_500)"
            )
        # The session's limits (as /set left them): the trainer checks goldens against its rollout
        # limits, so a golden the policy could not write under them is flagged here as there.
        refuse = self.cfg.golden.over_limits == "refuse"
        src = GoldenSource(
            self.chat,
            self.tools,
            self.sandbox,
            style=self.cfg.golden.style,
            limits=self.limits,
            refuse_over_limits=refuse,
        )
        g = src.get(p, 0)
        lim = self.limits
        over = (
            f"it is longer than the loop's limits (tokens/turn {lim.max_new_tokens_per_turn}, turns "
            f"{lim.max_turns}, budget {lim.max_total_tokens})"
        )
        if g is None:
            if src.stats.over_limits:
                why = f"{over} and golden.over_limits is 'refuse'; /set tokens|turns|budget to see it"
            elif src.stats.verify_failures:
                why = "the verifier refused it (its answer does not match the reference)"
            else:
                why = "a tool call in it failed or names a tool that is off (try /tools on)"
            raise SessionError(f"no golden for this problem: {why}")
        self.golden = g
        self.golden_note = (
            f"note: {over}: the policy could not write it in this loop; training counts such goldens "
            "in gcpo/golden_over_limits (golden.over_limits=refuse drops them)"
            if src.stats.over_limits
            else None
        )
        return g
