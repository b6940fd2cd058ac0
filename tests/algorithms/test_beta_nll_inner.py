"""The beta-NLL inner loss of the gradient-based learners (``inner_beta``; Seitzer et al. 2022):
its value and gradients against hand-written formulas, the learners and builders that take it,
and its refusals. The inner step it gives MAML against a hand-written one, and vmap = loop:
``test_gaussian_gradient.py``; compile = loop: ``test_compile_new_learners.py``."""

from __future__ import annotations

import pytest
import torch

from metafit.algorithms import MAML
from metafit.algorithms.base import BetaNLL, beta_nll, gaussian_nll, support_criterion
from metafit.algorithms.mamlpp import MAMLPlusPlus
from metafit.algorithms.registry import build_learner
from metafit.app.config import RunConfig
from metafit.data.task import Task
from metafit.models import MLP


def _task(seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(15, 1, generator=g) * 4 - 2
    y = torch.sin(2 * x) + 0.1 * torch.randn(x.shape, generator=g)
    return Task(x[:6], y[:6], x[6:], y[6:])


def test_beta_nll_is_the_nll_at_zero_and_gives_the_mean_the_squared_error_step_at_one() -> None:
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(8, 2, generator=g, dtype=torch.float64, requires_grad=True)
    var = (torch.rand(8, 2, generator=g, dtype=torch.float64) * 0.01 + 1e-3).requires_grad_()
    y = torch.randn(8, 2, generator=g, dtype=torch.float64)
    assert beta_nll(mean, var, y, 0.0).item() == pytest.approx(gaussian_nll(mean, var, y).item(), rel=1e-12)
    g_nll = torch.autograd.grad(gaussian_nll(mean, var, y), mean)[0]
    g_beta = torch.autograd.grad(beta_nll(mean, var, y, 1.0), mean)[0]
    torch.testing.assert_close(g_beta, (mean - y).detach() / mean.numel())  # the squared error's, halved
    torch.testing.assert_close(g_nll, (mean - y).detach() / var.detach() / mean.numel())  # 1/var times larger
    # the variance still gets a gradient, weighted by var ** beta
    gv = torch.autograd.grad(beta_nll(mean, var, y, 0.5), var)[0]
    expected = var.detach() ** 0.5 * 0.5 * (1 / var.detach() - (y - mean.detach()) ** 2 / var.detach() ** 2)
    torch.testing.assert_close(gv, expected / mean.numel())


def test_inner_beta_changes_the_inner_step_only_for_beta_above_zero() -> None:
    model = MLP(1, (16,), 2)
    task = _task(2)
    plain = MAML(inner_lr=0.05, inner_steps=2, criterion="gaussian_nll")
    mp = plain.init(model)
    ref = plain.adapt(model, mp, {}, task.support_x, task.support_y)
    same = MAML(inner_lr=0.05, inner_steps=2, criterion="gaussian_nll", inner_beta=0.0)
    other = MAML(inner_lr=0.05, inner_steps=2, criterion="gaussian_nll", inner_beta=1.0)
    for k, v in same.adapt(model, mp, {}, task.support_x, task.support_y).items():
        torch.testing.assert_close(v, ref[k])
    moved = other.adapt(model, mp, {}, task.support_x, task.support_y)
    assert any(not torch.allclose(moved[k], ref[k]) for k in ref)


def test_maml_plus_plus_takes_inner_beta() -> None:
    model = MLP(1, (16,), 2)
    task = _task(3)
    kw = dict(inner_lr=0.05, inner_steps=2, criterion="gaussian_nll", per_step_norm=False, learn_inner_lr=False)
    plain, beta = MAMLPlusPlus(**kw), MAMLPlusPlus(**kw, inner_beta=1.0)
    mp = plain.init(model)
    a = plain.adapt(model, mp, {}, task.support_x, task.support_y)
    b = beta.adapt(model, mp, {}, task.support_x, task.support_y)
    assert any(not torch.allclose(a[k], b[k]) for k in a)
    ref = MAML(inner_lr=0.05, inner_steps=2, criterion="gaussian_nll", inner_beta=1.0)
    for k, v in ref.adapt(model, mp, {}, task.support_x, task.support_y).items():
        torch.testing.assert_close(b[k], v)


def test_the_builders_and_the_config_take_inner_beta_and_refuse_it_by_name() -> None:
    for name in ("maml", "fomaml", "metasgd", "anil", "reptile", "mamlpp"):
        algo = build_learner(name, "mse", regression_loss="gaussian_nll", inner_beta=1.0)
        assert algo.inner_beta == 1.0
        assert isinstance(support_criterion(algo.criterion, algo.inner_beta), BetaNLL)
    with pytest.raises(ValueError, match=r"inner_beta must be None or a number in \[0, 1\], got 1.5"):
        build_learner("maml", "mse", regression_loss="gaussian_nll", inner_beta=1.5)
    with pytest.raises(ValueError, match=r"inner_beta must be None or a number in \[0, 1\], got 'high'"):
        MAML(criterion="gaussian_nll", inner_beta="high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="inner_beta .* needs criterion='gaussian_nll' .* got criterion='mse'"):
        build_learner("maml", "mse", inner_beta=0.5)
    with pytest.raises(ValueError, match="got criterion='cross_entropy'"):
        MAML(criterion="cross_entropy", inner_beta=1.0)
    cfg = RunConfig.from_dict(
        {"data": {"dataset": "sinusoid"}, "algo": {"name": "maml", "regression_loss": "gaussian_nll", "inner_beta": 1}}
    )
    assert cfg.algo.inner_beta == 1
    with pytest.raises(ValueError, match="unknown config key 'inner_betta'.*did you mean 'inner_beta'"):
        RunConfig.from_dict({"data": {"dataset": "sinusoid"}, "algo": {"name": "maml", "inner_betta": 1.0}})
