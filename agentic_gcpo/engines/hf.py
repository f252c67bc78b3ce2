"""In-process transformers engine: batched sampling with a KV cache, per-row stops, logprobs.

Why not `model.generate`: we need, per row, the exact sampled ids, the sampler's logprob of each,
stop strings checked on the row's own new text, and rows that finish early dropped from the batch
(a long tail of one rambling rollout should not keep 31 finished rows decoding pad tokens; they go
once a quarter of the batch has finished, so one KV copy serves several, `compact_at`). The
loop below does exactly that, and four things that make multi-turn rollouts cheap on a CPU:

- Continuous batching: requests come in through `submit` and leave through `poll` one decode
  step at a time. A conversation's next turn (its tool result just came back) joins the running
  batch instead of waiting for every other row's turn to end, so the batch stays large and no
  turn waits on the slowest row of another.
- The G rollouts of a problem share one prefill (identical prompts are prefilled once).
- A finished row's KV cache is kept (`PrefixCache`); the next turn of that conversation, which
  arrives as prompt + sampled ids + tool-turn ids, prefills only the new tokens.
- The vocabulary projection runs only where logits are used: the last position of a prefill.

Precision: `dtype="auto"` picks float32 or bfloat16 from the hardware (agentic_gcpo.precision).
In bf16 the engine samples from its own bf16 copy of the weights, refreshed at `update_weights`,
rather than autocasting the fp32 master weights at every decode step. In float32 it shares the
trainer's module, so after an optimizer step the weights are already current and
`update_weights(None)` only drops the now-stale prefix cache.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from agentic_gcpo.engines.base import Completion, Engine, SamplingParams
from agentic_gcpo.engines.kv_cache import (
    CacheEntry,
    PrefixCache,
    cache_kw,
    growing_cache,
    merge_caches,
    trim_left,
)
from agentic_gcpo.precision import resolve

logger = logging.getLogger(__name__)


@dataclass
class _Row:
    """One request: its prompt, sampler state and what it has sampled so far."""

    key: Hashable
    prompt: list[int]
    params: SamplingParams
    rng: random.Random  # seeded per request: a row's tokens do not depend on its batch company
    toks: list[int] = field(default_factory=list)
    lps: list[float] = field(default_factory=list)


@dataclass
class _Batch:
    """The rows decoding together, left padded to one KV length n."""

    rows: list[_Row | None]  # None: a finished row whose slot is not compacted away yet
    past: Any  # DynamicCache of GrowingLayers, per layer [B, H, n, D]
    attn: torch.Tensor  # [B, n] 1 where the row has a real token
    next_pos: torch.Tensor  # [B] position id of each row's next token
    logits: torch.Tensor  # [B, V] fp32, each row's next-token distribution (not yet sampled)

    @property
    def live(self) -> int:
        return sum(r is not None for r in self.rows)

    def compact(self) -> None:
        """Drop finished rows' slots from every tensor and the KV cache (one copy of the cache)."""
        keep = [i for i, r in enumerate(self.rows) if r is not None]
        if len(keep) == len(self.rows):
            return
        idx = torch.tensor(keep, device=self.attn.device)
        self.attn, self.next_pos, self.logits = self.attn[idx], self.next_pos[idx], self.logits[idx]
        # Columns that only finished rows used (left padding of all that remain) are cut first,
        # as views, so the row selection below copies less.
        lead = int(self.attn.any(0).int().argmax())
        if lead:
            trim_left(self.past, lead)
            self.attn = self.attn[:, lead:]
        self.past.batch_select_indices(idx)
        self.rows = [self.rows[i] for i in keep]

    @staticmethod
    def merge(a: _Batch, b: _Batch, room: int) -> _Batch:
        past, pad_a, pad_b = merge_caches(a.past, b.past, room)
        n = a.attn.shape[1] + pad_a
        attn = a.attn.new_zeros((len(a.rows) + len(b.rows), n))
        attn[: len(a.rows), pad_a:], attn[len(a.rows) :, pad_b:] = a.attn, b.attn
        return _Batch(
            a.rows + b.rows,
            past,
            attn,
            torch.cat([a.next_pos, b.next_pos]),
            torch.cat([a.logits, b.logits]),
        )


class HFEngine(Engine):
    continuous = True  # a turn submitted mid-decode joins the running batch (see `poll`)

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        dtype: str = "auto",
        max_batch_size: int = 32,
        prefix_cache_mb: int = 2048,
        admit_every: int = 8,
        separate_weights: bool = False,
        compact_at: float = 0.25,
    ) -> None:
        super().__init__()
        self.model = model  # the trainer's module (fp32 master weights when training)
        self.tokenizer = tokenizer
        device = next(model.parameters()).device
        self.precision = resolve(dtype, device)
        # separate_weights: sample from a copy even in the trainer's dtype, so the learner can step
        # while this engine generates (rollout.off_policy_steps: 1); refreshed at update_weights.
        self.sampler = self._sampling_module(model, self.precision.torch_dtype, separate_weights)
        self.max_batch_size = max_batch_size
        self.weight_version = 0
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.cache = PrefixCache(prefix_cache_mb * 2**20)
        self._cache_kw = cache_kw(self.sampler.base_model)  # _forward calls the base model
        # Continuous batching state: requests not yet admitted, the batch being decoded,
        # completions that `generate` collected on behalf of someone else's `poll`.
        self._waiting: list[_Row] = []
        self._run: _Batch | None = None
        self._ready: list[tuple[Hashable, Completion]] = []
        self._since_admit = 0  # decode steps since the last admission
        self._give_back_train = False  # poll switched the (shared) module to eval: restore when idle
        self._calls = 0
        # Admitting copies the running batch's KV cache into a wider buffer, so requests that
        # arrive mid-decode wait up to this many steps and are admitted together.
        self.admit_every = admit_every
        # A finished row keeps its slot (decoding a masked pad) until this share of the batch has
        # finished: removing a row copies every other row's KV cache, so rows that finish a few steps
        # apart are removed in one copy instead of one each. 0 removes every finished row at once.
        self.compact_at = compact_at

    @staticmethod
    def _sampling_module(model: Any, dtype: torch.dtype, separate: bool = False) -> Any:
        if next(model.parameters()).dtype == dtype and not separate:
            return model
        # Parameters only: buffers such as RoPE's inv_freq stay fp32, as the model computes them.
        sampler = copy.deepcopy(model).eval()
        for p in sampler.parameters():
            p.requires_grad_(False)
            p.data = p.data.to(dtype)
        return sampler

    def update_weights(self, state_dict: dict[str, Any] | None = None) -> None:
        if state_dict is not None:
            self.model.load_state_dict(state_dict)
        if self.sampler is not self.model:
            with torch.no_grad():  # same module structure, so parameters() line up (tied ones once)
                for dst, src in zip(self.sampler.parameters(), self.model.parameters()):
                    dst.copy_(src)
        self.cache.clear()  # keys/values computed by the old weights are wrong for the new ones
        self.weight_version += 1

    def close(self) -> None:
        self.cache.clear()

    # --- requests in, completions out ------------------------------------------------------------
    def submit(self, key: Hashable, prompt: list[int], params: SamplingParams) -> None:
        if not prompt:
            raise ValueError(f"request {key!r} has an empty prompt; an engine needs at least one token")
        seed = params.seed if params.seed is not None else random.getrandbits(31)
        self._waiting.append(_Row(key, list(prompt), params, random.Random(seed)))

    def outstanding(self) -> int:
        return len(self._waiting) + len(self._ready) + (self._run.live if self._run else 0)

    def cancel_all(self) -> None:
        """Forget every submitted request (an interrupted rollout must not leak into the next one)."""
        self._waiting.clear()
        self._ready.clear()
        self._run = None
        if self._give_back_train:
            self.sampler.train()
            self._give_back_train = False

    def poll(self, wait_s: float = 0.05) -> list[tuple[Hashable, Completion]]:
        """One decode step of the running batch, after admitting waiting requests when due."""
        done, self._ready = self._ready, []
        if not self._waiting and self._run is None:
            return done
        # The trainer may share this module in train mode: eval for as long as requests are out,
        # given back once none is (switching every step walks every submodule twice: ~6 ms a step).
        if self.sampler.training:
            self.sampler.eval()
            self._give_back_train = True
        try:
            with torch.no_grad():
                due = self._run is None or self._since_admit >= self.admit_every
                if self._waiting and due and (self._run.live if self._run else 0) < self.max_batch_size:
                    self._admit()
                return done + self._decode_step()
        except BaseException:  # Ctrl-C mid-step leaves the batch half-updated: drop it whole
            self.cancel_all()
            raise
        finally:
            if self._give_back_train and (self._run is None and not self._waiting):
                self.sampler.train()
                self._give_back_train = False

    def generate(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Completion]:
        if len(prompts) != len(params):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty; an engine needs at least one token")
        self._calls += 1
        tag = ("generate", self._calls)
        # Similar lengths admitted together waste less padding; results go back in input order.
        for i in sorted(range(len(prompts)), key=lambda i: len(prompts[i])):
            self.submit((tag, i), prompts[i], params[i])
        out: list[Completion | None] = [None] * len(prompts)
        left, others = len(prompts), []
        while left:
            for key, c in self.poll():
                if isinstance(key, tuple) and len(key) == 2 and key[0] == tag:
                    out[key[1]], left = c, left - 1
                else:  # a request someone submitted before this call: theirs at their next poll
                    others.append((key, c))
        self._ready += others
        return out  # type: ignore[return-value]

    def _admit(self) -> None:
        """Prefill waiting requests (up to the free batch slots) and add them to the running batch."""
        device = next(self.sampler.parameters()).device
        if self._run is not None:
            self._run.compact()  # the merge below copies the cache anyway; finished slots go first
        running = self._run.rows if self._run else []
        free = self.max_batch_size - len(running)
        take, self._waiting = self._waiting[:free], self._waiting[free:]
        # The G rollouts of a problem start from the same prompt: prefill each distinct prompt once
        # and copy its KV cache, which saves (G-1)/G of the prefill on the first turn.
        uniq: dict[tuple[int, ...], int] = {}
        row_src = [uniq.setdefault(tuple(r.prompt), len(uniq)) for r in take]  # row -> distinct prompt
        # room: the longest budget still to decode, so the buffer rarely reallocates
        room = max(r.params.max_new_tokens - len(r.toks) for r in running + take)
        past, logits, attn, next_pos = self._prefill([list(k) for k in uniq], device, room)
        if len(uniq) < len(take):
            expand = torch.tensor(row_src, device=device)
            past.batch_select_indices(expand)
            logits, attn, next_pos = logits[expand], attn[expand], next_pos[expand]  # [B, ...]
        new = _Batch(take, past, attn, next_pos, logits)
        self._run = new if self._run is None else _Batch.merge(self._run, new, room)
        self._since_admit = 0

    def _decode_step(self) -> list[tuple[Hashable, Completion]]:
        """Sample one token for every running row; retire finished rows; feed the others' tokens."""
        run = self._run
        assert run is not None
        device = run.logits.device
        live = [i for i, r in enumerate(run.rows) if r is not None]
        rows: list[_Row] = [run.rows[i] for i in live]  # type: ignore[misc]
        logits = run.logits if len(live) == len(run.rows) else run.logits[live]  # [live, V]
        new_tok, new_lp = sample_batch(logits, [r.params for r in rows], [r.rng for r in rows])
        finished: list[tuple[Hashable, Completion]] = []
        feed = [self.pad_id] * len(run.rows)  # a finished slot reads a pad it cannot attend to
        for i, row, tok, lp in zip(live, rows, new_tok, new_lp):
            p = row.params
            row.toks.append(tok)
            row.lps.append(lp)
            if p.on_token is not None:
                p.on_token(tok)
            fin = None
            if tok in p.stop_token_ids:
                fin = Completion(row.toks, row.lps, "stop", tok)
            elif p.stop:
                tail = self.tokenizer.decode(row.toks[-max(len(s) for s in p.stop) :])
                hit = next((s for s in p.stop if s in tail), None)
                if hit is not None:
                    fin = Completion(row.toks, row.lps, "stop", hit)
            if fin is None and len(row.toks) >= p.max_new_tokens:
                fin = Completion(row.toks, row.lps, "length", None)
            if fin is not None:
                finished.append((row.key, fin))
                # the cache holds every token fed so far: the prompt and all sampled but the last
                self._keep(run.past, i, run.attn[i], row.prompt + row.toks[:-1])
                run.rows[i] = None
            else:
                feed[i] = tok
        n_live = run.live
        if not n_live:
            self._run = None
            return finished
        if len(run.rows) - n_live > self.compact_at * len(run.rows):
            feed = [t for t, r in zip(feed, run.rows) if r is not None]
            run.compact()
        step_tok = torch.tensor(feed, dtype=torch.long, device=device)
        col = torch.tensor([[r is not None] for r in run.rows], dtype=run.attn.dtype, device=device)
        run.attn = torch.cat([run.attn, col], 1)  # [B, n + 1]: finished slots do not see their pad
        run.past, run.logits = self._forward(
            step_tok.view(-1, 1), run.attn, run.next_pos.view(-1, 1), run.past
        )
        run.next_pos = run.next_pos + 1
        self._since_admit += 1
        return finished

    def _prefill(
        self, distinct: list[list[int]], device: torch.device, room: int
    ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the model over what the cache does not hold of each distinct prompt.

        Layout of row u (P = its cached length, S = its new tokens; both left padded):
            [pad .. pad | cached K/V (P) | pad .. pad | new tokens (S)]
             <------- Pmax ------------>  <--------- Smax ----------->
        Padding in the middle is harmless: the 2-D attention mask hides it and position ids are
        given explicitly. Returns (past, last logits [U, V], attention mask, next position [U]).
        """
        hits = [self.cache.take(p) for p in distinct]
        P = [len(h.ids) if h else 0 for h in hits]
        suffix = [p[n:] for p, n in zip(distinct, P)]
        U, Pmax, Smax = len(distinct), max(P), max(len(s) for s in suffix)
        ids = torch.full((U, Smax), self.pad_id, dtype=torch.long, device=device)
        attn = torch.zeros((U, Pmax + Smax), dtype=torch.long, device=device)
        pos = torch.zeros((U, Smax), dtype=torch.long, device=device)
        for u, (s, n) in enumerate(zip(suffix, P)):
            ids[u, Smax - len(s) :] = torch.tensor(s, device=device)
            attn[u, Pmax - n : Pmax] = 1
            attn[u, Pmax + Smax - len(s) :] = 1
            pos[u, Smax - len(s) :] = torch.arange(n, n + len(s), device=device)
        layers = []
        if Pmax:
            ref = next(h for h in hits if h is not None).kv
            for li, (k0, _) in enumerate(ref):
                H, D = k0.shape[0], k0.shape[-1]
                k = torch.zeros((U, H, Pmax, D), dtype=k0.dtype, device=device)
                v = torch.zeros_like(k)
                for u, h in enumerate(hits):
                    if h is not None:
                        k[u, :, Pmax - P[u] :] = h.kv[li][0]
                        v[u, :, Pmax - P[u] :] = h.kv[li][1]
                layers.append((k, v))
        n_layers = self.sampler.config.get_text_config().num_hidden_layers
        # reserve the new tokens too when the buffer starts with cached K/V: no reallocation this turn
        past = growing_cache(n_layers, room + Smax if Pmax else room, layers)
        # logits of the last position only: the projection of every other prompt position is never used
        past, logits = self._forward(ids, attn, pos, past)
        next_pos = torch.tensor([n + len(s) for s, n in zip(suffix, P)], device=device)
        return past, logits, attn, next_pos

    def _forward(
        self, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, past: Any
    ) -> tuple[Any, torch.Tensor]:
        """One model call -> (KV cache, last-position logits [n, V] fp32).

        The vocabulary projection runs on the last position only, made contiguous first: a prefill's
        last hidden states are a strided view of [n, S, H], and oneDNN's bf16 matmul on a strided input
        took ~100 ms per row (3 s for a 32-row admission) against ~1 ms contiguous."""
        key = self._cache_kw
        out = self.sampler.base_model(
            input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **{key: past}
        )
        last = out.last_hidden_state[:, -1, :].contiguous()  # [n, H]
        return getattr(out, key), self.sampler.get_output_embeddings()(last).float()

    def _keep(self, past: Any, row: int, attn_row: torch.Tensor, ids: list[int]) -> None:
        """Store one finished row's keys/values (only its unpadded positions) for its next turn."""
        valid = attn_row.bool()
        kv = [
            (layer.keys[row][:, valid].clone(), layer.values[row][:, valid].clone()) for layer in past.layers
        ]
        if kv and kv[0][0].shape[1] == len(ids):  # a mismatch would be a bug; never cache wrong K/V
            self.cache.put(CacheEntry(tuple(ids), kv))
        else:
            logger.warning(
                "prefix cache: %d cached positions for %d ids; not kept", kv[0][0].shape[1], len(ids)
            )


def sample_batch(
    logits: torch.Tensor, params: list[SamplingParams], rngs: list[random.Random]
) -> tuple[list[int], list[float]]:
    """Sample one token per row of logits [B, V]; return the tokens and their sampler logprobs.

    Vectorised inverse-CDF sampling: each row draws one uniform from its own seeded RNG, so a
    row's tokens depend on its seed alone, not on which other rows share the batch. The logprob is
    taken under the tempered softmax before top-p filtering (the convention SGLang uses); with
    top_p = 1 it is exactly the distribution sampled from, which is what importance ratios need.

    Each full-vocabulary pass costs ~1-3 ms for 32 rows on a 2-core CPU, a sizeable share of a
    decode step, so after the temperature scaling the sampling path makes three (softmax, cumulative
    sum, gather): no argmax unless a row is greedy, and the logprob as log of the sampled token's
    probability (for a token that can be drawn at all, that is log_softmax's value to float32
    rounding).
    """
    B = logits.shape[0]
    if B == 0:
        return [], []
    temps = [p.temperature if p.temperature > 0 else 1.0 for p in params]
    scaled = (
        logits
        if all(t == 1.0 for t in temps)
        else logits / torch.tensor(temps, device=logits.device)[:, None]
    )
    greedy = [p.temperature <= 0 for p in params]
    if all(greedy):
        tok = torch.argmax(logits, dim=-1)  # [B]
        lp = torch.log_softmax(scaled, dim=-1).gather(-1, tok.unsqueeze(-1)).squeeze(-1)
        return tok.tolist(), lp.tolist()
    # [B, V] fp32: the cumulative sum's rounding is ~1e-5 of mass at most
    probs = torch.softmax(scaled, dim=-1)
    kept, order = probs, None
    top_p = [p.top_p for p in params]
    if any(t < 1.0 for t in top_p):  # keep the smallest set of tokens whose mass reaches top_p
        kept, order = torch.sort(probs, dim=-1, descending=True)
        cut = torch.tensor(top_p, dtype=probs.dtype, device=logits.device)[:, None]
        kept = kept.masked_fill(torch.cumsum(kept, -1) - kept > cut, 0.0)
    cdf = torch.cumsum(kept, dim=-1)  # [B, V]
    u = torch.tensor([r.random() for r in rngs], dtype=cdf.dtype, device=logits.device)
    tok = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    tok = tok.clamp(max=cdf.shape[-1] - 1)
    if order is not None:
        tok = order.gather(-1, tok.unsqueeze(-1)).squeeze(-1)
    if any(greedy):
        tok = torch.where(torch.tensor(greedy, device=logits.device), torch.argmax(logits, dim=-1), tok)
    lp = torch.log(probs.gather(-1, tok.unsqueeze(-1)).squeeze(-1))  # [B]
    return tok.tolist(), lp.tolist()
