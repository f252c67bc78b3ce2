"""Every metric the README's table lists is in a real run's metrics file, for every algorithm."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agentic_gcpo.algorithms import REGISTRY
from agentic_gcpo.config import load_config
from agentic_gcpo.train.trainer import Trainer

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_metric_names() -> tuple[list[str], list[str]]:
    """(names every run logs, names logged only under a condition the row states with 'only when')."""
    text = README.read_text()
    table = text[text.index("### Metrics") :]
    table = table[: table.index("\n## ")]
    always, conditional = [], []
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        first, meaning = line.split("|")[1], line.split("|")[2]
        names = re.findall(r"`([^`]+)`", first)
        (conditional if "only when" in meaning else always).extend(names)
    return always, conditional


def test_the_readme_table_parses():
    always, conditional = readme_metric_names()
    assert "reward/mean" in always and "gcpo/teacher_samples" in conditional and len(always) > 40


@pytest.mark.parametrize("algo", sorted(REGISTRY))
def test_readme_metrics_are_logged(tmp_path, algo):
    cfg = load_config(
        "configs/tiny_cpu.yaml",
        [
            "model.path=tiny",
            f"run.output_dir={tmp_path}",
            f"algorithm.name={algo}",
            "train.steps=1",
            "train.prompts_per_step=2",
            "train.max_sampling_rounds=1",
            "rollout.group_size=2",
            "rollout.max_new_tokens_per_turn=8",
            "data.limit=4",
            "eval.path=builtin:gsm8k_heldout_64",
            "eval.limit=1",
            "eval.every=1",
            "train.save_final=false",
            "log.progress=false",
        ],
    )
    run = Trainer(cfg).train()
    logged: set[str] = set()
    for line in (run / "metrics.jsonl").read_text().splitlines():
        logged |= set(json.loads(line))
    always, _ = readme_metric_names()
    missing = []
    for name in always:
        if name.endswith("..."):  # a family, e.g. eval/tools/...
            if not any(k.startswith(name[:-3]) for k in logged):
                missing.append(name)
        elif name not in logged:
            missing.append(name)
    assert not missing, f"{algo}: README lists metrics the run did not log: {missing}"
