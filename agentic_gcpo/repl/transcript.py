"""The conversation view: the agent's turns, its tool calls with their outputs, and the verdict.

One printer serves both uses. Live, the REPL feeds it agent-loop events (tokens as the engine
draws them, each turn's end, each turn's tool calls); replaying, `replay` feeds it a finished
trajectory's turns. So a saved trajectory reads exactly like the session that produced it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from agentic_gcpo.ledger import Source, ToolCallRecord, Trajectory
from agentic_gcpo.repl.style import Style

FINISH_MEANING = {
    "stop": "the agent ended its turn without a tool call",
    "length": "a turn hit the tokens-per-turn limit",
    "budget": "the whole trajectory hit its token budget",
    "max_turns": "the turn limit was reached with a tool call pending",
    "error": "the rollout failed",
}


def _indent(text: str, bar: str) -> str:
    lines = text.rstrip("\n").split("\n") if text.strip() else ["(empty)"]
    return "\n".join(f"    {bar} {line}" for line in lines)


class TranscriptPrinter:
    """Prints one trajectory as it unfolds. `decode` turns sampled ids into text; `skip_ids` (the
    end-of-turn tokens) are not shown, as the chat format leaves them out of a turn's text."""

    def __init__(
        self,
        style: Style,
        decode: Callable[[list[int]], str],
        skip_ids: Iterable[int] = (),
        out: TextIO | None = None,
    ) -> None:
        self.style, self.decode, self.skip = style, decode, set(skip_ids)
        self.out = out or sys.stdout
        self._ids: list[int] = []
        self._shown = ""
        self._turn = 0
        self._open = False  # a turn's header is printed and its end is not

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    # --- live -------------------------------------------------------------------------------
    def on_event(self, kind: str, traj: Trajectory, payload: Any) -> None:
        """The agent loop's observer (`AgentLoop.on_event`)."""
        if kind == "token":
            self.token(int(payload))
        elif kind == "turn":
            self.end_turn(traj.turn_texts[-1])
        elif kind == "tools":
            self.tool_calls(payload)

    def _start_turn(self) -> None:
        if not self._open:
            self._open, self._turn = True, self._turn + 1
            self.write(self.style(f"── turn {self._turn} ──", "dim") + "\n")

    def token(self, tok: int) -> None:
        self._start_turn()
        if tok in self.skip:
            return
        self._ids.append(tok)
        text = self.decode(self._ids)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        self.write(self.style.source(text[len(self._shown) :], Source.SAMPLED))
        self._shown = text

    def end_turn(self, text: str | None = None) -> None:
        """Close the turn: show what an engine that does not stream never showed, then a newline."""
        self._start_turn()
        text = self.decode(self._ids) if text is None else text
        if len(text) > len(self._shown):
            self.write(self.style.source(text[len(self._shown) :], Source.SAMPLED))
        if not text.endswith("\n"):
            self.write("\n")
        self._ids, self._shown, self._open = [], "", False

    def tool_calls(self, records: list[ToolCallRecord]) -> None:
        for r in records:
            self.write(self.format_call(r) + "\n")

    def format_call(self, r: ToolCallRecord) -> str:
        s = self.style
        if r.status in ("malformed", "unknown_tool", "invalid_args") or r.name is None:
            head = s(f"  ⚠ tool call not run ({r.status})", "red")
            return head + "\n" + s(_indent(r.observation, "│"), "red")
        args = dict(r.arguments or {})
        code = args.pop("code", None) if isinstance(args.get("code"), str) else None
        head = s(f"  ⚙ tool call: {r.name}", "cyan", "bold")
        if args:
            head += " " + s(json.dumps(args, ensure_ascii=False), "cyan")
        parts = [head]
        if code is not None:
            parts.append(s(_indent(code, "│"), "cyan"))
        ok = r.status == "ok"
        took = f", {r.duration_s:.2f} s" if r.duration_s else ""
        parts.append(
            s(
                f"  → output ({r.status}{took}, shown to the model; not trained on):",
                "yellow" if ok else "red",
            )
        )
        parts.append(s.source(_indent(r.observation, "│"), Source.TOOL))
        return "\n".join(parts)

    # --- the end ----------------------------------------------------------------------------
    def verdict(self, t: Trajectory, has_reference: bool = True) -> str:
        """One line: answer, verdict against the reference, how it ended, what it cost."""
        s = self.style
        answer = t.extracted_answer
        parts = [f"answer: {answer}" if answer is not None else "answer: (none extracted)"]
        if has_reference and t.reference:
            ok = t.correct
            parts.append(f"reference: {t.reference}")
            parts.append(s("✓ correct", "green", "bold") if ok else s("✗ wrong", "red", "bold"))
            parts.append(f"reward {t.reward:g}")
        else:
            parts.append("no reference (set one with /ref ANSWER)")
        calls = len(t.tool_calls)
        parts.append(
            f"finish: {t.finish_reason} ({FINISH_MEANING.get(t.finish_reason, '?')}); "
            f"{t.num_turns} turn(s), {calls} tool call(s), {t.num_policy_tokens} sampled tokens"
        )
        return "■ " + " · ".join(parts)

    # --- replay -----------------------------------------------------------------------------
    def replay(self, t: Trajectory, question: str | None = None) -> None:
        """Print a finished trajectory the way the REPL showed it live."""
        s = self.style
        if t.is_golden:
            self.write(
                s(
                    "GOLDEN trajectory (injected by GCPO): its assistant turns were written for the policy, "
                    "not sampled (no sampler logprobs); tool output and template glue are not trained on.",
                    "bold",
                )
                + "\n"
            )
        if question:
            self.write(s("problem: ", "bold") + question + "\n")
        by_turn: dict[int, list[ToolCallRecord]] = {}
        for r in t.tool_calls:
            by_turn.setdefault(r.turn, []).append(r)
        self._turn = 0
        for k, text in enumerate(t.turn_texts):
            self.end_turn(text)  # the header, then the whole turn at once: what streaming showed
            self.tool_calls(by_turn.get(k, []))
        self.write(self.verdict(t, bool(t.reference)) + "\n")
