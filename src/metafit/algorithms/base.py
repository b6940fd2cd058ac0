"""The learner protocol and the helpers every learner shares.

A learner is a small frozen dataclass of hyperparameters with pure methods:

* ``init(model, *, generator)`` -> ``MetaParams``: what the outer loop learns, a dict of named
  parameter groups; ``"model"`` holds the model's parameters (``named_parameters()`` names),
  other groups hold extras such as Meta-SGD's inner learning rates.
* ``adapt(model, meta_params, buffers, support_x, support_y, *, n_way=None)`` -> adapted state
  (fast weights, prototypes, a context embedding), pure.
* ``predict(model, meta_params, buffers, adapted, x)`` -> outputs for new inputs.
* ``loss(model, meta_params, buffers, task)`` -> ``(scalar, metrics)``: the query loss after
  adaptation, differentiable w.r.t. ``meta_params``. The engine maps it over a task batch.

and one declaration, :attr:`Algorithm.spec` (a :class:`LearnerSpec`): everything the engine,
the evaluator, the predictor and the application need to know about a learner without probing
it. Learners with an inner loop (``spec.inner_loop``) also satisfy :class:`GradientLearner`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit.data.task import Task
from metafit.functional import Buffers, Params

MetaParams = dict[str, Params]
Metrics = dict[str, Tensor]
_LOG_2PI = math.log(2.0 * math.pi)

__all__ = [
    "Algorithm",
    "GradientLearner",
    "LearnerSpec",
    "EvalSettings",
    "MetaParams",
    "Metrics",
    "CRITERIA",
    "criterion_fn",
    "gaussian_nll",
    "beta_nll",
    "BetaNLL",
    "support_criterion",
    "gaussian_output",
    "GAUSSIAN_MIN_VARIANCE",
    "regression_criterion",
    "task_metrics",
    "flat_meta_params",
    "clone_meta_params",
    "check_inner_lr",
    "check_steps",
    "check_labels",
    "check_regression_targets",
]

TaskKind = Literal["classification", "regression", "any"]
HeadKind = Literal["none", "fixed", "max"]


@dataclass(frozen=True)
class LearnerSpec:
    """What a learner needs from the engine, the evaluator and the predictor.

    Attributes:
        tasks: ``"classification"``, ``"regression"`` or ``"any"`` (decided by the criterion).
        inner_loop: The learner adapts by gradient steps on the support set; it then satisfies
            :class:`GradientLearner` (``adapt_steps``, ``adaptation_curve``, ``eval_settings``,
            ``with_eval``) and the evaluator records an adaptation curve.
        second_order: The meta-gradient differentiates through inner gradients (Hessian-vector
            terms). The engine refuses paths known to get those wrong.
        head: How the learner takes ``n_way``: ``"none"`` (any number of classes per task, read
            from the task: metric and set learners), ``"fixed"`` (the model's output layer has
            ``n_way`` units, fixed when the model is built) or ``"max"`` (any number up to the
            model's ``max_way``).
        embeds: The model maps inputs to feature vectors (an embedding network, or a classifier
            whose features before ``head`` are used): such runs can be base models of a fusion.
        distribution: The learner has ``predict_distribution(model, meta_params, buffers,
            adapted, x) -> (mean, var)``, a diagonal Gaussian predictive (regression): the
            evaluator can score its calibration.
    """

    tasks: TaskKind
    inner_loop: bool
    second_order: bool
    head: HeadKind
    embeds: bool = True
    distribution: bool = False

    def __post_init__(self) -> None:
        if self.tasks not in ("classification", "regression", "any"):
            raise ValueError(f"tasks must be 'classification', 'regression' or 'any', got {self.tasks!r}")
        if self.head not in ("none", "fixed", "max"):
            raise ValueError(f"head must be 'none', 'fixed' or 'max', got {self.head!r}")


@dataclass(frozen=True)
class EvalSettings:
    """Inner-loop settings used when a gradient-based learner adapts at evaluation time."""

    steps: int
    lr: float


@runtime_checkable
class Algorithm(Protocol):
    """What the engine, evaluator and ``predict`` need from a learner."""

    @property
    def spec(self) -> LearnerSpec: ...

    def init(self, model: nn.Module, *, generator: torch.Generator | None = None) -> MetaParams: ...

    def adapt(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        support_x: Tensor,
        support_y: Tensor,
        *,
        n_way: int | None = None,
    ) -> Any: ...

    def predict(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: Any, x: Tensor
    ) -> Tensor: ...

    def loss(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, task: Task
    ) -> tuple[Tensor, Metrics]: ...


@runtime_checkable
class GradientLearner(Algorithm, Protocol):
    """A learner whose adaptation is gradient steps (``spec.inner_loop`` is True)."""

    def adapt_steps(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        support_x: Tensor,
        support_y: Tensor,
        *,
        steps: int | None = None,
        lr: float | None = None,
        create_graph: bool | None = None,
    ) -> Iterator[Params]: ...

    def adaptation_curve(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        task: Task,
        *,
        steps: int,
        lr: float | None = None,
    ) -> Metrics: ...

    def eval_settings(self) -> EvalSettings: ...

    def with_eval(self, *, steps: int | None = None, lr: float | None = None) -> GradientLearner: ...


# -- argument checks shared by learners, the evaluator and the predictor ------------------------


def check_steps(name: str, value: object) -> int:
    """``value`` as an int >= 0, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def check_inner_lr(name: str, value: object) -> float:
    """``value`` as a finite float > 0, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_labels(name: str, y: Tensor, n_classes: int, *, what: str = "the head") -> None:
    """Raises ValueError if integer labels ``y`` fall outside ``0..n_classes-1``.

    Skipped under ``torch.func`` transforms and ``torch.compile`` (data-dependent checks cannot
    run there; the evaluator and the samplers check eagerly).
    """
    from metafit.functional import under_transform

    if y.is_floating_point() or y.numel() == 0 or under_transform(y):
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_classes:
        raise ValueError(
            f"{name} must hold class labels in 0..{n_classes - 1} ({what} has {n_classes} classes), "
            f"got labels in {lo}..{hi}"
        )


def support_way(support_y: Tensor, n_way: int | None) -> int:
    """A task's ``n_way``: as given, else ``max(support_y) + 1`` (not vmappable); the support
    labels are checked against it (:func:`check_labels`)."""
    if n_way is None:
        n_way = int(support_y.max()) + 1
    check_labels("support_y", support_y, n_way, what="the task")
    return n_way


def check_regression_targets(name: str, output: Tensor, target: Tensor) -> None:
    """Raises ValueError if regression targets cannot match the model's outputs element for element."""
    if output.shape == target.shape:
        return
    if output.numel() == target.numel() and output.shape[0] == target.shape[0]:
        return  # e.g. (N, 1) outputs against (N,) targets
    raise ValueError(
        f"{name} must match the model's output shape {tuple(output.shape)} (one target per output), "
        f"got shape {tuple(target.shape)}"
    )


def _mse(pred: Tensor, target: Tensor) -> Tensor:
    if pred.shape != target.shape:
        check_regression_targets("targets", pred, target)
        target = target.reshape(pred.shape)
    return F.mse_loss(pred, target)


GAUSSIAN_MIN_VARIANCE = 1e-4
"""Floor of the variance of :func:`gaussian_output` (a standard deviation of 0.01)."""


def gaussian_output(output: Tensor) -> tuple[Tensor, Tensor]:
    """A network's raw output as a diagonal Gaussian predictive (criterion ``"gaussian_nll"``).

    The last dimension holds the means, then the raw variances: ``mean = output[..., :d]``,
    ``var = GAUSSIAN_MIN_VARIANCE + softplus(output[..., d:])`` (positive and bounded below, so
    that a task whose targets the fast weights fit exactly cannot drive the likelihood to
    infinity; the heteroscedastic output of Kendall & Gal, NeurIPS 2017, arXiv 1703.04977).

    Args:
        output: ``(B, 2 * d)``.

    Returns:
        ``(mean, var)``, each ``(B, d)``.

    Raises:
        ValueError: an odd last dimension (a network built for point predictions).
    """
    width = int(output.shape[-1])
    if width % 2:
        raise ValueError(
            f"criterion 'gaussian_nll' needs a network with 2 * y_dim outputs (means, then raw variances), "
            f"got an output of shape {tuple(output.shape)}"
        )
    d = width // 2
    return output[..., :d], GAUSSIAN_MIN_VARIANCE + F.softplus(output[..., d:])


def _gaussian_targets(mean: Tensor, target: Tensor) -> Tensor:
    if mean.shape != target.shape:
        check_regression_targets("targets", mean, target)
        target = target.reshape(mean.shape)
    return target


def _point_nll(mean: Tensor, var: Tensor, target: Tensor) -> Tensor:
    """``-log N(target; mean, var)`` per entry (constant included), the shape of ``mean``."""
    return 0.5 * (_LOG_2PI + var.log() + (target.reshape(mean.shape) - mean).pow(2) / var)


def gaussian_nll(mean: Tensor, var: Tensor, target: Tensor) -> Tensor:
    """Mean negative log-likelihood ``-log N(target; mean, var)`` (constant included), a scalar."""
    return _point_nll(mean, var, target).mean()


def _gaussian_nll(output: Tensor, target: Tensor) -> Tensor:
    mean, var = gaussian_output(output)
    return gaussian_nll(mean, var, _gaussian_targets(mean, target))


def beta_nll(mean: Tensor, var: Tensor, target: Tensor, beta: float) -> Tensor:
    """The beta-NLL of Seitzer, Tavakoli, Antic & Martius (ICLR 2022, arXiv 2203.09168), a scalar.

    Each point's Gaussian NLL is weighted by ``stopgrad(var) ** beta``: the value and gradient at
    ``beta = 0`` are the NLL's; at ``beta = 1`` the gradient w.r.t. the mean is the squared error's
    (``mean - target`` per point, whatever the variance), so a gradient step on the mean no
    longer grows as the predicted variance shrinks.

    Args:
        mean, var: ``(B, d)``; ``var > 0``.
        target: ``(B, d)`` or anything reshaping to it.
        beta: In ``[0, 1]``.
    """
    return (var.detach().pow(beta) * _point_nll(mean, var, target)).mean()


@dataclass(frozen=True)
class BetaNLL:
    """:func:`beta_nll` of a network's raw output (:func:`gaussian_output`) as a task loss
    ``(output, target) -> scalar``; see :func:`support_criterion`."""

    beta: float

    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        mean, var = gaussian_output(output)
        return beta_nll(mean, var, _gaussian_targets(mean, target), self.beta)


def _cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    if logits.dim() >= 2:
        check_labels("labels", target, int(logits.shape[-1]), what="the model's output")
    return F.cross_entropy(logits, target)


# The private dict is what criterion_fn reads: torch.compile breaks its graph on a read through a
# mappingproxy once any dict was mutated during tracing (the engine's "compile" path).
_CRITERIA: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": _cross_entropy,
    "mse": _mse,
    "gaussian_nll": _gaussian_nll,
}
CRITERIA: Mapping[str, Callable[[Tensor, Tensor], Tensor]] = MappingProxyType(_CRITERIA)


def criterion_fn(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """Returns the task loss function called ``name``: ``cross_entropy`` (labels ``(N,)``), ``mse``
    or ``gaussian_nll`` (the mean negative log-likelihood of :func:`gaussian_output`, constant
    included; the network returns ``2 * y_dim`` outputs)."""
    try:
        return _CRITERIA[name]
    except KeyError:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {name!r}") from None


def support_criterion(criterion: str, inner_beta: float | None) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss a gradient-based learner's inner loop descends on the support set.

    ``inner_beta=None``: the learner's criterion itself. A number in ``[0, 1]``: the beta-NLL
    (:class:`BetaNLL`) of the Gaussian predictive, for ``criterion="gaussian_nll"`` only. The
    NLL's gradient w.r.t. the mean scales with the inverse predicted variance, so plain inner
    steps grow without bound as the variance shrinks; ``inner_beta=1`` gives the mean the squared
    error's step while the variance is still fitted. The meta-loss and every reported figure stay
    the Gaussian NLL.

    Raises:
        ValueError: ``inner_beta`` outside ``[0, 1]`` or not a number, or given for another criterion.
    """
    crit = criterion_fn(criterion)
    if inner_beta is None:
        return crit
    if isinstance(inner_beta, bool) or not isinstance(inner_beta, (int, float)) or not 0.0 <= inner_beta <= 1.0:
        raise ValueError(f"inner_beta must be None or a number in [0, 1], got {inner_beta!r}")
    if criterion != "gaussian_nll":
        raise ValueError(
            f"inner_beta (the beta-NLL inner loss) needs criterion='gaussian_nll' (regression_loss='gaussian_nll'), "
            f"got criterion={criterion!r}"
        )
    return BetaNLL(float(inner_beta))


def regression_criterion(criterion: str, regression_loss: str) -> str:
    """The criterion a gradient-based learner's builder uses: the task's (from the data), or for
    regression tasks the one ``regression_loss`` names (``"mse"``: point predictions;
    ``"gaussian_nll"``: a Gaussian predictive, see :func:`gaussian_output`).

    Raises:
        ValueError: an unknown ``regression_loss``, or ``"gaussian_nll"`` for classification tasks.
    """
    if regression_loss not in ("mse", "gaussian_nll"):
        raise ValueError(f"regression_loss must be 'mse' or 'gaussian_nll', got {regression_loss!r}")
    if regression_loss == "mse":
        return criterion
    if criterion == "cross_entropy":
        raise ValueError(
            "regression_loss='gaussian_nll' applies to regression tasks (sinusoid, GP, image completion), "
            "got a classification dataset"
        )
    return "gaussian_nll"


def task_metrics(criterion: str, output: Tensor, target: Tensor, loss: Tensor) -> Metrics:
    """Per-task metrics: ``loss`` plus ``accuracy`` (classification), ``mse`` (regression) or
    ``nll`` and the ``mse`` of the predictive mean (``gaussian_nll``)."""
    loss = loss.detach()
    if criterion == "cross_entropy":
        return {"loss": loss, "accuracy": (output.detach().argmax(-1) == target).to(loss.dtype).mean()}
    if criterion == "gaussian_nll":
        mean = gaussian_output(output.detach())[0]
        return {"loss": loss, "nll": loss, "mse": (mean - _gaussian_targets(mean, target)).pow(2).mean()}
    return {"loss": loss, "mse": loss}


def flat_meta_params(meta_params: MetaParams) -> dict[str, Tensor]:
    """``{"group/name": tensor}`` view used by checkpoints and optimizers."""
    return {f"{g}/{k}": v for g, d in meta_params.items() for k, v in d.items()}


def clone_meta_params(meta_params: MetaParams, *, requires_grad: bool = True) -> MetaParams:
    """Detached leaf copies of every meta-parameter."""
    return {
        g: {k: v.detach().clone().requires_grad_(requires_grad) for k, v in d.items()} for g, d in meta_params.items()
    }
