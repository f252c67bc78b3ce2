"""Learner benchmark: our update's tokens/s against a bare PyTorch forward + backward of the same batch.

    python bench/train_step.py                     # embedded SmolLM2, 32 trajectories, auto dtype
    python bench/train_step.py --dtype float32 --repeats 2

The batch looks like a GCPO step's: 4 groups x G=8 multi-turn trajectories (prompt, sampled turn,
tool output, sampled turn; lengths vary), half of each group rewarded, so every sequence has a
non-zero advantage and is trained on. Both sides use the same model, micro-batches (sorted by
length, `train.micro_batch_size` each), autocast dtype and AdamW step:

- ours: `Trainer.update(trajectories)`: packing, loss-mask-only vocabulary projection, the GCPO
  loss with its sequence-level ratio, aggregation, clipping, the optimizer step, the metrics.
- bare: `model(ids).logits`, log-softmax at the target tokens, masked mean, `backward()`, AdamW.

Ratio = ours tokens/s / bare tokens/s (>= 0.9 is the target: the mask, loss and bookkeeping must
cost little). Tokens = every position of every trajectory (what both sides run the model over).
Ours forwards each group's prompt once per step (`train.share_prefix`, the default); the bare loop
forwards it with every sequence, so ours can exceed 1. `ours, prompt per sequence` is our update
with `train.share_prefix=false`, to show what the sharing saves. The three are timed in interleaved
rounds and each keeps its fastest, so a busy moment on the machine does not decide the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentic_gcpo.config import load_config  # noqa: E402
from agentic_gcpo.ledger import Source, Trajectory  # noqa: E402
from agentic_gcpo.models import load_named  # noqa: E402
from agentic_gcpo.precision import cpu_description, resolve  # noqa: E402
from agentic_gcpo.train.policy import pack  # noqa: E402
from agentic_gcpo.train.trainer import Trainer  # noqa: E402


def make_batch(vocab: int, groups: int, G: int, seed: int = 0) -> list[Trajectory]:
    rng = random.Random(seed)
    trajs = []
    for g in range(groups):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(180, 260))]
        for i in range(G):
            t = Trajectory(problem_id=f"p{g}", group_id=g, reference="1")
            t.append(prompt, Source.PROMPT)
            for kind, lo, hi in ((Source.SAMPLED, 60, 190), (Source.TOOL, 10, 40), (Source.SAMPLED, 20, 120)):
                ids = [rng.randrange(vocab) for _ in range(rng.randint(lo, hi))]
                t.append(ids, kind, [-2.0] * len(ids) if kind is Source.SAMPLED else None)
            t.reward = float(i % 2)
            trajs.append(t)
    return trajs


def bare_update(model, opt, trajs, pad_id: int, mb: int, bf16: bool) -> None:
    trajs = sorted(trajs, key=lambda t: len(t.token_ids))
    n = float(sum(t.num_policy_tokens for t in trajs))
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    for k in range(0, len(trajs), mb):
        b = pack(trajs[k : k + mb], pad_id)
        with amp:
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, b.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        (-(lp * b.loss_mask).sum() / n).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def interleaved(fns: dict[str, object], repeats: int) -> dict[str, float]:
    """Fastest of `repeats` timed calls of each fn, the fns taking turns (after one warm-up each)."""
    for fn in fns.values():
        fn()  # warm-up (allocator, oneDNN kernel choice)
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    prec = resolve(args.dtype)
    print(f"cpu: {cpu_description()}\ntorch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"dtype: {prec.dtype} ({prec.reason})")
    model, tok = load_named(args.model)
    cfg = load_config(
        None,
        [
            "algorithm.name=gcpo",
            f"train.precision={prec.dtype}",
            f"engine.dtype={prec.dtype}",
            f"train.micro_batch_size={args.micro_batch}",
            f"rollout.group_size={args.group_size}",
            "rollout.temperature=1.0",
            "tools.names=[]",
            "run.output_dir=/tmp/agentic-gcpo-bench",
            "log.progress=false",
        ],
    )
    trainer = Trainer(cfg, model=model, tokenizer=tok)
    trajs = make_batch(model.config.vocab_size, args.groups, args.group_size)
    tokens = sum(len(t.token_ids) for t in trajs)
    policy = sum(t.num_policy_tokens for t in trajs)
    print(
        f"batch: {len(trajs)} trajectories, {tokens} tokens ({policy} sampled), micro-batch {args.micro_batch}"
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def ours(share: bool):
        def run() -> None:
            trainer.cfg.train.share_prefix = share
            trainer.update(trajs)

        return run

    try:
        t = interleaved(
            {
                "ours": ours(True),
                "ours_unshared": ours(False),
                "bare": lambda: bare_update(model, opt, trajs, trainer.pad_id, args.micro_batch, prec.bf16),
            },
            args.repeats,
        )
    finally:
        trainer.close()
    ours_s, unshared_s, bare_s = t["ours"], t["ours_unshared"], t["bare"]
    res = {
        "cpu": cpu_description(),
        "dtype": prec.dtype,
        "trajectories": len(trajs),
        "tokens": tokens,
        "ours_s": ours_s,
        "bare_s": bare_s,
        "ours_unshared_s": unshared_s,
        "ours_tok_s": tokens / ours_s,
        "bare_tok_s": tokens / bare_s,
        "ratio": bare_s / ours_s,
        "ratio_unshared": bare_s / unshared_s,
        "share_prefix_speedup": unshared_s / ours_s,
    }
    print(
        f"ours: {ours_s:.2f} s/update = {res['ours_tok_s']:.0f} tok/s\n"
        f"bare: {bare_s:.2f} s/update = {res['bare_tok_s']:.0f} tok/s\n"
        f"ours, prompt per sequence: {unshared_s:.2f} s/update\n"
        f"ours / bare (tokens/s) = {res['ratio']:.2f}   (target >= 0.9)\n"
        f"ours with the prompt per sequence / bare = {res['ratio_unshared']:.2f}\n"
        f"prompt forwarded once per group: {res['share_prefix_speedup']:.2f}x faster update"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
