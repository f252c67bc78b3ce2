"""`agentic-gcpo plot RUN_DIR`: a PNG from a metrics.jsonl, and clear errors otherwise."""

from __future__ import annotations

import json

import pytest

from agentic_gcpo.eval_cli import run_eval_cli
from agentic_gcpo.plot import PlotError, plot_run


def _run_dir(tmp_path, rows):
    d = tmp_path / "run-1"
    d.mkdir()
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="plotting is an optional extra: pip install matplotlib")
    rows = [
        {"step": s, "reward/mean": 0.1 * s, "reward/accuracy": 0.1 * s, "tools/calls_per_traj": 1.0,
         "tools/error_rate": 0.2, "gcpo/injected_frac": 0.5 - 0.1 * s, "response/policy_tokens_mean": 100 + s,
         "finish/stop": 0.9, "loss/policy": None}
        for s in range(5)
    ]  # fmt: skip
    rows[2]["eval/pass@1"] = 0.3  # in-training eval is logged only every N steps
    d = _run_dir(tmp_path, rows)
    (png,) = plot_run(d)
    assert png == d / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert run_eval_cli(["plot", str(d), "--out", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").is_file()


def test_plot_errors_are_clear(tmp_path, capsys):
    with pytest.raises(PlotError, match="metrics.jsonl not found"):
        plot_run(tmp_path)
    assert run_eval_cli(["plot", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(PlotError, match="metrics.jsonl:2: not valid JSON"):
        plot_run(_bad(tmp_path))


def _bad(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "metrics.jsonl").write_text('{"step": 0}\n{oops\n')
    return d


def test_missing_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_mpl(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    d = _run_dir(tmp_path, [{"step": 0, "reward/mean": 0.0}])
    with pytest.raises(PlotError, match="pip install matplotlib"):
        plot_run(d)
