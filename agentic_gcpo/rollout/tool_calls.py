"""Tool-call formats and a total parser for one assistant turn.

Two formats, both plain text the model writes:

- fenced:  ```python\\n<code>\\n```           -> a call of the `python` tool with {"code": <code>}
- json:    <tool_call>{"name": ..., "arguments": {...}}</tool_call>   (Hermes / Qwen style)

`parse_turn` never raises, whatever the text (tests/test_tool_calls.py fuzzes it): any text gives
calls, some of which may carry an error that becomes the model's observation, or no call at all,
which ends the trajectory as a final answer. Statuses: "ok", "malformed" (the call could not be
read), "unknown_tool" (it names a tool the run does not have); the agent loop records them per call
and metrics count them.
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
PARSE_STATUSES = ("ok", "malformed", "unknown_tool")
_JSON_FENCE = re.compile(r"^```(?:json)?[ \t]*\n?(.*?)\n?```$", re.DOTALL)
_SHOW = 80  # how much of a model-written name an error message repeats

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


_Found = list[tuple[int, int, ParsedCall]]  # (start, end, call) spans in the text


def _malformed(error: str, name: str | None = None) -> ParsedCall:
    return ParsedCall(name, None, error, "malformed")


def _fenced(text: str, out: _Found) -> None:
    pos = 0
    while True:
        m = FENCE_OPEN.search(text, pos)
        if not m:
            return
        end = text.find(FENCE_CLOSE, m.end())
        if end < 0:
            out.append(
                (m.start(), len(text), _malformed("the ```python block was not closed with ```", "python"))
            )
            return
        out.append((m.start(), end + len(FENCE_CLOSE), ParsedCall("python", {"code": text[m.end() : end]})))
        pos = end + len(FENCE_CLOSE)


def _json_calls(text: str, out: _Found) -> None:
    pos = 0
    while True:
        start = text.find(JSON_OPEN, pos)
        if start < 0:
            return
        end = text.find(JSON_CLOSE, start)
        if end < 0:
            out.append((start, len(text), _malformed(f"the {JSON_OPEN} was not closed with {JSON_CLOSE}")))
            return
        out.append((start, end + len(JSON_CLOSE), _decode_json_call(text[start + len(JSON_OPEN) : end])))
        pos = end + len(JSON_CLOSE)


def _loads(text: str) -> tuple[Any, str | None]:
    # ValueError covers JSONDecodeError and Python's int-digit limit ({"a": 1111...1}).
    try:
        return json.loads(text), None
    except (ValueError, RecursionError) as e:
        return None, f"{type(e).__name__}: {str(e)[:200]}"


def _decode_json_call(body: str) -> ParsedCall:
    body = body.strip()
    fenced = _JSON_FENCE.match(body)  # models often wrap the object in ```json ... ```
    if fenced:
        body = fenced.group(1).strip()
    obj, err = _loads(body)
    if err is not None:
        return _malformed(f"tool call is not valid JSON ({err})")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return _malformed('tool call must be a JSON object with a string "name" and an "arguments" object')
    name = obj["name"]
    args = obj.get("arguments", obj.get("parameters"))
    if args is None:
        args = {}
    if isinstance(args, str):  # some models double-encode the arguments
        args, err = _loads(args)
        if err is not None:
            return _malformed('"arguments" is a string that is not valid JSON', name)
    if not isinstance(args, dict):
        return _malformed(f'"arguments" must be a JSON object, got {type(args).__name__}', name)
    return ParsedCall(name, args)


def parse_turn(text: str, call_format: str, tool_names: set[str] | list[str]) -> ParsedTurn:
    """Find the tool calls in one assistant turn, in the order written. Never raises."""
    found: _Found = []
    try:
        if not isinstance(text, str):
            text = str(text)
        names = set(tool_names)
        if call_format in ("fenced", "auto") and "python" in names:
            _fenced(text, found)
        if call_format in ("json", "auto"):
            _json_calls(text, found)
        found.sort(key=lambda x: (x[0], -x[1]))
        # A call written inside another (a ```python block in a JSON "code" string) is one call.
        kept: _Found = []
        for start, end, call in found:
            if kept and start < kept[-1][1]:
                continue
            kept.append((start, end, call))
        calls = [c for _, _, c in kept]
        for c in calls:
            if c.status == "ok" and c.name not in names:
                c.status = "unknown_tool"
                shown = c.name if len(c.name or "") <= _SHOW else (c.name or "")[:_SHOW] + "..."
                c.error = f"unknown tool {shown!r}; available tools: {', '.join(sorted(names)) or '(none)'}"
    except Exception as e:  # belt and braces: the parser must be total
        calls = [_malformed(f"could not parse the tool call ({type(e).__name__})")]
    return ParsedTurn(calls[:MAX_CALLS_PER_TURN], max(0, len(calls) - MAX_CALLS_PER_TURN))
