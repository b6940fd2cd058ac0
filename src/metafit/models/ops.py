"""Pure tensor functions behind the backbones: batch-statistics norm and the fused norm -> ReLU -> pool.

:func:`batch_norm_relu_max_pool` is ``max_pool2d(relu(batch_norm(x)))`` with the batch's own
statistics, computed with fewer passes over the full-resolution activation. Two exact identities:

* ReLU and max-pool commute (``relu`` is monotone), so ``pool(relu(y)) == relu(pool(y))`` and the
  ReLU runs on the pooled tensor, a quarter of the size for 2x2 pooling;
* the ReLU's backward is then a mask on the pooled gradient (``pool(y) > 0``), and the pooling's
  backward scatters only what survives it, so neither the ReLU's full-size output nor its
  full-size backward exists.

The ReLU + pooling is one ``torch.autograd.Function`` built from ATen's own pooling kernels,
whose backward is linear in the incoming gradient and itself differentiable, so second-order
meta-gradients (MAML) through it are exact. The argmax it keeps is the unfused pooling's wherever
the gradient is non-zero and the forward values are bitwise the unfused ones, so gradients equal
the unfused network's (tests compare them). The tensors it keeps for the backward (the norm's
output, the argmax, a pooled-size mask) are what the unfused ReLU and pooling keep, so peak memory
does not grow. Under ``torch.func`` transforms (the engine's vmap paths) and while
``torch.compile`` traces, it computes the unfused composition with the elementary batch norm
(exact under vmap; inductor does its own fusion).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["task_batch_norm", "batch_norm_relu_max_pool"]

_aten = torch.ops.aten
IntPair = int | Sequence[int]


def task_batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Batch normalisation of ``x`` with its own statistics: the function of :class:`TaskBatchNorm`.

    Args:
        x: ``(B, C, *spatial)``; statistics over every dimension but ``C``.
        weight: ``(C,)`` scale or ``None``.
        bias: ``(C,)`` shift or ``None``.
        eps: Added to the (biased) variance.

    Returns:
        Same shape as ``x``.
    """
    if not torch.compiler.is_compiling() and not torch._C._functorch.is_functorch_wrapped_tensor(x):
        # Outside torch.func transforms the fused kernel computes the same function (and its
        # double backward) several times faster; under vmap/grad the elementary form below
        # keeps second-order gradients exact. While torch.compile traces (the engine's
        # "compile" path) the elementary form is used too: it is exact by construction, inductor
        # fuses it, and the functorch check itself would break the graph.
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    dims = [0] + list(range(2, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = (x - mean).pow(2).mean(dim=dims, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = y * weight.view(shape)
        if bias is not None:
            y = y + bias.view(shape)
    return y


def _pair(v: IntPair) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(u) for u in v]


class _ReLUMaxPool(torch.autograd.Function):
    """``max_pool2d(relu(y))`` computed as ``relu(max_pool2d(y))``; see the module docstring."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, y: Tensor, kernel: list[int], stride: list[int], padding: list[int], dilation: list[int],
        ceil_mode: bool,
    ) -> Tensor:
        pooled, indices = _aten.max_pool2d_with_indices(y, kernel, stride, padding, dilation, ceil_mode)
        pooled.relu_()  # relu(pool(y)) == pool(relu(y)); the first argmax agrees wherever pooled > 0
        # Saved: y (only for its shape and layout; the unfused ReLU keeps a tensor that size too),
        # the argmax and the ReLU's mask at the pooled size. Freed when this node's backward is done.
        ctx.save_for_backward(y, indices, pooled > 0)
        ctx.args = (kernel, stride, padding, dilation, ceil_mode)
        return pooled

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        y, indices, mask = ctx.saved_tensors
        # The ReLU's backward at a quarter of the size, then the pooling's; both linear in grad,
        # so their own derivative (second order through this node) is exact too.
        grad = torch.where(mask, grad, 0.0)
        grad_y = _aten.max_pool2d_with_indices_backward(grad, y.detach(), *ctx.args, indices)
        return grad_y, None, None, None, None, None


def batch_norm_relu_max_pool(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float = 1e-5,
    kernel_size: IntPair = 2,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    ceil_mode: bool = False,
) -> Tensor:
    """``F.max_pool2d(F.relu(batch_norm(x)), ...)`` with the batch's own statistics, fused.

    The batch norm normalises each channel with the mean and biased variance of ``x`` over
    ``(B, H, W)`` (as ``nn.BatchNorm2d(track_running_stats=False)`` and
    :class:`~metafit.models.TaskBatchNorm`), then scales by ``weight`` and shifts by ``bias``.

    Args:
        x: ``(B, C, H, W)``.
        weight: ``(C,)`` scale, or ``None`` (no affine transform; then ``bias`` must be ``None``).
        bias: ``(C,)`` shift, or ``None``.
        eps: Added to the variance.
        kernel_size, stride, padding, dilation, ceil_mode: As ``F.max_pool2d`` (``stride=None``
            means ``kernel_size``).

    Returns:
        ``(B, C, H_out, W_out)``, the pooled activations.

    Raises:
        ValueError: ``x`` is not 4-D, or ``weight``/``bias`` do not have ``C`` elements.
    """
    if x.dim() != 4:
        raise ValueError(f"batch_norm_relu_max_pool expected x of shape (B, C, H, W), got {tuple(x.shape)}")
    channels = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (channels,):
            raise ValueError(f"batch_norm_relu_max_pool: {name} must have shape ({channels},), got {tuple(t.shape)}")
    if (weight is None) != (bias is None):
        raise ValueError("batch_norm_relu_max_pool: weight and bias must both be tensors or both None")
    stride = kernel_size if stride is None or (not isinstance(stride, int) and len(stride) == 0) else stride
    if torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(x):
        y = task_batch_norm(x, weight, bias, eps)
        return F.max_pool2d(F.relu(y), kernel_size, stride, padding, dilation, ceil_mode)
    y = F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    return _ReLUMaxPool.apply(y, _pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation), bool(ceil_mode))
