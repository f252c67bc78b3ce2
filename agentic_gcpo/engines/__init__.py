"""Rollout engines behind one interface. `make_engine` is the only place that knows the backends."""

from __future__ import annotations

from typing import Any

from agentic_gcpo.engines.base import Completion, Engine, SamplingParams

__all__ = ["Completion", "Engine", "SamplingParams", "make_engine", "BACKENDS"]

BACKENDS = ("hf", "sglang", "vllm")


def make_engine(backend: str, model: Any, tokenizer: Any, **kwargs: Any) -> Engine:
    """The engine `backend` names, sampling from `model` (the trainer's module for in-process
    engines; remote engines receive its weights at `update_weights`). `options`: the backend's own
    section of EngineConfig (e.g. cfg.engine.sglang), for backends that have one."""
    options = kwargs.pop("options", None)
    if backend == "hf":
        from agentic_gcpo.engines.hf import HFEngine

        return HFEngine(model, tokenizer, **kwargs)
    if backend == "sglang":
        from agentic_gcpo.engines.sglang import SGLangEngine

        return SGLangEngine(model, tokenizer, options=options, **kwargs)
    if backend == "vllm":
        from agentic_gcpo.engines.vllm_server import make_vllm_engine

        return make_vllm_engine(model, tokenizer, options=options, **kwargs)
    raise ValueError(f"unknown engine backend '{backend}'; valid: {', '.join(BACKENDS)}")
