"""MAML and first-order MAML (Finn, Abbeel & Levine, ICML 2017, arXiv 1703.03400).

Also the shared inner-loop primitive for every gradient-based learner in metafit: Meta-SGD
(:mod:`metafit.algorithms.meta_sgd`) is MAML with learned per-parameter step sizes, ANIL
(:mod:`metafit.algorithms.anil`) is MAML that adapts only the parameters whose names match a
filter, and Reptile (:mod:`metafit.algorithms.reptile`) reuses the same inner loop.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from metafit.algorithms.base import (
    EvalSettings,
    LearnerSpec,
    MetaParams,
    Metrics,
    check_inner_lr,
    check_steps,
    criterion_fn,
    gaussian_output,
    support_criterion,
    task_metrics,
)
from metafit.data.task import Task
from metafit.functional import Buffers, Params, apply, params_of, under_transform

__all__ = ["MAML", "GradientEvaluation", "inner_gradients"]


def inner_gradients(
    loss_fn: Callable[[Params], Tensor],
    params: Params,
    *,
    create_graph: bool,
    data: Tensor | None = None,
) -> Params:
    """Gradient of ``loss_fn(params)`` w.r.t. ``params``.

    Inside ``torch.func.vmap`` or while ``torch.compile`` traces (the engine's ``"compile"`` path)
    this uses ``torch.func.grad`` (``torch.autograd.grad`` cannot run under vmap and would break
    the compiled graph); otherwise plain ``torch.autograd.grad``, which is faster for an eager
    per-task loop. All give the same values (tests check it).

    Args:
        loss_fn: Scalar function of a parameter dict.
        params: The point at which to differentiate.
        create_graph: Keep the graph of the gradient so that an outer backward differentiates
            through it (second order). With ``False`` the gradients are detached constants.
        data: A data tensor that ``loss_fn`` reads (e.g. the support inputs); used to detect
            that the call runs under a torch.func transform such as vmap.

    Returns:
        ``{name: gradient}`` with the shapes of ``params``.
    """
    if under_transform(data, *params.values()):
        grads = torch.func.grad(loss_fn)(params)
        return grads if create_graph else {k: g.detach() for k, g in grads.items()}
    with torch.enable_grad():
        inputs = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in params.items()}
        loss = loss_fn(inputs)
        gs = torch.autograd.grad(loss, list(inputs.values()), create_graph=create_graph)
    return dict(zip(inputs.keys(), gs))


def _matches(name: str, prefixes: tuple[str, ...] | None) -> bool:
    return prefixes is None or any(name == p.rstrip(".") or name.startswith(p) for p in prefixes)


class GradientEvaluation:
    """What the gradient-based learners (MAML, MAML++) share: adaptation as the last of
    ``adapt_steps``, and the evaluation-time settings and adaptation curve.

    A learner using it has the fields ``inner_lr``, ``inner_steps``, ``eval_inner_lr``,
    ``eval_inner_steps``, ``criterion`` and ``inner_beta`` and the method ``adapt_steps``; it is a frozen
    dataclass, so :meth:`with_eval` returns a copy.
    """

    inner_lr: float
    inner_steps: int
    eval_inner_lr: float | None
    eval_inner_steps: int | None
    criterion: str
    inner_beta: float | None

    def adapt(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        support_x: Tensor,
        support_y: Tensor,
        *,
        n_way: int | None = None,
        steps: int | None = None,
        lr: float | None = None,
        create_graph: bool | None = None,
    ) -> Params:
        """Fast weights after ``steps`` inner updates on the support set.

        ``n_way`` is accepted for the protocol; the head's size fixes the classes. ``steps``,
        ``lr`` and ``create_graph`` default to the training settings (see :meth:`adapt_steps`).
        """
        steps_iter = self.adapt_steps(
            model, meta_params, buffers, support_x, support_y, steps=steps, lr=lr, create_graph=create_graph
        )
        return collections.deque(steps_iter, maxlen=1)[0]  # the last step's parameters, none kept before it

    def predict(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: Params, x: Tensor
    ) -> Tensor:
        """Model outputs ``(B, ...)`` at the adapted parameters; the predictive mean ``(B, d)``
        under ``criterion="gaussian_nll"``."""
        out = apply(model, adapted, buffers, x)
        return gaussian_output(out)[0] if self.criterion == "gaussian_nll" else out

    def predict_distribution(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: Params, x: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The diagonal Gaussian predictive ``(mean, var)``, each ``(B, d)``, at the adapted
        parameters (:func:`metafit.algorithms.base.gaussian_output`).

        Raises:
            ValueError: a learner not trained with ``criterion="gaussian_nll"`` (it has no variance).
        """
        if self.criterion != "gaussian_nll":
            raise ValueError(
                f"predict_distribution needs criterion='gaussian_nll' (a network with a variance output), "
                f"got criterion={self.criterion!r}"
            )
        return gaussian_output(apply(model, adapted, buffers, x))

    def eval_settings(self) -> EvalSettings:
        """Inner steps and step size used when adapting at evaluation time."""
        return EvalSettings(
            steps=self.inner_steps if self.eval_inner_steps is None else self.eval_inner_steps,
            lr=self.inner_lr if self.eval_inner_lr is None else self.eval_inner_lr,
        )

    def with_eval(self, *, steps: int | None = None, lr: float | None = None) -> Any:
        """A copy whose evaluation-time inner steps / step size are replaced (``None``: keep)."""
        changes: dict[str, object] = {}
        if steps is not None:
            changes["eval_inner_steps"] = check_steps("steps", steps)
        if lr is not None:
            changes["eval_inner_lr"] = check_inner_lr("lr", lr)
        return replace(self, **changes) if changes else self

    def adaptation_curve(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        task: Task,
        *,
        steps: int,
        lr: float | None = None,
    ) -> Metrics:
        """Query metrics after 0..``steps`` inner updates, each a tensor of shape ``(steps+1,)``."""
        lr = self.eval_settings().lr if lr is None else lr
        crit = criterion_fn(self.criterion)
        rows: list[Metrics] = []
        for params in self.adapt_steps(
            model, meta_params, buffers, task.support_x, task.support_y, steps=steps, lr=lr, create_graph=False
        ):
            with torch.no_grad():
                out = apply(model, params, buffers, task.query_x)
                rows.append(task_metrics(self.criterion, out, task.query_y, crit(out, task.query_y)))
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


@dataclass(frozen=True)
class MAML(GradientEvaluation):
    """Model-Agnostic Meta-Learning (Finn et al. 2017), second or first order.

    Adaptation takes ``inner_steps`` steps of gradient descent on the support loss from the
    meta-learned initialisation; the meta-loss is the query loss at the adapted parameters.
    With ``first_order=False`` the meta-gradient backpropagates through every inner update
    (Hessian-vector terms included); with ``first_order=True`` the inner gradients are treated
    as constants (FOMAML, §5.2 of the paper).

    Args:
        inner_lr: Step size alpha of the inner updates during meta-training.
        inner_steps: Inner updates during meta-training.
        first_order: Drop the second-order terms.
        criterion: ``"cross_entropy"`` (labels ``(N,)``), ``"mse"`` (targets ``(N, ...)``) or
            ``"gaussian_nll"`` (targets ``(N, d)``; the network returns ``2 * d`` outputs, means then
            raw variances, and the learner has a Gaussian predictive: ``predict_distribution``).
        eval_inner_lr: Step size at evaluation/adaptation time (default: ``inner_lr``).
        eval_inner_steps: Inner updates at evaluation time (default: ``inner_steps``).
        adapt_only: Name prefixes of the parameters updated in the inner loop (``None``: all).
            The others stay at their meta-learned values during adaptation but are still
            meta-learned. ``("head.",)`` gives ANIL.
        inner_beta: ``None``: the inner loop descends ``criterion``. A number in ``[0, 1]`` (with
            ``criterion="gaussian_nll"``): it descends the beta-NLL of Seitzer et al. 2022 instead
            (:func:`metafit.algorithms.base.support_criterion`), which bounds the mean's step as the
            predicted variance shrinks; the meta-loss stays the NLL.

    Example:
        >>> import torch
        >>> from metafit.models import MLP
        >>> model = MLP(1, (8,), 1)
        >>> algo = MAML(inner_lr=0.01, inner_steps=1, criterion="mse")
        >>> mp = algo.init(model)
        >>> sorted(mp)
        ['model']
    """

    inner_lr: float = 0.01
    inner_steps: int = 1
    first_order: bool = False
    criterion: str = "cross_entropy"
    eval_inner_lr: float | None = None
    eval_inner_steps: int | None = None
    adapt_only: tuple[str, ...] | None = field(default=None)
    inner_beta: float | None = None

    def __post_init__(self) -> None:
        check_inner_lr("inner_lr", self.inner_lr)
        check_steps("inner_steps", self.inner_steps)
        if self.eval_inner_steps is not None:
            check_steps("eval_inner_steps", self.eval_inner_steps)
        if self.eval_inner_lr is not None:
            check_inner_lr("eval_inner_lr", self.eval_inner_lr)
        support_criterion(self.criterion, self.inner_beta)
        if self.adapt_only is not None:
            object.__setattr__(self, "adapt_only", tuple(self.adapt_only))

    @property
    def spec(self) -> LearnerSpec:
        """Gradient-based, second order unless ``first_order`` (or no inner step); fixed head; a
        Gaussian predictive under ``criterion="gaussian_nll"``."""
        classification = self.criterion == "cross_entropy"
        return LearnerSpec(
            tasks="classification" if classification else "regression",
            inner_loop=True,
            second_order=not self.first_order and self.inner_steps > 0,
            head="fixed" if classification else "none",
            distribution=self.criterion == "gaussian_nll",
        )

    # -- protocol -----------------------------------------------------------------------
    def init(self, model: nn.Module, *, generator: torch.Generator | None = None) -> MetaParams:
        """Meta-parameters ``{"model": params}`` copied from ``model``."""
        params = params_of(model)
        if self.adapt_only is not None and not any(_matches(k, self.adapt_only) for k in params):
            raise ValueError(
                f"adapt_only={self.adapt_only} matches no parameter of the model; "
                f"its parameters are {sorted(params)[:8]}"
            )
        return {"model": params}

    def step_sizes(self, meta_params: MetaParams, lr: float) -> Mapping[str, Tensor | float]:
        """Inner step size per parameter name (a scalar for MAML; Meta-SGD overrides)."""
        return {k: lr for k in meta_params["model"]}

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
        """Yields the parameters after 0, 1, ..., ``steps`` inner updates.

        Args:
            support_x: ``(S, *input_shape)``.
            support_y: ``(S,)`` labels or ``(S, ...)`` targets.
            steps: Number of updates (default ``inner_steps``).
            lr: Step size (default ``inner_lr``).
            create_graph: Differentiate through the updates (default: ``not first_order``).
        """
        steps = self.inner_steps if steps is None else check_steps("steps", steps)
        lr = self.inner_lr if lr is None else check_inner_lr("lr", lr)
        create_graph = (not self.first_order) if create_graph is None else create_graph
        crit = support_criterion(self.criterion, self.inner_beta)
        params = meta_params["model"]
        adapted = {k: v for k, v in params.items() if _matches(k, self.adapt_only)}
        fixed = {k: v for k, v in params.items() if k not in adapted}
        rates = self.step_sizes(meta_params, lr)

        def support_loss(p: Params) -> Tensor:
            return crit(apply(model, {**fixed, **p}, buffers, support_x), support_y)

        yield {**fixed, **adapted}
        for _ in range(steps):
            grads = inner_gradients(support_loss, adapted, create_graph=create_graph, data=support_x)
            adapted = {k: v - rates[k] * grads[k] for k, v in adapted.items()}
            yield {**fixed, **adapted}

    def loss(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, task: Task) -> tuple[Tensor, Metrics]:
        """Query loss after adaptation on the support set (the MAML meta-objective)."""
        fast = self.adapt(model, meta_params, buffers, task.support_x, task.support_y)
        out = apply(model, fast, buffers, task.query_x)
        loss = criterion_fn(self.criterion)(out, task.query_y)
        return loss, task_metrics(self.criterion, out, task.query_y, loss)
