"""LoRA through peft (train/lora.py, `model.lora.*`): a LoRA run of the tiny model trains 2 steps on
CPU, only its adapters move, its checkpoint loads in plain transformers + peft with the trained
model's logits, the engine samples what the merged model samples, and `merged_state_dict` is that
merged model under the base model's parameter names."""

from __future__ import annotations

import pytest
import torch

from agentic_gcpo.config import ConfigError, load_config
from agentic_gcpo.engines import make_engine
from agentic_gcpo.engines.base import SamplingParams
from agentic_gcpo.models import tiny_model
from agentic_gcpo.train import lora
from agentic_gcpo.train.trainer import Trainer

peft = pytest.importorskip("peft", reason='peft is not installed: pip install -e ".[scale]"')
transformers = pytest.importorskip("transformers")

IDS = torch.tensor([[1, 504, 3823, 28, 253, 1046, 30, 2], [1, 77, 88, 99, 1000, 2001, 3002, 2]])


def _logits(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    base_dir = tmp / "base"
    model, tok = tiny_model(seed=0)
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    cfg = load_config(
        "configs/tiny_cpu.yaml",
        [
            f"model.path={base_dir}",
            "model.lora.enabled=true",
            "model.lora.r=4",
            f"run.output_dir={tmp / 'runs'}",
            "train.steps=2",
            "train.prompts_per_step=2",
            "rollout.group_size=2",
            "rollout.max_turns=1",
            "rollout.max_new_tokens_per_turn=8",
            "train.lr=5e-2",  # adapters start at B = 0: a visible move in two steps
            "train.precision=float32",
            "engine.dtype=float32",
            "sandbox.pool_size=1",
        ],
    )
    tr = Trainer(cfg)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    run = tr.train()
    return tr, before, run, base_dir


def test_only_the_adapters_train(lora_run) -> None:
    tr, before, _, _ = lora_run
    trainable = {n for n, p in tr.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {id(p) for g in tr.opt.param_groups for p in g["params"]} == {
        id(p) for p in tr.model.parameters() if p.requires_grad
    }
    changed = {n for n, p in tr.model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and changed <= trainable, sorted(changed - trainable)[:5]
    # the default targets cover every projection of the block
    names = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_checkpoint_loads_in_plain_transformers_and_peft(lora_run) -> None:
    tr, _, run, base_dir = lora_run
    ckpt = run / "checkpoints" / "final"
    assert (ckpt / "adapter_config.json").is_file() and (ckpt / "adapter_model.safetensors").is_file()
    base = transformers.AutoModelForCausalLM.from_pretrained(str(base_dir))
    loaded = peft.PeftModel.from_pretrained(base, str(ckpt))
    want = _logits(tr.model)
    assert not torch.allclose(want, _logits(tiny_model(seed=0)[0]), atol=1e-4)  # training moved them
    assert torch.allclose(_logits(loaded), want, atol=1e-5, rtol=0)


def test_merged_state_dict_is_the_merged_model(lora_run) -> None:
    tr, _, _, base_dir = lora_run
    sd = lora.merged_state_dict(tr.peft_model)
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(base_dir))
    assert set(sd) == set(plain.state_dict())  # the names a remote engine's plain model has
    inner = lora.merged_state_dict(tr.model)  # the module engines get: the same
    assert inner.keys() == sd.keys() and all(torch.equal(inner[k], sd[k]) for k in sd)
    assert lora.merged_state_dict(plain).keys() == sd.keys()  # no adapters: its own state dict
    plain.load_state_dict(sd, strict=True)
    assert torch.allclose(_logits(plain), _logits(tr.model), atol=1e-5, rtol=0)
    # peft's own merge agrees (merge_and_unload on a copy; the trained module is left alone)
    import copy

    merged = copy.deepcopy(tr.peft_model).merge_and_unload()
    ref = merged.state_dict()
    assert max(float((sd[k] - ref[k]).abs().max()) for k in ref) < 1e-6


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_engine_samples_the_merged_model(lora_run, dtype) -> None:
    """The in-process engine over the trained module (bf16: its sampling copy, which must carry the
    adapters and follow them at update_weights) decodes greedily as the merged model does."""
    tr, _, _, base_dir = lora_run
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(base_dir))
    plain.load_state_dict(lora.merged_state_dict(tr.peft_model))
    params = [SamplingParams(max_new_tokens=12, temperature=0.0)] * 2
    prompts = [IDS[0].tolist()[:5], IDS[1].tolist()[:6]]
    ours = make_engine("hf", tr.model, tr.tok, dtype=dtype)
    ref = make_engine("hf", plain, tr.tok, dtype=dtype)
    with torch.no_grad():  # move the adapters after the engine was built: update_weights must follow
        for n, p in tr.model.named_parameters():
            if ".lora_B." in n:
                p.add_(0.01)
    plain.load_state_dict(lora.merged_state_dict(tr.peft_model))
    x = torch.tensor(prompts[:1])
    with torch.no_grad():
        stale = ours.sampler(x).logits.float()  # the sampling copy before it follows the adapters
    ours.update_weights(None)
    ref.update_weights(None)
    if dtype == "float32":
        got = [c.token_ids for c in ours.generate(prompts, params)]
        want = [c.token_ids for c in ref.generate(prompts, params)]
        assert got == want
        return
    # bf16 rounds W + BA (merged) and W, A, B (adapters kept) differently, so on a random tiny model
    # two greedy paths can part at a near-tie (they did on an AVX2 CPU, not on an AVX512/AMX one).
    # What must hold: the copy follows the update, and lands on the merged model within bf16 noise.
    with torch.no_grad():
        got, want = ours.sampler(x).logits.float(), ref.sampler(x).logits.float()
    moved, off = float((want - stale).abs().max()), float((got - want).abs().max())
    assert off < 0.25 * moved, (off, moved)


def test_lora_config_is_checked(tmp_path) -> None:
    with pytest.raises(ConfigError, match="r"):
        load_config(None, ["model.lora.r=0"])
    model, _ = tiny_model(seed=0)
    cfg = load_config(None, ["model.lora.enabled=true", "model.lora.target_modules=[qkv]"])
    with pytest.raises(ValueError, match=r"does not have.*q_proj"):
        lora.wrap(model, cfg.model.lora)


def test_adapters_get_gradients_through_checkpointed_blocks() -> None:
    """model.gradient_checkpointing with LoRA: the frozen embeddings' output must require grad, or
    reentrant checkpointing drops the adapters' gradients."""
    from agentic_gcpo.train.policy import token_logprobs

    model, _ = tiny_model(seed=0)
    model.gradient_checkpointing_enable()
    cfg = load_config(None, ["model.lora.enabled=true", "model.lora.r=2"])
    inner = lora.trained_module(lora.wrap(model, cfg.model.lora, gradient_checkpointing=True))
    inner.train()
    lp = token_logprobs(inner, IDS, torch.ones_like(IDS), False, only=torch.ones(2, 7))
    lp.sum().backward()
    # B starts at 0, so A's gradient is 0 at first; every B must have one
    b_grads = [p.grad for n, p in inner.named_parameters() if ".lora_B." in n]
    assert b_grads and all(g is not None and g.abs().sum() > 0 for g in b_grads)
