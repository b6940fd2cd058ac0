"""Task-conditioned feature modulation (FiLM) of any backbone's normalisation layers.

CNAPS (Requeima et al., NeurIPS 2019, arXiv 1906.07697) and Simple CNAPS (Bateni et al., CVPR
2020, arXiv 1912.03432) adapt the feature extractor to each task with FiLM layers (Perez et al.,
AAAI 2018): after every normalisation layer, ``h -> gamma(z) * h + beta(z)`` with ``gamma``,
``beta`` generated from a representation ``z`` of the support set. FiLM after an affine norm
``w * h_hat + b`` is again an affine norm with weight ``gamma * w`` and bias ``gamma * b + beta``,
so in metafit the adaptation is a task-specific change of the norm parameters in the parameter
dict: any backbone with affine norm layers, no layer rewritten, one
``functional_call(..., strict=True)`` per forward.

Differences from CNAPS: ``z`` is the mean of the support set's class prototypes under the
unmodulated backbone (the task embedding of TADAM, Oreshkin et al., NeurIPS 2018, arXiv
1805.10123) instead of a separate set-encoder network, and each generator is one linear map
initialised to zero (``gamma = 1``, ``beta = 0``: the unmodulated backbone, so a pretrained
backbone starts where it was), as TADAM and CNAPS initialise theirs near the identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit.algorithms.base import LearnerSpec, MetaParams, Metrics, check_labels, support_way, task_metrics
from metafit.algorithms.heads import MahalanobisHead
from metafit.algorithms.metric import MetricLearner, _model_dtype
from metafit.algorithms.protonet import ProtoSupport
from metafit.data.task import Task
from metafit.functional import Buffers, Params, apply
from metafit.models.backbones import TaskBatchNorm

__all__ = ["FiLMAdapted", "film_norm_layers"]

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, TaskBatchNorm)


def film_norm_layers(model: nn.Module) -> list[tuple[str, int]]:
    """``(name, channels)`` of every normalisation layer with a per-channel weight and bias."""
    out = []
    for name, m in model.named_modules():
        w, b = getattr(m, "weight", None), getattr(m, "bias", None)
        if isinstance(m, _NORMS) and isinstance(w, nn.Parameter) and isinstance(b, nn.Parameter) and w.dim() == 1:
            out.append((name, int(w.shape[0])))
    return out


class FiLMSupport(NamedTuple):
    """A task's support set and the backbone parameters modulated for it."""

    support: ProtoSupport
    params: Params


@dataclass(frozen=True)
class FiLMAdapted:
    """A metric learner whose backbone is FiLM-modulated per task (CNAPS-style; see the module docstring).

    For norm layer ``l`` with ``C_l`` channels the generators are ``gamma_l = 1 + A_l z + a_l`` and
    ``beta_l = B_l z + b_l`` (``A_l, B_l (C_l, task_dim)``, ``a_l, b_l (C_l,)``, all zero at
    ``init``), with ``z (task_dim,)`` the mean class prototype of the support set under the
    unmodulated backbone (its gradient flows into the backbone too). The support and the queries
    are then embedded with the modulated parameters and scored by the inner learner's head.
    ``FiLMAdapted(MetricLearner(MahalanobisHead()))`` is Simple CNAPS with a FiLM-adapted
    backbone.

    Meta-parameter groups: the inner learner's (``"model"``, and ``"head"`` if it learns
    anything) and ``"film"`` (keys ``"<norm>.gamma.weight"``, ``"<norm>.gamma.bias"``,
    ``"<norm>.beta.weight"``, ``"<norm>.beta.bias"``).

    Args:
        inner: The metric learner (default: the Mahalanobis head of Simple CNAPS).
        task_dim: Width ``D`` of the backbone's embedding (flattened), the input of the generators.
    """

    inner: MetricLearner = field(default_factory=lambda: MetricLearner(MahalanobisHead()))
    task_dim: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.inner, MetricLearner):
            raise TypeError(f"inner must be a MetricLearner, got {type(self.inner).__name__}")
        if isinstance(self.task_dim, bool) or not isinstance(self.task_dim, int) or self.task_dim < 1:
            raise ValueError(f"task_dim must be an int >= 1 (the backbone's embedding width), got {self.task_dim!r}")

    @property
    def spec(self) -> LearnerSpec:
        """The inner metric learner's: no inner loop, any number of classes."""
        return self.inner.spec

    def init(self, model: nn.Module, *, generator: torch.Generator | None = None) -> MetaParams:
        """The inner learner's groups plus ``"film"`` (zero generators: the identity modulation)."""
        norms = film_norm_layers(model)
        if not norms:
            raise ValueError(
                f"FiLMAdapted modulates affine normalisation layers; {type(model).__name__} has none "
                "(build the backbone with affine batch/group/instance norms)"
            )
        mp = self.inner.init(model, generator=generator)
        dtype, device = _model_dtype(model)
        film: Params = {}
        for name, c in norms:
            for which in ("gamma", "beta"):
                film[f"{name}.{which}.weight"] = torch.zeros(c, self.task_dim, dtype=dtype, device=device)
                film[f"{name}.{which}.bias"] = torch.zeros(c, dtype=dtype, device=device)
        mp["film"] = {k: v.requires_grad_(True) for k, v in film.items()}
        return mp

    def task_embedding(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        support_x: Tensor,
        support_y: Tensor,
        n_way: int,
    ) -> Tensor:
        """``z (task_dim,)``: the mean of the class prototypes under the unmodulated backbone."""
        emb = apply(model, meta_params["model"], buffers, support_x).flatten(1)
        if emb.shape[1] != self.task_dim:
            raise ValueError(
                f"task_dim={self.task_dim} but the backbone embeds the support set into {emb.shape[1]} features: "
                f"set task_dim={emb.shape[1]}"
            )
        onehot = F.one_hot(support_y, n_way).to(emb.dtype)  # (S, N)
        protos = (onehot.t() @ emb) / onehot.sum(0).clamp_min(1)[:, None]
        return protos.mean(0)

    def modulated(self, meta_params: MetaParams, z: Tensor) -> Params:
        """The backbone parameters with every norm's weight and bias FiLM-modulated by ``z``."""
        film = meta_params.get("film")
        if not film:
            raise ValueError("meta_params has no 'film' group: create meta-parameters with FiLMAdapted.init")
        params = dict(meta_params["model"])
        for key in film:
            if not key.endswith(".gamma.weight"):
                continue
            name = key[: -len(".gamma.weight")]
            gamma = 1 + film[f"{name}.gamma.weight"] @ z + film[f"{name}.gamma.bias"]
            beta = film[f"{name}.beta.weight"] @ z + film[f"{name}.beta.bias"]
            w, b = params[f"{name}.weight"], params[f"{name}.bias"]
            params[f"{name}.weight"], params[f"{name}.bias"] = gamma * w, gamma * b + beta
        return params

    def adapt(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        support_x: Tensor,
        support_y: Tensor,
        *,
        n_way: int | None = None,
    ) -> FiLMSupport:
        """The support set and the backbone parameters modulated for it."""
        n_way = support_way(support_y, n_way)
        z = self.task_embedding(model, meta_params, buffers, support_x, support_y, n_way)
        return FiLMSupport(ProtoSupport(support_x, support_y, n_way), self.modulated(meta_params, z))

    def predict(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: FiLMSupport, x: Tensor
    ) -> Tensor:
        """Logits ``(B, n_way)`` for ``x (B, *input_shape)``: the inner head on modulated embeddings."""
        return self.inner.logits(model, {**meta_params, "model": adapted.params}, buffers, adapted.support, x)

    def loss(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, task: Task) -> tuple[Tensor, Metrics]:
        """Query cross-entropy under the FiLM-adapted backbone and the inner head."""
        if task.n_way is None:
            raise ValueError("FiLMAdapted needs tasks with n_way set (classification tasks)")
        check_labels("query_y", task.query_y, task.n_way, what="the task")
        adapted = self.adapt(model, meta_params, buffers, task.support_x, task.support_y, n_way=task.n_way)
        logits = self.predict(model, meta_params, buffers, adapted, task.query_x)
        loss = F.cross_entropy(logits, task.query_y)
        return loss, task_metrics("cross_entropy", logits, task.query_y, loss)


def build_film(criterion: str, *, task_dim: int = 64, head: str = "mahalanobis", scale: float = 10.0) -> FiLMAdapted:
    """Registry builder (entry ``"film"``): a FiLM-adapted metric learner, Simple CNAPS by default."""
    from metafit.algorithms.metric import build_metric

    return FiLMAdapted(build_metric(criterion, head=head, scale=scale), task_dim=task_dim)
