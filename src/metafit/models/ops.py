"""Pure tensor functions behind the backbones: batch-statistics norm and the fused block functions.

Each computes a standard composition with fewer passes over the full-resolution activation (the
CPU cost of a Conv-4 block is mostly memory traffic), from exact identities:

* :func:`relu_max_pool`: ReLU and max-pool commute (``relu`` is monotone), so
  ``pool(relu(y)) == relu(pool(y))`` and the ReLU and its backward run at the pooled size, a
  quarter of the size for 2x2 pooling. One ``torch.autograd.Function`` built from ATen's kernels,
  whose backward is linear in the incoming gradient and itself differentiable, so second-order
  meta-gradients (MAML) through it are exact. The argmax it keeps is the unfused pooling's
  wherever the gradient is non-zero; it keeps for the backward what the unfused ReLU and pooling
  keep, so peak memory does not grow.
* :func:`conv_batch_norm`: a thin convolution (``C_in * kh * kw <= THIN_CONV_MAX_K``, e.g. the
  first layer of a grey-scale network) followed by a batch-statistics norm is one matrix
  product, its statistics from the patches' covariance (see the function).
* :func:`batch_norm_relu_max_pool`: :func:`task_batch_norm` then :func:`relu_max_pool`.

Values and (second-order) gradients equal the plain composition's up to float rounding (tests in
float64). Under ``torch.func`` transforms (the engine's vmap paths) and while ``torch.compile``
traces, the batch norm is the elementary one (exact under vmap) and :func:`relu_max_pool` is the
plain composition (inductor does its own fusion); :func:`conv_batch_norm` is elementary tensor
code and runs unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["task_batch_norm", "relu_max_pool", "batch_norm_relu_max_pool", "conv_batch_norm", "THIN_CONV_MAX_K"]

_aten = torch.ops.aten
IntPair = int | Sequence[int]


def _transformed(x: Tensor) -> bool:
    """True while torch.compile traces or under torch.func transforms: use elementary ops then."""
    return torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(x)


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
    if not _transformed(x):
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
        ctx: Any,
        y: Tensor,
        kernel: list[int],
        stride: list[int],
        padding: list[int],
        dilation: list[int],
        ceil_mode: bool,
    ) -> Tensor:
        pooled, indices = _aten.max_pool2d_with_indices(y, kernel, stride, padding, dilation, ceil_mode)
        pooled.relu_()  # relu(pool(y)) == pool(relu(y)); the first argmax agrees wherever pooled > 0
        # Saved: y (only for its shape and layout; the unfused ReLU keeps a tensor that size too),
        # the argmax, and the output (the next layer keeps it anyway). Freed after this backward.
        ctx.save_for_backward(y, indices, pooled)
        ctx.args = (kernel, stride, padding, dilation, ceil_mode)
        return pooled

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        y, indices, pooled = ctx.saved_tensors
        # The ReLU's backward at the pooled size (ATen's own kernel), then the pooling's; both
        # linear in grad, so their own derivative (second order through this node) is exact too.
        grad = _aten.threshold_backward(grad, pooled.detach(), 0)
        grad_y = _aten.max_pool2d_with_indices_backward(grad, y.detach(), *ctx.args, indices)
        return grad_y, None, None, None, None, None


def relu_max_pool(
    y: Tensor,
    kernel_size: IntPair = 2,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    ceil_mode: bool = False,
) -> Tensor:
    """``F.max_pool2d(F.relu(y), ...)`` with the ReLU applied after the pooling (same values/gradients).

    Args:
        y: ``(B, C, H, W)``.
        kernel_size, stride, padding, dilation, ceil_mode: As ``F.max_pool2d`` (``stride=None``
            means ``kernel_size``).

    Returns:
        ``(B, C, H_out, W_out)``.
    """
    stride = kernel_size if stride is None or (not isinstance(stride, int) and len(stride) == 0) else stride
    if _transformed(y):
        return F.max_pool2d(F.relu(y), kernel_size, stride, padding, dilation, ceil_mode)
    return _ReLUMaxPool.apply(y, _pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation), bool(ceil_mode))


def _check_norm_args(fn: str, channels: int, weight: Tensor | None, bias: Tensor | None) -> None:
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (channels,):
            raise ValueError(f"{fn}: {name} must have shape ({channels},), got {tuple(t.shape)}")
    if (weight is None) != (bias is None):
        raise ValueError(f"{fn}: weight and bias must both be tensors or both None")


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
    :class:`~metafit.models.TaskBatchNorm`), then scales by ``weight`` and shifts by ``bias``;
    :func:`relu_max_pool` follows.

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
    _check_norm_args("batch_norm_relu_max_pool", x.shape[1], weight, bias)
    return relu_max_pool(task_batch_norm(x, weight, bias, eps), kernel_size, stride, padding, dilation, ceil_mode)


#: Largest ``C_in * kh * kw`` for which :func:`conv_batch_norm` uses its one-matmul form.
THIN_CONV_MAX_K = 32


def conv_batch_norm(
    x: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float = 1e-5,
    stride: IntPair = 1,
    padding: IntPair = 0,
) -> Tensor:
    """``batch_norm(F.conv2d(x, conv_weight, conv_bias, stride, padding))`` with batch statistics.

    For a thin convolution (``C_in * kh * kw <= THIN_CONV_MAX_K``, e.g. the first layer of a
    grey-scale network: 9) the two are one matrix product. With ``X`` the ``(B*H_out*W_out, K)``
    patches of ``x`` and ``W`` the ``(C_out, K)`` filters, the convolution is ``X W^T + b``, so its
    per-channel batch mean and (biased) variance are ``W mean(X) + b`` and
    ``diag(W Cov(X) W^T)``: they come from the ``K x K`` patch covariance, not from the
    full-size output. The normalised output is then ``(X - mean(X)) (scale * W)^T + bias`` with
    ``scale = weight / sqrt(var + eps)``: one pass writes it, and the backward is one matrix
    product over it, instead of the convolution's and the batch norm's passes. Everything is
    written in differentiable tensor ops, so gradients (also with respect to ``x``) and
    second-order gradients are the composition's; the convolution's bias cancels in the
    normalisation and gets its exact gradient, zero. The same code runs under ``torch.func``
    transforms (per-task statistics under vmap) and while ``torch.compile`` traces (conv-4 MAML's
    compile path: 0.57 of the eager loop's time with it, 0.74 without, in one paired run of
    measured with a prototype script, removed, at commit 8ee4bfb). A wider convolution is ``F.conv2d`` followed by
    :func:`task_batch_norm`.

    The one-matmul output is channels-last (its memory layout, not its values).

    Args:
        x: ``(B, C_in, H, W)``.
        conv_weight: ``(C_out, C_in, kh, kw)``.
        conv_bias: ``(C_out,)`` or ``None``.
        weight: ``(C_out,)`` norm scale, or ``None`` (then ``bias`` must be ``None``).
        bias: ``(C_out,)`` norm shift, or ``None``.
        eps: Added to the variance.
        stride, padding: As ``F.conv2d`` (numbers, zero padding; no dilation or groups).

    Returns:
        ``(B, C_out, H_out, W_out)``.

    Raises:
        ValueError: ``x`` is not 4-D or the shapes do not match.
    """
    if x.dim() != 4:
        raise ValueError(f"conv_batch_norm expected x of shape (B, C, H, W), got {tuple(x.shape)}")
    c_out, c_in, kh, kw = conv_weight.shape
    if x.shape[1] != c_in:
        raise ValueError(f"conv_batch_norm: x has {x.shape[1]} channels, conv_weight expects {c_in}")
    _check_norm_args("conv_batch_norm", c_out, weight, bias)
    k = c_in * kh * kw
    if k > THIN_CONV_MAX_K:
        return task_batch_norm(F.conv2d(x, conv_weight, conv_bias, stride, padding), weight, bias, eps)
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    n_img, _, h, w = x.shape
    h_out, w_out = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    xp = xp.permute(0, 2, 3, 1)  # (B, H, W, C_in), a view
    patches = torch.stack(
        [
            xp[:, i : i + sh * (h_out - 1) + 1 : sh, j : j + sw * (w_out - 1) + 1 : sw, :]
            for i in range(kh)
            for j in range(kw)
        ],
        dim=-1,
    ).reshape(n_img * h_out * w_out, k)  # (B, H_out, W_out, C_in, kh*kw): K in the weight's order, one copy
    n = patches.shape[0]
    centred = patches - patches.mean(0)
    cov = centred.t() @ centred / n  # (K, K)
    w2 = conv_weight.reshape(c_out, k)
    var = ((w2 @ cov) * w2).sum(1)  # per-channel variance of the convolution's output
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = bias if bias is not None else torch.zeros_like(scale)
    if conv_bias is not None:
        shift = shift + scale * (conv_bias - conv_bias)  # cancels in the normalisation: gradient 0
    y = torch.addmm(shift, centred, (w2 * scale[:, None]).t())  # (B*H_out*W_out, C_out)
    return y.view(n_img, h_out, w_out, c_out).permute(0, 3, 1, 2)
