"""Conditional Neural Processes: invariances, shapes, engine paths, calibration helpers."""

from __future__ import annotations

import math

import pytest
import torch

from metafit import SinusoidTasks, Trainer, evaluate, meta_gradients, seeded, sinusoid_eval_tasks
from metafit.algorithms import CNP, calibration, gaussian_nll, interval_coverage, recalibrate
from metafit.data.task import Task
from metafit.models import CNPClassifier, CNPRegressor
from tests.conftest import image_tasks


def _regressor() -> CNPRegressor:
    return seeded(0, lambda: CNPRegressor(r_dim=16, encoder_hidden=(16, 16), decoder_hidden=(16,))).double()


def _classifier() -> CNPClassifier:
    return seeded(0, lambda: CNPClassifier(max_way=5, width=4, r_dim=8, hidden=8, image_size=16)).double()


def _sine_task(k: int, q: int = 7, seed: int = 0) -> Task:
    return SinusoidTasks(
        k_shot=k, n_query=q, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    ).sample_batch(1)[0]


def test_regression_invariant_to_context_order() -> None:
    model, algo = _regressor(), CNP()
    mp = algo.init(model)
    t = _sine_task(9)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    a = algo.adapt(model, mp, {}, t.support_x, t.support_y)
    b = algo.adapt(model, mp, {}, t.support_x[perm], t.support_y[perm])
    ma, va = algo.predict_distribution(model, mp, {}, a, t.query_x)
    mb, vb = algo.predict_distribution(model, mp, {}, b, t.query_x)
    torch.testing.assert_close(ma, mb)
    torch.testing.assert_close(va, vb)


def test_classifier_invariant_to_context_order() -> None:
    # per-class aggregation: permuting the context points changes nothing. The conv embedding
    # uses batch statistics of the context batch, which are permutation invariant too.
    model, algo = _classifier(), CNP("cross_entropy")
    mp = algo.init(model)
    t = image_tasks(1, n_way=3, k_shot=3, n_query=2, side=16)[0]
    perm = torch.randperm(t.n_support, generator=torch.Generator().manual_seed(2))
    a = algo.adapt(model, mp, {}, t.support_x, t.support_y, n_way=3)
    b = algo.adapt(model, mp, {}, t.support_x[perm], t.support_y[perm], n_way=3)
    torch.testing.assert_close(algo.predict(model, mp, {}, a, t.query_x), algo.predict(model, mp, {}, b, t.query_x))


@pytest.mark.parametrize("k", [1, 3, 17])
def test_variable_context_size_and_positive_variance(k: int) -> None:
    model, algo = _regressor(), CNP()
    mp = algo.init(model)
    t = _sine_task(k, seed=k)
    state = algo.adapt(model, mp, {}, t.support_x, t.support_y)
    mean, var = algo.predict_distribution(model, mp, {}, state, t.query_x)
    assert mean.shape == var.shape == (7, 1)
    assert bool((var >= 0.1).all())
    assert algo.predict(model, mp, {}, state, t.query_x).shape == (7, 1)
    # extreme raw outputs still give a positive, finite variance
    huge = model.decode(t.query_x * 1e4, state.r.detach() * 1e4)[1]
    assert bool((huge > 0).all()) and bool(torch.isfinite(huge).all())


def test_loss_metrics_and_nll_formula() -> None:
    model, algo = _regressor(), CNP()
    mp = algo.init(model)
    t = _sine_task(5)
    loss, m = algo.loss(model, mp, {}, t)
    assert set(m) == {"loss", "nll", "mse"}
    mean, var = model(t.support_x, t.support_y, t.query_x)
    expected = torch.distributions.Normal(mean, var.sqrt()).log_prob(t.query_y).mean().neg()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(gaussian_nll(mean, var, t.query_y), expected)


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_vmap_and_loop_give_the_same_meta_gradient(kind: str) -> None:
    if kind == "regression":
        model, algo = _regressor(), CNP()
        batch = SinusoidTasks(
            k_shot=4, n_query=5, tasks_per_batch=3, generator=torch.Generator().manual_seed(3), dtype=torch.float64
        ).sample_batch()
    else:
        model, algo = _classifier(), CNP("cross_entropy")
        batch = image_tasks(3, n_way=3, k_shot=2, n_query=2, side=16)
    mp = algo.init(model)
    gl, ml = meta_gradients(algo, model, mp, {}, batch, path="loop")
    gv, mv = meta_gradients(algo, model, mp, {}, batch, path="vmap")
    for k in gl["model"]:
        torch.testing.assert_close(gl["model"][k], gv["model"][k], atol=1e-10, rtol=1e-8)
    assert ml["loss"] == pytest.approx(mv["loss"])


def test_trainer_with_variable_context_sizes_and_evaluate_reports_nll() -> None:
    model, algo = _regressor(), CNP()
    trainer = Trainer(algo, model, path="loop", optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    tasks = [_sine_task(k, seed=k) for k in (2, 5, 9)]  # different shapes: loop path
    before = trainer.step(tasks).metrics["loss"]
    for _ in range(20):
        after = trainer.step(tasks).metrics["loss"]
    assert after < before
    assert trainer.meta_params is not None
    r = evaluate(algo, model, trainer.meta_params, sinusoid_eval_tasks(5, 5, 10, dtype=torch.float64))
    assert {"nll", "mse", "loss"} <= set(r.metrics) and r.n_tasks == 5


def test_interval_coverage_of_a_true_gaussian() -> None:
    g = torch.Generator().manual_seed(0)
    mean, var = torch.zeros(20000, 1, dtype=torch.float64), torch.full((20000, 1), 4.0, dtype=torch.float64)
    y = 2.0 * torch.randn(20000, 1, generator=g, dtype=torch.float64)
    cov = interval_coverage(mean, var, y)
    for level, c in cov.items():
        assert float(c) == pytest.approx(level, abs=0.01)


def test_calibration_and_plot(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, algo = _regressor(), CNP()
    mp = algo.init(model)
    tasks = sinusoid_eval_tasks(4, 5, 10, dtype=torch.float64)
    cov = calibration(algo, model, mp, tasks)
    assert set(cov) == {0.5, 0.9, 0.95} and all(len(v) == 4 for v in cov.values())
    assert all(0.0 <= x <= 1.0 for v in cov.values() for x in v)
    pytest.importorskip("matplotlib")
    from metafit.app.plotting import plot_regression_tasks

    out = plot_regression_tasks(
        algo, model, mp, [(tasks[0].support_x, tasks[0].support_y)], [lambda x: torch.sin(x)], tmp_path / "p.png"
    )
    assert out.exists() and out.stat().st_size > 1000


def test_classification_loss_and_bad_inputs() -> None:
    model, algo = _classifier(), CNP("cross_entropy")
    mp = algo.init(model)
    t = image_tasks(1, n_way=3, k_shot=2, n_query=2, side=16)[0]
    loss, m = algo.loss(model, mp, {}, t)
    assert set(m) == {"loss", "nll", "accuracy"} and math.isfinite(float(loss.detach()))
    with pytest.raises(ValueError, match="criterion"):
        CNP("mse")
    with pytest.raises(ValueError, match="max_way"):
        algo.adapt(model, mp, {}, t.support_x, t.support_y, n_way=9)


def test_scale_bound_variant() -> None:
    model = seeded(0, lambda: CNPRegressor(r_dim=8, encoder_hidden=(8,), decoder_hidden=(8,), bound="scale")).double()
    t = _sine_task(4)
    _, var = model(t.support_x, t.support_y, t.query_x)
    assert bool((var >= 0.01 - 1e-12).all())
    with pytest.raises(ValueError, match="bound"):
        CNPRegressor(bound="logvar")


def test_recalibrate_scales_variance_and_fixes_a_miscalibrated_gaussian() -> None:
    model, algo = _regressor(), CNP()
    mp = algo.init(model)
    val = sinusoid_eval_tasks(16, 5, 20, seed=7, dtype=torch.float64)
    test = sinusoid_eval_tasks(16, 5, 20, seed=8, dtype=torch.float64)
    for method in ("nll", "quantile"):
        fitted = recalibrate(algo, model, mp, val, method=method)
        assert fitted.variance_scale != 1.0 and fitted.criterion == algo.criterion
        # the mean is untouched, the variance is scaled by exactly variance_scale
        st = algo.adapt(model, mp, {}, test[0].support_x, test[0].support_y)
        m0, v0 = algo.predict_distribution(model, mp, {}, st, test[0].query_x)
        m1, v1 = fitted.predict_distribution(model, mp, {}, st, test[0].query_x)
        assert torch.equal(m0, m1) and torch.allclose(v1, v0 * fitted.variance_scale)
    # NLL method: the fitted scale minimises the validation NLL (a nearby scale is worse)
    nll = recalibrate(algo, model, mp, val, method="nll")

    def val_nll(a: CNP) -> float:
        return sum(float(a.loss(model, mp, {}, t)[0].detach()) for t in val)

    best = val_nll(nll)
    for f in (0.8, 1.25):
        assert val_nll(CNP(variance_scale=nll.variance_scale * f)) > best
    # quantile method: the 90% interval covers 90% of the validation targets
    q = recalibrate(algo, model, mp, val, method="quantile", level=0.9)
    cov = calibration(q, model, mp, val, levels=(0.9,))[0.9]
    assert sum(cov) / len(cov) == pytest.approx(0.9, abs=0.02)


def test_recalibrate_bad_inputs() -> None:
    model = _regressor()
    mp = CNP().init(model)
    val = sinusoid_eval_tasks(2, 5, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="method"):
        recalibrate(CNP(), model, mp, val, method="temperature")
    with pytest.raises(ValueError, match="regression"):
        recalibrate(CNP("cross_entropy"), model, mp, val)
    with pytest.raises(ValueError, match="variance_scale"):
        CNP(variance_scale=0.0)
    with pytest.raises(ValueError, match="at least one"):
        recalibrate(CNP(), model, mp, [])


def test_cnp_runs_through_the_run_driver_and_loads_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from metafit.app.config import RunConfig
    from metafit.app.runs import evaluate_checkpoint, load_trained, train

    cfg = RunConfig.from_dict(
        {
            "data": {"dataset": "sinusoid", "k_shot": 5, "eval_tasks": 8},
            "model": {"r_dim": 16},
            "algo": {"name": "cnp"},
            "train": {"steps": 12, "checkpoint_every": 6, "path": "vmap"},
        }
    )
    res = train(cfg, tmp_path / "run", progress=False)
    assert res.step == 12
    t = load_trained(tmp_path / "run")
    assert isinstance(t.algorithm, CNP) and t.algorithm.criterion == "gaussian_nll"
    assert isinstance(t.model, CNPRegressor) and t.model.r_dim == 16
    out = evaluate_checkpoint(tmp_path / "run", shots=[10])
    m = out["results"][0]["metrics"]
    assert {"nll", "mse"} <= set(m) and out["results"][0]["steps"] is None and m["mse"]["n"] == 8
