"""The sinusoid regression task family of MAML §5.1 (Finn et al. 2017).

Each task is ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5.0]``, phase ``phi ~ U[0, pi]``
and inputs ``x ~ U[-5, 5]``; a task gives ``k_shot`` support points and ``n_query`` query
points drawn independently from the same sine.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from metafit.data.task import TaskBatch

__all__ = ["SinusoidTasks", "sinusoid_eval_tasks", "AMPLITUDE", "PHASE", "X_RANGE"]

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)


def _uniform(shape: tuple[int, ...], lo: float, hi: float, g: torch.Generator, dtype: torch.dtype) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=dtype)


@dataclass
class SinusoidTasks:
    """Infinite stream of sinusoid regression task batches.

    Args:
        k_shot: Support points per task ``K``.
        n_query: Query points per task (default ``k_shot``, as in the MAML training set-up).
        tasks_per_batch: Tasks per yielded :class:`TaskBatch` (25 in MAML §5.1).
        generator: Source of all randomness (required: no global random state).
        dtype: Floating dtype of inputs and targets.

    Yields:
        :class:`TaskBatch` with ``support_x (T, K, 1)``, ``support_y (T, K, 1)``,
        ``query_x (T, Q, 1)``, ``query_y (T, Q, 1)``.
    """

    k_shot: int
    n_query: int | None = None
    tasks_per_batch: int = 25
    generator: torch.Generator | None = None
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.generator is None:
            raise ValueError("SinusoidTasks needs an explicit generator=torch.Generator().manual_seed(seed)")
        if self.k_shot < 1:
            raise ValueError(f"k_shot must be >= 1, got {self.k_shot}")
        if self.n_query is not None and self.n_query < 1:
            raise ValueError(f"n_query must be >= 1, got {self.n_query}")
        if self.tasks_per_batch < 1:
            raise ValueError(f"tasks_per_batch must be >= 1, got {self.tasks_per_batch}")

    def sample_batch(self, n_tasks: int | None = None) -> TaskBatch:
        """Samples ``n_tasks`` (default ``tasks_per_batch``) new tasks."""
        assert self.generator is not None
        t = self.tasks_per_batch if n_tasks is None else n_tasks
        q = self.k_shot if self.n_query is None else self.n_query
        return _sample(t, self.k_shot, q, self.generator, self.dtype)[0]

    def __iter__(self) -> Iterator[TaskBatch]:
        while True:
            yield self.sample_batch()


def _sample(t: int, k: int, q: int, g: torch.Generator, dtype: torch.dtype) -> tuple[TaskBatch, Tensor, Tensor]:
    amp = _uniform((t, 1, 1), *AMPLITUDE, g, dtype)
    phase = _uniform((t, 1, 1), *PHASE, g, dtype)
    xs = _uniform((t, k, 1), *X_RANGE, g, dtype)
    xq = _uniform((t, q, 1), *X_RANGE, g, dtype)
    batch = TaskBatch(xs, amp * torch.sin(xs - phase), xq, amp * torch.sin(xq - phase))
    return batch, amp.flatten(), phase.flatten()


def sinusoid_eval_tasks(
    n_tasks: int = 1000,
    k_shot: int = 5,
    n_query: int = 100,
    *,
    seed: int = 12345,
    dtype: torch.dtype = torch.float32,
) -> TaskBatch:
    """A fixed, seeded list of held-out sinusoid tasks, the same for every learner.

    The amplitudes, phases and query points depend only on ``(n_tasks, n_query, seed)``; the
    support points of each task are drawn from a separate stream so that evaluating with
    ``k_shot = 5, 10, 20`` scores the SAME tasks on the SAME query points (the first 5 support
    points of the 10-shot version are the 5-shot support set).

    Returns:
        :class:`TaskBatch` ``(n_tasks, k_shot, 1)`` support, ``(n_tasks, n_query, 1)`` query.
    """
    if n_tasks < 1 or k_shot < 1 or n_query < 1:
        raise ValueError(f"n_tasks, k_shot, n_query must be >= 1, got {n_tasks}, {k_shot}, {n_query}")
    g = torch.Generator().manual_seed(seed)
    amp = _uniform((n_tasks, 1, 1), *AMPLITUDE, g, dtype)
    phase = _uniform((n_tasks, 1, 1), *PHASE, g, dtype)
    xq = _uniform((n_tasks, n_query, 1), *X_RANGE, g, dtype)
    gs = torch.Generator().manual_seed(seed + 1)
    xs_all = _uniform((n_tasks, max(k_shot, 100), 1), *X_RANGE, gs, dtype)
    xs = xs_all[:, :k_shot]
    return TaskBatch(xs, amp * torch.sin(xs - phase), xq, amp * torch.sin(xq - phase))
