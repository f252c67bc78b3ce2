"""LoRA through peft: wrap the policy, train the adapters, give engines the merged weights.

`wrap` returns peft's `PeftModel`; the trainer keeps it for saving (the adapter, in peft's format,
which `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), ckpt)` loads) and
trains and samples through `trained_module(model)`: the transformers model inside, whose linear
layers peft replaced in place by LoRA layers computing W x + (alpha / r) B A x. That module is a
plain `LlamaForCausalLM` (say) to every caller, so the update's direct submodule calls
(`model.base_model`, the LM head at policy positions) and the in-process engine work unchanged.

Sampling equals the merged model: the engine puts the module in eval mode (LoRA dropout off), and
then each adapted layer computes W x + s B (A x) = (W + s B A) x, the merged layer, up to float
rounding order. The engine's bf16 sampling copy is a deep copy of that same module, so it holds the
adapters too and its parameter-by-parameter refresh lines up. Remote engines (vLLM/SGLang), which
load plain checkpoints, get `merged_state_dict`: the base model's names and shapes with each
adapted weight replaced by W + s B A, computed without touching the training module.

peft is imported only when LoRA is enabled (`pip install -e ".[scale]"`).
"""

from __future__ import annotations

from typing import Any

import torch

from agentic_gcpo.config import LoRAConfig


def _peft() -> Any:
    try:
        import peft
    except ImportError as e:
        raise ValueError(
            'model.lora.enabled=true needs peft: pip install -c <(echo torch==$(python -c "import torch; '
            'print(torch.__version__.split(\'+\')[0])")) -e ".[scale]"'
        ) from e
    return peft


def wrap(model: torch.nn.Module, lc: LoRAConfig, gradient_checkpointing: bool = False) -> Any:
    """`model` with LoRA adapters on `lc.target_modules`; only the adapters require grad."""
    peft = _peft()
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in lc.target_modules if m not in present]
    if missing:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        raise ValueError(
            f"model.lora.target_modules names {missing}, which this model does not have; its linear "
            f"layers are: {', '.join(linear)}"
        )
    if gradient_checkpointing:
        # The frozen embeddings give the first checkpointed block an input without grad; reentrant
        # checkpointing would then drop the adapters' gradients.
        model.enable_input_require_grads()
    config = peft.LoraConfig(
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=list(lc.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, config)


def is_peft(model: Any) -> bool:
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")


def trained_module(model: Any) -> Any:
    """The module to train and sample: a peft model's inner transformers model (adapters included),
    any other model itself."""
    return model.get_base_model() if is_peft(model) else model


def _lora_layers(module: torch.nn.Module) -> dict[str, Any]:
    """Adapted layers by module name; peft's LoRA layers keep the original as `base_layer`."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in module.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def merged_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The weights a remote engine loads at weight sync: the base model's parameter names (as
    `AutoModelForCausalLM.from_pretrained(base)` has them) with every adapted weight merged,
    W + (alpha / r) B A. `model`: the peft model or the module inside it (what the trainer hands
    an engine); a model without adapters gives its own state dict, so an engine can call this for
    any model. New tensors for the adapted weights; the others are the live ones (detached)."""
    inner = trained_module(model)
    if not any(type(m).__module__.startswith("peft.") for m in inner.modules()):
        return {k: v.detach() for k, v in inner.state_dict().items()}
    layers = _lora_layers(inner)
    out: dict[str, torch.Tensor] = {}
    for key, value in inner.state_dict().items():
        if ".lora_" in key:
            continue  # lora_A / lora_B / lora_dropout: folded into the merged weight below
        owner, _, leaf = key.rpartition(".")
        if owner.endswith(".base_layer"):
            name = owner[: -len(".base_layer")]
            layer = layers.get(name)
            if layer is not None and leaf == "weight":
                value = value.detach().clone()
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        value += layer.get_delta_weight(adapter).to(value.dtype)
            out[f"{name}.{leaf}"] = value.detach()
        else:
            out[key] = value.detach()
    return out
