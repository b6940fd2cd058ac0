"""Reptile (Nichol, Achiam & Schulman 2018, arXiv 1803.02999).

Each task: ``inner_steps`` steps of SGD on the support set from ``theta`` give ``phi``; the outer
update moves ``theta`` towards ``phi``. metafit expresses this as the surrogate loss
``0.5 * ||theta - stopgrad(phi)||^2`` whose gradient is ``theta - phi``, so the engine, the
task mapping and any ``torch.optim`` outer optimizer stay unchanged: with SGD and learning rate
``epsilon`` the outer step is exactly ``theta <- theta + epsilon * mean_tasks(phi - theta)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metafit.algorithms.base import MetaParams, Metrics, criterion_fn, task_metrics
from metafit.algorithms.maml import MAML
from metafit.data.task import Task
from metafit.functional import Buffers, apply

__all__ = ["Reptile"]


@dataclass(frozen=True)
class Reptile(MAML):
    """Reptile: first-order meta-learning by moving the initialisation towards adapted weights.

    Args:
        inner_lr: SGD step size of the inner loop.
        inner_steps: Inner SGD steps per task (the paper uses 5-10 on Omniglot).
        criterion, eval_inner_lr, eval_inner_steps, adapt_only: as :class:`MAML`.

    The inner loop is always first order (``first_order`` is forced to True). The query set is
    used only for metrics during meta-training.
    """

    def __post_init__(self) -> None:
        object.__setattr__(self, "first_order", True)
        super().__post_init__()
        if self.inner_steps == 0:
            raise ValueError(
                "inner_steps must be >= 1 for Reptile, got 0: with no inner step phi = theta and the "
                "meta-gradient theta - phi is exactly zero forever"
            )

    def loss(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, task: Task) -> tuple[Tensor, Metrics]:
        """Surrogate ``0.5 * sum ||theta - stopgrad(phi)||^2`` plus query metrics at ``phi``."""
        theta = meta_params["model"]
        phi = self.adapt(model, meta_params, buffers, task.support_x, task.support_y, create_graph=False)
        surrogate = sum(0.5 * (theta[k] - phi[k].detach()).pow(2).sum() for k in theta)
        with torch.no_grad():
            out = apply(model, phi, buffers, task.query_x)
            qloss = criterion_fn(self.criterion)(out, task.query_y)
        metrics = task_metrics(self.criterion, out, task.query_y, qloss)
        metrics["surrogate"] = surrogate.detach()
        return surrogate, metrics  # type: ignore[return-value]
