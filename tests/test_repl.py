"""`agentic-gcpo repl` driven as a person would, in a real pseudo-terminal (pexpect), with real models
and the real sandbox: no engine, tool or sandbox is mocked.

A random tiny model never writes a tool call, so one test model is made that does: the tiny model,
overfitted by teacher forcing on the loss-mask tokens of one golden trajectory (built by
rollout/golden.py, its tool call run in the sandbox). Greedy decoding then replays that trajectory
through the agent loop: a python call, its real output, a boxed answer.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import pytest
from overfit import GOLDEN, QUESTION, overfit

from agentic_gcpo.data import Problem

pexpect = pytest.importorskip("pexpect")

PROMPT = "gcpo>"  # prompt_toolkit draws the space as a cursor move


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory, sandbox, python_tools):
    """A model directory whose greedy rollout of QUESTION calls python and answers 7 (~10 s on CPU)."""
    from agentic_gcpo.engines import make_engine
    from agentic_gcpo.models import tiny_model
    from agentic_gcpo.rollout.agent_loop import AgentLoop, LoopLimits
    from agentic_gcpo.rollout.chat import ChatFormat
    from agentic_gcpo.rollout.golden import GoldenSource

    model, tok = tiny_model(seed=0)
    chat = ChatFormat(tok, python_tools, "auto", None, 0)  # the REPL's default prompt and call format
    problem = Problem("p", QUESTION, "7", "", GOLDEN)
    golden = GoldenSource(chat, python_tools, sandbox).get(problem, 0)
    assert golden is not None and golden.tool_calls[0].observation.strip() == "7"
    loss = overfit(model, golden.token_ids, golden.loss_mask)
    # the fixture's own check, so a failure here is not mistaken for a REPL bug
    loop = AgentLoop(
        make_engine("hf", model, tok, dtype="float32"),
        chat,
        python_tools,
        sandbox,
        LoopLimits(temperature=0.0),
    )
    replay = loop.run([problem], 1)[0]
    loop.close()
    assert replay.token_ids == golden.token_ids, f"overfitting did not take (loss {loss:.3f})"
    out = tmp_path_factory.mktemp("tool_model")
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    row = {"question": QUESTION, "answer": "Tom has 3+4=<<3+4=7>>7 apples.\n#### 7", "golden": GOLDEN}
    (out / "data.jsonl").write_text(json.dumps(row) + "\n")
    return out


def _spawn(args: list[str], tmp_path) -> pexpect.spawn:
    env = dict(os.environ)
    # plain text to match on; no cursor-position requests a pty without a terminal cannot answer
    env.update(NO_COLOR="1", PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "agentic_gcpo.cli", "repl", "--history", str(tmp_path / "history"), *args]
    child = pexpect.spawn(cmd[0], cmd[1:], env=env, encoding="utf-8", timeout=120, dimensions=(50, 200))
    child.logfile_read = open(tmp_path / "transcript.txt", "w")  # noqa: SIM115 - read on failure
    return child


def test_repl_session_with_a_tool_using_model(tool_model, tmp_path):
    data = tool_model / "data.jsonl"
    saved = tmp_path / "saved.jsonl"
    child = _spawn(
        ["--model", str(tool_model / "model"), "engine.dtype=float32", "sandbox.pool_size=1"], tmp_path
    )
    child.expect("Type a problem")
    child.expect_exact(PROMPT)

    # a typed problem: reasoning streams, the call is shown with its code, then the sandbox's output
    child.sendline(QUESTION)
    child.expect("── turn 1 ──")
    child.expect(r"⚙ tool call: python\s+│ x = 3 \+ 4\s+│ print\(x\)")
    child.expect(r"→ output \(ok[^\n]*not trained on\):\s+│ 7")
    child.expect("── turn 2 ──")
    child.expect(r"■ answer: 7 · no reference")
    child.expect_exact(PROMPT)

    child.sendline("/tokens")
    child.expect(r"\[sampled · mask 1 · trained on · #\d+-#\d+ · mean logprob -?\d")
    child.expect(r"\[template · mask 0 · not trained on")
    child.expect(r"\[tool · mask 0 · not trained on")
    child.expect_exact(PROMPT)

    # a bad command: one line naming the valid ones, then the prompt again
    child.sendline("/frobnicate")
    child.expect(r"error: unknown command /frobnicate; commands: /help [^\r\n]*/quit[^\r\n]*\r\n")
    child.expect_exact(PROMPT)

    # a dataset problem with its reference: verified
    child.sendline(f"/load {data} 0")
    child.expect("reference: 7")
    child.expect("⚙ tool call: python")
    child.expect(r"■ answer: 7 · reference: 7 · ✓ correct")
    child.expect_exact(PROMPT)

    child.sendline("/k 2")
    child.expect(r"#0 answer: ")
    child.expect(r"#1 answer: ")
    child.expect(r"pass rate [0-2]/2 \(\d+%\) · majority answer")
    child.expect_exact(PROMPT)

    child.sendline("/golden")
    child.expect("GOLDEN trajectory")
    child.expect(r"→ output \(ok[^\n]*not trained on\):\s+│ 7")
    child.expect(r"\[tool · mask 0 · not trained on")
    child.expect_exact(PROMPT)

    # under a 2-token turn the policy could not write that golden: shown, and flagged as training flags it
    child.sendline("/set tokens 2")
    child.expect_exact(PROMPT)
    child.sendline("/golden")
    child.expect("GOLDEN trajectory")
    child.expect(r"note: it is longer than the loop's limits \(tokens/turn 2, turns \d+, budget \d+\)")
    child.expect_exact(PROMPT)
    child.sendline("/set tokens 256")
    child.expect_exact(PROMPT)

    child.sendline(f"/save {saved}")
    child.expect("appended 3 trajectories")
    child.expect_exact(PROMPT)

    child.sendline("/reset")
    child.expect("forgot the problem")
    child.sendline("/tokens")
    child.expect("no trajectory yet")
    child.expect_exact(PROMPT)

    child.sendline("/quit")
    child.expect("bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    lines = [json.loads(x) for x in saved.read_text().splitlines()]
    assert [d["is_golden"] for d in lines] == [False, False, True]
    assert all(d["question"] == QUESTION for d in lines)


def test_help_ctrl_c_during_generation_and_ctrl_d(tmp_path):
    # The random tiny model at temperature 1 rambles for thousands of tokens: time enough to interrupt.
    from agentic_gcpo.repl.commands import COMMANDS

    child = _spawn(["--model", "tiny", "--tools", "none", "engine.dtype=float32"], tmp_path)
    child.expect_exact(PROMPT)
    child.sendline("/help")  # every command is discoverable
    for name in COMMANDS:
        child.expect(re.escape(name) + " ")
    child.expect_exact(PROMPT)
    child.sendline("/k x")  # a bad argument: the command's usage, in one line
    child.expect(r"error: usage: /k N  \(N trajectories[^\r\n]*\)\r\n")
    child.expect_exact(PROMPT)
    for line in ("/set temperature 1", "/set tokens 4000", "/set budget 5000"):
        child.sendline(line)
        child.expect_exact(PROMPT)
    child.sendline("Say something long.")
    child.expect("── turn 1 ──")
    child.expect(r"[^\s│]{20}")  # text is streaming in
    time.sleep(0.5)
    child.sendintr()
    t0 = time.monotonic()
    child.expect("generation stopped")
    assert time.monotonic() - t0 < 30
    child.expect_exact(PROMPT)
    child.sendline("/set")  # still alive, settings intact
    child.expect(r"temperature 1 · top_p 1 · tokens/turn 4000")
    child.expect_exact(PROMPT)
    child.send("\x1b[A")  # arrow up: the last line again from the history
    child.send("\r")
    child.expect(r"temperature 1 · top_p 1 · tokens/turn 4000")
    child.expect_exact(PROMPT)
    child.send("/gol\t")  # Tab completes the command
    child.expect("den")
    child.send("\r")
    child.expect("error: this problem has no worked solution")  # /golden ran, on the typed problem
    child.expect_exact(PROMPT)
    assert "■ answer" not in (tmp_path / "transcript.txt").read_text()  # the stopped run was not scored
    child.sendcontrol("d")
    child.expect("bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.parametrize("over_limits", ["keep", "refuse"])
def test_golden_longer_than_the_session_limits(over_limits, sandbox):
    """/golden checks the golden against the session's limits, as the trainer checks its rollout
    limits: kept with a note (golden.over_limits=keep), or refused with the reason (refuse)."""
    from agentic_gcpo.config import load_config
    from agentic_gcpo.repl.session import Session, SessionError

    cfg = load_config(None, [f"golden.over_limits={over_limits}", "engine.dtype=float32"])
    s = Session(cfg, ["python"], sandbox=sandbox)
    s.load_model("tiny")
    try:
        s.set_problem(Problem("p", QUESTION, "7", "", GOLDEN), has_reference=True)
        assert s.build_golden().is_golden and s.golden_note is None  # fits the default limits
        s.set_value("tokens", "2")
        if over_limits == "keep":
            g = s.build_golden()
            assert g.is_golden and s.golden is g
            assert "longer than the loop's limits (tokens/turn 2" in s.golden_note
        else:
            with pytest.raises(SessionError, match=r"longer than the loop's limits .* is 'refuse'"):
                s.build_golden()
    finally:
        s.sandbox = None  # the module's shared sandbox; the fixture closes it
        s.close()
