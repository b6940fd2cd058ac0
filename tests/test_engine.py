"""Engine: path choice, divergence guard, any torch.optim optimiser, buffers never mutated."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metafit import MAML, MetaSGD, SinusoidTasks, Trainer, choose_path, generator, seeded
from metafit.engine import DivergenceError, make_optimizer, meta_backward, meta_gradients
from metafit.functional import apply, buffers_of, params_of
from metafit.models import MLP, Conv4, TaskBatchNorm
from tests.conftest import TinyConv, image_tasks


def test_choose_path_prefers_loop_for_torch_batchnorm_second_order() -> None:
    model = TinyConv(norm="batchnorm")
    algo = MAML(inner_lr=0.1)
    path, report = choose_path(algo, model, algo.init(model), {}, image_tasks(2, dtype=torch.float32), repeats=1)
    assert path == "loop" and "vmap_refused" in report


def test_choose_path_measures_and_agrees_for_mlp() -> None:
    model = MLP(1, (40, 40), 1)
    algo = MAML(inner_lr=0.01, criterion="mse")
    batch = SinusoidTasks(k_shot=5, generator=generator(0)).sample_batch(25)
    path, report = choose_path(algo, model, algo.init(model), {}, batch, repeats=1)
    assert path in ("vmap", "loop")
    assert report["grad_max_abs_diff_float64"] <= 1e-6 * report["grad_scale"]
    assert report["loop_s"] > 0 and report["vmap_s"] > 0


def test_choose_path_rejects_a_vmap_path_that_disagrees(monkeypatch) -> None:
    # A learner whose vmap path computes something else must never be chosen, however fast.
    import metafit.engine as engine

    model = MLP(1, (8,), 1)
    algo = MAML(inner_lr=0.01, criterion="mse")
    batch = SinusoidTasks(k_shot=5, generator=generator(0)).sample_batch(4)
    real = engine.meta_gradients

    def skewed(*args, **kwargs):
        grads, m = real(*args, **kwargs)
        if kwargs.get("path") == "vmap":
            grads = {g: {k: v * 1.001 for k, v in d.items()} for g, d in grads.items()}
        return grads, m

    monkeypatch.setattr(engine, "meta_gradients", skewed)
    path, report = choose_path(algo, model, algo.init(model), {}, batch, repeats=1)
    assert path == "loop" and report["vmap_disagrees"]


def test_divergence_guard_raises_before_touching_parameters() -> None:
    model = MLP(1, (8,), 1)
    tr = Trainer(MAML(inner_lr=0.01, criterion="mse"), model, path="loop")
    batch = SinusoidTasks(k_shot=5, generator=generator(0)).sample_batch(2)
    tr.step(batch)
    before = {k: v.detach().clone() for k, v in tr.meta_params["model"].items()}
    state_before = {
        k: {kk: vv.clone() if torch.is_tensor(vv) else vv for kk, vv in v.items()}
        for k, v in tr.optimizer.state_dict()["state"].items()
    }
    # finite data whose squared error overflows float32: the loss is inf
    bad = type(batch)(batch.support_x, batch.support_y, batch.query_x, batch.query_y * 1e30)
    with pytest.raises(DivergenceError, match="step 2"):
        tr.step(bad)
    assert tr.step_count == 1
    for k, v in tr.meta_params["model"].items():
        assert torch.equal(v.detach(), before[k])
    after = tr.optimizer.state_dict()["state"]
    for k in state_before:
        assert torch.equal(after[k]["exp_avg"], state_before[k]["exp_avg"])


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_any_torch_optimizer_steps(name: str) -> None:
    model = MLP(1, (8,), 1)
    algo = MAML(inner_lr=0.01, criterion="mse")
    mp = algo.init(model)
    tr = Trainer(algo, model, meta_params=mp, optimizer=lambda p: make_optimizer(name, p, lr=1e-2), path="loop")
    before = mp["model"]["head.weight"].detach().clone()
    tr.step(SinusoidTasks(k_shot=5, generator=generator(0)).sample_batch(2))
    assert not torch.equal(before, tr.meta_params["model"]["head.weight"].detach())


def test_make_optimizer_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="'Adamm'"):
        make_optimizer("Adamm", [torch.zeros(1, requires_grad=True)], lr=0.1)


def test_buffers_are_never_mutated_by_running_stat_batchnorm() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    buffers = buffers_of(model)
    snapshot = {k: v.clone() for k, v in buffers.items()}
    apply(model, params_of(model), buffers, torch.randn(8, 3))
    for k in buffers:
        assert torch.equal(buffers[k], snapshot[k]), k
    for k, v in model.named_buffers():
        assert torch.equal(v, snapshot[k]), k


def test_strict_functional_call_rejects_missing_parameter() -> None:
    model = MLP(1, (4,), 1)
    p = params_of(model)
    p.pop("head.bias")
    with pytest.raises(RuntimeError, match="head.bias"):
        apply(model, p, {}, torch.zeros(2, 1))


def test_task_batch_norm_uses_each_tasks_own_statistics() -> None:
    # Normalisation sees one task's batch only: the output for task 0 does not depend on task 1,
    # on the vmap path as on the loop path, and there are no running statistics at all.
    norm = TaskBatchNorm(3)
    assert len(list(norm.buffers())) == 0
    x = torch.randn(2, 6, 3, 4, 4)
    x2 = x.clone()
    x2[1] = x2[1] * 100 + 7
    p = params_of(norm)
    y = torch.func.vmap(lambda t: apply(norm, p, {}, t))(x)
    y2 = torch.func.vmap(lambda t: apply(norm, p, {}, t))(x2)
    torch.testing.assert_close(y[0], y2[0])
    torch.testing.assert_close(y[0], apply(norm, p, {}, x[0]))
    ref = nn.functional.batch_norm(x[0], None, None, training=True)
    torch.testing.assert_close(y[0], ref, rtol=1e-4, atol=1e-5)


def test_meta_backward_denominator_scales_gradients() -> None:
    model = seeded(0, lambda: MLP(1, (8,), 1))
    algo = MAML(inner_lr=0.01, criterion="mse")
    batch = SinusoidTasks(k_shot=5, generator=generator(0)).sample_batch(4)
    mp1, mp2 = algo.init(model), algo.init(model)
    meta_backward(algo, model, mp1, {}, batch, path="loop")
    for part in batch.split([1, 3]):
        meta_backward(algo, model, mp2, {}, part, path="loop", denominator=4)
    for k in mp1["model"]:
        torch.testing.assert_close(mp1["model"][k].grad, mp2["model"][k].grad)


def _assert_compiled_path_matches_loop(algo, model: nn.Module, batch, path: str) -> None:  # noqa: ANN001
    """The meta-gradient and loss of ``path`` equal the eager loop's (float64), with no graph break."""
    torch._dynamo.reset()
    g_loop, m_loop = meta_gradients(algo, model, algo.init(model), {}, batch, path="loop")
    torch._dynamo.utils.counters.clear()
    g_comp, m_comp = meta_gradients(algo, model, algo.init(model), {}, batch, path=path)
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    for group in g_loop:
        for k in g_loop[group]:
            torch.testing.assert_close(g_comp[group][k], g_loop[group][k], rtol=1e-9, atol=1e-12)
    assert m_comp["loss"] == pytest.approx(m_loop["loss"], rel=1e-12)


@pytest.mark.parametrize(
    ("make_algo", "norm"),
    [
        (lambda: MetaSGD(inner_lr=0.1, inner_steps=2), "task"),  # 2nd order through 2 steps, learned rates
        pytest.param(lambda: MetaSGD(inner_lr=0.1, inner_steps=2), "batchnorm", marks=pytest.mark.slow),
        pytest.param(lambda: MAML(inner_lr=0.1, inner_steps=2), "batchnorm", marks=pytest.mark.slow),
        pytest.param(lambda: MAML(inner_lr=0.1, first_order=True), "task", marks=pytest.mark.slow),
    ],
    ids=["metasgd2-tasknorm", "metasgd2-batchnorm", "maml2-batchnorm", "fomaml-tasknorm"],
)
def test_compile_path_gives_the_loop_meta_gradient(make_algo, norm: str) -> None:
    # Each compile takes ~1 min on 2 cores, so only Meta-SGD runs by default. The torch.compile
    # path traces the inner gradients with torch.func.grad: the meta-gradient,
    # second order included, must equal the eager loop's (float64; metafit's TaskBatchNorm or
    # torch's BatchNorm2d inside).
    model = seeded(0, lambda: TinyConv(norm=norm)).double()
    _assert_compiled_path_matches_loop(make_algo(), model, image_tasks(2), "compile")


def test_compile_path_through_batch_norm_relu_max_pool_gives_the_loop_meta_gradient() -> None:
    # On the CPU the compile path's backend drops inductor's max-pool decompositions (a speed
    # choice); the graph must still give the eager loop's second-order meta-gradient through
    # BatchNorm + ReLU + max-pool (float64), with no graph break.
    model = seeded(0, lambda: Conv4(1, 3, width=4, image_size=16, norm="batchnorm")).double()
    _assert_compiled_path_matches_loop(MAML(inner_lr=0.1, inner_steps=1), model, image_tasks(2, side=16), "compile")


@pytest.mark.parametrize(
    "case",
    [
        "mlp-maml2",  # the sinusoid MLP, second order through 2 inner steps
        pytest.param("conv-maml2-tasknorm", marks=pytest.mark.slow),  # ~3 min to compile on 2 cores
    ],
)
def test_vmap_compile_path_gives_the_loop_meta_gradient(case: str) -> None:
    # One torch.compile graph of the vmapped batch loss: the meta-gradient must equal the eager
    # loop's in float64, with no graph break.
    if case == "mlp-maml2":
        model = seeded(0, lambda: MLP(1, (8,), 1)).double()
        algo = MAML(inner_lr=0.05, inner_steps=2, criterion="mse")
        batch = SinusoidTasks(k_shot=5, generator=generator(0)).sample_batch(3).to(torch.float64)
    else:
        model = seeded(0, lambda: TinyConv(norm="task")).double()
        algo = MAML(inner_lr=0.1, inner_steps=2)
        batch = image_tasks(2)
    _assert_compiled_path_matches_loop(algo, model, batch, "vmap_compile")


def test_vmap_compile_path_is_refused_where_vmap_is() -> None:
    with pytest.raises(ValueError, match="path='vmap_compile' with a second-order learner"):
        Trainer(MAML(inner_lr=0.1), TinyConv(norm="batchnorm"), path="vmap_compile")


def test_trainer_accepts_the_compile_paths_and_names_bad_ones() -> None:
    model = MLP(1, (8,), 1)
    assert Trainer(MAML(criterion="mse"), model, path="compile").path == "compile"
    assert Trainer(MAML(criterion="mse"), model, path="vmap_compile").path == "vmap_compile"
    with pytest.raises(
        ValueError, match=r"path must be 'vmap', 'loop', 'compile', 'vmap_compile' or 'auto', got 'fast'"
    ):
        Trainer(MAML(criterion="mse"), model, path="fast")


def test_compiled_loss_cache_does_not_keep_models_alive() -> None:
    import gc
    import weakref

    from metafit.engine import compiled_task_loss

    model = MLP(1, (4,), 1)
    compiled_task_loss(MAML(criterion="mse"), model)  # builds the entry; nothing is compiled yet
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_frozen_meta_parameters_are_never_stepped() -> None:
    # requires_grad=False marks a meta-parameter as frozen: parameters_of leaves it out, so the
    # optimiser (even with decoupled weight decay) never changes it; the others train.
    model = seeded(0, lambda: MLP(1, (8,), 1))
    algo = MAML(inner_lr=0.01, criterion="mse")
    mp = algo.init(model)
    frozen = mp["model"]["body.0.weight"].requires_grad_(False)
    before = frozen.detach().clone()
    others = {k: v.detach().clone() for k, v in mp["model"].items() if k != "body.0.weight"}
    tr = Trainer(algo, model, meta_params=mp, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.5))
    assert len(tr.parameters) == len(mp["model"]) - 1 and "model/body.0.weight" not in tr.parameter_names
    tr.fit(SinusoidTasks(k_shot=5, generator=generator(0)), 3)
    assert torch.equal(tr.meta_params["model"]["body.0.weight"], before)
    assert all(not torch.equal(tr.meta_params["model"][k], v) for k, v in others.items())
