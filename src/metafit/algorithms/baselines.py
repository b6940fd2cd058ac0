"""Naive baselines that every meta-learner must beat.

:class:`RawNearestCentroid`: nearest class mean on the raw inputs, no learning at all. Prototypes
are the class means of the flattened support inputs; a query is scored by the negative squared
Euclidean distance to each prototype (Prototypical Networks with the identity as the embedding).
It is the "pixels" row of few-shot tables (Vinyals et al., "Matching Networks for One Shot
Learning", NeurIPS 2016, arXiv 1606.04080, Table 1, used a cosine nearest neighbour on pixels) in
its nearest-class-mean form (Mensink, Verbeek, Perronnin & Csurka, "Distance-based image
classification: generalizing to new classes at near-zero cost", TPAMI 2013).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit.algorithms.base import (
    LearnerSpec,
    MetaParams,
    Metrics,
    check_labels,
    task_metrics,
)
from metafit.algorithms.protonet import prototypes, squared_distances
from metafit.data.task import Task
from metafit.functional import Buffers

__all__ = ["Centroids", "RawNearestCentroid"]


class Centroids(NamedTuple):
    """Class means of the flattened support inputs, ``(n_way, D)``."""

    means: Tensor


@dataclass(frozen=True)
class RawNearestCentroid:
    """Nearest class mean on the raw (flattened) inputs; the model is ignored.

    Paper: the "pixels" baseline of Vinyals et al., NeurIPS 2016 (arXiv 1606.04080), in the
    nearest-class-mean form of Mensink et al., TPAMI 2013.

    Args:
        distance_scale: Logits are ``-distance_scale * ||x - mean_c||^2`` (does not change the
            accuracy; it sets how peaked the softmax, hence the loss and calibration, is).
        criterion: ``"cross_entropy"`` (a classifier).

    There is nothing to train: :meth:`init` returns no meta-parameters. Tasks must carry
    ``n_way`` (or ``adapt`` infers it from the largest support label).
    """

    distance_scale: float = 1.0
    criterion: str = "cross_entropy"

    def __post_init__(self) -> None:
        if self.criterion != "cross_entropy":
            raise ValueError(
                f"RawNearestCentroid is a classifier: criterion must be 'cross_entropy', got {self.criterion!r}"
            )
        if (
            isinstance(self.distance_scale, bool)
            or not isinstance(self.distance_scale, (int, float))
            or not (self.distance_scale > 0)
        ):
            raise ValueError(f"distance_scale must be a number > 0, got {self.distance_scale!r}")

    @property
    def spec(self) -> LearnerSpec:
        """No inner loop, any number of classes per task, no model features."""
        return LearnerSpec(tasks="classification", inner_loop=False, second_order=False, head="none", embeds=False)

    def init(self, model: nn.Module | None = None, *, generator: torch.Generator | None = None) -> MetaParams:
        """No meta-parameters (``{}``)."""
        return {}

    def adapt(
        self,
        model: nn.Module | None,
        meta_params: MetaParams,
        buffers: Buffers,
        support_x: Tensor,
        support_y: Tensor,
        *,
        n_way: int | None = None,
    ) -> Centroids:
        """Class means of ``support_x (S, *input_shape)`` flattened to ``(S, D)``."""
        if n_way is None:
            n_way = int(support_y.max()) + 1
        check_labels("support_y", support_y, n_way, what="the task")
        return Centroids(prototypes(support_x.flatten(1), support_y, n_way))

    def predict(
        self, model: nn.Module | None, meta_params: MetaParams, buffers: Buffers, adapted: Centroids, x: Tensor
    ) -> Tensor:
        """Logits ``(B, n_way)`` = ``-scale * ||x - mean_c||^2`` for ``x (B, *input_shape)``."""
        return -self.distance_scale * squared_distances(x.flatten(1).to(adapted.means.dtype), adapted.means)

    def loss(
        self, model: nn.Module | None, meta_params: MetaParams, buffers: Buffers, task: Task
    ) -> tuple[Tensor, Metrics]:
        """Query cross-entropy against the support class means (constant: nothing to learn)."""
        if task.n_way is None:
            raise ValueError("RawNearestCentroid needs tasks with n_way set (classification tasks)")
        check_labels("query_y", task.query_y, task.n_way, what="the task")
        adapted = self.adapt(model, meta_params, buffers, task.support_x, task.support_y, n_way=task.n_way)
        logits = self.predict(model, meta_params, buffers, adapted, task.query_x)
        loss = F.cross_entropy(logits, task.query_y)
        return loss, task_metrics("cross_entropy", logits, task.query_y, loss)
