"""FiLMAdapted: FiLM on the norm parameters equals FiLM after the norm layers; identity at init."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metafit.algorithms import FiLMAdapted, MetricLearner
from metafit.algorithms.film import film_norm_layers
from metafit.algorithms.heads import EuclideanHead, MahalanobisHead
from metafit.algorithms.registry import build_learner
from metafit.functional import buffers_of
from metafit.seeding import seeded
from tests.conftest import TinyConv, image_tasks


class Embedder(nn.Module):
    """Two conv blocks with batch norms (one task-batch norm, one torch BatchNorm2d): 4*2*2 = 16 features."""

    def __init__(self) -> None:
        super().__init__()
        net = TinyConv(norm="task")
        self.conv1, self.norm1, self.conv2 = net.conv1, net.norm1, net.conv2
        self.norm2 = nn.BatchNorm2d(4, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(torch.tanh(self.norm1(self.conv1(x))), 2)
        return F.avg_pool2d(torch.tanh(self.norm2(self.conv2(h))), 2).flatten(1)


def _model() -> Embedder:
    return seeded(0, Embedder).double()


def test_the_norm_layers_are_found() -> None:
    assert film_norm_layers(_model()) == [("norm1", 4), ("norm2", 4)]
    with pytest.raises(ValueError, match="has none"):
        FiLMAdapted(task_dim=4).init(nn.Sequential(nn.Flatten(), nn.Linear(4, 4)))


def test_zero_generators_are_the_inner_learner() -> None:
    model, task = _model(), image_tasks(1)[0]
    inner = MetricLearner(MahalanobisHead())
    film = FiLMAdapted(inner, task_dim=16)
    mp = film.init(model)
    assert sorted(mp) == ["film", "model"] and all(not v.detach().any() for v in mp["film"].values())
    ours = film.predict(
        model, mp, buffers_of(model), film.adapt(model, mp, {}, task.support_x, task.support_y), task.query_x
    )
    ref = inner.predict(model, mp, {}, inner.adapt(model, mp, {}, task.support_x, task.support_y), task.query_x)
    torch.testing.assert_close(ours, ref)


def test_modulated_parameters_equal_film_applied_after_each_norm() -> None:
    model, task = _model(), image_tasks(1, n_way=3, k_shot=2)[0]
    film = FiLMAdapted(MetricLearner(EuclideanHead()), task_dim=16)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # norms that are not the identity, on the module itself
        for k in ("norm1", "norm2"):
            getattr(model, k).weight.copy_(torch.randn(4, generator=g, dtype=torch.float64))
            getattr(model, k).bias.copy_(torch.randn(4, generator=g, dtype=torch.float64))
    mp = film.init(model)
    with torch.no_grad():
        for v in mp["film"].values():
            v.copy_(0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype))
    # by hand: z = mean class prototype of the unmodulated support embeddings ...
    with torch.no_grad():
        emb = model(task.support_x)
        z = torch.stack([emb[task.support_y == c].mean(0) for c in range(3)]).mean(0)
    # ... then FiLM applied to each norm layer's OUTPUT with forward hooks on the original module
    f = {k: v.detach() for k, v in mp["film"].items()}
    hooks = [
        getattr(model, n).register_forward_hook(
            lambda m, i, out, n=n: (
                (1 + f[f"{n}.gamma.weight"] @ z + f[f"{n}.gamma.bias"])[None, :, None, None] * out
                + (f[f"{n}.beta.weight"] @ z + f[f"{n}.beta.bias"])[None, :, None, None]
            )
        )
        for n in ("norm1", "norm2")
    ]
    try:
        with torch.no_grad():
            emb_all = model(torch.cat([task.support_x, task.query_x]))
    finally:
        for h in hooks:
            h.remove()
    es, eq = emb_all[: len(task.support_y)], emb_all[len(task.support_y) :]
    protos = torch.stack([es[task.support_y == c].mean(0) for c in range(3)])
    ref = -((eq[:, None] - protos[None]) ** 2).sum(-1)
    with torch.no_grad():
        ours = film.predict(model, mp, {}, film.adapt(model, mp, {}, task.support_x, task.support_y), task.query_x)
    torch.testing.assert_close(ours, ref)


def test_the_loss_trains_the_generators_and_the_backbone() -> None:
    model, task = _model(), image_tasks(1)[0]
    film = build_learner("film", "cross_entropy", task_dim=16)
    assert isinstance(film, FiLMAdapted) and isinstance(film.inner.head, MahalanobisHead)
    mp = film.init(model)
    loss, metrics = film.loss(model, mp, {}, task)
    loss.backward()
    assert float(mp["film"]["norm2.gamma.weight"].grad.abs().sum()) > 0  # d/dA = d/dgamma (x) z
    assert float(mp["model"]["conv1.weight"].grad.abs().sum()) > 0 and 0 <= float(metrics["accuracy"]) <= 1


def test_a_wrong_task_dim_names_the_right_one() -> None:
    model, task = _model(), image_tasks(1)[0]
    film = FiLMAdapted(task_dim=7)
    with pytest.raises(ValueError, match="set task_dim=16"):
        film.loss(model, film.init(model), {}, task)
    with pytest.raises(ValueError, match="task_dim must be an int >= 1"):
        FiLMAdapted(task_dim=0)
