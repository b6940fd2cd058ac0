"""MAML++ (Antoniou, Edwards & Storkey, "How to train your MAML", ICLR 2019, arXiv 1810.09502).

MAML with the paper's fixes, each a separate piece (a pure function or one field of
:class:`MAMLPlusPlus`), testable alone and combined freely:

* **MSL**, multi-step loss (:func:`msl_weights`): the meta-loss is a weighted sum of the query
  losses after every inner step; the weights start uniform and are annealed towards the last step
  over ``msl_iterations`` meta-iterations (after which only the last step counts). The schedule
  is the reference code's (``get_per_step_loss_importance_vector``) with epochs read as
  meta-iterations.
* **LSLR**, learned per-layer per-step inner learning rates: the meta-parameter group
  ``"inner_lr"`` holds one tensor of shape ``(inner_steps,)`` per adapted parameter tensor.
* **BNWB**, per-step normalisation weights and biases (:func:`norm_parameter_names`): the group
  ``"norm"`` holds, for every normalisation-layer parameter of shape ``s``, a tensor of shape
  ``(inner_steps, *s)``; the support forward of inner step ``j`` and the query forward after
  ``j + 1`` steps use row ``j`` (as the reference code's ``num_step``). Those parameters are
  meta-learned only, not adapted in the inner loop (the reference default).
* **BNRS**, per-step batch-norm running statistics: metafit's :class:`~metafit.models.TaskBatchNorm`
  keeps no running statistics; every forward normalises with the statistics of the batch it is
  given (the support set at each inner step, the query set when scoring), so the statistics are
  already per step and per task and there is nothing to store. With BNWB the per-step affine
  parameters are what changes from step to step.
* **DA**, derivative-order annealing (:func:`second_order_at`): first order for the first
  ``first_order_iterations`` meta-iterations, second order afterwards.
* **CA**, cosine annealing of the outer learning rate: no code here; pass
  ``torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_iterations, eta_min=...)``
  as the :class:`~metafit.engine.Trainer`'s ``scheduler`` (stepped once per meta-iteration).

MSL and DA depend on the meta-iteration, which the engine does not pass to a learner: the
training loop calls :meth:`MAMLPlusPlus.at_iteration` before each step and uses the returned copy
(:func:`iteration_callback` does it after every :class:`~metafit.engine.Trainer` step).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from metafit.algorithms.base import (
    LearnerSpec,
    MetaParams,
    Metrics,
    check_inner_lr,
    check_steps,
    criterion_fn,
    regression_criterion,
    support_criterion,
    task_metrics,
)
from metafit.algorithms.maml import GradientEvaluation, inner_gradients
from metafit.data.task import Task
from metafit.functional import Buffers, Params, apply, params_of
from metafit.models.backbones import TaskBatchNorm

__all__ = [
    "MAMLPlusPlus",
    "build_mamlpp",
    "iteration_callback",
    "msl_weights",
    "norm_parameter_names",
    "second_order_at",
]

_NORMS = (TaskBatchNorm, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def msl_weights(steps: int, iteration: int, msl_iterations: int) -> tuple[float, ...]:
    """MSL's per-step query-loss weights at meta-iteration ``iteration`` (a pure function).

    With ``n = steps``: all weights start at ``1/n``; each of the first ``n - 1`` decreases by
    ``iteration / (n * msl_iterations)`` down to ``0.03 / n``, and the last increases by
    ``(n - 1)`` times that, up to ``1 - (n - 1) * 0.03 / n``; they sum to 1. From
    ``iteration >= msl_iterations`` on (and always when ``msl_iterations == 0``) only the last
    step counts: ``(0, ..., 0, 1)``.

    Args:
        steps: Inner steps ``n >= 1``.
        iteration: Current meta-iteration ``>= 0``.
        msl_iterations: Meta-iterations over which the weights are annealed (0: no MSL).

    Returns:
        ``n`` floats, the weight of the query loss after step ``1..n``.
    """
    n = check_steps("steps", steps)
    check_steps("iteration", iteration)
    check_steps("msl_iterations", msl_iterations)
    if n < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if msl_iterations == 0 or iteration >= msl_iterations:
        return (0.0,) * (n - 1) + (1.0,)
    decay = 1.0 / n / msl_iterations
    floor = 0.03 / n
    w = [max(1.0 / n - iteration * decay, floor) for _ in range(n - 1)]
    w.append(min(1.0 / n + iteration * (n - 1) * decay, 1.0 - (n - 1) * floor))
    return tuple(w)


def second_order_at(iteration: int, first_order_iterations: int) -> bool:
    """DA: whether meta-iteration ``iteration`` differentiates through the inner gradients."""
    return check_steps("iteration", iteration) >= check_steps("first_order_iterations", first_order_iterations)


def norm_parameter_names(model: nn.Module) -> tuple[str, ...]:
    """Names (``named_parameters()`` keys) of the parameters of the model's normalisation layers.

    Normalisation layers: :class:`~metafit.models.TaskBatchNorm`, ``nn.BatchNorm*``,
    ``nn.InstanceNorm*``, ``nn.GroupNorm``, ``nn.LayerNorm``.
    """
    known = dict(model.named_parameters())
    names: list[str] = []
    for mod_name, m in model.named_modules():
        if isinstance(m, _NORMS):
            for p_name, _ in m.named_parameters(recurse=False):
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                if full in known and full not in names:
                    names.append(full)
    return tuple(names)


@dataclass(frozen=True)
class MAMLPlusPlus(GradientEvaluation):
    """MAML++ (Antoniou, Edwards & Storkey, ICLR 2019, arXiv 1810.09502); see the module docstring.

    With ``msl_iterations=0``, ``learn_inner_lr=False``, ``per_step_norm=False`` and
    ``first_order_iterations=0`` it is second-order MAML (the tests check it).

    Args:
        inner_lr: The inner step size (the initial value of every learned rate under LSLR).
        inner_steps: Inner updates during meta-training (>= 1).
        criterion: ``"cross_entropy"``, ``"mse"`` or ``"gaussian_nll"`` (as :class:`MAML`).
        msl_iterations: MSL: anneal the per-step weights over this many meta-iterations (0: only
            the last step's query loss, as MAML).
        first_order_iterations: DA: first-order meta-gradients for the first this-many
            meta-iterations (0: second order throughout).
        learn_inner_lr: LSLR: per-parameter-tensor, per-step learned inner rates (group ``"inner_lr"``).
        per_step_norm: BNWB: per-step normalisation weights and biases (group ``"norm"``); the model
            must have normalisation layers.
        iteration: The current meta-iteration (set with :meth:`at_iteration`).
        eval_inner_lr: Step size at evaluation (default ``inner_lr``); learned rates are scaled by
            ``eval_inner_lr / inner_lr``.
        eval_inner_steps: Inner updates at evaluation (default ``inner_steps``); steps past
            ``inner_steps`` reuse the last step's rates and normalisation parameters.
        inner_beta: The inner loop's beta-NLL weight under ``criterion="gaussian_nll"``, as
            :class:`MAML` (``None``: the inner loop descends ``criterion``).
    """

    inner_lr: float = 0.1
    inner_steps: int = 5
    criterion: str = "cross_entropy"
    msl_iterations: int = 0
    first_order_iterations: int = 0
    learn_inner_lr: bool = True
    per_step_norm: bool = True
    iteration: int = 0
    eval_inner_lr: float | None = None
    eval_inner_steps: int | None = None
    inner_beta: float | None = None

    def __post_init__(self) -> None:
        check_inner_lr("inner_lr", self.inner_lr)
        check_steps("inner_steps", self.inner_steps)
        if self.inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1 for MAML++, got {self.inner_steps}")
        check_steps("msl_iterations", self.msl_iterations)
        check_steps("first_order_iterations", self.first_order_iterations)
        check_steps("iteration", self.iteration)
        if self.eval_inner_steps is not None:
            check_steps("eval_inner_steps", self.eval_inner_steps)
        if self.eval_inner_lr is not None:
            check_inner_lr("eval_inner_lr", self.eval_inner_lr)
        support_criterion(self.criterion, self.inner_beta)

    # -- schedule ------------------------------------------------------------------------
    def at_iteration(self, iteration: int) -> MAMLPlusPlus:
        """The learner at meta-iteration ``iteration``: its MSL weights and derivative order.

        The training loop calls it before every meta-iteration (the engine passes no iteration;
        see :func:`iteration_callback`). Iterations past both schedules
        (``max(msl_iterations, first_order_iterations)``) behave identically and are stored as
        that value; when nothing changes ``self`` is returned, so that the engine's compiled-loss
        cache (keyed on the learner object) is reused once the schedules have ended. While MSL
        anneals, every iteration is a new learner: prefer the ``"loop"``/``"vmap"`` paths then.
        """
        it = min(check_steps("iteration", iteration), max(self.msl_iterations, self.first_order_iterations))
        return self if it == self.iteration else replace(self, iteration=it)

    @property
    def step_weights(self) -> tuple[float, ...]:
        """MSL weights of the query losses after steps ``1..inner_steps`` at this iteration."""
        return msl_weights(self.inner_steps, self.iteration, self.msl_iterations)

    @property
    def second_order(self) -> bool:
        """Whether this iteration's meta-gradient is second order (DA)."""
        return second_order_at(self.iteration, self.first_order_iterations)

    @property
    def spec(self) -> LearnerSpec:
        """Gradient-based; declared second order (it becomes so after ``first_order_iterations``)."""
        classification = self.criterion == "cross_entropy"
        return LearnerSpec(
            tasks="classification" if classification else "regression",
            inner_loop=True,
            second_order=True,
            head="fixed" if classification else "none",
            distribution=self.criterion == "gaussian_nll",
        )

    # -- protocol ------------------------------------------------------------------------
    def init(self, model: nn.Module, *, generator: torch.Generator | None = None) -> MetaParams:
        """``{"model", "inner_lr" (LSLR), "norm" (BNWB)}``.

        ``"model"`` holds every parameter except, under BNWB, the normalisation parameters, which
        are in ``"norm"`` with a leading step dimension (each step starts from the model's values).
        """
        params = params_of(model)
        mp: MetaParams = {}
        if self.per_step_norm:
            names = norm_parameter_names(model)
            if not names:
                raise ValueError(
                    "per_step_norm=True needs normalisation layers (TaskBatchNorm, BatchNorm, GroupNorm, "
                    f"LayerNorm) with parameters; the model has none (its parameters: {sorted(params)[:6]})"
                )
            mp["norm"] = {
                k: params[k].detach()[None].repeat(self.inner_steps, *([1] * params[k].dim())).requires_grad_(True)
                for k in names
            }
            params = {k: v for k, v in params.items() if k not in mp["norm"]}
        mp = {"model": params, **mp}
        if self.learn_inner_lr:
            mp["inner_lr"] = {
                k: torch.full((self.inner_steps,), self.inner_lr, dtype=v.dtype, device=v.device).requires_grad_(True)
                for k, v in params.items()
            }
        return mp

    def norm_at(self, meta_params: MetaParams, step: int) -> Params:
        """BNWB: the normalisation parameters of inner step ``step`` (the last row past the end)."""
        if not self.per_step_norm:
            return {}
        if "norm" not in meta_params:
            raise ValueError(
                "per_step_norm=True needs meta_params['norm'] (create meta-parameters with MAMLPlusPlus.init), "
                f"got groups {sorted(meta_params)}"
            )
        j = min(step, self.inner_steps - 1)
        return {k: v[j] for k, v in meta_params["norm"].items()}

    def rates_at(self, meta_params: MetaParams, step: int, lr: float) -> Mapping[str, Tensor | float]:
        """LSLR: the inner rate of each adapted parameter at step ``step`` (scaled by ``lr / inner_lr``)."""
        if not self.learn_inner_lr:
            return {k: lr for k in meta_params["model"]}
        if "inner_lr" not in meta_params:
            raise ValueError(
                "learn_inner_lr=True needs meta_params['inner_lr'] (create meta-parameters with "
                f"MAMLPlusPlus.init), got groups {sorted(meta_params)}"
            )
        j = min(step, self.inner_steps - 1)
        scale = lr / self.inner_lr
        return {k: (v[j] if scale == 1.0 else v[j] * scale) for k, v in meta_params["inner_lr"].items()}

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
    ) -> Iterator[Params]:
        """Yields the full parameters after 0, 1, ..., ``steps`` inner updates.

        After ``k >= 1`` updates the normalisation parameters (BNWB) are those of step ``k - 1``
        (the step that produced the update); after 0 updates those of step 0.

        Args:
            support_x: ``(S, *input_shape)``.
            support_y: ``(S,)`` labels or ``(S, ...)`` targets.
            steps: Number of updates (default ``inner_steps``).
            lr: Step size (default ``inner_lr``).
            create_graph: Differentiate through the updates (default: DA's order at this iteration).
        """
        steps = self.inner_steps if steps is None else check_steps("steps", steps)
        lr = self.inner_lr if lr is None else check_inner_lr("lr", lr)
        create_graph = self.second_order if create_graph is None else create_graph
        crit = support_criterion(self.criterion, self.inner_beta)
        fast = dict(meta_params["model"])
        yield {**fast, **self.norm_at(meta_params, 0)}
        for j in range(steps):
            norm = self.norm_at(meta_params, j)

            def support_loss(p: Params, norm: Params = norm) -> Tensor:
                return crit(apply(model, {**p, **norm}, buffers, support_x), support_y)

            grads = inner_gradients(support_loss, fast, create_graph=create_graph, data=support_x)
            rates = self.rates_at(meta_params, j, lr)
            fast = {k: v - rates[k] * grads[k] for k, v in fast.items()}
            yield {**fast, **norm}

    def loss(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, task: Task) -> tuple[Tensor, Metrics]:
        """MSL: ``sum_k w_k * query_loss(after k steps)``; metrics of the last step.

        Metrics: ``loss`` (the weighted meta-loss), ``final_loss`` and ``accuracy``/``mse`` after the
        last step.
        """
        crit = criterion_fn(self.criterion)
        weights = self.step_weights
        total: Tensor | None = None
        out = final = None
        for k, params in enumerate(self.adapt_steps(model, meta_params, buffers, task.support_x, task.support_y)):
            if k == 0:
                continue
            w = weights[k - 1]
            if w == 0.0:
                continue
            out = apply(model, params, buffers, task.query_x)
            final = crit(out, task.query_y)
            total = w * final if total is None else total + w * final
        assert total is not None and out is not None and final is not None  # the last weight is > 0
        metrics = task_metrics(self.criterion, out, task.query_y, final)
        metrics["final_loss"] = metrics["loss"]
        metrics["loss"] = total.detach()
        return total, metrics


def iteration_callback() -> Any:
    """The :meth:`metafit.engine.Trainer.fit` callback that runs step ``i`` at iteration ``i``.

    It is :class:`metafit.callbacks.LearnerSchedule`: before each step it sets
    ``trainer.algorithm = trainer.algorithm.at_iteration(trainer.step_count)`` (also after a
    resume, where ``step_count`` is restored).

    Example:
        >>> # trainer.fit(batches, steps, callbacks=[iteration_callback()])
    """
    from metafit.callbacks import LearnerSchedule

    return LearnerSchedule()


def build_mamlpp(
    criterion: str,
    *,
    inner_lr: float = 0.1,
    inner_steps: int = 5,
    msl_iterations: int = 0,
    first_order_iterations: int = 0,
    learn_inner_lr: bool = True,
    per_step_norm: bool = True,
    eval_inner_lr: float | None = None,
    eval_inner_steps: int | None = None,
    regression_loss: str = "mse",
    inner_beta: float | None = None,
) -> MAMLPlusPlus:
    """Registry builder for :class:`MAMLPlusPlus` (keyword options with their defaults;
    ``regression_loss`` as :func:`metafit.algorithms.base.regression_criterion`, ``inner_beta`` as
    :func:`metafit.algorithms.base.support_criterion`)."""
    return MAMLPlusPlus(
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        criterion=regression_criterion(criterion, regression_loss),
        msl_iterations=msl_iterations,
        first_order_iterations=first_order_iterations,
        learn_inner_lr=learn_inner_lr,
        per_step_norm=per_step_norm,
        eval_inner_lr=eval_inner_lr,
        eval_inner_steps=eval_inner_steps,
        inner_beta=inner_beta,
    )
