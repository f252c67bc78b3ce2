"""GSM8K annotations -> verified golden tool trajectories, executed in the real sandbox."""

from __future__ import annotations

import pytest

from agentic_gcpo.data import Problem, load_problems
from agentic_gcpo.ledger import Source
from agentic_gcpo.rollout.agent_loop import LoopLimits
from agentic_gcpo.rollout.chat import ChatFormat
from agentic_gcpo.rollout.golden import GoldenSource, python_expr, reference_turns


@pytest.fixture(scope="module")
def rows():
    return load_problems("builtin:gsm8k_train_500", limit=40)


@pytest.fixture()
def source(tiny, python_tools, sandbox):
    _, tok = tiny
    return GoldenSource(ChatFormat(tok, python_tools), python_tools, sandbox)


@pytest.mark.parametrize(
    "expr, out",
    [
        ("48/2", "48/2"),
        ("0.2*50", "0.2*50"),
        ("0.2 x 50", "0.2*50"),
        ("1,000+5", "1000+5"),
        ("20%*10", "(20/100)*10"),
        ("2^3", "2**3"),
        ("$5*3", "5*3"),
        ("x*3", None),  # a name: not plain arithmetic
        ("__import__('os')", None),
        ("", None),
        ("3+", None),
    ],
)
def test_python_expr(expr, out):
    assert python_expr(expr) == out


def test_first_rows_become_python_calls(rows):
    code, final = reference_turns(rows[0])
    assert code == "print(48/2)\nprint(48+24)"
    assert "<<" not in final and final.endswith("\\boxed{72}.")
    code, _ = reference_turns(rows[1])
    assert code == "print(12/60)\nprint(0.2*50)"


def test_commented_style_puts_the_reasoning_before_each_print(rows):
    code, final = reference_turns(rows[0], "commented")
    assert code == (
        "# Natalia sold 48/2 clips in May.\nprint(48/2)\n"
        "# Natalia sold 48+24 clips altogether in April and May.\nprint(48+24)"
    )
    assert final == "The answer is \\boxed{72}."
    code, _ = reference_turns(rows[1], "commented")  # '= $<<12/60=0.2>>0.2' loses its result
    assert code.splitlines()[0] == "# Weng earns 12/60 per minute."
    bare = Problem("b", "Run 12 miles?", "12", "They run <<12=12>>12 miles a day.")
    assert reference_turns(bare, "commented")[0] == "# They run 12 miles a day.\nprint(12)"
    plain = Problem("p", "2+2?", "4", "Two and two make four.")
    assert reference_turns(plain, "commented") == (None, "Two and two make four.\nThe answer is \\boxed{4}.")
    with pytest.raises(ValueError, match="valid: restate, commented"):
        reference_turns(rows[0], "verbose")


@pytest.mark.parametrize("style", ["restate", "commented"])
def test_most_real_rows_build_in_both_styles(tiny, python_tools, sandbox, rows, style):
    src = GoldenSource(ChatFormat(tiny[1], python_tools), python_tools, sandbox, style=style)
    ok = [g for g in (src.get(p, 0) for p in rows) if g is not None]
    assert len(ok) >= 36 and sum(bool(g.tool_calls) for g in ok) >= 34, (style, len(ok))
    if style == "commented":  # the answer turn is the short boxed line
        assert all(g.turn_texts[-1].startswith("The answer is") for g in ok if g.tool_calls)


def test_golden_trajectory_runs_in_sandbox_and_verifies(source, rows):
    g = source.get(rows[0], group_id=7)
    assert g is not None and g.is_golden and g.correct and g.reward == 1.0 and g.group_id == 7
    assert [c.observation for c in g.tool_calls] == ["24.0\n72"]
    g.check()
    tok = source.chat.tok
    segs = [(Source(s).name, tok.decode(ids)) for s, ids in g.segments()]
    assert [s for s, _ in segs] == ["PROMPT", "SAMPLED", "TEMPLATE", "TOOL", "TEMPLATE", "SAMPLED"]
    assert segs[3][1] == "24.0\n72"  # the tool output is exactly the observation, mask 0
    assert segs[1][1].endswith("```\n") and segs[5][1].endswith("<|im_end|>")
    mask = g.loss_mask
    assert all(m == 0 for m, s in zip(mask, g.sources) if s == Source.TOOL)
    assert sum(mask) == sum(len(ids) for s, ids in g.segments() if s == Source.SAMPLED)


def test_golden_is_cached_and_copied(source, rows):
    a, b = source.get(rows[0], 1), source.get(rows[0], 2)
    assert a is not b and a.token_ids == b.token_ids and (a.group_id, b.group_id) == (1, 2)
    assert source.stats.built == 1


def test_golden_that_fails_verification_is_not_injected(source):
    # A row's own golden message list that reaches a wrong answer is refused and counted.
    wrong = Problem(
        "w", "What is 2+2?", "4", "", golden=[{"role": "assistant", "content": "It is \\boxed{5}."}]
    )
    before = source.stats.verify_failures
    assert source.get(wrong, 0) is None
    assert source.stats.verify_failures == before + 1


def test_plain_text_solution_gives_tool_free_golden(source):
    p = Problem("plain", "What is 2+2?", "4", "Two and two make four.")
    g = source.get(p, 0)
    assert g is not None and not g.tool_calls and g.num_turns == 1


def test_golden_from_row_messages(source):
    msgs = [
        {"role": "assistant", "content": "```python\nprint(6*7)\n```\n"},
        {"role": "tool", "content": "ignored: re-executed"},
        {"role": "assistant", "content": "So \\boxed{42}."},
    ]
    g = source.get(Problem("m", "6 times 7?", "42", "", golden=msgs), 0)
    assert g is not None and [c.observation for c in g.tool_calls] == ["42"]


@pytest.mark.parametrize("refuse", [False, True])
def test_a_golden_longer_than_the_rollout_limits_is_counted_and_refused_if_asked(
    tiny, python_tools, sandbox, rows, refuse
):
    _, tok = tiny
    chat = ChatFormat(tok, python_tools)
    fits = GoldenSource(chat, python_tools, sandbox, limits=LoopLimits(2, 4096, 1 << 16))
    g = fits.get(rows[0], 0)
    assert g is not None and fits.stats.over_limits == 0
    n = len(g.turn_texts)  # policy tokens per assistant turn; the last one ends with end-of-turn
    longest = max(len(chat.encode_assistant(t, close_turn=k == n - 1)) for k, t in enumerate(g.turn_texts))
    cases = [  # each limit one token short of this golden: a turn, the turn count, the total
        LoopLimits(2, longest - 1, 1 << 16),
        LoopLimits(1, 4096, 1 << 16),
        LoopLimits(2, 4096, len(g.token_ids) - 1),
    ]
    for k, lim in enumerate(cases):
        src = GoldenSource(chat, python_tools, sandbox, limits=lim, refuse_over_limits=refuse)
        got = src.get(rows[0], 0)
        assert src.stats.over_limits == 1, k
        assert (got is None) == refuse, k
        assert src.stats.built == (0 if refuse else 1), k
    # exactly at the limits: a rollout could have written it
    exact = LoopLimits(2, longest, len(g.token_ids))
    src = GoldenSource(chat, python_tools, sandbox, limits=exact, refuse_over_limits=True)
    assert src.get(rows[0], 0) is not None and src.stats.over_limits == 0
