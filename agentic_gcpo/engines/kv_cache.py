"""KV caches for the in-process engine: a layer that grows in place, and a prefix cache across turns.

`GrowingLayer`: transformers' DynamicLayer appends each decoded token with `torch.cat`, which
copies the layer's whole cache at every step (O(L^2) memory traffic over a turn; it was ~1/3 of a
decode step's time for 32 rows x 600 tokens on CPU). This layer reserves room for the turn's new
tokens up front and writes them in place.

`PrefixCache`: keep the KV cache of finished sequences so the next turn of a conversation skips
its prefill.

A multi-turn rollout calls the engine once per assistant turn with the whole conversation so far:
the previous prompt, the tokens the engine just sampled, and the tool turn's tokens. Without a
cache every turn re-reads the whole prefix (turn 3 of a 1,000-token trajectory prefills ~900
tokens to generate ~150). SGLang (radix cache) and vLLM (prefix caching) keep it server-side;
this is the in-process engine's version, behind the same interface, so the agent loop passes
token ids and never knows.

An entry holds the per-layer keys/values of `ids`, every token the model has *read* (the last
sampled token of a completion was never fed back, so it is not covered). A prompt that starts with
an entry's ids reuses it and prefills only the rest. Entries are taken (not copied) on use: the
continuing sequence stores a longer entry when it finishes. Least recently stored entries go when
the byte budget is exceeded. The cache must be cleared whenever the weights change.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


def cache_kw(module: torch.nn.Module) -> str:
    """The name `module.forward` takes its KV cache by: transformers renamed `past_key_values` to
    `cache` within 5.x (the argument and the output field)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


class GrowingLayer(DynamicLayer):
    """A DynamicLayer over a buffer with spare room: `keys`/`values` are views of its first n slots."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room  # slots reserved beyond what the first update brings (the turn's new tokens)
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._n = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, add = self._n, key_states.shape[-2]
        if self._k is None or n + add > self._k.shape[-2]:  # (re)allocate: once per turn normally
            B, H, _, D = key_states.shape
            k = key_states.new_empty((B, H, n + add + self.room, D))
            v = value_states.new_empty((B, H, n + add + self.room, value_states.shape[-1]))
            if n:
                k[:, :, :n], v[:, :, :n] = self._k[:, :, :n], self._v[:, :, :n]
            self._k, self._v = k, v
        self._k[:, :, n : n + add] = key_states
        self._v[:, :, n : n + add] = value_states
        self._n = n + add
        self.keys, self.values = self._k[:, :, : self._n], self._v[:, :, : self._n]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._n:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[:, :, : self._n], self._v[:, :, : self._n]


def growing_cache(
    num_layers: int, room: int, past: list[tuple[torch.Tensor, torch.Tensor]] | None = None
) -> DynamicCache:
    """A DynamicCache made of GrowingLayers, optionally pre-filled with per-layer (keys, values)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = None
    cache.layers = [GrowingLayer(room) for _ in range(num_layers)]
    for layer, (k, v) in zip(cache.layers, past or []):
        layer.update(k, v)
    return cache


@dataclass
class CacheEntry:
    ids: tuple[int, ...]  # tokens whose keys/values are held
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [heads, len(ids), head_dim]

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv)


class PrefixCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()
        self._next = 0
        self.bytes = 0
        self.hits = self.misses = 0
        self.reused_tokens = 0  # prefill tokens saved, for benchmarks and logs

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, entry: CacheEntry) -> None:
        size = entry.nbytes
        if size > self.max_bytes:
            return
        self._entries[self._next] = entry
        self._next += 1
        self.bytes += size
        while self.bytes > self.max_bytes:  # oldest first
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.nbytes

    def take(self, prompt: list[int]) -> CacheEntry | None:
        """Remove and return the longest entry whose ids are a proper prefix of `prompt`."""
        best_key, best_len = None, 0
        n = len(prompt)
        for key, e in self._entries.items():
            m = len(e.ids)
            if best_len < m < n and prompt[m - 1] == e.ids[-1] and tuple(prompt[:m]) == e.ids:
                best_key, best_len = key, m
        if best_key is None:
            self.misses += 1
            return None
        entry = self._entries.pop(best_key)
        self.bytes -= entry.nbytes
        self.hits += 1
        self.reused_tokens += best_len
        return entry

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0


def merge_caches(a: DynamicCache, b: DynamicCache, room: int) -> tuple[DynamicCache, int, int]:
    """Stack two batches' caches along the batch axis, each right-aligned (left padding), with
    `room` free slots after the longer one. Returns (cache, left pad of a's rows, of b's rows).

    This is how a continuous batch admits new rows: the running rows and the freshly prefilled
    ones rarely have the same length, so the shorter side gets zero keys/values on its left, which
    the caller's attention mask hides. Zeros, not empty memory: a masked position still multiplies
    its value by a zero weight, and 0 * NaN from uninitialised memory would be NaN.
    """
    out = DynamicCache()
    out.layer_class_to_replicate = None
    out.layers = []
    pad_a = pad_b = 0
    for la, lb in zip(a.layers, b.layers):
        ka, va, kb, vb = la.keys, la.values, lb.keys, lb.values  # [B?, H, n?, D]
        na, nb = ka.shape[-2], kb.shape[-2]
        n = max(na, nb)
        pad_a, pad_b = n - na, n - nb
        Ba, Bb = ka.shape[0], kb.shape[0]
        k = ka.new_zeros((Ba + Bb, ka.shape[1], n + room, ka.shape[-1]))
        v = va.new_zeros((Ba + Bb, va.shape[1], n + room, va.shape[-1]))
        k[:Ba, :, pad_a:n], v[:Ba, :, pad_a:n] = ka, va
        k[Ba:, :, pad_b:n], v[Ba:, :, pad_b:n] = kb, vb
        layer = GrowingLayer(room)
        layer.lazy_initialization(k[:, :, :n], v[:, :, :n])
        layer._k, layer._v, layer._n = k, v, n
        layer.keys, layer.values = k[:, :, :n], v[:, :, :n]
        out.layers.append(layer)
    return out, pad_a, pad_b


def trim_left(cache: DynamicCache, cols: int) -> None:
    """Drop the first `cols` positions of every row (padding that no remaining row attends to).
    Views, not copies: the buffer's free room at the end stays usable."""
    if cols <= 0:
        return
    for layer in cache.layers:
        layer._k, layer._v = layer._k[:, :, cols:], layer._v[:, :, cols:]
        layer._n -= cols
        layer.keys, layer.values = layer._k[:, :, : layer._n], layer._v[:, :, : layer._n]
