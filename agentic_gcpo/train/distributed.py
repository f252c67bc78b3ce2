"""The learner across processes: rank/world, the rollout split, all-reduces, rank-0-only side effects.

Started by a launcher that sets torch.distributed's environment (`accelerate launch`, `torchrun`):
`WORLD_SIZE` > 1 makes `setup()` join the process group (gloo on CPU, nccl on CUDA); without it the
trainer runs as one process exactly as before and nothing here touches torch.distributed.

Design (docs/scale.md): **data parallel, each rank rolls out its share.** Every rank holds a whole
copy of the policy and its own in-process engine sampling from that copy. All ranks read the same
seeded stream of prompt batches and each takes its contiguous slice of `train.prompts_per_step`
problems (so a group never straddles ranks); group ids are the ones one process would give. A rank
samples with its own seed (`sampling_seed`). The update then equals one process with the whole batch:

- advantages are computed from every rank's rewards/group ids/golden flags (gathered), so
  batch-level statistics such as GPG's alpha = B / (B - M) are global;
- the loss denominators (token-mean's policy-token count, seq-mean's sequence count) of every
  optimizer step are all-reduced before any division;
- each rank backpropagates its share of that globally normalised loss, and the gradients are
  summed (not averaged) over ranks once per optimizer step, before clipping; identical gradients
  on identical weights keep every rank's copy and AdamW state identical.

Why not torch's DistributedDataParallel wrapper: the update forwards submodules directly (each
prompt once per step through the decoder, the LM head only at policy positions) and sends the
prompts' gradient back in a second backward after the micro-batches; DDP's reducer only sees
forwards through its wrapper and expects one backward per forward. One explicit all-reduce per
optimizer step is what DDP with `no_sync` on the accumulation micro-batches does anyway; what it
gives up is overlapping that all-reduce with the last backward.

Why not one rank driving a rollout engine: with the in-process engine every rank already has the
weights on its device, so rolling out locally needs no weight transfer and scales sampling with the
ranks. One rank driving a remote engine (vLLM/SGLang) for all is not wired up: under a launcher each
rank builds the engine its config names, a remote one included.

FSDP (accelerate's `distributed_type: FSDP` with `fsdp_version: 2`): the same split and the same
global normalisation, with parameters, gradients and optimizer state sharded by FSDP2 (`shard_model`)
and the engine sampling from an unsharded copy (`sampling_copy`, refreshed with `full_weights`).

Dynamic sampling (DAPO's fill-the-batch, GPG's beta_th) decides per rank on its share of the batch
(`local_prompts`), and every rank samples another round while any rank still needs one, so all ranks
read the same number of prompt batches; trimming to a full batch is per rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

# A rank waits at the next collective while rank 0 alone evaluates or writes a checkpoint.
TIMEOUT_VAR, DEFAULT_TIMEOUT_MIN = "AGENTIC_GCPO_DIST_TIMEOUT_MIN", 60
_BUCKET = 1 << 25  # elements per gradient all-reduce (128 MiB of fp32): bounds the extra memory


@dataclass(frozen=True)
class Dist:
    """This process's place in the run; `Dist()` is the single-process run (every method a no-op)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str | None = None  # where a launched rank puts its model; None: leave it where it loads
    fsdp: bool = False  # shard parameters, gradients and optimizer state (FSDP2), see shard_model
    reshard_after_forward: bool = True

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """The rank that writes metrics, samples, checkpoints and runs evaluations."""
        return self.rank == 0

    # --- the rollout split ------------------------------------------------------------------
    def local_prompts(self, prompts_per_step: int) -> int:
        """This rank's problems per step; groups are never split, so the count must divide."""
        if prompts_per_step % self.world:
            raise ValueError(
                f"train.prompts_per_step={prompts_per_step} does not divide among {self.world} processes: "
                "each process rolls out whole groups of its own share of the problems. Set "
                f"train.prompts_per_step to a multiple of {self.world} (e.g. "
                f"{(prompts_per_step // self.world + 1) * self.world}) or launch with a number of "
                "processes that divides it."
            )
        return prompts_per_step // self.world

    def shard(self, problems: list[Any]) -> list[Any]:
        """This rank's contiguous slice of one global batch of problems."""
        k = self.local_prompts(len(problems))
        return problems[self.rank * k : (self.rank + 1) * k]

    def sampling_seed(self, seed: int) -> int:
        """This rank's rollout seed for the step's (run seed, step, round) seed: unchanged in one
        process, distinct per rank otherwise (the ranks sample different rollouts)."""
        return seed if not self.active else seed * 1_000_003 + self.rank

    # --- collectives (no-ops in one process) --------------------------------------------------
    def _dev(self) -> torch.device:
        return torch.device(self.device) if self.device else torch.device("cpu")

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64, so token counts stay exact)."""
        if not self.active:
            return list(values)
        import torch.distributed as td

        t = torch.tensor(values, dtype=torch.float64, device=self._dev())
        td.all_reduce(t, op=td.ReduceOp.SUM)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any rank."""
        return self.sum([float(bool(flag))])[0] > 0

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank (pickled; for small records)."""
        if not self.active:
            return [obj]
        import torch.distributed as td

        out: list[Any] = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as td

        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def sync_module(self, model: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (as DDP does at construction), so the
        copies start equal even where an initialisation drew from a per-process RNG."""
        if not self.active:
            return
        import torch.distributed as td

        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                td.broadcast(t.data, src=0)

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every trainable parameter's gradient over ranks, in place (under FSDP the backward
        has already reduce-scattered them: nothing to do).

        A parameter gets a gradient when any rank has one (a rank with no sequence in this step has
        none, yet must take part and must not leave the others' sum without its zeros); one that no
        rank touched keeps `grad is None`, so AdamW skips it exactly as in one process."""
        if not self.active or self.fsdp:
            return
        import torch.distributed as td

        params = [p for p in params if p.requires_grad]
        if not params:
            return
        dev = params[0].device
        has = torch.tensor([float(p.grad is not None) for p in params], device=dev)
        td.all_reduce(has, op=td.ReduceOp.MAX)
        live = [p for p, h in zip(params, has.tolist()) if h > 0]
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        bucket: list[torch.nn.Parameter] = []
        size = 0
        for p in live:
            bucket.append(p)
            size += p.numel()
            if size >= _BUCKET:
                _reduce_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            _reduce_bucket(bucket)

    # --- FSDP ------------------------------------------------------------------------------------
    def sampling_copy(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the in-process engine samples from: the trained one itself, or under FSDP an
        unsharded copy (refreshed with `full_weights` at each sync), because sampling through a
        sharded module would all-gather every layer at every decode step, in lockstep with the
        other ranks, and sequences finish at different steps on different ranks."""
        if not self.fsdp:
            return model
        import copy

        copy_ = copy.deepcopy(model)
        for p in copy_.parameters():
            p.requires_grad_(False)
        return copy_

    def shard_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Under FSDP: FSDP2 (`fully_shard`) on every transformer block (the classes the model lists
        in `_no_split_modules`) and on the root (embeddings, final norm, tied LM head). FSDP averages
        the gradients over ranks; `backward` scales each rank's loss by the world size, so the
        result is their sum (each rank's loss is already its share of the globally normalised
        loss). Not `set_gradient_divide_factor(1)`: that needs PREMUL_SUM, which gloo lacks, and
        it must be set on every unit. Otherwise `model` unchanged."""
        if not self.fsdp:
            return model
        from torch.distributed.fsdp import fully_shard

        if any(type(m).__module__.startswith("peft.") for m in model.modules()):
            raise ValueError(
                "model.lora.enabled=true under FSDP is not supported: LoRA's trainable state is small, "
                "launch it data parallel (configs/accelerate/gpu_node_ddp.yaml) instead"
            )
        blocks = set(getattr(model, "_no_split_modules", None) or [])
        units = [m for m in model.modules() if type(m).__name__ in blocks]
        if not units:
            raise ValueError(
                f"FSDP needs the model's transformer block class to shard by; {type(model).__name__} "
                "lists none in _no_split_modules"
            )
        for m in units + [model]:
            fully_shard(m, reshard_after_forward=self.reshard_after_forward)
        return model

    def backward(self, loss: torch.Tensor) -> None:
        """`loss.backward()`, under FSDP scaled so its gradient average over ranks is their sum."""
        (loss * self.world if self.fsdp else loss).backward()

    def full_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """What the engine's `update_weights` gets at sync: None when it shares the trained module;
        under FSDP the whole state dict, all-gathered (every rank takes part)."""
        if not self.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))

    def optimizer_state(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[str, dict]:
        """(layout, state) of `opt` for a checkpoint. Under FSDP each rank holds a shard of the AdamW
        state: it is gathered whole, keyed by parameter name (layout 'full'; every rank takes part,
        rank 0 gets it and the others an empty dict), so it loads at any world size. Otherwise
        torch's own `opt.state_dict()` (layout 'torch', keyed by parameter index)."""
        if not self.fsdp:
            return "torch", opt.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return "full", get_optimizer_state_dict(model, opt, options=opts)

    def load_optimizer_state(
        self, model: torch.nn.Module, opt: torch.optim.Optimizer, layout: str, state: dict
    ) -> None:
        """Put a checkpoint's optimizer state (see `optimizer_state`) into `opt`: a 'full' one is
        resharded for this run's ranks (or loaded whole without FSDP)."""
        if layout == "torch":
            if self.fsdp:
                raise ValueError(
                    "this checkpoint's optimizer state was saved without FSDP (indexed by parameter "
                    "order), and FSDP shards it by name: resume it with the launch it was trained with"
                )
            opt.load_state_dict(state)
            return
        if layout != "full":
            raise ValueError(
                f"unknown optimizer state layout {layout!r} (this version writes 'torch' or 'full')"
            )
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(
            model, opt, optim_state_dict=state, options=StateDictOptions(full_state_dict=True)
        )

    def load_full_weights(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Under FSDP: shard a whole state dict (every rank holds it) into the sharded `model`."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))

    def idle_pass(self, model: torch.nn.Module, backward: bool) -> None:
        """Under FSDP every forward/backward is a collective (all-gather, reduce-scatter), so a rank
        with fewer micro-batches in an optimizer step than another runs this many passes over one
        pad token with a zero loss: the same collectives, no gradient."""
        dev = next(model.parameters()).device
        ids = torch.zeros((1, 2), dtype=torch.long, device=dev)
        logits = model(input_ids=ids, use_cache=False).logits
        if backward:
            (logits.float().sum() * 0.0).backward()

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as td

            td.barrier()

    def close(self) -> None:
        """Leave the process group (the launcher's processes then exit cleanly)."""
        if self.active:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()


def _reduce_bucket(params: list[torch.nn.Parameter]) -> None:
    """One all-reduce for the gradients of `params` (flattened per dtype group of the bucket)."""
    import torch.distributed as td

    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        td.all_reduce(flat, op=td.ReduceOp.SUM)
        k = 0
        for p in group:
            n = p.numel()
            p.grad.copy_(flat[k : k + n].view_as(p.grad))
            k += n


SINGLE = Dist()


def launched() -> bool:
    """Started by a launcher with more than one process (`accelerate launch`, `torchrun`)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup() -> Dist:
    """This process's `Dist`: joins the process group when launched with WORLD_SIZE > 1.

    accelerate's FSDP mode (`distributed_type: FSDP`, `fsdp_version: 2`) turns on `fsdp`; FSDP1,
    parameter offload and DeepSpeed are refused with what to use instead (docs/scale.md)."""
    if _env_true("ACCELERATE_USE_DEEPSPEED"):
        raise ValueError(
            "accelerate launched this run with DeepSpeed, which the agentic-gcpo learner does not "
            "implement; use a DDP or FSDP2 config from configs/accelerate/ (docs/scale.md)"
        )
    fsdp = _env_true("ACCELERATE_USE_FSDP")
    if fsdp and os.environ.get("FSDP_VERSION", "1") != "2":
        raise ValueError(
            f"accelerate launched this run with FSDP version {os.environ.get('FSDP_VERSION', '1')}; the "
            "learner shards with FSDP2 only: set `fsdp_version: 2` in the accelerate config "
            "(configs/accelerate/gpu_node_fsdp2.yaml)"
        )
    if fsdp and _env_true("FSDP_OFFLOAD_PARAMS"):
        raise ValueError("fsdp_offload_params: true is not supported by the learner; set it to false")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    # Under a launcher (torchrun's LOCAL_RANK; accelerate's one-process launcher sets only its own
    # variables) a GPU is used when there is one; a plain `agentic-gcpo train` stays where it was.
    under_launcher = "LOCAL_RANK" in os.environ or os.environ.get("ACCELERATE_USE_CPU", "").lower() == "false"
    on_gpu = under_launcher and torch.cuda.is_available()
    device = f"cuda:{local_rank}" if on_gpu else None
    if not launched():
        return Dist(device=device)  # FSDP over one process would shard nothing: plain training
    import torch.distributed as td

    if on_gpu:
        torch.cuda.set_device(local_rank)  # nccl and *_object collectives use the current device
    if not td.is_initialized():
        td.init_process_group("nccl" if on_gpu else "gloo", timeout=_timeout())
    return Dist(
        rank=td.get_rank(),
        world=td.get_world_size(),
        local_rank=local_rank,
        device=device,
        fsdp=fsdp,
        reshard_after_forward=os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() != "false",
    )


def _timeout() -> timedelta:
    raw = os.environ.get(TIMEOUT_VAR, str(DEFAULT_TIMEOUT_MIN))
    try:
        minutes = float(raw)
    except ValueError:
        minutes = -1.0
    if minutes <= 0:
        raise ValueError(f"{TIMEOUT_VAR}={raw!r}: give the collective timeout in minutes, a positive number")
    return timedelta(minutes=minutes)


def _env_true(var: str) -> bool:
    return os.environ.get(var, "").lower() in ("1", "true", "yes")


def as_float(t: torch.Tensor | float) -> float:
    """A scalar that may be an FSDP DTensor (clip_grad_norm_ over sharded gradients) as a float."""
    full = getattr(t, "full_tensor", None)
    return float(full() if full is not None else t)


class NullLogger:
    """What ranks other than 0 log to: nothing (rank 0 writes the run's metrics and samples)."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        return None

    def samples(self, step: int, trajs: list[Any], tokenizer: Any) -> None:
        return None

    def close(self, exit_code: int = 0) -> None:
        return None
