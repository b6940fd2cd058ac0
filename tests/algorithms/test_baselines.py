"""The raw-input nearest-centroid baseline against a direct implementation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metafit.algorithms.base import Algorithm
from metafit.algorithms.baselines import RawNearestCentroid
from metafit.data.task import Task
from metafit.evaluation import evaluate
from tests.conftest import image_tasks


def _direct(task: Task, n_way: int) -> torch.Tensor:
    """Logits by loops: mean of each class's flattened support images, minus squared distance."""
    sx, qx = task.support_x.flatten(1), task.query_x.flatten(1)
    means = torch.stack([sx[task.support_y == c].mean(0) for c in range(n_way)])
    return torch.stack([torch.stack([-((q - m) ** 2).sum() for m in means]) for q in qx])


def test_raw_nearest_centroid_matches_a_direct_implementation() -> None:
    tasks = image_tasks(n_tasks=4, n_way=3, k_shot=3, n_query=2, side=5, seed=0)
    learner = RawNearestCentroid(distance_scale=0.5)
    assert isinstance(learner, Algorithm)
    for task in tasks:
        adapted = learner.adapt(None, {}, {}, task.support_x, task.support_y, n_way=3)
        logits = learner.predict(None, {}, {}, adapted, task.query_x)
        assert torch.allclose(logits, 0.5 * _direct(task, 3), atol=1e-9)
        loss, m = learner.loss(None, {}, {}, task)
        assert loss.item() == pytest.approx(F.cross_entropy(0.5 * _direct(task, 3), task.query_y).item(), abs=1e-9)
        assert m["accuracy"].item() == (_direct(task, 3).argmax(1) == task.query_y).double().mean().item()
    # vmappable (one-hot class means), like ProtoNet
    batched = torch.func.vmap(lambda sx, sy, qx, qy: learner.loss(None, {}, {}, Task(sx, sy, qx, qy, n_way=3))[0])(
        tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y
    )
    assert torch.allclose(batched, torch.stack([learner.loss(None, {}, {}, t)[0] for t in tasks]), atol=1e-9)


def test_raw_nearest_centroid_spec_and_evaluate() -> None:
    learner = RawNearestCentroid()
    spec = learner.spec
    assert (spec.inner_loop, spec.head, spec.tasks, spec.embeds) == (False, "none", "classification", False)
    assert learner.init(None) == {}
    # well separated classes: class c images are c + small noise -> perfect accuracy, any n_way
    g = torch.Generator().manual_seed(1)
    n, k, q = 7, 2, 3
    sx = torch.arange(n).repeat_interleave(k)[:, None, None, None] + 0.05 * torch.randn(n * k, 1, 4, 4, generator=g)
    qx = torch.arange(n).repeat_interleave(q)[:, None, None, None] + 0.05 * torch.randn(n * q, 1, 4, 4, generator=g)
    task = Task(sx, torch.arange(n).repeat_interleave(k), qx, torch.arange(n).repeat_interleave(q), n_way=n)
    res = evaluate(learner, torch.nn.Identity(), {}, [task])
    assert res.metrics["accuracy"].mean == 1.0
    with pytest.raises(ValueError, match="criterion must be 'cross_entropy'"):
        RawNearestCentroid(criterion="mse")
    with pytest.raises(ValueError, match="distance_scale must be a number > 0"):
        RawNearestCentroid(distance_scale=0)
