"""From trajectories to tensors, and the log-probs of a batch under the policy.

Kept apart from the trainer so the eval, the REPL and tests can reuse exactly the same code that
computes the training log-probs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from agentic_gcpo.engines.kv_cache import cache_kw, growing_cache
from agentic_gcpo.ledger import Trajectory


@dataclass
class PackedBatch:
    """Token tensors of a micro-batch. With a shared prefix, row i holds its tokens *after* the first
    `offsets[i]` (its prompt, read once per optimizer step by `SharedPrefixes`); every column below
    is then in those suffix coordinates, which the losses do not mind (they only sum under masks)."""

    input_ids: torch.Tensor  # [N, T] right padded
    attention_mask: torch.Tensor  # [N, T]
    loss_mask: torch.Tensor  # [N, T-1] float: 1 where token t+1 was sampled (aligned with logp)
    sampler_logprobs: torch.Tensor  # [N, T-1] NaN where the engine did not sample the token
    prefix: SharedPrefixes | None = None
    prefix_rows: torch.Tensor | None = None  # [N] row of `prefix` each sequence continues
    offsets: torch.Tensor | None = None  # [N] tokens of each sequence held by its prefix

    def positions(self, row: int) -> int:
        """Log-prob positions of `row` (its unpadded length minus one)."""
        return int(self.attention_mask[row].sum()) - 1


def pack(trajs: list[Trajectory], pad_id: int, prefix: SharedPrefixes | None = None) -> PackedBatch:
    cut = [prefix.offset(t) if prefix is not None else 0 for t in trajs]
    N, T = len(trajs), max(len(t.token_ids) - c for t, c in zip(trajs, cut))
    ids = torch.full((N, T), pad_id, dtype=torch.long)
    attn = torch.zeros((N, T), dtype=torch.long)
    mask = torch.zeros((N, T), dtype=torch.float32)
    slp = torch.full((N, T), float("nan"), dtype=torch.float32)
    for i, (t, c) in enumerate(zip(trajs, cut)):
        n = len(t.token_ids) - c
        ids[i, :n] = torch.tensor(t.token_ids[c:])
        attn[i, :n] = 1
        mask[i, :n] = torch.tensor(t.loss_mask[c:], dtype=torch.float32)
        slp[i, :n] = torch.tensor(t.sampler_logprobs[c:], dtype=torch.float32)
    # logits at position t predict token t+1, so masks and logprobs drop the first column.
    b = PackedBatch(ids, attn, mask[:, 1:], slp[:, 1:])
    if prefix is not None:
        b.prefix = prefix
        b.prefix_rows = torch.tensor([prefix.row(t) for t in trajs], dtype=torch.long)
        b.offsets = torch.tensor(cut, dtype=torch.long)
    return b


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
    amp = _amp(input_ids.device, autocast_bf16)
    targets = input_ids[:, 1:]  # [N, T-1]
    head = model.get_output_embeddings()
    if only is None or head is None or getattr(model.config, "final_logit_softcapping", None):
        with amp:
            logits = model(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).logits  # [N, T, V]
        logits = _at_least_fp32(logits[:, :-1]) * inv_t
        # log_softmax via logsumexp keeps one [N, T, V] fp32 tensor alive instead of two.
        lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        return lp if only is None else lp * only.to(lp.dtype)
    with amp:
        hidden = model.base_model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
    return _selected_logprobs(head, hidden, input_ids, only, inv_t, amp)


def _selected_logprobs(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    only: torch.Tensor,
    inv_t: float,
    amp,
) -> torch.Tensor:
    """log p of input_ids[:, 1:] from `hidden` [N, T, H], projected only where `only` [N, T-1] is set."""
    sel = only.bool()  # [N, T-1]
    with amp:
        logits = _at_least_fp32(head(hidden[:, :-1][sel])) * inv_t  # [M, V], M = selected positions
    picked = logits.gather(-1, input_ids[:, 1:][sel].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(
        logits, dim=-1
    )  # [M]
    out = torch.zeros(sel.shape, dtype=picked.dtype, device=picked.device)
    return out.masked_scatter(sel, picked)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16 (autocast) -> fp32 for the softmax; a float64 model (exactness tests) stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _amp(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


class SharedPrefixes:
    """The prompts of one optimizer step's sequences, each forwarded once.

    The G rollouts of a problem (and its golden) start with the same rendered prompt: ~110 of the
    ~290 tokens of an embedded-default trajectory. Its keys/values do not depend on what follows,
    so forwarding it G times per step is waste. Each distinct prompt (less its last token, whose
    logits predict the first sampled token and so stay with the sequence) is forwarded once, and
    every micro-batch continues from copies of its keys/values. The copies come from detached
    leaves: each micro-batch's backward leaves the gradient w.r.t. the keys/values there, and
    `backward()` sends their sum through the prompt's forward once, after the last micro-batch.
    The parameters' gradients are those of full forwards (up to summation order).
    """

    def __init__(self, trajs: list[Trajectory], pad_id: int) -> None:
        self._rows: dict[tuple[int, ...], int] = {}
        for t in trajs:
            self._rows.setdefault(self._key(t), len(self._rows))
        keys = list(self._rows)
        K, L = len(keys), max(len(k) for k in keys)
        self.ids = torch.full((K, L), pad_id, dtype=torch.long)  # [K, L] right padded
        self.mask = torch.zeros((K, L), dtype=torch.long)
        for r, k in enumerate(keys):
            self.ids[r, : len(k)] = torch.tensor(k)
            self.mask[r, : len(k)] = 1
        self._out: list[torch.Tensor] = []  # per layer keys, values [K, heads, L, head_dim], with graph
        self._leaves: list[torch.Tensor] = []  # the same, detached (fp32) for the micro-batches

    @staticmethod
    def applies(trajs: list[Trajectory], model: torch.nn.Module) -> bool:
        """Every sequence has a prompt of >= 2 tokens and the model's logits are a plain projection."""
        return (
            all(t.prompt_len >= 2 for t in trajs)
            and model.get_output_embeddings() is not None
            and not getattr(model.config, "final_logit_softcapping", None)
        )

    @staticmethod
    def _key(t: Trajectory) -> tuple[int, ...]:
        return tuple(t.token_ids[: t.prompt_len - 1])

    def row(self, t: Trajectory) -> int:
        return self._rows[self._key(t)]

    def offset(self, t: Trajectory) -> int:
        return t.prompt_len - 1

    def forward(self, model: torch.nn.Module, bf16: bool) -> None:
        """Forward the prompts (with grad when grad mode is on) and keep their keys/values."""
        device = next(model.parameters()).device
        ids, mask = self.ids.to(device), self.mask.to(device)
        pos = torch.arange(ids.shape[1], device=device).expand_as(ids)
        with _amp(device, bf16):
            out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        cache = getattr(out, cache_kw(model.base_model))
        self._out = [x for layer in cache.layers for x in (layer.keys, layer.values)]
        grad = torch.is_grad_enabled()
        self._leaves = [_at_least_fp32(x.detach()).requires_grad_(grad) for x in self._out]

    def logprobs(
        self, model: torch.nn.Module, b: PackedBatch, bf16: bool, temperature: float
    ) -> torch.Tensor:
        """token_logprobs for a batch packed against these prefixes: [N, T-1] in suffix coordinates."""
        device = b.input_ids.device
        rows, T = b.prefix_rows.to(device), b.input_ids.shape[1]
        dtype = self._out[0].dtype
        kv = [x[rows].to(dtype) for x in self._leaves]  # [N, heads, L, head_dim] each; grads reach leaves
        past = growing_cache(len(kv) // 2, T, list(zip(kv[0::2], kv[1::2])))
        attn = torch.cat([self.mask.to(device)[rows], b.attention_mask], dim=1)  # [N, L+T]
        pos = b.offsets.to(device)[:, None] + torch.arange(T, device=device)  # [N, T]
        amp = _amp(device, bf16)
        with amp:
            out = model.base_model(
                input_ids=b.input_ids,
                attention_mask=attn,
                position_ids=pos,
                use_cache=True,
                **{cache_kw(model.base_model): past},
            )
        inv_t = 1.0 / temperature if temperature > 0 else 1.0
        return _selected_logprobs(
            model.get_output_embeddings(), out.last_hidden_state, b.input_ids, b.loss_mask, inv_t, amp
        )

    def backward(self) -> None:
        """Send the micro-batches' accumulated key/value gradients through the prompts' forward."""
        pairs = [
            (o, leaf.grad.to(o.dtype)) for o, leaf in zip(self._out, self._leaves) if leaf.grad is not None
        ]
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        self._out, self._leaves = [], []  # free the graph


def batch_logprobs(model: torch.nn.Module, b: PackedBatch, bf16: bool, temperature: float) -> torch.Tensor:
    """log-probs of a packed batch at its loss_mask positions (0 elsewhere): [N, T-1]."""
    if b.prefix is not None:
        return b.prefix.logprobs(model, b, bf16, temperature)
    return token_logprobs(
        model, b.input_ids, b.attention_mask, bf16, only=b.loss_mask, temperature=temperature
    )


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
