"""Lets SGLang's real server start on a CPU-only machine, for recording its answers (record_sglang.py).

sglang 0.5.23 imports `sgl_kernel` unconditionally, and `sgl_kernel/__init__.py` loads a CUDA-only
op library at import time (`ImportError: libcuda.so.1`); PyPI has no CPU build. The server's
CPU path (`--device cpu --attention-backend torch_native --sampling-backend pytorch`) never calls
those ops, so this file, put on PYTHONPATH, swaps the loader's result for a placeholder that fails
only if an op is actually called. Recording aid only: nothing in agentic_gcpo imports it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys


class _NoOps:
    def __getattr__(self, name: str):
        def missing(*args, **kwargs):
            raise RuntimeError(f"sgl_kernel op {name} is CUDA-only (stubbed by tests/sglang_cpu_shim)")

        return missing


class _PatchLoadUtils(importlib.abc.MetaPathFinder):
    """After sgl_kernel.load_utils executes, make its op loader return the placeholder."""

    def find_spec(self, name, path=None, target=None):
        if name != "sgl_kernel.load_utils":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            module._load_architecture_specific_ops = lambda: _NoOps()
            module._preload_cuda_library = lambda: None

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PatchLoadUtils())
