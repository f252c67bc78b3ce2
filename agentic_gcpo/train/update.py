"""The learner's update for one rollout batch: mini-batches, epochs, old log-probs, LR schedule.

A rollout batch is split into `train.mini_batches` mini-batches of whole groups (advantages are
group-relative, so a group is never split) and each is one optimizer step; `train.epochs` repeats
the pass. Advantages are computed once over the whole batch.

Old log-probs (the denominator of every importance ratio) are those of the policy that generated
the rollouts. With one step per batch (mini_batches = epochs = 1) that policy is the current one and
the old log-probs are the current ones detached (verl does the same): the ratio is exactly 1 and no
extra pass is spent. Otherwise one no-grad pass before the first optimizer step computes them, in
the same micro-batches and precision as the training passes (so a mini-batch's first step starts at
ratio 1 up to float noise), stored per trajectory. A golden member goes through the same pass: its
old log-probs are the pre-update policy's teacher-forced ones, not those of whoever wrote it.
With `train.behaviour_logprobs: sampler` (the default when rollouts lag the learner by a step,
`rollout.off_policy_steps: 1`) sampled tokens take the engine's log-probs instead: the policy that
really drew them, one update older than the learner, so the ratio measures and clips the lag.

Micro-batches hold at most `train.micro_batch_size` sequences and `train.micro_batch_tokens` padded
tokens (sorted by length first), so memory follows the batch's tokens, not its longest trajectory.

Loss denominators (token-mean's token count, the seq-means' sequence count) are those of the
optimizer step's mini-batch. Sequences with advantage exactly 0 contribute neither loss nor gradient
under every registered algorithm, so they are not forwarded, but they still count in the denominators.

Each optimizer step forwards each distinct prompt once (`train.share_prefix`, policy.SharedPrefixes):
its group's sequences continue from its keys/values and its gradient is sent back once after the
step's last micro-batch, so the G copies of a prompt cost one.

Across processes (`train/distributed.py`, `dist`): each rank holds whole groups; advantages are
computed over every rank's rewards, each optimizer step's denominators are summed over ranks before
any division, and the gradients are summed over ranks before clipping, so the step equals one
process with the whole batch. Mini-batch k is the union of the ranks' k-th mini-batches.

Learning rate: linear warmup over `train.warmup_steps` optimizer steps, then constant or cosine down
to `min_lr_ratio` x lr over the planned steps (steps x mini_batches x epochs). The position in the
schedule is the optimizer-step *slot*: a mini-batch skipped because it had nothing to learn still
advances it, so the schedule follows training progress, not how many batches were degenerate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from agentic_gcpo.algorithms import Algorithm, aggregate
from agentic_gcpo.config import Config, TrainConfig
from agentic_gcpo.ledger import Trajectory
from agentic_gcpo.train.distributed import SINGLE, Dist, as_float
from agentic_gcpo.train.policy import PackedBatch, SharedPrefixes, batch_logprobs, pack, token_logprobs

# What a step without a gradient logs, so every row has the same keys: the policy did not move
# (ratio 1, KL 0); the sampler/trainer logprob gap was not measured (NaN -> null in the JSONL).
NO_UPDATE: dict[str, float] = {
    "loss/policy": 0.0,
    "loss/grad_norm": 0.0,
    "loss/clip_frac": 0.0,
    "loss/ratio_mean": 1.0,
    "loss/approx_kl": 0.0,
    "loss/active_seqs": 0.0,
    "adv/abs_mean": 0.0,
    "loss/skipped": 1.0,
    "rollout/logprob_abs_diff": math.nan,
}


def slots_per_update(tc: TrainConfig) -> int:
    """Optimizer-step slots one rollout batch takes in the LR schedule."""
    return tc.mini_batches * tc.epochs


def lr_factor(slot: int, tc: TrainConfig) -> float:
    """Multiplier of train.lr at optimizer-step slot `slot` (0-based)."""
    if slot < tc.warmup_steps:
        return (slot + 1) / tc.warmup_steps  # the first step already learns (not lr 0)
    if tc.lr_schedule == "constant":
        return 1.0
    total = tc.steps * slots_per_update(tc)
    progress = min(1.0, (slot - tc.warmup_steps) / max(1, total - tc.warmup_steps))
    return tc.min_lr_ratio + (1.0 - tc.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def group_mini_batches(trajs: list[Trajectory], n: int) -> list[list[int]]:
    """Indices of `trajs` in at most `n` mini-batches of whole groups, as even in group count as can be.

    Groups keep their order of first appearance; fewer groups than `n` (DAPO's filtered batch can
    be short) give one mini-batch per group."""
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(trajs):
        groups.setdefault(t.group_id, []).append(i)
    members = list(groups.values())
    n = max(1, min(n, len(members)))
    q, r = divmod(len(members), n)
    out, k = [], 0
    for j in range(n):
        size = q + (1 if j < r else 0)
        out.append([i for g in members[k : k + size] for i in g])
        k += size
    return out


@dataclass
class _MiniBatch:
    micro: list[list[int]]  # trajectory indices per micro-batch (active members only, length-sorted)
    num_seqs: int  # denominators of this optimizer step: every member, zero-advantage ones included
    num_tokens: float
    trains: bool = True  # some rank has a sequence to learn from in this step (else the slot passes)


def _plan(trajs: list[Trajectory], adv: torch.Tensor, tc: TrainConfig) -> list[_MiniBatch]:
    plan = []
    for mini in group_mini_batches(trajs, tc.mini_batches):
        active = [i for i in mini if adv[i].item() != 0.0 and trajs[i].num_policy_tokens > 0]
        active.sort(key=lambda i: len(trajs[i].token_ids))  # less padding per micro-batch
        plan.append(
            _MiniBatch(
                micro=_micro_batches([len(trajs[i].token_ids) for i in active], active, tc),
                num_seqs=len(mini),
                num_tokens=float(sum(trajs[i].num_policy_tokens for i in mini)),
            )
        )
        plan[-1].trains = bool(plan[-1].micro)
    return plan


def _global_plan(plan: list[_MiniBatch], dist: Dist) -> list[_MiniBatch]:
    """Each rank's plan with every optimizer step's denominators summed over ranks, padded with empty
    mini-batches to the longest plan (ranks take the same number of steps, in lockstep). Under FSDP
    each step's micro-batches are padded too (empty ones: `Dist.idle_pass`), since every forward
    and backward is a collective there."""
    if not dist.active:
        return plan
    parts = dist.gather([(mb.num_seqs, mb.num_tokens, len(mb.micro)) for mb in plan])
    n = max(len(p) for p in parts)
    plan = plan + [_MiniBatch([], 0, 0.0) for _ in range(n - len(plan))]
    for k, mb in enumerate(plan):
        rows = [p[k] for p in parts if k < len(p)]
        mb.num_seqs = int(sum(r[0] for r in rows))
        mb.num_tokens = float(sum(r[1] for r in rows))
        mb.trains = any(r[2] for r in rows)
        if dist.fsdp:
            mb.micro = mb.micro + [[] for _ in range(max(r[2] for r in rows) - len(mb.micro))]
    return plan


def _advantages(
    algo: Algorithm, cfg: Config, trajs: list[Trajectory], dist: Dist
) -> tuple[torch.Tensor, torch.Tensor]:
    """(this rank's advantages [N], the whole batch's [N_all]): computed once over every rank's
    rewards, so statistics over the batch (GPG's alpha) are those of one process."""
    mine = ([t.reward for t in trajs], [t.group_id for t in trajs], [t.is_golden for t in trajs])
    parts = dist.gather(mine)
    rewards = torch.tensor([r for p in parts for r in p[0]], dtype=torch.float32)
    gids = torch.tensor([g for p in parts for g in p[1]], dtype=torch.long)
    golden = torch.tensor([x for p in parts for x in p[2]], dtype=torch.bool)
    adv = algo.advantages(rewards, gids, golden, cfg.algorithm)  # [N_all]
    start = sum(len(p[0]) for p in parts[: dist.rank])
    return adv[start : start + len(trajs)], adv


def _micro_batches(lengths: list[int], idx: list[int], tc: TrainConfig) -> list[list[int]]:
    """`idx` (sorted by `lengths`, ascending) cut into runs of at most micro_batch_size sequences
    whose padded size (count x longest) stays within micro_batch_tokens; a longer sequence alone."""
    out: list[list[int]] = []
    for n, i in zip(lengths, idx):
        cur = out[-1] if out else None
        fits = cur is not None and len(cur) < tc.micro_batch_size
        if fits and tc.micro_batch_tokens and (len(cur) + 1) * n > tc.micro_batch_tokens:
            fits = False
        if fits:
            cur.append(i)
        else:
            out.append([i])
    return out


def _on(b: PackedBatch, device: torch.device) -> PackedBatch:
    """The batch's tensors on the model's device (a GPU rank's); on CPU the batch itself."""
    if device.type == "cpu":
        return b
    move = {k: getattr(b, k) for k in ("input_ids", "attention_mask", "loss_mask", "sampler_logprobs")}
    move.update({k: getattr(b, k) for k in ("prefix_rows", "offsets") if getattr(b, k) is not None})
    return replace(b, **{k: v.to(device) for k, v in move.items()})


def behaviour_source(cfg: Config) -> str:
    """'sampler' or 'recompute': where old log-probs of sampled tokens come from (train.behaviour_logprobs)."""
    mode = cfg.train.behaviour_logprobs
    if mode == "auto":
        return "sampler" if cfg.rollout.off_policy_steps else "recompute"
    return mode


def _stack_old(old: dict[int, torch.Tensor], idx: list[int], like: torch.Tensor) -> torch.Tensor:
    """The stored old log-probs of `idx`, right-padded with 0 to `like`'s [n, T-1] shape."""
    out = torch.zeros_like(like)
    for row, i in enumerate(idx):
        out[row, : old[i].shape[0]] = old[i]
    return out


def policy_update(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    algo: Algorithm,
    cfg: Config,
    trajs: list[Trajectory],
    *,
    bf16: bool,
    pad_id: int,
    first_slot: int,
    dist: Dist = SINGLE,
) -> dict[str, float]:
    """Every optimizer step for one rollout batch; returns the `loss/*`, `adv/*`, `train/lr` metrics.

    `first_slot`: this batch's first position in the LR schedule (the caller advances it by
    `slots_per_update`). `dist`: this process's rank when launched across processes; `trajs` is
    then its share (whole groups) and every returned metric is the whole batch's."""
    tc = cfg.train
    n_slots = slots_per_update(tc)
    lr_last = tc.lr * lr_factor(first_slot + n_slots - 1, tc)
    if not dist.sum([len(trajs)])[0]:
        return {**NO_UPDATE, "train/lr": lr_last}
    adv, adv_all = _advantages(algo, cfg, trajs, dist)  # [N], once over the whole batch
    plan = _global_plan(_plan(trajs, adv, tc), dist)
    n_active = int(dist.sum([sum(len(ix) for mb in plan for ix in mb.micro)])[0])
    out: dict[str, float] = {
        "loss/active_seqs": float(n_active),
        "adv/abs_mean": float(adv_all.abs().mean()),
        "train/lr": lr_last,
    }
    if not n_active:
        return {**NO_UPDATE, **out}

    def logprobs(b: PackedBatch) -> torch.Tensor:  # [n, T-1], 0 where loss_mask is 0
        if dist.fsdp:  # through the root module: FSDP gathers its parameters in the root's forward
            lp = token_logprobs(
                model, b.input_ids, b.attention_mask, bf16, temperature=cfg.rollout.temperature
            )
            return lp * b.loss_mask
        return batch_logprobs(model, b, bf16, cfg.rollout.temperature)

    def prefixes(mb: _MiniBatch) -> SharedPrefixes | None:
        """This optimizer step's prompts, forwarded once (with grad when grad mode is on)."""
        members = [trajs[i] for idx in mb.micro for i in idx]
        if not (tc.share_prefix and not dist.fsdp and SharedPrefixes.applies(members, model)):
            return None
        shared = SharedPrefixes(members, pad_id)
        shared.forward(model, bf16)
        return shared

    model.train()  # the old pass too: the same mode as the training passes, so the ratio starts at 1
    device = next(model.parameters()).device  # a launched GPU rank's; batches are packed on the CPU
    adv_dev = adv.to(device)
    # The behaviour policy's log-probs of sampled tokens: the engine's own (`sampler`), or a
    # recomputation by the learner, which is the generating policy only when rollouts are on-policy.
    from_sampler = behaviour_source(cfg) == "sampler"
    reuse_current = n_slots == 1  # one step: the pre-update policy is the current one
    old: dict[int, torch.Tensor] = {}
    diffs, n_diff = 0.0, 0  # sampler vs trainer logprob gap, on the pre-update policy

    def sampler_gap(b: PackedBatch, logp: torch.Tensor) -> None:
        nonlocal diffs, n_diff
        sampled = b.loss_mask.bool() & ~torch.isnan(b.sampler_logprobs)
        if sampled.any():
            diffs += float((logp.detach() - b.sampler_logprobs)[sampled].abs().sum())
            n_diff += int(sampled.sum())

    if not reuse_current:
        with torch.no_grad():
            for mb in plan:
                shared = prefixes(mb) if mb.micro else None
                for idx in mb.micro:
                    if not idx:  # FSDP lockstep padding
                        dist.idle_pass(model, backward=False)
                        continue
                    b = _on(pack([trajs[i] for i in idx], pad_id, shared), device)
                    lp = logprobs(b)
                    sampler_gap(b, lp)
                    for row, i in enumerate(idx):
                        old[i] = lp[row, : b.positions(row)].clone()

    losses, norms, sums, weights = [], [], {}, 0
    for epoch in range(tc.epochs):
        for k, mb in enumerate(plan):
            if not mb.trains:
                continue  # nothing to learn in this mini-batch; its schedule slot passes unused
            lr = tc.lr * lr_factor(first_slot + epoch * tc.mini_batches + k, tc)
            for group in opt.param_groups:
                group["lr"] = lr
            step_loss = 0.0
            shared = prefixes(mb) if mb.micro else None  # a rank can have no sequence in a step
            for idx in mb.micro:
                if not idx:  # FSDP lockstep padding
                    dist.idle_pass(model, backward=True)
                    continue
                b = _on(pack([trajs[i] for i in idx], pad_id, shared), device)
                logp = logprobs(b)
                if reuse_current:
                    old_lp = logp.detach()
                    sampler_gap(b, logp)
                else:
                    old_lp = _stack_old(old, idx, logp)
                if from_sampler:  # golden and template tokens (NaN) keep the recomputed values
                    drawn = b.loss_mask.bool() & ~torch.isnan(b.sampler_logprobs)
                    old_lp = torch.where(drawn, b.sampler_logprobs, old_lp)
                per_tok, m = algo.policy_loss(logp, old_lp, adv_dev[idx], b.loss_mask, cfg.algorithm)
                loss = aggregate(
                    per_tok,
                    b.loss_mask,
                    algo.aggregation,
                    num_seqs=mb.num_seqs,
                    num_tokens=mb.num_tokens,
                    norm_len=cfg.algorithm.dr_grpo_norm_len,
                )
                dist.backward(loss)
                step_loss += float(loss.detach())
                for key, v in m.items():
                    sums[key] = sums.get(key, 0.0) + float(v) * len(idx)
                weights += len(idx)
            if shared is not None:
                shared.backward()  # the prompts' share of the gradient, once for the whole step
            dist.all_reduce_grads(list(model.parameters()))  # each rank's loss is its share of the sum
            grad_norm = as_float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip))
            if math.isfinite(grad_norm):
                opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(step_loss)
            norms.append(float(grad_norm))
    # Means over optimizer steps (loss, grad norm) and over every trained sequence (ratio metrics):
    # with one step per batch these are exactly that step's numbers. Across ranks: sums of the parts.
    if dist.active:
        losses = dist.sum(losses)
        diffs, n_diff, weights = dist.sum([diffs, n_diff, weights])
        merged: dict[str, float] = {}
        for part in dist.gather(sums):
            for key, v in part.items():
                merged[key] = merged.get(key, 0.0) + v
        sums = merged
    out.update({f"loss/{k}": v / weights for k, v in sums.items()})
    out.update(
        {
            "loss/policy": sum(losses) / len(losses),
            "loss/grad_norm": sum(norms) / len(norms),
            "loss/skipped": 0.0,
            "rollout/logprob_abs_diff": diffs / n_diff if n_diff else 0.0,
        }
    )
    return out
