"""Evaluation: confidence intervals, adaptation curves, chunked vmap == per-task."""

from __future__ import annotations

import math

import pytest
import torch

from metafit import MetaSGD, ProtoNet, evaluate, seeded, sinusoid_eval_tasks, summarize
from metafit.models import MLP, Conv4
from tests.conftest import image_tasks


def test_summarize_normal_interval() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0])
    std = torch.tensor([1.0, 2.0, 3.0, 4.0]).std().item()
    assert s.mean == 2.5 and s.n == 4
    assert s.ci95 == pytest.approx(1.959963984540054 * std / math.sqrt(4))
    with pytest.raises(ValueError):
        summarize([])


def test_evaluate_curve_and_chunked_vmap_match_per_task() -> None:
    model = seeded(0, lambda: MLP(1, (16,), 1))
    algo = MetaSGD(inner_lr=0.02, inner_steps=1, eval_inner_steps=3, criterion="mse")
    mp = algo.init(model)
    tasks = sinusoid_eval_tasks(20, 5, 10)
    a = evaluate(algo, model, mp, tasks, curve_steps=5)
    b = evaluate(algo, model, mp, tasks, curve_steps=5, chunk=8)
    assert a.steps == 3 and len(a.curve["mse"]) == 6 and a.n_tasks == 20
    assert a.metrics["mse"].mean == pytest.approx(b.metrics["mse"].mean, rel=1e-5)
    assert a.metrics["mse"].mean == pytest.approx(a.curve["mse"][3].mean)
    # meta_params are not modified and need no grad
    assert all(v.requires_grad for v in mp["model"].values())


def test_sinusoid_eval_tasks_are_fixed_and_nested_across_shots() -> None:
    t5 = sinusoid_eval_tasks(50, 5, 20)
    t10 = sinusoid_eval_tasks(50, 10, 20)
    assert torch.equal(t5.query_x, t10.query_x) and torch.equal(t5.query_y, t10.query_y)
    assert torch.equal(t5.support_x, t10.support_x[:, :5])
    assert torch.equal(t5.support_x, sinusoid_eval_tasks(50, 5, 20).support_x)
    amp = t5.query_y.abs().amax(dim=(1, 2))
    assert float(amp.max()) <= 5.0 and float(t5.query_x.abs().max()) <= 5.0


def test_evaluate_non_gradient_learner() -> None:
    model = seeded(0, lambda: Conv4(1, None, width=4, image_size=16))
    r = evaluate(ProtoNet(), model, ProtoNet().init(model), image_tasks(5, side=16, dtype=torch.float32))
    assert r.steps is None and r.curve == {}
    assert 0.0 <= r.metrics["accuracy"].mean <= 1.0 and r.metrics["accuracy"].n == 5
