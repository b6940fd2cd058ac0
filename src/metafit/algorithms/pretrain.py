"""Supervised pretraining with a few-shot head fitted at test time.

Pretraining (Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot Classification", ICLR 2019,
arXiv 1904.04232; Tian, Wang, Krishnan, Tenenbaum & Isola, "Rethinking Few-Shot Image
Classification: a Good Embedding Is All You Need?", ECCV 2020, arXiv 2003.11539, "RFS"): a
backbone and a classifier over ALL training classes (:class:`LinearClassifier`, or Baseline++'s
:class:`CosineClassifier`) are trained with ordinary cross-entropy on mini-batches. At test time the classifier is dropped and a few-shot head is fitted
on the support set of each episode, chosen by composition (:class:`Pretrain`'s ``head``):

* :class:`LogisticRegressionHead`: RFS's L2-regularised multinomial logistic regression on
  L2-normalised frozen features (the objective of scikit-learn's ``LogisticRegression(C=1/l2)``),
  fitted by a fixed number of Newton steps with a fixed-candidate line search: deterministic and
  vmappable;
* :class:`CosineClassifierHead`: Baseline++'s cosine classifier with a learned scale, its weights
  fitted on the frozen support features by gradient descent;
* :class:`NearestCentroidHead`: nearest class mean of the frozen features;
* :class:`FineTune`: the whole network plus a linear head fine-tuned by SGD on the support set.

Through the engine: :class:`~metafit.data.batches.ClassBatchSampler` yields each mini-batch as a
one-task :class:`~metafit.data.task.TaskBatch` whose query set is the batch (global labels,
``n_way`` = number of training classes) and whose support set is empty. :meth:`Pretrain.loss`
reads the static support size: ``S == 0`` is a pretraining batch (classifier cross-entropy), ``S >
0`` a few-shot episode (fit the head on the support set, score the query set; this is what
:func:`metafit.evaluation.evaluate` calls). Episodes give no meta-gradient (the head is fitted on
frozen features): train on class batches, evaluate on episodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit.algorithms.base import (
    LearnerSpec,
    MetaParams,
    Metrics,
    check_inner_lr,
    check_labels,
    check_steps,
    task_metrics,
)
from metafit.algorithms.maml import inner_gradients
from metafit.algorithms.protonet import prototypes, squared_distances
from metafit.data.task import Task
from metafit.functional import Buffers, Params, apply, params_of

__all__ = [
    "CosineClassifier",
    "CosineClassifierHead",
    "FineTune",
    "LinearClassifier",
    "LogisticRegressionHead",
    "NearestCentroidHead",
    "Pretrain",
    "PretrainClassifier",
    "SupportHead",
    "build_pretrain",
    "cosine_classifier_gradients",
    "fit_logistic_regression",
]


def features(model: nn.Module, params: Params, buffers: Buffers, x: Tensor) -> Tensor:
    """Backbone features ``(B, D)`` (the model's output, flattened)."""
    return apply(model, params, buffers, x).flatten(1)


@runtime_checkable
class SupportHead(Protocol):
    """A few-shot head fitted on one support set at test time."""

    def fit(
        self, model: nn.Module, params: Params, buffers: Buffers, support_x: Tensor, support_y: Tensor, n_way: int
    ) -> Any: ...

    def logits(self, model: nn.Module, params: Params, buffers: Buffers, state: Any, x: Tensor) -> Tensor: ...


# -- logistic regression (RFS) -----------------------------------------------------------------


class LRState(NamedTuple):
    """A fitted logistic regression: ``logits = [x @ basis, 1] @ theta^T`` (float64)."""

    basis: Tensor  # (D, r)
    theta: Tensor  # (N, r + 1); last column: intercepts
    normalize: bool


_LINE_SEARCH = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.0)


def _lr_objective(theta: Tensor, z1: Tensor, onehot: Tensor, l2: float, mask: Tensor) -> Tensor:
    """``sum_i CE_i + l2/2 ||W||^2`` for ``theta (..., N, r+1)`` (intercepts unpenalised)."""
    logp = torch.log_softmax(z1 @ theta.transpose(-1, -2), dim=-1)  # (..., S, N)
    return -(onehot * logp).sum((-1, -2)) + 0.5 * l2 * (theta * mask).pow(2).sum((-1, -2))


def fit_logistic_regression(
    x: Tensor, y: Tensor, n_way: int, *, l2: float = 1.0, steps: int = 20
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression with an L2 penalty on the weights, by Newton's method.

    Minimises ``sum_i CE(W x_i + b, y_i) + l2/2 ||W||_F^2`` (``b`` unpenalised), scikit-learn's
    ``LogisticRegression(C=1/l2)`` objective. The optimal ``W`` lies in the row span of ``x``
    (representer theorem), so when ``D > S`` the problem is solved in an orthonormal basis of that
    span (``Q`` from the QR factorisation of ``x^T``) and costs grow with ``S``, not ``D``. Each of
    ``steps`` Newton steps takes the best of a fixed set of step lengths (1, 1/2, ..., 1/32, 0),
    so the objective never increases; there is no data-dependent control flow (vmappable).
    Computed in float64.

    Args:
        x: ``(S, D)`` features.
        y: ``(S,)`` int64 labels in ``0..n_way-1``.
        n_way: Classes ``N``.
        l2: Penalty weight (``1/C`` in scikit-learn).
        steps: Newton steps.

    Returns:
        ``basis (D, r)`` and ``theta (N, r + 1)``: ``logits = [x @ basis, 1] @ theta^T``.
    """
    x = x.detach().to(torch.float64)
    s, d = x.shape
    if d > s:
        basis = torch.linalg.qr(x.transpose(0, 1), mode="reduced").Q  # (D, S)
    else:
        basis = torch.eye(d, dtype=x.dtype, device=x.device)
    z = x @ basis
    r1 = z.shape[1] + 1
    z1 = torch.cat([z, torch.ones(s, 1, dtype=x.dtype, device=x.device)], dim=1)  # (S, r+1)
    onehot = F.one_hot(y, n_way).to(x.dtype)
    mask = torch.cat(
        [torch.ones(r1 - 1, dtype=x.dtype, device=x.device), torch.zeros(1, dtype=x.dtype, device=x.device)]
    )
    pen = mask.repeat(n_way)  # flattened (N * (r+1)) order: class-major
    eye = torch.eye(n_way * r1, dtype=x.dtype, device=x.device)
    ts = torch.tensor(_LINE_SEARCH, dtype=x.dtype, device=x.device)
    theta = torch.zeros(n_way, r1, dtype=x.dtype, device=x.device)
    for _ in range(steps):
        p = torch.softmax(z1 @ theta.transpose(0, 1), dim=-1)  # (S, N)
        grad = (p - onehot).transpose(0, 1) @ z1 + l2 * theta * mask
        a = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (S, N, N)
        hess = torch.einsum("iab,ij,ik->ajbk", a, z1, z1).reshape(n_way * r1, n_way * r1)
        # l2 on the weights; a tiny ridge for the intercepts' null direction (it changes the path,
        # not the optimum: the gradient vanishes there)
        hess = hess + torch.diag(l2 * pen) + 1e-9 * eye
        delta = torch.linalg.solve(hess, grad.reshape(-1, 1)).reshape(n_way, r1)
        cands = theta[None] - ts[:, None, None] * delta[None]
        pick = F.one_hot(torch.argmin(_lr_objective(cands, z1, onehot, l2, mask)), len(_LINE_SEARCH)).to(x.dtype)
        theta = (pick[:, None, None] * cands).sum(0)
    return basis, theta


@dataclass(frozen=True)
class LogisticRegressionHead:
    """RFS's test-time head (Tian et al., ECCV 2020, arXiv 2003.11539): logistic regression on frozen features.

    Args:
        l2: Weight of the L2 penalty (``1/C``; RFS uses scikit-learn's default ``C = 1``).
        steps: Newton steps (:func:`fit_logistic_regression`).
        normalize: L2-normalise the features first (RFS does).
    """

    l2: float = 1.0
    steps: int = 20
    normalize: bool = True

    def __post_init__(self) -> None:
        check_inner_lr("l2", self.l2)
        check_steps("steps", self.steps)

    def _prep(self, emb: Tensor) -> Tensor:
        return F.normalize(emb, dim=-1) if self.normalize else emb

    def fit_features(self, emb: Tensor, y: Tensor, n_way: int) -> LRState:
        """Fits on support features ``emb (S, D)``."""
        basis, theta = fit_logistic_regression(self._prep(emb.detach()), y, n_way, l2=self.l2, steps=self.steps)
        return LRState(basis, theta, self.normalize)

    def logits_features(self, state: LRState, emb: Tensor) -> Tensor:
        """``(B, N)`` logits for features ``emb (B, D)`` (in ``emb``'s dtype)."""
        z = self._prep(emb.detach()).to(torch.float64) @ state.basis
        z1 = torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype, device=z.device)], dim=1)
        return (z1 @ state.theta.transpose(0, 1)).to(emb.dtype)

    def fit(
        self, model: nn.Module, params: Params, buffers: Buffers, support_x: Tensor, support_y: Tensor, n_way: int
    ) -> LRState:
        """Fits on the frozen features of the support set."""
        return self.fit_features(features(model, params, buffers, support_x), support_y, n_way)

    def logits(self, model: nn.Module, params: Params, buffers: Buffers, state: LRState, x: Tensor) -> Tensor:
        """``(B, N)`` logits of ``x``."""
        return self.logits_features(state, features(model, params, buffers, x))


# -- cosine classifier (Baseline++) ------------------------------------------------------------


class CosineState(NamedTuple):
    """A fitted cosine classifier: weights ``(N, D)`` and log-scale (0-d)."""

    weight: Tensor
    log_scale: Tensor


def cosine_classifier_gradients(
    weight: Tensor, log_scale: Tensor, emb: Tensor, onehot: Tensor
) -> tuple[Tensor, Tensor]:
    """Closed-form gradients of the mean cross-entropy of ``exp(log_scale) * cos(emb, weight)``.

    Args:
        weight: ``(N, D)`` class weights (any norms).
        log_scale: 0-d log of the scale ``s``.
        emb: ``(S, D)`` L2-normalised features.
        onehot: ``(S, N)`` one-hot labels.

    Returns:
        ``(d/d weight (N, D), d/d log_scale (0-d))``; plain tensor code (vmappable, no autograd).
    """
    norm = weight.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w_hat = weight / norm
    logits = torch.exp(log_scale) * emb @ w_hat.transpose(0, 1)  # (S, N)
    d_logits = (torch.softmax(logits, dim=-1) - onehot) / emb.shape[0]
    d_what = torch.exp(log_scale) * d_logits.transpose(0, 1) @ emb  # (N, D)
    d_w = (d_what - w_hat * (d_what * w_hat).sum(-1, keepdim=True)) / norm
    return d_w, (d_logits * logits).sum()


@dataclass(frozen=True)
class CosineClassifierHead:
    """Baseline++'s cosine classifier (Chen et al., ICLR 2019, arXiv 1904.04232) fitted on the support set.

    ``logits = s * cos(f(x), w_k)``. The weights start at the normalised class means and, with the
    log-scale ``log s`` (``learn_scale``), take ``steps`` full-batch gradient-descent steps of size
    ``lr`` on the mean support cross-entropy of the frozen features, with closed-form gradients
    (:func:`cosine_classifier_gradients`; the paper: 100 SGD iterations of batch 4).

    Args:
        scale: Initial (or fixed) scale ``s``.
        learn_scale: Fit ``s`` with the weights.
        steps: Gradient steps.
        lr: Step size.
    """

    scale: float = 10.0
    learn_scale: bool = True
    steps: int = 100
    lr: float = 0.1

    def __post_init__(self) -> None:
        check_inner_lr("scale", self.scale)
        check_steps("steps", self.steps)
        check_inner_lr("lr", self.lr)

    def fit_features(self, emb: Tensor, y: Tensor, n_way: int) -> CosineState:
        """Fits on support features ``emb (S, D)``."""
        emb = F.normalize(emb.detach(), dim=-1)
        w = F.normalize(prototypes(emb, y, n_way), dim=-1)
        ls = torch.full((), math.log(self.scale), dtype=emb.dtype, device=emb.device)

        onehot = F.one_hot(y, n_way).to(emb.dtype)
        for _ in range(self.steps):
            g_w, g_ls = cosine_classifier_gradients(w, ls, emb, onehot)
            w = w - self.lr * g_w
            if self.learn_scale:
                ls = ls - self.lr * g_ls
        return CosineState(w, ls)

    def logits_features(self, state: CosineState, emb: Tensor) -> Tensor:
        """``(B, N)`` logits for features ``emb (B, D)``."""
        cos = F.normalize(emb.detach(), dim=-1) @ F.normalize(state.weight, dim=-1).transpose(0, 1)
        return torch.exp(state.log_scale) * cos

    def fit(
        self, model: nn.Module, params: Params, buffers: Buffers, support_x: Tensor, support_y: Tensor, n_way: int
    ) -> CosineState:
        """Fits on the frozen features of the support set."""
        return self.fit_features(features(model, params, buffers, support_x), support_y, n_way)

    def logits(self, model: nn.Module, params: Params, buffers: Buffers, state: CosineState, x: Tensor) -> Tensor:
        """``(B, N)`` logits of ``x``."""
        return self.logits_features(state, features(model, params, buffers, x))


# -- nearest centroid --------------------------------------------------------------------------


@dataclass(frozen=True)
class NearestCentroidHead:
    """Nearest class mean of frozen features (squared Euclidean; Snell et al., NeurIPS 2017, arXiv 1703.05175).

    Args:
        normalize: L2-normalise the features first.
    """

    normalize: bool = False

    def _prep(self, emb: Tensor) -> Tensor:
        emb = emb.detach()
        return F.normalize(emb, dim=-1) if self.normalize else emb

    def fit(
        self, model: nn.Module, params: Params, buffers: Buffers, support_x: Tensor, support_y: Tensor, n_way: int
    ) -> Tensor:
        """Class means ``(N, D)`` of the frozen support features."""
        return prototypes(self._prep(features(model, params, buffers, support_x)), support_y, n_way)

    def logits(self, model: nn.Module, params: Params, buffers: Buffers, state: Tensor, x: Tensor) -> Tensor:
        """``(B, N)`` negative squared distances to the class means."""
        return -squared_distances(self._prep(features(model, params, buffers, x)), state)


# -- fine-tuning the whole network -------------------------------------------------------------


class FineTuneState(NamedTuple):
    """Fine-tuned backbone parameters and linear head ``weight (N, D)``, ``bias (N,)``."""

    params: Params
    weight: Tensor
    bias: Tensor


_FT_W, _FT_B = "fine_tune/weight", "fine_tune/bias"  # "/" never occurs in a parameter name


@dataclass(frozen=True)
class FineTune:
    """Fine-tune the whole network and a new linear head on the support set (Chen et al., ICLR 2019, arXiv 1904.04232).

    The head starts as the nearest-centroid classifier in linear form (Snell et al. 2017, eq. 3:
    ``w_k = 2 mu_k``, ``b_k = -||mu_k||^2``, times ``head_scale``); then ``steps`` steps of plain
    SGD of size ``lr`` on the support cross-entropy update every backbone parameter and the head
    (through :func:`metafit.algorithms.maml.inner_gradients`, so it runs eagerly, under vmap and
    under ``torch.compile``). The pretrained parameters are not modified, and no gradient flows
    back to them.

    Args:
        steps: SGD steps.
        lr: Step size.
        head_scale: Factor on the initial head (smaller: softer initial logits).
    """

    steps: int = 10
    lr: float = 0.01
    head_scale: float = 1.0

    def __post_init__(self) -> None:
        check_steps("steps", self.steps)
        check_inner_lr("lr", self.lr)
        check_inner_lr("head_scale", self.head_scale)

    def fit(
        self, model: nn.Module, params: Params, buffers: Buffers, support_x: Tensor, support_y: Tensor, n_way: int
    ) -> FineTuneState:
        """Fine-tuned parameters and head."""
        p = {k: v.detach() for k, v in params.items()}
        mu = prototypes(features(model, p, buffers, support_x).detach(), support_y, n_way)
        p[_FT_W] = self.head_scale * 2.0 * mu
        p[_FT_B] = -self.head_scale * mu.pow(2).sum(-1)

        def support_loss(q: Params) -> Tensor:
            backbone = {k: v for k, v in q.items() if k not in (_FT_W, _FT_B)}
            logits = features(model, backbone, buffers, support_x) @ q[_FT_W].transpose(0, 1) + q[_FT_B]
            return F.cross_entropy(logits, support_y)

        for _ in range(self.steps):
            grads = inner_gradients(support_loss, p, create_graph=False, data=support_x)
            p = {k: (v - self.lr * grads[k]).detach() for k, v in p.items()}
        w, b = p.pop(_FT_W), p.pop(_FT_B)
        return FineTuneState(p, w, b)

    def logits(self, model: nn.Module, params: Params, buffers: Buffers, state: FineTuneState, x: Tensor) -> Tensor:
        """``(B, N)`` logits at the fine-tuned parameters."""
        return features(model, state.params, buffers, x) @ state.weight.transpose(0, 1) + state.bias


# -- pretraining classifiers (the meta-parameter group "classifier") ---------------------------


@runtime_checkable
class PretrainClassifier(Protocol):
    """The classifier over all training classes used during pretraining (a parameter group)."""

    def init_params(self, n_classes: int, feature_dim: int, *, generator: torch.Generator) -> Params: ...

    def logits(self, emb: Tensor, params: Params) -> Tensor: ...


def _uniform(n: int, d: int, generator: torch.Generator) -> Tensor:
    bound = 1.0 / math.sqrt(d)
    return (torch.rand(n, d, generator=generator, dtype=torch.float64) * 2.0 - 1.0) * bound


@dataclass(frozen=True)
class LinearClassifier:
    """``logits = f W^T + b`` (Chen et al., ICLR 2019, "Baseline"; Tian et al., ECCV 2020, RFS).

    Parameters: ``weight (C, D)`` (uniform in ``±1/sqrt(D)``, as ``nn.Linear``) and ``bias (C,)`` (zero).
    """

    def init_params(self, n_classes: int, feature_dim: int, *, generator: torch.Generator) -> Params:
        """``{"weight", "bias"}``, float64 (cast by the learner)."""
        return {
            "weight": _uniform(n_classes, feature_dim, generator),
            "bias": torch.zeros(n_classes, dtype=torch.float64),
        }

    def logits(self, emb: Tensor, params: Params) -> Tensor:
        """``(B, C)`` for features ``emb (B, D)``."""
        return emb @ params["weight"].transpose(0, 1) + params["bias"]


@dataclass(frozen=True)
class CosineClassifier:
    """Baseline++'s pretraining classifier (Chen et al., ICLR 2019, arXiv 1904.04232): ``s * cos(f, w_c)``.

    Args:
        scale: The scale ``s`` (the reference code uses 2 for up to 200 classes, 10 above).
        learn_scale: Learn ``s`` (parameter ``"scale"``), as Meta-Baseline's temperature; else fixed.
    """

    scale: float = 10.0
    learn_scale: bool = False

    def __post_init__(self) -> None:
        check_inner_lr("scale", self.scale)

    def init_params(self, n_classes: int, feature_dim: int, *, generator: torch.Generator) -> Params:
        """``{"weight" (C, D)[, "scale" (0-d)]}``, float64 (cast by the learner)."""
        out = {"weight": _uniform(n_classes, feature_dim, generator)}
        if self.learn_scale:
            out["scale"] = torch.tensor(float(self.scale), dtype=torch.float64)
        return out

    def logits(self, emb: Tensor, params: Params) -> Tensor:
        """``(B, C)`` scaled cosine similarities."""
        cos = F.normalize(emb, dim=-1) @ F.normalize(params["weight"], dim=-1).transpose(0, 1)
        return (params["scale"] if self.learn_scale else self.scale) * cos


# -- the learner -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pretrain:
    """Supervised pretraining + a test-time few-shot head (Chen et al., ICLR 2019, arXiv 1904.04232; Tian et al., ECCV 2020, arXiv 2003.11539).

    Meta-parameters: ``"model"`` (the backbone, any embedding network: its flattened output is the
    feature vector) and ``"classifier"`` (``weight (n_classes, D)``, plus ``bias (n_classes,)`` for
    the default :class:`LinearClassifier`), a classifier over the training classes that is a
    parameter group, not a layer of the model. See the module docstring for how batches and
    episodes are told apart.

    In an episode the support set and the query set are embedded in separate batches (``adapt``
    sees only the support set): with batch-statistics normalisation (:class:`~metafit.models.TaskBatchNorm`)
    each set is normalised with its own statistics, as in MAML's evaluation.

    Args:
        n_classes: Number of training classes (the ``n_way`` of every pretraining batch).
        head: The test-time :class:`SupportHead` (default :class:`LogisticRegressionHead`).
        feature_dim: Feature size ``D`` (default: the model's ``feature_dim`` attribute, as
            :class:`~metafit.models.Conv4` has).
        criterion: Must be ``"cross_entropy"``.
        classifier: The pretraining classifier: :class:`LinearClassifier` (default) or
            :class:`CosineClassifier` (Baseline++).

    Example:
        >>> from metafit.models import MLP
        >>> algo = Pretrain(n_classes=10, feature_dim=4)
        >>> mp = algo.init(MLP(3, (8,), 4))
        >>> tuple(mp["classifier"]["weight"].shape)
        (10, 4)
    """

    n_classes: int | None = None
    head: SupportHead = field(default_factory=LogisticRegressionHead)
    feature_dim: int | None = None
    criterion: str = "cross_entropy"
    classifier: PretrainClassifier = field(default_factory=LinearClassifier)

    def __post_init__(self) -> None:
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int) or self.n_classes < 2:
            raise ValueError(f"n_classes must be the number of training classes (an int >= 2), got {self.n_classes!r}")
        if self.feature_dim is not None and (
            isinstance(self.feature_dim, bool) or not isinstance(self.feature_dim, int) or self.feature_dim < 1
        ):
            raise ValueError(f"feature_dim must be an int >= 1 or None, got {self.feature_dim!r}")
        if self.criterion != "cross_entropy":
            raise ValueError(f"Pretrain is a classifier: criterion must be 'cross_entropy', got {self.criterion!r}")
        if not isinstance(self.head, SupportHead):
            raise TypeError(
                "head must have fit(model, params, buffers, support_x, support_y, n_way) and "
                f"logits(model, params, buffers, state, x), got {type(self.head).__name__}"
            )
        if not isinstance(self.classifier, PretrainClassifier):
            raise TypeError(
                "classifier must have init_params(n_classes, feature_dim, *, generator) and logits(emb, params), "
                f"got {type(self.classifier).__name__}"
            )

    @property
    def spec(self) -> LearnerSpec:
        """A classifier without an inner loop; any number of classes per episode."""
        return LearnerSpec(tasks="classification", inner_loop=False, second_order=False, head="none")

    def init(self, model: nn.Module, *, generator: torch.Generator | None = None) -> MetaParams:
        """Backbone parameters and the classifier's (drawn from ``generator``; default: seeded 0)."""
        d = self.feature_dim if self.feature_dim is not None else getattr(model, "feature_dim", None)
        if not isinstance(d, int) or d < 1:
            raise ValueError(
                f"Pretrain needs the feature size: pass feature_dim=, or use a model with an int feature_dim "
                f"attribute (got {type(model).__name__} with feature_dim={d!r})"
            )
        params = params_of(model)
        ref = next(iter(params.values()), None)
        dtype = ref.dtype if ref is not None else torch.get_default_dtype()
        device = ref.device if ref is not None else torch.device("cpu")
        assert self.n_classes is not None
        g = torch.Generator().manual_seed(0) if generator is None else generator
        cls = self.classifier.init_params(self.n_classes, d, generator=g)
        return {
            "model": params,
            "classifier": {k: v.to(dtype=dtype, device=device).requires_grad_(True) for k, v in cls.items()},
        }

    def classifier_logits(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, x: Tensor) -> Tensor:
        """``(B, n_classes)`` logits of the pretraining classifier."""
        c = meta_params["classifier"]
        emb = features(model, meta_params["model"], buffers, x)
        if emb.shape[-1] != c["weight"].shape[1]:
            raise ValueError(
                f"the model's features have size {emb.shape[-1]}, but the classifier expects "
                f"feature_dim={c['weight'].shape[1]}"
            )
        return self.classifier.logits(emb, c)

    def adapt(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        support_x: Tensor,
        support_y: Tensor,
        *,
        n_way: int | None = None,
    ) -> Any:
        """The test-time head fitted on the support set (frozen backbone, except :class:`FineTune`)."""
        if n_way is None:
            n_way = int(support_y.max()) + 1
        check_labels("support_y", support_y, n_way, what="the task")
        return self.head.fit(model, meta_params["model"], buffers, support_x, support_y, n_way)

    def predict(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: Any, x: Tensor) -> Tensor:
        """``(B, n_way)`` logits of the fitted head."""
        return self.head.logits(model, meta_params["model"], buffers, adapted, x)

    def loss(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, task: Task) -> tuple[Tensor, Metrics]:
        """Empty support: pretraining cross-entropy over the global labels; else the episode's query loss."""
        if task.n_way is None:
            raise ValueError("Pretrain needs tasks with n_way set (classification tasks)")
        if task.support_x.shape[0] == 0:
            if task.n_way != self.n_classes:
                raise ValueError(
                    f"a pretraining batch (empty support set) must have n_way = n_classes = {self.n_classes}, "
                    f"got n_way={task.n_way}"
                )
            check_labels("query_y", task.query_y, task.n_way, what="the pretraining classifier")
            logits = self.classifier_logits(model, meta_params, buffers, task.query_x)
        else:
            check_labels("query_y", task.query_y, task.n_way, what="the task")
            state = self.adapt(model, meta_params, buffers, task.support_x, task.support_y, n_way=task.n_way)
            logits = self.predict(model, meta_params, buffers, state, task.query_x)
        loss = F.cross_entropy(logits, task.query_y)
        return loss, task_metrics("cross_entropy", logits, task.query_y, loss)


def build_pretrain(
    criterion: str,
    *,
    n_classes: int | None = None,
    feature_dim: int | None = None,
    head: str = "logistic",
    l2: float = 1.0,
    newton_steps: int = 20,
    scale: float = 10.0,
    fit_steps: int = 100,
    fit_lr: float = 0.1,
    finetune_steps: int = 10,
    finetune_lr: float = 0.01,
    classifier: str = "linear",
    classifier_scale: float = 10.0,
) -> Pretrain:
    """Registry builder: ``head`` is ``"logistic"``, ``"cosine"``, ``"centroid"`` or ``"finetune"``.

    ``n_classes`` (the number of training classes) must be set; ``l2``/``newton_steps`` configure
    the logistic head, ``scale``/``fit_steps``/``fit_lr`` the cosine head, ``finetune_*`` fine-tuning;
    ``classifier`` is the pretraining classifier, ``"linear"`` or ``"cosine"`` (Baseline++, fixed
    scale ``classifier_scale``).
    """
    classifiers = {"linear": LinearClassifier, "cosine": lambda: CosineClassifier(scale=classifier_scale)}
    if classifier not in classifiers:
        raise ValueError(f"classifier must be one of {sorted(classifiers)}, got {classifier!r}")
    heads = {
        "logistic": lambda: LogisticRegressionHead(l2=l2, steps=newton_steps),
        "cosine": lambda: CosineClassifierHead(scale=scale, steps=fit_steps, lr=fit_lr),
        "centroid": NearestCentroidHead,
        "finetune": lambda: FineTune(steps=finetune_steps, lr=finetune_lr),
    }
    if head not in heads:
        raise ValueError(f"head must be one of {sorted(heads)}, got {head!r}")
    return Pretrain(
        n_classes=n_classes,
        head=heads[head](),
        feature_dim=feature_dim,
        criterion=criterion,
        classifier=classifiers[classifier](),
    )
