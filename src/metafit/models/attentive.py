"""Attention-based model-based meta-learners: networks that map a support set to a predictor in one pass.

Three plain ``nn.Module`` s, each a function of the context (support) set and the targets:

* :class:`AttentiveNP`: the deterministic path of the Attentive Neural Process (Kim, Mnih,
  Schwarz, Garnelo, Eslami, Rosenbaum, Vinyals & Teh, ICLR 2019, arXiv 1901.05761).
* :class:`TransformerNP`: the Transformer Neural Process TNP-D (Nguyen & Grover, ICML 2022,
  arXiv 2207.04179).
* :class:`InContextClassifier`: an in-context transformer few-shot classifier in the style of
  CAML (Fifty, Duan, Junkins, Amid, Leskovec, Ré & Thrun, ICLR 2024, arXiv 2310.10971).

and two small adapters: :class:`CNPAdapter` (gives :class:`metafit.models.CNPRegressor` the same
``forward(context_x, context_y, target_x, context_mask=None)`` as the attentive networks, so a CNP,
an ANP and a TNP run under one learner on identical tasks) and :class:`Detached` (a frozen
feature network by composition: ``InContextClassifier(Detached(backbone), ...)``).

Every network works on ONE task (no task dimension; the engine's vmap path adds it) and every
attention is :func:`torch.nn.functional.scaled_dot_product_attention` with an explicit boolean
mask (``True`` = may attend), so ``torch.func.vmap`` maps them exactly (no
``nn.MultiheadAttention`` fast paths). There are no positional encodings anywhere: outputs are
invariant to the order of the context points and equivariant to the order of the targets.

Padding: the regression networks take an optional ``context_mask`` ``(C,)`` bool (``True`` = a
real context point). Padded context points are never attended to (as keys) and are excluded from
every aggregate, so a padded task gives the same predictions as the unpadded one (tested).
Padded points still produce (ignored) outputs of their own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit.models.cnp import MIN_VARIANCE, CNPRegressor, bounded_variance, masked_mean

__all__ = [
    "NP_NETWORKS",
    "AttentiveNP",
    "CNPAdapter",
    "Detached",
    "InContextClassifier",
    "MultiheadAttention",
    "TransformerLayer",
    "TransformerNP",
    "build_np_network",
    "icl_mask",
    "tnp_mask",
]


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _check_dims(**dims: int) -> None:
    for name, v in dims.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")


def _check_heads(d_model: int, n_heads: int) -> None:
    _check_dims(d_model=d_model, n_heads=n_heads)
    if d_model % n_heads:
        raise ValueError(f"d_model must be divisible by n_heads, got d_model={d_model}, n_heads={n_heads}")


class MultiheadAttention(nn.Module):
    """Multi-head scaled dot-product attention with an explicit boolean mask (vmap-safe).

    Args:
        d_model: Width of the queries and of the output (the keys and values are projected to it).
        n_heads: Heads; ``d_model`` must be divisible by it.
        d_key: Width of the key inputs (default ``d_model``).
        d_value: Width of the value inputs (default ``d_model``).
        tied_qk: One projection for queries and keys (self-attention only; no ``k`` parameters).

    Shapes:
        ``query (Lq, d_model)``, ``key (Lk, d_key)``, ``value (Lk, d_value)``, ``mask (Lq, Lk)``
        bool or ``None`` -> ``(Lq, d_model)``. Every query row of ``mask`` needs at least one
        ``True`` entry (an all-masked row has no defined attention).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        d_key: int | None = None,
        d_value: int | None = None,
        tied_qk: bool = False,
    ) -> None:
        super().__init__()
        _check_heads(d_model, n_heads)
        if tied_qk and d_key not in (None, d_model):
            raise ValueError(f"tied_qk needs keys of the queries' width d_model={d_model}, got d_key={d_key}")
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model)
        # tied: one projection for queries and keys, so the score <Wx, Wx'> is a positive
        # semi-definite kernel of the inputs (a token most resembles itself from the first step)
        self.k = None if tied_qk else nn.Linear(d_key or d_model, d_model)
        self.v = nn.Linear(d_value or d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def _heads(self, t: Tensor) -> Tensor:
        *lead, n, d = t.shape
        return t.reshape(*lead, n, self.n_heads, d // self.n_heads).transpose(-3, -2)  # (..., H, L, dh)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        key_projection = self.q if self.k is None else self.k
        q, k, v = self._heads(self.q(query)), self._heads(key_projection(key)), self._heads(self.v(value))
        m = None if mask is None else mask.unsqueeze(-3)  # broadcast over heads
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=m)  # (..., H, Lq, dh)
        h = h.transpose(-3, -2).flatten(-2)
        return self.out(h)


class TransformerLayer(nn.Module):
    """A transformer encoder layer (as ``nn.TransformerEncoderLayer``, ReLU, no dropout).

    Post-norm (default): ``x <- LN(x + MHA(x, x, x, mask))``; ``x <- LN(x + FF(x))``, the
    ``nn.TransformerEncoderLayer`` default used by the TNP reference code. Pre-norm
    (``norm_first``): ``x <- x + MHA(LN(x), ..., mask)``; ``x <- x + FF(LN(x))`` (Xiong et al.
    2020, "On Layer Normalization in the Transformer Architecture"): the residual stream is
    never normalised, so a token's input reaches the output unchanged at initialisation.

    Args:
        d_model: Token width.
        n_heads: Attention heads.
        d_ff: Feed-forward width.
        norm_first: Pre-norm instead of post-norm.
        tied_qk: See :class:`MultiheadAttention`.

    Shapes:
        ``x (L, d_model)``, ``mask (L, L)`` bool or ``None`` -> ``(L, d_model)``.
    """

    def __init__(
        self, d_model: int, n_heads: int, d_ff: int, *, norm_first: bool = False, tied_qk: bool = False
    ) -> None:
        super().__init__()
        _check_dims(d_ff=d_ff)
        self.norm_first = bool(norm_first)
        self.attn = MultiheadAttention(d_model, n_heads, tied_qk=tied_qk)
        self.ff = _mlp([d_model, d_ff, d_model])
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.norm_first:
            h = self.norm1(x)
            x = x + self.attn(h, h, h, mask)
            return x + self.ff(self.norm2(x))
        x = self.norm1(x + self.attn(x, x, x, mask))
        return self.norm2(x + self.ff(x))


def _context_mask(context_x: Tensor, context_mask: Tensor | None) -> Tensor:
    """``(C,)`` bool: the given mask, or all ``True``."""
    c = context_x.shape[-2]
    if c == 0:
        raise ValueError("a neural process needs at least one context point, got context_x with 0 rows")
    if context_mask is None:
        return torch.ones(c, dtype=torch.bool, device=context_x.device)
    if context_mask.shape[-1] != c:
        raise ValueError(
            f"context_mask must have shape ({c},) (one flag per context point), got {tuple(context_mask.shape)}"
        )
    return context_mask.to(torch.bool)


def _gaussian_head(out: Tensor, y_dim: int, min_variance: float) -> tuple[Tensor, Tensor]:
    return out[..., :y_dim], bounded_variance(out[..., y_dim:], min_variance)


def _check_min_variance(min_variance: float) -> None:
    if isinstance(min_variance, bool) or not isinstance(min_variance, (int, float)) or not 0 < min_variance < 1:
        raise ValueError(f"min_variance must be a number in (0, 1), got {min_variance!r}")


class AttentiveNP(nn.Module):
    """Attentive Neural Process, deterministic path (Kim et al., ICLR 2019, arXiv 1901.05761).

    ``s_i = SelfAttn^L(MLP([x_i, y_i]))`` over the context; ``r_t = MHA(q = e(x_t), k = e(x_i),
    v = s_i)`` with one x-embedding MLP ``e`` shared by queries and keys (the paper's
    "deterministic path" with multihead cross-attention); ``[mu, raw] = MLP([r_t, x_t])`` and
    ``var = bounded_variance(raw, min_variance)``. No latent path (the ANP's latent path is the
    NP's global latent; this is the "deterministic ANP", i.e. an attentive CNP).

    Args:
        x_dim: Input size.
        y_dim: Target size.
        d_model: Width of the representations.
        n_heads: Attention heads.
        n_self_layers: Self-attention layers over the context (0 = the paper's cross-attention-only
            deterministic path; with self-attention layers, its "self-attention" encoder).
        d_ff: Hidden width of each self-attention layer's feed-forward block.
        decoder_hidden: Hidden sizes of the decoder MLP.
        min_variance: Floor of the predictive variance (``bounded_variance``).

    Shapes:
        ``forward(context_x (C, x_dim), context_y (C, y_dim), target_x (T, x_dim), context_mask (C,)
        bool | None)`` -> ``(mean (T, y_dim), var (T, y_dim))``.
    """

    def __init__(
        self,
        x_dim: int = 1,
        y_dim: int = 1,
        *,
        d_model: int = 128,
        n_heads: int = 4,
        n_self_layers: int = 2,
        d_ff: int = 128,
        decoder_hidden: Sequence[int] = (128, 128),
        min_variance: float = MIN_VARIANCE,
    ) -> None:
        super().__init__()
        _check_dims(x_dim=x_dim, y_dim=y_dim)
        _check_heads(d_model, n_heads)
        _check_min_variance(min_variance)
        self.x_dim, self.y_dim, self.min_variance = x_dim, y_dim, float(min_variance)
        self.pair_encoder = _mlp([x_dim + y_dim, d_model, d_model])
        self.self_attention = nn.ModuleList(TransformerLayer(d_model, n_heads, d_ff) for _ in range(n_self_layers))
        self.x_embed = _mlp([x_dim, d_model, d_model])
        self.cross_attention = MultiheadAttention(d_model, n_heads)
        self.decoder = _mlp([d_model + x_dim, *decoder_hidden, 2 * y_dim])

    def forward(
        self, context_x: Tensor, context_y: Tensor, target_x: Tensor, context_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        keep = _context_mask(context_x, context_mask)  # (C,)
        c, t = context_x.shape[-2], target_x.shape[-2]
        s = self.pair_encoder(torch.cat([context_x, context_y.reshape(c, -1)], -1))
        self_mask = keep.unsqueeze(-2).expand(c, c)
        for layer in self.self_attention:
            s = layer(s, self_mask)
        r = self.cross_attention(self.x_embed(target_x), self.x_embed(context_x), s, keep.unsqueeze(-2).expand(t, c))
        return _gaussian_head(self.decoder(torch.cat([r, target_x], -1)), self.y_dim, self.min_variance)


def tnp_mask(context_mask: Tensor, n_target: int) -> Tensor:
    """The TNP-D attention mask over ``[context; targets]`` tokens, ``(C + T, C + T)`` bool.

    Every token (context or target) attends to the real context tokens and to nothing else: a
    target attends neither to the other targets nor to itself (its own token reaches the output
    through the residual connections only). This is the mask of the TNP reference code
    (``mask[:, :num_ctx] = 0``, ``-inf`` elsewhere), with padded context columns masked too.

    Args:
        context_mask: ``(C,)`` bool, ``True`` for a real context point.
        n_target: ``T``.
    """
    keys = torch.cat(
        [context_mask.to(torch.bool), torch.zeros(n_target, dtype=torch.bool, device=context_mask.device)], -1
    )
    n = keys.shape[-1]
    return keys.unsqueeze(-2).expand(n, n)


class TransformerNP(nn.Module):
    """Transformer Neural Process, TNP-D (Nguyen & Grover, ICML 2022, arXiv 2207.04179).

    Context tokens are ``[x_i, y_i, 1]``, target tokens ``[x_t, 0, 0]`` (the last entry flags a
    context token; the reference code has no flag and relies on ``y = 0``, the flag removes the
    ambiguity of a context point with ``y_i = 0``). One MLP embeds every token, ``n_layers``
    transformer layers run over the whole ``[context; targets]`` sequence under :func:`tnp_mask`
    (context -> context, target -> context only; never target -> target), and an MLP maps each
    target token to ``[mu, raw]``; ``var = bounded_variance(raw, min_variance)`` (a diagonal Gaussian:
    TNP-D's targets are conditionally independent given the context).

    Args:
        x_dim: Input size.
        y_dim: Target size.
        d_model: Token width (64 in the reference GP config, ``regression/configs/gp/tnpd.yaml``).
        n_heads: Attention heads (4 there).
        n_layers: Transformer layers (6 there).
        d_ff: Feed-forward width of each layer (128 there).
        embed_depth: Layers of the token-embedding MLP (4 there).
        decoder_hidden: Hidden sizes of the output MLP (there: one layer of ``d_ff``).
        min_variance: Floor of the predictive variance (``bounded_variance``).

    Shapes:
        As :class:`AttentiveNP`.
    """

    def __init__(
        self,
        x_dim: int = 1,
        y_dim: int = 1,
        *,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 6,
        d_ff: int = 128,
        embed_depth: int = 4,
        decoder_hidden: Sequence[int] = (128,),
        min_variance: float = MIN_VARIANCE,
    ) -> None:
        super().__init__()
        _check_dims(x_dim=x_dim, y_dim=y_dim, embed_depth=embed_depth)
        _check_heads(d_model, n_heads)
        _check_min_variance(min_variance)
        self.x_dim, self.y_dim, self.min_variance = x_dim, y_dim, float(min_variance)
        self.embed = _mlp([x_dim + y_dim + 1] + [d_model] * embed_depth)
        self.layers = nn.ModuleList(TransformerLayer(d_model, n_heads, d_ff) for _ in range(n_layers))
        self.decoder = _mlp([d_model, *decoder_hidden, 2 * y_dim])

    def forward(
        self, context_x: Tensor, context_y: Tensor, target_x: Tensor, context_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        keep = _context_mask(context_x, context_mask)
        c, t = context_x.shape[-2], target_x.shape[-2]
        ctx = torch.cat([context_x, context_y.reshape(c, -1), torch.ones_like(context_x[..., :1])], -1)
        tar = torch.cat([target_x, target_x.new_zeros(t, self.y_dim + 1)], -1)
        h = self.embed(torch.cat([ctx, tar], -2))
        mask = tnp_mask(keep, t)
        for layer in self.layers:
            h = layer(h, mask)
        return _gaussian_head(self.decoder(h[c:]), self.y_dim, self.min_variance)


class CNPAdapter(nn.Module):
    """A :class:`~metafit.models.CNPRegressor` behind the ``forward(cx, cy, tx, context_mask)`` interface.

    The context is aggregated with a masked mean (padded points excluded), then decoded as by the
    CNP (Garnelo et al., ICML 2018, arXiv 1807.01613). The CNP's parameters appear under the
    prefix ``cnp.``.

    Shapes:
        As :class:`AttentiveNP`.
    """

    def __init__(self, cnp: CNPRegressor) -> None:
        super().__init__()
        if not isinstance(cnp, CNPRegressor):
            raise TypeError(f"cnp must be a metafit.models.CNPRegressor, got {type(cnp).__name__}")
        self.cnp = cnp

    def forward(
        self, context_x: Tensor, context_y: Tensor, target_x: Tensor, context_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        keep = _context_mask(context_x, context_mask)
        r_i = self.cnp.represent(context_x, context_y)
        r = masked_mean(r_i, keep.to(r_i.dtype).unsqueeze(0))[0]
        return self.cnp.decode(target_x, self.cnp.summarise(r))


class Detached(nn.Module):
    """A frozen feature network, by composition: ``module(x).detach()``.

    Its parameters stay in ``named_parameters()`` (so checkpoints and strict ``functional_call``
    see them) but receive zero meta-gradient; an optimiser without weight decay then leaves them
    unchanged (Adam/SGD with a zero gradient do).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x).detach()


def icl_mask(n_support: int, n_query: int, *, device: torch.device | None = None) -> Tensor:
    """The in-context classifier's mask over ``[support; queries]`` tokens, ``(S + Q, S + Q)`` bool.

    Support tokens attend to every support token; a query token attends to every support token
    and to ITSELF, never to another query (so each query's prediction depends on the support set
    and on that query only). Attending to itself lets a query's features shape its own attention
    output; it cannot leak labels (the query token carries the "unknown" label vector).
    """
    n = n_support + n_query
    idx = torch.arange(n, device=device)
    return (idx.unsqueeze(0) < n_support) | (idx.unsqueeze(0) == idx.unsqueeze(1))


class InContextClassifier(nn.Module):
    """In-context transformer few-shot classifier, CAML-style (Fifty et al., ICLR 2024, arXiv 2310.10971).

    A support token is ``[P phi(x_i) ; E[y_i]]`` and a query token ``[P phi(x_q) ; u]`` (the
    concatenation of a feature part and a label part, as CAML concatenates its image embedding
    and label code), where ``phi`` is any feature network, ``P`` a linear projection, ``E`` a
    learned table of ``max_way`` label vectors and ``u`` a learned "unknown label" vector. A
    transformer encoder (no positional encodings) runs over ``[support; queries]`` under
    :func:`icl_mask`; the logit of class ``c`` for a query is ``<W LN(h_q), E[c]>`` for
    ``c < n_way`` (the label table doubles as the readout, so any ``n_way <= max_way`` works; the
    logits of an ``n_way``-way task are the first ``n_way`` columns of those computed with a larger
    ``n_way``). The function is NOT invariant to relabelling the classes (the label vectors
    differ); training on tasks with random label assignments makes it so on average, as in CAML.

    What makes it trainable in minutes: the layers are pre-norm and the query/key projections
    are tied (``norm_first``, ``tied_qk``). With post-norm layers, untied projections and the label
    vector added to the features, the same network sat on the chance plateau (loss
    ``ln n_way``) for thousands of steps on the tabular prior: at initialisation a query attends
    uniformly, so the labels it reads carry no signal and the attention gets no gradient. A tied
    projection makes a query attend most to the support tokens whose features resemble its own
    from the first step, and pre-norm keeps the label part of the residual stream intact.

    Differences from CAML: CAML fixes the label vectors to an ELMES code and freezes a
    pre-trained CLIP/ViT backbone; here the table is learned and the backbone is any module,
    trained jointly, or frozen by composition with :class:`Detached`. CAML runs one sequence
    per query (``[query; support]``, full attention, so the support tokens also see that query);
    here all queries share one sequence in which the support attends only to the support and
    each query to the support and itself: one pass for every query, at the price that the
    support representations cannot depend on the query.

    Args:
        backbone: Feature network ``(B, *input_shape) -> (B, feature_dim)`` (e.g.
            ``metafit.models.Conv4(1, None)`` or an MLP). It embeds the support and the queries in
            two separate calls: a backbone with task batch statistics (``TaskBatchNorm``) then
            normalises the queries with the query set's statistics (transductive, as ProtoNet).
        feature_dim: ``F``.
        max_way: Size of the label table (largest ``n_way``).
        d_model: Token width.
        n_heads: Attention heads.
        n_layers: Transformer layers.
        d_ff: Feed-forward width.
        label_dim: Width of the label part of a token (``< d_model``; default ``d_model // 4``);
            ``0``: the label vector is ADDED to a ``d_model``-wide feature projection instead (one
            shared channel).
        norm_first: Pre-norm layers and a final LayerNorm (``False``: post-norm, no final norm).
        tied_qk: One projection for the attention's queries and keys in every layer.

    Shapes:
        ``forward(support_x (S, *input_shape), support_y (S,) int64, query_x (Q, *input_shape),
        n_way: int)`` -> logits ``(Q, n_way)``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        max_way: int = 20,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 2,
        d_ff: int = 256,
        label_dim: int | None = None,
        norm_first: bool = True,
        tied_qk: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
        _check_dims(feature_dim=feature_dim, max_way=max_way)
        _check_heads(d_model, n_heads)
        if label_dim is None:
            label_dim = d_model // 4
        if isinstance(label_dim, bool) or not isinstance(label_dim, int) or not 0 <= label_dim < d_model:
            raise ValueError(f"label_dim must be an int in 0..{d_model - 1} (below d_model), got {label_dim!r}")
        self.backbone = backbone
        self.feature_dim, self.max_way, self.label_dim = int(feature_dim), int(max_way), int(label_dim)
        width = label_dim or d_model  # of a label vector
        self.project = nn.Linear(self.feature_dim, d_model - label_dim)
        self.label_table = nn.Parameter(torch.randn(max_way, width) / math.sqrt(width))
        self.unknown = nn.Parameter(torch.randn(width) / math.sqrt(width))
        self.layers = nn.ModuleList(
            TransformerLayer(d_model, n_heads, d_ff, norm_first=norm_first, tied_qk=tied_qk) for _ in range(n_layers)
        )
        self.final_norm = nn.LayerNorm(d_model) if norm_first else None
        self.readout = nn.Linear(d_model, width)

    def _tokens(self, features: Tensor, labels: Tensor) -> Tensor:
        if self.label_dim:
            return torch.cat([features, labels], -1)
        return features + labels

    def forward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, n_way: int) -> Tensor:
        if isinstance(n_way, bool) or not isinstance(n_way, int) or not 1 <= n_way <= self.max_way:
            raise ValueError(f"n_way must be an int in 1..{self.max_way} (max_way of this classifier), got {n_way!r}")
        s, q = support_x.shape[0], query_x.shape[0]
        if s == 0:
            raise ValueError("an in-context classifier needs at least one support example, got 0")
        fs = self.project(self.backbone(support_x).flatten(1))
        fq = self.project(self.backbone(query_x).flatten(1))
        h = torch.cat(
            [
                self._tokens(fs, F.embedding(support_y, self.label_table)),
                self._tokens(fq, self.unknown.expand(q, -1)),
            ],
            0,
        )
        mask = icl_mask(s, q, device=h.device)
        for layer in self.layers:
            h = layer(h, mask)
        out = h[s:] if self.final_norm is None else self.final_norm(h[s:])
        return self.readout(out) @ self.label_table[:n_way].transpose(0, 1)


NP_NETWORKS = ("cnp", "anp", "tnp")


def build_np_network(
    kind: str,
    *,
    x_dim: int = 1,
    y_dim: int = 1,
    d_model: int = 64,
    n_heads: int = 4,
    n_layers: int | None = None,
    d_ff: int = 128,
    min_variance: float = MIN_VARIANCE,
    variance_bound: str = "variance",
    post_layers: int = 0,
) -> nn.Module:
    """A regression network with ``forward(cx, cy, tx, context_mask=None) -> (mean, var)``, by name.

    For an application config (``model.kind`` + these options); every network is usable by
    :class:`metafit.algorithms.neural_process.NeuralProcess` and ``Padded``.

    Args:
        kind: ``"cnp"`` (:class:`CNPAdapter` of a :class:`CNPRegressor` with ``r_dim = d_model``,
            ``n_layers`` hidden encoder layers of width ``d_model`` (default 3) and two decoder
            layers), ``"anp"`` (:class:`AttentiveNP`, ``n_layers`` self-attention layers, default
            2) or ``"tnp"`` (:class:`TransformerNP`, ``n_layers`` transformer layers, default 6).
        x_dim: Input size.
        y_dim: Target size.
        d_model: Representation / token width.
        n_heads: Attention heads (ignored by ``"cnp"``).
        n_layers: See ``kind``.
        d_ff: Feed-forward width of the attention layers and of the TNP's output MLP.
        min_variance: Floor of the predictive variance (with ``variance_bound="scale"``: of the sd).
        variance_bound: ``"cnp"`` only: ``"variance"`` or ``"scale"`` (:class:`CNPRegressor`'s ``bound``).
        post_layers: ``"cnp"`` only: hidden layers (width ``d_model``) of an MLP after the mean
            aggregation (:class:`CNPRegressor`'s ``post_hidden``; the TNP reference code's CNP: 1).
    """
    if isinstance(post_layers, bool) or not isinstance(post_layers, int) or post_layers < 0:
        raise ValueError(f"post_layers must be an int >= 0, got {post_layers!r}")
    if kind in NP_NETWORKS and kind != "cnp":
        for name, value, default in (("variance_bound", variance_bound, "variance"), ("post_layers", post_layers, 0)):
            if value != default:
                raise ValueError(
                    f"{name} applies to the CNP network only (kind='cnp'), got {name}={value!r} with kind={kind!r}"
                )
    if kind == "cnp":
        depth = 3 if n_layers is None else n_layers
        return CNPAdapter(
            CNPRegressor(
                x_dim,
                y_dim,
                r_dim=d_model,
                encoder_hidden=(d_model,) * depth,
                decoder_hidden=(d_model, d_model),
                min_variance=min_variance,
                bound=variance_bound,
                post_hidden=(d_model,) * post_layers,
            )
        )
    if kind == "anp":
        return AttentiveNP(
            x_dim,
            y_dim,
            d_model=d_model,
            n_heads=n_heads,
            n_self_layers=2 if n_layers is None else n_layers,
            d_ff=d_ff,
            decoder_hidden=(d_model, d_model),
            min_variance=min_variance,
        )
    if kind == "tnp":
        return TransformerNP(
            x_dim,
            y_dim,
            d_model=d_model,
            n_heads=n_heads,
            n_layers=6 if n_layers is None else n_layers,
            d_ff=d_ff,
            decoder_hidden=(d_ff,),
            min_variance=min_variance,
        )
    raise ValueError(f"kind must be one of {NP_NETWORKS}, got {kind!r}")
