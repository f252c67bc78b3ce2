"""SGLang rollout engine: token ids to SGLang servers' native /generate, token ids + logprobs back.

One HTTP request per completion, many in flight at once (a thread pool): the server batches them
continuously and its radix cache reuses the prefix of a conversation's previous turn, so `submit`
sends a turn the moment it is ready and `poll` hands back whichever turns have finished.

Servers are attached by URL (`engine.sglang.urls`, optionally behind an sglang-router) or launched
from the config (`python -m sglang.launch_server ...` under remote.ServerProcess, so they die with
the trainer). After each optimizer step the trainer's weights go to every server through
/update_weights_from_disk (a safetensors folder the server can read), then /flush_cache, because
the radix cache holds keys and values computed by the old weights.

The wire protocol (what each request asks of SGLang, and why) is in sglang_api.py.
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

import torch

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
from agentic_gcpo.engines.sglang_api import parse_completion, sglang_request
from agentic_gcpo.precision import Precision

logger = logging.getLogger(__name__)

NO_SGLANG = (
    "engine.sglang.launch needs the sglang package in {python}, which does not have it. SGLang's "
    "server needs a CUDA GPU (it imports the CUDA-only sgl_kernel at start-up; PyPI has no CPU build). "
    "On a GPU machine: `pip install 'sglang[all]'` there, or set engine.sglang.python to an interpreter "
    "that has it; or start a server yourself and set engine.sglang.urls. On a CPU-only machine use "
    "engine.backend: hf or vllm."
)


def server_dtype(dtype: str) -> Precision:
    """SGLang runs on CUDA GPUs, so 'auto' is bfloat16 (passed explicitly: SGLang's own 'auto' turns a
    float32 checkpoint, which is what the trainer saves, into float16)."""
    if dtype != "auto":
        return Precision(dtype, f"{dtype} as configured (SGLang server)")
    return Precision("bfloat16", "auto: SGLang server on a CUDA GPU")


class SGLangEngine(Engine):
    continuous = True  # a request submitted mid-decode joins the server's running batch

    def __init__(
        self, model: Any, tokenizer: Any, options: Any = None, dtype: str = "auto", **_hf_only: Any
    ) -> None:
        from agentic_gcpo.engines.options import SGLangConfig

        super().__init__()
        o = options if isinstance(options, SGLangConfig) else SGLangConfig.model_validate(options or {})
        for u in [*o.urls, *([o.router_url] if o.router_url else [])]:
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"engine.sglang: '{u}' is not an http(s) URL; write e.g. http://host:30000")
        self.o, self.model, self.tokenizer = o, model, tokenizer
        self.weight_version = 0
        self.procs: dict[str, ServerProcess] = {}  # launched servers by URL
        self._inflight: dict[Hashable, Future] = {}
        self._rids: dict[Hashable, tuple[str, str]] = {}  # submitted key -> (server URL, SGLang rid)
        self._rid = itertools.count()
        self._rr = itertools.count()
        self._seed_ok = True  # False once a server refused the sampling_seed field
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(o.max_concurrent_requests, thread_name_prefix="sglang")
        self._made: list[Path] = []  # weight folders we wrote (removed at close; logs stay)
        self._dir: Path | None = None  # weights_dir, or a temporary folder; made when first needed
        self._weights: Path | None = None  # the folder of the weights the servers hold (ours)
        self.precision: Precision | None = None  # None: set by the attached server
        try:
            if o.urls:
                self.urls = [u.rstrip("/") for u in o.urls]
                for u in self.urls:
                    wait_ready(f"{u}/health", o.attach_timeout_s, what="SGLang server")
            elif o.launch:
                self.precision = server_dtype(dtype)
                self._launch()
            else:
                raise ValueError(
                    "engine.backend 'sglang' needs engine.sglang.urls (servers to attach to) or "
                    "engine.sglang.launch: true (start them from engine.sglang); neither is set"
                )
        except BaseException:
            self.close()
            raise
        self.gen_urls = [o.router_url.rstrip("/")] if o.router_url else self.urls
        logger.info("sglang engine: generating through %s", ", ".join(self.gen_urls))

    # --- servers -------------------------------------------------------------------------------
    def workdir(self) -> Path:
        """Where weights are saved for the servers and their logs go (engine.sglang.weights_dir)."""
        if self._dir is None:
            self._dir = Path(self.o.weights_dir or tempfile.mkdtemp(prefix="agentic-gcpo-sglang-"))
            self._dir.mkdir(parents=True, exist_ok=True)
        return self._dir

    def _launch(self) -> None:
        o = self.o
        python = o.python or sys.executable
        if o.launch_command is None:
            probe = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('sglang') else 3)"
            if python == sys.executable:
                found = importlib.util.find_spec("sglang") is not None
            else:
                found = (
                    subprocess.run([python, "-c", probe], capture_output=True, timeout=120).returncode == 0
                )
            if not found:
                raise RuntimeError(NO_SGLANG.format(python=python))
        program = o.launch_command or [python, "-m", "sglang.launch_server"]
        model_path = o.model_path or str(self._save("initial", None, with_tokenizer=True))
        self.urls = []
        for i in range(o.num_servers):
            port = o.port + i if o.port else free_port(o.host)
            cmd = [*program, "--model-path", model_path, "--host", o.host, "--port", str(port)]
            cmd += ["--tp-size", str(o.tp_size), "--dtype", self.precision.dtype]  # type: ignore[union-attr]
            if o.mem_fraction_static is not None:
                cmd += ["--mem-fraction-static", str(o.mem_fraction_static)]
            if o.num_servers > 1:
                cmd += ["--base-gpu-id", str(i * o.tp_size)]
            url = f"http://{o.host}:{port}"
            log = self.workdir() / f"sglang-server-{i}.log"
            self.procs[url] = ServerProcess(cmd + o.extra_args, log, env=o.env, name=f"SGLang server {i}")
            self.urls.append(url)
            logger.info("sglang engine: launched server %d at %s (log: %s)", i, url, log)
        for url, proc in self.procs.items():
            waited = wait_ready(f"{url}/health", o.startup_timeout_s, proc, what=proc.name)
            logger.info("sglang engine: %s ready after %.1f s", url, waited)

    def _check(self, url: str, what: str) -> Any:
        """Before a retry: fail at once if the server at `url` is one we launched and it has exited."""
        proc = self.procs.get(url)
        return (lambda: proc.check(f"during {what}")) if proc is not None else None

    def _call(self, url: str, path: str, body: Any, what: str, method: str = "POST") -> Any:
        o = self.o
        return request(
            method,
            url + path,
            body,
            timeout_s=o.request_timeout_s,
            max_retries=o.max_retries,
            backoff_s=o.retry_backoff_s,
            check=self._check(url, what),
            what=what,
        )

    # --- generation ----------------------------------------------------------------------------
    def _route(self) -> tuple[str, str]:
        """(server URL, request id) for the next request: round-robin over the servers."""
        with self._lock:
            return self.gen_urls[next(self._rr) % len(self.gen_urls)], f"agcpo-{next(self._rid)}"

    def _one(self, prompt: list[int], p: SamplingParams, label: str, url: str, rid: str) -> Completion:
        what = f"generate request {label} (rid {rid}, {len(prompt)} prompt tokens) to {url}"
        try:
            try:
                resp = self._call(url, "/generate", sglang_request(prompt, p, rid, self._seed_ok), what)
            except RequestRejected as e:
                if "sampling_seed" not in e.server_message:
                    raise
                # an SGLang older than the sampling_seed field: it could not have honoured it anyway
                # (seeds take effect only with --enable-deterministic-inference), so stop sending it
                if self._seed_ok:
                    logger.warning("sglang engine: the server does not know sampling_seed; not sent")
                self._seed_ok = False
                resp = self._call(url, "/generate", sglang_request(prompt, p, rid, False), what)
        except RequestRejected as e:
            raise RequestRejected(
                f"{e} - SGLang refused the request; check the prompt length against the server's "
                "context length and the sampling parameters",
                e.url,
                e.status,
                e.server_message,
            ) from None
        return parse_completion(resp, what)

    @staticmethod
    def _validate(prompt: list[int], p: SamplingParams, label: str) -> None:
        if not prompt:
            raise ValueError(f"prompt {label} is empty; an engine needs at least one token")
        if not all(isinstance(t, int) for t in prompt):
            bad = next(t for t in prompt if not isinstance(t, int))
            raise ValueError(f"prompt {label} holds {bad!r}; prompts are lists of token ids (ints)")
        if p.max_new_tokens < 1:  # SGLang answers max_new_tokens=0 with a phantom logprob entry
            raise ValueError(f"prompt {label}: max_new_tokens is {p.max_new_tokens}; it must be >= 1")

    def generate(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Completion]:
        if len(prompts) != len(params):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        for i, (pr, p) in enumerate(zip(prompts, params)):
            self._validate(pr, p, str(i))
        futs = [
            self._pool.submit(self._one, pr, p, f"#{i}", *self._route())
            for i, (pr, p) in enumerate(zip(prompts, params))
        ]
        try:
            return [f.result() for f in futs]
        except BaseException:
            for f in futs:  # the first failure ends the batch; queued requests are not sent
                f.cancel()
            raise

    def submit(self, key: Hashable, prompt: list[int], params: SamplingParams) -> None:
        if key in self._inflight:
            raise ValueError(f"request key {key!r} is already in flight; keys must be unique until polled")
        self._validate(prompt, params, repr(key))
        url, rid = self._route()
        self._inflight[key] = self._pool.submit(self._one, prompt, params, repr(key), url, rid)
        self._rids[key] = (url, rid)

    def poll(self, wait_s: float = 0.05) -> list[tuple[Hashable, Completion]]:
        # a failed request raises here, naming its key and URL
        return poll_futures(self._inflight, wait_s, on_done=lambda key: self._rids.pop(key, None))

    def outstanding(self) -> int:
        return len(self._inflight)

    def cancel_all(self) -> None:
        """Forget every outstanding request: queued ones are never sent, ones already on a server are
        aborted there (best effort: /abort_request, one short try), and no answer comes back."""
        running = [self._rids[k] for k, f in self._inflight.items() if not f.cancel() and not f.done()]
        self._inflight.clear()
        self._rids.clear()
        for url, rid in running:
            try:
                request("POST", f"{url}/abort_request", {"rid": rid}, timeout_s=2.0, max_retries=0)
            except RemoteError as e:  # the server is gone or too old: its answer is dropped anyway
                logger.info("sglang engine: could not abort %s on %s: %s", rid, url, e)

    # --- weights -------------------------------------------------------------------------------
    def _save(self, name: str, state_dict: dict[str, Any] | None, with_tokenizer: bool = False) -> Path:
        """The trainer's model (or `state_dict` in its structure) as a transformers folder: config.json +
        safetensors, in the server's dtype (bf16 halves what the server reads)."""
        path = self.workdir() / name
        sd = state_dict if state_dict is not None else self.model.state_dict()
        if self.precision is not None and self.precision.bf16:
            cast: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}  # tied weights stay one tensor
            for v in sd.values():
                if v.is_floating_point() and (v.data_ptr(), tuple(v.shape)) not in cast:
                    cast[(v.data_ptr(), tuple(v.shape))] = v.detach().to(torch.bfloat16)
            sd = {k: cast.get((v.data_ptr(), tuple(v.shape)), v) for k, v in sd.items()}
        self._made.append(path)
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "Writing model shards" bar at every step is noise
        try:
            self.model.save_pretrained(path, state_dict=sd)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        if with_tokenizer:
            self.tokenizer.save_pretrained(path)
        return path

    def update_weights(self, state_dict: dict[str, Any] | None = None) -> None:
        """Push the trainer's weights (or `state_dict`) to every server, then flush their radix caches."""
        if self._inflight:
            raise RuntimeError(
                f"update_weights with {len(self._inflight)} requests in flight; poll them to completion "
                "(or cancel_all) first: their tokens would mix two policies, and SGLang cannot flush its "
                "cache while requests run"
            )
        mode = self.o.weight_sync
        self.weight_version += 1
        if mode == "none":
            return
        if mode == "tensor":
            self._update_from_tensors(state_dict)
        else:
            self._update_from_disk(state_dict)
        for url in self.urls:  # update_weights_* flush too, but say it: stale K/V would be reused silently
            self._call(url, "/flush_cache", {}, f"cache flush after the weight update on {url}")

    def _update_from_disk(self, state_dict: dict[str, Any] | None) -> None:
        path = self._save(f"weights-{self.weight_version}", state_dict)
        body = {"model_path": str(path), "weight_version": str(self.weight_version), "flush_cache": True}
        for url in self.urls:
            what = f"weight update from {path} on {url}"
            try:
                resp = self._call(url, "/update_weights_from_disk", body, what)
            except RequestRejected as e:
                raise RequestRejected(
                    f"{e} - the server could not load the weights; they must be readable by the server's "
                    "machine (set engine.sglang.weights_dir to a folder it shares)",
                    e.url,
                    e.status,
                    e.server_message,
                ) from None
            if not (isinstance(resp, dict) and resp.get("success")):
                raise RemoteError(f"{what} failed: {resp}", url)
        old, self._weights = self._weights, path
        if old is not None and old != path:
            shutil.rmtree(old, ignore_errors=True)

    def _update_from_tensors(self, state_dict: dict[str, Any] | None) -> None:
        """Co-located servers: CUDA-IPC handles of the trainer's tensors, no copy through disk.

        SGLang's payload is its MultiprocessingSerializer (a ForkingPickler dump, base64) of
        [(name, tensor)], one copy per TP rank; the tensors must stay alive until the call returns.
        Recent SGLang wraps the call in /begin_weight_update ... /end_weight_update (older builds have
        no such routes: a 404 means "not needed"). Untested here (no GPU); CPU tensors cannot travel
        this way (a separate process cannot open them: the server died of it in our CPU experiment)."""
        try:
            from sglang.srt.utils import MultiprocessingSerializer  # type: ignore[import-not-found]
        except ImportError as e:
            raise RuntimeError(
                f"engine.sglang.weight_sync 'tensor' needs sglang importable in the trainer ({e}); "
                "use weight_sync: disk"
            ) from None
        sd = state_dict if state_dict is not None else self.model.state_dict()
        target = self.precision.torch_dtype if self.precision is not None else None
        named = [
            (k, v.detach().to(target) if target and v.is_floating_point() else v.detach())
            for k, v in sd.items()
        ]
        if any(not t.is_cuda for _, t in named):
            raise RuntimeError(
                "engine.sglang.weight_sync 'tensor' sends CUDA-IPC handles: the model must be on the GPU "
                "the server shares; use weight_sync: disk otherwise"
            )
        payload = MultiprocessingSerializer.serialize(named, output_str=True)
        body = {
            "serialized_named_tensors": [payload] * self.o.tp_size,
            "flush_cache": False,
            "weight_version": str(self.weight_version),
        }
        for url in self.urls:
            try:
                self._call(url, "/begin_weight_update", {}, f"begin_weight_update on {url}")
                session = True
            except RequestRejected as e:
                if e.status != 404:
                    raise
                session = False
            resp = self._call(
                url, "/update_weights_from_tensor", body, f"weight update from tensors on {url}"
            )
            if session:
                self._call(url, "/end_weight_update", {}, f"end_weight_update on {url}")
            if not (isinstance(resp, dict) and resp.get("success")):
                raise RemoteError(f"weight update from tensors on {url} failed: {resp}", url)

    # --- shutdown ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop launched servers (their whole process groups) and remove our weight folders; logs stay."""
        self.cancel_all()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for proc in getattr(self, "procs", {}).values():
            proc.close()
        for path in self._made:
            shutil.rmtree(path, ignore_errors=True)
        self._made, self._weights = [], None
        if self._dir is not None and self.o.weights_dir is None and not any(self._dir.iterdir()):
            self._dir.rmdir()  # our temporary folder, with no logs in it
            self._dir = None
