"""bench/eval_speed.py: the eval-throughput bench runs each BATCH:CHUNK setting on the same problems."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script(REPO / "bench" / "eval_speed.py")


def test_parse_setting(bench) -> None:
    assert bench.parse_setting("64:all") == (64, None)
    assert bench.parse_setting("32:8") == (32, 8)
    assert bench.parse_setting("16") == (16, 16)  # no chunk: one batch of problems per call


def test_runs_every_setting_on_the_tiny_model(bench, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "speed.json"
    argv = [
        "eval_speed.py",
        "--model",
        "tiny",
        "--problems",
        "3",
        "--settings",
        "2:1,2:all",
        "--json",
        str(out),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    table = capsys.readouterr().out
    assert "| batch 2, chunk 1 | " in table and "| batch 2, chunk all | " in table
    best = json.loads(out.read_text())["best"]
    assert set(best) == {"batch 2, chunk 1", "batch 2, chunk all"}
    # greedy decoding of the same 3 problems: the same tokens whatever the chunking (float32)
    assert best["batch 2, chunk 1"]["tokens"] == best["batch 2, chunk all"]["tokens"] > 0
    assert all(row["wall_s"] > 0 for row in best.values())
