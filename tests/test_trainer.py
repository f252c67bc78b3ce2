"""End to end on the tiny model: the loop runs, parameters move the right way, bad input is clear."""

from __future__ import annotations

import json

import pytest
import torch

from agentic_gcpo.cli import main
from agentic_gcpo.config import load_config
from agentic_gcpo.train.policy import pack, token_logprobs
from agentic_gcpo.train.reward import score
from agentic_gcpo.train.trainer import Trainer

BASE = [
    "model.path=tiny",
    "train.steps=2",
    "train.prompts_per_step=2",
    "rollout.group_size=4",
    "rollout.max_new_tokens_per_turn=16",
    "data.limit=8",
    "sandbox.pool_size=2",
    "log.progress=false",
]


def _cfg(tmp_path, *extra):
    return load_config("configs/tiny_cpu.yaml", [*BASE, f"run.output_dir={tmp_path}", *extra])


@pytest.mark.parametrize("algo", ["gcpo", "grpo"])
def test_two_step_run_changes_parameters_and_writes_the_run_dir(tmp_path, algo):
    cfg = _cfg(tmp_path, f"algorithm.name={algo}", "train.lr=1e-3")
    tr = Trainer(cfg)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    run = tr.train()
    changed = [n for n, p in tr.model.named_parameters() if not torch.equal(before[n], p.detach())]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for key in [
        "reward/mean",
        "gcpo/injected_frac",
        "tools/calls_per_traj",
        "tools/error_rate",
        "finish/stop",
        "loss/clip_frac",
        "loss/policy",
        "time/rollout_s",
        "time/train_s",
    ]:
        assert key in rows[0], key
    assert all(r["loss/policy"] is not None for r in rows)  # finite (non-finite would be logged as null)
    if algo == "gcpo":
        # the random tiny model never solves a problem: every group is all-fail and gets a golden
        assert all(r["gcpo/injected_frac"] == 1.0 for r in rows) and changed
    else:
        assert all(r["gcpo/injected_frac"] == 0.0 for r in rows)  # GRPO: all-fail groups teach nothing
        assert not changed and all(r["loss/skipped"] == 1.0 for r in rows)
    assert (run / "config.yaml").is_file() and (run / "samples.jsonl").is_file()
    assert (run / "checkpoints" / "final" / "config.json").is_file()
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and "segments" in samples[0]


def _mean_logp(model, trajs, pad_id):
    b = pack(trajs, pad_id)
    with torch.no_grad():
        lp = token_logprobs(model, b.input_ids, b.attention_mask, autocast_bf16=False)
    return float((lp * b.loss_mask).sum() / b.loss_mask.sum())


def test_gcpo_step_raises_the_golden_likelihood(tmp_path):
    """Gradient direction end to end: after one GCPO update the golden is likelier, the failures less."""
    tr = Trainer(_cfg(tmp_path, "train.lr=3e-3", "train.steps=1"))
    problems = next(tr.batches)
    trajs = tr.loop.run(problems, tr.cfg.rollout.group_size)
    score(trajs)
    tr.inject(trajs, problems, 0)
    goldens = [t for t in trajs if t.is_golden]
    fails = [t for t in trajs if not t.is_golden]
    assert len(goldens) == len(problems)
    g0, f0 = _mean_logp(tr.model, goldens, tr.pad_id), _mean_logp(tr.model, fails, tr.pad_id)
    tr.update(trajs)
    g1, f1 = _mean_logp(tr.model, goldens, tr.pad_id), _mean_logp(tr.model, fails, tr.pad_id)
    tr.close()
    assert g1 > g0 and f1 < f0, (g0, g1, f0, f1)


def test_reward_is_reported_without_golden_members(tmp_path):
    tr = Trainer(_cfg(tmp_path, "train.steps=1"))
    res = tr.step(0)
    tr.close()
    assert res.metrics["reward/mean"] == 0.0  # the goldens (reward 1) are not counted
    assert sum(t.reward for t in res.trajectories) == res.metrics["gcpo/injected"]
    assert len(res.trajectories) == 2 * 4  # injection replaces, the group size stays G


def test_cli_reports_bad_inputs_clearly(tmp_path, capsys):
    assert main(["train", "-c", "configs/tiny_cpu.yaml", "rollout.grup_size=4"]) == 2
    assert "unknown key 'rollout.grup_size'" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "-c",
                "configs/tiny_cpu.yaml",
                f"run.output_dir={tmp_path}",
                "model.path=/no/such/model",
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    assert (
        main(["train", "-c", "configs/tiny_cpu.yaml", f"run.output_dir={tmp_path}", f"data.path={bad}"]) == 2
    )
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert (
        main(["train", "-c", "configs/tiny_cpu.yaml", f"run.output_dir={tmp_path}", "tools.names=[pyhton]"])
        == 2
    )
    assert "known tools" in capsys.readouterr().err


def test_in_training_eval_rows(tmp_path):
    cfg = _cfg(
        tmp_path, "eval.path=builtin:gsm8k_heldout_64", "eval.limit=2", "eval.every=1", "rollout.max_turns=1"
    )
    run = Trainer(cfg).train()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/pass@1" in r]
    train = [r for r in rows if "reward/mean" in r]
    assert [r["step"] for r in evals] == [0, 1, 2] and [r["step"] for r in train] == [1, 2]
    assert all(0.0 <= r["eval/pass@1"] <= 1.0 and "eval/tools/calls_per_traj" in r for r in evals)


@pytest.mark.parametrize("algo", ["dapo", "gpg"])
def test_dynamic_sampling_rounds(tmp_path, algo):
    """DAPO drops degenerate groups and GPG resamples under beta_th: the random tiny model solves
    nothing, so every round is degenerate and the trainer stops at max_sampling_rounds. GPG then
    trains on a batch of the original size (degenerate groups of the last round)."""
    tr = Trainer(_cfg(tmp_path, f"algorithm.name={algo}", "train.max_sampling_rounds=2", "train.steps=1"))
    res = tr.step(0)
    tr.close()
    m = res.metrics
    assert m["sampling/rounds"] == 2.0 and m["loss/skipped"] == 1.0
    if algo == "dapo":
        assert m["sampling/dropped_groups"] == 4.0 and m["sampling/train_seqs"] == 0.0
    else:
        assert m["sampling/dropped_groups"] == 2.0 and m["sampling/train_seqs"] == 8.0
        assert {t.group_id for t in res.trajectories} == {2, 3}  # the last round's groups
    gids = {t.group_id for t in res.trajectories}
    assert len(gids) == len(res.trajectories) // 4  # group ids stay unique across rounds


@pytest.mark.parametrize("algo", ["dapo", "grpo"])
def test_overlong_shaping_is_dapos_default_and_leaves_accuracy_alone(tmp_path, algo):
    # 16-token turns: DAPO's ramp covers the last 4 tokens of a turn, so a rambling random model
    # (cut at 16 tokens) is penalised.
    tr = Trainer(
        _cfg(tmp_path, f"algorithm.name={algo}", "rollout.max_turns=1", "train.max_sampling_rounds=1")
    )
    res = tr.step(0)
    tr.close()
    m = res.metrics
    if algo == "dapo":
        assert tr.overlong_buffer == 0.25 and m["reward/overlong_frac"] > 0.5
        assert -1.0 <= m["reward/overlong_penalty_mean"] < 0.0
        # nothing correct: DAPO's rule reward is -1 for a wrong answer, plus the penalty
        assert m["reward/mean"] == pytest.approx(-1.0 + m["reward/overlong_penalty_mean"])
    else:
        assert tr.overlong_buffer == 0.0 and m["reward/overlong_frac"] == 0.0
    assert m["reward/accuracy"] == 0.0
    # groups are filtered on correctness, not on the shaped reward
    assert m["sampling/dropped_groups"] == (2.0 if algo == "dapo" else 0.0)
