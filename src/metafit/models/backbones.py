"""Plain ``nn.Module`` backbones used in the papers' protocols.

Nothing here is special to metafit: any ``nn.Module`` works with every learner. These modules
follow two conventions that the learners rely on only by default:

* the final classifier layer is named ``head`` (ANIL adapts ``head.*`` only);
* normalisation is :class:`TaskBatchNorm`: batch statistics of the batch it is given, no running
  statistics, written from elementary tensor ops so that ``torch.func.vmap`` and second-order
  gradients through it are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit.models.ops import conv_batch_norm, relu_max_pool, task_batch_norm

__all__ = ["MLP", "Conv4", "TaskBatchNorm", "task_batch_norm"]

# torch.fx traces a Conv4 (metafit.models.fuse_norm_relu_pool, user passes) with the fused
# functions as calls instead of tracing into their Python checks.
torch.fx.wrap("conv_batch_norm")
torch.fx.wrap("relu_max_pool")


class TaskBatchNorm(nn.Module):
    """Batch normalisation with the statistics of the current batch only (no running stats).

    For input ``(B, C, *spatial)`` the mean and (biased) variance are taken over every dimension
    but ``C``; for ``(B, C)`` over ``B``. In meta-learning the batch is one task's support set or
    one task's query set, so statistics never leak between tasks; evaluation behaves exactly
    like training (transductive, as in the reference MAML code: the query statistics come from
    the query batch). Under ``torch.func`` transforms (the engine's vmap path) it is computed
    from elementary ops, which keeps ``vmap`` + second-order gradients exact in torch 2.13
    (the fused kernel's vmap rule is wrong there); elsewhere (the loop path) it calls the fused
    ``F.batch_norm`` kernel, the same function, which is much faster on CPU.

    Args:
        num_features: Channels ``C``.
        eps: Added to the variance.
        affine: Learn a per-channel scale (init 1) and shift (init 0).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"TaskBatchNorm expected input (B, {self.num_features}, ...), got {tuple(x.shape)}")
        return task_batch_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"


class MLP(nn.Module):
    """Fully connected ReLU network, e.g. the 1-40-40-1 sinusoid regressor of MAML §5.1.

    Args:
        in_features: Input size.
        hidden: Hidden layer sizes, e.g. ``(40, 40)``.
        out_features: Output size; the last layer is named ``head``.
        skip_input: Return the input beside the output, ``cat([x, head(body(x))], -1)``: an
            embedding network that keeps the raw features next to the learned ones (a head on top
            can then weigh either; no parameters added).

    Shapes:
        ``(B, in_features) -> (B, out_features)``, or ``(B, in_features + out_features)`` with
        ``skip_input``.
    """

    def __init__(
        self, in_features: int = 1, hidden: Sequence[int] = (40, 40), out_features: int = 1, *, skip_input: bool = False
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(prev, out_features)
        self.input_shape = (in_features,)
        self.skip_input = bool(skip_input)
        # as an embedding network (metric learners, pretraining)
        self.feature_dim = out_features + (in_features if self.skip_input else 0)

    def forward(self, x: Tensor) -> Tensor:
        out = self.head(self.body(x))
        return torch.cat([x, out], -1) if self.skip_input else out


class Conv4(nn.Module):
    """The four-block convolutional network of Vinyals et al. 2016 / MAML / ProtoNets.

    Each block: 3x3 conv (``width`` filters, padding 1) -> normalisation -> ReLU -> 2x2 max-pool
    (``downsample="pool"``, the ProtoNets/Vinyals form) or a stride-2 conv with no pooling
    (``downsample="stride"``, the MAML Omniglot form). Features are then flattened
    (``pool``) or averaged over space (``stride``, as in the MAML reference code).

    Args:
        in_channels: Input channels (1 for Omniglot).
        out_features: Size of the linear ``head``; ``None`` for an embedding network (ProtoNets).
        width: Filters per block (64 in the papers).
        image_size: Input side length (28 for Omniglot); sets the flattened feature size.
        downsample: ``"pool"`` or ``"stride"``.
        norm: ``"task"`` (:class:`TaskBatchNorm`, transductive batch statistics, the default),
            ``"batchnorm"`` (``nn.BatchNorm2d(track_running_stats=False)``, same maths but the
            fused kernel: loop path only for second order), or ``"none"``.
        fuse: With a batch-statistics norm, compute each block with the fused functions of
            :mod:`metafit.models.ops`: conv -> norm as :func:`~metafit.models.ops.conv_batch_norm`
            (one matrix product for the thin first convolution) and ReLU -> max-pool as
            :func:`~metafit.models.ops.relu_max_pool`. Same function and (second-order)
            gradients, up to float rounding; fewer passes over the activations (docs/results.md,
            "Page faults, fused blocks and the thin first convolution": a ProtoNet episode ~1.2x
            faster on the CPU here). ``False`` runs the blocks' modules one by one.

    Shapes:
        ``(B, in_channels, image_size, image_size) -> (B, out_features)`` or ``(B, feature_dim)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_features: int | None = 5,
        *,
        width: int = 64,
        image_size: int = 28,
        downsample: Literal["pool", "stride"] = "pool",
        norm: Literal["task", "batchnorm", "none"] = "task",
        fuse: bool = True,
    ) -> None:
        super().__init__()
        if downsample not in ("pool", "stride"):
            raise ValueError(f"downsample must be 'pool' or 'stride', got {downsample!r}")
        if norm not in ("task", "batchnorm", "none"):
            raise ValueError(f"norm must be 'task', 'batchnorm' or 'none', got {norm!r}")
        self.downsample = downsample
        blocks: list[nn.Module] = []
        c, side = in_channels, image_size
        for _ in range(4):
            stride = 2 if downsample == "stride" else 1
            layers: list[nn.Module] = [nn.Conv2d(c, width, 3, stride=stride, padding=1)]
            if norm == "task":
                layers.append(TaskBatchNorm(width))
            elif norm == "batchnorm":
                layers.append(nn.BatchNorm2d(width, track_running_stats=False))
            layers.append(nn.ReLU())
            if downsample == "pool":
                layers.append(nn.MaxPool2d(2))
                side = side // 2
            else:
                side = (side + 1) // 2
            blocks.append(nn.Sequential(*layers))
            c = width
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for four 2x2 poolings (needs >= 16)")
        self.features = nn.Sequential(*blocks)
        self.fuse = bool(fuse) and norm != "none"
        self.feature_dim = width * side * side if downsample == "pool" else width
        self.head = nn.Linear(self.feature_dim, out_features) if out_features else None
        # per-example input shape (``None``: any size; the strided net averages its last feature map)
        self.input_shape = (in_channels, image_size, image_size) if downsample == "pool" else (in_channels, None, None)

    def embed(self, x: Tensor) -> Tensor:
        """Features before the head, ``(B, feature_dim)``."""
        if self.fuse:
            h = x
            for block in self.features:  # (conv, norm, ReLU[, max-pool]) blocks
                conv, norm = block[0], block[1]
                h = conv_batch_norm(
                    h, conv.weight, conv.bias, norm.weight, norm.bias, norm.eps, conv.stride, conv.padding
                )
                if self.downsample == "pool":
                    pool = block[3]
                    h = relu_max_pool(h, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
                else:
                    h = F.relu(h)
        else:
            h = self.features(x)
        return h.flatten(1) if self.downsample == "pool" else h.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        return self.head(h) if self.head is not None else h
