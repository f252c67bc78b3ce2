"""SGLang's native /generate protocol: our request body, and its answer read back into a Completion.

What the request asks of SGLang, and why (field names checked against SGLang's io_struct.py and
sampling_params.py, docs in /work/shared/reference/engines.md):
- `input_ids`, never text: the ledger needs the exact ids; the server never re-tokenizes.
- every sampling field explicitly: by default SGLang takes missing ones from the model's
  generation_config (e.g. top_k=20), which would silently change the distribution sampled from.
- `no_stop_trim` and `skip_special_tokens: false`: the ids always include a matched stop token or
  the tokens of a matched stop string; these keep the returned text consistent with them.
- `return_logprob` with `logprob_start_len: -1`: `meta_info.output_token_logprobs` is one
  `[logprob, token_id, text|null]` per sampled token, log_softmax(logits / T) before top-p (the
  convention of our HF engine); greedy (T=0) gives the untempered logprob, as ours does.
Differences from the HF engine: SGLang also stops at the model's own EOS ids (generation_config)
even when they are not in `stop_token_ids`; `seed` is sent as `sampling_seed`, which SGLang
honours only with --enable-deterministic-inference; `on_token` streaming is not offered.
"""

from __future__ import annotations

from typing import Any

from agentic_gcpo.engines.base import Completion, SamplingParams
from agentic_gcpo.engines.remote import RemoteError


def sglang_request(prompt: list[int], p: SamplingParams, rid: str, seed: bool = True) -> dict[str, Any]:
    """The /generate body for one completion of `prompt` (`seed`: send p.seed as sampling_seed)."""
    sp: dict[str, Any] = {
        "max_new_tokens": p.max_new_tokens,
        "temperature": p.temperature,  # below 1e-6 SGLang samples greedily
        "top_p": p.top_p,
        "top_k": -1,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "skip_special_tokens": False,
        "no_stop_trim": True,
        "n": 1,
    }
    if p.stop:  # only when used: a server started with --skip-tokenizer-init rejects stop strings
        sp["stop"] = list(p.stop)
    if p.stop_token_ids:
        sp["stop_token_ids"] = list(p.stop_token_ids)
    if p.seed is not None and seed:
        sp["sampling_seed"] = p.seed
    return {
        "rid": rid,
        "input_ids": list(prompt),
        "sampling_params": sp,
        "return_logprob": True,
        "logprob_start_len": -1,  # logprobs of the sampled tokens only, not the prompt's
        "top_logprobs_num": 0,
        "stream": False,
    }


def parse_completion(resp: Any, what: str) -> Completion:
    """One /generate answer -> Completion; anything malformed or aborted raises RemoteError."""
    if isinstance(resp, list) and len(resp) == 1:
        resp = resp[0]
    meta = resp.get("meta_info") if isinstance(resp, dict) else None
    if not isinstance(meta, dict):
        raise RemoteError(
            f"{what}: the answer has no meta_info; not an SGLang /generate answer: {str(resp)[:300]}"
        )
    fr = meta.get("finish_reason")
    kind = fr.get("type") if isinstance(fr, dict) else None
    if kind == "abort":
        raise RemoteError(
            f"{what} was aborted by the server: {fr.get('message')} (status {fr.get('status_code')}). "
            "A prompt longer than the server's context, or a server shutting down, does this."
        )
    entries = meta.get("output_token_logprobs")
    if kind not in ("stop", "length") or not isinstance(entries, list):
        raise RemoteError(
            f"{what}: unexpected answer (finish_reason {fr!r}, output_token_logprobs "
            f"{type(entries).__name__}); was return_logprob dropped by a proxy?"
        )
    ids = [int(e[1]) for e in entries]
    lps = [e[0] for e in entries]
    if "output_ids" in resp and list(resp["output_ids"]) != ids:
        raise RemoteError(
            f"{what}: output_ids ({len(resp['output_ids'])}) and output_token_logprobs ({len(ids)}) disagree"
        )
    if not ids or any(lp is None for lp in lps):
        raise RemoteError(f"{what}: {len(ids)} sampled tokens, some without a logprob; cannot train on it")
    matched = fr.get("matched") if kind == "stop" else None
    return Completion(ids, [float(x) for x in lps], kind, matched)
