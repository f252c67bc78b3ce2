"""bench/seeds.py: pooling one recipe's learning-bench results over seeds (hand-computed numbers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def seeds(load_script):
    return load_script(REPO / "bench" / "seeds.py")


def result(seed: int, correct: int, tools: float, **args) -> dict:
    base = {"arms": "gcpo", "steps": "30", "seed": str(seed), "out": f"bench/out/s{seed}", "override": "[]"}
    final = {"arith": {"n": 300, "correct": correct, "tool_call_rate": tools}}
    return {"args": {**base, **args}, "arms": {"gcpo": {"final": final}, "grpo": {"final": {}}}}


def write(tmp_path: Path, name: str, res: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(res))
    return str(path)


def test_pools_two_seeds(seeds, tmp_path, capsys) -> None:
    ra, rb = result(0, 168, 0.96), result(1, 148, 0.92)
    (row,) = seeds.pool([("a", ra), ("b", rb)])
    a, b = write(tmp_path, "a.json", ra), write(tmp_path, "b.json", rb)
    # 168/300 = 56.0 %, 148/300 = 49.33 %: mean 52.67 %, spread 6.67 points; pooled 316/600 with
    # Wilson [48.67, 56.63] % (z = 1.96); the arm without a final eval (grpo) gives no row.
    assert row["accuracies"] == pytest.approx([0.56, 148 / 300])
    assert row["mean"] == pytest.approx(316 / 600) and row["spread"] == pytest.approx(20 / 300)
    assert (row["correct"], row["n"]) == (316, 600)
    assert row["pooled_ci95"] == pytest.approx([0.48667, 0.56632], abs=1e-4)
    assert row["tool_call_rate"] == pytest.approx(0.94)
    assert seeds.main([a, b]) == 0
    assert (
        "| gcpo | arith | 0, 1 | 56.0 % / 49.3 % | 52.7 % | 6.7 % | 316/600 [48.7 %, 56.6 %]"
        in capsys.readouterr().out
    )


def test_refuses_runs_of_different_recipes(seeds, tmp_path, capsys) -> None:
    a = write(tmp_path, "a.json", result(0, 168, 0.96))
    b = write(tmp_path, "b.json", result(1, 148, 0.92, steps="20"))
    assert seeds.main([a, b]) == 2
    err = capsys.readouterr().err
    assert "steps: '30' vs '20'" in err and "differ only in --seed" in err


def test_refuses_a_repeated_seed_a_single_file_and_a_broken_file(seeds, tmp_path, capsys) -> None:
    a = write(tmp_path, "a.json", result(0, 168, 0.96))
    b = write(tmp_path, "b.json", result(0, 148, 0.92))
    assert seeds.main([a, b]) == 2
    assert "repeat a seed" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert seeds.main([a, str(broken)]) == 2
    assert "cannot read a bench result" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        seeds.main([a])
