"""bench/learning.py end to end on the tiny model: one real GCPO arm, one arm that fails, Ctrl-C."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script(REPO / "bench" / "learning.py")


@pytest.fixture(scope="module")
def report(load_script):
    return load_script(REPO / "bench" / "learning_report.py")


def test_wilson(report):
    lo, hi = report.wilson(0, 300)
    assert lo == 0.0 and 0.012 < hi < 0.013
    lo, hi = report.wilson(150, 300)
    assert abs((lo + hi) / 2 - 0.5) < 1e-9 and 0.44 < lo < 0.45


def test_checks_pick_the_best_gsm8k_recipe_and_compare_intervals(report):
    def arm(s, k, n=300, tools=1.0):
        lo, hi = report.wilson(k, n)
        return {"final": {s: {"accuracy": k / n, "ci95": [lo, hi], "tool_call_rate": tools}}}

    arms = {
        "gcpo": arm("gsm8k", 6),
        "sft+gcpo": arm("gsm8k", 30),  # 10.0 % [7.1, 13.9]: the better recipe
        "sft": arm("gsm8k", 24),
        "untouched": arm("gsm8k", 4),  # 1.3 % [0.5, 3.4]
    }
    met = {c["check"]: (c["met"], c["detail"]) for c in report.checks(arms)}
    assert met["GSM8K test: best GCPO recipe >= SFT-only"] == (True, "sft+gcpo 10.0 %, sft 8.0 %")
    ok, detail = met["GSM8K test: best GCPO recipe above the untouched model, 95 % intervals not overlapping"]
    assert ok is True and detail.startswith("sft+gcpo 10.0 % (lower bound 7.1 %)")
    arms["sft+gcpo"] = arm("gsm8k", 9)  # 3.0 % [1.6, 5.6]: overlaps the untouched interval
    met = {c["check"]: c["met"] for c in report.checks(arms)}
    assert (
        met["GSM8K test: best GCPO recipe above the untouched model, 95 % intervals not overlapping"] is False
    )
    assert met["GSM8K test: best GCPO recipe >= SFT-only"] is False
    # nothing evaluated on GSM8K: not measured, and the detail names what was looked for
    met = {c["check"]: (c["met"], c["detail"]) for c in report.checks({"sft": arm("arith", 9)})}
    assert met["GSM8K test: best GCPO recipe >= SFT-only"] == (None, "gcpo / sft+gcpo n/a, sft n/a")


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


def test_gsm8k_full_leaves_out_the_validation_rows(bench, tmp_path):
    from agentic_gcpo.data import load_problems

    n = bench.write_gsm8k_full(tmp_path / "full.jsonl")
    full = load_problems(tmp_path / "full.jsonl", None, "gsm8k")
    held = load_problems(bench.VAL_SETS["gsm8k-full"], None, "gsm8k")
    assert n == len(full) == 7473 - 64  # the train split's 7,473 rows less the 64 validation rows
    assert not {p.question for p in full} & {p.question for p in held}
    # the training rows keep their order: the 500 builtin rows first, then what follows the 64
    assert [p.question for p in full[:500]] == [p.question for p in load_problems(bench.TRAIN_SETS["gsm8k"])]


def test_checks_compare_sft_then_gcpo_with_sft_then_grpo(report):
    def arm(k, n=300):
        lo, hi = report.wilson(k, n)
        return {"final": {"arith": {"accuracy": k / n, "ci95": [lo, hi], "tool_call_rate": 1.0}}}

    names = lambda arms: [c["check"] for c in report.checks(arms)]  # noqa: E731
    assert not any("SFT then" in c for c in names({"gcpo": arm(150)}))  # no SFT arm: no SFT check
    met = {
        c["check"]: (c["met"], c["detail"])
        for c in report.checks({"sft+gcpo": arm(261), "sft+grpo": arm(250)})
    }
    assert met["arith test: SFT then GCPO >= 60 %"] == (True, "sft+gcpo 87.0 %")
    assert met["arith test: SFT then GCPO >= SFT then GRPO + 30 points"] == (
        False,
        "sft+gcpo 87.0 %, sft+grpo 83.3 %, difference 3.7 %",
    )
    met = {c["check"]: c["met"] for c in report.checks({"sft+gcpo": arm(261)})}
    assert met["arith test: SFT then GCPO >= SFT then GRPO + 30 points"] is None  # control not run
    assert met["arith test: GCPO >= 60 %"] is None  # the untouched-start checks are always listed


def test_sft_then_gcpo_and_sft_then_grpo_share_one_sft_stage(bench, tmp_path, monkeypatch):
    argv = "--model tiny --arms sft+gcpo,sft+grpo --steps 2 --prompts-per-step 2 --group-size 2 "
    argv += "--eval-every 1 --eval-limit 1 --final-limit 1 --eval-sets arith --skip-untouched "
    argv += f"--out {tmp_path} rollout.max_new_tokens_per_turn=8 rollout.max_turns=2"
    monkeypatch.setattr(sys, "argv", ["learning.py", *argv.split()])
    assert bench.main() == 0
    arms = json.loads((tmp_path / "results.json").read_text())["arms"]
    gcpo, grpo = arms["sft+gcpo"], arms["sft+grpo"]
    assert "error" not in gcpo and "error" not in grpo
    # one SFT run: the second arm starts from the first arm's checkpoint and counts its stage in full
    assert grpo["run_dirs"][0] == gcpo["run_dirs"][0] and grpo["run_dirs"][1] != gcpo["run_dirs"][1]
    assert grpo["sft_stage_of"] == "sft+gcpo" and "sft_stage_of" not in gcpo
    runs = sorted(d.name for d in (tmp_path / "runs").iterdir())  # sft-gcpo-<time>, sft-g?po-rl-<time>
    assert len(runs) == 3 and sum("-rl-" in r for r in runs) == 2, runs
    for k in ("trained_seq_passes", "sft_steps", "sft_goldens"):
        assert grpo["budget"][k] == gcpo["budget"][k] > 0, k
    assert grpo["budget"]["wall_s"] >= grpo["budget"]["sft_stage_reused_wall_s"] > 0
    assert [p for p in grpo["curve"] if p["stage"] == "sft"] == [
        p for p in gcpo["curve"] if p["stage"] == "sft"
    ]
