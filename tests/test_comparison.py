"""Paired comparisons, seed-level comparisons and the class bootstrap (metafit.comparison)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats as st
import torch

from metafit.comparison import (
    class_bootstrap_ci,
    compare_runs,
    compare_seeds,
    holm,
    paired_difference,
    per_class_values,
    t_interval,
)


def _acc(p: float, n: int, seed: int, q: int = 25) -> np.ndarray:
    """Per-episode accuracies of n episodes with q queries each, success probability p."""
    return np.random.default_rng(seed).binomial(q, p, size=n) / q


def test_t_interval_known_answer() -> None:
    m, lo, hi = t_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305284263 * math.sqrt(5.0 / 3.0) / 2.0  # t_{.975,3} * sd / sqrt(4), sd^2 = 5/3
    assert m == 2.5 and lo == pytest.approx(2.5 - half, abs=1e-12) and hi == pytest.approx(2.5 + half, abs=1e-12)
    assert t_interval([0.7]) == (0.7, 0.7, 0.7)


def test_holm_known_answer() -> None:
    # sorted: .01*3 = .03; .03*2 = .06; .04*1 = .04 -> max(.06, .04) = .06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        holm([0.1, 1.5])


def test_compare_runs_run_against_itself_is_exactly_zero_and_not_significant() -> None:
    a = _acc(0.6, 300, 0)
    c = compare_runs({"a": a, "a_again": a.copy()}, baseline="a")
    d = c.differences[0]
    assert d.mean == 0.0 and d.low == 0.0 and d.high == 0.0
    assert d.t_p == 1.0 and d.wilcoxon_p == 1.0 and d.p_holm == 1.0 and not d.significant
    assert d.verdict.startswith("no significant difference between a_again and a")


def test_compare_runs_clearly_better_run_is_significant() -> None:
    trained, untrained = _acc(0.9, 200, 1), _acc(0.2, 200, 2)
    c = compare_runs({"untrained": untrained, "trained": trained})
    assert c.reference == "trained" and c.reference_rule == "best"
    d = c.differences[0]
    assert d.run == "untrained" and d.significant and d.p_holm < 1e-30
    assert d.verdict.startswith(f"trained is better than untrained by {-d.mean * 100:.3g} points")  # ~70
    assert "significant at 0.05 after Holm correction" in d.verdict and "paired t-test" in d.verdict
    # the interval of the improvement is positive in the verdict
    lo, hi = -d.high * 100, -d.low * 100
    assert f"95% CI {lo:.3g} to {hi:.3g}" in d.verdict


def test_compare_runs_constant_difference_uses_the_sign_test() -> None:
    one = compare_runs({"a": [0.5], "b": [0.6]}).differences[0]
    assert one.t_p == 1.0 and not one.significant  # one episode proves nothing
    a = _acc(0.5, 12, 20)
    many = compare_runs({"a": a, "b": a + 0.04}).differences[0]
    assert many.t_statistic == -math.inf and many.t_p == pytest.approx(2 * 0.5**12) and many.significant
    assert (
        json.loads(json.dumps(compare_runs({"a": a, "b": a + 0.04}).to_dict()))["differences"][0]["t_statistic"] is None
    )


def test_compare_runs_tests_match_direct_formulas() -> None:
    a, b = _acc(0.62, 150, 3), _acc(0.6, 150, 4)
    d = compare_runs({"a": a, "b": b}, baseline="b").differences[0]
    diff = a - b
    t_hand = diff.mean() / (diff.std(ddof=1) / math.sqrt(diff.size))
    assert d.t_statistic == pytest.approx(t_hand, rel=1e-12)
    assert d.t_p == pytest.approx(2 * st.t.sf(abs(t_hand), diff.size - 1), rel=1e-9)
    assert d.wilcoxon_p == pytest.approx(st.wilcoxon(diff).pvalue, rel=1e-12)
    m, lo, hi = paired_difference(a, b)
    assert (d.mean, d.low, d.high) == (m, lo, hi)
    w = compare_runs({"a": a, "b": b}, baseline="b", test="wilcoxon").differences[0]
    assert w.p_value == w.wilcoxon_p and "Wilcoxon" in w.verdict


def test_compare_runs_pairing_detects_a_small_gain_hidden_by_episode_difficulty() -> None:
    rng = np.random.default_rng(5)
    difficulty = rng.uniform(0.3, 0.95, 400)  # shared by both runs: large episode-to-episode spread
    base = difficulty + rng.normal(0, 0.01, 400)
    better = difficulty + 0.01 + rng.normal(0, 0.01, 400)
    c = compare_runs({"base": base, "better": better})
    r = {x.name: x for x in c.runs}
    assert r["better"].low < r["base"].high  # the per-run intervals overlap ...
    assert c.differences[0].significant  # ... yet the paired test is clear


def test_compare_runs_holm_adjusts_over_the_family() -> None:
    ref = _acc(0.7, 100, 6)
    runs = {"ref": ref, **{f"r{i}": ref - 0.004 + np.random.default_rng(10 + i).normal(0, 0.02, 100) for i in range(3)}}
    c = compare_runs(runs, baseline="ref")
    raw = [d.p_value for d in c.differences]
    assert [d.p_holm for d in c.differences] == pytest.approx(holm(raw))
    assert all(d.p_holm >= d.p_value for d in c.differences)


def test_compare_runs_lower_is_better_for_losses() -> None:
    low_loss, high_loss = 0.5 + 0.05 * _acc(0.5, 100, 7), 1.5 + 0.05 * _acc(0.5, 100, 8)
    c = compare_runs({"high": high_loss, "low": low_loss}, higher_is_better=False, scale=1.0, unit="nats")
    assert c.reference == "low"
    assert c.differences[0].verdict.startswith("low is better than high by 1 nats")


def test_compare_runs_to_dict_is_json_and_errors_name_the_problem() -> None:
    c = compare_runs({"a": _acc(0.5, 50, 9), "b": _acc(0.55, 50, 10)})
    back = json.loads(json.dumps(c.to_dict()))
    assert back["reference"] == c.reference and len(back["differences"]) == 1
    with pytest.raises(ValueError, match="same episodes"):
        compare_runs({"a": [0.1, 0.2], "b": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match="baseline must be one of the runs"):
        compare_runs({"a": [0.1, 0.2], "b": [0.1, 0.3]}, baseline="c")
    with pytest.raises(ValueError, match="non-finite"):
        compare_runs({"a": [0.1, float("nan")], "b": [0.1, 0.3]})


def test_compare_seeds_reports_seed_spread_and_uses_welch() -> None:
    # per-seed offsets dominate: seed means 0.60, 0.70, 0.65 vs 0.50, 0.52, 0.54
    ep = _acc(0.5, 200, 11) - 0.5
    a = [ep + m for m in (0.60, 0.70, 0.65)]
    b = [ep + m for m in (0.50, 0.52, 0.54)]
    c = compare_seeds({"a": a, "b": b})
    ga = c.groups[0]
    assert ga.seed_means == pytest.approx([0.60 + ep.mean(), 0.70 + ep.mean(), 0.65 + ep.mean()])
    assert ga.seed_std == pytest.approx(0.05)
    half = st.t.ppf(0.975, 2) * 0.05 / math.sqrt(3)
    assert ga.seed_high - ga.seed_low == pytest.approx(2 * half)
    _, elo, ehi = t_interval(np.mean(np.stack(a), 0))
    assert (ga.episode_low, ga.episode_high) == (elo, ehi)
    d = c.differences[0]
    assert d.level_of_test == "seeds-welch" and "Welch t-test over seeds" in d.verdict
    assert d.p_value == pytest.approx(st.ttest_ind(ga.seed_means, c.groups[1].seed_means, equal_var=False).pvalue)
    assert d.significant and d.verdict.startswith("a is better than b")


def test_compare_seeds_seed_noise_can_make_an_episode_significant_gain_insignificant() -> None:
    ep = _acc(0.5, 500, 12) - 0.5
    a = [ep + m for m in (0.55, 0.75, 0.60)]  # mean .633
    b = [ep + m for m in (0.62, 0.58, 0.66)]  # mean .62
    seed_level = compare_seeds({"a": a, "b": b}).differences[0]
    assert not seed_level.significant
    episode_level = compare_runs({"a": np.mean(np.stack(a), 0), "b": np.mean(np.stack(b), 0)}).differences[0]
    assert episode_level.significant  # 500 shared episodes make a 1.3-point gain look certain


def test_compare_seeds_matched_and_single_seed_fallback() -> None:
    ep = _acc(0.5, 100, 13) - 0.5
    a = [ep + m for m in (0.61, 0.71, 0.66)]
    b = [ep + m for m in (0.602, 0.698, 0.651)]  # matched: a - b = 0.01 on average over seeds
    d = compare_seeds({"a": a, "b": b}, baseline="b", matched_seeds=True).differences[0]
    assert d.level_of_test == "seeds-paired" and d.mean == pytest.approx(0.01 - 0.001 / 3) and d.significant
    single = compare_seeds({"a": [ep + 0.6], "b": [ep + 0.5, ep + 0.52]}).differences[0]
    assert single.level_of_test == "episodes-paired" and "NOT measured" in single.verdict
    assert compare_seeds({"a": [ep + 0.6], "b": [ep + 0.5, ep + 0.52]}).verdicts == [single.verdict]
    json.dumps(compare_seeds({"a": a, "b": b}).to_dict())


def _crossed(
    rng: np.random.Generator,
    n_classes: int,
    n_episodes: int,
    n_way: int,
    class_sd: float,
    noise_sd: float,
    shared: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-(episode, class) values: 0.7 + class effect + cell noise; classes shared or all distinct."""
    if shared:
        classes = np.stack([rng.choice(n_classes, n_way, replace=False) for _ in range(n_episodes)])
    else:
        classes = np.arange(n_episodes * n_way).reshape(n_episodes, n_way)
    effect = rng.normal(0, class_sd, classes.max() + 1)
    return 0.7 + effect[classes] + rng.normal(0, noise_sd, classes.shape), classes


def test_class_bootstrap_is_wider_than_the_plain_interval_when_classes_are_shared() -> None:
    x, cls = _crossed(np.random.default_rng(14), 20, 600, 5, class_sd=0.1, noise_sd=0.05, shared=True)
    r = class_bootstrap_ci(x, cls, generator=torch.Generator().manual_seed(0), n_boot=1000)
    plain = r.plain_high - r.plain_low
    # class term sd 0.1 / sqrt(20) = .022 vs the plain sd of the mean ~ .0017: ~10x wider
    assert r.high - r.low > 5 * plain and r.cluster_high - r.cluster_low > 5 * plain
    assert r.pigeonhole_high - r.pigeonhole_low >= r.high - r.low
    assert r.low < r.mean < r.high and r.n_classes == 20 and r.n_episodes == 600


def test_class_bootstrap_is_close_to_the_plain_interval_on_independent_episodes() -> None:
    # every class in one episode only: the honest interval is the plain one
    x, cls = _crossed(np.random.default_rng(15), 0, 400, 5, class_sd=0.05, noise_sd=0.05, shared=False)
    r = class_bootstrap_ci(x, cls, generator=torch.Generator().manual_seed(1), n_boot=2000)
    plain = r.plain_high - r.plain_low
    assert (r.cluster_high - r.cluster_low) / plain == pytest.approx(1.0, abs=0.03)
    assert (r.high - r.low) / plain == pytest.approx(1.0, abs=0.06)
    # the raw pigeonhole double-counts the within-episode variation: about sqrt(3) too wide here
    assert 1.5 < (r.pigeonhole_high - r.pigeonhole_low) / plain < 1.9


def test_class_bootstrap_covers_the_class_population_mean() -> None:
    # Coverage over new test-class pools: the plain interval fails, the class intervals hold.
    rng = np.random.default_rng(16)
    hits = {"plain": 0, "boot": 0, "cluster": 0, "pigeonhole": 0}
    reps = 60
    for i in range(reps):
        x, cls = _crossed(rng, 30, 200, 5, class_sd=0.1, noise_sd=0.1, shared=True)
        r = class_bootstrap_ci(x, cls, generator=torch.Generator().manual_seed(i), n_boot=200)
        hits["plain"] += r.plain_low <= 0.7 <= r.plain_high
        hits["boot"] += r.low <= 0.7 <= r.high
        hits["pigeonhole"] += r.pigeonhole_low <= 0.7 <= r.pigeonhole_high
        hits["cluster"] += r.cluster_low <= 0.7 <= r.cluster_high
    assert hits["plain"] < 0.6 * reps
    assert hits["boot"] >= 0.85 * reps and hits["cluster"] >= 0.85 * reps and hits["pigeonhole"] >= 0.85 * reps


def test_class_bootstrap_is_seeded_and_checks_inputs() -> None:
    x, cls = _crossed(np.random.default_rng(17), 10, 50, 3, 0.1, 0.1, shared=True)
    a = class_bootstrap_ci(x, cls, generator=torch.Generator().manual_seed(3), n_boot=300)
    b = class_bootstrap_ci(x, cls, generator=torch.Generator().manual_seed(3), n_boot=300)
    assert a == b and json.loads(json.dumps(a.to_dict()))["n_boot"] == 300
    with pytest.raises(ValueError, match="per-\\(episode, class\\) values"):
        class_bootstrap_ci(x.mean(1), cls, generator=torch.Generator())
    with pytest.raises(TypeError, match="torch.Generator"):
        class_bootstrap_ci(x, cls, generator=np.random.default_rng(0))  # type: ignore[arg-type]


def test_per_class_values_known_answer() -> None:
    correct = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    labels = torch.tensor([[0, 0, 1, 1], [1, 0, 0, 1]])
    assert per_class_values(correct, labels, 2).tolist() == [[0.5, 1.0], [0.5, 0.0]]
    with pytest.raises(ValueError, match="no query of label 2"):
        per_class_values(correct, labels, 3)


def test_class_bootstrap_cluster_interval_ignores_class_ids_and_episode_order() -> None:
    x, cls = _crossed(np.random.default_rng(18), 15, 80, 4, 0.1, 0.05, shared=True)
    a = class_bootstrap_ci(x, cls, generator=torch.Generator().manual_seed(0), n_boot=200)
    perm = np.random.default_rng(19).permutation(80)
    relabel = 1000 + 7 * cls[perm]  # other integer ids, episodes shuffled
    b = class_bootstrap_ci(x[perm], relabel, generator=torch.Generator().manual_seed(0), n_boot=200)
    assert (b.cluster_low, b.cluster_high) == pytest.approx((a.cluster_low, a.cluster_high), abs=1e-12)
    assert b.mean == pytest.approx(a.mean, abs=1e-12)
