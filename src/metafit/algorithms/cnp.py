"""Conditional Neural Processes as a metafit learner (Garnelo et al., ICML 2018, arXiv 1807.01613).

A CNP is a model-based meta-learner: everything it learns is in the network weights, and
adapting to a task is a forward pass. ``adapt`` encodes the support (context) set and
aggregates it into a representation (no gradient steps); ``predict`` decodes targets against
it; ``loss`` is the query negative log-likelihood (Gaussian NLL for regression, cross-entropy
for classification), so the engine meta-trains a CNP exactly like any other learner (vmap or
loop path) and :func:`metafit.evaluate` scores it through ``loss``.

The network is a :class:`metafit.models.CNPRegressor` or :class:`metafit.models.CNPClassifier`
(or any module with the same ``method="encode"|"decode"`` dispatch).

Also here: the calibration of the Gaussian predictive intervals (:func:`interval_coverage`,
:func:`calibration`) and a matplotlib plot of predictions on sinusoid tasks
(:func:`plot_regression_tasks`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metafit.algorithms.base import LearnerSpec, MetaParams, Metrics, gaussian_nll
from metafit.data.task import Task, TaskBatch
from metafit.functional import Buffers, params_of

__all__ = [
    "CNP",
    "CNPState",
    "gaussian_nll",
    "interval_coverage",
    "calibration",
    "recalibrate",
    "COVERAGE_LEVELS",
]

COVERAGE_LEVELS = (0.5, 0.9, 0.95)


def _z(level: float) -> float:
    """Half-width in standard deviations of the central ``level`` Gaussian interval."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level must be in (0, 1), got {level}")
    return math.sqrt(2.0) * float(torch.special.erfinv(torch.tensor(level, dtype=torch.float64)))


def interval_coverage(
    mean: Tensor, var: Tensor, target: Tensor, levels: Sequence[float] = COVERAGE_LEVELS
) -> dict[float, Tensor]:
    """Fraction of targets inside the central Gaussian intervals ``mean ± z_level * sd``.

    Args:
        mean: ``(B, ...)`` predictive means.
        var: ``(B, ...)`` predictive variances (> 0).
        target: Targets with ``mean.numel()`` elements.
        levels: Nominal coverages, e.g. ``(0.5, 0.9, 0.95)``.

    Returns:
        ``{level: scalar tensor}``; a calibrated model gives ``coverage ≈ level``.
    """
    err = (target.reshape(mean.shape) - mean).abs() / var.sqrt()
    return {lv: (err <= _z(lv)).to(mean.dtype).mean() for lv in levels}


class CNPState(NamedTuple):
    """A CNP adapted to a task: the aggregated context representation.

    Attributes:
        r: ``(r_dim,)`` for regression, ``(n_way, r_dim)`` for classification.
        n_way: Number of classes (``None`` for regression).
    """

    r: Tensor
    n_way: int | None


def _call(model: nn.Module, meta_params: MetaParams, buffers: Buffers, method: str, *args: Any) -> Any:
    # One strict functional_call over every parameter (as metafit.functional.apply), running a
    # single stage of the network selected by the ``method`` keyword.
    return functional_call(model, (dict(meta_params["model"]), dict(buffers)), args, {"method": method}, strict=True)


@dataclass(frozen=True)
class CNP:
    """Conditional Neural Process learner (Garnelo et al. 2018).

    Args:
        criterion: ``"gaussian_nll"`` (regression, the network returns ``(mean, var)``) or
            ``"cross_entropy"`` (classification, the network returns logits; tasks must carry
            ``n_way``).
        variance_scale: Regression: the network's predictive variance is multiplied by this
            factor (1 during meta-training). :func:`recalibrate` fits it on held-out
            validation tasks after training (post-hoc recalibration, Kuleshov et al. 2018).

    Metrics of :meth:`loss`: regression ``loss`` (= ``nll``), ``nll``, ``mse`` (of the predictive
    mean); classification ``loss`` (= ``nll``), ``nll``, ``accuracy``.

    Example:
        >>> import torch
        >>> from metafit.models import CNPRegressor
        >>> from metafit.data import sinusoid_eval_tasks
        >>> model, algo = CNPRegressor(r_dim=16, encoder_hidden=(16,), decoder_hidden=(16,)), CNP()
        >>> mp = algo.init(model)
        >>> task = sinusoid_eval_tasks(1, 5, 10)[0]
        >>> state = algo.adapt(model, mp, {}, task.support_x, task.support_y)
        >>> algo.predict(model, mp, {}, state, task.query_x).shape
        torch.Size([10, 1])
    """

    criterion: str = "gaussian_nll"
    variance_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.criterion not in ("gaussian_nll", "cross_entropy"):
            raise ValueError(f"criterion must be 'gaussian_nll' or 'cross_entropy', got {self.criterion!r}")
        if (
            isinstance(self.variance_scale, bool)
            or not isinstance(self.variance_scale, (int, float))
            or not math.isfinite(self.variance_scale)
            or self.variance_scale <= 0
        ):
            raise ValueError(f"variance_scale must be a finite number > 0, got {self.variance_scale!r}")

    @property
    def classification(self) -> bool:
        """True for a classifier (``criterion="cross_entropy"``)."""
        return self.criterion == "cross_entropy"

    @property
    def spec(self) -> LearnerSpec:
        """No inner loop; a classifier takes up to the network's ``max_way`` classes."""
        return LearnerSpec(
            tasks="classification" if self.classification else "regression",
            inner_loop=False,
            second_order=False,
            head="max" if self.classification else "none",
            embeds=False,
            distribution=not self.classification,
        )

    # -- protocol -----------------------------------------------------------------------
    def init(self, model: nn.Module, *, generator: torch.Generator | None = None) -> MetaParams:
        """``{"model": params}`` copied from the network (its initialisation is the model's)."""
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
    ) -> CNPState:
        """Encodes and aggregates the context set: no gradient steps.

        Args:
            support_x: ``(C, *input_shape)``, any ``C >= 1``.
            support_y: ``(C, y_dim)`` targets or ``(C,)`` labels.
            n_way: Classes (classification; default ``max(support_y) + 1``, not vmappable).
        """
        if self.classification:
            if n_way is None:
                n_way = int(support_y.max()) + 1
            return CNPState(_call(model, meta_params, buffers, "encode", support_x, support_y, n_way), n_way)
        return CNPState(_call(model, meta_params, buffers, "encode", support_x, support_y), None)

    def predict_distribution(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: CNPState, x: Tensor
    ) -> Any:
        """Regression: ``(mean, var)`` each ``(B, y_dim)``; classification: logits ``(B, n_way)``."""
        out = _call(model, meta_params, buffers, "decode", x, adapted.r)
        if self.classification or self.variance_scale == 1.0:
            return out
        mean, var = out
        return mean, var * self.variance_scale

    def predict(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: CNPState, x: Tensor
    ) -> Tensor:
        """Point predictions: the predictive mean ``(B, y_dim)``, or logits ``(B, n_way)``."""
        out = self.predict_distribution(model, meta_params, buffers, adapted, x)
        return out[0] if not self.classification else out

    def loss(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, task: Task) -> tuple[Tensor, Metrics]:
        """Query NLL given the support set as context (the CNP objective, eq. 4 of the paper)."""
        if self.classification and task.n_way is None:
            raise ValueError("CNP(criterion='cross_entropy') needs tasks with n_way set")
        state = self.adapt(model, meta_params, buffers, task.support_x, task.support_y, n_way=task.n_way)
        out = self.predict_distribution(model, meta_params, buffers, state, task.query_x)
        if self.classification:
            loss = F.cross_entropy(out, task.query_y)
            acc = (out.detach().argmax(-1) == task.query_y).to(loss.dtype).mean()
            return loss, {"loss": loss.detach(), "nll": loss.detach(), "accuracy": acc}
        mean, var = out
        loss = gaussian_nll(mean, var, task.query_y)
        mse = (mean.detach() - task.query_y.reshape(mean.shape)).pow(2).mean()
        return loss, {"loss": loss.detach(), "nll": loss.detach(), "mse": mse}


def calibration(
    algorithm: CNP,
    model: nn.Module,
    meta_params: MetaParams,
    tasks: TaskBatch | Sequence[Task],
    *,
    buffers: Buffers | None = None,
    levels: Sequence[float] = COVERAGE_LEVELS,
) -> dict[float, list[float]]:
    """Per-task coverage of the central Gaussian intervals on held-out tasks.

    Args:
        algorithm: A learner with a Gaussian predictive (``spec.distribution``: a regression
            :class:`CNP`, a neural process, MAML with ``criterion="gaussian_nll"``).
        model: The network.
        meta_params: Trained meta-parameters.
        tasks: Held-out tasks; coverage is measured on each task's query set given its support.
        buffers: Model buffers (default none).
        levels: Nominal coverages.

    Returns:
        ``{level: [coverage of task 0, task 1, ...]}`` (summarise with :func:`metafit.summarize`).
    """
    if not algorithm.spec.distribution:
        raise ValueError(
            "calibration needs a learner with a Gaussian predictive (a regression CNP or neural process, "
            f"or a gradient-based learner with criterion='gaussian_nll'), got {type(algorithm).__name__}"
        )
    out: dict[float, list[float]] = {lv: [] for lv in levels}
    for task, mean, var in _query_predictions(algorithm, model, meta_params, tasks, buffers or {}):
        for lv, c in interval_coverage(mean, var, task.query_y, levels).items():
            out[lv].append(float(c))
    return out


def _query_predictions(
    algorithm: CNP, model: nn.Module, meta_params: MetaParams, tasks: TaskBatch | Sequence[Task], buffers: Buffers
) -> Iterator[tuple[Task, Tensor, Tensor]]:
    """``(task, mean, var)`` of each task's query set given its support set (no grad). A
    gradient-based learner adapts with its evaluation settings (``eval_settings()``), as
    :func:`metafit.evaluation.evaluate` does."""
    kw: dict[str, Any] = {}
    if algorithm.spec.inner_loop:
        es = algorithm.eval_settings()  # type: ignore[attr-defined]
        kw = {"steps": es.steps, "lr": es.lr}
    with torch.no_grad():
        for task in tasks:
            state = algorithm.adapt(model, meta_params, buffers, task.support_x, task.support_y, **kw)
            mean, var = algorithm.predict_distribution(model, meta_params, buffers, state, task.query_x)
            yield task, mean, var


def recalibrate(
    algorithm: CNP,
    model: nn.Module,
    meta_params: MetaParams,
    tasks: TaskBatch | Sequence[Task],
    *,
    buffers: Buffers | None = None,
    method: str = "nll",
    level: float = 0.9,
) -> CNP:
    """Fits the CNP's ``variance_scale`` on validation tasks (post-hoc recalibration).

    A CNP trained by maximum likelihood can still be over- or under-confident on new tasks (the
    variance floor, finite training). One scalar ``s`` rescales every predictive variance,
    ``var' = s * var``; the mean, hence the MSE, is unchanged. It is fitted on VALIDATION tasks
    (never the test tasks), as temperature scaling is for classifiers (Guo et al. 2017;
    Kuleshov et al. 2018 for regression):

    * ``method="nll"``: the ``s`` that minimises the Gaussian NLL of the validation query
      targets, in closed form ``s = mean((y - mu)^2 / var)``;
    * ``method="quantile"``: the ``s`` that makes the central ``level`` interval cover exactly
      ``level`` of the validation targets, ``s = (q_level(|y - mu| / sd) / z_level)^2``
      (a split-conformal calibration of that one interval).

    Args:
        algorithm: A regression :class:`CNP` (its current ``variance_scale`` is replaced).
        model: The network.
        meta_params: Trained meta-parameters.
        tasks: Validation tasks (support = context, query = targets).
        buffers: Model buffers (default none).
        method: ``"nll"`` or ``"quantile"``.
        level: Interval level for ``method="quantile"``.

    Returns:
        ``dataclasses.replace(algorithm, variance_scale=s)``.
    """
    if not algorithm.spec.distribution or not hasattr(algorithm, "variance_scale"):
        raise ValueError(
            "recalibrate needs a learner with a Gaussian predictive and a variance_scale (a regression CNP or "
            f"neural process), got {type(algorithm).__name__}"
        )
    if method not in ("nll", "quantile"):
        raise ValueError(f"method must be 'nll' or 'quantile', got {method!r}")
    base = dataclasses.replace(algorithm, variance_scale=1.0)
    z2 = [
        ((task.query_y.reshape(mean.shape) - mean).pow(2) / var).flatten().double()
        for task, mean, var in _query_predictions(base, model, meta_params, tasks, buffers or {})
    ]
    if not z2:
        raise ValueError("recalibrate needs at least one validation task")
    allz2 = torch.cat(z2)
    if method == "nll":
        s = float(allz2.mean())
    else:
        s = float(torch.quantile(allz2.sqrt(), level)) ** 2 / _z(level) ** 2
    return dataclasses.replace(algorithm, variance_scale=max(s, 1e-12))
