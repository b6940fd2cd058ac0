"""Oracle tests for MAML, FOMAML and Meta-SGD (issue 2 acceptance a-g)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metafit import MAML, MetaSGD, SinusoidTasks, Trainer, generator, meta_gradients, seeded
from metafit.algorithms import EvalSettings
from metafit.data.task import TaskBatch
from metafit.functional import apply, buffers_of
from metafit.models import MLP, Conv4
from tests.conftest import TinyConv, image_tasks


def _sin_batch(n: int = 4, k: int = 5, dtype: torch.dtype = torch.float64, seed: int = 0) -> TaskBatch:
    return SinusoidTasks(k_shot=k, n_query=7, generator=generator(seed), dtype=dtype).sample_batch(n)


def _mlp(dtype: torch.dtype = torch.float64, act: type[nn.Module] = nn.ReLU) -> nn.Module:
    m = seeded(0, lambda: MLP(1, (16, 16), 1)).to(dtype)
    if act is not nn.ReLU:
        m.body[1], m.body[3] = act(), act()
    return m


def _maxdiff(a: dict, b: dict) -> float:
    return max(float((a[g][k] - b[g][k]).abs().max()) for g in a for k in a[g])


def test_maml_one_step_meta_gradient_equals_hand_written_autograd() -> None:
    model = _mlp()
    algo = MAML(inner_lr=0.05, inner_steps=1, criterion="mse")
    mp = algo.init(model)
    batch = _sin_batch()
    got, _ = meta_gradients(algo, model, mp, {}, batch, path="loop")

    # Hand-written MAML for a 1-16-16-1 ReLU MLP with explicit weights.
    names = ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias", "head.weight", "head.bias"]
    theta = [mp["model"][n].detach().clone().requires_grad_() for n in names]

    def net(w: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(x @ w[0].T + w[1])
        h = torch.relu(h @ w[2].T + w[3])
        return h @ w[4].T + w[5]

    total = 0.0
    for t in range(len(batch)):
        sl = ((net(theta, batch.support_x[t]) - batch.support_y[t]) ** 2).mean()
        gs = torch.autograd.grad(sl, theta, create_graph=True)
        fast = [w - 0.05 * g for w, g in zip(theta, gs)]
        total = total + ((net(fast, batch.query_x[t]) - batch.query_y[t]) ** 2).mean() / len(batch)
    want = torch.autograd.grad(total, theta)
    for n, w in zip(names, want):
        torch.testing.assert_close(got["model"][n], w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "algo",
    [
        MAML(inner_lr=0.05, inner_steps=3, criterion="mse"),
        MAML(inner_lr=0.05, inner_steps=2, first_order=True, criterion="mse"),
        MetaSGD(inner_lr=0.05, inner_steps=2, criterion="mse"),
        MAML(inner_lr=0.05, inner_steps=2, criterion="mse", adapt_only=("head.",)),
    ],
    ids=["maml3", "fomaml2", "metasgd2", "anil2"],
)
def test_vmap_path_equals_loop_path_mlp(algo: MAML) -> None:
    model = _mlp()
    mp = algo.init(model)
    batch = _sin_batch(5)
    gl, ml = meta_gradients(algo, model, mp, {}, batch, path="loop")
    gv, mv = meta_gradients(algo, model, mp, {}, batch, path="vmap")
    assert _maxdiff(gl, gv) <= 1e-5
    assert ml["loss"] == pytest.approx(mv["loss"], rel=1e-9)


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_path_equals_loop_path_conv_with_task_norm(first_order: bool) -> None:
    model = seeded(1, lambda: Conv4(1, 3, width=4, image_size=16)).double()
    algo = MAML(inner_lr=0.1, inner_steps=2, first_order=first_order)
    mp = algo.init(model)
    batch = image_tasks(side=16)
    gl, _ = meta_gradients(algo, model, mp, {}, batch, path="loop")
    gv, _ = meta_gradients(algo, model, mp, {}, batch, path="vmap")
    assert _maxdiff(gl, gv) <= 1e-5


def test_first_order_equals_second_order_without_hessian_term() -> None:
    model = _mlp(act=nn.Tanh)
    lr = 0.1
    so_algo = MAML(inner_lr=lr, inner_steps=1, criterion="mse")
    fo_algo = MAML(inner_lr=lr, inner_steps=1, first_order=True, criterion="mse")
    mp = so_algo.init(model)
    batch = _sin_batch(1)
    task = batch[0]
    so, _ = meta_gradients(so_algo, model, mp, {}, batch, path="loop")
    fo, _ = meta_gradients(fo_algo, model, mp, {}, batch, path="loop")

    # Explicit: phi = theta - lr * g_s(theta); g_q = dLq/dphi; SO = g_q - lr * H_s(theta) g_q; FO = g_q.
    theta = {k: v.detach() for k, v in mp["model"].items()}
    keys = list(theta)

    def ls(*ws: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(apply(model, dict(zip(keys, ws)), {}, task.support_x), task.support_y)

    def lq(*ws: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(apply(model, dict(zip(keys, ws)), {}, task.query_x), task.query_y)

    tw = tuple(theta[k] for k in keys)
    gs = torch.autograd.functional.jacobian(ls, tw)
    phi = tuple(w - lr * g for w, g in zip(tw, gs))
    gq = torch.autograd.functional.jacobian(lq, phi)
    _, hvp = torch.autograd.functional.hvp(ls, tw, gq)
    for i, k in enumerate(keys):
        torch.testing.assert_close(fo["model"][k], gq[i], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(so["model"][k], gq[i] - lr * hvp[i], rtol=1e-9, atol=1e-12)
    assert _maxdiff(so, fo) > 1e-6  # the Hessian term is really there


def _fd_check(algo: MAML, model: nn.Module, batch: TaskBatch, path: str) -> None:
    mp = algo.init(model)
    grads, _ = meta_gradients(algo, model, mp, buffers_of(model), batch, path=path)
    g = torch.Generator().manual_seed(3)
    direction = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in mp["model"].items()}

    def meta_loss(eps: float) -> float:
        shifted = {"model": {k: (v + eps * direction[k]).detach() for k, v in mp["model"].items()}}
        total = 0.0
        for task in batch:
            loss, _ = algo.loss(model, shifted, buffers_of(model), task)
            total += float(loss.detach())
        return total / len(batch)

    eps = 1e-5
    fd = (meta_loss(eps) - meta_loss(-eps)) / (2 * eps)
    analytic = sum(float((grads["model"][k] * direction[k]).sum()) for k in direction)
    assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("path", ["loop", "vmap"])
def test_second_order_meta_gradient_matches_finite_differences_mlp(path: str) -> None:
    _fd_check(MAML(inner_lr=0.1, inner_steps=2, criterion="mse"), _mlp(act=nn.Tanh), _sin_batch(3), path)


@pytest.mark.parametrize("path", ["loop", "vmap"])
def test_second_order_meta_gradient_matches_finite_differences_with_normalisation(path: str) -> None:
    model = seeded(0, lambda: TinyConv(norm="task")).double()
    _fd_check(MAML(inner_lr=0.2, inner_steps=2), model, image_tasks(2), path)


def test_torch_batchnorm_second_order_is_exact_on_loop_and_refused_on_vmap() -> None:
    model = seeded(0, lambda: TinyConv(norm="batchnorm")).double()
    algo = MAML(inner_lr=0.2, inner_steps=1)
    _fd_check(algo, model, image_tasks(2), "loop")
    with pytest.raises(ValueError, match="WRONG meta-gradient"):
        meta_gradients(algo, model, algo.init(model), {}, image_tasks(2), path="vmap")


def test_metasgd_learning_rates_receive_gradients_and_change() -> None:
    model = _mlp(torch.float32)
    algo = MetaSGD(inner_lr=0.01, inner_steps=1, criterion="mse")
    trainer = Trainer(algo, model, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), path="loop")
    before = {k: v.detach().clone() for k, v in trainer.meta_params["inner_lr"].items()}
    trainer.step(_sin_batch(4, dtype=torch.float32))
    for k, v in trainer.meta_params["inner_lr"].items():
        assert v.grad is not None and float(v.grad.abs().max()) > 0, k
        assert not torch.equal(v.detach(), before[k]), k
    assert set(trainer.meta_params["inner_lr"]) == set(trainer.meta_params["model"])
    for k, v in trainer.meta_params["inner_lr"].items():
        assert v.shape == trainer.meta_params["model"][k].shape


def _train(seed: int) -> tuple[TaskBatch, dict[str, torch.Tensor]]:
    model = seeded(seed, lambda: MLP(1, (8,), 1))
    sampler = SinusoidTasks(k_shot=5, tasks_per_batch=4, generator=generator(seed))
    first = next(iter(SinusoidTasks(k_shot=5, tasks_per_batch=4, generator=generator(seed))))
    trainer = Trainer(MAML(inner_lr=0.01, criterion="mse"), model, path="vmap")
    trainer.fit(sampler, 5)
    return first, {k: v.detach().clone() for k, v in trainer.meta_params["model"].items()}


def test_same_seed_gives_identical_tasks_and_parameters() -> None:
    b1, p1 = _train(7)
    b2, p2 = _train(7)
    b3, p3 = _train(8)
    assert torch.equal(b1.support_x, b2.support_x) and torch.equal(b1.query_y, b2.query_y)
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    assert not torch.equal(b1.support_x, b3.support_x)
    assert any(not torch.equal(p1[k], p3[k]) for k in p1)


def test_inner_steps_and_lr_can_differ_between_training_and_evaluation() -> None:
    algo = MAML(inner_lr=0.01, inner_steps=1, eval_inner_lr=0.02, eval_inner_steps=10, criterion="mse")
    assert algo.eval_settings() == EvalSettings(steps=10, lr=0.02)
    model = _mlp(torch.float32)
    curve = algo.adaptation_curve(model, algo.init(model), {}, _sin_batch(1, dtype=torch.float32)[0], steps=10)
    assert curve["mse"].shape == (11,)


@pytest.mark.parametrize("bad", [dict(inner_lr=0.0), dict(inner_steps=-1), dict(criterion="hinge")])
def test_maml_rejects_bad_hyperparameters_with_named_argument(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        MAML(**bad)
