"""Tool-call parser: examples, a property-based fuzz (no exception escapes, ever), and the counters.

The last test drives the real agent loop with a scripted engine (fixed token ids per turn, no
model) and checks that "no call", "malformed", "unknown tool", "invalid args" and "tool error"
each reach `rollout_metrics`.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentic_gcpo.rollout.tool_calls import (
    JSON_CLOSE,
    JSON_OPEN,
    MAX_CALLS_PER_TURN,
    PARSE_STATUSES,
    ParsedTurn,
    parse_turn,
)
from agentic_gcpo.tool_registry import STATUSES, ToolContext, get_tools

NAMES = {"python", "calculator"}


def call(name: str, args: object) -> str:
    return f"{JSON_OPEN}{json.dumps({'name': name, 'arguments': args})}{JSON_CLOSE}"


# --- examples ---------------------------------------------------------------------------------
def test_json_call():
    t = parse_turn("Let me compute.\n" + call("calculator", {"expression": "2+2"}), "json", NAMES)
    assert [(c.name, c.arguments, c.status) for c in t.calls] == [("calculator", {"expression": "2+2"}, "ok")]


def test_fenced_call_and_order_in_auto():
    text = call("calculator", {"expression": "1"}) + "\n```python\nprint(2)\n```\n"
    t = parse_turn(text, "auto", NAMES)
    assert [c.name for c in t.calls] == ["calculator", "python"] and t.calls[1].arguments == {
        "code": "print(2)\n"
    }
    assert [c.name for c in parse_turn(text, "json", NAMES).calls] == ["calculator"]
    assert [c.name for c in parse_turn(text, "fenced", NAMES).calls] == ["python"]


def test_fenced_needs_the_python_tool():
    assert not parse_turn("```python\nprint(1)\n```", "fenced", {"calculator"}).has_calls


def test_no_call_is_a_final_answer():
    t = parse_turn("The answer is \\boxed{4}.", "auto", NAMES)
    assert isinstance(t, ParsedTurn) and not t.has_calls and t.ignored_calls == 0


@pytest.mark.parametrize(
    "text,error",
    [
        (f"{JSON_OPEN}{{'name': 'calculator'}}{JSON_CLOSE}", "not valid JSON"),
        (f"{JSON_OPEN}[1, 2]{JSON_CLOSE}", 'string "name"'),
        (
            f'{JSON_OPEN}{{"name": "calculator", "arguments": 5}}{JSON_CLOSE}',
            "must be a JSON object, got int",
        ),
        (
            f'{JSON_OPEN}{{"name": "calculator", "arguments": "{{x"}}{JSON_CLOSE}',
            "string that is not valid JSON",
        ),
        (f'{JSON_OPEN}{{"name": "calculator"', "was not closed"),
        ("```python\nprint(1)", "was not closed"),
        (f'{JSON_OPEN}{{"a": {"1" * 5000}}}{JSON_CLOSE}', "not valid JSON"),  # int digit limit
        (f"{JSON_OPEN}{'[' * 100_000}{JSON_CLOSE}", "not valid JSON"),  # recursion
    ],
)
def test_malformed_calls_are_named(text, error):
    t = parse_turn(text, "auto", NAMES)
    assert len(t.calls) == 1 and t.calls[0].status == "malformed" and error in t.calls[0].error


def test_unknown_tool_lists_available_ones():
    c = parse_turn(call("nope", {}), "json", NAMES).calls[0]
    assert (
        c.status == "unknown_tool" and c.error == "unknown tool 'nope'; available tools: calculator, python"
    )
    long = parse_turn(call("n" * 10_000, {}), "json", NAMES).calls[0]
    assert long.status == "unknown_tool" and len(long.error) < 200


def test_lenient_forms_models_write():
    double = f'{JSON_OPEN}{{"name": "calculator", "arguments": "{{\\"expression\\": \\"3\\"}}"}}{JSON_CLOSE}'
    assert parse_turn(double, "json", NAMES).calls[0].arguments == {"expression": "3"}
    fenced = f'{JSON_OPEN}\n```json\n{{"name": "calculator", "arguments": {{"expression": "3"}}}}\n```\n{JSON_CLOSE}'
    assert parse_turn(fenced, "json", NAMES).calls[0].status == "ok"
    params = f'{JSON_OPEN}{{"name": "calculator", "parameters": {{"expression": "3"}}}}{JSON_CLOSE}'
    assert parse_turn(params, "json", NAMES).calls[0].arguments == {"expression": "3"}


def test_nested_fence_inside_json_is_one_call():
    text = call("python", {"code": "```python\nprint(1)\n```"})
    t = parse_turn(text, "auto", NAMES)
    assert len(t.calls) == 1 and t.calls[0].arguments["code"].startswith("```python")


def test_too_many_calls_are_counted():
    t = parse_turn(call("calculator", {"expression": "1"}) * 7, "json", NAMES)
    assert len(t.calls) == MAX_CALLS_PER_TURN and t.ignored_calls == 7 - MAX_CALLS_PER_TURN


# --- property-based fuzz ----------------------------------------------------------------------
FRAGMENTS = [
    JSON_OPEN, JSON_CLOSE, "<tool_call", "tool_call>", "</tool_", "```", "```python\n", "```py\n", "```json\n",
    "```\n", "<|im_end|>", "<|im_start|>", "<|im_start|>assistant\n", "<|endoftext|>", "\x00", "\ud800",
    '{"name": "calculator", "arguments": {"expression": "1+1"}}', '{"name": "python", "arguments": {"code": "1"}}',
    '{"name": "nope", "arguments": {}}', '{"name": ', '"arguments": ', "{", "}", "[", "]", '"', "\\", ":", ",",
    "null", "1e999", "-0", "\n", " ", "\u202e", "\U0001f600", "λ", "∫", "\\boxed{4}",
]  # fmt: skip
ANY_CHAR = st.characters(codec=None, exclude_categories=())  # every code point: surrogates, NUL ...
TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=300),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(ANY_CHAR, max_size=8)), max_size=60).map("".join),
    st.tuples(st.sampled_from(FRAGMENTS), st.integers(1, 20_000)).map(lambda p: p[0] * p[1]),  # very long
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(ANY_CHAR, max_size=10)),
        lambda kids: (
            st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from(["name", "arguments", "x"]), kids)
        ),
        max_leaves=12,
    ).map(lambda obj: JSON_OPEN + json.dumps(obj) + JSON_CLOSE),
)
FORMATS = st.sampled_from(["auto", "json", "fenced", "bogus"])
TOOLSETS = st.sampled_from([NAMES, {"calculator"}, set(), ["python"]])


def check_invariants(turn: ParsedTurn, names: set[str] | list[str]) -> None:
    assert isinstance(turn, ParsedTurn)
    assert len(turn.calls) <= MAX_CALLS_PER_TURN and turn.ignored_calls >= 0
    for c in turn.calls:
        assert c.status in PARSE_STATUSES
        if c.status == "ok":
            assert c.name in names and isinstance(c.arguments, dict) and c.error is None
        else:
            assert isinstance(c.error, str) and c.error


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(text=TEXT, fmt=FORMATS, names=TOOLSETS)
def test_parser_is_total(text, fmt, names):
    check_invariants(parse_turn(text, fmt, names), names)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    args=st.dictionaries(
        st.sampled_from(["expression", "code", "x"]),
        st.one_of(
            st.text(ANY_CHAR, max_size=40), st.integers(), st.none(), st.lists(st.integers(), max_size=3)
        ),
        max_size=3,
    )
)
def test_parsed_calls_through_the_registry_never_raise(args):
    """Whatever arguments a well-formed call carries, the tool answers with a known status."""
    tools = get_tools(["calculator"])
    turn = parse_turn(call("calculator", args), "json", {"calculator"})
    check_invariants(turn, {"calculator"})
    out = tools["calculator"].call(turn.calls[0].arguments, ToolContext(session="fuzz"))
    assert out.status in STATUSES and out.observation
    out.observation.encode("utf-8")  # no lone surrogates reach the tokenizer


def test_non_string_input_does_not_raise():
    check_invariants(parse_turn(None, "auto", NAMES), NAMES)  # type: ignore[arg-type]
    check_invariants(parse_turn(b"```python\n1\n```", "auto", NAMES), NAMES)  # type: ignore[arg-type]


# --- the counters reach the metrics -----------------------------------------------------------
def test_counters_reach_rollout_metrics():
    from agentic_gcpo.data import Problem
    from agentic_gcpo.engines.base import Completion, Engine
    from agentic_gcpo.metrics import rollout_metrics
    from agentic_gcpo.models import load_tokenizer
    from agentic_gcpo.rollout.agent_loop import AgentLoop, LoopLimits
    from agentic_gcpo.rollout.chat import ChatFormat

    tok = load_tokenizer("embedded")
    script = {
        "Q-none": ["The answer is \\boxed{1}."],
        "Q-malformed": [f"{JSON_OPEN}{{bad json{JSON_CLOSE}", "\\boxed{1}"],
        "Q-unknown": [call("nope", {}), "\\boxed{1}"],
        "Q-errors": [
            call("calculator", {"expr": "1"}),
            call("calculator", {"expression": "1/0"}),
            "\\boxed{1}",
        ],
    }

    class ScriptedEngine(Engine):
        """Replays fixed assistant turns, chosen by the question in the prompt; no model."""

        def __init__(self) -> None:
            self.turn: dict[str, int] = {}

        def generate(self, prompts, params):
            out = []
            for ids in prompts:
                text = tok.decode(ids)
                q = next(k for k in script if k in text)
                k = self.turn.get(q, 0)
                self.turn[q] = k + 1
                reply = tok(script[q][k], add_special_tokens=False).input_ids + [
                    tok.convert_tokens_to_ids("<|im_end|>")
                ]
                out.append(Completion(reply, [-0.5] * len(reply), "stop"))
            return out

        def update_weights(self, state_dict=None):
            pass

    tools = get_tools(["calculator"])
    chat = ChatFormat(tok, tools, "json")
    loop = AgentLoop(ScriptedEngine(), chat, tools, None, LoopLimits(max_turns=4, max_total_tokens=4096))
    try:
        trajs = loop.run([Problem(q, q, "1") for q in script], group_size=1)
    finally:
        loop.close()
    statuses = {t.problem_id: [c.status for c in t.tool_calls] for t in trajs}
    assert statuses == {
        "Q-none": [],
        "Q-malformed": ["malformed"],
        "Q-unknown": ["unknown_tool"],
        "Q-errors": ["invalid_args", "tool_error"],
    }
    m = rollout_metrics(trajs)
    assert m["tools/no_call_traj"] == 1.0
    assert m["response/sampled_nll"] == 0.5  # every sampled token had logprob -0.5; tool tokens none
    assert (
        m["tools/malformed"],
        m["tools/unknown_tool"],
        m["tools/invalid_args"],
        m["tools/tool_error"],
    ) == (1, 1, 1, 1)
    obs = [c.observation for t in trajs for c in t.tool_calls]
    assert any("Usage: calculator(expression)" in o for o in obs) and "Error: division by zero" in obs
