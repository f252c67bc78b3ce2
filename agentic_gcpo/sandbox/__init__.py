"""Sandboxed execution of model-written Python.

base.py: the contract; pool.py: sessions and the warm pool; local.py / docker.py: the backends.
"""

from __future__ import annotations

from .base import ExecResult, Sandbox, SandboxConfig, truncate_middle


class SandboxUnavailable(RuntimeError):
    """A backend cannot run on this machine; the message says why and what to do."""


def make_sandbox(cfg: SandboxConfig) -> Sandbox:
    """Build the backend named by `cfg.backend`."""
    if cfg.backend == "local":
        from .local import LocalSandbox

        return LocalSandbox(cfg)
    if cfg.backend == "docker":
        # Imported lazily: the `docker` package is an optional dependency (agentic-gcpo[docker]).
        from .docker import DockerSandbox

        return DockerSandbox(cfg)
    raise ValueError(f"unknown sandbox backend {cfg.backend!r}; valid: 'local', 'docker'")


__all__ = ["ExecResult", "Sandbox", "SandboxConfig", "SandboxUnavailable", "make_sandbox", "truncate_middle"]
