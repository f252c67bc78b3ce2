"""Tool-call formats and a total parser for one assistant turn.

Two formats, both plain text the model writes:

- fenced:  ```python\\n<code>\\n```           -> a call of the `python` tool with {"code": <code>}
- json:    <tool_call>{"name": ..., "arguments": {...}}</tool_call>   (Hermes / Qwen style)

`parse_turn` never raises: any text gives calls (some of which may carry an error that becomes
the model's observation), or no call at all, which ends the trajectory as a final answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

FENCE_OPEN = re.compile(r"```(?:python|py)[ \t]*\n")
FENCE_CLOSE = "```"
JSON_OPEN, JSON_CLOSE = "<tool_call>", "</tool_call>"
MAX_CALLS_PER_TURN = 4

# Generation stops right after a call closes, so the model cannot hallucinate the tool's output.
# "```\n" cannot match an opening fence ("```python\n"), only a closing one.
STOP_STRINGS = {"fenced": ["```\n"], "json": [JSON_CLOSE], "auto": ["```\n", JSON_CLOSE]}


@dataclass
class ParsedCall:
    name: str | None
    arguments: Any
    error: str | None = None  # set when the call is malformed; shown to the model as the observation
    status: str = "ok"  # "ok" | "malformed" | "unknown_tool"


@dataclass
class ParsedTurn:
    calls: list[ParsedCall] = field(default_factory=list)
    ignored_calls: int = 0  # calls beyond MAX_CALLS_PER_TURN

    @property
    def has_calls(self) -> bool:
        return bool(self.calls)


def _fenced(text: str, out: list[tuple[int, ParsedCall]]) -> None:
    pos = 0
    while True:
        m = FENCE_OPEN.search(text, pos)
        if not m:
            return
        end = text.find(FENCE_CLOSE, m.end())
        if end < 0:
            out.append((m.start(), ParsedCall("python", None, "the ```python block was not closed with ```", "malformed")))
            return
        code = text[m.end() : end]
        out.append((m.start(), ParsedCall("python", {"code": code})))
        pos = end + len(FENCE_CLOSE)


def _json_calls(text: str, out: list[tuple[int, ParsedCall]]) -> None:
    pos = 0
    while True:
        start = text.find(JSON_OPEN, pos)
        if start < 0:
            return
        end = text.find(JSON_CLOSE, start)
        if end < 0:
            out.append((start, ParsedCall(None, None, f"the {JSON_OPEN} was not closed with {JSON_CLOSE}", "malformed")))
            return
        out.append((start, _decode_json_call(text[start + len(JSON_OPEN) : end])))
        pos = end + len(JSON_CLOSE)


def _decode_json_call(body: str) -> ParsedCall:
    try:
        obj = json.loads(body.strip())
    except (json.JSONDecodeError, RecursionError) as e:
        return ParsedCall(None, None, f"tool call is not valid JSON ({e.__class__.__name__}: {e})", "malformed")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ParsedCall(None, None, 'tool call must be a JSON object with a string "name"', "malformed")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models double-encode the arguments
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return ParsedCall(obj["name"], None, '"arguments" is a string that is not valid JSON', "malformed")
    return ParsedCall(obj["name"], args)


def parse_turn(text: str, call_format: str, tool_names: set[str] | list[str]) -> ParsedTurn:
    """Find the tool calls in one assistant turn, in the order written."""
    found: list[tuple[int, ParsedCall]] = []
    try:
        if call_format in ("fenced", "auto") and "python" in tool_names:
            _fenced(text, found)
        if call_format in ("json", "auto"):
            _json_calls(text, found)
    except Exception as e:  # belt and braces: the parser must be total
        found = [(0, ParsedCall(None, None, f"could not parse the tool call ({type(e).__name__})", "malformed"))]
    found.sort(key=lambda x: x[0])
    calls = [c for _, c in found]
    for c in calls:
        if c.status == "ok" and c.name not in tool_names:
            c.status = "unknown_tool"
            c.error = f"unknown tool '{c.name}'; available tools: {', '.join(sorted(tool_names))}"
    return ParsedTurn(calls[:MAX_CALLS_PER_TURN], max(0, len(calls) - MAX_CALLS_PER_TURN))
