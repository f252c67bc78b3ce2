"""The REPL's /commands: one table (name, usage, what it does, handler), so /help, the one-line
error for a bad command and the completer all come from the same place."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agentic_gcpo.repl.session import SETTINGS, SessionError

if TYPE_CHECKING:
    from agentic_gcpo.repl.app import Repl


class Quit(Exception):
    """Raised by /quit: the REPL ends cleanly."""


@dataclass
class Command:
    usage: str
    help: str
    run: Callable[[Repl, list[str]], None]


def _usage(name: str) -> SessionError:
    return SessionError(f"usage: {COMMANDS[name].usage}  ({COMMANDS[name].help})")


def _int_arg(name: str, raw: str, low: int = 0) -> int:
    try:
        v = int(raw)
    except ValueError:
        raise _usage(name) from None
    if v < low:
        raise SessionError(f"{name}: {raw} is too small (at least {low})")
    return v


def _help(r: Repl, args: list[str]) -> None:
    if args:
        name = args[0] if args[0].startswith("/") else "/" + args[0]
        if name not in COMMANDS:
            raise SessionError(f"no command {name}; commands: {' '.join(COMMANDS)}")
        r.say(f"{COMMANDS[name].usage}\n    {COMMANDS[name].help}")
        return
    r.say("Type a problem to watch the agent solve it (each line is a new problem), or use:")
    for c in COMMANDS.values():
        r.say(f"  {c.usage:<22} {c.help}")
    r.say(f"/set keys: {', '.join(f'{k} ({v[3]})' for k, v in SETTINGS.items())}")
    r.say("Ctrl-C stops a generation (the REPL stays); Ctrl-D or /quit leaves; Tab completes commands.")


def _load(r: Repl, args: list[str]) -> None:
    if len(args) not in (2, 3):
        raise _usage("/load")
    from agentic_gcpo.data import load_problems

    n = _int_arg("/load", args[1])
    fmt = args[2] if len(args) == 3 else r.session.cfg.data.format
    rows = load_problems(args[0], n + 1, fmt, r.session.cfg.data.fields or None)
    if n >= len(rows):
        raise SessionError(f"{args[0]} has {len(rows)} problems; N counts from 0, so use 0..{len(rows) - 1}")
    r.session.set_problem(rows[n], has_reference=True)
    r.show_problem()
    r.run_current(1)


def _ref(r: Repl, args: list[str]) -> None:
    if not args:
        raise _usage("/ref")
    r.session.set_reference(" ".join(args))
    for t in r.session.last:
        r.say(r.printer().verdict(t, True))


def _retry(r: Repl, args: list[str]) -> None:
    if args:
        raise _usage("/retry")
    r.run_current(1)


def _k(r: Repl, args: list[str]) -> None:
    if len(args) != 1:
        raise _usage("/k")
    r.run_current(_int_arg("/k", args[0], 1))


def _tokens(r: Repl, args: list[str]) -> None:
    trajs = r.session.last
    if not trajs:
        raise SessionError("no trajectory yet: type a problem first")
    i = _int_arg("/tokens", args[0]) if args else 0
    if i >= len(trajs):
        raise SessionError(f"the last run has {len(trajs)} trajectories; /tokens 0..{len(trajs) - 1}")
    r.show_tokens(trajs[i])


def _golden(r: Repl, args: list[str]) -> None:
    if args:
        raise _usage("/golden")
    g = r.session.build_golden()
    r.printer().replay(g)
    r.show_tokens(g)
    if r.session.golden_note:
        r.say(r.session.golden_note)


def _tools(r: Repl, args: list[str]) -> None:
    s = r.session
    if args:
        word = args[0].lower()
        s.set_tools(None if word == "on" else [] if word == "off" else [n for n in args[0].split(",") if n])
    r.say(f"tools: {', '.join(sorted(s.tools)) or 'off'} (chat format and stop strings follow)")


def _set(r: Repl, args: list[str]) -> None:
    if len(args) == 2:
        r.session.set_value(args[0], args[1])
    elif args:
        raise _usage("/set")
    r.say(r.session.settings_line())


def _reset(r: Repl, args: list[str]) -> None:
    s = r.session
    s.problem, s.has_reference, s.last, s.golden = None, False, [], None
    cache = getattr(s.engine, "cache", None)
    if cache is not None:  # the in-process engine's prefix cache: the next problem starts cold
        cache.clear()
    r.say("forgot the problem and its trajectories; settings kept (/set shows them)")


def _save(r: Repl, args: list[str]) -> None:
    if len(args) != 1:
        raise _usage("/save")
    s = r.session
    trajs = s.last + ([s.golden] if s.golden is not None else [])
    if not trajs:
        raise SessionError("nothing to save yet: run a problem first")
    path = Path(args[0]).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    question = s.problem.question if s.problem else None
    with path.open("a", encoding="utf-8") as f:
        for t in trajs:
            f.write(json.dumps({"question": question, **t.to_json(s.tokenizer)}) + "\n")
    r.say(
        f"appended {len(trajs)} trajectories to {path} (replay: agentic-gcpo show {shlex.quote(str(path))})"
    )


def _model(r: Repl, args: list[str]) -> None:
    if len(args) != 1:
        raise _usage("/model")
    r.say(f"loading {args[0]} ...")
    r.session.load_model(args[0])
    r.say(f"model: {r.session.model_name}")


def _quit(r: Repl, args: list[str]) -> None:
    raise Quit


COMMANDS: dict[str, Command] = {
    "/help": Command("/help [COMMAND]", "list the commands, or explain one", _help),
    "/load": Command(
        "/load DATASET N [FORMAT]",
        "run problem N (from 0) of a JSONL or builtin:NAME, with its reference",
        _load,
    ),
    "/retry": Command("/retry", "run the current problem again (a fresh sample)", _retry),
    "/k": Command("/k N", "N trajectories of the current problem: pass rate and majority answer", _k),
    "/ref": Command("/ref ANSWER", "set the reference of a typed problem and verify the last answers", _ref),
    "/tokens": Command(
        "/tokens [I]", "the last trajectory's tokens by source, with loss mask and logprobs", _tokens
    ),
    "/golden": Command("/golden", "the golden trajectory the trainer would inject for this problem", _golden),
    "/tools": Command("/tools [on|off|NAME,...]", "show, switch on/off or choose the tools offered", _tools),
    "/set": Command(
        "/set [KEY VALUE]", "show or change sampling: temperature top_p tokens turns budget", _set
    ),
    "/reset": Command("/reset", "forget the current problem and its trajectories", _reset),
    "/save": Command(
        "/save FILE", "append the last trajectories (and golden) to a JSONL that `show` reads", _save
    ),
    "/model": Command("/model PATH", "switch checkpoints: embedded, tiny, a model or run directory", _model),
    "/quit": Command("/quit", "leave (Ctrl-D too)", _quit),
}
ALIASES = {"/exit": "/quit", "/q": "/quit", "/?": "/help"}


def dispatch(r: Repl, line: str) -> None:
    """Run one /command line; SessionError (a one-line message) for anything the person can fix."""
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise SessionError(f"cannot parse the line ({e}); quote arguments with spaces") from None
    name = ALIASES.get(words[0], words[0])
    if name not in COMMANDS:
        raise SessionError(
            f"unknown command {words[0]}; commands: {' '.join(COMMANDS)} (/help explains them)"
        )
    COMMANDS[name].run(r, words[1:])
