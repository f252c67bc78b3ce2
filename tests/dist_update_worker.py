"""Worker of tests/test_distributed.py: two updates of the tiny model on a fixed ledger batch.

Run as one process (`python tests/dist_update_worker.py OUT CASE...`, or `run` in-process) it trains on every group; under a
2-process launcher (`accelerate launch --multi_gpu --num_processes 2 ...`, gloo on CPU) each rank
trains on its half of the groups through the distributed path of `policy_update`. Rank 0 writes
the final parameters and the metrics of every update to OUT (torch.save), for the test to compare.

The batch is the same in both runs, so the update is all that can differ: rank 0 holds groups 0
and 1, rank 1 groups 2 and 3. With `train.mini_batches=2` optimizer step k takes each rank's k-th
group, i.e. groups {0, 2} then {1, 3}; the one process gets the groups in the order 0, 2, 1, 3 so
that its mini-batches are the same groups.
"""

from __future__ import annotations

import dataclasses
import random
import sys

import torch

from agentic_gcpo.algorithms import get_algorithm
from agentic_gcpo.config import load_config
from agentic_gcpo.ledger import Source, Trajectory
from agentic_gcpo.models import tiny_model
from agentic_gcpo.train import distributed
from agentic_gcpo.train.update import policy_update

G = 4
GROUPS = 4


def ledger_batch(vocab: int, golden: bool) -> list[Trajectory]:
    """4 groups of 4: a shared prompt per group, sampled turns with a tool turn between, mixed
    rewards (group 3 all wrong but for one golden member), lengths that differ per member."""
    rng = random.Random(7)
    out = []
    for g in range(GROUPS):
        prompt = [rng.randrange(vocab) for _ in range(5 + g)]
        for i in range(G):
            t = Trajectory(problem_id=f"p{g}", group_id=100 + g, reference="1")
            t.append(prompt, Source.PROMPT)
            t.append([rng.randrange(vocab) for _ in range(3 + (i + g) % 4)], Source.SAMPLED)
            t.append([rng.randrange(vocab) for _ in range(2)], Source.TOOL)
            t.append([rng.randrange(vocab) for _ in range(2 + i)], Source.SAMPLED)
            t.reward = float((i + g) % 3 == 0) if g < 3 else float(i == 0)
            t.correct = t.reward > 0
            t.is_golden = golden and g == 3 and i == 0
            out.append(t)
    return out


def run(dist: distributed.Dist, algorithm: str, mini_batches: int, fsdp: bool) -> dict:
    cfg = load_config(
        None,
        [
            "model.path=tiny",
            f"algorithm.name={algorithm}",
            f"train.mini_batches={mini_batches}",
            f"train.prompts_per_step={GROUPS}",
            f"rollout.group_size={G}",
            "train.lr=1e-2",
            "train.micro_batch_size=3",  # several micro-batches per step, uneven across ranks
            "train.grad_clip=1000",
            f"train.share_prefix={not fsdp}",  # FSDP forwards through the root: no shared prompt pass
        ],
    )
    model, tok = tiny_model(seed=0)
    model = model.to(torch.float64)  # so the comparison is of summation order only (~1e-15)
    dist.sync_module(model)
    if fsdp and dist.active:  # FSDP2 over the ranks (what ACCELERATE_USE_FSDP turns on in the trainer)
        dist = dataclasses.replace(dist, fsdp=True)
        model = dist.shard_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=0.0)
    algo = get_algorithm(algorithm)
    batch = ledger_batch(len(tok), algo.injects_golden)
    groups = [batch[k * G : (k + 1) * G] for k in range(GROUPS)]
    if dist.active:  # rank r: groups 2r, 2r+1 (its contiguous half, as the trainer splits problems)
        half = GROUPS // dist.world
        mine = [t for g in groups[dist.rank * half : (dist.rank + 1) * half] for t in g]
    else:
        order = [0, 2, 1, 3] if mini_batches == 2 else [0, 1, 2, 3]
        mine = [t for k in order for t in groups[k]]
    metrics = []
    for step in range(2):
        metrics.append(
            policy_update(
                model, opt, algo, cfg, mine, bf16=False, pad_id=0, first_slot=step * mini_batches, dist=dist
            )
        )
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    if dist.fsdp:  # the sharded parameters, gathered whole (every rank takes part)
        full = dist.full_weights(model)
        params = {k: full[k].detach().clone() for k in params}
    return {"params": params, "metrics": metrics, "world": dist.world}


def parse(case: str) -> tuple[str, int, bool]:
    """ALGORITHM:MINI_BATCHES[:fsdp] -> run()'s arguments."""
    algorithm, mini_batches, *mode = case.split(":")
    return algorithm, int(mini_batches), mode == ["fsdp"]


def main(out_path: str, cases: list[str]) -> None:
    """cases: ALGORITHM:MINI_BATCHES[:fsdp] ..."""
    dist = distributed.setup()
    out = {c: run(dist, *parse(c)) for c in cases}
    if dist.is_main:
        torch.save(out, out_path)
    dist.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
