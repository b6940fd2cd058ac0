"""Model-based learners that map a support set to a predictor in one forward pass.

* :class:`NeuralProcess`: regression with any network ``forward(context_x, context_y, target_x,
  context_mask=None) -> (mean, var)``: :class:`metafit.models.attentive.AttentiveNP` (ANP, Kim et
  al. 2019), :class:`~metafit.models.attentive.TransformerNP` (TNP-D, Nguyen & Grover 2022) or a
  CNP through :class:`~metafit.models.attentive.CNPAdapter` (Garnelo et al. 2018), so the three
  compare on identical tasks under one learner.
* :class:`Padded`: the composition that runs a :class:`NeuralProcess` on PADDED tasks, whose
  inputs carry a last 0/1 "real point" column (:func:`metafit.data.gp.pad_tasks`): tasks of
  different context and target sizes then stack into one :class:`~metafit.data.task.TaskBatch`
  for the engine's vmap path and give the same losses as each task alone.
* :class:`AllPointsLoss`: the composition that trains a :class:`NeuralProcess` on the NLL of
  the context AND target points (the training objective of the TNP reference code's CNP, NP and
  ANP); evaluation scores the wrapped learner, on the targets only.
* :class:`InContextLearner`: few-shot classification with an in-context transformer
  (:class:`~metafit.models.attentive.InContextClassifier`, CAML-style, Fifty et al. 2024).

None has an inner loop: ``adapt`` returns the context itself (the network attends to it at
prediction time), so there is nothing to differentiate but the forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metafit.algorithms.base import LearnerSpec, MetaParams, Metrics, check_labels, support_way
from metafit.algorithms.cnp import gaussian_nll
from metafit.data.gp import split_mask
from metafit.data.task import Task
from metafit.functional import Buffers, params_of

__all__ = [
    "AllPointsLoss",
    "ICLContext",
    "InContextLearner",
    "NPContext",
    "NeuralProcess",
    "Padded",
    "build_in_context",
    "build_neural_process",
    "masked_gaussian_nll",
]


class NPContext(NamedTuple):
    """A neural process adapted to a task: its context set.

    Attributes:
        x: ``(C, x_dim)`` context inputs.
        y: ``(C, y_dim)`` context targets.
        mask: ``(C,)`` bool (``True`` = real point) or ``None`` (all real).
    """

    x: Tensor
    y: Tensor
    mask: Tensor | None


def masked_gaussian_nll(mean: Tensor, var: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Mean Gaussian NLL over the real targets (``mask`` ``(T,)`` bool; ``None`` = all real).

    Equals :func:`metafit.algorithms.cnp.gaussian_nll` of the unpadded targets.
    """
    if mask is None:
        return gaussian_nll(mean, var, target)
    target = target.reshape(mean.shape)
    per = 0.5 * (math.log(2.0 * math.pi) + var.log() + (target - mean).pow(2) / var)
    w = mask.to(mean.dtype).reshape(-1, *([1] * (mean.dim() - 1))).expand_as(mean)
    return (per * w).sum() / w.sum().clamp_min(1.0)


def _masked_mse(mean: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    err = (mean - target.reshape(mean.shape)).pow(2)
    if mask is None:
        return err.mean()
    w = mask.to(mean.dtype).reshape(-1, *([1] * (mean.dim() - 1))).expand_as(mean)
    return (err * w).sum() / w.sum().clamp_min(1.0)


def _forward(model: nn.Module, meta_params: MetaParams, buffers: Buffers, *args: Any, **kwargs: Any) -> Any:
    return functional_call(model, (dict(meta_params["model"]), dict(buffers)), args, kwargs, strict=True)


def _check_scale(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"variance_scale must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class NeuralProcess:
    """A conditional neural process learner for any ``(cx, cy, tx, context_mask) -> (mean, var)`` network.

    Covers the deterministic Attentive NP (Kim et al., ICLR 2019, arXiv 1901.05761), TNP-D
    (Nguyen & Grover, ICML 2022, arXiv 2207.04179) and the CNP (Garnelo et al., ICML 2018, arXiv
    1807.01613, via :class:`~metafit.models.attentive.CNPAdapter`): all are trained by the same
    objective, the Gaussian NLL of the query (target) points given the support (context) points.

    Args:
        variance_scale: Every predictive variance is multiplied by this (1 during meta-training;
            :func:`metafit.algorithms.cnp.recalibrate` fits it on validation tasks and works on
            this learner too).

    Metrics of :meth:`loss`: ``loss`` (= ``nll``), ``nll``, ``mse`` (of the predictive mean).
    """

    variance_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_scale(self.variance_scale)

    @property
    def classification(self) -> bool:
        """Always False (a regression learner; read by the calibration helpers)."""
        return False

    @property
    def spec(self) -> LearnerSpec:
        """Regression, no inner loop, no classification head, no embedding."""
        return LearnerSpec(
            tasks="regression", inner_loop=False, second_order=False, head="none", embeds=False, distribution=True
        )

    def init(self, model: nn.Module, *, generator: torch.Generator | None = None) -> MetaParams:
        """``{"model": params}`` copied from the network."""
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
    ) -> NPContext:
        """The context set itself (no gradient steps): ``support_x (C, x_dim)``, ``support_y (C, y_dim)``."""
        if support_x.shape[0] == 0:
            raise ValueError("support_x must hold at least one context point, got 0 rows")
        return NPContext(support_x, support_y.reshape(support_x.shape[0], -1), None)

    def predict_distribution(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: NPContext, x: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(mean, var)`` each ``(B, y_dim)`` at the inputs ``x (B, x_dim)``."""
        mean, var = _forward(model, meta_params, buffers, adapted.x, adapted.y, x, context_mask=adapted.mask)
        return (mean, var) if self.variance_scale == 1.0 else (mean, var * self.variance_scale)

    def predict(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: NPContext, x: Tensor
    ) -> Tensor:
        """The predictive mean ``(B, y_dim)``."""
        return self.predict_distribution(model, meta_params, buffers, adapted, x)[0]

    def masked_loss(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        context: NPContext,
        target_x: Tensor,
        target_y: Tensor,
        target_mask: Tensor | None,
    ) -> tuple[Tensor, Metrics]:
        """Query NLL of the real targets given a (possibly padded) context."""
        mean, var = self.predict_distribution(model, meta_params, buffers, context, target_x)
        loss = masked_gaussian_nll(mean, var, target_y, target_mask)
        mse = _masked_mse(mean.detach(), target_y, target_mask)
        return loss, {"loss": loss.detach(), "nll": loss.detach(), "mse": mse}

    def loss(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, task: Task) -> tuple[Tensor, Metrics]:
        """Query Gaussian NLL given the support set as context."""
        context = self.adapt(model, meta_params, buffers, task.support_x, task.support_y)
        return self.masked_loss(model, meta_params, buffers, context, task.query_x, task.query_y, None)


def _real(mask: Tensor | None, n: int, device: torch.device) -> Tensor:
    return torch.ones(n, dtype=torch.bool, device=device) if mask is None else mask


class _WrapsNeuralProcess:
    """What a composition over a neural process takes from the learner it wraps (``self.learner``)."""

    learner: Any

    @property
    def classification(self) -> bool:
        """Always False."""
        return False

    @property
    def spec(self) -> LearnerSpec:
        """The wrapped learner's spec."""
        return self.learner.spec

    def init(self, model: nn.Module, *, generator: torch.Generator | None = None) -> MetaParams:
        """As the wrapped learner."""
        return self.learner.init(model, generator=generator)


@dataclass(frozen=True)
class AllPointsLoss(_WrapsNeuralProcess):
    """Trains a :class:`NeuralProcess` on the Gaussian NLL of every point, context and targets.

    The TNP reference code (Nguyen & Grover 2022, github.com/tung-nd/TNP-pytorch) trains its CNP,
    NP and ANP baselines this way: the predictive is evaluated at ``[context; targets]`` and the
    loss is the mean NLL over all of them (its TNP-D on the targets alone, as
    :class:`NeuralProcess` does). Only the training loss changes: ``adapt``, ``predict`` and
    ``predict_distribution`` are the wrapped learner's, and a run scores the wrapped learner (the
    target NLL the NP literature reports: ``metafit eval`` and ``compare`` unwrap it).

    Args:
        learner: The wrapped learner.

    Metrics of :meth:`loss`: ``loss`` (= ``nll``), ``nll`` and ``mse`` over context and targets.
    """

    learner: NeuralProcess = field(default_factory=NeuralProcess)

    def __post_init__(self) -> None:
        if not isinstance(self.learner, NeuralProcess):
            raise TypeError(f"learner must be a NeuralProcess, got {type(self.learner).__name__}")

    def adapt(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        support_x: Tensor,
        support_y: Tensor,
        *,
        n_way: int | None = None,
    ) -> NPContext:
        """As the wrapped learner: the context set."""
        return self.learner.adapt(model, meta_params, buffers, support_x, support_y)

    def predict_distribution(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: NPContext, x: Tensor
    ) -> tuple[Tensor, Tensor]:
        """As the wrapped learner: ``(mean, var)`` each ``(B, y_dim)``."""
        return self.learner.predict_distribution(model, meta_params, buffers, adapted, x)

    def predict(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: NPContext, x: Tensor
    ) -> Tensor:
        """The predictive mean ``(B, y_dim)``."""
        return self.learner.predict(model, meta_params, buffers, adapted, x)

    def masked_loss(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        context: NPContext,
        target_x: Tensor,
        target_y: Tensor,
        target_mask: Tensor | None,
    ) -> tuple[Tensor, Metrics]:
        """Mean NLL over the real points of ``[context; targets]`` (``(C + T, ·)``; padding excluded)."""
        x = torch.cat([context.x, target_x])
        y = torch.cat([context.y, target_y.reshape(target_x.shape[0], -1)])
        mask = None
        if context.mask is not None or target_mask is not None:
            device = context.x.device
            mask = torch.cat(
                [_real(context.mask, context.x.shape[0], device), _real(target_mask, target_x.shape[0], device)]
            )
        return self.learner.masked_loss(model, meta_params, buffers, context, x, y, mask)

    def loss(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, task: Task) -> tuple[Tensor, Metrics]:
        """Gaussian NLL of the support and query points given the support set as context."""
        context = self.adapt(model, meta_params, buffers, task.support_x, task.support_y)
        return self.masked_loss(model, meta_params, buffers, context, task.query_x, task.query_y, None)


@dataclass(frozen=True)
class Padded(_WrapsNeuralProcess):
    """Runs a :class:`NeuralProcess` on padded tasks (inputs with a last 0/1 "real point" column).

    The tasks come from :func:`metafit.data.gp.pad_tasks` or
    :meth:`metafit.data.gp.GPTasks.sample_padded_batch`: ``support_x (C_max, x_dim + 1)`` and
    ``query_x (T_max, x_dim + 1)`` whose last column is 1 for a real point and 0 for padding. The
    context mask keeps padded context points out of every attention and aggregate; the target
    mask keeps padded targets out of the loss and the metrics, so a padded task has exactly the
    loss of the unpadded one (and a batch of tasks of different sizes stacks into one
    ``TaskBatch``). ``adapt`` and ``predict`` take inputs WITH the column; ``predict`` returns a
    row for every input, padded rows included.

    Args:
        learner: The wrapped learner (a :class:`NeuralProcess` or an :class:`AllPointsLoss`).
    """

    learner: NeuralProcess | AllPointsLoss = field(default_factory=NeuralProcess)

    def __post_init__(self) -> None:
        if not isinstance(self.learner, (NeuralProcess, AllPointsLoss)):
            raise TypeError(f"learner must be a NeuralProcess or an AllPointsLoss, got {type(self.learner).__name__}")

    def adapt(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        support_x: Tensor,
        support_y: Tensor,
        *,
        n_way: int | None = None,
    ) -> NPContext:
        """The context with its mask: ``support_x (C_max, x_dim + 1)``, ``support_y (C_max, y_dim)``."""
        x, mask = split_mask(support_x, "support_x")
        return NPContext(x, support_y.reshape(x.shape[0], -1), mask)

    def predict_distribution(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: NPContext, x: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(mean, var)`` ``(B, y_dim)`` at ``x (B, x_dim + 1)`` (the mask column is dropped)."""
        return self.learner.predict_distribution(model, meta_params, buffers, adapted, split_mask(x, "x")[0])

    def predict(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: NPContext, x: Tensor
    ) -> Tensor:
        """The predictive mean ``(B, y_dim)``."""
        return self.predict_distribution(model, meta_params, buffers, adapted, x)[0]

    def loss(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, task: Task) -> tuple[Tensor, Metrics]:
        """Mean NLL of the real query points given the real support points."""
        context = self.adapt(model, meta_params, buffers, task.support_x, task.support_y)
        qx, qmask = split_mask(task.query_x, "query_x")
        return self.learner.masked_loss(model, meta_params, buffers, context, qx, task.query_y, qmask)


class ICLContext(NamedTuple):
    """An in-context classifier adapted to a task: the support set and ``n_way``."""

    x: Tensor
    y: Tensor
    n_way: int


@dataclass(frozen=True)
class InContextLearner:
    """Few-shot classification by an in-context transformer (CAML-style; Fifty et al., ICLR 2024, arXiv 2310.10971).

    The network (:class:`~metafit.models.attentive.InContextClassifier`, or any module with
    ``forward(support_x, support_y, query_x, n_way) -> logits (Q, n_way)``) reads the labelled
    support set and the unlabelled queries in one sequence; meta-training minimises the query
    cross-entropy. Any ``n_way`` up to the network's ``max_way``.

    Metrics of :meth:`loss`: ``loss`` (= ``nll``), ``nll``, ``accuracy``.
    """

    @property
    def classification(self) -> bool:
        """Always True."""
        return True

    @property
    def spec(self) -> LearnerSpec:
        """Classification, no inner loop, ``n_way`` up to the network's ``max_way``."""
        return LearnerSpec(tasks="classification", inner_loop=False, second_order=False, head="max", embeds=False)

    def init(self, model: nn.Module, *, generator: torch.Generator | None = None) -> MetaParams:
        """``{"model": params}`` copied from the network."""
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
    ) -> ICLContext:
        """The support set (no gradient steps); ``n_way`` defaults to ``max(support_y) + 1`` (not vmappable)."""
        if support_x.shape[0] == 0:
            raise ValueError("support_x must hold at least one example, got 0 rows")
        n_way = support_way(support_y, n_way)
        return ICLContext(support_x, support_y, n_way)

    def predict(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: ICLContext, x: Tensor
    ) -> Tensor:
        """Logits ``(B, n_way)`` of the inputs ``x (B, *input_shape)``."""
        return _forward(model, meta_params, buffers, adapted.x, adapted.y, x, adapted.n_way)

    def loss(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, task: Task) -> tuple[Tensor, Metrics]:
        """Query cross-entropy given the support set in context."""
        if task.n_way is None:
            raise ValueError("InContextLearner needs classification tasks with n_way set, got n_way=None")
        state = self.adapt(model, meta_params, buffers, task.support_x, task.support_y, n_way=task.n_way)
        logits = self.predict(model, meta_params, buffers, state, task.query_x)
        check_labels("query_y", task.query_y, task.n_way, what="the task")
        loss = F.cross_entropy(logits, task.query_y)
        acc = (logits.detach().argmax(-1) == task.query_y).to(loss.dtype).mean()
        return loss, {"loss": loss.detach(), "nll": loss.detach(), "accuracy": acc}


# -- registry builders (``build(criterion, **options) -> learner``) ---------------------------------


def build_neural_process(
    criterion: str, *, variance_scale: float = 1.0, loss_points: str = "target"
) -> NeuralProcess | AllPointsLoss:
    """Registry builder of :class:`NeuralProcess` (entries ``"anp"``/``"tnp"``/``"npcnp"``; the network picks the model).

    Args:
        criterion: ``"gaussian_nll"`` or ``"mse"`` (a regression run; the loss is the Gaussian NLL
            either way, as for the CNP entry).
        variance_scale: See :class:`NeuralProcess`.
        loss_points: The points the training NLL is taken over: ``"target"`` (the query points,
            as TNP-D is trained) or ``"all"`` (context and targets, :class:`AllPointsLoss`, as
            the TNP reference code trains its CNP/NP/ANP). Evaluation scores the targets either way.
    """
    if criterion not in ("gaussian_nll", "mse"):
        raise ValueError(
            f"a neural process is a regression learner: criterion must be 'gaussian_nll' or 'mse', got {criterion!r}"
        )
    if loss_points not in ("target", "all"):
        raise ValueError(f"loss_points must be 'target' or 'all', got {loss_points!r}")
    learner = NeuralProcess(variance_scale=variance_scale)
    return learner if loss_points == "target" else AllPointsLoss(learner)


def build_in_context(criterion: str) -> InContextLearner:
    """Registry builder of :class:`InContextLearner` (entry ``"caml"``); ``criterion`` must be ``"cross_entropy"``."""
    if criterion != "cross_entropy":
        raise ValueError(f"the in-context classifier needs criterion='cross_entropy', got {criterion!r}")
    return InContextLearner()
