"""Sandbox contract: the config, the result record and the protocol every backend implements.

`ExecResult.render()` is the single place that turns an execution into the text the model sees as
a tool observation; golden trajectories and training rollouts both go through it, so a trailing
newline can never differ between the two.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SandboxConfig(BaseModel):
    """Limits and backend choice for executing model-written Python."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "docker"] = Field(
        "local", description="'local': worker processes on this machine; 'docker': containers."
    )
    timeout_s: float = Field(5.0, gt=0, description="Wall-clock limit for one execute() call, in seconds.")
    cpu_time_s: float = Field(5.0, gt=0, description="CPU-time limit for one execute() call (RLIMIT_CPU).")
    memory_mb: int = Field(1024, gt=0, description="Address-space limit of a worker in MiB (RLIMIT_AS).")
    max_output_chars: int = Field(
        4000, gt=0, description="stdout and stderr are each cut to this many chars, keeping head and tail."
    )
    max_file_mb: int = Field(16, gt=0, description="Largest file a worker may write, in MiB (RLIMIT_FSIZE).")
    max_processes: int = Field(
        64, gt=0, description="Process/thread limit (RLIMIT_NPROC); enforced only for an unprivileged uid."
    )
    pool_size: int = Field(4, ge=0, description="Warm workers (started, `preload` imported) kept ready.")
    preload: list[str] = Field(
        default_factory=list,
        description="Modules every worker imports before it is ready, e.g. [sympy, numpy]: a cell's first "
        "`import sympy` is then instant, but every worker (one per trajectory) spends ~0.4 s of CPU on "
        "it whether its code uses SymPy or not, and on a few-core machine that CPU is taken from "
        "generation (1.5x slower rollouts on 2 cores, bench/README.md). Empty: a module is imported "
        "when a cell first asks for it, in that cell.",
    )
    isolation: Literal["auto", "namespaces", "none"] = Field(
        "auto",
        description="'namespaces': require user/net/pid namespaces (no network); 'auto': use them when "
        "the machine allows, else rlimits only with a warning; 'none': rlimits only.",
    )
    docker_image: str = Field(
        "agentic-gcpo-sandbox:latest",
        description="Image the 'docker' backend runs; build it with `agentic-gcpo sandbox build-image`.",
    )
    docker_cpus: float = Field(1.0, gt=0, description="CPUs one sandbox container may use (docker --cpus).")
    docker_tmpfs_mb: int = Field(
        64, gt=0, description="Size of each container's writable tmpfs (/work and /tmp), in MiB."
    )

    @field_validator("preload")
    @classmethod
    def _module_names(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not all(part.isidentifier() for part in n.split("."))]
        if bad:
            raise ValueError(f"preload takes module names such as 'sympy' or 'numpy.linalg'; not {bad}")
        return names


def truncate_middle(text: str, limit: int) -> tuple[str, bool]:
    """Keep the head and tail of `text` (limit chars in all) with a marker for the cut middle."""
    if len(text) <= limit:
        return text, False
    head = limit // 2
    tail = limit - head
    cut = len(text) - limit
    return text[:head] + f"\n...[truncated {cut} chars]...\n" + (text[-tail:] if tail else ""), True


@dataclass
class ExecResult:
    """What one execute() call did. Never raised: every failure of the code is described here."""

    stdout: str
    stderr: str
    value: str | None
    error_type: str | None
    error: str | None
    timed_out: bool = False
    memory_exceeded: bool = False
    output_truncated: bool = False
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error_type is None and not self.timed_out

    def render(self) -> str:
        """The tool observation shown to the model. Deterministic: no timings in it."""
        parts: list[str] = []
        out = self.stdout[:-1] if self.stdout.endswith("\n") else self.stdout
        if out:
            parts.append(out)
        if self.value is not None:
            parts.append(self.value)
        if self.error_type is not None:
            parts.append(f"Error: {self.error_type}: {self.error or ''}".rstrip())
        return "\n".join(parts) if parts else "(no output)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def failure(cls, error_type: str, error: str, duration_s: float = 0.0, **flags: bool) -> ExecResult:
        """A result for an execution that produced nothing but an error (timeout, crash ...)."""
        return cls("", "", None, error_type, error, duration_s=duration_s, **flags)


@runtime_checkable
class Sandbox(Protocol):
    """Runs code in isolated, stateful sessions. Implementations must be thread-safe."""

    def execute(self, code: str, session: str) -> ExecResult: ...

    def close_session(self, session: str) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Sandbox: ...

    def __exit__(self, *exc: object) -> None: ...
