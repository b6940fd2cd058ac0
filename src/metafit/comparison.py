"""Comparing learners honestly: paired tests on shared episodes, training seeds, class-level intervals.

Pure functions over per-episode values (no I/O, no models). Three questions:

* :func:`compare_runs` -- several runs evaluated on the SAME fixed episodes. Each run gets its mean
  with a t interval over episodes; every run is compared with a reference (the best mean, or a
  given baseline) by the paired difference per episode (mean, t interval), a paired t-test and a
  Wilcoxon signed-rank test (``scipy.stats``). The verdict uses the test named by ``test``
  (default the paired t-test), with Holm's step-down correction over the comparisons made.
  Pairing on shared episodes removes the episode-difficulty variance that the two runs share,
  which is why paired tests are so much sharper than overlapping per-run intervals (Lafargue et
  al., "Oops, I Sampled it Again: Reinterpreting Confidence Intervals in Few-Shot Learning", TMLR,
  arXiv 2409.02850, 2024).
* :func:`compare_seeds` -- several training seeds per configuration. The spread over seeds (mean
  and standard deviation of the per-seed means, t interval over seeds) is reported separately from
  the episode interval. When both configurations of a comparison have at least two seeds the
  verdict is a seed-level test (Welch's t-test over per-seed means, or a paired t-test over seeds
  when ``matched_seeds``); otherwise it falls back to the episode-level paired test and says so.
* :func:`class_bootstrap_ci` -- an interval for the mean accuracy that also accounts for the
  sampling of the TEST CLASSES, which fixed-episode intervals ignore: episodes drawn from one
  pool of classes reuse those classes, so the usual ``1.96 sd / sqrt(n)`` shrinks to zero with
  more episodes while the uncertainty due to which classes are in the test set does not
  (Lafargue et al., arXiv 2409.02850, 2024: intervals from episodes sampled with replacement
  underestimate the uncertainty due to the data itself). See the function for the estimator.

Every result is a frozen dataclass with ``to_dict()`` (JSON-able: floats, ints, str, lists).
``scipy`` is imported lazily by the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ClassBootstrap",
    "Comparison",
    "PairedDifference",
    "RunSummary",
    "SeedComparison",
    "SeedDifference",
    "SeedGroupSummary",
    "class_bootstrap_ci",
    "compare_runs",
    "compare_seeds",
    "holm",
    "paired_difference",
    "per_class_values",
    "t_interval",
]

Test = Literal["t", "wilcoxon"]
ArrayLike = Sequence[float] | np.ndarray | Tensor


def _stats() -> Any:
    try:
        import scipy.stats as st
    except ImportError as e:  # pragma: no cover - scipy is in the test environment
        raise ImportError("metafit.comparison needs scipy (pip install scipy)") from e
    return st


def _as_1d(name: str, values: ArrayLike) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of per-episode values, got shape {v.shape}")
    if v.size == 0:
        raise ValueError(f"{name} must hold at least one value, got none")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(v)).sum())} non-finite value(s); expected none")
    return v


def _check_level(level: float) -> float:
    if not isinstance(level, (int, float)) or isinstance(level, bool) or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    return float(level)


def _check_alpha(alpha: float) -> float:
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    return float(alpha)


def t_interval(values: ArrayLike, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval ``mean ± t_{(1+level)/2, n-1} * sd / sqrt(n)``.

    Args:
        values: ``(n,)`` values (``sd`` uses ``n - 1``).
        level: Coverage of the interval.

    Returns:
        ``(mean, low, high)``; for ``n = 1`` the interval is the point ``(mean, mean, mean)``.
    """
    v = _as_1d("values", values)
    level = _check_level(level)
    m = float(v.mean())
    if v.size < 2:
        return m, m, m
    sd = float(v.std(ddof=1))
    half = float(_stats().t.ppf(0.5 + level / 2, v.size - 1)) * sd / math.sqrt(v.size)
    return m, m - half, m + half


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm, Scand. J. Statistics 1979), in the input order.

    With ``m`` p-values sorted ascending ``p_(1) <= ... <= p_(m)``:
    ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``. Rejecting ``adj <= alpha`` controls the
    family-wise error rate at ``alpha``.
    """
    p = np.asarray(list(p_values), dtype=np.float64)
    if p.ndim != 1 or ((p < 0) | (p > 1) | ~np.isfinite(p)).any():
        raise ValueError(f"p_values must be numbers in [0, 1], got {list(p_values)!r}")
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p[i])))
        adj[i] = running
    return adj.tolist()


# -- paired comparison on shared episodes ---------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    """One run on the fixed episodes: mean and ``level`` t interval over episodes."""

    name: str
    mean: float
    low: float
    high: float
    std: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    """``run - reference`` on shared episodes.

    Attributes:
        run, reference: Run names.
        mean, low, high: Mean paired difference and its t interval (raw units of the values).
        n: Episodes.
        t_statistic, t_p: Paired t-test (two-sided).
        wilcoxon_statistic, wilcoxon_p: Wilcoxon signed-rank test (two-sided, zero differences
            dropped, scipy's default ``zero_method="wilcox"``).
        test: The test of the verdict (``"t"`` or ``"wilcoxon"``).
        p_value: That test's p-value; ``p_holm``: Holm-adjusted over the comparison's family.
        significant: ``p_holm <= alpha``.
        verdict: One plain-English line.
    """

    run: str
    reference: str
    mean: float
    low: float
    high: float
    n: int
    t_statistic: float
    t_p: float
    wilcoxon_statistic: float
    wilcoxon_p: float
    test: str
    p_value: float
    p_holm: float
    significant: bool
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (infinite statistics as ``None``)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare_runs`.

    Attributes:
        reference: The run every other run is compared with.
        reference_rule: ``"best"`` (highest mean, or lowest with ``higher_is_better=False``) or
            ``"baseline"`` (given by the caller).
        runs: One :class:`RunSummary` per run, in input order.
        differences: One :class:`PairedDifference` per non-reference run, in input order.
        alpha, level, test, correction: The settings (``correction`` is ``"holm"``).
        scale, unit: How differences are worded in verdicts (e.g. 100 and ``"points"`` for
            accuracies in [0, 1]).
    """

    reference: str
    reference_rule: str
    runs: list[RunSummary]
    differences: list[PairedDifference]
    alpha: float
    level: float
    test: str
    correction: str
    scale: float
    unit: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        d = asdict(self)
        d["runs"] = [r.to_dict() for r in self.runs]
        d["differences"] = [x.to_dict() for x in self.differences]
        return d

    @property
    def verdicts(self) -> list[str]:
        """The verdict line of every comparison."""
        return [d.verdict for d in self.differences]


def _paired_tests(d: np.ndarray) -> tuple[float, float, float, float]:
    """``(t, p_t, w, p_w)`` for paired differences ``d``.

    Exact zeros give ``(0, 1, 0, 1)`` (a run against itself); a constant non-zero difference gets
    ``t = ±inf`` and the exact sign-test p-value ``2 * 0.5^n`` as ``p_t``.
    """
    if not np.any(d != 0):
        return 0.0, 1.0, 0.0, 1.0
    st = _stats()
    if d.size < 2 or float(d.std(ddof=1)) <= 1e-12 * float(np.abs(d).max()):
        # A constant non-zero difference (up to float rounding): the t statistic is infinite and
        # its p-value meaningless for few episodes; use the exact two-sided sign test instead,
        # p = 2 * 0.5^n (1 for one episode).
        t_stat, t_p = math.copysign(math.inf, float(d.mean())), min(1.0, 2.0 * 0.5**d.size)
    else:
        r = st.ttest_rel(d, np.zeros_like(d))
        t_stat, t_p = float(r.statistic), float(r.pvalue)
    r = st.wilcoxon(d)  # zero_method="wilcox": zero differences dropped
    return t_stat, t_p, float(r.statistic), float(r.pvalue)


def _fmt(x: float, scale: float) -> str:
    return f"{x * scale:.3g}"


def _verdict(
    run: str,
    reference: str,
    mean: float,
    low: float,
    high: float,
    significant: bool,
    alpha: float,
    p_holm: float,
    test_name: str,
    scale: float,
    unit: str,
    higher_is_better: bool,
    level: float,
    extra: str = "",
) -> str:
    ci = f"{round(level * 100):d}% CI {_fmt(low, scale)} to {_fmt(high, scale)}"
    if not significant:
        return (
            f"no significant difference between {run} and {reference}: {run} - {reference} = "
            f"{_fmt(mean, scale)} {unit} ({ci}), p = {p_holm:.3g} after Holm correction ({test_name}{extra})"
        )
    run_better = (mean > 0) == higher_is_better
    better, worse = (run, reference) if run_better else (reference, run)
    sign = 1.0 if mean > 0 else -1.0  # the improvement is |mean|, in the direction of mean's sign
    lo, hi = sorted((sign * low, sign * high))
    return (
        f"{better} is better than {worse} by {_fmt(abs(mean), scale)} {unit} "
        f"({round(level * 100):d}% CI {_fmt(lo, scale)} to {_fmt(hi, scale)}), significant at {alpha:g} "
        f"after Holm correction (p = {p_holm:.3g}, {test_name}{extra})"
    )


def paired_difference(a: ArrayLike, b: ArrayLike, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``a - b`` per episode and its t interval: ``(mean, low, high)``.

    Raises:
        ValueError: different lengths (the runs were not evaluated on the same episodes).
    """
    a_, b_ = _as_1d("a", a), _as_1d("b", b)
    if a_.shape != b_.shape:
        raise ValueError(f"paired values need the same episodes: got {a_.size} and {b_.size} values")
    return t_interval(a_ - b_, level)


_TEST_NAMES = {"t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}


def compare_runs(
    values: Mapping[str, ArrayLike],
    *,
    baseline: str | None = None,
    alpha: float = 0.05,
    level: float = 0.95,
    test: Test = "t",
    higher_is_better: bool = True,
    scale: float = 100.0,
    unit: str = "points",
) -> Comparison:
    """Paired comparison of runs evaluated on the same fixed episodes.

    Args:
        values: ``{run name: per-episode values (n,)}``, episode ``i`` the same task for every run
            (e.g. ``EvalResult.per_task["accuracy"]`` on one :func:`~metafit.data.fixed_episodes`).
        baseline: Compare every run with this one; default: with the run of the best mean.
        alpha: Family-wise significance level (Holm over the ``len(values) - 1`` comparisons).
        level: Coverage of the intervals.
        test: ``"t"`` (paired t-test, the default: the mean difference is what is reported) or
            ``"wilcoxon"`` (signed-rank; robust to heavy tails). Both are always computed and
            reported; this chooses the one behind ``p_holm``/``significant``/``verdict``.
        higher_is_better: True for accuracy, False for a loss.
        scale, unit: Wording of verdicts (``100, "points"``: accuracy differences in points).

    Returns:
        :class:`Comparison`.

    Raises:
        ValueError: fewer than two runs, unequal lengths, non-finite values, an unknown baseline.
    """
    if not isinstance(values, Mapping) or len(values) < 2:
        raise ValueError(f"values must map at least two run names to per-episode values, got {len(values)} run(s)")
    if test not in _TEST_NAMES:
        raise ValueError(f"test must be 't' or 'wilcoxon', got {test!r}")
    alpha, level = _check_alpha(alpha), _check_level(level)
    arrays = {str(k): _as_1d(f"values[{k!r}]", v) for k, v in values.items()}
    lengths = {k: v.size for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"every run must be evaluated on the same episodes (same number of values), got {lengths}")
    runs = []
    for name, v in arrays.items():
        m, lo, hi = t_interval(v, level)
        runs.append(RunSummary(name, m, lo, hi, float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)))
    if baseline is not None:
        if baseline not in arrays:
            raise ValueError(f"baseline must be one of the runs {list(arrays)}, got {baseline!r}")
        ref, rule = baseline, "baseline"
    else:
        means = {r.name: r.mean for r in runs}
        ref = (max if higher_is_better else min)(means, key=means.__getitem__)
        rule = "best"
    others = [k for k in arrays if k != ref]
    raw = []
    for k in others:
        d = arrays[k] - arrays[ref]
        m, lo, hi = t_interval(d, level)
        raw.append((k, m, lo, hi, *_paired_tests(d)))
    p_test = [(r[5] if test == "t" else r[7]) for r in raw]
    p_adj = holm(p_test)
    diffs = []
    for (k, m, lo, hi, t_s, t_p, w_s, w_p), p, pa in zip(raw, p_test, p_adj):
        sig = bool(pa <= alpha)
        diffs.append(
            PairedDifference(
                run=k,
                reference=ref,
                mean=m,
                low=lo,
                high=hi,
                n=int(arrays[k].size),
                t_statistic=t_s,
                t_p=t_p,
                wilcoxon_statistic=w_s,
                wilcoxon_p=w_p,
                test=test,
                p_value=p,
                p_holm=pa,
                significant=sig,
                verdict=_verdict(
                    k,
                    ref,
                    m,
                    lo,
                    hi,
                    sig,
                    alpha,
                    pa,
                    _TEST_NAMES[test],
                    scale,
                    unit,
                    higher_is_better,
                    level,
                    f", {arrays[k].size} shared episodes",
                ),
            )
        )
    return Comparison(ref, rule, runs, diffs, alpha, level, test, "holm", float(scale), unit)


# -- training seeds -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedGroupSummary:
    """One configuration trained with several seeds.

    Attributes:
        name: Configuration name.
        n_seeds: Seeds.
        seed_means: Mean over episodes of each seed.
        mean: Mean of ``seed_means``; ``seed_std``: their standard deviation (``n - 1``; 0 for one
            seed); ``seed_low``/``seed_high``: t interval over seeds (the point for one seed).
        episode_low, episode_high: t interval over episodes of the seed-averaged per-episode
            values (when every seed has the same number of episodes, i.e. the same fixed
            episodes; otherwise of all values pooled): the episode-sampling noise only.
        n_episodes: Episodes per seed (the smallest, if they differ).
    """

    name: str
    n_seeds: int
    seed_means: list[float]
    mean: float
    seed_std: float
    seed_low: float
    seed_high: float
    episode_low: float
    episode_high: float
    n_episodes: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return asdict(self)


@dataclass(frozen=True)
class SeedDifference:
    """``run - reference`` between configurations, at the seed level when possible.

    Attributes:
        run, reference: Configuration names.
        level_of_test: ``"seeds-welch"``, ``"seeds-paired"`` or ``"episodes-paired"`` (fallback
            when a group has a single seed; seed variance is then not measured).
        mean, low, high: Difference of means and its t interval (Welch-Satterthwaite degrees of
            freedom for ``seeds-welch``).
        statistic, p_value, p_holm, significant, verdict: As in :class:`PairedDifference`.
    """

    run: str
    reference: str
    level_of_test: str
    mean: float
    low: float
    high: float
    statistic: float
    p_value: float
    p_holm: float
    significant: bool
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (infinite statistics as ``None``)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class SeedComparison:
    """Result of :func:`compare_seeds`."""

    reference: str
    reference_rule: str
    groups: list[SeedGroupSummary]
    differences: list[SeedDifference]
    alpha: float
    level: float
    matched_seeds: bool
    scale: float
    unit: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        d = asdict(self)
        d["groups"] = [g.to_dict() for g in self.groups]
        d["differences"] = [x.to_dict() for x in self.differences]
        return d

    @property
    def verdicts(self) -> list[str]:
        """The verdict line of every comparison."""
        return [d.verdict for d in self.differences]


def _episode_average(seeds: list[np.ndarray]) -> np.ndarray:
    if len({s.size for s in seeds}) == 1:
        return np.mean(np.stack(seeds), axis=0)
    return np.concatenate(seeds)


def _welch(a: np.ndarray, b: np.ndarray, level: float) -> tuple[float, float, float, float, float]:
    """``(diff, low, high, t, p)`` of Welch's t-test for ``mean(a) - mean(b)``."""
    st = _stats()
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    diff = float(a.mean() - b.mean())
    se2 = va + vb
    if se2 == 0.0:
        if diff == 0.0:
            return 0.0, 0.0, 0.0, 0.0, 1.0
        return diff, diff, diff, math.copysign(math.inf, diff), 0.0
    df = se2**2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(st.t.ppf(0.5 + level / 2, df)) * math.sqrt(se2)
    r = st.ttest_ind(a, b, equal_var=False)
    return diff, diff - half, diff + half, float(r.statistic), float(r.pvalue)


def compare_seeds(
    groups: Mapping[str, Sequence[ArrayLike]],
    *,
    baseline: str | None = None,
    alpha: float = 0.05,
    level: float = 0.95,
    matched_seeds: bool = False,
    higher_is_better: bool = True,
    scale: float = 100.0,
    unit: str = "points",
) -> SeedComparison:
    """Compares configurations trained with several seeds each.

    Args:
        groups: ``{config name: [per-episode values (n,) of seed 1, of seed 2, ...]}``.
        baseline: Reference configuration; default the best mean of per-seed means.
        alpha, level: As in :func:`compare_runs` (Holm over the comparisons).
        matched_seeds: Seed ``i`` of every group is the same training seed (same initialisation /
            data order): compare by a paired t-test over seeds (needs equal seed counts).
            Otherwise Welch's t-test over the per-seed means.
        higher_is_better, scale, unit: As in :func:`compare_runs`.

    Returns:
        :class:`SeedComparison`. A comparison where both groups have >= 2 seeds is decided at the
        seed level (the uncertainty of a new training run); otherwise by the episode-level paired
        t-test of the seed-averaged per-episode values (same episodes needed), and its verdict
        says that seed variance was not measured.
    """
    if not isinstance(groups, Mapping) or len(groups) < 2:
        raise ValueError(f"groups must map at least two configuration names to seed lists, got {len(groups)}")
    alpha, level = _check_alpha(alpha), _check_level(level)
    seeds: dict[str, list[np.ndarray]] = {}
    for k, lst in groups.items():
        if isinstance(lst, (Tensor, np.ndarray)) or not isinstance(lst, Sequence) or len(lst) == 0:
            raise ValueError(f"groups[{k!r}] must be a non-empty list of per-seed arrays, got {type(lst).__name__}")
        seeds[str(k)] = [_as_1d(f"groups[{k!r}][{i}]", v) for i, v in enumerate(lst)]
    summaries = []
    for name, lst in seeds.items():
        means = np.array([s.mean() for s in lst])
        m, lo, hi = t_interval(means, level)
        _, elo, ehi = t_interval(_episode_average(lst), level)
        summaries.append(
            SeedGroupSummary(
                name=name,
                n_seeds=len(lst),
                seed_means=means.tolist(),
                mean=m,
                seed_std=float(means.std(ddof=1)) if means.size > 1 else 0.0,
                seed_low=lo,
                seed_high=hi,
                episode_low=elo,
                episode_high=ehi,
                n_episodes=min(s.size for s in lst),
            )
        )
    by_name = {s.name: s for s in summaries}
    if baseline is not None:
        if baseline not in seeds:
            raise ValueError(f"baseline must be one of the configurations {list(seeds)}, got {baseline!r}")
        ref, rule = baseline, "baseline"
    else:
        ref = (max if higher_is_better else min)(by_name, key=lambda k: by_name[k].mean)
        rule = "best"
    raw = []
    for k in (k for k in seeds if k != ref):
        a, b = np.array(by_name[k].seed_means), np.array(by_name[ref].seed_means)
        if a.size >= 2 and b.size >= 2:
            if matched_seeds:
                if a.size != b.size:
                    raise ValueError(
                        f"matched_seeds=True needs the same number of seeds: {k!r} has {a.size}, {ref!r} has {b.size}"
                    )
                d = a - b
                m, lo, hi = t_interval(d, level)
                t_s, t_p, _, _ = _paired_tests(d)
                raw.append((k, "seeds-paired", m, lo, hi, t_s, t_p, f"paired t-test over {a.size} matched seeds"))
            else:
                m, lo, hi, t_s, t_p = _welch(a, b, level)
                raw.append(
                    (k, "seeds-welch", m, lo, hi, t_s, t_p, f"Welch t-test over seeds, {a.size} vs {b.size} seeds")
                )
        else:
            ea, eb = _episode_average(seeds[k]), _episode_average(seeds[ref])
            if ea.shape != eb.shape:
                raise ValueError(
                    f"{k!r} or {ref!r} has a single seed, so the comparison falls back to paired episodes, "
                    f"which needs the same episodes: got {ea.size} and {eb.size} values"
                )
            d = ea - eb
            m, lo, hi = t_interval(d, level)
            t_s, t_p, _, _ = _paired_tests(d)
            raw.append(
                (
                    k,
                    "episodes-paired",
                    m,
                    lo,
                    hi,
                    t_s,
                    t_p,
                    f"paired t-test over {d.size} episodes; single seed, training-seed variance NOT measured",
                )
            )
    p_adj = holm([r[6] for r in raw])
    diffs = []
    for (k, how, m, lo, hi, t_s, t_p, words), pa in zip(raw, p_adj):
        sig = bool(pa <= alpha)
        test_name, _, extra = words.partition(",")
        diffs.append(
            SeedDifference(
                run=k,
                reference=ref,
                level_of_test=how,
                mean=m,
                low=lo,
                high=hi,
                statistic=t_s,
                p_value=t_p,
                p_holm=pa,
                significant=sig,
                verdict=_verdict(
                    k,
                    ref,
                    m,
                    lo,
                    hi,
                    sig,
                    alpha,
                    pa,
                    test_name,
                    scale,
                    unit,
                    higher_is_better,
                    level,
                    f",{extra}" if extra else "",
                ),
            )
        )
    return SeedComparison(ref, rule, summaries, diffs, alpha, level, bool(matched_seeds), float(scale), unit)


# -- an interval over test classes ----------------------------------------------------------------


@dataclass(frozen=True)
class ClassBootstrap:
    """Intervals for the mean that account for the test classes (:func:`class_bootstrap_ci`).

    Attributes:
        mean: Mean over all (episode, class) cells (= the mean of the per-episode means when the
            queries are balanced).
        low, high: The interval to report: percentile interval of the pigeonhole replicates
            rescaled to the two-way cluster-robust variance (see :func:`class_bootstrap_ci`).
        pigeonhole_low, pigeonhole_high: Plain percentile interval of the pigeonhole bootstrap
            (conservative).
        cluster_low, cluster_high: ``mean ± z * sqrt(V)`` with the two-way cluster-robust variance
            ``V = V_episodes + V_classes - V_cells`` (analytic).
        plain_low, plain_high: The usual t interval over per-episode means (episodes i.i.d.).
        n_episodes, n_classes, n_boot, level: Sizes and settings.
        estimator: Short name of the bootstrap.
    """

    mean: float
    low: float
    high: float
    pigeonhole_low: float
    pigeonhole_high: float
    cluster_low: float
    cluster_high: float
    plain_low: float
    plain_high: float
    n_episodes: int
    n_classes: int
    n_boot: int
    level: float
    estimator: str = "two-way cluster variance; pigeonhole (episodes x classes) percentile shape"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return asdict(self)


def per_class_values(values: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Per-class means of per-query values, the input of :func:`class_bootstrap_ci`.

    Args:
        values: ``(E, Q)`` per-query values (e.g. ``(logits.argmax(-1) == query_y).double()``).
        labels: ``(E, Q)`` query labels ``0..n_way-1``.
        n_way: Classes per episode.

    Returns:
        float64 ``(E, n_way)``: entry ``[e, j]`` is the mean over the queries of label ``j`` in
        episode ``e``.

    Raises:
        ValueError: shape mismatch, or a label with no query in some episode.
    """
    if values.shape != labels.shape or values.dim() != 2:
        raise ValueError(
            f"values and labels must both have shape (E, Q), got {tuple(values.shape)} and {tuple(labels.shape)}"
        )
    onehot = torch.nn.functional.one_hot(labels.long(), n_way).to(torch.float64)  # (E, Q, N)
    counts = onehot.sum(1)
    if bool((counts == 0).any()):
        e, j = (counts == 0).nonzero()[0].tolist()
        raise ValueError(f"episode {e} has no query of label {j}: every class needs at least one query")
    return torch.einsum("eq,eqn->en", values.to(torch.float64), onehot) / counts


def class_bootstrap_ci(
    values: ArrayLike,
    episode_classes: ArrayLike,
    *,
    generator: torch.Generator,
    n_boot: int = 2000,
    level: float = 0.95,
) -> ClassBootstrap:
    """Interval for the mean accuracy when episodes reuse classes of a finite test pool.

    The data is a crossed (episode x class) array: cell ``(e, j)`` is the value of episode ``e`` on
    its ``j``-th class (e.g. the accuracy on that class's queries, :func:`per_class_values`), class
    ``episode_classes[e, j]``. The mean over cells has two sources of uncertainty: which episodes
    were drawn, and which classes the test pool holds; the usual interval sees only the first.

    Estimator. (1) The two-way cluster-robust variance of the mean (Cameron, Gelbach & Miller, J.
    Bus. Econ. Stat. 2011), with cell influences ``u = (x - mean) / (E N)``:
    ``V = V_episodes + V_classes - V_cells = sum_e (sum_j u_ej)^2 + sum_c (sum_{cells of c} u)^2 -
    sum u^2``, clipped below at ``V_episodes`` (never narrower than the episode-only variance).
    It equals the plain episode variance (up to ``n / (n - 1)``) when no class is in two episodes,
    and adds the class-sampling variance when classes are shared. (2) The pigeonhole bootstrap
    (Owen, Ann. Appl. Stat. 2007, for crossed random effects): in replicate ``b`` draw episode
    multiplicities ``r ~ Multinomial(E, 1/E)`` and, over the ``C`` distinct classes, class
    multiplicities ``m ~ Multinomial(C, 1/C)``, independently; cell ``(e, j)`` gets weight
    ``r_e * m_{c(e, j)}`` and the replicate is the weighted mean of the cells. Its percentile
    interval is ``pigeonhole_low/high``; it is conservative, because the cell-level noise is
    resampled by both margins (about sqrt(3) too wide for pure cell noise). (3) The reported
    ``low/high``: the percentile interval of the pigeonhole replicates rescaled about the mean to
    the variance ``V`` of (1) (``mean + (theta_b - mean) * sqrt(V / var(theta))``): the spread of
    (1) with the bootstrap's shape (skew near 0 or 1). ``cluster_low/high = mean ± z sqrt(V)`` is
    the normal interval of (1).

    Reused IMAGES (the same query or support image in several episodes) are nested within their
    class, so their effects sit inside the class clusters and are covered by the class terms.

    Why per-class values rather than per-episode values: an episode's value is the mean of its
    classes' values, so with per-episode values alone a class's effect cannot be separated from the
    other classes of the same episode, and any class reweighting dilutes it by ``1/N``.

    Args:
        values: ``(E, N)`` per-(episode, class) values.
        episode_classes: ``(E, N)`` integer class ids (ids of the test pool; any integers).
        generator: CPU ``torch.Generator``, the only source of randomness.
        n_boot: Replicates (>= 100).
        level: Coverage.

    Returns:
        :class:`ClassBootstrap`.
    """
    from metafit.data.sampling import _check_generator

    g = _check_generator(generator)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise ValueError(f"n_boot must be an int >= 100, got {n_boot!r}")
    level = _check_level(level)
    x = torch.as_tensor(np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64))
    cls = torch.as_tensor(np.asarray(episode_classes.cpu() if isinstance(episode_classes, Tensor) else episode_classes))
    if x.dim() != 2:
        raise ValueError(
            f"values must be (E, N) per-(episode, class) values (see per_class_values), got shape {tuple(x.shape)}"
        )
    if cls.shape != x.shape or cls.is_floating_point():
        raise ValueError(
            f"episode_classes must be integer class ids of the same shape as values {tuple(x.shape)}, "
            f"got {tuple(cls.shape)} {cls.dtype}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("values must be finite")
    e_n, n_way = x.shape
    ids, inv = torch.unique(cls.long(), return_inverse=True)  # inv (E, N) in 0..C-1
    c_n = int(ids.numel())
    mean = float(x.mean())
    # Bootstrap: multinomial multiplicities as counts of uniform draws (explicit generator).
    reps = torch.empty(n_boot, dtype=torch.float64)
    chunk = max(1, min(n_boot, 2_000_000 // max(1, e_n + c_n)))
    flat_inv = inv.reshape(-1)
    xf = x.reshape(-1)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        r = torch.zeros(b, e_n, dtype=torch.float64)
        r.scatter_add_(1, torch.randint(e_n, (b, e_n), generator=g), torch.ones(b, e_n, dtype=torch.float64))
        m = torch.zeros(b, c_n, dtype=torch.float64)
        m.scatter_add_(1, torch.randint(c_n, (b, c_n), generator=g), torch.ones(b, c_n, dtype=torch.float64))
        w = r.repeat_interleave(n_way, dim=1) * m[:, flat_inv]  # (b, E*N)
        tot = w.sum(1)
        est = (w @ xf) / tot.clamp_min(1e-300)
        reps[start : start + b] = torch.where(tot > 0, est, torch.full_like(est, mean))
    # Two-way cluster-robust variance (analytic).
    u = (x - mean) / (e_n * n_way)
    v_e = float(u.sum(1).pow(2).sum())
    v_c = float(torch.zeros(c_n, dtype=torch.float64).index_add_(0, flat_inv, u.reshape(-1)).pow(2).sum())
    v_cell = float(u.pow(2).sum())
    var = max(v_e + v_c - v_cell, v_e)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    p_low, p_high = torch.quantile(reps, q).tolist()
    rep_var = float(reps.var())
    factor = math.sqrt(var / rep_var) if rep_var > 0 else 0.0
    low, high = torch.quantile(mean + (reps - mean) * factor, q).tolist()
    z = float(_stats().norm.ppf(0.5 + level / 2))
    _, plo, phi = t_interval(x.mean(1).numpy(), level)
    return ClassBootstrap(
        mean=mean,
        low=float(low),
        high=float(high),
        pigeonhole_low=float(p_low),
        pigeonhole_high=float(p_high),
        cluster_low=mean - z * math.sqrt(var),
        cluster_high=mean + z * math.sqrt(var),
        plain_low=plo,
        plain_high=phi,
        n_episodes=e_n,
        n_classes=c_n,
        n_boot=n_boot,
        level=level,
    )
