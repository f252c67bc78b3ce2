"""Sandboxed execution of model-written Python (see base.py for the contract, local.py for the backend)."""

from __future__ import annotations

from .base import ExecResult, Sandbox, SandboxConfig, truncate_middle


def make_sandbox(cfg: SandboxConfig) -> Sandbox:
    """Build the backend named by `cfg.backend`."""
    if cfg.backend == "local":
        from .local import LocalSandbox

        return LocalSandbox(cfg)
    if cfg.backend == "docker":
        raise NotImplementedError(
            "sandbox backend 'docker' is not implemented yet: it needs the Docker backend module "
            "(agentic_gcpo/sandbox/docker.py), the `docker` Python package (pip install 'agentic-gcpo[docker]'), "
            "a running Docker engine and a locally built sandbox image; use backend='local' meanwhile"
        )
    raise ValueError(f"unknown sandbox backend {cfg.backend!r}; valid: 'local', 'docker'")


__all__ = ["ExecResult", "Sandbox", "SandboxConfig", "make_sandbox", "truncate_middle"]
