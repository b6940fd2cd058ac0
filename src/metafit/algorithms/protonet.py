"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017, arXiv 1703.05175).

The model is an embedding network. Adaptation computes one prototype per class, the mean
support embedding; a query is scored by the negative squared Euclidean distance to each
prototype. Prototypes are a one-hot matrix product with a fixed ``n_way``, so the learner is
vmappable (no ``torch.unique``, no data-dependent shapes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit.algorithms.base import LearnerSpec, MetaParams, Metrics, check_labels, task_metrics
from metafit.data.task import Task
from metafit.functional import Buffers, apply, params_of

__all__ = ["ProtoNet", "ProtoSupport", "prototypes", "squared_distances"]


def prototypes(embeddings: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Class means of the support embeddings.

    Args:
        embeddings: ``(S, D)``.
        labels: ``(S,)`` int64 in ``0..n_way-1``.
        n_way: Number of classes.

    Returns:
        ``(n_way, D)``; a class with no support example gets a zero prototype.
    """
    onehot = F.one_hot(labels, n_way).to(embeddings.dtype)  # (S, N)
    counts = onehot.sum(0).clamp_min(1.0)  # (N,)
    return (onehot.transpose(0, 1) @ embeddings) / counts[:, None]


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """``||x_i - y_j||^2`` for ``x (A, D)``, ``y (B, D)`` -> ``(A, B)`` (matmul form)."""
    return (x.pow(2).sum(-1, keepdim=True) - 2.0 * x @ y.transpose(0, 1) + y.pow(2).sum(-1)[None, :]).clamp_min(0.0)


class ProtoSupport(NamedTuple):
    """A support set kept for prediction: ``x (S, *input_shape)``, ``y (S,)``, ``n_way``."""

    x: Tensor
    y: Tensor
    n_way: int


@dataclass(frozen=True)
class ProtoNet:
    """Prototypical Networks with squared Euclidean distance.

    Args:
        distance_scale: Logits are ``-distance_scale * d`` (1 in the paper).
        distance: ``"squared_euclidean"`` (the paper's ``d = ||a - b||^2``) or ``"euclidean"``
            (``d = ||a - b||``, easyfsl's choice).
        joint_embedding: Embed support and query in one batch (transductive batch statistics,
            as the ProtoNets reference code; default) or in two separate batches (as easyfsl).

    Tasks must carry ``n_way`` (the samplers set it).
    """

    distance_scale: float = 1.0
    criterion: str = "cross_entropy"
    distance: str = "squared_euclidean"
    joint_embedding: bool = True

    def __post_init__(self) -> None:
        if self.criterion != "cross_entropy":
            raise ValueError(f"ProtoNet is a classifier: criterion must be 'cross_entropy', got {self.criterion!r}")
        if self.distance not in ("squared_euclidean", "euclidean"):
            raise ValueError(f"distance must be 'squared_euclidean' or 'euclidean', got {self.distance!r}")
        if not self.distance_scale > 0:
            raise ValueError(f"distance_scale must be > 0, got {self.distance_scale}")

    @property
    def spec(self) -> LearnerSpec:
        """A metric classifier: no inner loop, any number of classes per task."""
        return LearnerSpec(tasks="classification", inner_loop=False, second_order=False, head="none")

    def init(self, model: nn.Module, *, generator: torch.Generator | None = None) -> MetaParams:
        """``{"model": params}`` of the embedding network."""
        return {"model": params_of(model)}

    def adapt(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        support_x: Tensor,
        support_y: Tensor,
        *,
        n_way: int | None = None,
    ) -> ProtoSupport:
        """Stores the support set; prototypes are computed jointly with the inputs in ``predict``.

        With batch-statistics normalisation (metafit's default) an embedding depends on the
        batch it is computed in. Like the ProtoNets reference code, metafit embeds support and
        query in ONE batch (transductive), both in training (:meth:`loss`) and at prediction,
        so that the two always agree.
        """
        if n_way is None:
            n_way = int(support_y.max()) + 1
        check_labels("support_y", support_y, n_way, what="the task")
        return ProtoSupport(support_x, support_y, n_way)

    def logits(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, support: ProtoSupport, x: Tensor
    ) -> Tensor:
        """Logits ``(B, n_way)`` for ``x (B, *input_shape)`` against the support prototypes."""
        params = meta_params["model"]
        if self.joint_embedding:
            s = support.x.shape[0]
            emb = apply(model, params, buffers, torch.cat([support.x, x])).flatten(1)
            es, eq = emb[:s], emb[s:]
        else:
            es = apply(model, params, buffers, support.x).flatten(1)
            eq = apply(model, params, buffers, x).flatten(1)
        protos = prototypes(es, support.y, support.n_way)
        if self.distance == "euclidean":
            return -self.distance_scale * torch.cdist(eq, protos)
        return -self.distance_scale * squared_distances(eq, protos)

    def predict(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: ProtoSupport, x: Tensor
    ) -> Tensor:
        """Logits ``(B, n_way)`` = ``-scale * ||f(x) - prototype||^2``."""
        return self.logits(model, meta_params, buffers, adapted, x)

    def loss(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, task: Task) -> tuple[Tensor, Metrics]:
        """Cross-entropy of the query set against the support prototypes."""
        if task.n_way is None:
            raise ValueError("ProtoNet needs tasks with n_way set (classification tasks)")
        check_labels("support_y", task.support_y, task.n_way, what="the task")
        check_labels("query_y", task.query_y, task.n_way, what="the task")
        support = ProtoSupport(task.support_x, task.support_y, task.n_way)
        logits = self.logits(model, meta_params, buffers, support, task.query_x)
        loss = F.cross_entropy(logits, task.query_y)
        return loss, task_metrics("cross_entropy", logits, task.query_y, loss)
