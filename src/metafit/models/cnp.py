"""Conditional Neural Process networks (Garnelo et al., ICML 2018, arXiv 1807.01613).

A CNP encodes every context pair ``(x_i, y_i)`` into a representation ``r_i = h(x_i, y_i)``,
aggregates them with a permutation-invariant mean ``r = mean_i r_i`` and decodes a predictive
distribution for each target input from ``(x_t, r)`` with ``g``. Training the whole thing end to
end on many tasks (:class:`metafit.algorithms.CNP`) is the meta-learning; adapting to a new
task is one forward pass over its context set, no gradient steps.

Two plain ``nn.Module`` s:

* :class:`CNPRegressor`: MLP encoder on ``[x, y]``, MLP decoder on ``[x, r]`` giving a Gaussian
  mean and variance ``0.1 + 0.9 * softplus(raw)`` (the bound used in the paper's reference code,
  so the variance is always positive and never collapses).
* :class:`CNPClassifier`: an image-feature network (a Conv-4 embedding by default) shared by the
  encoder and the decoder; the encoder maps ``[features(x_i), one_hot(y_i)]`` to ``r_i`` and
  aggregates per class (``r_c`` = mean over the class's context points, §4.3 of the paper); the
  decoder scores target ``x`` against each ``r_c`` with a shared MLP, so any ``n_way`` up to
  ``max_way`` works.

Both modules dispatch on a keyword ``method`` so that one strict ``functional_call`` with all
parameters can run a single stage: ``model(cx, cy, tx)`` (the default, ``method="forward"``)
runs everything; ``model(cx, cy, method="encode")`` returns the aggregated representation;
``model(tx, r, method="decode")`` decodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit.models.backbones import Conv4

__all__ = ["CNPRegressor", "CNPClassifier", "MIN_VARIANCE", "bounded_variance"]

MIN_VARIANCE = 0.1


def bounded_variance(raw: Tensor, floor: float = MIN_VARIANCE) -> Tensor:
    """``floor + (1 - floor) * softplus(raw)``: the paper's positive, bounded-below variance."""
    return floor + (1.0 - floor) * F.softplus(raw)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def masked_mean(r: Tensor, weights: Tensor) -> Tensor:
    """Weighted mean over the context dimension.

    Args:
        r: ``(C, R)`` per-point representations.
        weights: ``(G, C)`` non-negative weights (one-hot class membership, or ones).

    Returns:
        ``(G, R)``; a group with zero total weight gets a zero representation.
    """
    counts = weights.sum(-1, keepdim=True).clamp_min(1.0)
    return (weights @ r) / counts


class CNPRegressor(nn.Module):
    """CNP for regression: ``p(y_t | x_t, context) = N(mu(x_t, r), sigma^2(x_t, r))``.

    Args:
        x_dim: Input size.
        y_dim: Target size.
        r_dim: Representation size (128 in the paper's 1-D regression code).
        encoder_hidden: Hidden sizes of the encoder MLP ``h`` (the paper: 128, 128, 128).
        decoder_hidden: Hidden sizes of the decoder MLP ``g`` (the paper: 128, 128).
        min_variance: Lower bound of the bounded quantity (0.1 in the paper's code).
        bound: ``"variance"``: ``var = min + (1 - min) softplus(raw)`` (the default);
            ``"scale"``: the same bound on the standard deviation, ``sd = min + (1 - min)
            softplus(raw)``, which is what DeepMind's reference CNP notebook does (a floor of
            0.1 on the sd instead of 0.316). On noise-free data such as the sinusoids the floor
            sets the narrowest interval the model can express (see docs/cnp_fusion.md).
        post_hidden: Hidden sizes of an MLP applied to the aggregated representation, ``r =
            post(mean_i r_i)`` (empty, the default: none, as in the paper; the TNP reference
            code's CNP has one hidden layer there, ``(128,)``).

    Shapes:
        ``encode``: ``context_x (C, x_dim)``, ``context_y (C, y_dim)`` -> ``r (r_dim,)``.
        ``decode``: ``target_x (B, x_dim)``, ``r (r_dim,)`` -> ``mean (B, y_dim)``, ``var (B, y_dim)``.
        ``forward``: ``(context_x, context_y, target_x)`` -> ``(mean, var)``.
    """

    def __init__(
        self,
        x_dim: int = 1,
        y_dim: int = 1,
        *,
        r_dim: int = 128,
        encoder_hidden: Sequence[int] = (128, 128, 128),
        decoder_hidden: Sequence[int] = (128, 128),
        min_variance: float = MIN_VARIANCE,
        bound: str = "variance",
        post_hidden: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if bound not in ("variance", "scale"):
            raise ValueError(f"bound must be 'variance' or 'scale', got {bound!r}")
        self.bound = bound
        if not 0.0 < min_variance < 1.0:
            raise ValueError(f"min_variance must be in (0, 1), got {min_variance}")
        self.x_dim, self.y_dim, self.r_dim = x_dim, y_dim, r_dim
        self.min_variance = min_variance
        self.encoder = _mlp([x_dim + y_dim, *encoder_hidden, r_dim])
        self.decoder = _mlp([x_dim + r_dim, *decoder_hidden, 2 * y_dim])
        if post_hidden:  # absent otherwise: the parameter names of a paper CNP stay as they were
            self.post = _mlp([r_dim, *post_hidden, r_dim])

    def summarise(self, r: Tensor) -> Tensor:
        """The decoder's representation of an aggregate ``r (..., r_dim)``: ``post(r)``, or ``r``."""
        return self.post(r) if hasattr(self, "post") else r

    def represent(self, context_x: Tensor, context_y: Tensor) -> Tensor:
        """Per-point representations ``r_i``, ``(C, r_dim)`` (before aggregation)."""
        if context_x.shape[0] == 0:
            raise ValueError("a CNP needs at least one context point")
        return self.encoder(torch.cat([context_x, context_y.reshape(context_x.shape[0], -1)], -1))

    def encode(self, context_x: Tensor, context_y: Tensor) -> Tensor:
        """Mean-aggregated representation ``r (r_dim,)`` of the context set (then ``post_hidden``'s MLP)."""
        return self.summarise(self.represent(context_x, context_y).mean(0))

    def decode(self, target_x: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        """Gaussian mean and variance ``(B, y_dim)`` each at the targets."""
        h = torch.cat([target_x, r.expand(target_x.shape[0], -1)], -1)
        out = self.decoder(h)
        mean, raw = out[..., : self.y_dim], out[..., self.y_dim :]
        if self.bound == "scale":
            return mean, bounded_variance(raw, self.min_variance).pow(2)
        return mean, bounded_variance(raw, self.min_variance)

    def forward(self, *inputs: Tensor, method: str = "forward") -> Tensor | tuple[Tensor, Tensor]:
        """``method`` = ``"forward"`` (cx, cy, tx), ``"encode"`` (cx, cy) or ``"decode"`` (tx, r)."""
        if method == "encode":
            return self.encode(*inputs)
        if method == "decode":
            return self.decode(*inputs)
        if method == "forward":
            cx, cy, tx = inputs
            return self.decode(tx, self.encode(cx, cy))
        raise ValueError(f"method must be 'forward', 'encode' or 'decode', got {method!r}")


class CNPClassifier(nn.Module):
    """CNP for few-shot classification (the Omniglot set-up of Garnelo et al. §4.3).

    The encoder is ``h([phi(x_i), one_hot(y_i)])`` with ``phi`` an image-feature network; the
    context is aggregated per class, ``r_c = mean_{i: y_i = c} r_i`` (permutation invariant within
    and across classes); the decoder gives the logit of class ``c`` for target ``x`` as
    ``g([phi(x), r_c])`` with one MLP shared by all classes, so the classes' order does not
    matter and any ``n_way <= max_way`` works.

    Args:
        features: Image-feature network ``(B, *image_shape) -> (B, F)`` (or ``(B, ...)``,
            flattened). Default: a Conv-4 embedding (``width`` filters, 28x28 inputs).
        feature_dim: ``F`` (required when ``features`` is given).
        max_way: Size of the label one-hot (largest ``n_way`` supported).
        r_dim: Representation size.
        hidden: Hidden size of the encoder and decoder MLPs.
        width: Filters per Conv-4 block (default network only).
        image_size: Input side (default network only).

    Shapes:
        ``encode``: ``context_x (C, *image_shape)``, ``context_y (C,)`` int64, ``n_way`` ->
        ``r (n_way, r_dim)``. ``decode``: ``target_x (B, *image_shape)``, ``r (n_way, r_dim)`` ->
        logits ``(B, n_way)``.
    """

    def __init__(
        self,
        features: nn.Module | None = None,
        feature_dim: int | None = None,
        *,
        max_way: int = 20,
        r_dim: int = 128,
        hidden: int = 128,
        width: int = 64,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        if features is None:
            conv = Conv4(1, None, width=width, image_size=image_size)
            features, feature_dim = conv, conv.feature_dim
        elif feature_dim is None:
            raise ValueError("feature_dim is required with a custom features network")
        self.features = features
        self.feature_dim = int(feature_dim)
        self.max_way = max_way
        self.r_dim = r_dim
        self.encoder = _mlp([self.feature_dim + max_way, hidden, r_dim])
        self.decoder = _mlp([self.feature_dim + r_dim, hidden, 1])

    def encode(self, context_x: Tensor, context_y: Tensor, n_way: int) -> Tensor:
        """Per-class mean representations ``(n_way, r_dim)``."""
        if n_way > self.max_way:
            raise ValueError(f"n_way={n_way} exceeds max_way={self.max_way} of this CNPClassifier")
        feats = self.features(context_x).flatten(1)
        onehot = F.one_hot(context_y, self.max_way).to(feats.dtype)
        r_i = self.encoder(torch.cat([feats, onehot], -1))  # (C, R)
        return masked_mean(r_i, onehot[:, :n_way].transpose(0, 1))

    def decode(self, target_x: Tensor, r: Tensor) -> Tensor:
        """Logits ``(B, n_way)``."""
        feats = self.features(target_x).flatten(1)  # (B, F)
        b, n = feats.shape[0], r.shape[0]
        pairs = torch.cat([feats[:, None, :].expand(b, n, -1), r[None, :, :].expand(b, n, -1)], -1)
        return self.decoder(pairs).squeeze(-1)

    def forward(self, *inputs: Tensor | int, method: str = "forward") -> Tensor:
        """``method`` = ``"forward"`` (cx, cy, tx, n_way), ``"encode"`` (cx, cy, n_way), ``"decode"`` (tx, r)."""
        if method == "encode":
            return self.encode(*inputs)  # type: ignore[arg-type]
        if method == "decode":
            return self.decode(*inputs)  # type: ignore[arg-type]
        if method == "forward":
            cx, cy, tx, n_way = inputs
            return self.decode(tx, self.encode(cx, cy, n_way))  # type: ignore[arg-type]
        raise ValueError(f"method must be 'forward', 'encode' or 'decode', got {method!r}")
