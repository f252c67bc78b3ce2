"""Algorithm registry: the one place that lists every algorithm the trainer can run.

Each module defines ``ALGORITHM`` (an :class:`Algorithm`); it is registered below by name.
"""

from __future__ import annotations

from agentic_gcpo.algorithms import dapo, dr_grpo, gcpo, gpg, grpo, gspo
from agentic_gcpo.algorithms.base import (
    AGGREGATION_MODES,
    AdvantageFn,
    Algorithm,
    AlgorithmConfig,
    PolicyLossFn,
    aggregate,
    group_stats,
)
from agentic_gcpo.algorithms.gpg import gpg_alpha, gpg_needs_resample

__all__ = [
    "AGGREGATION_MODES",
    "REGISTRY",
    "AdvantageFn",
    "Algorithm",
    "AlgorithmConfig",
    "PolicyLossFn",
    "UnknownAlgorithmError",
    "aggregate",
    "available_algorithms",
    "get_algorithm",
    "gpg_alpha",
    "gpg_needs_resample",
    "group_stats",
    "register",
]

REGISTRY: dict[str, Algorithm] = {}


class UnknownAlgorithmError(KeyError, ValueError):
    """Raised for an unregistered name; catchable as KeyError or ValueError."""

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0]) if self.args else ""


def register(algorithm: Algorithm) -> Algorithm:
    """Add an algorithm; re-registering the same object is a no-op, a different one under a taken name raises."""
    existing = REGISTRY.get(algorithm.name)
    if existing is not None and existing is not algorithm:
        raise ValueError(f"algorithm name {algorithm.name!r} is already registered to a different object")
    REGISTRY[algorithm.name] = algorithm
    return algorithm


def available_algorithms() -> list[str]:
    return sorted(REGISTRY)


def get_algorithm(name: str) -> Algorithm:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownAlgorithmError(
            f"unknown algorithm {name!r}; valid names: {', '.join(available_algorithms())}"
        ) from None


for _module in (gcpo, gpg, grpo, dapo, dr_grpo, gspo):
    register(_module.ALGORITHM)
del _module
