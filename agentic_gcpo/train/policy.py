"""From trajectories to tensors, and the log-probs of a batch under the policy.

Kept apart from the trainer so the eval, the REPL and tests can reuse exactly the same code that
computes the training log-probs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
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
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    autocast_bf16: bool = True,
    only: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log p(token t+1 | tokens <= t) for every position: [N, T-1], fp32.

    `only` ([N, T-1] bool/0-1): compute the vocabulary projection just at those positions (the
    loss_mask) and return 0 elsewhere. The [N, T, V] logits of prompt and tool positions are most
    of the memory of a training step on a 49k-token vocabulary, and nothing uses them.
    `temperature`: the sampler's; the policy being trained is the tempered distribution the
    rollouts came from (as in verl and TRL), so its log-probs and the engine's agree.
    """
    inv_t = 1.0 / temperature if temperature > 0 else 1.0
    amp = (
        torch.autocast(input_ids.device.type, dtype=torch.bfloat16)
        if autocast_bf16
        else contextlib.nullcontext()
    )
    targets = input_ids[:, 1:]  # [N, T-1]
    head = model.get_output_embeddings()
    if only is None or head is None or getattr(model.config, "final_logit_softcapping", None):
        with amp:
            logits = model(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).logits  # [N, T, V]
        logits = logits[:, :-1].float() * inv_t
        # log_softmax via logsumexp keeps one [N, T, V] fp32 tensor alive instead of two.
        lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        return lp if only is None else lp * only.to(lp.dtype)
    sel = only.bool()  # [N, T-1]
    with amp:
        hidden = model.base_model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        logits = head(hidden[:, :-1][sel]).float() * inv_t  # [M, V], M = selected positions
    picked = logits.gather(-1, targets[sel].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(
        logits, dim=-1
    )  # [M]
    out = torch.zeros(sel.shape, dtype=picked.dtype, device=picked.device)
    return out.masked_scatter(sel, picked)


def _python_checkpoint(grad: torch.Tensor) -> None:
    """A no-op hook: running Python lets the interpreter raise a pending KeyboardInterrupt."""
    return None


def interruptible_backward(model: torch.nn.Module) -> Callable[[], None]:
    """Let Ctrl-C stop a backward pass between parameters rather than after it.

    `loss.backward()` is one C++ call; on CPU it runs in the calling thread without returning to
    the interpreter, so a Ctrl-C would wait for the whole micro-batch's backward (about a minute
    for the embedded model on 8 x 600 tokens on 2 busy cores). A Python hook on each parameter's
    gradient gives the interpreter a point to raise KeyboardInterrupt, which autograd then
    re-raises from `backward()` (measured there: 3.8 s after the signal instead of ~55 s; the
    wait is now the next parameter's gradient, the LM head's the longest). The gradients are
    unchanged. Returns the function that removes the hooks."""
    handles = [p.register_hook(_python_checkpoint) for p in model.parameters() if p.requires_grad]

    def remove() -> None:
        for h in handles:
            h.remove()

    return remove
