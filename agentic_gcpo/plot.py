"""`agentic-gcpo plot RUN_DIR`: a run's training curves from metrics.jsonl, as one PNG.

matplotlib is optional (``pip install 'agentic-gcpo[plot]'`` or ``pip install matplotlib``): the
trainer never needs it, so it is imported only here, with an error that says what to install.
Panels whose metrics a run never logged are left out; in-training eval (``eval/...``) shares the
accuracy panel.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

# (panel title, y label, metric names drawn in it)
PANELS: list[tuple[str, str, list[str]]] = [
    ("Reward", "mean reward", ["reward/mean"]),
    ("Accuracy", "fraction correct", ["reward/accuracy", "eval/pass@1"]),
    (
        "Tool use",
        "per trajectory / fraction",
        ["tools/calls_per_traj", "tools/traj_with_call_frac", "tools/error_rate"],
    ),
    # all-fail groups (the injection candidates, for any algorithm) and those that got a golden
    ("Golden injections", "fraction of groups", ["groups/all_fail_frac", "gcpo/injected_frac"]),
    ("Lengths", "tokens", ["response/policy_tokens_mean", "response/total_tokens_mean"]),
    ("Finish reasons", "fraction", ["finish/stop", "finish/length", "finish/max_turns", "finish/budget"]),
]


class PlotError(RuntimeError):
    """The run cannot be plotted (no metrics file, no rows, or matplotlib missing); says why."""


def read_metrics(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        raise PlotError(f"{path} not found: pass a run directory written by `agentic-gcpo train`")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise PlotError(f"{path.name}:{n}: not valid JSON") from None
        if isinstance(row, dict):
            rows.append(row)
    if not rows:
        raise PlotError(f"{path} has no metric rows yet")
    return rows


def _series(rows: list[dict[str, float]], name: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, r in enumerate(rows):
        v = r.get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(float(r.get("step", i)))
            ys.append(float(v))
    return xs, ys


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Draw every panel with data into one PNG (default RUN_DIR/curves.png); returns its path."""
    run = Path(run_dir)
    rows = read_metrics(run / "metrics.jsonl")
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on a training box
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError(
            "plotting needs matplotlib: pip install matplotlib (or pip install 'agentic-gcpo[plot]')"
        ) from None
    panels = [(t, y, [(n, _series(rows, n)) for n in names]) for t, y, names in PANELS]
    panels = [(t, y, [(n, s) for n, s in series if s[0]]) for t, y, series in panels]
    panels = [p for p in panels if p[2]]
    if not panels:
        raise PlotError(f"{run / 'metrics.jsonl'} has none of the plotted metrics ({PANELS[0][2][0]}, ...)")
    cols = 2
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 3.2 * nrows), squeeze=False)
    for ax, (title, ylabel, series) in zip(axes.flat, panels):
        for name, (xs, ys) in series:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(run.name)
    fig.tight_layout()
    target = Path(out) if out else run / "curves.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return [target]
