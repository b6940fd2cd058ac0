"""A metric learner with an interchangeable head: the Prototypical-Network family by composition.

``MetricLearner(head)`` embeds the support and query sets with any embedding network and scores
the queries with a :class:`~metafit.algorithms.heads.Head`:

* ``MetricLearner(EuclideanHead())``: Prototypical Networks (Snell et al., NeurIPS 2017), the same
  numbers as :class:`~metafit.algorithms.protonet.ProtoNet`;
* ``MetricLearner(CosineHead())``: the cosine ProtoNet of Meta-Baseline (Chen et al., ICCV 2021),
  usually started from a pretrained backbone with :func:`~metafit.algorithms.warm_start.init_from`;
* ``MetricLearner(MahalanobisHead())``: Simple CNAPS' classifier (Bateni et al., CVPR 2020) on a
  plain embedding (no FiLM adaptation network);
* ``MetricLearner(RidgeHead())``: R2D2 (Bertinetto et al., ICLR 2019);
* ``MetricLearner(LDAHead())``: linear discriminant analysis with a Ledoit-Wolf-shrunk pooled
  covariance (Fisher 1936; Ledoit & Wolf 2004) on a meta-learned embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit.algorithms.base import (
    LearnerSpec,
    MetaParams,
    Metrics,
    check_labels,
    support_way,
    task_metrics,
)
from metafit.algorithms.heads import (
    CosineHead,
    EuclideanHead,
    Head,
    LDAHead,
    MahalanobisHead,
    RidgeHead,
)
from metafit.algorithms.protonet import ProtoSupport
from metafit.data.task import Task
from metafit.functional import Buffers, Params, apply, params_of

__all__ = [
    "MetricLearner",
    "build_meta_baseline",
    "build_metric",
    "build_r2d2",
    "build_lda",
    "build_simple_cnaps",
]


def _model_dtype(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    for p in model.parameters():
        return p.dtype, p.device
    return torch.get_default_dtype(), torch.device("cpu")


@dataclass(frozen=True)
class MetricLearner:
    """Episodic metric learning with a pluggable head (Snell, Swersky & Zemel, NeurIPS 2017, arXiv 1703.05175).

    The model is an embedding network (outputs are flattened to ``(B, D)``). Support and query
    are embedded in one batch (``joint_embedding``, as ProtoNet) and the head turns the support
    embeddings into class scores for the queries. The head's learned scalars are the meta-parameter
    group ``"head"`` (absent when the head has none); the backbone's are ``"model"``.

    Args:
        head: A :class:`~metafit.algorithms.heads.Head` (default :class:`EuclideanHead`).
        criterion: Must be ``"cross_entropy"``.
        joint_embedding: Embed support and query in one batch (transductive batch statistics,
            default) or in two batches.

    Tasks must carry ``n_way`` (the samplers set it).

    Example:
        >>> from metafit.algorithms.heads import CosineHead
        >>> from metafit.models import MLP
        >>> sorted(MetricLearner(CosineHead()).init(MLP(2, (4,), 3)))
        ['head', 'model']
    """

    head: Head = field(default_factory=EuclideanHead)
    criterion: str = "cross_entropy"
    joint_embedding: bool = True

    def __post_init__(self) -> None:
        if self.criterion != "cross_entropy":
            raise ValueError(
                f"MetricLearner is a classifier: criterion must be 'cross_entropy', got {self.criterion!r}"
            )
        if not isinstance(self.head, Head):
            raise TypeError(
                "head must have init_params() and logits(support_emb, support_y, n_way, query_emb, head_params), "
                f"got {type(self.head).__name__}"
            )
        # the names the head needs, computed once (not a dataclass field)
        object.__setattr__(self, "_head_names", frozenset(self.head.init_params()))

    @property
    def spec(self) -> LearnerSpec:
        """A metric classifier: no inner loop, any number of classes per task."""
        return LearnerSpec(tasks="classification", inner_loop=False, second_order=False, head="none")

    def init(self, model: nn.Module, *, generator: torch.Generator | None = None) -> MetaParams:
        """``{"model": params}`` plus ``{"head": head.init_params()}`` if the head learns anything."""
        mp: MetaParams = {"model": params_of(model)}
        dtype, device = _model_dtype(model)
        hp = {
            k: v.detach().to(dtype=dtype, device=device).requires_grad_(True)
            for k, v in self.head.init_params().items()
        }
        if hp:
            mp["head"] = hp
        return mp

    def head_params(self, meta_params: MetaParams) -> Params:
        """The ``"head"`` group (``{}`` if absent), checked against what the head needs."""
        hp = meta_params.get("head", {})
        want = self._head_names  # type: ignore[attr-defined]
        if set(hp) != want:
            raise ValueError(
                f"meta_params['head'] must hold {sorted(want)} for {type(self.head).__name__} "
                f"(create meta-parameters with MetricLearner.init), got {sorted(hp)}"
            )
        return hp

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
        """Stores the support set; embeddings are computed jointly with the inputs in ``predict``."""
        n_way = support_way(support_y, n_way)
        return ProtoSupport(support_x, support_y, n_way)

    def embed(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, support_x: Tensor, x: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Support and query embeddings ``(S, D)``, ``(B, D)``."""
        params = meta_params["model"]
        if self.joint_embedding:
            s = support_x.shape[0]
            emb = apply(model, params, buffers, torch.cat([support_x, x])).flatten(1)
            return emb[:s], emb[s:]
        return apply(model, params, buffers, support_x).flatten(1), apply(model, params, buffers, x).flatten(1)

    def logits(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, support: ProtoSupport, x: Tensor
    ) -> Tensor:
        """Logits ``(B, n_way)`` for ``x (B, *input_shape)`` against the support set."""
        es, eq = self.embed(model, meta_params, buffers, support.x, x)
        return self.head.logits(es, support.y, support.n_way, eq, self.head_params(meta_params))

    def predict(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: ProtoSupport, x: Tensor
    ) -> Tensor:
        """Logits ``(B, n_way)`` of the head."""
        return self.logits(model, meta_params, buffers, adapted, x)

    def loss(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, task: Task) -> tuple[Tensor, Metrics]:
        """Cross-entropy of the query set under the head fitted to the support set."""
        if task.n_way is None:
            raise ValueError(
                f"MetricLearner({type(self.head).__name__}) needs tasks with n_way set (classification tasks)"
            )
        check_labels("support_y", task.support_y, task.n_way, what="the task")
        check_labels("query_y", task.query_y, task.n_way, what="the task")
        support = ProtoSupport(task.support_x, task.support_y, task.n_way)
        logits = self.logits(model, meta_params, buffers, support, task.query_x)
        loss = F.cross_entropy(logits, task.query_y)
        return loss, task_metrics("cross_entropy", logits, task.query_y, loss)


# -- builders for the registry (the lead adds LearnerEntry lines) -------------------------------


def build_metric(
    criterion: str,
    *,
    head: str = "euclidean",
    scale: float = 10.0,
    distance: str = "squared_euclidean",
    joint_embedding: bool = True,
) -> MetricLearner:
    """``MetricLearner`` with a head named ``"euclidean"``, ``"cosine"``, ``"mahalanobis"``, ``"ridge"`` or ``"lda"``.

    ``scale`` is the cosine head's initial temperature and ``distance`` the Euclidean head's
    distance (each ignored by the other heads).
    """
    heads = {
        "euclidean": lambda: EuclideanHead(distance=distance),
        "cosine": lambda: CosineHead(scale=scale),
        "mahalanobis": MahalanobisHead,
        "ridge": RidgeHead,
        "lda": LDAHead,
    }
    if head not in heads:
        raise ValueError(f"head must be one of {sorted(heads)}, got {head!r}")
    return MetricLearner(heads[head](), criterion=criterion, joint_embedding=joint_embedding)


def build_meta_baseline(
    criterion: str, *, scale: float = 10.0, learn_scale: bool = True, joint_embedding: bool = True
) -> MetricLearner:
    """Meta-Baseline's meta-stage: ``MetricLearner(CosineHead(scale))`` (start it with ``init_from``)."""
    return MetricLearner(
        CosineHead(scale=scale, learn_scale=learn_scale), criterion=criterion, joint_embedding=joint_embedding
    )


def build_r2d2(
    criterion: str, *, init_lambda: float = 1.0, init_scale: float = 1.0, joint_embedding: bool = True
) -> MetricLearner:
    """R2D2: ``MetricLearner(RidgeHead(init_lambda, init_scale))``."""
    return MetricLearner(
        RidgeHead(init_lambda=init_lambda, init_scale=init_scale), criterion=criterion, joint_embedding=joint_embedding
    )


def build_simple_cnaps(criterion: str, *, beta: float = 1.0, joint_embedding: bool = True) -> MetricLearner:
    """Simple CNAPS' classifier on a plain embedding: ``MetricLearner(MahalanobisHead(beta))``."""
    return MetricLearner(MahalanobisHead(beta=beta), criterion=criterion, joint_embedding=joint_embedding)


def build_lda(
    criterion: str, *, shrinkage: str | float = "ledoit-wolf", init_scale: float = 1.0, joint_embedding: bool = True
) -> MetricLearner:
    """Shrinkage LDA on a meta-learned embedding: ``MetricLearner(LDAHead(shrinkage, init_scale))``.

    ``shrinkage`` is ``"ledoit-wolf"`` (estimated per task from its support rows) or a fixed weight
    in ``[0, 1]``.
    """
    return MetricLearner(
        LDAHead(shrinkage=shrinkage, init_scale=init_scale), criterion=criterion, joint_embedding=joint_embedding
    )
