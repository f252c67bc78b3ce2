"""`agentic-gcpo train --resume`: a run killed with SIGKILL (mid-step, or while writing a checkpoint)
and resumed ends exactly where the same run without the kill ends.

Every run is the real CLI in a subprocess on the tiny model in float32 (`Run` and `_script` from
test_interrupt.py). The uninterrupted reference and the two runs to be killed start together, and
the two resumed runs run together (one thread each, OMP_NUM_THREADS=1: the runs compare exactly
and share two cores without fighting). Kills are aimed, not timed: a marker file written from
inside the phase (a patched `Trainer.update`, or the checkpoint writer's test-only pause,
checkpoint.PAUSE_ENV) says the run is there.

Tolerance: none. Sampling seeds derive from (run.seed, step) and everything else a step depends on
is restored, so the resumed run computes the same float32 operations in the same order as the
uninterrupted one: metrics (all but time/*), sampled token ids and final parameters are compared
for exact equality. (A checkpoint resumed on a CPU with other vector units, or with another thread
count, would round differently; both runs here share machine and thread count.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_interrupt import CONFIG, Run, _script

from agentic_gcpo.cli import main

STEPS = 2
KNOBS = [
    "log.progress=false",
    f"train.steps={STEPS}",
    "train.checkpoint_every=1",
    "train.prompts_per_step=2",
    "train.samples_per_step=2",
    "train.precision=float32",
    "engine.dtype=float32",
    "rollout.group_size=2",
    "rollout.max_turns=2",
    "rollout.max_new_tokens_per_turn=16",
    "prompt.system=Solve.",
    "data.limit=8",
]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextlib.contextmanager
def _env(**extra: str):
    """os.environ with `extra` while a Run (which copies the environment) is started."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _argv(out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "agentic_gcpo.cli",
        "train",
        "-c",
        str(CONFIG),
        *KNOBS,
        f"run.output_dir={out}",
    ]


def _resume(run_dir: Path, cwd: Path) -> Run:
    with _env(**ONE_THREAD, AGENTIC_GCPO_TEST_SAVE_PAUSE=""):
        return Run([sys.executable, "-m", "agentic_gcpo.cli", "train", "--resume", str(run_dir)], cwd)


def _done(run: Run) -> Run:
    rc = run.proc.wait(timeout=600)
    run.finish()
    assert rc == 0, run.stderr[-3000:]
    return run


def _kill(run: Run) -> None:
    run.proc.send_signal(signal.SIGKILL)
    assert run.proc.wait(timeout=60) == -signal.SIGKILL
    run.finish()


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


MID_STEP = """
import pathlib, time
import agentic_gcpo.train.trainer as trainer

_update = trainer.Trainer.update

def update(self, trajs):
    out = _update(self, trajs)
    if self.current_step == 2:  # after step 2's optimizer step, before it is logged or saved
        pathlib.Path({marker!r}).touch()
        time.sleep(600)
    return out

trainer.Trainer.update = update
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs at once: the uninterrupted reference, one killed inside step 2 (a patched
    `Trainer.update`), one killed while writing checkpoint step-2, the last one (checkpoint.PAUSE_ENV); then both
    killed runs resumed at once. Returns what the tests check."""
    tmp = tmp_path_factory.mktemp("resume")
    (tmp / "mid").mkdir()
    mid_marker, save_marker = tmp / "in-step-2", tmp / "saving-step-2"
    with _env(**ONE_THREAD):
        ref = Run(_argv(tmp / "ref"), tmp)
        mid_argv = _script(tmp / "mid", MID_STEP.format(marker=str(mid_marker)), *KNOBS)
        mid = Run([*mid_argv, f"run.output_dir={tmp / 'mid' / 'runs'}"], tmp)
    with _env(**ONE_THREAD, AGENTIC_GCPO_TEST_SAVE_PAUSE=f"step-2:{save_marker}"):
        save = Run(_argv(tmp / "save"), tmp)
    out: dict = {}
    mid.wait_for(mid_marker.exists, "step 2's update")
    out["mid_dir"] = d = mid.run_dir()
    out["mid_ckpts"] = sorted(p.name for p in (d / "checkpoints").iterdir())
    _kill(mid)
    out["mid_rows_at_kill"] = [r["step"] for r in _rows(d / "metrics.jsonl")]
    mid_again = _resume(d, tmp)

    save.wait_for(save_marker.exists, "the save of step-2")
    out["save_dir"] = d = save.run_dir()
    partial = list((d / "checkpoints").glob(".tmp-step-2-*"))
    out["save_partial"] = sorted(p.name for p in partial[0].iterdir()) if partial else []
    out["save_had_step_2"] = (d / "checkpoints" / "step-2").exists()
    _kill(save)
    out["save_rows_at_kill"] = [r["step"] for r in _rows(d / "metrics.jsonl")]
    save_again = _resume(d, tmp)

    out["ref_dir"] = _done(ref).run_dir()
    out["mid_out"] = "\n".join(_done(mid_again).out)
    out["save_out"] = "\n".join(_done(save_again).out)
    return out


def _assert_same_run(ref: Path, got: Path) -> None:
    """Each training step logged once, with the reference's values; same samples, same weights."""
    a, b = _rows(ref / "metrics.jsonl"), _rows(got / "metrics.jsonl")
    assert [r["step"] for r in b if "loss/policy" in r] == list(range(1, STEPS + 1))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        keys = {k for k in ra.keys() | rb.keys() if not k.startswith("time/")}
        diff = {k: (ra.get(k), rb.get(k)) for k in keys if ra.get(k) != rb.get(k)}
        assert not diff, f"step {ra['step']}: {diff}"
    sa, sb = _rows(ref / "samples.jsonl"), _rows(got / "samples.jsonl")
    assert [(s["step"], s["token_ids"]) for s in sa] == [(s["step"], s["token_ids"]) for s in sb]
    wa = load_file(str(ref / "checkpoints" / "final" / "model.safetensors"))
    wb = load_file(str(got / "checkpoints" / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    first = load_file(str(ref / "checkpoints" / "step-1" / "model.safetensors"))
    assert any(not torch.equal(first[k], wa[k]) for k in wa), "the run did not train: nothing to compare"
    unequal = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not unequal, f"final parameters differ: {unequal[:5]}"
    assert not list((got / "checkpoints").glob(".tmp-*")), "a temporary save was left"
    summary = json.loads((got / "summary.json").read_text())
    assert summary["updates"] == STEPS and summary["interrupted"] is False


def test_sigkill_mid_step_then_resume_equals_the_uninterrupted_run(runs):
    """Killed inside step 2, after its update changed the in-memory weights (not logged or saved):
    --resume continues from step-1 and ends with the uninterrupted run's metrics and weights."""
    d = runs["mid_dir"]
    assert runs["mid_ckpts"] == ["step-1"] and runs["mid_rows_at_kill"] == [1]
    out = runs["mid_out"]
    assert f"resuming from {d / 'checkpoints' / 'step-1'} at step 1 of 2" in out
    assert "step 2/2 " in out and "step 1/2" not in out
    _assert_same_run(runs["ref_dir"], d)


def test_sigkill_while_writing_a_checkpoint_resumes_from_the_previous_one(runs):
    """Killed after step-2's weights were written into its temporary directory and before its
    trainer state: no step-2 exists, --resume removes the partial save, continues from step-1 (the
    logged rows of step 2 are dropped and computed again) and ends equal to the uninterrupted run."""
    d = runs["save_dir"]
    assert "model.safetensors" in runs["save_partial"] and "trainer_state.json" not in runs["save_partial"]
    assert not runs["save_had_step_2"] and runs["save_rows_at_kill"] == [1, 2]  # logged, not saved
    out = runs["save_out"]
    assert f"resuming from {d / 'checkpoints' / 'step-1'} at step 1 of 2" in out
    assert "dropped 3 log rows after step 1" in out  # the metrics row and two sample rows of step 2
    _assert_same_run(runs["ref_dir"], d)


def test_resume_refuses_what_it_cannot_continue(tmp_path, runs, capsys):
    """No such directory, no complete checkpoint, a config change that alters the run: exit 2 with
    one clear message each; a finished run: exit 0, nothing to do."""
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "no such run directory" in err and "Traceback" not in err

    legacy = tmp_path / "legacy"
    (legacy / "checkpoints" / "step-1").mkdir(parents=True)
    (legacy / "checkpoints" / "step-1" / "model.safetensors").write_bytes(b"")
    (legacy / "config.yaml").write_text((runs["ref_dir"] / "config.yaml").read_text())
    assert main(["train", "--resume", str(legacy)]) == 2
    err = capsys.readouterr().err
    assert "no complete checkpoint" in err and "hold weights only" in err
    assert f"agentic-gcpo train -c {legacy / 'config.yaml'}" in err

    early = tmp_path / "early"
    (early / "checkpoints").mkdir(parents=True)
    (early / "config.yaml").write_text((runs["ref_dir"] / "config.yaml").read_text())
    assert main(["train", "--resume", str(early)]) == 2
    err = capsys.readouterr().err
    assert "stopped before its first checkpoint" in err and "Traceback" not in err

    done = runs["ref_dir"]
    assert main(["train", "--resume", str(done), "rollout.group_size=4", "train.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert (
        "rollout.group_size: 2 -> 4" in err and "train.lr: 0.001 -> 0.5" in err and "--allow-changes" in err
    )

    assert main(["train", "--resume", str(done)]) == 0
    assert "already finished: 2 of train.steps=2" in capsys.readouterr().out
    assert main(["train", "-c", str(CONFIG), "--allow-changes"]) == 2
    assert "only applies to --resume" in capsys.readouterr().err


# --------------------------------------------------------------------------- the parts, in-process
def test_problem_stream_resumes_at_the_same_batch_across_epochs():
    from agentic_gcpo.data import Problem, ProblemStream

    probs = [Problem(str(i), f"q{i}", "1") for i in range(7)]
    whole = ProblemStream(probs, 3, seed=5)
    expected = [[p.id for p in next(whole)] for _ in range(9)]  # 2 batches an epoch: 4+ epochs
    cut = ProblemStream(probs, 3, seed=5)
    got = [[p.id for p in next(cut)] for _ in range(5)]
    state = json.loads(json.dumps(cut.state_dict()))  # plain data
    again = ProblemStream(probs, 3, seed=5)
    again.load_state_dict(state)
    got += [[p.id for p in next(again)] for _ in range(4)]
    assert got == expected
    with pytest.raises(ValueError, match="problem_ids"):
        ProblemStream(probs[:6], 3, seed=5).load_state_dict(state)


def test_log_rows_after_the_checkpoint_and_torn_lines_are_dropped(tmp_path):
    from agentic_gcpo.train.resume import truncate_jsonl

    path = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 0, "eval/pass@1": 0.1},
        {"step": 1},
        {"step": 2},
        {"step": 2, "eval/pass@1": 0.2},
        {"step": 3},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "loss')
    assert truncate_jsonl(path, 2) == 2
    assert [json.loads(x) for x in path.read_text().splitlines()] == rows[:4]
    assert truncate_jsonl(path, 2) == 0


def test_checkpoint_directory_housekeeping(tmp_path):
    """A kill between the two renames of re-saving `final` puts the old one back; pruning keeps the
    newest K step checkpoints and final; only checkpoints with a trainer state count for resume."""
    from agentic_gcpo.train.checkpoint import (
        STATE_FILE,
        STATE_INFO,
        complete_checkpoints,
        prune_checkpoints,
        remove_partial_saves,
    )

    ck = tmp_path / "checkpoints"
    for name, step in [("step-1", 1), ("step-2", 2), ("step-10", 10), ("final", 10)]:
        (ck / name).mkdir(parents=True)
        (ck / name / STATE_FILE).write_bytes(b"x")
        (ck / name / STATE_INFO).write_text(json.dumps({"step": step}))
    (ck / "step-11").mkdir()  # weights only: an older version's checkpoint, or not ours
    (ck / ".tmp-step-12-4242").mkdir()  # a save cut short
    os.replace(ck / "final", ck / ".tmp-final-old-4242")  # cut between the two renames
    remove_partial_saves(ck)
    assert sorted(p.name for p in ck.iterdir()) == ["final", "step-1", "step-10", "step-11", "step-2"]
    assert [(s, p.name) for s, p in complete_checkpoints(ck)] == [
        (1, "step-1"),
        (2, "step-2"),
        (10, "final"),
        (10, "step-10"),
    ]
    prune_checkpoints(ck, 2)
    assert sorted(p.name for p in ck.iterdir()) == ["final", "step-10", "step-11"]


def test_a_lora_checkpoint_restores_the_adapters_and_optimizer(tmp_path):
    """With model.lora the checkpoint holds peft's adapter; a resumed trainer gets the trained
    adapters and AdamW state back (in-process: build_resumed is what --resume runs)."""
    pytest.importorskip("peft", reason="LoRA needs peft: pip install -e '.[scale]'")
    from agentic_gcpo.config import load_config
    from agentic_gcpo.train.resume import build_resumed, plan_resume
    from agentic_gcpo.train.trainer import Trainer

    knobs = [k for k in KNOBS if not k.startswith("train.steps=")]
    cfg = load_config(CONFIG, [*knobs, "train.steps=1", "model.lora.enabled=true", "model.lora.r=4"])
    cfg.run.output_dir = str(tmp_path)
    tr = Trainer(cfg)
    run_dir = tr.train()
    assert (run_dir / "checkpoints" / "step-1" / "adapter_model.safetensors").is_file()
    trained = {n: p.detach().clone() for n, p in tr.model.named_parameters() if p.requires_grad}
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in trained.items()), "adapters did not train"
    again = build_resumed(plan_resume(run_dir, ["train.steps=2"]))
    try:
        got = {n: p.detach() for n, p in again.model.named_parameters() if p.requires_grad}
        assert got.keys() == trained.keys()
        assert not [n for n in got if not torch.equal(got[n], trained[n])]
        s1, s2 = tr.opt.state_dict()["state"], again.opt.state_dict()["state"]
        assert s1.keys() == s2.keys() and all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
        assert again.first_step == 1 and again.lr_slot == tr.lr_slot
    finally:
        again.close()
