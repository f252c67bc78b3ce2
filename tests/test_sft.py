"""Cold-start SFT: the loss is the token mean of -log p over policy tokens only, a step raises the
goldens' likelihood, `agentic-gcpo sft` writes a checkpoint that `train` starts from, bad data is clear."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import pytest
import torch

from agentic_gcpo.cli import main
from agentic_gcpo.config import ConfigError, load_config
from agentic_gcpo.data import Problem, load_problems
from agentic_gcpo.ledger import Source, Trajectory
from agentic_gcpo.rollout.agent_loop import LoopLimits
from agentic_gcpo.rollout.chat import ChatFormat
from agentic_gcpo.rollout.golden import GoldenSource
from agentic_gcpo.train.sft import build_goldens, lr_at, sft_loss, sft_step
from agentic_gcpo.train.sft_cli import continue_command

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny_cpu.yaml")


def _traj(pieces: list[tuple[Source, list[int]]]) -> Trajectory:
    t = Trajectory(problem_id="p", group_id=0, reference="1", is_golden=True)
    for src, ids in pieces:
        t.append(ids, src)
    return t


def _pieces(seed: int) -> list[tuple[Source, list[int]]]:
    """prompt, policy turn, template + tool output + template, policy turn, trailing tool output."""
    g = torch.Generator().manual_seed(seed)
    r = lambda n: torch.randint(100, 40000, (n,), generator=g).tolist()  # noqa: E731
    return [
        (Source.PROMPT, r(5)),
        (Source.SAMPLED, r(4)),
        (Source.TEMPLATE, r(2)),
        (Source.TOOL, r(3)),
        (Source.TEMPLATE, r(2)),
        (Source.SAMPLED, r(3 + seed)),
        (Source.TOOL, r(4)),
    ]


def _direct_nll(model, trajs: list[Trajectory]) -> float:
    """Mean over every SAMPLED token (of all trajectories) of -log softmax(logits)[token], unbatched."""
    total, n = 0.0, 0
    with torch.no_grad():
        for t in trajs:
            ids = torch.tensor([t.token_ids])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)  # [T, V]
            for pos in range(1, len(t.token_ids)):
                if t.sources[pos] == Source.SAMPLED:  # predicted from position pos-1
                    total -= float(logp[pos - 1, t.token_ids[pos]])
                    n += 1
    return total / n


def test_loss_is_token_mean_nll_over_policy_tokens_only(tiny):
    model, tok = tiny
    model.eval()
    a, b = _traj(_pieces(0)), _traj(_pieces(2))  # different lengths: padding is exercised
    with torch.no_grad():
        loss = float(sft_loss(model, [a, b], tok.pad_token_id))
    assert loss == pytest.approx(_direct_nll(model, [a, b]), rel=1e-5)
    assert a.num_policy_tokens + b.num_policy_tokens == 4 + 3 + 4 + 5

    # Tokens after the last policy token (a tool observation) only appear as targets: changing them
    # must change nothing, because non-policy targets are outside the loss.
    changed = _pieces(0)
    changed[-1] = (Source.TOOL, [7, 8, 9, 10])
    with torch.no_grad():
        same = float(sft_loss(model, [_traj(changed), b], tok.pad_token_id))
    assert same == pytest.approx(loss, abs=1e-6)
    # Positive control: the same tokens marked as policy-written do change the loss.
    as_policy = _pieces(0)
    as_policy[-1] = (Source.SAMPLED, as_policy[-1][1])
    with torch.no_grad():
        other = float(sft_loss(model, [_traj(as_policy), b], tok.pad_token_id))
    assert abs(other - loss) > 1e-3


def test_tool_output_gets_no_gradient_through_its_targets(tiny):
    """d loss / d logits is zero at every position whose next token is not the policy's."""
    model, tok = tiny
    t = _traj(_pieces(1))
    ids = torch.tensor([t.token_ids])
    logits = model(input_ids=ids).logits[0].detach().requires_grad_(True)  # [T, V]
    logp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, ids[0, 1:, None])[:, 0]  # [T-1]
    mask = torch.tensor(t.loss_mask[1:], dtype=torch.float32)
    (-(logp * mask).sum() / mask.sum()).backward()
    rows_with_grad = logits.grad.abs().sum(-1)[:-1] > 0  # [T-1]
    assert rows_with_grad.tolist() == [m == 1 for m in t.loss_mask[1:]]
    # ... and the production loss equals this masked one.
    with torch.no_grad():
        assert float(sft_loss(model, [t], tok.pad_token_id)) == pytest.approx(
            float(-(logp * mask).sum() / mask.sum()), rel=1e-5
        )


@pytest.fixture(scope="module")
def goldens(tiny, python_tools, sandbox):
    problems = load_problems("builtin:gsm8k_train_500", limit=4)
    src = GoldenSource(ChatFormat(tiny[1], python_tools), python_tools, sandbox, style="commented")
    return build_goldens(problems, src)


def test_one_step_raises_the_goldens_likelihood(tiny, goldens):
    model = copy.deepcopy(tiny[0])  # the session fixture stays untouched
    pad = tiny[1].pad_token_id
    gs = goldens.goldens
    assert len(gs) >= 3 and all(g.tool_calls for g in gs)
    with torch.no_grad():
        before = float(sft_loss(model, gs, pad))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    m = sft_step(model, opt, gs, pad_id=pad, lr=1e-3, micro_batch_size=2)
    with torch.no_grad():
        after = float(sft_loss(model, gs, pad))
    # micro-batches of 2 accumulate to the whole batch's token mean
    assert m["sft/loss"] == pytest.approx(before, rel=1e-4)
    assert m["sft/tokens"] == sum(g.num_policy_tokens for g in gs)
    assert after < before - 0.05, (before, after)


def test_refused_goldens_are_counted(tiny, python_tools, sandbox):
    src = GoldenSource(ChatFormat(tiny[1], python_tools), python_tools, sandbox)

    def row_golden(code: str, answer: str) -> list[dict[str, str]]:
        call = {"role": "assistant", "content": f"```python\n{code}\n```\n"}
        return [call, {"role": "assistant", "content": f"So \\boxed{{{answer}}}."}]

    problems = [
        Problem("ok", "Half of 48?", "24", "Half is <<48/2=24>>24."),
        Problem("wrong", "2+2?", "4", golden=row_golden("print(2+3)", "5")),  # does not verify
        Problem("err", "2+2?", "4", golden=row_golden("print(1/0)", "4")),  # its call fails
        Problem("plain", "2+2?", "4", "Two and two make four."),  # nothing to run
    ]
    gs = build_goldens(problems, src)
    assert [g.problem_id for g in gs.goldens] == ["ok"]
    assert (gs.verify_failures, gs.tool_errors, gs.no_tool_call, gs.unsolved) == (1, 1, 1, 0)
    assert gs.metrics()["sft/goldens_refused"] == 3
    kept = build_goldens(problems[3:], src, require_tool_call=False)
    assert len(kept.goldens) == 1 and kept.metrics()["sft/goldens_refused"] == 0


def test_goldens_over_the_rollout_limits_are_counted_and_refused_if_asked(tiny, python_tools, sandbox):
    chat = ChatFormat(tiny[1], python_tools)
    problems = [Problem("ok", "Half of 48?", "24", "Half is <<48/2=24>>24.")]
    tight = LoopLimits(2, 4, 1024)  # every turn of this golden is longer than 4 tokens
    for refuse in (False, True):
        src = GoldenSource(chat, python_tools, sandbox, limits=tight, refuse_over_limits=refuse)
        gs = build_goldens(problems, src)
        assert len(gs.goldens) == (0 if refuse else 1), refuse
        assert gs.over_limits == 1 and gs.metrics()["sft/goldens_over_limits"] == 1.0
        assert gs.unsolved == 0 and gs.refused == (1 if refuse else 0)  # refused for length, not unsolved
        assert gs.over_limits_text().endswith("(refused)" if refuse else "(kept: golden.over_limits=keep)")


def test_sft_refusing_every_golden_for_length_says_so(tmp_path, capsys):
    args = [f"run.output_dir={tmp_path}", "sft.limit=2", "golden.over_limits=refuse"]
    assert main(["sft", "-c", TINY, *args, "rollout.max_new_tokens_per_turn=4"]) == 2
    err = capsys.readouterr().err
    assert "no usable golden trajectory" in err and "2 longer than the rollout limits (refused)" in err
    assert "Traceback" not in err


def test_lr_schedule_warms_up_then_decays():
    sc = load_config(None, ["sft.lr=1e-3", "sft.warmup_steps=2", "sft.lr_schedule=cosine"]).sft
    lrs = [lr_at(s, 10, sc) for s in range(10)]
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3)
    assert all(x > y for x, y in zip(lrs[1:], lrs[2:])) and 0 < lrs[-1] < 1e-4
    const = load_config(None, ["sft.lr=1e-3", "sft.lr_schedule=constant"]).sft
    assert {lr_at(s, 10, const) for s in range(10)} == {1e-3}


def test_unknown_sft_key_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["sft.epoch=1"])
    assert "sft.epoch" in str(e.value) and "epochs" in str(e.value) and "batch_size" in str(e.value)


def test_continue_command_replaces_model_and_run_name():
    cmd = continue_command("c.yaml", ["sft.epochs=1", "model.path=x", "data.limit=8"], "/ck/final", "r")
    assert shlex.split(cmd) == [
        "agentic-gcpo",
        *("train", "-c", "c.yaml", "sft.epochs=1", "data.limit=8"),
        *("model.path=/ck/final", "run.name=r-rl"),
    ]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sft_cli_then_gcpo_from_its_checkpoint(tmp_path, capsys):
    from agentic_gcpo.models import load_model, tiny_model

    overrides = [
        f"run.output_dir={tmp_path}",
        *("sft.limit=4", "sft.batch_size=2", "sft.epochs=1", "sft.lr=1e-3"),
        *("eval.path=builtin:gsm8k_heldout_64", "eval.limit=2", "rollout.max_new_tokens_per_turn=16"),
    ]
    assert main(["sft", "-c", TINY, *overrides]) == 0
    out = capsys.readouterr().out
    cmd = shlex.split(out.strip().splitlines()[-1])
    assert cmd[:4] == ["agentic-gcpo", "train", "-c", TINY] and cmd[-1] == "run.name=tiny-rl"
    ckpt = Path(cmd[-2].removeprefix("model.path="))
    assert (ckpt / "config.json").is_file() and ckpt.name == "final"
    rows = _rows(ckpt.parents[1] / "metrics.jsonl")
    steps = [r for r in rows if "sft/loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(r["sft/tokens"] > 0 for r in steps)
    assert rows[0]["sft/goldens"] >= 3 and "sft/goldens_refused" in rows[0]
    evals = [r for r in rows if "eval/pass@1" in r]
    assert [r["step"] for r in evals] == [0, 2]  # before and after
    # the checkpoint holds the SFT-trained weights, not the starting ones
    trained, _ = load_model(str(ckpt))
    start, _ = tiny_model(seed=0)
    assert not torch.equal(trained.model.embed_tokens.weight, start.model.embed_tokens.weight)

    # The printed command, for one step, starts GCPO from the checkpoint.
    assert main([*cmd[1:], "train.steps=1"]) == 0
    rl_dirs = [d for d in tmp_path.iterdir() if d.name.startswith("tiny-rl-")]
    assert len(rl_dirs) == 1
    assert load_config(rl_dirs[0] / "config.yaml").model.path == str(ckpt)
    assert len(_rows(rl_dirs[0] / "metrics.jsonl")) == 1
    assert (rl_dirs[0] / "checkpoints" / "final" / "config.json").is_file()


def test_sft_micro_batches_follow_sft_micro_batch_size(tmp_path, monkeypatch):
    import agentic_gcpo.train.sft as sft_module

    sizes, real = [], sft_module.sft_loss

    def counted(model, trajs, pad_id, **kw):  # the real loss, with the micro-batch sizes recorded
        sizes.append(len(trajs))
        return real(model, trajs, pad_id, **kw)

    monkeypatch.setattr(sft_module, "sft_loss", counted)
    args = [f"run.output_dir={tmp_path}", "sft.limit=4", "sft.batch_size=4", "sft.epochs=1", "sft.eval=false"]
    assert main(["sft", "-c", TINY, *args, "sft.micro_batch_size=2", "train.micro_batch_size=8"]) == 0
    assert len(sizes) == 2 and max(sizes) == 2, sizes  # one step of 3-4 goldens in micro-batches of 2


def test_dataset_without_usable_goldens_is_a_clear_error(tmp_path, capsys):
    data = tmp_path / "plain.jsonl"
    data.write_text('{"prompt": "What is 2+2?", "answer": "4"}\n{"prompt": "3*3?", "answer": "9"}\n')
    args = [f"run.output_dir={tmp_path}", f"data.path={data}", "data.format=generic"]
    assert main(["sft", "-c", TINY, *args]) == 2
    err = capsys.readouterr().err
    assert "no usable golden trajectory" in err and "2 made no tool call" in err
    assert "Traceback" not in err


def test_ctrl_c_stops_sft_cleanly(tmp_path):
    """SIGINT mid-training: exit 130 within seconds, a report, summary.json says interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [f"run.output_dir={tmp_path}", "sft.limit=4", "sft.batch_size=2", "sft.epochs=500"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentic_gcpo.cli", "sft", "-c", TINY, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        for line in proc.stdout:  # wait until training has really started
            if line.startswith("sft step 1/"):
                break
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=60)
        stop_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and stop_s < 15, (proc.returncode, stop_s, err)
    assert "interrupted (Ctrl-C) in SFT step" in err and "Traceback" not in err
    (run,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    assert json.loads((run / "summary.json").read_text())["interrupted"] is True
    assert not (run / "checkpoints" / "final").exists()
