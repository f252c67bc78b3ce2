"""The terminal loop of `agentic-gcpo repl`.

Input comes from prompt_toolkit (history kept across sessions, arrow keys, Tab completion of the
/commands and their arguments); when stdin is not a terminal (a script, a pipe) plain lines are
read instead, so the REPL can be driven from a file too. Output is plain printing: the transcript
streams while the engine samples.

Ctrl-C at the prompt clears the line; during a generation it stops that generation (the agent
loop closes the trajectory's sandbox session on its way out) and the REPL carries on. Ctrl-D or
/quit leaves.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any, TextIO

from agentic_gcpo.data import Problem
from agentic_gcpo.ledger import Trajectory
from agentic_gcpo.models import ModelLoadError
from agentic_gcpo.repl.commands import ALIASES, COMMANDS, Quit, dispatch
from agentic_gcpo.repl.session import SETTINGS, Session
from agentic_gcpo.repl.style import Style
from agentic_gcpo.repl.tokens_view import render_tokens
from agentic_gcpo.repl.transcript import TranscriptPrinter

PROMPT = "gcpo> "
K_TEMPERATURE = 0.7  # /k at temperature 0 would draw N copies of the greedy answer


class Repl:
    def __init__(self, session: Session, style: Style, history: str | None = None, out: TextIO | None = None):
        self.session, self.style, self.history = session, style, history
        self.out = out or sys.stdout
        self._typed = 0

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def printer(self) -> TranscriptPrinter:
        chat = self.session.chat
        return TranscriptPrinter(self.style, chat.decode, chat.eos_ids, self.out)

    def banner(self) -> None:
        s = self.session
        dtype = getattr(getattr(s.engine, "precision", None), "dtype", "")
        self.say(
            self.style(f"agentic-gcpo repl · model {s.model_name} ({s.cfg.engine.backend} {dtype})", "bold")
        )
        self.say(s.settings_line())
        self.say(
            "Type a problem, or /load DATASET N (e.g. /load builtin:gsm8k_train_500 0). /help lists the commands."
        )

    # --- what commands call -------------------------------------------------------------------
    def show_problem(self) -> None:
        p = self.session.problem
        if p is not None:
            self.say(self.style("problem: ", "bold") + p.question)
            if self.session.has_reference:
                self.say(self.style("reference: ", "bold") + p.reference)

    def show_tokens(self, t: Trajectory) -> None:
        self.say(render_tokens(t, self.session.chat.decode, self.style))

    def run_current(self, k: int) -> None:
        s = self.session
        if k == 1:
            pr = self.printer()
            t = s.run(1, pr.on_event)[0]
            self.say(pr.verdict(t, s.has_reference))
            return
        lim = s.limits
        old = lim.temperature
        if old == 0:
            self.say(
                f"(temperature is 0: sampling these {k} at {K_TEMPERATURE}; /set temperature changes it)"
            )
            lim.temperature = K_TEMPERATURE
        finished = 0

        def progress(kind: str, traj: Trajectory, payload: Any) -> None:
            nonlocal finished
            if kind == "done":
                finished += 1
                self.out.write(f"\r  {finished}/{k} trajectories finished")
                self.out.flush()

        try:
            trajs = s.run(k, progress)
        finally:
            lim.temperature = old
        self.say("")
        pr = self.printer()
        for i, t in enumerate(trajs):
            self.say(f"  #{i} " + pr.verdict(t, s.has_reference).removeprefix("■ "))
        self.say(self.summary(trajs))

    def summary(self, trajs: list[Trajectory]) -> str:
        from agentic_gcpo.evaluate import majority_vote

        s = self.session
        answers = [t.extracted_answer for t in trajs]
        best, best_ok, votes = majority_vote(answers, [t.correct for t in trajs])
        parts = []
        if s.has_reference:
            c = sum(t.correct for t in trajs)
            parts.append(f"pass rate {c}/{len(trajs)} ({c / len(trajs):.0%})")
        if best is None:
            parts.append("majority answer: none (no trajectory gave an answer)")
        else:
            verdict = (" ✓" if best_ok else " ✗") if s.has_reference else ""
            parts.append(f"majority answer {best} ({votes}/{len(trajs)} votes){verdict}")
        tools = sum(bool(t.tool_calls) for t in trajs)
        parts.append(f"{tools}/{len(trajs)} used a tool")
        return self.style("■ " + " · ".join(parts), "bold")

    # --- the loop -----------------------------------------------------------------------------
    def handle(self, line: str) -> None:
        """One input line: a /command, or a new problem (no reference until /ref)."""
        line = line.strip()
        if not line:
            return
        if line.startswith("/"):
            dispatch(self, line)
            return
        self._typed += 1
        self.session.set_problem(Problem(f"typed-{self._typed}", line, ""), has_reference=False)
        self.run_current(1)

    def _lines(self) -> Iterator[str]:
        """Input lines until Ctrl-D; Ctrl-C at the prompt just gives a fresh prompt."""
        if not sys.stdin.isatty():
            for line in sys.stdin:
                self.say(PROMPT + line.rstrip("\n"))  # echo, so a scripted session reads like a typed one
                yield line
            return
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, InMemoryHistory

        history = FileHistory(self.history) if self.history else InMemoryHistory()
        ps: PromptSession[str] = PromptSession(
            history=history, completer=completer(), complete_while_typing=False
        )
        while True:
            try:
                yield ps.prompt(PROMPT)
            except KeyboardInterrupt:
                continue
            except EOFError:
                return

    def loop(self) -> int:
        self.banner()
        for line in self._lines():
            try:
                self.handle(line)
            except Quit:
                break
            except (ValueError, OSError, ModelLoadError) as e:  # a bad file, model, tool or argument
                self.say(self.style(f"error: {e}", "red"))
            except KeyboardInterrupt:
                self.out.write("\n")
                self.say(
                    self.style(
                        "^C: generation stopped. The REPL is still here (/quit or Ctrl-D to leave).", "yellow"
                    )
                )
            except Exception as e:  # noqa: BLE001 - unexpected, but one failed command need not end the session
                self.say(self.style(f"error: {type(e).__name__}: {e}", "red"))
        self.say("bye")
        return 0


def completer() -> Any:
    """Tab completion: the command names, then the first argument of some (setting keys, tool
    switches, datasets, paths, models). Written out because prompt_toolkit's word completers split
    words at '/', so they would never complete '/gol' to '/golden'."""
    from prompt_toolkit.completion import (
        Completer,
        Completion,
        PathCompleter,
        WordCompleter,
        merge_completers,
    )
    from prompt_toolkit.document import Document

    paths = PathCompleter(expanduser=True)
    first_arg = {
        "/help": WordCompleter([name.lstrip("/") for name in COMMANDS]),
        "/set": WordCompleter(list(SETTINGS)),
        "/tools": WordCompleter(["on", "off"]),
        "/load": merge_completers([WordCompleter(_builtin_datasets(), WORD=True), paths]),
        "/save": paths,
        "/model": merge_completers([WordCompleter(["embedded", "tiny"]), paths]),
    }

    class Commands(Completer):
        def get_completions(self, document: Document, complete_event: Any) -> Any:
            text = document.text_before_cursor.lstrip()
            if not text.startswith("/"):
                return
            name, space, rest = text.partition(" ")
            if not space:
                for c in [*COMMANDS, *ALIASES]:
                    if c.startswith(name):
                        yield Completion(c, -len(name))
                return
            sub = first_arg.get(ALIASES.get(name, name))
            if sub is not None and " " not in rest:
                yield from sub.get_completions(Document(rest, len(rest)), complete_event)

    return Commands()


def _builtin_datasets() -> list[str]:
    from pathlib import Path

    assets = Path(__file__).resolve().parents[1] / "assets"
    return sorted(f"builtin:{p.stem}" for p in assets.glob("*.jsonl"))
