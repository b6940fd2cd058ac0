"""MAML++: each piece against a hand-written oracle (float64), and the pieces together."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metafit import MAML, Trainer, meta_gradients, seeded
from metafit.algorithms.mamlpp import (
    MAMLPlusPlus,
    build_mamlpp,
    iteration_callback,
    msl_weights,
    norm_parameter_names,
    second_order_at,
)
from metafit.data.task import Task, TaskBatch
from metafit.engine import Callback
from metafit.functional import apply
from metafit.models import MLP
from tests.conftest import TinyConv, image_tasks

PLAIN = {"msl_iterations": 0, "learn_inner_lr": False, "per_step_norm": False, "first_order_iterations": 0}


def _regression_task(seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(6, 2, generator=g, dtype=torch.float64)
    qx = torch.randn(5, 2, generator=g, dtype=torch.float64)
    return Task(sx, torch.sin(sx.sum(1, keepdim=True)), qx, torch.sin(qx.sum(1, keepdim=True)))


def _mlp() -> MLP:
    return seeded(0, lambda: MLP(2, (5,), 1)).double()


def _hand_inner(model, theta, task, rates, create_graph):  # type: ignore[no-untyped-def]
    """Plain autograd inner loop; ``rates[j][name]`` is step j's rate. Returns [theta_0, ..., theta_n]."""
    path = [theta]
    p = theta
    for r in rates:
        loss = F.mse_loss(apply(model, p, {}, task.support_x), task.support_y)
        gs = torch.autograd.grad(loss, list(p.values()), create_graph=create_graph)
        p = {k: v - r[k] * g for (k, v), g in zip(p.items(), gs)}
        path.append(p)
    return path


def _leaves(mp):  # type: ignore[no-untyped-def]
    return {g: {k: v.detach().clone().requires_grad_(True) for k, v in d.items()} for g, d in mp.items()}


def test_msl_weights_known_values_and_final_only_after_annealing() -> None:
    assert msl_weights(4, 0, 10) == (0.25, 0.25, 0.25, 0.25)
    w = msl_weights(4, 5, 10)  # decay 1/4/10 = 0.025 per iteration
    assert w == pytest.approx((0.125, 0.125, 0.125, 0.625))
    w = msl_weights(4, 9, 10)  # non-final floor 0.03/4 = 0.0075; final 0.25 + 9*3*0.025 = 0.925
    assert w == pytest.approx((0.025, 0.025, 0.025, 0.925))
    assert sum(msl_weights(5, 7, 10)) == pytest.approx(1.0)
    assert msl_weights(4, 10, 10) == (0.0, 0.0, 0.0, 1.0)
    assert msl_weights(3, 0, 0) == (0.0, 0.0, 1.0)
    assert msl_weights(1, 3, 10) == (1.0,)
    w = msl_weights(2, 99, 100)  # the floor binds: 0.5 - 99/200 = 0.005 < 0.015
    assert w == pytest.approx((0.015, 0.985))


def test_second_order_at_switches_after_first_order_iterations() -> None:
    assert [second_order_at(i, 3) for i in range(5)] == [False, False, False, True, True]
    assert second_order_at(0, 0)


def test_mamlpp_with_every_piece_off_is_second_order_maml() -> None:
    model = seeded(0, lambda: TinyConv()).double()
    batch = image_tasks(2)
    pp = MAMLPlusPlus(inner_lr=0.3, inner_steps=2, **PLAIN)
    maml = MAML(inner_lr=0.3, inner_steps=2)
    mp = pp.init(model)
    assert sorted(mp) == ["model"]
    g1, m1 = meta_gradients(pp, model, mp, {}, batch, path="loop")
    g2, m2 = meta_gradients(maml, model, mp, {}, batch, path="loop")
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-12)
    for k in g1["model"]:
        torch.testing.assert_close(g1["model"][k], g2["model"][k], rtol=1e-10, atol=1e-12)


def test_mamlpp_derivative_order_annealing_matches_create_graph_oracles() -> None:
    model, task = _mlp(), _regression_task()
    algo = MAMLPlusPlus(inner_lr=0.4, inner_steps=2, criterion="mse", **{**PLAIN, "first_order_iterations": 10})
    mp = algo.init(model)
    oracle = {}
    for cg in (False, True):
        theta = {k: v.detach().clone().requires_grad_(True) for k, v in mp["model"].items()}
        path = _hand_inner(model, theta, task, [{k: 0.4 for k in theta}] * 2, create_graph=cg)
        lq = F.mse_loss(apply(model, path[-1], {}, task.query_x), task.query_y)
        oracle[cg] = dict(zip(theta, torch.autograd.grad(lq, list(theta.values()))))
    # the two orders really differ on this problem
    assert max(float((oracle[True][k] - oracle[False][k]).abs().max()) for k in oracle[True]) > 1e-4
    for it, cg in ((0, False), (9, False), (10, True), (50, True)):
        g, _ = meta_gradients(algo.at_iteration(it), model, mp, {}, [task], path="loop")
        for k in oracle[cg]:
            torch.testing.assert_close(g["model"][k], oracle[cg][k], rtol=1e-10, atol=1e-12)


def test_mamlpp_msl_loss_is_hand_weighted_sum_of_per_step_query_losses() -> None:
    model, task = _mlp(), _regression_task(1)
    algo = MAMLPlusPlus(inner_lr=0.3, inner_steps=3, criterion="mse", **{**PLAIN, "msl_iterations": 8}).at_iteration(3)
    mp = _leaves(algo.init(model))
    loss, metrics = algo.loss(model, mp, {}, task)
    path = _hand_inner(model, mp["model"], task, [{k: 0.3 for k in mp["model"]}] * 3, create_graph=True)
    qls = [F.mse_loss(apply(model, p, {}, task.query_x), task.query_y) for p in path[1:]]
    w = msl_weights(3, 3, 8)
    assert len(set(w)) == 2 and w[0] > 0
    want = sum(wi * li for wi, li in zip(w, qls))
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(metrics["final_loss"], qls[-1].detach())
    # and the meta-gradient is that of the weighted sum
    g = torch.autograd.grad(loss, list(mp["model"].values()))
    g_want = torch.autograd.grad(want, list(mp["model"].values()))
    for a, b in zip(g, g_want):
        torch.testing.assert_close(a, b)


def test_mamlpp_lslr_updates_with_per_step_per_tensor_rates() -> None:
    model, task = _mlp(), _regression_task(2)
    algo = MAMLPlusPlus(inner_lr=0.1, inner_steps=2, criterion="mse", **{**PLAIN, "learn_inner_lr": True})
    mp = algo.init(model)
    assert sorted(mp) == ["inner_lr", "model"]
    assert all(v.shape == (2,) for v in mp["inner_lr"].values())
    names = list(mp["model"])
    mp["inner_lr"] = {
        k: torch.tensor([0.05 * (i + 1), 0.3 / (i + 1)], dtype=torch.float64, requires_grad=True)
        for i, k in enumerate(names)
    }
    rates = [{k: float(mp["inner_lr"][k][j].detach()) for k in names} for j in range(2)]
    fast = algo.adapt(model, mp, {}, task.support_x, task.support_y)
    path = _hand_inner(model, mp["model"], task, rates, create_graph=False)
    for k in names:
        torch.testing.assert_close(fast[k], path[-1][k].detach())
    # meta-gradient w.r.t. the rates against autograd through the hand-written loop
    leaves = _leaves(mp)
    lr_t = [{k: leaves["inner_lr"][k][j] for k in names} for j in range(2)]
    hp = _hand_inner(model, leaves["model"], task, lr_t, create_graph=True)
    lq = F.mse_loss(apply(model, hp[-1], {}, task.query_x), task.query_y)
    want = torch.autograd.grad(lq, list(leaves["inner_lr"].values()))
    g, _ = meta_gradients(algo, model, mp, {}, [task], path="loop")
    for k, w in zip(names, want):
        torch.testing.assert_close(g["inner_lr"][k], w)
        assert float(w.abs().min()) > 0


def test_norm_parameter_names_finds_norm_layers_only() -> None:
    assert norm_parameter_names(TinyConv()) == ("norm1.weight", "norm1.bias")
    assert norm_parameter_names(TinyConv(norm="batchnorm")) == ("norm1.weight", "norm1.bias")
    assert norm_parameter_names(MLP(2, (4,), 1)) == ()
    with pytest.raises(ValueError, match="per_step_norm=True needs normalisation layers"):
        MAMLPlusPlus(criterion="mse").init(MLP(2, (4,), 1))


def test_mamlpp_bnwb_selects_the_steps_norm_parameters() -> None:
    model = seeded(0, lambda: TinyConv()).double()
    task = image_tasks(1)[0]
    algo = MAMLPlusPlus(inner_lr=0.2, inner_steps=2, **{**PLAIN, "per_step_norm": True})
    mp = algo.init(model)
    assert sorted(mp) == ["model", "norm"]
    assert "norm1.weight" not in mp["model"] and mp["norm"]["norm1.weight"].shape == (2, 4)
    g = torch.Generator().manual_seed(3)
    mp["norm"] = {
        k: (v.detach() + torch.randn(v.shape, generator=g, dtype=v.dtype)).requires_grad_()
        for k, v in mp["norm"].items()
    }
    steps = list(algo.adapt_steps(model, mp, {}, task.support_x, task.support_y, create_graph=False))
    # hand-written: support forward of step j with row j; the norm parameters are not adapted
    p = {k: v.detach() for k, v in mp["model"].items()}
    for j in range(2):
        norm_j = {k: v[j].detach() for k, v in mp["norm"].items()}
        pj = {k: v.clone().requires_grad_() for k, v in p.items()}
        loss = F.cross_entropy(apply(model, {**pj, **norm_j}, {}, task.support_x), task.support_y)
        gs = torch.autograd.grad(loss, list(pj.values()))
        p = {k: v - 0.2 * gk for (k, v), gk in zip(p.items(), gs)}
        for k, v in p.items():
            torch.testing.assert_close(steps[j + 1][k].detach(), v)
        for k, v in norm_j.items():
            assert torch.equal(steps[j + 1][k].detach(), v)  # after j+1 steps: row j
    assert torch.equal(steps[0]["norm1.weight"].detach(), mp["norm"]["norm1.weight"][0].detach())
    # past the trained steps (evaluation with more steps) the last row is reused
    more = list(algo.adapt_steps(model, mp, {}, task.support_x, task.support_y, steps=4, create_graph=False))
    assert torch.equal(more[4]["norm1.weight"].detach(), mp["norm"]["norm1.weight"][1].detach())
    # each row gets its own meta-gradient
    gr, _ = meta_gradients(algo, model, mp, {}, [task], path="loop")
    assert float(gr["norm"]["norm1.weight"][0].abs().max()) > 0 and float(gr["norm"]["norm1.weight"][1].abs().max()) > 0


def test_mamlpp_all_pieces_vmap_equals_loop() -> None:
    model = seeded(0, lambda: TinyConv()).double()
    batch: TaskBatch = image_tasks(3)
    algo = MAMLPlusPlus(inner_lr=0.2, inner_steps=2, msl_iterations=10, first_order_iterations=2).at_iteration(4)
    mp = algo.init(model)
    gl, ml = meta_gradients(algo, model, mp, {}, batch, path="loop")
    gv, mv = meta_gradients(algo, model, mp, {}, batch, path="vmap")
    for grp in gl:
        for k in gl[grp]:
            torch.testing.assert_close(gv[grp][k], gl[grp][k], rtol=1e-8, atol=1e-10)
    assert ml["loss"] == pytest.approx(mv["loss"], rel=1e-10)


def test_mamlpp_adaptation_curve_and_builder() -> None:
    model = seeded(0, lambda: TinyConv()).double()
    algo = build_mamlpp("cross_entropy", inner_lr=0.2, inner_steps=2, msl_iterations=5)
    mp = algo.init(model)
    t = image_tasks(1)[0]
    curve = algo.adaptation_curve(model, mp, {}, t, steps=3)
    assert curve["loss"].shape == (4,)
    fast = algo.adapt(model, mp, {}, t.support_x, t.support_y, steps=3, create_graph=False)
    want = F.cross_entropy(algo.predict(model, mp, {}, fast, t.query_x), t.query_y)
    torch.testing.assert_close(curve["loss"][3], want.detach())
    assert algo.spec.second_order and algo.spec.inner_loop
    with pytest.raises(ValueError, match="inner_steps must be >= 1 for MAML\\+\\+, got 0"):
        MAMLPlusPlus(inner_steps=0)


def test_mamlpp_iteration_callback_advances_the_schedule_in_a_trainer() -> None:
    model = _mlp()
    algo = MAMLPlusPlus(inner_lr=0.1, inner_steps=2, criterion="mse", **{**PLAIN, "msl_iterations": 3})
    tr = Trainer(algo, model, path="loop")
    seen: list[tuple[int, tuple[float, ...]]] = []

    class Record(Callback):
        def on_step_end(self, trainer: Trainer, result: object) -> None:  # the iteration the step ran at
            seen.append((trainer.algorithm.iteration, trainer.algorithm.step_weights))  # type: ignore[attr-defined]

    tr.fit(iter([[_regression_task(i)] for i in range(5)]), 5, callbacks=[iteration_callback(), Record()])
    assert [it for it, _ in seen] == [0, 1, 2, 3, 3]  # clipped at the end of the schedule
    assert seen[1][1] == msl_weights(2, 1, 3) and seen[-1][1] == (0.0, 1.0)
    done = tr.algorithm
    assert done.at_iteration(100) is done  # nothing changes any more: the same object


def test_mamlpp_at_iteration_canonicalises_past_both_schedules() -> None:
    algo = MAMLPlusPlus(msl_iterations=5, first_order_iterations=8)
    assert algo.at_iteration(3).iteration == 3 and algo.at_iteration(20).iteration == 8
    assert not algo.at_iteration(7).second_order and algo.at_iteration(9).second_order
    assert algo.at_iteration(0) is algo


def test_mamlpp_on_fused_conv4_vmap_equals_loop() -> None:
    from metafit.models import Conv4

    model = seeded(0, lambda: Conv4(1, 3, width=4, image_size=16, downsample="stride")).double()
    algo = MAMLPlusPlus(inner_lr=0.2, inner_steps=2, msl_iterations=4).at_iteration(1)
    mp = algo.init(model)
    assert sorted(mp["norm"]) == [f"features.{i}.1.{p}" for i in range(4) for p in ("bias", "weight")]
    batch = image_tasks(2, side=16)
    gl, _ = meta_gradients(algo, model, mp, {}, batch, path="loop")
    gv, _ = meta_gradients(algo, model, mp, {}, batch, path="vmap")
    for grp in gl:
        for k in gl[grp]:
            torch.testing.assert_close(gv[grp][k], gl[grp][k], rtol=1e-7, atol=1e-10)
