"""Options of the rollout engines: the `engine:` section of the config (agentic_gcpo/config.py).

Kept beside the engines they configure; `Config.engine` is an `EngineConfig`. Every section forbids
unknown keys, like the rest of the config tree.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):  # config.py's section base, restated: config.py imports this module
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class VLLMConfig(_Section):
    """Options of `engine.backend: vllm` (agentic_gcpo/engines/vllm.py; install: bash .ci/setup-vllm.sh)."""

    mode: Literal["inprocess", "server"] = Field(
        "inprocess",
        description="'inprocess': a vllm.LLM inside the trainer's process (co-located, weights synced from "
        "memory); 'server': an OpenAI-compatible vLLM server, attached by `url` or launched from this section "
        "(weights synced through a safetensors folder).",
    )
    url: str | None = Field(
        None,
        description="Server mode: attach to this running server (e.g. http://host:8000); None: launch one.",
    )
    python: str | None = Field(
        None,
        description="Server mode, launched: the Python interpreter that has vllm (e.g. ../venv-vllm/bin/python "
        "from .ci/setup-vllm.sh), so the trainer's own environment needs no vllm; None: this one.",
    )
    weights_dir: str | None = Field(
        None,
        description="Server mode: folder where weight updates are written as safetensors for the server to "
        "load; it must be readable by the server at the same path (None: a temporary folder, same machine).",
    )
    host: str = Field("127.0.0.1", description="Server mode, launched: interface the server listens on.")
    port: int = Field(0, ge=0, le=65535, description="Server mode, launched: port (0: a free one).")
    gpu_memory_utilization: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="GPU only: fraction of GPU memory vLLM may take for weights + KV cache (leave room for "
        "the trainer when co-located).",
    )
    cpu_kvcache_gb: float = Field(
        2.0,
        gt=0.0,
        description="CPU only: KV cache size in GiB (vLLM's kv_cache_memory_bytes; RAM is shared with the "
        "trainer). A VLLM_CPU_KVCACHE_SPACE in the environment overrides it.",
    )
    cpu_threads_bind: str = Field(
        "nobind",
        description="CPU only, launched server: VLLM_CPU_OMP_THREADS_BIND. 'nobind' leaves the threads to "
        "the OS; 'auto' binds them per NUMA node and reserves a core (on 2 cores: vLLM gets one); or a list "
        "such as '0-3'. In-process vLLM shares the trainer's threads and binds nothing.",
    )
    enforce_eager: bool | None = Field(
        None,
        description="Skip torch.compile / CUDA graphs. None: True on CPU (compiling took 4-7 min there and "
        "bought nothing), False on GPU.",
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Longest prompt + completion in tokens (None: the model's context length)."
    )
    max_num_seqs: int | None = Field(
        None, ge=1, description="Sequences decoded together (None: engine.max_batch_size)."
    )
    startup_timeout_s: float = Field(
        900.0, gt=0, description="Server mode: how long to wait for the server to answer /health."
    )
    request_timeout_s: float = Field(
        1800.0, gt=0, description="Server mode: limit for one HTTP request (one completion)."
    )
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        description="More vLLM engine arguments, by their Python names (e.g. {swap_space: 1}): keyword "
        "arguments of vllm.LLM in-process, `--flag value` on the server's command line when launched.",
    )


class SGLangConfig(_Section):
    """Options of `engine.backend: sglang` (agentic_gcpo/engines/sglang.py; docs/engines.md). SGLang's
    server needs a CUDA GPU: it imports the CUDA-only sgl_kernel at start-up and PyPI has no CPU build."""

    urls: list[str] = Field(
        default_factory=list,
        description="Attach: running SGLang servers (http://host:port). Requests are spread round-robin; "
        "weights are pushed to each. Empty: `launch` must be true.",
    )
    router_url: str | None = Field(
        None,
        description="Attach: an sglang-router in front of `urls`; /generate goes there (its cache-aware "
        "routing), weight updates still go to each of `urls`.",
    )
    launch: bool = Field(
        False, description="Launch the server(s) from this section (ignored when `urls` is set)."
    )
    model_path: str | None = Field(
        None,
        description="Launch: the model the server loads. None: the trainer's model, saved with its tokenizer "
        "to `weights_dir` first (so server and trainer start from the same weights).",
    )
    python: str | None = Field(
        None, description="Launch: the Python interpreter that has sglang installed (None: this one)."
    )
    launch_command: list[str] | None = Field(
        None,
        description="Launch: the program before the flags, instead of [python, -m, sglang.launch_server] "
        "(e.g. a wrapper script); it gets --model-path, --host, --port, --tp-size, --dtype and the rest.",
    )
    host: str = Field("127.0.0.1", description="Launch: interface the server listens on.")
    port: int = Field(0, ge=0, le=65535, description="Launch: port of server i is port + i (0: free ports).")
    num_servers: int = Field(
        1,
        ge=1,
        description="Launch: independent servers (data parallel), server i on GPUs i*tp_size...; "
        "requests are spread round-robin.",
    )
    tp_size: int = Field(1, ge=1, description="Launch: tensor-parallel GPUs per server (--tp-size).")
    mem_fraction_static: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Launch: GPU memory fraction for weights + KV cache (--mem-fraction-static); leave room "
        "for the trainer when co-located, e.g. 0.5. None: SGLang decides.",
    )
    extra_args: list[str] = Field(
        default_factory=list,
        description="Launch: more server flags, verbatim (e.g. ['--skip-server-warmup', '--enable-fp32-lm-head']).",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Launch: extra environment variables.")
    startup_timeout_s: float = Field(
        900.0, gt=0, description="Launch: how long a server may take to load and answer /health."
    )
    attach_timeout_s: float = Field(
        60.0, gt=0, description="Attach: how long to wait for /health of the URLs."
    )
    request_timeout_s: float = Field(
        600.0, gt=0, description="Limit for one HTTP request (one completion, or one weight update)."
    )
    max_retries: int = Field(
        3, ge=0, description="Retries after a connection error or 5xx answer (not after 4xx: those are bugs)."
    )
    retry_backoff_s: float = Field(
        0.5, gt=0, description="First retry delay; it doubles with each retry (capped at 10 s)."
    )
    max_concurrent_requests: int = Field(
        256, ge=1, description="Completion requests in flight at once (the server batches them continuously)."
    )
    weight_sync: Literal["disk", "tensor", "none"] = Field(
        "disk",
        description="After each optimizer step: 'disk' saves safetensors to `weights_dir` and calls "
        "/update_weights_from_disk; 'tensor' sends CUDA-IPC handles (/update_weights_from_tensor; the server "
        "must share the trainer's GPU and sglang must import in the trainer; untested); 'none' never syncs.",
    )
    weights_dir: str | None = Field(
        None,
        description="Where weights are saved for the server to load; must be readable by the server (a shared "
        "folder when it runs elsewhere). None: a temporary folder, removed at close. Server logs go here too.",
    )


class EngineConfig(_Section):
    backend: Literal["hf", "vllm", "sglang"] = Field(
        "hf",
        description="Rollout engine. 'hf' runs transformers in-process (CPU or GPU); 'vllm' runs vLLM "
        "in-process or as a server (engine.vllm; needs vLLM installed: bash .ci/setup-vllm.sh); 'sglang' "
        "launches or attaches to SGLang servers (engine.sglang; CUDA GPUs only).",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Sampling dtype. 'auto': bfloat16 on GPUs and CPUs with native bf16 (AVX512-BF16/AMX, "
        "confirmed by a short probe), float32 elsewhere (bf16 is 3-7x slower on AVX2-only CPUs). In bf16 "
        "the engine samples from a bf16 copy of the weights refreshed at each weight sync.",
    )
    max_batch_size: int = Field(32, ge=1, description="Sequences decoded together in one engine call.")
    prefix_cache_mb: int = Field(
        2048,
        ge=0,
        description="Memory for keeping finished turns' KV caches, so the next turn of a conversation "
        "prefills only the tool turn's tokens (0: off).",
    )
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="Options of backend 'vllm'.")
    sglang: SGLangConfig = Field(default_factory=SGLangConfig, description="Options of backend 'sglang'.")
