"""bench/learning.py end to end on the tiny model: one real GCPO arm, one arm that fails, Ctrl-C."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_learning", REPO / "bench" / "learning.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_wilson(bench):
    lo, hi = bench.wilson(0, 300)
    assert lo == 0.0 and 0.012 < hi < 0.013
    lo, hi = bench.wilson(150, 300)
    assert abs((lo + hi) / 2 - 0.5) < 1e-9 and 0.44 < lo < 0.45


def test_runs_reports_a_failed_arm_and_stops_on_ctrl_c(bench, tmp_path, monkeypatch, capsys):
    real = bench.train_arm

    def train_arm(name, args, arm):
        if name == "grpo":
            raise RuntimeError("boom")
        if name == "gpg":
            raise KeyboardInterrupt
        return real(name, args, arm)

    monkeypatch.setattr(bench, "train_arm", train_arm)
    argv = "--model tiny --arms gcpo,grpo,gpg,sft --steps 1 --prompts-per-step 2 --group-size 2 "
    argv += "--eval-every 1 --eval-limit 1 --final-limit 1 --eval-sets arith "
    argv += f"--out {tmp_path} rollout.max_new_tokens_per_turn=8 rollout.max_turns=2"
    monkeypatch.setattr(sys, "argv", ["learning.py", *argv.split()])
    assert bench.main() == 130
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["interrupted"] and list(res["arms"]) == ["untouched", "gcpo", "grpo", "gpg"]
    gcpo = res["arms"]["gcpo"]
    assert gcpo["final"]["arith"]["n"] == 1 and len(gcpo["curve"]) == 2
    assert gcpo["budget"]["trained_seq_passes"] == 4 and gcpo["budget"]["generated_tokens"] > 0
    assert res["arms"]["grpo"]["error"] == "RuntimeError: boom"
    assert res["arms"]["gpg"]["error"] == "interrupted (Ctrl-C)"
    assert {c["check"]: c["met"] for c in res["checks"]}["arith test: GCPO >= GRPO + 30 points"] is None
    assert (tmp_path / "learning.png").exists()
    out = capsys.readouterr().out
    assert "| gcpo |" in out and "grpo (error: RuntimeError: boom)" in out
