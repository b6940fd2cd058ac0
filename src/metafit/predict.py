"""Adapt and predict: turn a trained learner plus a labelled support set into a classifier.

:class:`Predictor` holds a trained learner (algorithm, model, meta-parameters, buffers);
:meth:`Predictor.adapt` adapts it to a support set exactly as the evaluator does (same inner
steps and step size, no second-order graph) and returns an :class:`AdaptedPredictor`, a callable
mapping new inputs to class scores. :func:`adapt_and_predict` does both in one call.

metafit's backbones normalise with the statistics of the batch they are given (transductive,
like the reference MAML/ProtoNets code), so scores depend on which inputs are scored together;
scoring a task's whole query set in one call reproduces :func:`metafit.evaluation.evaluate`
exactly. A trained run becomes a :class:`Predictor` with :func:`metafit.app.runs.load_predictor`.

Example:
    >>> import torch
    >>> from metafit import MAML
    >>> from metafit.models import MLP
    >>> model = MLP(2, (8,), 3)
    >>> algo = MAML(inner_lr=0.1, inner_steps=2)
    >>> mp = algo.init(model)
    >>> sx, sy = torch.randn(6, 2), torch.arange(3).repeat(2)
    >>> scores = adapt_and_predict(algo, model, mp, sx, sy, torch.randn(4, 2))
    >>> tuple(scores.shape)
    (4, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from metafit.algorithms.base import (
    Algorithm,
    GradientLearner,
    MetaParams,
    check_inner_lr,
    check_labels,
    check_steps,
    clone_meta_params,
)
from metafit.functional import Buffers

__all__ = ["Predictor", "AdaptedPredictor", "adapt_and_predict"]


@dataclass
class AdaptedPredictor:
    """A learner adapted to one support set; call it on inputs ``(B, *input_shape)``.

    Attributes:
        classes: Class names in label order (``None``: labels ``0..n_way-1``).
    """

    algorithm: Algorithm
    model: nn.Module
    meta_params: MetaParams
    buffers: Buffers
    adapted: Any
    n_way: int | None
    classes: list[str] | None = None
    input_shape: tuple[int, ...] | None = None

    def logits(self, x: Tensor) -> Tensor:
        """Raw outputs ``(B, n_way)`` (classification) or ``(B, ...)`` (regression)."""
        if x.dim() < 1 or x.shape[0] == 0:
            raise ValueError(f"x must hold at least one input (B, ...), got shape {tuple(x.shape)}")
        _check_input_shape("x", x, self.input_shape)
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or inf")
        with torch.no_grad():
            return self.algorithm.predict(self.model, self.meta_params, self.buffers, self.adapted, x).detach()

    def distribution(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The Gaussian predictive ``(mean, var)``, each ``(B, d)``, of a learner that has one
        (``spec.distribution``: CNPs, neural processes, gradient learners trained with
        ``criterion="gaussian_nll"``).

        Raises:
            ValueError: a learner without a predictive variance, or bad inputs.
        """
        if not self.algorithm.spec.distribution:
            raise ValueError(
                f"{type(self.algorithm).__name__} has no Gaussian predictive (spec.distribution is False); "
                "train a regression run with a CNP, a neural process or algo.regression_loss='gaussian_nll'"
            )
        self.logits(x)  # the input checks
        with torch.no_grad():
            mean, var = self.algorithm.predict_distribution(  # type: ignore[attr-defined]
                self.model, self.meta_params, self.buffers, self.adapted, x
            )
        return mean.detach(), var.detach()

    def __call__(self, x: Tensor) -> Tensor:
        """Class probabilities ``(B, n_way)`` (softmax of the logits); regression outputs as is."""
        out = self.logits(x)
        return out.softmax(-1) if self.n_way is not None else out


@dataclass
class Predictor:
    """A trained learner ready to adapt to new support sets.

    Args:
        algorithm: The learner.
        model: Its model.
        meta_params: Trained meta-parameters (copied, detached).
        buffers: Model buffers.
        preprocessing: How raw inputs were preprocessed at training (from the checkpoint).
    """

    algorithm: Algorithm
    model: nn.Module
    meta_params: MetaParams
    buffers: Buffers = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.meta_params = clone_meta_params(self.meta_params, requires_grad=False)

    def adapt(
        self,
        support_x: Tensor,
        support_y: Tensor,
        *,
        n_way: int | None = None,
        steps: int | None = None,
        lr: float | None = None,
        classes: Sequence[str] | None = None,
    ) -> AdaptedPredictor:
        """Adapts to a support set.

        Args:
            support_x: ``(S, *input_shape)``.
            support_y: ``(S,)`` int64 labels ``0..n_way-1`` (or regression targets).
            n_way: Number of classes (default ``max(label) + 1`` for int labels).
            steps, lr: Inner-loop overrides (default: the learner's evaluation settings).
            classes: Names of the classes, in label order.

        Raises:
            ValueError: empty/non-finite support, labels out of range, or more classes than a
                fixed-head learner was trained for.
        """
        if support_x.shape[0] == 0 or support_x.shape[0] != support_y.shape[0]:
            raise ValueError(
                f"support_x and support_y must hold the same, non-zero number of examples; got "
                f"{tuple(support_x.shape)} and {tuple(support_y.shape)}"
            )
        _check_input_shape("support_x", support_x, self.input_shape)
        if support_x.is_floating_point() and not bool(torch.isfinite(support_x).all()):
            raise ValueError("support_x contains NaN or inf")
        spec = self.algorithm.spec
        classification = not support_y.is_floating_point()
        if classification:
            n_way = int(support_y.max()) + 1 if n_way is None else n_way
            check_labels("support_y", support_y, n_way, what="the support set")
            head = _head_size(self.meta_params)
            if spec.head == "fixed" and head is not None and head != n_way:
                raise ValueError(
                    f"the support set has {n_way} classes but the model was trained with a {head}-way head; "
                    f"give exactly {head} classes (or train a learner that takes any number, such as protonet)"
                )
        else:
            n_way = None
        if spec.inner_loop:
            assert isinstance(self.algorithm, GradientLearner)
            s = self.algorithm.eval_settings()
            adapted = self.algorithm.adapt(
                self.model,
                self.meta_params,
                self.buffers,
                support_x,
                support_y,
                n_way=n_way,
                steps=s.steps if steps is None else check_steps("steps", steps),
                lr=s.lr if lr is None else check_inner_lr("lr", lr),
                create_graph=False,
            )
        else:
            if steps is not None or lr is not None:
                raise ValueError(f"steps and lr are inner-loop settings, but {type(self.algorithm).__name__} has none")
            adapted = self.algorithm.adapt(
                self.model, self.meta_params, self.buffers, support_x, support_y, n_way=n_way
            )
        if isinstance(adapted, dict):
            adapted = {k: v.detach() for k, v in adapted.items()}
        return AdaptedPredictor(
            self.algorithm,
            self.model,
            self.meta_params,
            self.buffers,
            adapted,
            n_way,
            list(classes) if classes else None,
            self.input_shape,
        )

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """Per-example input shape recorded in the checkpoint (``None``: unknown, not checked)."""
        pre = self.preprocessing
        if pre.get("kind") == "image":
            return (int(pre.get("channels", 1)), int(pre["image_size"]), int(pre["image_size"]))
        if pre.get("input_shape"):
            return tuple(int(v) for v in pre["input_shape"])
        return None


def _check_input_shape(name: str, x: Tensor, expected: tuple[int, ...] | None) -> None:
    if expected is not None and tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"{name} must have per-example shape {expected} (channels, height, width after the checkpoint's "
            f"preprocessing) but got {tuple(x.shape[1:])} (full shape {tuple(x.shape)})"
        )


def _head_size(meta_params: MetaParams) -> int | None:
    w = meta_params.get("model", {}).get("head.weight")
    return int(w.shape[0]) if w is not None else None


def adapt_and_predict(
    algorithm: Algorithm,
    model: nn.Module,
    meta_params: MetaParams,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor | None = None,
    *,
    buffers: Buffers | None = None,
    n_way: int | None = None,
    steps: int | None = None,
    lr: float | None = None,
) -> Tensor | AdaptedPredictor:
    """Adapts to ``(support_x, support_y)``; returns scores for ``query_x`` or the predictor.

    Returns:
        Class probabilities ``(B, n_way)`` for ``query_x`` if given, else the
        :class:`AdaptedPredictor` (a callable).
    """
    adapted = Predictor(algorithm, model, meta_params, buffers or {}).adapt(
        support_x, support_y, n_way=n_way, steps=steps, lr=lr
    )
    return adapted if query_x is None else adapted(query_x)
