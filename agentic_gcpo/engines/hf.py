"""In-process transformers engine: batched sampling with a KV cache, per-row stops, logprobs.

Why not `model.generate`: we need, per row, the exact sampled ids, the sampler's logprob of each,
stop strings checked on the row's own new text, and rows that finish early dropped from the batch
(a long tail of one rambling rollout should not keep 31 finished rows decoding pad tokens). The
loop below is ~100 lines and does exactly that.

The engine shares the trainer's module when they live in one process (CPU default): after an
optimizer step the weights are already current, so `update_weights(None)` only bumps a version.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from agentic_gcpo.engines.base import Completion, Engine, SamplingParams


class HFEngine(Engine):
    def __init__(self, model: Any, tokenizer: Any, dtype: str = "bfloat16", max_batch_size: int = 32) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.autocast = dtype == "bfloat16"
        self.max_batch_size = max_batch_size
        self.weight_version = 0
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def update_weights(self, state_dict: dict[str, Any] | None = None) -> None:
        if state_dict is not None:
            self.model.load_state_dict(state_dict)
        self.weight_version += 1

    def generate(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Completion]:
        if len(prompts) != len(params):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty; an engine needs at least one token")
        # Similar lengths together waste less padding; results go back in input order.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Completion | None] = [None] * len(prompts)
        was_training = self.model.training
        self.model.eval()
        try:  # the trainer shares this module: give it back in train mode even if generation fails
            for k in range(0, len(order), self.max_batch_size):
                chunk = order[k : k + self.max_batch_size]
                batch = self._generate_batch([prompts[i] for i in chunk], [params[i] for i in chunk])
                for i, c in zip(chunk, batch):
                    out[i] = c
        finally:
            self.model.train(was_training)
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def _generate_batch(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Completion]:
        model = self.model
        device = next(model.parameters()).device
        B = len(prompts)
        # The G rollouts of a problem start from the same prompt: prefill each distinct prompt once
        # and copy its KV cache, which saves (G-1)/G of the prefill on the first turn.
        uniq: dict[tuple[int, ...], int] = {}
        row_src = [uniq.setdefault(tuple(p), len(uniq)) for p in prompts]  # row -> distinct prompt
        distinct = [list(k) for k in uniq]
        U, T = len(distinct), max(len(p) for p in prompts)
        ids = torch.full((U, T), self.pad_id, dtype=torch.long, device=device)  # left padded
        attn = torch.zeros((U, T), dtype=torch.long, device=device)
        for i, p in enumerate(distinct):
            ids[i, T - len(p) :] = torch.tensor(p, device=device)
            attn[i, T - len(p) :] = 1
        pos = (attn.cumsum(-1) - 1).clamp(min=0)  # [U, T] positions ignore the left padding

        gens = []
        for p in params:
            g = torch.Generator(device="cpu")
            g.manual_seed(p.seed if p.seed is not None else torch.randint(0, 2**31 - 1, (1,)).item())
            gens.append(g)
        max_stop_chars = max([len(s) for p in params for s in p.stop] + [1])

        toks: list[list[int]] = [[] for _ in range(B)]
        lps: list[list[float]] = [[] for _ in range(B)]
        done: list[Completion | None] = [None] * B
        alive = list(range(B))  # original row index of each row still in the batch
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if self.autocast and device.type == "cpu" else None
        ctx = amp if amp is not None else contextlib.nullcontext()

        with ctx:
            out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1, :].float()  # [U, V]
        next_pos = pos[:, -1] + 1  # [U]
        if U < B:
            expand = torch.tensor(row_src, device=device)
            past.batch_select_indices(expand)
            logits, attn, next_pos = logits[expand], attn[expand], next_pos[expand]  # [B, ...]
        while alive:
            new_tok = torch.empty(len(alive), dtype=torch.long)
            keep: list[int] = []
            for r, i in enumerate(alive):
                p = params[i]
                tok, lp = _sample(logits[r], p.temperature, p.top_p, gens[i])
                new_tok[r] = tok
                toks[i].append(tok)
                lps[i].append(lp)
                fin = None
                if tok in p.stop_token_ids:
                    fin = Completion(toks[i], lps[i], "stop", tok)
                elif p.stop:
                    tail = self.tokenizer.decode(toks[i][-max_stop_chars:])
                    hit = next((s for s in p.stop if s in tail), None)
                    if hit is not None:
                        fin = Completion(toks[i], lps[i], "stop", hit)
                if fin is None and len(toks[i]) >= p.max_new_tokens:
                    fin = Completion(toks[i], lps[i], "length", None)
                if fin is not None:
                    done[i] = fin
                else:
                    keep.append(r)
            if not keep:
                break
            if len(keep) < len(alive):  # drop finished rows from every tensor and the KV cache
                idx = torch.tensor(keep, device=device)
                past.batch_select_indices(idx)
                attn, next_pos, new_tok = attn[idx], next_pos[idx], new_tok[idx]
                alive = [alive[r] for r in keep]
            attn = torch.cat([attn, torch.ones((len(alive), 1), dtype=attn.dtype, device=device)], dim=1)
            with ctx:
                out = model(
                    input_ids=new_tok.view(-1, 1).to(device),
                    attention_mask=attn,
                    position_ids=next_pos.view(-1, 1),
                    past_key_values=past,
                    use_cache=True,
                )
            past, logits = out.past_key_values, out.logits[:, -1, :].float()
            next_pos = next_pos + 1
        return done  # type: ignore[return-value]


def _sample(
    logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator
) -> tuple[int, float]:
    """Sample one token from logits [V]; return it and its log-prob under the tempered softmax.

    The logprob is taken before top-p filtering (the convention SGLang uses); with top_p = 1 it is
    exactly the distribution sampled from, which is what importance ratios need.
    """
    if temperature <= 0:
        logp = torch.log_softmax(logits, dim=-1)
        tok = int(torch.argmax(logits))
        return tok, float(logp[tok])
    logp = torch.log_softmax(logits / temperature, dim=-1)
    probs = logp.exp()
    if top_p < 1.0:
        sorted_p, sorted_i = torch.sort(probs, descending=True)
        cut = torch.cumsum(sorted_p, 0) - sorted_p > top_p  # keep the smallest set reaching top_p
        sorted_p[cut] = 0.0
        probs = torch.zeros_like(probs).scatter(0, sorted_i, sorted_p)
    tok = int(torch.multinomial(probs, 1, generator=gen))
    return tok, float(logp[tok])
