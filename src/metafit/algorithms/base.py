"""The algorithm protocol and the helpers every learner shares.

An algorithm is a small frozen dataclass of hyperparameters with pure methods:

* ``init(model, *, generator)`` -> ``MetaParams``: what the outer loop learns, a dict of named
  parameter groups; ``"model"`` holds the model's parameters (``named_parameters()`` names),
  other groups hold extras such as Meta-SGD's inner learning rates.
* ``adapt(model, meta_params, buffers, support_x, support_y, ...)`` -> adapted state (fast
  weights, prototypes, a context embedding), pure.
* ``predict(model, meta_params, buffers, adapted, x)`` -> outputs for new inputs.
* ``loss(model, meta_params, buffers, task)`` -> ``(scalar, metrics)``: the query loss after
  adaptation, differentiable w.r.t. ``meta_params``. The engine maps it over a task batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit.data.task import Task
from metafit.functional import Buffers, Params

MetaParams = dict[str, Params]
Metrics = dict[str, Tensor]

__all__ = [
    "Algorithm",
    "MetaParams",
    "Metrics",
    "CRITERIA",
    "criterion_fn",
    "task_metrics",
    "flat_meta_params",
    "unflat_meta_params",
    "clone_meta_params",
    "is_batched",
]


@runtime_checkable
class Algorithm(Protocol):
    """What the engine, evaluator and ``predict`` need from a learner."""

    def init(self, model: nn.Module, *, generator: torch.Generator | None = None) -> MetaParams: ...

    def adapt(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        support_x: Tensor,
        support_y: Tensor,
        **kwargs: Any,
    ) -> Any: ...

    def predict(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: Any, x: Tensor
    ) -> Tensor: ...

    def loss(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, task: Task
    ) -> tuple[Tensor, Metrics]: ...


def _mse(pred: Tensor, target: Tensor) -> Tensor:
    if pred.shape != target.shape:
        target = target.reshape(pred.shape)
    return F.mse_loss(pred, target)


# The private dict is what criterion_fn reads: torch.compile breaks its graph on a read through a
# mappingproxy once any dict was mutated during tracing (the engine's "compile" path).
_CRITERIA: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"cross_entropy": F.cross_entropy, "mse": _mse}
CRITERIA: Mapping[str, Callable[[Tensor, Tensor], Tensor]] = MappingProxyType(_CRITERIA)


def criterion_fn(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """Returns the task loss function called ``name`` (``cross_entropy`` or ``mse``)."""
    try:
        return _CRITERIA[name]
    except KeyError:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {name!r}") from None


def task_metrics(criterion: str, output: Tensor, target: Tensor, loss: Tensor) -> Metrics:
    """Per-task metrics: ``loss`` plus ``accuracy`` (classification) or ``mse`` (regression)."""
    loss = loss.detach()
    if criterion == "cross_entropy":
        return {"loss": loss, "accuracy": (output.detach().argmax(-1) == target).to(loss.dtype).mean()}
    return {"loss": loss, "mse": loss}


def is_batched(t: Tensor) -> bool:
    """True inside ``torch.func.vmap`` (the tensor is a functorch BatchedTensor)."""
    return bool(torch._C._functorch.is_batchedtensor(t))


def flat_meta_params(meta_params: MetaParams) -> dict[str, Tensor]:
    """``{"group/name": tensor}`` view used by checkpoints and optimizers."""
    return {f"{g}/{k}": v for g, d in meta_params.items() for k, v in d.items()}


def unflat_meta_params(flat: Mapping[str, Tensor]) -> MetaParams:
    """Inverse of :func:`flat_meta_params`."""
    out: MetaParams = {}
    for key, v in flat.items():
        if "/" not in key:
            raise ValueError(f"meta-parameter key must look like 'group/name', got {key!r}")
        g, k = key.split("/", 1)
        out.setdefault(g, {})[k] = v
    return out


def clone_meta_params(meta_params: MetaParams, *, requires_grad: bool = True) -> MetaParams:
    """Detached leaf copies of every meta-parameter."""
    return {
        g: {k: v.detach().clone().requires_grad_(requires_grad) for k, v in d.items()}
        for g, d in meta_params.items()
    }
