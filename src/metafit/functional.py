"""The functional core: parameter dicts of plain ``nn.Module`` s and one strict forward path.

Every forward pass in metafit goes through :func:`apply`, which calls
``torch.func.functional_call(model, (params, buffers), x, strict=True)``: a missing or extra
parameter name is an error, never a silent fallback to the module's own weights. Buffers are
passed in and never mutated: modules that would write into a buffer during the forward pass
(``nn.BatchNorm*`` with running statistics in training mode) get private copies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]
Buffers = dict[str, Tensor]

__all__ = [
    "Params",
    "Buffers",
    "params_of",
    "buffers_of",
    "apply",
    "under_transform",
    "has_batchnorm",
    "writes_buffers",
]


def params_of(model: nn.Module, *, requires_grad: bool = True) -> Params:
    """Returns a fresh dict of detached copies of the model's parameters.

    The copies are leaf tensors (``requires_grad`` as asked), independent of the module,
    keyed by ``named_parameters()`` names. Tied (shared) parameters appear once, under their
    first name, exactly as ``named_parameters()`` reports them.

    Args:
        model: Any ``nn.Module``.
        requires_grad: Whether the copies require grad (meta-parameters do).

    Returns:
        ``{name: tensor}``.
    """
    return {k: v.detach().clone().requires_grad_(requires_grad) for k, v in model.named_parameters()}


def buffers_of(model: nn.Module) -> Buffers:
    """Returns detached copies of the model's buffers, keyed by ``named_buffers()`` names."""
    return {k: v.detach().clone() for k, v in model.named_buffers()}


def writes_buffers(model: nn.Module) -> bool:
    """True if a training-mode forward of ``model`` would write into its buffers.

    This is the case for ``nn.BatchNorm*`` / ``nn.InstanceNorm*`` layers that track running
    statistics.
    """
    return any(isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats for m in model.modules())


def has_batchnorm(model: nn.Module) -> bool:
    """True if ``model`` contains a torch batch/instance-norm layer (fused ATen kernel).

    torch.func.vmap through these kernels gives a wrong second-order gradient in torch 2.13
    (see docs/design.md); metafit's own :class:`metafit.models.TaskNorm` is exact.
    """
    return any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())


def apply(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], *args: Any) -> Any:
    """Runs ``model`` with the given parameters and buffers (strict ``functional_call``).

    Args:
        model: The module whose ``forward`` to run. Its own tensors are not used.
        params: ``{name: tensor}`` for every parameter of ``model``.
        buffers: ``{name: tensor}`` for every buffer of ``model`` (may be empty if it has none).
        *args: Positional inputs to ``forward``, e.g. ``x`` of shape ``(B, *input_shape)``.

    Returns:
        Whatever ``model.forward`` returns.

    Raises:
        RuntimeError: from ``functional_call`` if a name is missing or unexpected.
        ValueError: if the input's per-example shape does not fit the model: checked against the
            model's ``input_shape`` attribute where it has one (metafit's backbones), else
            recognised from torch's shape errors; the message names the actual shape.
    """
    expected = getattr(model, "input_shape", None)
    if expected is not None and args and isinstance(args[0], Tensor) and not _fits(tuple(args[0].shape[1:]), expected):
        raise ValueError(
            f"input of per-example shape {tuple(args[0].shape[1:])} does not fit {type(model).__name__}, which "
            f"expects per-example shape {tuple(expected)} (full input shape {tuple(args[0].shape)})"
        )
    if buffers and writes_buffers(model):
        # Running-stat updates happen in place: hand the module private copies so that
        # the caller's buffers are never mutated.
        buffers = {k: v.clone() for k, v in buffers.items()}
    try:
        return functional_call(model, (dict(params), dict(buffers)), args, strict=True)
    except RuntimeError as e:
        msg = str(e)
        if args and isinstance(args[0], Tensor) and any(p in msg for p in _SHAPE_ERRORS):
            raise ValueError(
                f"input of per-example shape {tuple(args[0].shape[1:])} does not fit {type(model).__name__} "
                f"(full input shape {tuple(args[0].shape)}): {msg.splitlines()[0]}"
            ) from e
        raise


def _fits(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(shape) == len(expected) and all(e is None or e == d for d, e in zip(shape, expected))


# Fragments of torch's messages for inputs whose shape does not fit a layer.
_SHAPE_ERRORS = (
    "shapes cannot be multiplied",
    "to have",
    "size mismatch",
    "Given groups",
    "Expected size",
    "must match the size",
)


def under_transform(*tensors: Tensor | None) -> bool:
    """True while ``torch.compile`` traces, or if any tensor is wrapped by a ``torch.func`` transform.

    Code that has a fast eager form (``torch.autograd.grad``, fused ATen kernels, custom
    ``autograd.Function`` s) checks this and falls back to plain differentiable tensor code that
    vmap, ``torch.func.grad`` and dynamo can trace.
    """
    if torch.compiler.is_compiling():
        return True
    return any(t is not None and bool(torch._C._functorch.is_functorch_wrapped_tensor(t)) for t in tensors)
