"""Several optimizer steps per rollout batch (train.mini_batches, train.epochs), old log-probs from
the generating policy, per-mini-batch denominators and the learning-rate schedule."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from agentic_gcpo.config import ConfigError, TrainConfig, load_config
from agentic_gcpo.ledger import Source, Trajectory
from agentic_gcpo.train import update as update_mod
from agentic_gcpo.train.policy import SharedPrefixes, batch_logprobs, pack
from agentic_gcpo.train.reward import score
from agentic_gcpo.train.trainer import Trainer
from agentic_gcpo.train.update import _micro_batches, _plan, group_mini_batches, lr_factor

BASE = [
    "model.path=tiny",
    "train.steps=1",
    "train.prompts_per_step=2",
    "rollout.group_size=4",
    "rollout.max_new_tokens_per_turn=16",
    "rollout.max_turns=1",
    "data.limit=8",
    "train.precision=float32",
    "engine.dtype=float32",
    "train.save_final=false",
    "log.progress=false",
]


def _traj(gid: int, n_policy: int, prompt: int = 3) -> Trajectory:
    t = Trajectory(problem_id=f"p{gid}", group_id=gid, reference="1")
    t.append(list(range(prompt)), Source.PROMPT)
    t.append(list(range(n_policy)), Source.SAMPLED)
    return t


def test_mini_batches_hold_whole_groups_in_order() -> None:
    gids = [5, 5, 9, 9, 9, 2, 2, 7, 7, 7, 7]
    trajs = [_traj(g, 2) for g in gids]
    for n in (1, 2, 3, 4, 9):
        parts = group_mini_batches(trajs, n)
        assert len(parts) == min(n, 4)
        assert sorted(i for p in parts for i in p) == list(range(len(trajs)))
        for p in parts:  # a group never straddles two mini-batches
            assert all(not ({gids[i] for i in p} & {gids[i] for i in q}) for q in parts if q is not p)
        counts = [len({gids[i] for i in p}) for p in parts]
        assert max(counts) - min(counts) <= 1
    assert group_mini_batches(trajs, 2) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10]]


def test_denominators_are_per_mini_batch_and_count_zero_advantage_members() -> None:
    trajs = [_traj(0, 3), _traj(0, 5), _traj(1, 2), _traj(1, 7), _traj(1, 1)]
    adv = torch.tensor([1.0, -1.0, 0.0, 0.5, -0.5])  # trajectory 2 has nothing to learn
    tc = TrainConfig(mini_batches=2, micro_batch_size=1, prompts_per_step=2)
    first, second = _plan(trajs, adv, tc)
    assert (first.num_seqs, first.num_tokens) == (2, 8.0)
    assert (second.num_seqs, second.num_tokens) == (3, 10.0)  # trajectory 2 still counts
    assert second.micro == [[4], [3]]  # only active members are forwarded, shortest first
    whole = _plan(trajs, adv, TrainConfig(micro_batch_size=8))
    assert len(whole) == 1 and (whole[0].num_seqs, whole[0].num_tokens) == (5, 18.0)


def test_micro_batches_respect_the_sequence_and_token_caps() -> None:
    lengths = [100, 100, 200, 300, 300, 900, 2000]  # sorted, as _plan hands them over
    idx = list(range(10, 17))
    tc = TrainConfig(micro_batch_size=3, micro_batch_tokens=900)
    # 3 x 200 = 600 fits; 2 x 300 = 600 fits but a third would not; 900 and 2000 go alone
    assert _micro_batches(lengths, idx, tc) == [[10, 11, 12], [13, 14], [15], [16]]
    no_cap = TrainConfig(micro_batch_size=3, micro_batch_tokens=0)
    assert _micro_batches(lengths, idx, no_cap) == [[10, 11, 12], [13, 14, 15], [16]]
    b = _plan([_traj(0, n - 3) for n in lengths], torch.ones(7), tc)[0]
    assert [len(m) for m in b.micro] == [3, 2, 1, 1] and b.num_seqs == 7  # denominators unchanged


def test_lr_schedule_warmup_constant_and_cosine() -> None:
    const = TrainConfig(steps=2, mini_batches=1, epochs=2, warmup_steps=2)
    assert [lr_factor(s, const) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    cos = TrainConfig(steps=2, epochs=3, warmup_steps=2, lr_schedule="cosine", min_lr_ratio=0.1)
    f = [lr_factor(s, cos) for s in range(6)]  # 6 planned optimizer steps, 4 after warmup
    assert f[:2] == [0.5, 1.0]
    assert f[2] == pytest.approx(1.0) and f[4] == pytest.approx(0.1 + 0.9 * 0.5)
    assert all(a > b for a, b in zip(f[2:], f[3:])) and f[5] > 0.1
    assert lr_factor(10**6, cos) == pytest.approx(0.1)
    assert lr_factor(0, TrainConfig()) == 1.0  # the defaults leave train.lr alone


def test_config_refuses_more_mini_batches_than_groups() -> None:
    with pytest.raises(ConfigError, match=r"train.mini_batches=3 .* at most 2"):
        load_config(None, ["train.prompts_per_step=2", "train.mini_batches=3"])


@pytest.mark.parametrize("name", ["gcpo", "gpg", "grpo", "dapo", "dr_grpo", "gspo"])
def test_group_size_one_is_refused_with_the_reason(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"algorithm.name={name}", "rollout.group_size=1"])
    msg = str(info.value)
    assert "rollout.group_size=1" in msg and "2 or more" in msg and "advantage 0" in msg
    assert "Value error" not in msg and "{" not in msg  # no pydantic noise, no dump of the whole tree
    assert load_config(None, [f"algorithm.name={name}", "rollout.group_size=2"]).rollout.group_size == 2


class _Recorder:
    """Wraps an algorithm's policy_loss to keep (optimizer step, logp, old) of every micro-batch."""

    def __init__(self, tr: Trainer) -> None:
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.steps = 0
        inner, opt_step = tr.algo.policy_loss, tr.opt.step

        def loss(logp, old, adv, mask, cfg):
            self.calls.append((self.steps, logp.detach().clone(), old.detach().clone(), mask.clone()))
            return inner(logp, old, adv, mask, cfg)

        def step(*a, **k):
            self.steps += 1
            return opt_step(*a, **k)

        tr.algo = dataclasses.replace(tr.algo, policy_loss=loss)
        tr.opt.step = step


def _gcpo_batch(tr: Trainer) -> list[Trajectory]:
    problems = next(tr.batches)
    trajs = tr.loop.run(problems, tr.cfg.rollout.group_size, seed=1)
    score(trajs)
    tr.inject(trajs, problems, 0)
    return trajs


def test_default_is_one_step_with_old_equal_to_current_and_no_extra_pass(tmp_path, tiny, monkeypatch):
    cfg = load_config("configs/tiny_cpu.yaml", [*BASE, f"run.output_dir={tmp_path}"])
    tr = Trainer(cfg, model=tiny[0], tokenizer=tiny[1])
    trajs = _gcpo_batch(tr)
    rec = _Recorder(tr)
    passes = []
    real = update_mod.batch_logprobs
    monkeypatch.setattr(update_mod, "batch_logprobs", lambda *a, **k: passes.append(1) or real(*a, **k))
    state = {k: v.clone() for k, v in tiny[0].state_dict().items()}
    try:
        m = tr.update(trajs)
    finally:
        tiny[0].load_state_dict(state)  # the session's tiny model stays untrained for other tests
        tr.close()
    assert rec.steps == 1 and len(passes) == len(rec.calls)  # one forward per micro-batch, no old pass
    assert all(torch.equal(logp, old) for _, logp, old, _ in rec.calls)
    assert m["loss/ratio_mean"] == 1.0 and m["loss/clip_frac"] == 0.0 and m["train/lr"] == cfg.train.lr


def test_old_logprobs_come_from_the_generating_policy(tmp_path, tiny):
    """mini_batches=2, epochs=2 on 2 groups: 4 optimizer steps. The first step starts at ratio 1;
    every later step reuses the stored pre-update log-probs (the golden's too: teacher-forced through
    the pre-update policy), so its ratio has moved away from 1."""
    cfg = load_config(
        "configs/tiny_cpu.yaml",
        [*BASE, f"run.output_dir={tmp_path}", "train.mini_batches=2", "train.epochs=2", "train.lr=1e-2"],
    )
    tr = Trainer(cfg, model=tiny[0], tokenizer=tiny[1])
    trajs = _gcpo_batch(tr)
    assert any(t.is_golden for t in trajs)
    second = sorted(range(4, 8), key=lambda i: len(trajs[i].token_ids))  # mini-batch 2, as planned
    shared = SharedPrefixes([trajs[i] for i in second], tr.pad_id)  # as the update packs them
    with torch.no_grad():
        shared.forward(tiny[0], bf16=False)
        b = pack([trajs[i] for i in second], tr.pad_id, shared)
        pre = batch_logprobs(tiny[0], b, False, cfg.rollout.temperature)
    rec = _Recorder(tr)
    state = {k: v.clone() for k, v in tiny[0].state_dict().items()}
    try:
        m = tr.update(trajs)
    finally:
        tiny[0].load_state_dict(state)
        tr.close()
    assert rec.steps == 4 and [c[0] for c in rec.calls] == [0, 1, 2, 3]
    (_, lp0, old0, _), (_, lp1, old1, mask1), (_, _, old2, _), (_, _, old3, _) = rec.calls
    torch.testing.assert_close(lp0, old0, atol=1e-6, rtol=0)  # same policy, same micro-batch
    torch.testing.assert_close(old1, pre, atol=1e-6, rtol=0)  # pre-update, golden included
    assert torch.equal(old2, old0) and torch.equal(old3, old1)  # stored, not recomputed
    assert (lp1 - old1)[mask1 > 0].abs().max() > 1e-4  # the policy moved: ratios act
    assert m["loss/ratio_mean"] != 1.0 and m["loss/approx_kl"] > 0.0


def test_two_epochs_clip_and_the_lr_schedule_is_logged(tmp_path, tiny):
    """A real run with train.epochs=2: loss/clip_frac > 0; train/lr follows warmup then cosine."""
    cfg = load_config(
        "configs/tiny_cpu.yaml",
        [
            *BASE,
            f"run.output_dir={tmp_path}",
            "train.steps=2",
            "train.epochs=2",
            "train.warmup_steps=2",
            "train.lr_schedule=cosine",
        ],
    )
    state = {k: v.clone() for k, v in tiny[0].state_dict().items()}
    try:
        run = Trainer(cfg, model=tiny[0], tokenizer=tiny[1]).train()
    finally:
        tiny[0].load_state_dict(state)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["loss/skipped"] == 0.0 for r in rows)  # goldens in every group
    assert all(r["loss/clip_frac"] > 0.0 for r in rows), [r["loss/clip_frac"] for r in rows]
    # slots 0,1 warm up (last one at lr), slots 2,3 are the cosine over 2 steps: slot 3 at half
    assert rows[0]["train/lr"] == pytest.approx(cfg.train.lr)
    assert rows[1]["train/lr"] == pytest.approx(cfg.train.lr * 0.5 * (1 + math.cos(math.pi / 2)))
