"""Shared fixtures: the tiny random model with the real SmolLM2 tokenizer, a real sandbox, and a loader
for the scripts outside the package (bench/, tests/record_sglang.py)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

# Under pytest-xdist (`-n 2`) each worker gets one core's worth of threads, and so do the training
# runs its tests start as subprocesses: two workers with two OpenMP threads each on two cores
# spin against each other and run slower than one worker alone.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

from agentic_gcpo.sandbox import SandboxConfig, make_sandbox


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer): a 2-layer random Llama that speaks SmolLM2's real chat template."""
    from agentic_gcpo.models import tiny_model

    return tiny_model(seed=0)


@pytest.fixture(scope="session")
def sandbox():
    box = make_sandbox(SandboxConfig(timeout_s=5.0, pool_size=2))
    yield box
    box.close()


@pytest.fixture(scope="session")
def python_tools():
    from agentic_gcpo.tool_registry import get_tools

    return get_tools(["python"])


@pytest.fixture(scope="session")
def load_script():
    """load_script(path) imports a script that is not in a package (bench/*.py) as a module."""

    def load(path: Path) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
