"""The agent loop's ledger contract, with a real sandbox and real tool calls.

`ScriptedEngine` is a real `Engine` that replays fixed assistant turns (with the tiny model's own
teacher-forced logprobs), so tool calls happen deterministically; the tiny random model itself
never writes one. The last test runs the real HF engine end to end.
"""

from __future__ import annotations

import time

import torch

from agentic_gcpo.data import Problem
from agentic_gcpo.engines import Completion, Engine, SamplingParams, make_engine
from agentic_gcpo.ledger import Source
from agentic_gcpo.rollout.agent_loop import AgentLoop, LoopLimits
from agentic_gcpo.rollout.chat import ChatFormat
from agentic_gcpo.train.policy import token_logprobs


class ScriptedEngine(Engine):
    """Replays `turns[k]` as the k-th completion of every prompt; records what it returned."""

    def __init__(self, model, tok, turns: list[str], eos: int, close: list[bool]):
        self.model, self.tok, self.turns, self.eos, self.close_ = model, tok, turns, eos, close
        self.returned: list[tuple[list[int], list[int]]] = []  # (prompt, completion ids)

    def generate(self, prompts, params):
        outs = []
        for p, sp in zip(prompts, params):
            # the turn index = how many distinct earlier prompts are a prefix of this one
            k = len({len(q) for q, _ in self.returned if len(q) < len(p) and p[: len(q)] == q})
            text = self.turns[min(k, len(self.turns) - 1)]
            ids = self.tok(text, add_special_tokens=False).input_ids
            if self.close_[min(k, len(self.turns) - 1)]:
                ids = ids + [self.eos]
            ids = ids[: sp.max_new_tokens]
            full = torch.tensor([p + ids])
            with torch.no_grad():
                lp = token_logprobs(self.model, full, torch.ones_like(full), autocast_bf16=False)[
                    0, len(p) - 1 :
                ]
            fin = "stop" if len(ids) < sp.max_new_tokens or ids[-1] == self.eos else "length"
            outs.append(Completion(ids, lp.tolist(), fin))
            self.returned.append((list(p), ids))
        return outs

    def update_weights(self, state_dict=None):
        pass


def _loop(tiny, sandbox, tools, turns, close, **lim):
    model, tok = tiny
    chat = ChatFormat(tok, tools, "auto")
    eng = ScriptedEngine(model, tok, turns, chat.eos_ids[0], close)
    limits = LoopLimits(**{"max_turns": 4, "max_new_tokens_per_turn": 64, "max_total_tokens": 2048, **lim})
    return AgentLoop(eng, chat, tools, sandbox, limits), eng, chat


PROBLEM = Problem("p1", "What is 6*7?", "42")


def test_ids_are_engine_ids_plus_tool_deltas(tiny, sandbox, python_tools):
    turns = [
        "Let me compute.\n```python\nx = 6*7\nprint(x)\n```\n",
        "```python\nprint(x + 1)\n```\n",
        "So \\boxed{42}.",
    ]
    loop, eng, chat = _loop(tiny, sandbox, python_tools, turns, [False, False, True])
    trajs = loop.run([PROBLEM], group_size=2)
    loop.close()
    assert len(trajs) == 2
    for t in trajs:
        t.check()
        assert t.finish_reason == "stop" and t.num_turns == 3
        # session state persisted across calls: x was defined in the first call
        assert [c.observation for c in t.tool_calls] == ["42", "43"]
        # rebuild the ids from what the engine returned plus the tool deltas: must be identical
        mine, seen = [], set()
        for prompt, ids in eng.returned:  # this trajectory's turns (its twin made identical ones)
            if prompt == t.token_ids[: len(prompt)] and len(prompt) not in seen:
                seen.add(len(prompt))
                mine.append(ids)
        rebuilt = list(t.token_ids[: t.prompt_len])
        for k, ids in enumerate(mine):
            rebuilt += ids
            if k < len(t.tool_calls):
                rebuilt += chat.tool_turn([t.tool_calls[k].observation], ids[-1]).ids
        assert rebuilt == t.token_ids
        sampled = [tok for ids in mine for tok in ids]
        assert [tok for tok, m in zip(t.token_ids, t.loss_mask) if m] == sampled
        assert all(m == 0 for m, s in zip(t.loss_mask, t.sources) if s == Source.TOOL)


def test_malformed_json_call_becomes_an_error_observation(tiny, sandbox, python_tools):
    turns = ['<tool_call>{"name": "python", "arguments": {"code": </tool_call>', "\\boxed{1}"]
    loop, _, _ = _loop(tiny, sandbox, python_tools, turns, [False, True])
    (t,) = loop.run([PROBLEM], group_size=1)
    loop.close()
    assert t.tool_calls[0].status == "malformed" and "not valid JSON" in t.tool_calls[0].observation
    assert t.finish_reason == "stop" and "malformed" in t.parse_errors


def test_unknown_tool_and_bad_args(tiny, sandbox, python_tools):
    turns = [
        '<tool_call>{"name": "browser", "arguments": {}}</tool_call><tool_call>{"name": "python", "arguments": {"cod": "1"}}</tool_call>',
        "\\boxed{1}",
    ]
    loop, _, _ = _loop(tiny, sandbox, python_tools, turns, [False, True])
    (t,) = loop.run([PROBLEM], group_size=1)
    loop.close()
    assert [c.status for c in t.tool_calls] == ["unknown_tool", "invalid_args"]
    assert "available tools: python" in t.tool_calls[0].observation


def test_infinite_loop_code_is_an_observation_not_a_hang(tiny, python_tools):
    from agentic_gcpo.sandbox import SandboxConfig, make_sandbox

    with make_sandbox(SandboxConfig(timeout_s=1.0, pool_size=1)) as box:
        loop, _, _ = _loop(
            tiny, box, python_tools, ["```python\nwhile True: pass\n```\n", "\\boxed{0}"], [False, True]
        )
        (t,) = loop.run([PROBLEM], group_size=1)
        loop.close()
    assert t.tool_calls[0].status == "tool_error" and "Timeout" in t.tool_calls[0].observation
    assert t.finish_reason == "stop"


def test_turn_and_token_limits_have_named_reasons(tiny, sandbox, python_tools):
    call = "```python\nprint(1)\n```\n"
    loop, _, _ = _loop(tiny, sandbox, python_tools, [call], [False], max_turns=2)
    (t,) = loop.run([PROBLEM], group_size=1)
    assert t.finish_reason == "max_turns" and t.num_turns == 2
    prompt_len = t.prompt_len
    loop, _, _ = _loop(tiny, sandbox, python_tools, [call], [False], max_total_tokens=prompt_len + 30)
    (t,) = loop.run([PROBLEM], group_size=1)
    assert t.finish_reason == "budget" and len(t.token_ids) <= prompt_len + 30
    loop, _, _ = _loop(tiny, sandbox, python_tools, ["word " * 100], [False], max_new_tokens_per_turn=8)
    (t,) = loop.run([PROBLEM], group_size=1)
    assert t.finish_reason == "length" and t.num_policy_tokens == 8


def test_real_engine_end_to_end(tiny, sandbox, python_tools):
    model, tok = tiny
    chat = ChatFormat(tok, python_tools)
    eng = make_engine("hf", model, tok, dtype="float32")
    loop = AgentLoop(
        eng, chat, python_tools, sandbox, LoopLimits(max_new_tokens_per_turn=16, max_total_tokens=512)
    )
    trajs = loop.run([PROBLEM, Problem("p2", "What is 1+1?", "2")], group_size=3, seed=1)
    loop.close()
    assert [t.group_id for t in trajs] == [0, 0, 0, 1, 1, 1]
    for t in trajs:
        t.check()
        assert t.finish_reason in {"stop", "length", "max_turns", "budget"}
        assert t.num_policy_tokens > 0 and t.token_ids[: t.prompt_len] == chat.prompt_ids(
            PROBLEM.question if t.problem_id == "p1" else "What is 1+1?"
        )
    params = SamplingParams(4)
    assert params.max_new_tokens == 4


class StepEngine(Engine):
    """A continuously batching `Engine` that emits a scripted turn one token per `poll`, so a test
    controls how long each turn takes. Scripts are chosen by a phrase of the problem; the turn
    index is the number of assistant turns already in the prompt. Logs submits and completions
    with the poll count at which they happened."""

    continuous = True

    def __init__(self, tok, scripts: dict[str, list[str]], eos: int):
        super().__init__()
        self.tok, self.scripts, self.eos = tok, scripts, eos
        self.active: dict = {}  # key -> (ids to emit, emitted so far)
        self.polls = 0
        self.log: list[tuple[str, str, int, int]] = []  # (event, phrase, turn, poll)

    def submit(self, key, prompt, params):
        text = self.tok.decode(prompt)
        phrase = next(k for k in self.scripts if k in text)
        turn = text.count("<|im_start|>assistant") - 1
        script = self.scripts[phrase][turn]
        ids = self.tok(script, add_special_tokens=False).input_ids
        ids = ids + ([self.eos] if "boxed" in script else [])
        self.active[key] = (ids, 0, phrase, turn)
        self.log.append(("submit", phrase, turn, self.polls))

    def outstanding(self):
        return len(self.active)

    def poll(self, wait_s=0.05):
        time.sleep(0.03)  # a decode step's time: 80 tokens take ~2.4 s, a sandboxed print far less
        self.polls += 1
        done = []
        for key, (ids, n, phrase, turn) in list(self.active.items()):
            if n + 1 < len(ids):
                self.active[key] = (ids, n + 1, phrase, turn)
                continue
            del self.active[key]
            self.log.append(("done", phrase, turn, self.polls))
            done.append((key, Completion(ids, [-1.0] * len(ids), "stop", self.eos)))
        return done

    def generate(self, prompts, params):  # the batch call, through the same steps
        for i, (p, sp) in enumerate(zip(prompts, params)):
            self.submit(("gen", i), p, sp)
        done = {}
        while self.active:
            done.update(self.poll())
        return [done[("gen", i)] for i in range(len(prompts))]

    def update_weights(self, state_dict=None):
        pass


def test_a_trajectory_takes_its_next_turn_while_another_is_still_decoding(tiny, sandbox, python_tools):
    """With a continuously batching engine, the fast trajectory's tool result comes back and its
    second turn is submitted while the slow trajectory's (80-token) first turn is still decoding."""
    model, tok = tiny
    chat = ChatFormat(tok, python_tools, "auto")
    scripts = {
        "apples": ["```python\nprint(6*7)\n```\n", "So \\boxed{42}."],
        "pears": ["word " * 80 + "\\boxed{1}"],
    }
    eng = StepEngine(tok, scripts, chat.eos_ids[0])
    loop = AgentLoop(eng, chat, python_tools, sandbox, LoopLimits(4, 256, 2048))
    fast, slow = loop.run([Problem("a", "How many apples?", "42"), Problem("b", "How many pears?", "1")], 1)
    loop.close()
    assert fast.num_turns == 2 and fast.tool_calls[0].observation == "42" and slow.num_turns == 1
    when = {(ev, phrase, turn): poll for ev, phrase, turn, poll in eng.log}
    assert when[("submit", "apples", 1)] < when[("done", "pears", 0)]
    assert when[("done", "apples", 1)] < when[("done", "pears", 0)]


def test_limits_from_a_rollout_config():
    """Training loops take the rollout section whole; eval and golden writers pass their own
    sampling but keep the rollout's token budgets (what the policy may write in training)."""
    from agentic_gcpo.config import load_config

    r = load_config(
        None,
        [
            "rollout.max_turns=3",
            "rollout.max_new_tokens_per_turn=96",
            "rollout.max_total_tokens=700",
            "rollout.temperature=0.8",
            "rollout.top_p=0.9",
            "rollout.tool_threads=2",
        ],
    ).rollout
    assert LoopLimits.from_rollout(r) == LoopLimits(3, 96, 700, 0.8, 0.9, 2)
    assert LoopLimits.from_rollout(r, temperature=0.0, top_p=1.0) == LoopLimits(3, 96, 700, 0.0, 1.0, 2)
