"""`agentic-gcpo tools list`, `tools call NAME '{json args}'` and `tools prompt`.

`call` runs the tool exactly as a rollout would (same validation, timeout, truncation), inside a
real local sandbox session when the tool takes a ToolContext, so a user can try a tool before
training with it. `prompt` prints the rendered prompt (system prompt with the tool descriptions,
then the question) exactly as the policy sees it; docs/tools.md shows its output. Exit codes: 0 ok, 1 the call failed (bad JSON, unknown tool, invalid args, tool
error), 2 a tool module could not be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from agentic_gcpo.tool_registry import ToolContext, ToolLoadError, available_tools


def _add_modules(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--modules", "-m", nargs="*", default=[], metavar="M",
        help="extra tool modules to import: dotted module paths or .py files (like tools.modules)",
    )  # fmt: skip


def add_tools_parser(subparsers: Any) -> None:
    """Add `tools list` / `tools call` to the main CLI's subparsers."""
    t = subparsers.add_parser("tools", help="list the registered tools or call one by hand")
    sub = t.add_subparsers(dest="tools_cmd", required=True)
    ls = sub.add_parser("list", help="name, source and JSON schema of every available tool")
    _add_modules(ls)
    ls.add_argument("--json", action="store_true", help="print one JSON object per tool instead")
    ls.set_defaults(fn=_list)
    c = sub.add_parser("call", help="call one tool with JSON arguments and print its observation")
    c.add_argument("name", help="tool name, e.g. calculator")
    c.add_argument("arguments", nargs="?", default="{}", help='JSON object, e.g. \'{"expression": "2+2"}\'')
    _add_modules(c)
    c.add_argument(
        "--timeout", type=float, default=None, help="per-call wall limit in seconds (tools without their own)"
    )
    c.set_defaults(fn=_call)
    pr = sub.add_parser(
        "prompt", help="print the prompt a model sees with these tools (rendered chat template)"
    )
    pr.add_argument("--names", "-n", nargs="+", default=["python"], help="tools in use (like tools.names)")
    _add_modules(pr)
    pr.add_argument("--call-format", choices=["auto", "fenced", "json"], default="auto")
    pr.add_argument("--model", default="embedded", help="whose tokenizer / chat template to use")
    pr.add_argument("--question", default="What is 15% of 80?")
    pr.set_defaults(fn=_prompt)


def _load(modules: list[str]) -> dict[str, Any] | None:
    try:
        return available_tools(modules)
    except (ToolLoadError, FileNotFoundError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def _list(args: argparse.Namespace) -> int:
    tools = _load(args.modules)
    if tools is None:
        return 2
    for name in sorted(tools):
        t = tools[name]
        if args.json:
            print(json.dumps({"name": name, "source": t.source, "schema": t.schema()}))
        else:
            print(f"{name}  ({t.source})\n  {t.description}")
            params = json.dumps(t.schema()["function"]["parameters"], indent=2).replace("\n", "\n  ")
            print(f"  parameters: {params}\n")
    return 0


def _call(args: argparse.Namespace) -> int:
    try:
        arguments = json.loads(args.arguments)
    except ValueError as e:
        print(
            f'error: arguments are not valid JSON ({e}); example: \'{{"expression": "2+2"}}\'',
            file=sys.stderr,
        )
        return 1
    if not isinstance(arguments, dict):
        print(f"error: arguments must be a JSON object, got {type(arguments).__name__}", file=sys.stderr)
        return 1
    tools = _load(args.modules)
    if tools is None:
        return 2
    t = tools.get(args.name)
    if t is None:
        print(f"error: unknown tool '{args.name}'; known tools: {', '.join(sorted(tools))}", file=sys.stderr)
        return 1
    if args.timeout is not None and t.timeout_s is not None:
        from dataclasses import replace

        t = replace(t, timeout_s=args.timeout)
    sandbox = None
    if t.context_param is not None:  # only tools that take a ToolContext can use the sandbox
        from agentic_gcpo.sandbox import SandboxConfig, make_sandbox

        sandbox = make_sandbox(SandboxConfig(pool_size=0))
    try:
        outcome = t.call(arguments, ToolContext(session="cli", sandbox=sandbox))
    finally:
        if sandbox is not None:
            sandbox.close()
    print(outcome.observation)
    if outcome.status != "ok":
        print(f"error: the call failed with status '{outcome.status}'", file=sys.stderr)
        return 1
    return 0


def _prompt(args: argparse.Namespace) -> int:
    from agentic_gcpo.models import load_tokenizer
    from agentic_gcpo.rollout.chat import ChatFormat
    from agentic_gcpo.tool_registry import get_tools

    try:
        tools = get_tools(args.names, args.modules)
    except (ToolLoadError, FileNotFoundError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tok = load_tokenizer(args.model)
    chat = ChatFormat(tok, tools, args.call_format)
    print(tok.decode(chat.prompt_ids(args.question)), end="")
    return 0


def run_tools_cli(argv: list[str]) -> int:
    """`agentic-gcpo tools ...` without the rest of the CLI (argv starts after 'tools')."""
    p = argparse.ArgumentParser(prog="agentic-gcpo")
    add_tools_parser(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(["tools", *argv])
    return int(args.fn(args))
