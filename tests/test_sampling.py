"""Trainer.sample with scripted rollouts: which groups each algorithm trains on (DAPO's filter, GPG's
beta_th loop and rebuilt batch, GCPO's injection), the reward scale, and refused goldens."""

from __future__ import annotations

import json

import pytest
import torch

from agentic_gcpo.algorithms import REGISTRY, gpg_alpha
from agentic_gcpo.config import load_config
from agentic_gcpo.ledger import Source, Trajectory
from agentic_gcpo.metrics import Timer
from agentic_gcpo.train.trainer import Trainer

# Per sampling round, one pattern per group (4 prompts per step, groups of 2):
# "mix" = one right one wrong, "R" = both right, "W" = both wrong.
SCRIPT = [
    ["mix", "W", "R", "W"],  # 1 informative
    ["W", "mix", "mix", "R"],  # 3 informative so far
    ["mix", "mix", "mix", "W"],  # 6 informative so far
]
# (rounds, informative groups trained on, groups trained on, groups injected) per algorithm:
# GCPO/GRPO/GSPO/Dr.GRPO take the first round as it is; DAPO samples until 4 informative groups
# (round 3) and keeps 4 of them; GPG (beta_th 0.5) stops at 0.5 x 4 = 2 informative groups (round 2)
# and trains on its 3 plus 1 degenerate group of round 2.
EXPECTED = {
    "gcpo": (1, 3, 4, 2),
    "grpo": (1, 1, 4, 0),
    "gspo": (1, 1, 4, 0),
    "dr_grpo": (1, 1, 4, 0),
    "dapo": (3, 4, 4, 0),
    "gpg": (2, 3, 4, 0),
}


class ScriptedLoop:
    def __init__(self) -> None:
        self.round = 0

    def run(self, problems, group_size, seed=0, first_group_id=0):
        out = []
        for gi, (p, pattern) in enumerate(zip(problems, SCRIPT[self.round])):
            for k in range(group_size):
                right = pattern == "R" or (pattern == "mix" and k == 0)
                t = Trajectory(problem_id=p.id, group_id=first_group_id + gi, reference=p.reference)
                t.append([1, 2, 3], Source.PROMPT)
                t.append([4, 5], Source.SAMPLED, [-0.1, -0.2])
                t.final_text = f"\\boxed{{{p.reference if right else 'nope'}}}"
                t.finish_reason = "stop"
                out.append(t)
        self.round += 1
        return out

    def close(self, wait: bool = True) -> None:
        pass


def _trainer(tmp_path, tiny, name: str, *extra: str) -> Trainer:
    data = tmp_path / "q.jsonl"
    rows = [{"id": f"q{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(
        "configs/tiny_cpu.yaml",
        [
            f"run.output_dir={tmp_path}",
            f"algorithm.name={name}",
            f"data.path={data}",
            "data.format=generic",
            "data.shuffle=false",
            "rollout.group_size=2",
            "train.prompts_per_step=4",
            "train.max_sampling_rounds=3",
            "engine.dtype=float32",
            "train.save_final=false",
            *extra,
        ],
    )
    tr = Trainer(cfg, model=tiny[0], tokenizer=tiny[1])
    tr.loop.close()
    tr.loop = ScriptedLoop()
    return tr


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_which_groups_each_algorithm_trains_on(tmp_path, tiny, name):
    tr = _trainer(tmp_path, tiny, name)
    try:
        batch, m = tr.sample(0, Timer())
    finally:
        tr.close()
    rounds, informative, groups, injected = EXPECTED[name]
    by_group: dict[int, list[Trajectory]] = {}
    for t in batch:
        by_group.setdefault(t.group_id, []).append(t)
    assert all(len(g) == 2 for g in by_group.values())  # groups stay whole
    mixed = sum(len({t.correct for t in g}) > 1 for g in by_group.values())
    assert (m["sampling/rounds"], mixed, len(by_group), m["gcpo/injected"]) == (
        rounds,
        informative,
        groups,
        injected,
    )
    assert m["sampling/train_seqs"] == 2 * groups
    assert m["sampling/dropped_groups"] == 4 * rounds - groups  # generated, not trained on
    wrong = {t.reward for t in batch if not t.correct}
    assert wrong == {-1.0 if name == "dapo" else 0.0}  # DAPO's +-1 rule reward; 0/1 for the others
    assert {t.reward for t in batch if t.correct} == {1.0}
    if name == "gpg":  # informative groups first, then degenerate ones of the last round only
        assert [len({t.correct for t in g}) for g in by_group.values()] == [2, 2, 2, 1]
        assert list(by_group) == [0, 5, 6, 4]  # round 1 ids 0-3, round 2 ids 4-7
        r = torch.tensor([float(t.correct) for t in batch])
        gids = torch.tensor([t.group_id for t in batch])
        assert gpg_alpha(r, gids) == pytest.approx(1 / min(1.0, 3 / 4))  # the paper's scaling


def test_a_golden_whose_tool_call_fails_is_refused_and_counted(tmp_path, tiny):
    tr = _trainer(tmp_path, tiny, "gcpo")
    bad = [
        {"role": "assistant", "content": "```python\nprint(1/0)\n```\n"},
        {"role": "assistant", "content": "So \\boxed{2}."},
    ]
    for p in tr.problems:
        p.golden = bad
    try:
        batch, m = tr.sample(0, Timer())
    finally:
        tr.close()
    assert m["gcpo/golden_tool_errors"] == 2.0 and m["gcpo/injected"] == 0.0  # two all-fail groups
    assert m["gcpo/golden_verify_failures"] == 0.0
    assert not any(t.is_golden for t in batch)


def test_goldens_over_the_rollout_limits_are_counted_per_step(tmp_path, tiny):
    tr = _trainer(tmp_path, tiny, "gcpo", "rollout.max_new_tokens_per_turn=4", "golden.over_limits=refuse")
    try:
        batch, m = tr.sample(0, Timer())
    finally:
        tr.close()
    # the script's first round has two all-fail groups; each one's golden ("The answer is
    # \\boxed{n}.") is longer than a 4-token turn, so it is counted and refused
    assert m["gcpo/all_fail_groups"] == 2.0 and m["gcpo/golden_over_limits"] == 2.0
    assert m["gcpo/injected"] == 0.0 and not any(t.is_golden for t in batch)
