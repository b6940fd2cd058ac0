"""Explicit randomness: generators, seeded model construction, determinism switches."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["generator", "seeded", "deterministic"]

T = TypeVar("T")


def generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def seeded(seed: int, factory: Callable[[], T]) -> T:
    """Calls ``factory()`` (e.g. a model constructor) with torch's global RNG set to ``seed``.

    ``nn.Module`` constructors draw their initial weights from the global RNG; this runs them
    under ``torch.random.fork_rng`` so the result depends only on ``seed`` and the global
    state seen by the rest of the program is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def deterministic(enabled: bool = True) -> None:
    """Turns on torch's deterministic algorithms (bit-exact reruns on CPU)."""
    torch.use_deterministic_algorithms(enabled, warn_only=True)
