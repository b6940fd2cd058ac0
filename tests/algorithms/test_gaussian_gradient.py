"""Gradient-based learners with a Gaussian predictive (``criterion="gaussian_nll"``): the loss is a
hand-written Gaussian NLL, the inner loop descends it, the predictive is the network's (mean, var)
split, and the product scores such runs with log-likelihood and calibration on the neural processes'
tasks (sinusoid, image completion, and GP tasks scored unpadded)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from metafit import SinusoidTasks, generator, meta_gradients
from metafit.algorithms import MAML, MetaSGD, Reptile
from metafit.algorithms.base import GAUSSIAN_MIN_VARIANCE, criterion_fn, gaussian_output, regression_criterion
from metafit.algorithms.cnp import calibration
from metafit.algorithms.registry import build_learner
from metafit.app.cli import main
from metafit.data.gp import pad_tasks, unpad_tasks
from metafit.data.task import Task, TaskBatch
from metafit.functional import apply
from metafit.models import MLP
from tests.conftest import DATA_ROOT

ROOT = Path(__file__).resolve().parents[2]


def _task(n_support: int = 6, n_query: int = 9, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_support + n_query, 1, generator=g) * 4 - 2
    y = torch.sin(2 * x) + 0.1 * torch.randn(x.shape, generator=g)
    return Task(x[:n_support], y[:n_support], x[n_support:], y[n_support:])


def _hand_nll(out: torch.Tensor, y: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
    """The Gaussian NLL; with ``beta`` each point's weighted by ``stopgrad(var) ** beta`` (beta-NLL)."""
    mean = out[:, :1]
    var = GAUSSIAN_MIN_VARIANCE + torch.log1p(torch.exp(out[:, 1:]))
    nll = 0.5 * math.log(2 * math.pi) + 0.5 * var.log() + 0.5 * (y - mean) ** 2 / var
    return (var.detach() ** beta * nll).mean()


def test_the_criterion_is_the_gaussian_nll_of_the_mean_and_floored_softplus_variance() -> None:
    out = torch.randn(7, 2, dtype=torch.float64)
    y = torch.randn(7, 1, dtype=torch.float64)
    assert criterion_fn("gaussian_nll")(out, y).item() == pytest.approx(_hand_nll(out, y).item(), rel=1e-12)
    assert criterion_fn("gaussian_nll")(out, y.reshape(7)).item() == pytest.approx(_hand_nll(out, y).item())
    dist = torch.distributions.Normal(out[:, :1], gaussian_output(out)[1].sqrt())
    assert criterion_fn("gaussian_nll")(out, y).item() == pytest.approx(-dist.log_prob(y).mean().item(), rel=1e-12)
    assert bool((gaussian_output(torch.full((3, 2), -50.0))[1] >= GAUSSIAN_MIN_VARIANCE).all())
    with pytest.raises(ValueError, match=r"2 \* y_dim outputs .* got an output of shape \(7, 3\)"):
        criterion_fn("gaussian_nll")(torch.randn(7, 3), y)


@pytest.mark.parametrize("inner_beta", [None, 0.0, 0.5, 1.0])
def test_maml_descends_the_support_nll_and_scores_the_query_nll(inner_beta: float | None) -> None:
    # with inner_beta the inner loop descends the beta-NLL; the meta-loss is the NLL either way
    model = MLP(1, (16,), 2)
    algo = MAML(inner_lr=0.05, inner_steps=1, criterion="gaussian_nll", inner_beta=inner_beta)
    assert algo.spec.distribution and algo.spec.tasks == "regression"
    mp = algo.init(model)
    task = _task()
    theta = {k: v.detach().clone().requires_grad_() for k, v in mp["model"].items()}
    support_nll = _hand_nll(
        torch.func.functional_call(model, theta, (task.support_x,)), task.support_y, inner_beta or 0.0
    )
    grads = torch.autograd.grad(support_nll, list(theta.values()))
    expected = {k: v - 0.05 * g for (k, v), g in zip(theta.items(), grads, strict=True)}
    fast = algo.adapt(model, mp, {}, task.support_x, task.support_y)
    for k in expected:
        torch.testing.assert_close(fast[k], expected[k])
    loss, metrics = algo.loss(model, mp, {}, task)
    out = apply(model, expected, {}, task.query_x)
    torch.testing.assert_close(loss, _hand_nll(out, task.query_y))
    assert metrics["nll"].item() == pytest.approx(loss.item())
    assert metrics["mse"].item() == pytest.approx(((out[:, :1] - task.query_y) ** 2).mean().item(), rel=1e-5)
    mean = algo.predict(model, mp, {}, fast, task.query_x)
    m2, var = algo.predict_distribution(model, mp, {}, fast, task.query_x)
    assert mean.shape == var.shape == (9, 1)
    torch.testing.assert_close(mean, m2)
    loss.backward()  # second order through the NLL's inner step
    assert all(v.grad is not None for v in mp["model"].values())


@pytest.mark.parametrize(
    "algo",
    [
        MAML(inner_lr=0.05, inner_steps=2, criterion="gaussian_nll"),
        MetaSGD(inner_lr=0.05, inner_steps=2, criterion="gaussian_nll"),
        Reptile(inner_lr=0.05, inner_steps=2, criterion="gaussian_nll"),
        MAML(inner_lr=0.05, inner_steps=2, criterion="gaussian_nll", inner_beta=1.0),
        MetaSGD(inner_lr=0.05, inner_steps=2, criterion="gaussian_nll", inner_beta=0.5),
        Reptile(inner_lr=0.05, inner_steps=2, criterion="gaussian_nll", inner_beta=1.0),
    ],
    ids=["maml", "metasgd", "reptile", "maml-beta-nll", "metasgd-beta-nll", "reptile-beta-nll"],
)
def test_the_vmap_path_equals_the_loop_under_the_gaussian_nll(algo: MAML) -> None:
    model = MLP(1, (16, 16), 2).double()
    mp = algo.init(model)
    b = SinusoidTasks(k_shot=5, n_query=7, tasks_per_batch=4, generator=generator(3)).sample_batch()
    batch = TaskBatch(b.support_x.double(), b.support_y.double(), b.query_x.double(), b.query_y.double())
    gl, ml = meta_gradients(algo, model, mp, {}, batch, path="loop")
    gv, mv = meta_gradients(algo, model, mp, {}, batch, path="vmap")
    assert max(float((gl[g][k] - gv[g][k]).abs().max()) for g in gl for k in gl[g]) <= 1e-9
    assert ml["loss"] == pytest.approx(mv["loss"], rel=1e-9)
    assert ml["nll"] == pytest.approx(mv["nll"], rel=1e-9) and "mse" in mv


def test_meta_sgd_and_the_registry_take_the_regression_loss_option() -> None:
    algo = build_learner("metasgd", "mse", regression_loss="gaussian_nll")
    assert isinstance(algo, MetaSGD) and algo.criterion == "gaussian_nll" and algo.spec.distribution
    assert build_learner("maml", "mse").spec.distribution is False
    with pytest.raises(ValueError, match="regression_loss='gaussian_nll' applies to regression tasks"):
        build_learner("maml", "cross_entropy", regression_loss="gaussian_nll")
    with pytest.raises(ValueError, match="regression_loss must be 'mse' or 'gaussian_nll', got 'l1'"):
        regression_criterion("mse", "l1")
    model = MLP(1, (8,), 1)
    point = MAML(criterion="mse")
    with pytest.raises(ValueError, match="predict_distribution needs criterion='gaussian_nll'"):
        point.predict_distribution(model, point.init(model), {}, point.init(model)["model"], torch.zeros(2, 1))


def test_the_predictor_gives_the_adapted_gaussian_predictive() -> None:
    from metafit.predict import Predictor

    model = MLP(1, (16,), 2)
    algo = MAML(inner_lr=0.05, inner_steps=3, criterion="gaussian_nll")
    mp = algo.init(model)
    task = _task()
    adapted = Predictor(algo, model, mp).adapt(task.support_x, task.support_y)
    mean, var = adapted.distribution(task.query_x)
    fast = algo.adapt(model, mp, {}, task.support_x, task.support_y)
    m2, v2 = algo.predict_distribution(model, mp, {}, fast, task.query_x)
    torch.testing.assert_close(mean, m2.detach())
    torch.testing.assert_close(var, v2.detach())
    torch.testing.assert_close(adapted(task.query_x), mean)
    point = MAML(inner_lr=0.05, criterion="mse")
    small = MLP(1, (4,), 1)
    with pytest.raises(ValueError, match="MAML has no Gaussian predictive"):
        Predictor(point, small, point.init(small)).adapt(task.support_x, task.support_y).distribution(task.query_x)


def test_calibration_of_a_gaussian_maml_is_the_hand_counted_interval_coverage() -> None:
    model = MLP(1, (16,), 2)
    # the intervals come from the evaluation-time adaptation (3 steps), as the NLL and MSE do
    algo = MAML(inner_lr=0.05, inner_steps=1, eval_inner_steps=3, criterion="gaussian_nll")
    mp = algo.init(model)
    tasks = [_task(seed=s) for s in range(3)]
    cov = calibration(algo, model, mp, tasks, levels=(0.9,))
    for task, c in zip(tasks, cov[0.9], strict=True):
        fast = algo.adapt(model, mp, {}, task.support_x, task.support_y, steps=3)
        mean, var = algo.predict_distribution(model, mp, {}, fast, task.query_x)
        inside = ((task.query_y - mean).abs() <= 1.6448536269514722 * var.sqrt()).double().mean()
        assert c == pytest.approx(float(inside))
    with pytest.raises(ValueError, match="calibration needs a learner with a Gaussian predictive"):
        calibration(MAML(criterion="mse"), MLP(1, (4,), 1), MAML(criterion="mse").init(MLP(1, (4,), 1)), tasks)


def test_unpad_tasks_inverts_pad_tasks() -> None:
    tasks = [_task(3, 5, 0), _task(7, 2, 1), _task(1, 9, 2)]
    back = unpad_tasks(pad_tasks(tasks))
    for a, b in zip(tasks, back, strict=True):
        for f in ("support_x", "support_y", "query_x", "query_y"):
            torch.testing.assert_close(getattr(a, f), getattr(b, f))
    bad = pad_tasks(tasks)
    with pytest.raises(ValueError, match="padded input of shape"):
        unpad_tasks(type(bad)(bad.support_x[..., :1], bad.support_y, bad.query_x[..., :1], bad.query_y))


def _train(tmp_path: Path, config: str, name: str, *extra: str) -> Path:
    run = tmp_path / name
    args = ["train", str(ROOT / "configs" / config), "--run-dir", str(run), "--quiet", "--steps", "3"]
    assert main([*args, "--set", "data.eval_tasks=4", "--set", "train.max_minutes=null", *extra]) == 0
    return run


def test_gp_runs_of_maml_are_scored_unpadded_on_the_neural_processes_tasks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    maml = _train(tmp_path, "gp_rbf_maml.toml", "maml", "--set", "model.hidden=[16]")
    tnp = _train(tmp_path, "gp_rbf_tnp.toml", "tnp", "--set", "model.n_layers=1", "--set", "train.path=loop")
    out = tmp_path / "cmp.json"
    assert main(["compare", str(tnp), str(maml), "--episodes", "5", "--out", str(out)]) == 0, capsys.readouterr().err
    s = json.loads(out.read_text())["settings"][0]
    assert len(s["scores"]["maml"]["target_ll"]) == len(s["scores"]["tnp"]["target_ll"]) == 5
    assert "context_ll" in s["scores"]["maml"] and "context_ll" in s["scores"]["tnp"]
    assert "coverage_90" in s["scores"]["maml"] and "coverage_90" not in s["scores"]["tnp"]  # unpadded tasks only
    assert {d["run"] for d in s["comparisons"]["target_ll"]["differences"]} | {
        s["comparisons"]["target_ll"]["reference"]
    } == {"maml", "tnp"}
    # the per-task figure is MAML's loss on the unpadded task, scored directly
    from metafit.app.runs import eval_tasks, load_trained

    tr = load_trained(maml)
    tasks = unpad_tasks(eval_tasks(tr.config, n_tasks=5, seed=2024))
    direct = [-float(tr.algorithm.loss(tr.model, tr.meta_params, tr.buffers, t)[1]["nll"]) for t in tasks]
    assert s["scores"]["maml"]["target_ll"] == pytest.approx(direct, rel=1e-5)
    assert main(["eval", str(maml), "--recalibrate", "nll"]) == 2
    assert "recalibrate needs a learner with a Gaussian predictive and a variance scale" in capsys.readouterr().err


@pytest.mark.skipif(not (DATA_ROOT / "omniglot").exists(), reason=f"Omniglot not found under {DATA_ROOT}")
def test_completion_runs_of_maml_get_a_likelihood_and_coverage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _train(
        tmp_path,
        "completion_omniglot_maml.toml",
        "completion",
        "--set",
        "model.hidden=[16]",
        "--set",
        f"data.data_root={DATA_ROOT}",
    )
    assert main(["eval", str(run), "--k-shot", "10", "--episodes", "3", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["results"][0]["metrics"]
    assert {"nll", "mse", "coverage_90"} <= set(metrics) and math.isfinite(metrics["nll"]["mean"])


def test_sinusoid_runs_of_meta_sgd_get_a_likelihood_and_coverage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sine = _train(tmp_path, "sinusoid_metasgd.toml", "sine", "--set", "algo.regression_loss=gaussian_nll")
    cnp = _train(tmp_path, "sinusoid_cnp.toml", "cnp")
    assert main(["compare", str(sine), str(cnp), "--k-shot", "5", "--episodes", "4", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)["settings"][0]
    assert {"target_ll", "coverage_90", "mse"} <= set(s["scores"]["sine"])
    assert "target_ll" in s["comparisons"]
