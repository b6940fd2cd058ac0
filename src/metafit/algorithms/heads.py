"""Metric heads for the Prototypical-Network family: how support embeddings score query embeddings.

A head is a small frozen object with two pure methods:

* ``init_params() -> Params``: its learned scalars (a temperature, a ridge penalty), meta-learned
  as the group ``"head"`` of :class:`~metafit.algorithms.metric.MetricLearner`; ``{}`` if none.
* ``logits(support_emb, support_y, n_way, query_emb, head_params) -> (Q, n_way)``: the class
  scores of the queries given the labelled support embeddings.

Every head is written with fixed shapes (one-hot class masks, no ``torch.unique``, no
data-dependent branching), so ``torch.func.vmap`` maps it over tasks and second-order gradients
flow through it.

Heads:

* :class:`EuclideanHead`: negative squared distance to class means (Snell et al., NeurIPS 2017).
* :class:`CosineHead`: scaled cosine similarity to class means with a learned scale (Chen et al.,
  ICLR 2019, Baseline++; Chen et al., ICCV 2021, Meta-Baseline).
* :class:`MahalanobisHead`: Mahalanobis distance under shrunk per-class covariances (Simple CNAPS,
  Bateni et al., CVPR 2020).
* :class:`RidgeHead`: differentiable closed-form ridge regression onto one-hot targets (R2D2,
  Bertinetto et al., ICLR 2019).
* :class:`LDAHead`: linear discriminant analysis, one pooled covariance shrunk by Ledoit-Wolf's
  estimate (Fisher 1936; Ledoit & Wolf, J. Multivariate Analysis 2004).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from metafit.algorithms.protonet import prototypes, squared_distances
from metafit.functional import Params

__all__ = [
    "CosineHead",
    "EuclideanHead",
    "Head",
    "LDAHead",
    "MahalanobisHead",
    "RidgeHead",
    "class_covariances",
    "ledoit_wolf_shrinkage",
]


@runtime_checkable
class Head(Protocol):
    """What :class:`~metafit.algorithms.metric.MetricLearner` needs from a metric head."""

    def init_params(self) -> Params: ...

    def logits(
        self, support_emb: Tensor, support_y: Tensor, n_way: int, query_emb: Tensor, head_params: Params
    ) -> Tensor: ...


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _param(value: float) -> Tensor:
    return torch.tensor(float(value)).requires_grad_(True)


def _cast(t: Tensor, like: Tensor) -> Tensor:
    return t.to(dtype=like.dtype, device=like.device)


@dataclass(frozen=True)
class EuclideanHead:
    """Prototypical Networks' head (Snell, Swersky & Zemel, NeurIPS 2017, arXiv 1703.05175).

    ``logits[q, k] = -distance_scale * ||query_emb[q] - mu_k||^2`` with ``mu_k`` the mean support
    embedding of class ``k``; the same operations as :class:`~metafit.algorithms.protonet.ProtoNet`,
    so ``MetricLearner(EuclideanHead(s, d))`` gives ``ProtoNet(distance_scale=s, distance=d)``'s
    numbers exactly. No learned parameters.

    Args:
        distance_scale: Fixed positive factor on the distances (1 in the paper).
        distance: ``"squared_euclidean"`` (the paper) or ``"euclidean"`` (easyfsl's choice).
    """

    distance_scale: float = 1.0
    distance: str = "squared_euclidean"

    def __post_init__(self) -> None:
        _positive("distance_scale", self.distance_scale)
        if self.distance not in ("squared_euclidean", "euclidean"):
            raise ValueError(f"distance must be 'squared_euclidean' or 'euclidean', got {self.distance!r}")

    def init_params(self) -> Params:
        """No learned parameters: ``{}``."""
        return {}

    def logits(
        self, support_emb: Tensor, support_y: Tensor, n_way: int, query_emb: Tensor, head_params: Params
    ) -> Tensor:
        """``(Q, n_way)`` negative scaled squared distances to the class means."""
        protos = prototypes(support_emb, support_y, n_way)
        if self.distance == "euclidean":
            return -self.distance_scale * torch.cdist(query_emb, protos)
        return -self.distance_scale * squared_distances(query_emb, protos)


@dataclass(frozen=True)
class CosineHead:
    """Scaled cosine similarity to the class means, with a learned scale (temperature).

    ``logits[q, k] = s * cos(query_emb[q], mu_k)``. The cosine classifier of Baseline++ (Chen, Liu,
    Kira, Wang & Huang, "A Closer Look at Few-shot Classification", ICLR 2019, arXiv 1904.04232)
    and the metric of Meta-Baseline (Chen, Liu, Xu, Darrell & Wang, ICCV 2021, arXiv 2003.04390),
    whose learned temperature ``s`` starts at 10.

    Args:
        scale: Initial (``learn_scale``) or fixed value of ``s``.
        learn_scale: Meta-learn ``s`` (the head parameter ``"scale"``); otherwise ``s`` is fixed.
        eps: Floor on the norms in the cosine.
    """

    scale: float = 10.0
    learn_scale: bool = True
    eps: float = 1e-8

    def __post_init__(self) -> None:
        _positive("scale", self.scale)
        _positive("eps", self.eps)

    def init_params(self) -> Params:
        """``{"scale": s}`` (a 0-d tensor) if the scale is learned, else ``{}``."""
        return {"scale": _param(self.scale)} if self.learn_scale else {}

    def logits(
        self, support_emb: Tensor, support_y: Tensor, n_way: int, query_emb: Tensor, head_params: Params
    ) -> Tensor:
        """``(Q, n_way)`` scaled cosine similarities to the class means."""
        protos = prototypes(support_emb, support_y, n_way)
        cos = F.normalize(query_emb, dim=-1, eps=self.eps) @ F.normalize(protos, dim=-1, eps=self.eps).transpose(0, 1)
        scale = head_params["scale"] if self.learn_scale else self.scale
        return scale * cos


def class_covariances(emb: Tensor, labels: Tensor, n_way: int) -> tuple[Tensor, Tensor, Tensor]:
    """Class means, unbiased class covariances and class counts, with fixed shapes.

    Args:
        emb: ``(S, D)`` support embeddings.
        labels: ``(S,)`` int64 in ``0..n_way-1``.
        n_way: Number of classes ``N``.

    Returns:
        ``means (N, D)``, ``covs (N, D, D)`` with denominator ``max(n_k - 1, 1)`` (a class with one
        example gets a zero covariance) and ``counts (N,)``.
    """
    onehot = F.one_hot(labels, n_way).to(emb.dtype)  # (S, N)
    counts = onehot.sum(0)
    means = (onehot.transpose(0, 1) @ emb) / counts.clamp_min(1.0)[:, None]
    centred = emb[None, :, :] - means[:, None, :]  # (N, S, D)
    weighted = onehot.transpose(0, 1)[:, :, None] * centred
    covs = torch.einsum("nsd,nse->nde", weighted, centred) / (counts - 1.0).clamp_min(1.0)[:, None, None]
    return means, covs, counts


@dataclass(frozen=True)
class MahalanobisHead:
    """Simple CNAPS' Mahalanobis head (Bateni, Goyal, Masrani, Wood & Sigal, CVPR 2020, arXiv 1912.03432).

    For class ``k`` with ``n_k`` support examples, mean ``mu_k`` and covariance ``Sigma_k``, and the
    covariance ``Sigma_task`` of the whole support set (unbiased estimators; a class with one
    example has ``Sigma_k = 0``)::

        Q_k = lambda_k Sigma_k + (1 - lambda_k) Sigma_task + beta I,   lambda_k = n_k / (n_k + 1)
        logits[q, k] = -1/2 (x_q - mu_k)^T Q_k^{-1} (x_q - mu_k)

    (the squared Mahalanobis distance with the paper's factor 1/2). No learned parameters.

    Two exact ways to compute it, chosen from the static shapes (``method="auto"``):
    ``"direct"`` solves with each ``D x D`` matrix ``Q_k`` (``O(N D^3)``), ``"woodbury"`` writes
    ``Q_k = beta I + U_k U_k^T`` with ``U_k`` the ``D x 2S`` scaled, centred support rows (class
    rows for ``Sigma_k``, all rows for ``Sigma_task``) and applies the Woodbury identity, so the
    solve is ``2S x 2S`` (``O(N D S^2)``): cheaper when ``D > 2S``, e.g. 5-way 1-shot on a
    1600-dimensional embedding.

    Args:
        beta: Ridge added to every covariance (1 in the paper).
        method: ``"auto"`` (Woodbury when ``D > 2S``), ``"direct"`` or ``"woodbury"``.
    """

    beta: float = 1.0
    method: str = "auto"

    def __post_init__(self) -> None:
        _positive("beta", self.beta)
        if self.method not in ("auto", "direct", "woodbury"):
            raise ValueError(f"method must be 'auto', 'direct' or 'woodbury', got {self.method!r}")

    def init_params(self) -> Params:
        """No learned parameters: ``{}``."""
        return {}

    def precision_inputs(self, support_emb: Tensor, support_y: Tensor, n_way: int) -> tuple[Tensor, Tensor]:
        """Class means ``(N, D)`` and the shrunk covariances ``Q (N, D, D)``."""
        means, covs, counts = class_covariances(support_emb, support_y, n_way)
        s, d = support_emb.shape
        task_mean = support_emb.mean(0, keepdim=True)
        centred = support_emb - task_mean
        task_cov = centred.transpose(0, 1) @ centred / max(s - 1, 1)
        lam = (counts / (counts + 1.0))[:, None, None]
        eye = torch.eye(d, dtype=support_emb.dtype, device=support_emb.device)
        q = lam * covs + (1.0 - lam) * task_cov[None] + self.beta * eye[None]
        return means, q

    def logits(
        self, support_emb: Tensor, support_y: Tensor, n_way: int, query_emb: Tensor, head_params: Params
    ) -> Tensor:
        """``(Q, n_way)`` = ``-1/2`` squared Mahalanobis distances to the class means."""
        s, d = support_emb.shape
        if self.method == "woodbury" or (self.method == "auto" and d > 2 * s):
            return -0.5 * self._woodbury_distances(support_emb, support_y, n_way, query_emb)
        means, q = self.precision_inputs(support_emb, support_y, n_way)
        diff = query_emb[None, :, :] - means[:, None, :]  # (N, Q, D)
        solved = torch.linalg.solve(q, diff.transpose(1, 2))  # (N, D, Q) = Q_k^{-1} diff^T
        dist = (diff * solved.transpose(1, 2)).sum(-1)  # (N, Q)
        return -0.5 * dist.transpose(0, 1)

    def _woodbury_distances(self, support_emb: Tensor, support_y: Tensor, n_way: int, query_emb: Tensor) -> Tensor:
        """``(Q, N)`` squared Mahalanobis distances by the Woodbury identity (see the class docstring)."""
        s = support_emb.shape[0]
        onehot = F.one_hot(support_y, n_way).to(support_emb.dtype)  # (S, N)
        counts = onehot.sum(0)
        means = (onehot.transpose(0, 1) @ support_emb) / counts.clamp_min(1.0)[:, None]  # (N, D)
        lam = counts / (counts + 1.0)
        # U_k^T rows: sqrt(lam_k / (n_k - 1)) * class-k centred rows (zero for other classes), then
        # sqrt((1 - lam_k) / (S - 1)) * task-centred rows. The factors depend on labels only.
        a = torch.sqrt(lam / (counts - 1.0).clamp_min(1.0))  # (N,)
        b = torch.sqrt((1.0 - lam) / max(s - 1, 1))  # (N,)
        class_rows = onehot.transpose(0, 1)[:, :, None] * (support_emb[None] - means[:, None])  # (N, S, D)
        task_rows = support_emb - support_emb.mean(0, keepdim=True)  # (S, D)
        ut = torch.cat([a[:, None, None] * class_rows, b[:, None, None] * task_rows[None].expand(n_way, -1, -1)], 1)
        diff = query_emb[None, :, :] - means[:, None, :]  # (N, Q, D)
        proj = ut @ diff.transpose(1, 2)  # (N, 2S, Q) = U^T diff
        eye = torch.eye(2 * s, dtype=support_emb.dtype, device=support_emb.device)
        inner = self.beta * eye[None] + ut @ ut.transpose(1, 2)  # (N, 2S, 2S)
        solved = torch.linalg.solve(inner, proj)
        dist = (diff.pow(2).sum(-1) - (proj * solved).sum(1)) / self.beta  # (N, Q)
        return dist.transpose(0, 1)


@dataclass(frozen=True)
class RidgeHead:
    """R2D2's closed-form ridge-regression head (Bertinetto, Henriques, Torr & Vedaldi, ICLR 2019, arXiv 1805.08136).

    With support embeddings ``X (S, D)`` and one-hot labels ``Y (S, N)``, the ridge solution in the
    Woodbury (dual) form, whose cost grows with the support size ``S`` instead of ``D``::

        W = X^T (X X^T + lambda I_S)^{-1} Y         (D, N)
        logits = alpha * (query_emb @ W) + b

    equal to the primal ``(X^T X + lambda I_D)^{-1} X^T Y``. The scale ``alpha``, bias ``b`` (scalars)
    and ``lambda = exp(log_lambda)`` are learned (head parameters ``"scale"``, ``"bias"``,
    ``"log_lambda"``), as in the paper.

    Args:
        init_lambda: Initial ridge penalty ``lambda`` (> 0).
        init_scale: Initial ``alpha``.
        init_bias: Initial ``b``.
    """

    init_lambda: float = 1.0
    init_scale: float = 1.0
    init_bias: float = 0.0

    def __post_init__(self) -> None:
        _positive("init_lambda", self.init_lambda)
        if not math.isfinite(self.init_scale) or not math.isfinite(self.init_bias):
            raise ValueError(f"init_scale and init_bias must be finite, got {self.init_scale} and {self.init_bias}")

    def init_params(self) -> Params:
        """``{"log_lambda", "scale", "bias"}``, 0-d tensors."""
        return {
            "log_lambda": _param(math.log(self.init_lambda)),
            "scale": _param(self.init_scale),
            "bias": _param(self.init_bias),
        }

    @staticmethod
    def weights(support_emb: Tensor, targets: Tensor, lam: Tensor) -> Tensor:
        """``W = X^T (X X^T + lam I)^{-1} Y``: ``(D, N)`` for ``X (S, D)``, ``Y (S, N)``."""
        s = support_emb.shape[0]
        gram = support_emb @ support_emb.transpose(0, 1)
        eye = torch.eye(s, dtype=support_emb.dtype, device=support_emb.device)
        return support_emb.transpose(0, 1) @ torch.linalg.solve(gram + lam * eye, targets)

    def logits(
        self, support_emb: Tensor, support_y: Tensor, n_way: int, query_emb: Tensor, head_params: Params
    ) -> Tensor:
        """``(Q, n_way)`` = ``alpha * query_emb @ W + b``."""
        targets = F.one_hot(support_y, n_way).to(support_emb.dtype)
        lam = torch.exp(_cast(head_params["log_lambda"], support_emb))
        w = self.weights(support_emb, targets, lam)
        return head_params["scale"] * (query_emb @ w) + head_params["bias"]


def ledoit_wolf_shrinkage(centred: Tensor) -> Tensor:
    """Ledoit & Wolf's (J. Multivariate Analysis 2004) optimal shrinkage toward a scaled identity.

    For ``n`` centred rows ``X (n, D)`` with empirical covariance ``E = X^T X / n`` and
    ``mu = tr(E) / D``, the weight ``a`` in ``(1 - a) E + a mu I`` that minimises the estimated
    Frobenius risk::

        delta = ||E - mu I||_F^2 / D
        beta  = min(delta, sum_i ||x_i x_i^T - E||_F^2 / (n^2 D))
        a     = beta / delta          (0 when delta = 0)

    the estimator of ``sklearn.covariance.ledoit_wolf_shrinkage(X, assume_centered=True)``,
    written with fixed shapes (``vmap`` and second-order gradients pass through it).

    Args:
        centred: ``(n, D)`` centred rows.

    Returns:
        A 0-d tensor in ``[0, 1]``.
    """
    n, d = centred.shape
    emp = centred.transpose(0, 1) @ centred / n
    mu = torch.diagonal(emp).sum() / d
    sq_norm = emp.pow(2).sum()
    delta = (sq_norm - 2.0 * mu * torch.diagonal(emp).sum() + d * mu * mu) / d
    fourth = centred.pow(2).sum(1).pow(2).sum()  # sum_i ||x_i||^4
    beta = (fourth / n - sq_norm) / (d * n)
    beta = torch.minimum(beta.clamp_min(0.0), delta)
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    return torch.where(delta > 0, beta / safe, torch.zeros_like(delta))


@dataclass(frozen=True)
class LDAHead:
    """Linear discriminant analysis with a shrunk pooled covariance (Fisher 1936; Ledoit & Wolf 2004).

    The Gaussian class model with one covariance for all classes: with class means ``mu_k`` and
    the pooled within-class scatter ``W = R^T R / S`` of the support rows ``R_i = x_i - mu_{y_i}``
    (``S`` support examples), shrunk toward its mean variance ``m = tr(W) / D``::

        Sigma = (1 - a) W + (a + eps) m I
        logits[q, k] = scale * (x_q^T Sigma^{-1} mu_k - 1/2 mu_k^T Sigma^{-1} mu_k)

    (equal class priors), i.e. ``-scale/2`` times the squared Mahalanobis distance to ``mu_k`` up to a
    term shared by the classes. The shrinkage ``a`` is Ledoit-Wolf's estimate from the task's own
    residuals (:func:`ledoit_wolf_shrinkage`, ``shrinkage="ledoit-wolf"``) or a fixed number in
    ``[0, 1]``; ``eps`` (``1e-6``) keeps ``Sigma`` definite when ``a = 0`` and ``D >= S``. With one
    support example per class ``W = 0`` and ``Sigma = I``: ProtoNet's rule, half its logits. The
    shrinkage target scales with the embedding, so the head is invariant to a rescaling of it,
    unlike :class:`MahalanobisHead`'s fixed ridge ``beta I``; and it pools one covariance over the
    classes instead of mixing in the whole support set's (which contains the between-class
    spread, the direction that separates them). With fixed ``a`` and balanced classes the class
    decision equals ``sklearn``'s ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage=a)``.

    The one learned scalar is ``scale`` (head parameter ``"log_scale"``, the logits' temperature;
    it does not change the decision). ``method="auto"`` solves with the ``D x D`` matrix when
    ``D <= S`` and by the Woodbury identity (``S x S``) otherwise; ``"direct"`` and ``"woodbury"``
    force one (the same numbers).

    Args:
        shrinkage: ``"ledoit-wolf"`` or a float in ``[0, 1]``.
        init_scale: Initial ``scale`` (> 0).
        eps: The definite floor ``eps`` (> 0), relative to ``m``.
        method: ``"auto"``, ``"direct"`` or ``"woodbury"``.
    """

    shrinkage: str | float = "ledoit-wolf"
    init_scale: float = 1.0
    eps: float = 1e-6
    method: str = "auto"

    def __post_init__(self) -> None:
        s = self.shrinkage
        if isinstance(s, str):
            if s != "ledoit-wolf":
                raise ValueError(f"shrinkage must be 'ledoit-wolf' or a number in [0, 1], got {s!r}")
        elif isinstance(s, bool) or not isinstance(s, (int, float)) or not (0.0 <= s <= 1.0):
            raise ValueError(f"shrinkage must be 'ledoit-wolf' or a number in [0, 1], got {s!r}")
        _positive("init_scale", self.init_scale)
        _positive("eps", self.eps)
        if self.method not in ("auto", "direct", "woodbury"):
            raise ValueError(f"method must be 'auto', 'direct' or 'woodbury', got {self.method!r}")

    def init_params(self) -> Params:
        """``{"log_scale"}``, a 0-d tensor."""
        return {"log_scale": _param(math.log(self.init_scale))}

    def covariance_inputs(self, support_emb: Tensor, support_y: Tensor, n_way: int) -> tuple[Tensor, Tensor, Tensor]:
        """Class means ``(N, D)``, residuals ``(S, D)`` and the 0-d shrinkage weight ``a``."""
        onehot = F.one_hot(support_y, n_way).to(support_emb.dtype)
        means = (onehot.transpose(0, 1) @ support_emb) / onehot.sum(0).clamp_min(1.0)[:, None]
        resid = support_emb - onehot @ means
        if isinstance(self.shrinkage, str):
            a = ledoit_wolf_shrinkage(resid)
        else:
            a = torch.tensor(float(self.shrinkage), dtype=support_emb.dtype, device=support_emb.device)
        return means, resid, a

    def solve(self, resid: Tensor, a: Tensor, rhs: Tensor) -> Tensor:
        """``Sigma^{-1} rhs`` for ``rhs (D, M)`` (the ``method`` of the class docstring)."""
        s, d = resid.shape
        scatter_mean = resid.pow(2).sum() / (s * d)  # m = tr(W) / D
        # one example per class: no within-class spread (W = 0), Sigma = I (the Euclidean rule)
        c = torch.where(scatter_mean > 0, (a + self.eps) * scatter_mean, torch.ones_like(scatter_mean))
        if self.method == "direct" or (self.method == "auto" and d <= s):
            w = resid.transpose(0, 1) @ resid / s
            eye = torch.eye(d, dtype=resid.dtype, device=resid.device)
            return torch.linalg.solve((1.0 - a) * w + c * eye, rhs)
        # Sigma = c I + U U^T with U = sqrt((1 - a) / S) R^T (D, S)
        u = torch.sqrt((1.0 - a) / s) * resid.transpose(0, 1)
        eye = torch.eye(s, dtype=resid.dtype, device=resid.device)
        inner = torch.linalg.solve(c * eye + u.transpose(0, 1) @ u, u.transpose(0, 1) @ rhs)
        return (rhs - u @ inner) / c

    def logits(
        self, support_emb: Tensor, support_y: Tensor, n_way: int, query_emb: Tensor, head_params: Params
    ) -> Tensor:
        """``(Q, n_way)`` linear discriminant scores of the queries."""
        means, resid, a = self.covariance_inputs(support_emb, support_y, n_way)
        coef = self.solve(resid, a, means.transpose(0, 1))  # (D, N) = Sigma^{-1} mu_k
        bias = -0.5 * (means * coef.transpose(0, 1)).sum(1)  # (N,)
        scale = torch.exp(_cast(head_params["log_scale"], support_emb))
        return scale * (query_emb @ coef + bias)
