"""`agentic-gcpo show` on the samples a real (tiny) GCPO run wrote: golden trajectories and tool output
are marked as what they are, the token view's mask is the ledger's, and saved records read back whole."""

from __future__ import annotations

import json
import math
import re

import pytest

from agentic_gcpo.cli import main
from agentic_gcpo.config import load_config
from agentic_gcpo.ledger import Source
from agentic_gcpo.repl.records import load_records, trajectory_from_json
from agentic_gcpo.train.trainer import Trainer


@pytest.fixture(scope="module")
def run_samples(tmp_path_factory):
    """One GCPO step of the tiny random model: every group fails, so a golden is injected and logged."""
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(
        "configs/tiny_cpu.yaml",
        [
            f"run.output_dir={out}",
            "train.steps=1",
            "train.prompts_per_step=1",
            "rollout.group_size=2",
            "rollout.max_new_tokens_per_turn=8",
            "data.limit=4",
            "train.save_final=false",
            "train.samples_per_step=2",
        ],
    )
    run_dir = Trainer(cfg).train()
    return run_dir / "samples.jsonl"


def _blocks(text: str) -> list[str]:
    """The token view's run headers: '[source · mask m · trained on|not trained on · ...]'."""
    return re.findall(r"^\[(\w+) · mask (\d) · ((?:not )?trained on)", text, flags=re.M)


def test_show_marks_golden_and_tool_output_as_not_trained_on(run_samples, capsys):
    records = load_records(run_samples)
    golden = [r for r in records if r.traj.is_golden]
    assert golden, "a GCPO step in which every tiny-model rollout fails logs its injected golden"
    assert golden[0].traj.tool_calls, "the GSM8K golden calls the python tool"

    assert main(["show", str(run_samples), "--golden-only", "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "GOLDEN" in out
    assert "GOLDEN trajectory (injected by GCPO)" in out  # the transcript says what it is
    blocks = _blocks(out)
    kinds = {b[0] for b in blocks}
    assert {"prompt", "sampled", "tool", "template"} <= kinds
    for source, mask, trained in blocks:
        # the view's words follow the ledger: only the policy-written parts carry mask 1
        assert (mask == "1") == (source == "sampled") == (trained == "trained on"), (source, mask, trained)
    # the golden was written, not sampled: its policy tokens have no sampler logprob
    assert "no sampler logprobs" in out
    # the tool's output is shown in the transcript, flagged as not trained on
    obs = golden[0].traj.tool_calls[0].observation.strip().splitlines()[0]
    assert re.search(r"→ output \(ok.*not trained on\):\n\s+│ " + re.escape(obs), out)


def test_show_one_sampled_trajectory_by_index(run_samples, capsys):
    records = load_records(run_samples)
    i = next(i for i, r in enumerate(records) if not r.traj.is_golden)
    assert main(["show", str(run_samples), "--index", str(i), "--view", "tokens", "--no-color"]) == 0
    out = capsys.readouterr().out
    t = records[i].traj
    assert out.count("══") == 2  # exactly one record
    assert "GOLDEN" not in out
    assert f"loss-mask tokens {sum(t.loss_mask)}" in out
    first_lp = next(x for x, s in zip(t.sampler_logprobs, t.sources) if s == Source.SAMPLED)
    assert f" {first_lp:.2f}" in out  # each sampled token's logprob is printed next to it


def test_saved_records_read_back_as_the_same_ledger(run_samples):
    for line in run_samples.read_text().splitlines():
        d = json.loads(line)
        t = trajectory_from_json(d)
        assert t.token_ids == d["token_ids"] and t.sources == d["sources"]
        assert t.loss_mask == [1 if s == Source.SAMPLED else 0 for s in d["sources"]]
        assert [None if math.isnan(x) else round(x, 5) for x in t.sampler_logprobs] == d["sampler_logprobs"]
        t.check()


def test_show_reports_bad_input_in_one_line(tmp_path, capsys):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"not": "a trajectory"}\n')
    assert main(["show", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: x.jsonl:1: not a saved trajectory") and "\n" not in err
    assert main(["show", str(tmp_path / "missing.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err


def test_an_eval_file_reads_back_with_its_questions(run_samples, tmp_path):
    """An eval's trajectories.jsonl holds one problem a line, its samples under `samples`."""
    samples = [json.loads(x) for x in run_samples.read_text().splitlines()]
    f = tmp_path / "trajectories.jsonl"
    f.write_text(json.dumps({"id": "p", "question": "Q?", "reference": "5", "samples": samples}) + "\n")
    records = load_records(f)
    assert [r.where for r in records] == [f"trajectories.jsonl:1#{j}" for j in range(len(samples))]
    assert all(r.question == "Q?" for r in records)


def test_a_run_directory_resolves_to_its_last_checkpoint_and_config(tmp_path):
    from agentic_gcpo.repl.session import SessionError, resolve_model

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(SessionError, match="no checkpoint yet"):
        resolve_model(str(run))
    (run / "config.yaml").write_text("{}\n")
    for name in ("step-2", "step-10", ".tmp-step-11-123"):
        (run / "checkpoints" / name).mkdir()
        if not name.startswith("."):
            (run / "checkpoints" / name / "config.json").write_text("{}")
    assert resolve_model(str(run)) == (str(run / "checkpoints" / "step-10"), run / "config.yaml")
    (run / "checkpoints" / "final").mkdir()
    (run / "checkpoints" / "final" / "config.json").write_text("{}")
    assert resolve_model(str(run))[0] == str(run / "checkpoints" / "final")
    assert resolve_model("embedded") == ("embedded", None)
