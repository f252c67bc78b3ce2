"""`agentic-gcpo repl` and `agentic-gcpo show`, added to the main CLI by `add_repl_parsers(sub)`.

Errors a person can fix (a missing file, a bad config key, an unknown tool, a model that cannot be
loaded) print one line and return 2.
"""

from __future__ import annotations

import argparse
import signal
import sys

from agentic_gcpo.repl.style import Style, colour_default

REPL_EPILOG = """\
Without --config the REPL uses the training defaults, greedy (rollout.temperature=0); with
--config, or a run directory as --model, it uses that config's prompt, tools, limits and sampling.
Dotted overrides apply on top, e.g. rollout.max_turns=3 rollout.temperature=0.7."""


def _colour(args: argparse.Namespace) -> Style:
    return Style(colour_default() and not args.no_color)


def _repl(args: argparse.Namespace) -> int:
    from agentic_gcpo.config import ConfigError, load_config
    from agentic_gcpo.models import ModelLoadError, cache_dir
    from agentic_gcpo.repl.app import Repl
    from agentic_gcpo.repl.session import Session, SessionError, resolve_model
    from agentic_gcpo.tool_registry import ToolLoadError

    # Ctrl-C is how a person stops a generation. A shell that starts us in the background leaves
    # SIGINT ignored, and Python then never raises KeyboardInterrupt: take it back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    session = None
    try:
        run_cfg = resolve_model(args.model)[1] if args.model else None
        cfg_file = args.config or run_cfg
        overrides = list(args.overrides)
        if cfg_file is None and not any(o.startswith("rollout.temperature=") for o in overrides):
            overrides.insert(0, "rollout.temperature=0")
        cfg = load_config(cfg_file, overrides)
        if args.tools is None:
            names = list(cfg.tools.names)
        else:
            names = (
                [] if args.tools.lower() in ("", "none", "off") else [n for n in args.tools.split(",") if n]
            )
        session = Session(cfg, names, tools_on=bool(names))
        print(f"loading {args.model or cfg.model.path} ...", flush=True)
        session.load_model(args.model or cfg.model.path)
        history = args.history if args.history is not None else str(cache_dir() / "repl_history")
        if history:
            from pathlib import Path

            Path(history).parent.mkdir(parents=True, exist_ok=True)
        return Repl(session, _colour(args), history or None).loop()
    except (ConfigError, ModelLoadError, ToolLoadError, SessionError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while loading: nothing to clean but the session
        print("\ninterrupted while starting", file=sys.stderr)
        return 130
    finally:
        if session is not None:
            session.close()


def _show(args: argparse.Namespace) -> int:
    from agentic_gcpo.repl.records import RecordError, find_tokenizer, load_records, question_from_prompt
    from agentic_gcpo.repl.tokens_view import render_tokens
    from agentic_gcpo.repl.transcript import TranscriptPrinter

    try:
        records = load_records(args.file)
    except RecordError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.golden_only:
        records = [r for r in records if r.traj.is_golden]
        if not records:
            print(f"{args.file}: no golden trajectories in it", file=sys.stderr)
            return 1
    if args.index is not None:
        if not -len(records) <= args.index < len(records):
            print(
                f"error: --index {args.index} is out of range: {len(records)} trajectories (0..{len(records) - 1})",
                file=sys.stderr,
            )
            return 2
        records = [records[args.index]]
    tok = find_tokenizer(args.file, args.model)
    decode = tok.decode if tok is not None else None
    style = _colour(args)
    eos: list[int] = []
    if tok is not None:
        eos = [i for i in (tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id) if isinstance(i, int)]
    for rec in records:
        t = rec.traj
        step = f" · step {rec.step}" if rec.step is not None else ""
        print(
            style(f"══ {rec.where}{step} · group {t.group_id}{' · GOLDEN' if t.is_golden else ''} ══", "bold")
        )
        question = rec.question
        if question is None and decode is not None:
            question = question_from_prompt(decode(t.token_ids[: t.prompt_len]))
        if args.view in ("transcript", "both"):
            TranscriptPrinter(style, decode or (lambda ids: ""), eos).replay(t, question)
        if args.view in ("tokens", "both"):
            print(render_tokens(t, decode, style, segment_texts=rec.segment_texts))
        print()
    return 0


def add_repl_parsers(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "repl",
        help="talk to a (trained) agent: watch it reason, call tools and get verified",
        epilog=REPL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "--model", "-m", default=None, help="'embedded', 'tiny', a model directory or a run directory"
    )
    r.add_argument("--config", "-c", default=None, help="YAML config (prompt, tools, limits, sampling)")
    r.add_argument("--tools", default=None, help="comma-separated tools, or 'none' (default: the config's)")
    r.add_argument(
        "--history", default=None, help="history file ('' for none; default in the model cache dir)"
    )
    r.add_argument("--no-color", action="store_true", help="plain text (also when NO_COLOR is set)")
    r.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. rollout.max_turns=3")
    r.set_defaults(fn=_repl)
    s = sub.add_parser("show", help="replay saved trajectories (samples.jsonl, eval trajectories.jsonl)")
    s.add_argument("file", help="a run's samples.jsonl, an eval's trajectories.jsonl, or a REPL /save file")
    s.add_argument(
        "--index", type=int, default=None, help="only the N-th trajectory (from 0, after --golden-only)"
    )
    s.add_argument("--golden-only", action="store_true", help="only golden (GCPO-injected) trajectories")
    s.add_argument("--view", choices=("transcript", "tokens", "both"), default="both")
    s.add_argument("--model", default=None, help="tokenizer to use (default: found next to the file)")
    s.add_argument("--no-color", action="store_true", help="plain text (also when NO_COLOR is set)")
    s.set_defaults(fn=_show)
