"""One-step off-policy rollouts (train/ahead.py) and sampler old log-probs (train.behaviour_logprobs).

Float32 everywhere and a large learning rate, so one update moves the tiny model's log-probs far
more than float rounding does."""

from __future__ import annotations

import json

import torch

from agentic_gcpo.config import load_config
from agentic_gcpo.ledger import Source
from agentic_gcpo.train.policy import token_logprobs
from agentic_gcpo.train.state import load_state
from agentic_gcpo.train.trainer import Trainer

BASE = [
    "model.path=tiny",
    "train.steps=3",
    "train.prompts_per_step=2",
    "rollout.group_size=4",
    "rollout.max_new_tokens_per_turn=16",
    "data.limit=8",
    "sandbox.pool_size=2",
    "log.progress=false",
    "engine.dtype=float32",
    "train.precision=float32",
    "train.lr=1e-2",
    "train.save_final=false",
]


class Recording(Trainer):
    """Keeps, for each update, the weights it started from and the batch it trained on."""

    def update(self, trajs):
        self.seen = getattr(self, "seen", [])
        self.seen.append(({k: v.detach().clone() for k, v in self.model.state_dict().items()}, trajs))
        return super().update(trajs)


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "loss/ratio_mean" in x]


def _sampled_lp(model, weights, t):
    """Teacher-forced log-probs of t's sampled tokens under `weights` (loaded into `model`)."""
    model.load_state_dict(weights)
    ids = torch.tensor([t.token_ids])
    lp = token_logprobs(model, ids, torch.ones_like(ids), autocast_bf16=False)[0]  # [T-1]
    pos = [i - 1 for i, s in enumerate(t.sources) if s == Source.SAMPLED and i > 0]
    return lp[pos], torch.tensor([t.sampler_logprobs[i + 1] for i in pos])


def test_the_next_batch_is_drawn_by_the_previous_policy_and_the_ratio_corrects_it(tmp_path):
    cfg = load_config(
        "configs/tiny_cpu.yaml", [*BASE, f"run.output_dir={tmp_path}", "rollout.off_policy_steps=1"]
    )
    tr = Recording(cfg)
    run = tr.train()
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # step 1 trains on a batch of the current policy; steps 2 and 3 on one drawn a policy earlier
    assert abs(rows[0]["loss/ratio_mean"] - 1) < 1e-5 and rows[0]["loss/clip_frac"] == 0
    for r in rows[1:]:
        assert abs(r["loss/ratio_mean"] - 1) > 1e-3 and r["loss/clip_frac"] > 0
    assert "time/ahead_rollout_s" in rows[1] and "time/rollout_wait_s" in rows[0]
    # the batch trained at step 2 was sampled by the weights step 1 started from, not step 2's
    model = tr.model
    (w0, _), (w1, batch2) = tr.seen[0], tr.seen[1]
    t = next(t for t in batch2 if not t.is_golden)
    under_w0, sampler = _sampled_lp(model, w0, t)
    under_w1, _ = _sampled_lp(model, w1, t)
    assert torch.allclose(under_w0, sampler, atol=1e-4)
    assert not torch.allclose(under_w1, sampler, atol=1e-3)


def test_sampler_old_logprobs_on_policy_give_ratio_one(tmp_path):
    cfg = load_config(
        "configs/tiny_cpu.yaml", [*BASE, f"run.output_dir={tmp_path}", "train.behaviour_logprobs=sampler"]
    )
    rows = _rows(Trainer(cfg).train())
    assert all(abs(r["loss/ratio_mean"] - 1) < 1e-5 and r["loss/clip_frac"] == 0 for r in rows)


def test_a_checkpoint_keeps_the_batch_drawn_ahead(tmp_path):
    cfg = load_config(
        "configs/tiny_cpu.yaml",
        [
            *BASE,
            f"run.output_dir={tmp_path}",
            "rollout.off_policy_steps=1",
            "train.steps=2",
            "train.checkpoint_every=1",
        ],
    )
    run = Trainer(cfg).train()
    state = load_state(run / "checkpoints" / "step-1")
    step, (trajs, metrics) = state["ahead"]
    assert step == 1 and len(trajs) == 2 * 4 and "time/ahead_rollout_s" in metrics
    assert load_state(run / "checkpoints" / "step-2")["ahead"] is None  # nothing drawn past the last step
