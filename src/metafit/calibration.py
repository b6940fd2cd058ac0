"""Calibration of few-shot classifiers: NLL, Brier score, ECE, reliability diagrams, temperature scaling.

Definitions (``p`` the predicted class probabilities of a query, ``y`` its label, ``C`` classes):

* NLL: ``-log p_y``, averaged.
* Brier score (multi-class, Brier 1950): ``sum_c (p_c - [y = c])^2``, averaged (summed over
  classes, not divided by ``C``; 0 is perfect, 2 the worst).
* ECE (Guo, Pleiss, Sun & Weinberger, ICML 2017, arXiv 1706.04599): confidence ``max_c p_c``,
  ``n_bins`` EQUAL-WIDTH bins ``B_m = ((m - 1) / M, m / M]`` (a confidence of exactly 0 goes to the
  first bin), ``ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|`` with ``acc`` the fraction of
  correct top-1 predictions and ``conf`` the mean confidence in the bin.

Pooling: ``per_episode=False`` (default) pools every query of every episode into one set;
``per_episode=True`` computes each metric on each episode's queries (same bins) and averages over
episodes (the result's ``pooling`` field says which). The reliability diagram is always pooled.

Temperature scaling (Guo et al. 2017, §4.2): one scalar ``T > 0`` dividing the logits, fitted by
minimising the NLL on VALIDATION episodes only (:func:`fit_temperature`; a deterministic
golden-section search over ``log T``, on which the NLL is unimodal because it is convex in
``1 / T``), then applied to test logits (:func:`apply_temperature`). Accuracy is unchanged.
"""

from __future__ import annotations

import collections
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CalibrationResult",
    "ReliabilityDiagram",
    "TemperatureFit",
    "apply_temperature",
    "calibrate_with_temperature",
    "calibration_metrics",
    "fit_temperature",
    "query_logits",
    "reliability_diagram",
]

#: Search interval of ``log T`` in :func:`fit_temperature` (T from about 1e-3 to 1e3).
LOG_T_BOUNDS = (-7.0, 7.0)


def _check_bins(n_bins: object) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an int >= 1, got {n_bins!r}")
    return n_bins


def _log_probs(scores: Tensor, labels: Tensor, from_logits: bool) -> tuple[Tensor, Tensor]:
    """``(log_probs (..., C) float64, labels)`` after shape and value checks."""
    if not isinstance(scores, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(f"scores and labels must be tensors, got {type(scores).__name__} and {type(labels).__name__}")
    if scores.dim() < 2 or scores.shape[:-1] != labels.shape:
        raise ValueError(
            f"scores must be (..., C) with labels (...): (Q, C) with (Q,) or (E, Q, C) with (E, Q); got "
            f"{tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    if labels.is_floating_point():
        raise ValueError(f"labels must be integer class labels, got dtype {labels.dtype}")
    c = scores.shape[-1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= c):
        raise ValueError(f"labels must lie in 0..{c - 1}, got labels in {int(labels.min())}..{int(labels.max())}")
    s = scores.detach().to(torch.float64)
    if not bool(torch.isfinite(s).all()):
        raise ValueError("scores contain non-finite values; expected finite logits or probabilities")
    if from_logits:
        return F.log_softmax(s, dim=-1), labels.long()
    if bool((s < 0).any()) or not torch.allclose(s.sum(-1), torch.ones((), dtype=torch.float64), atol=1e-4):
        raise ValueError("probabilities must be non-negative and sum to 1 over the last dimension (from_logits=False)")
    return torch.log(s / s.sum(-1, keepdim=True)), labels.long()


@dataclass(frozen=True)
class ReliabilityDiagram:
    """Per-bin data of a reliability diagram (equal-width bins on [0, 1]).

    Attributes:
        edges: ``n_bins + 1`` bin edges ``0, 1/M, ..., 1``.
        confidence: Mean confidence per bin (``None`` for an empty bin).
        accuracy: Fraction correct per bin (``None`` for an empty bin).
        count: Queries per bin.
    """

    edges: list[float]
    confidence: list[float | None]
    accuracy: list[float | None]
    count: list[int]

    def to_dict(self) -> dict[str, list]:
        """JSON-friendly dict."""
        return asdict(self)


@dataclass(frozen=True)
class CalibrationResult:
    """NLL, Brier score and ECE of a set of predictions (module docstring for the definitions).

    Attributes:
        nll, brier, ece, accuracy: The metrics.
        n_bins: Bins of the ECE; ``binning``: ``"equal-width"``.
        pooling: ``"pooled"`` (all queries as one set) or ``"per-episode"`` (mean over episodes).
        n_queries, n_episodes: Sizes (``n_episodes`` is 1 for ``(Q, C)`` input).
        diagram: Pooled :class:`ReliabilityDiagram`.
    """

    nll: float
    brier: float
    ece: float
    accuracy: float
    n_bins: int
    binning: str
    pooling: str
    n_queries: int
    n_episodes: int
    diagram: ReliabilityDiagram

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly dict."""
        return asdict(self)


def _bin_index(conf: Tensor, n_bins: int) -> Tensor:
    # B_m = ((m-1)/M, m/M]: index ceil(conf * M) - 1, with conf = 0 in the first bin.
    return (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)


def _ece(conf: Tensor, correct: Tensor, n_bins: int) -> float:
    idx = _bin_index(conf, n_bins)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct)
    return float((acc_sum - conf_sum).abs().sum() / conf.numel())  # sum_m |B_m|/n |acc_m - conf_m|


def _metrics(logp: Tensor, y: Tensor, n_bins: int) -> tuple[float, float, float, float]:
    """``(nll, brier, ece, accuracy)`` of flat ``logp (n, C)``, ``y (n,)``."""
    p = logp.exp()
    nll = float(-logp.gather(1, y[:, None]).mean())
    brier = float((p - F.one_hot(y, p.shape[1]).to(p.dtype)).pow(2).sum(1).mean())
    conf, pred = p.max(1)
    correct = (pred == y).to(torch.float64)
    return nll, brier, _ece(conf, correct, n_bins), float(correct.mean())


def reliability_diagram(
    scores: Tensor, labels: Tensor, *, n_bins: int = 15, from_logits: bool = True
) -> ReliabilityDiagram:
    """Pooled reliability-diagram data of ``scores (..., C)`` against ``labels (...)``."""
    n_bins = _check_bins(n_bins)
    logp, y = _log_probs(scores, labels, from_logits)
    p = logp.reshape(-1, logp.shape[-1]).exp()
    conf, pred = p.max(1)
    correct = (pred == y.reshape(-1)).to(torch.float64)
    idx = _bin_index(conf, n_bins)
    count = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, torch.ones_like(conf))
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct)
    return ReliabilityDiagram(
        edges=[m / n_bins for m in range(n_bins + 1)],
        confidence=[float(s / c) if c > 0 else None for s, c in zip(conf_sum, count)],
        accuracy=[float(s / c) if c > 0 else None for s, c in zip(acc_sum, count)],
        count=[int(c) for c in count],
    )


def calibration_metrics(
    scores: Tensor,
    labels: Tensor,
    *,
    n_bins: int = 15,
    from_logits: bool = True,
    per_episode: bool = False,
) -> CalibrationResult:
    """NLL, Brier score, ECE (equal-width bins) and the reliability diagram.

    Args:
        scores: Logits (``from_logits=True``) or probabilities, ``(Q, C)`` for one set of queries
            or ``(E, Q, C)`` for ``E`` episodes.
        labels: ``(Q,)`` or ``(E, Q)`` int labels ``0..C-1``.
        n_bins: Equal-width confidence bins of the ECE and the diagram (15 as in Guo et al. 2017).
        from_logits: Whether ``scores`` are logits (softmax applied) or probabilities.
        per_episode: Average the metrics over episodes (each on its own queries) instead of
            pooling all queries; needs ``(E, Q, C)`` input.

    Returns:
        :class:`CalibrationResult`.
    """
    n_bins = _check_bins(n_bins)
    logp, y = _log_probs(scores, labels, from_logits)
    if per_episode and logp.dim() != 3:
        raise ValueError(f"per_episode=True needs (E, Q, C) scores, got shape {tuple(scores.shape)}")
    n_ep = int(logp.shape[0]) if logp.dim() == 3 else 1
    if per_episode:
        rows = torch.tensor([_metrics(logp[e], y[e], n_bins) for e in range(n_ep)], dtype=torch.float64)
        nll, brier, ece, acc = rows.mean(0).tolist()
    else:
        nll, brier, ece, acc = _metrics(logp.reshape(-1, logp.shape[-1]), y.reshape(-1), n_bins)
    return CalibrationResult(
        nll=nll,
        brier=brier,
        ece=ece,
        accuracy=acc,
        n_bins=n_bins,
        binning="equal-width",
        pooling="per-episode" if per_episode else "pooled",
        n_queries=int(y.numel()),
        n_episodes=n_ep,
        diagram=reliability_diagram(scores, labels, n_bins=n_bins, from_logits=from_logits),
    )


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature.

    Attributes:
        temperature: ``T`` (logits are divided by it).
        nll_before, nll_after: Validation NLL at ``T = 1`` and at the fitted ``T``.
        at_bound: The optimum hit the search interval ``LOG_T_BOUNDS`` (treat ``T`` with care).
        n_queries: Validation queries used.
    """

    temperature: float
    nll_before: float
    nll_after: float
    at_bound: bool
    n_queries: int

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly dict."""
        return asdict(self)


def _nll_at(logits: Tensor, y: Tensor, log_t: float) -> float:
    return float(F.cross_entropy(logits * math.exp(-log_t), y))


def fit_temperature(validation_logits: Tensor, validation_labels: Tensor, *, tol: float = 1e-9) -> TemperatureFit:
    """Temperature minimising the NLL on validation queries (golden-section search over ``log T``).

    Deterministic (no randomness, fixed iteration rule, float64). Use validation episodes only;
    apply the result to test logits with :func:`apply_temperature`.

    Args:
        validation_logits: ``(Q, C)`` or ``(E, Q, C)`` logits of VALIDATION queries.
        validation_labels: ``(Q,)`` or ``(E, Q)`` labels.
        tol: Width of the final ``log T`` bracket.

    Returns:
        :class:`TemperatureFit`.
    """
    logp, y = _log_probs(validation_logits, validation_labels, True)
    z = validation_logits.detach().to(torch.float64).reshape(-1, logp.shape[-1])
    y = y.reshape(-1)
    a, b = LOG_T_BOUNDS
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = _nll_at(z, y, c), _nll_at(z, y, d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = _nll_at(z, y, c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = _nll_at(z, y, d)
    log_t = (a + b) / 2.0
    at_bound = min(log_t - LOG_T_BOUNDS[0], LOG_T_BOUNDS[1] - log_t) < 1e-3
    return TemperatureFit(
        temperature=math.exp(log_t),
        nll_before=_nll_at(z, y, 0.0),
        nll_after=_nll_at(z, y, log_t),
        at_bound=bool(at_bound),
        n_queries=int(y.numel()),
    )


def apply_temperature(logits: Tensor, temperature: float | TemperatureFit) -> Tensor:
    """``logits / T`` (same shape and dtype)."""
    t = temperature.temperature if isinstance(temperature, TemperatureFit) else float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {t!r}")
    return logits / t


def calibrate_with_temperature(
    validation_logits: Tensor,
    validation_labels: Tensor,
    test_logits: Tensor,
    test_labels: Tensor,
    *,
    n_bins: int = 15,
    per_episode: bool = False,
) -> tuple[TemperatureFit, CalibrationResult, CalibrationResult]:
    """Fits ``T`` on validation queries and reports test calibration before and after.

    Returns:
        ``(fit, test_before, test_after)``.
    """
    fit = fit_temperature(validation_logits, validation_labels)
    before = calibration_metrics(test_logits, test_labels, n_bins=n_bins, per_episode=per_episode)
    after = calibration_metrics(
        apply_temperature(test_logits, fit), test_labels, n_bins=n_bins, per_episode=per_episode
    )
    return fit, before, after


def query_logits(
    algorithm: object,
    model: torch.nn.Module,
    meta_params: dict[str, dict[str, Tensor]],
    tasks: object,
    *,
    buffers: dict[str, Tensor] | None = None,
    steps: int | None = None,
    lr: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Query logits of every task after adaptation, for :func:`calibration_metrics`.

    The same adaptation as :func:`metafit.evaluation.evaluate`: gradient learners take ``steps``
    inner steps (default their ``eval_settings()``), others ``adapt`` then ``predict``.

    Args:
        algorithm: The learner.
        model: Its module.
        meta_params: Trained meta-parameters (detached copies are used).
        tasks: A :class:`~metafit.data.task.TaskBatch` or a sequence of equally shaped tasks.
        buffers: Model buffers.
        steps, lr: Inner-loop settings of gradient learners.

    Returns:
        ``(logits (E, Q, C), labels (E, Q))``.
    """
    from metafit.algorithms.base import GradientLearner, clone_meta_params

    buffers = buffers or {}
    spec = algorithm.spec  # type: ignore[attr-defined]
    out, labels = [], []
    for task in tasks:  # type: ignore[attr-defined]
        if spec.inner_loop:
            assert isinstance(algorithm, GradientLearner)
            settings = algorithm.eval_settings()
            mp = clone_meta_params(meta_params, requires_grad=True)
            params = collections.deque(
                algorithm.adapt_steps(
                    model,
                    mp,
                    buffers,
                    task.support_x,
                    task.support_y,
                    steps=settings.steps if steps is None else steps,
                    lr=settings.lr if lr is None else lr,
                    create_graph=False,
                ),
                maxlen=1,
            )[0]  # the last step's parameters
            with torch.no_grad():
                logits = algorithm.predict(model, mp, buffers, params, task.query_x)
        else:
            mp = clone_meta_params(meta_params, requires_grad=False)
            with torch.no_grad():
                adapted = algorithm.adapt(  # type: ignore[attr-defined]
                    model, mp, buffers, task.support_x, task.support_y, n_way=task.n_way
                )
                logits = algorithm.predict(model, mp, buffers, adapted, task.query_x)  # type: ignore[attr-defined]
        out.append(logits.detach())
        labels.append(task.query_y)
    return torch.stack(out), torch.stack(labels)
