"""The compiled engine paths give the eager loop's meta-gradient for the newer learners too.

The metric heads (cosine, Mahalanobis in both forms, ridge), Meta-Baseline's cosine head with a
learned scale, MAML++ (multi-step loss, learned per-layer per-step rates, second order), the
in-context transformer classifier and MAML with a Gaussian predictive and the beta-NLL inner loss, on a small float64 MLP embedding so that each compile takes
seconds: the meta-gradient and the loss must equal the loop's, with no graph break.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metafit import SinusoidTasks, TaskBatch, generator, meta_gradients, seeded
from metafit.algorithms import MAML
from metafit.algorithms.heads import CosineHead, LDAHead, MahalanobisHead, RidgeHead
from metafit.algorithms.mamlpp import MAMLPlusPlus
from metafit.algorithms.metric import MetricLearner
from metafit.algorithms.neural_process import InContextLearner
from metafit.models import MLP
from metafit.models.attentive import InContextClassifier


def _vector_tasks(n_tasks: int = 2, n_way: int = 3, k_shot: int = 2, n_query: int = 2, dim: int = 6) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    sy = torch.arange(n_way).repeat_interleave(k_shot).expand(n_tasks, -1).contiguous()
    qy = torch.arange(n_way).repeat_interleave(n_query).expand(n_tasks, -1).contiguous()
    centres = torch.randn(n_tasks, n_way, dim, generator=g, dtype=torch.float64)
    sx = centres.gather(1, sy[..., None].expand(-1, -1, dim)) + torch.randn(
        n_tasks, n_way * k_shot, dim, generator=g, dtype=torch.float64
    )
    qx = centres.gather(1, qy[..., None].expand(-1, -1, dim)) + torch.randn(
        n_tasks, n_way * n_query, dim, generator=g, dtype=torch.float64
    )
    return TaskBatch(sx, sy, qx, qy, n_way=n_way)


def _matches_loop(algo: object, model: nn.Module, batch: TaskBatch, path: str = "compile") -> None:
    torch._dynamo.reset()
    g_loop, m_loop = meta_gradients(algo, model, algo.init(model), {}, batch, path="loop")  # type: ignore[arg-type]
    torch._dynamo.utils.counters.clear()
    g_comp, m_comp = meta_gradients(algo, model, algo.init(model), {}, batch, path=path)  # type: ignore[arg-type]
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    assert g_comp.keys() == g_loop.keys()
    nonzero = 0
    for group in g_loop:
        for k in g_loop[group]:
            torch.testing.assert_close(g_comp[group][k], g_loop[group][k], rtol=1e-9, atol=1e-12, msg=f"{group}.{k}")
            nonzero += int(bool(g_loop[group][k].abs().sum() > 0))
    assert nonzero > 0
    assert m_comp["loss"] == pytest.approx(m_loop["loss"], rel=1e-12)


HEADS = {
    "cosine-learned-scale": lambda: CosineHead(scale=10.0, learn_scale=True),
    "mahalanobis-direct": lambda: MahalanobisHead(method="direct"),
    "mahalanobis-woodbury": lambda: MahalanobisHead(method="woodbury"),
    "ridge": lambda: RidgeHead(init_lambda=0.5, init_scale=2.0),
    "lda-ledoit-wolf": lambda: LDAHead(),
    "lda-woodbury": lambda: LDAHead(method="woodbury", shrinkage=0.5),
}


@pytest.mark.parametrize("head", list(HEADS))
def test_metric_heads_compile_path_gives_the_loop_meta_gradient(head: str) -> None:
    model = seeded(0, lambda: MLP(6, (16,), 8)).double()
    _matches_loop(MetricLearner(HEADS[head]()), model, _vector_tasks())


def test_mamlpp_compile_path_gives_the_loop_meta_gradient() -> None:
    # second order (no first-order phase), two inner steps, multi-step loss still annealing, LSLR
    model = seeded(0, lambda: MLP(6, (16,), 3)).double()
    algo = MAMLPlusPlus(inner_lr=0.1, inner_steps=2, msl_iterations=10, per_step_norm=False).at_iteration(4)
    assert algo.second_order and len(set(algo.step_weights)) > 1  # mid-annealing: unequal step weights
    _matches_loop(algo, model, _vector_tasks())


def test_in_context_classifier_compile_path_gives_the_loop_meta_gradient() -> None:
    model = seeded(
        0, lambda: InContextClassifier(MLP(6, (16,), 8), 8, max_way=4, d_model=16, n_heads=2, n_layers=1, d_ff=32)
    ).double()
    _matches_loop(InContextLearner(), model, _vector_tasks())


def test_gaussian_maml_with_the_beta_nll_inner_loss_compile_path_gives_the_loop_meta_gradient() -> None:
    model = seeded(0, lambda: MLP(1, (16,), 2)).double()
    b = SinusoidTasks(k_shot=5, n_query=7, tasks_per_batch=3, generator=generator(1)).sample_batch()
    batch = TaskBatch(b.support_x.double(), b.support_y.double(), b.query_x.double(), b.query_y.double())
    _matches_loop(MAML(inner_lr=0.05, inner_steps=2, criterion="gaussian_nll", inner_beta=0.5), model, batch)
