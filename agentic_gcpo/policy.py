"""From trajectories to tensors, and the log-probs of a batch under the policy.

Kept apart from the trainer so the eval, the REPL and tests can reuse exactly the same code that
computes the training log-probs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from agentic_gcpo.ledger import Trajectory


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [N, T] right padded
    attention_mask: torch.Tensor  # [N, T]
    loss_mask: torch.Tensor  # [N, T-1] float: 1 where token t+1 was sampled (aligned with logp)
    sampler_logprobs: torch.Tensor  # [N, T-1] NaN where the engine did not sample the token


def pack(trajs: list[Trajectory], pad_id: int) -> PackedBatch:
    N, T = len(trajs), max(len(t.token_ids) for t in trajs)
    ids = torch.full((N, T), pad_id, dtype=torch.long)
    attn = torch.zeros((N, T), dtype=torch.long)
    mask = torch.zeros((N, T), dtype=torch.float32)
    slp = torch.full((N, T), float("nan"), dtype=torch.float32)
    for i, t in enumerate(trajs):
        n = len(t.token_ids)
        ids[i, :n] = torch.tensor(t.token_ids)
        attn[i, :n] = 1
        mask[i, :n] = torch.tensor(t.loss_mask, dtype=torch.float32)
        slp[i, :n] = torch.tensor(t.sampler_logprobs, dtype=torch.float32)
    # logits at position t predict token t+1, so masks and logprobs drop the first column.
    return PackedBatch(ids, attn, mask[:, 1:], slp[:, 1:])


def token_logprobs(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, autocast_bf16: bool = True
) -> torch.Tensor:
    """log p(token t+1 | tokens <= t) for every position: [N, T-1], fp32."""
    amp = (
        torch.autocast(input_ids.device.type, dtype=torch.bfloat16)
        if autocast_bf16
        else contextlib.nullcontext()
    )
    with amp:
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).logits  # [N, T, V]
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:].unsqueeze(-1)
    # log_softmax via logsumexp keeps one [N, T, V] fp32 tensor alive instead of two.
    return logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)
