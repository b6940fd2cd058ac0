"""Neural-process and in-context learners: engine paths, padding, CNP equivalence, toy learning."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch

from metafit import Trainer, meta_gradients, seeded
from metafit.algorithms import CNP, recalibrate
from metafit.algorithms.cnp import gaussian_nll
from metafit.algorithms.neural_process import (
    AllPointsLoss,
    InContextLearner,
    NeuralProcess,
    Padded,
    masked_gaussian_nll,
)
from metafit.data.gp import GPTasks, TabularPriorTasks, pad_tasks, split_mask
from metafit.data.task import Task, TaskBatch
from metafit.models import MLP, CNPRegressor
from metafit.models.attentive import (
    AttentiveNP,
    CNPAdapter,
    InContextClassifier,
    TransformerNP,
)

G = torch.Generator


def _anp() -> AttentiveNP:
    return seeded(0, lambda: AttentiveNP(d_model=16, n_heads=4, d_ff=16, decoder_hidden=(16,))).double()


def _tnp() -> TransformerNP:
    return seeded(
        0, lambda: TransformerNP(d_model=16, n_heads=4, n_layers=2, d_ff=16, embed_depth=2, decoder_hidden=(16,))
    ).double()


def _cnp() -> CNPAdapter:
    return seeded(0, lambda: CNPAdapter(CNPRegressor(r_dim=16, encoder_hidden=(16,), decoder_hidden=(16,)))).double()


def _icl() -> InContextClassifier:
    return seeded(
        0, lambda: InContextClassifier(MLP(8, (16,), 16), 16, max_way=5, d_model=16, n_heads=2, n_layers=2, d_ff=32)
    ).double()


NETS = {"anp": _anp, "tnp": _tnp, "cnp": _cnp}


def _unpadded(batch: TaskBatch) -> list[Task]:
    out = []
    for t in batch:
        sx, sm = split_mask(t.support_x)
        qx, qm = split_mask(t.query_x)
        out.append(Task(sx[sm], t.support_y[sm], qx[qm], t.query_y[qm]))
    return out


def _gp_batch(n: int = 5, seed: int = 0) -> TaskBatch:
    return GPTasks(generator=G().manual_seed(seed), dtype=torch.float64, max_points=20).sample_padded_batch(n)


def _assert_grads_close(a: dict, b: dict, atol: float = 1e-12) -> None:
    for g, group in a.items():
        for k, v in group.items():
            torch.testing.assert_close(v, b[g][k], rtol=1e-9, atol=atol)


@pytest.mark.parametrize("name", sorted(NETS))
def test_padded_vmap_meta_gradient_equals_loop(name: str) -> None:
    net, algo = NETS[name](), Padded()
    mp = algo.init(net)
    batch = _gp_batch()
    gv, mv = meta_gradients(algo, net, mp, {}, batch, path="vmap")
    gl, ml = meta_gradients(algo, net, mp, {}, batch, path="loop")
    _assert_grads_close(gv, gl)
    assert mv["nll"] == pytest.approx(ml["nll"], rel=1e-12)


@pytest.mark.parametrize("name", sorted(NETS))
def test_padded_batch_equals_one_task_at_a_time(name: str) -> None:
    net, algo = NETS[name](), Padded()
    mp = algo.init(net)
    batch = _gp_batch()
    tasks = _unpadded(batch)
    assert len({t.n_support for t in tasks}) > 1  # the sizes really differ
    losses, _ = torch.func.vmap(lambda t: algo.loss(net, mp, {}, t))(batch)
    plain = NeuralProcess()
    expected = torch.stack([plain.loss(net, mp, {}, t)[0] for t in tasks])
    torch.testing.assert_close(losses, expected)
    # and the meta-gradient of the padded batch (vmap) is that of the variable-size list (loop)
    gv, _ = meta_gradients(algo, net, mp, {}, batch, path="vmap")
    gl, _ = meta_gradients(plain, net, mp, {}, tasks, path="loop")
    _assert_grads_close(gv, gl)


@pytest.mark.parametrize("name", sorted(NETS))
def test_all_points_loss_is_the_nll_of_context_and_targets(name: str) -> None:
    net, plain = NETS[name](), NeuralProcess()
    algo = AllPointsLoss(plain)
    mp = algo.init(net)
    task = _unpadded(_gp_batch(1))[0]
    loss, metrics = algo.loss(net, mp, {}, task)
    # by hand: the predictive at [context; targets], the mean NLL over every point
    x, y = torch.cat([task.support_x, task.query_x]), torch.cat([task.support_y, task.query_y])
    mean, var = plain.predict_distribution(net, mp, {}, plain.adapt(net, mp, {}, task.support_x, task.support_y), x)
    torch.testing.assert_close(loss, gaussian_nll(mean, var, y))
    assert float(metrics["mse"]) == pytest.approx(float((mean.detach() - y.reshape(mean.shape)).pow(2).mean()))
    # it differs from the target-only loss, and predicts as the wrapped learner
    assert float(loss) != pytest.approx(float(plain.loss(net, mp, {}, task)[0]))
    ctx = algo.adapt(net, mp, {}, task.support_x, task.support_y)
    torch.testing.assert_close(
        algo.predict(net, mp, {}, ctx, task.query_x), plain.predict(net, mp, {}, ctx, task.query_x)
    )


@pytest.mark.parametrize("name", sorted(NETS))
def test_padded_all_points_loss_equals_one_task_at_a_time(name: str) -> None:
    net, algo = NETS[name](), Padded(AllPointsLoss())
    mp = algo.init(net)
    batch = _gp_batch()
    losses, _ = torch.func.vmap(lambda t: algo.loss(net, mp, {}, t))(batch)
    expected = torch.stack([AllPointsLoss().loss(net, mp, {}, t)[0] for t in _unpadded(batch)])
    torch.testing.assert_close(losses, expected)
    gv, _ = meta_gradients(algo, net, mp, {}, batch, path="vmap")
    gl, _ = meta_gradients(AllPointsLoss(), net, mp, {}, _unpadded(batch), path="loop")
    _assert_grads_close(gv, gl)


def test_all_points_loss_checks_its_learner() -> None:
    with pytest.raises(TypeError, match="learner must be a NeuralProcess, got InContextLearner"):
        AllPointsLoss(InContextLearner())  # type: ignore[arg-type]


def test_in_context_learner_vmap_meta_gradient_equals_loop() -> None:
    net, algo = _icl(), InContextLearner()
    mp = algo.init(net)
    batch = TabularPriorTasks(generator=G().manual_seed(0), dtype=torch.float64).sample_batch(3)
    gv, mv = meta_gradients(algo, net, mp, {}, batch, path="vmap")
    gl, ml = meta_gradients(algo, net, mp, {}, batch, path="loop")
    _assert_grads_close(gv, gl)
    assert mv["accuracy"] == pytest.approx(ml["accuracy"])


def test_cnp_adapter_under_neural_process_equals_cnp_learner() -> None:
    adapter = _cnp()
    cnp_net = adapter.cnp
    task = _unpadded(_gp_batch(1))[0]
    np_loss, np_m = NeuralProcess().loss(adapter, NeuralProcess().init(adapter), {}, task)
    cnp_loss, cnp_m = CNP().loss(cnp_net, CNP().init(cnp_net), {}, task)
    torch.testing.assert_close(np_loss, cnp_loss)
    torch.testing.assert_close(np_m["mse"], cnp_m["mse"])


def test_masked_gaussian_nll_ignores_padded_targets() -> None:
    g = G().manual_seed(0)
    mean, var, y = torch.randn(6, 2, generator=g), torch.rand(6, 2, generator=g) + 0.1, torch.randn(6, 2, generator=g)
    mask = torch.tensor([True, False, True, True, False, True])
    torch.testing.assert_close(masked_gaussian_nll(mean, var, y, mask), gaussian_nll(mean[mask], var[mask], y[mask]))


def test_recalibrate_fits_the_nll_optimal_variance_scale() -> None:
    net, algo = _tnp(), NeuralProcess()
    mp = algo.init(net)
    tasks = _unpadded(_gp_batch(4, seed=3))
    fitted = recalibrate(algo, net, mp, tasks)
    assert isinstance(fitted, NeuralProcess) and fitted.variance_scale != 1.0

    @torch.no_grad()
    def nll(scale: float) -> float:
        a = dataclasses.replace(algo, variance_scale=scale)
        # pooled over all query points, the quantity recalibrate minimises
        tot, n = 0.0, 0
        for t in tasks:
            m, v = a.predict_distribution(net, mp, {}, a.adapt(net, mp, {}, t.support_x, t.support_y), t.query_x)
            tot += float(gaussian_nll(m, v, t.query_y)) * t.n_query
            n += t.n_query
        return tot / n

    s = fitted.variance_scale
    assert nll(s) < nll(s * 1.2) and nll(s) < nll(s / 1.2)


def test_in_context_learner_needs_n_way() -> None:
    net, algo = _icl(), InContextLearner()
    t = TabularPriorTasks(generator=G().manual_seed(0), dtype=torch.float64).sample_task()
    with pytest.raises(ValueError, match="n_way"):
        algo.loss(net, algo.init(net), {}, Task(t.support_x, t.support_y, t.query_x, t.query_y))


def _lines(g: torch.Generator, t: int = 16, c: int = 8, q: int = 8) -> TaskBatch:
    a, b = torch.rand(t, 1, 1, generator=g) * 4 - 2, torch.rand(t, 1, 1, generator=g) * 2 - 1
    xs, xq = torch.rand(t, c, 1, generator=g) * 4 - 2, torch.rand(t, q, 1, generator=g) * 4 - 2
    return TaskBatch(xs, a * xs + b, xq, a * xq + b)


def _blobs(g: torch.Generator, t: int = 16, n_way: int = 3, k: int = 5, q: int = 5, d: int = 4) -> TaskBatch:
    mu = torch.randn(t, n_way, 1, d, generator=g) * 2
    sx = (mu + 0.5 * torch.randn(t, n_way, k, d, generator=g)).reshape(t, n_way * k, d)
    qx = (mu + 0.5 * torch.randn(t, n_way, q, d, generator=g)).reshape(t, n_way * q, d)
    sy = torch.arange(n_way).repeat_interleave(k).expand(t, -1).contiguous()
    qy = torch.arange(n_way).repeat_interleave(q).expand(t, -1).contiguous()
    return TaskBatch(sx, sy, qx, qy, n_way=n_way)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The toy trainings run on one intra-op thread (tiny ops: 2 threads only add sync, badly so on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TOY_NETS = {
    "tnp": lambda: TransformerNP(d_model=32, n_heads=4, n_layers=2, d_ff=32, embed_depth=2, decoder_hidden=(32,)),
    "anp": lambda: AttentiveNP(d_model=32, n_heads=4, d_ff=32, decoder_hidden=(32,)),
    "cnp": lambda: CNPAdapter(CNPRegressor(r_dim=32, encoder_hidden=(32,), decoder_hidden=(32,))),
}


@pytest.mark.parametrize("name", sorted(TOY_NETS))
@pytest.mark.usefixtures("one_thread")
def test_neural_process_beats_context_mean_on_lines(name: str) -> None:
    g = G().manual_seed(0)
    net, algo = seeded(0, TOY_NETS[name]), NeuralProcess()
    tr = Trainer(algo, net, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), path="vmap")
    for _ in range(150):
        tr.step(_lines(g))
    ev = _lines(G().manual_seed(99), t=64)
    with torch.no_grad():
        mse = torch.stack([algo.loss(net, tr.meta_params, {}, t)[1]["mse"] for t in ev]).mean()
    baseline = (ev.query_y - ev.support_y.mean(1, keepdim=True)).pow(2).mean()  # predict the context mean
    assert float(mse) < 0.25 * float(baseline)


@pytest.mark.usefixtures("one_thread")
def test_in_context_learner_beats_chance_on_blobs() -> None:
    g = G().manual_seed(0)
    net = seeded(
        0, lambda: InContextClassifier(MLP(4, (32,), 32), 32, max_way=5, d_model=32, n_heads=4, n_layers=2, d_ff=64)
    )
    algo = InContextLearner()
    tr = Trainer(algo, net, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), path="vmap")
    for _ in range(150):
        tr.step(_blobs(g))
    ev = _blobs(G().manual_seed(99), t=64)
    with torch.no_grad():
        acc = torch.stack([algo.loss(net, tr.meta_params, {}, t)[1]["accuracy"] for t in ev]).mean()
    assert float(acc) > 0.6  # chance is 1/3


def test_padded_predict_returns_a_row_per_input() -> None:
    net, algo = _tnp(), Padded()
    mp = algo.init(net)
    t = _gp_batch(1)[0]
    state = algo.adapt(net, mp, {}, t.support_x, t.support_y)
    plain = _unpadded(_gp_batch(1))[0]
    mean = algo.predict(net, mp, {}, state, t.query_x)
    expected = NeuralProcess().predict(
        net, mp, {}, NeuralProcess().adapt(net, mp, {}, plain.support_x, plain.support_y), plain.query_x
    )
    _, qm = split_mask(t.query_x)
    assert mean.shape[0] == t.query_x.shape[0]
    torch.testing.assert_close(mean[qm], expected)


def test_pad_tasks_roundtrip_through_padded_learner() -> None:
    tasks = _unpadded(_gp_batch(3, seed=7))
    batch = pad_tasks(tasks)
    net, algo = _anp(), Padded()
    mp = algo.init(net)
    for t, p in zip(tasks, batch):
        torch.testing.assert_close(algo.loss(net, mp, {}, p)[0], NeuralProcess().loss(net, mp, {}, t)[0])


@pytest.mark.parametrize("frozen", [False, True])
def test_in_context_learner_with_conv4_backbone_vmap_equals_loop(frozen: bool) -> None:
    from metafit.models import Conv4
    from metafit.models.attentive import Detached
    from tests.conftest import image_tasks

    def build() -> InContextClassifier:
        conv = Conv4(1, None, width=4, image_size=16)
        return InContextClassifier(
            Detached(conv) if frozen else conv, conv.feature_dim, max_way=5, d_model=8, n_heads=2, n_layers=1, d_ff=16
        )

    net, algo = seeded(0, build).double(), InContextLearner()
    mp = algo.init(net)
    batch = image_tasks(n_tasks=2, side=16)
    gv, _ = meta_gradients(algo, net, mp, {}, batch, path="vmap")
    gl, _ = meta_gradients(algo, net, mp, {}, batch, path="loop")
    _assert_grads_close(gv, gl)
    backbone_grad = max(float(v.abs().max()) for k, v in gl["model"].items() if k.startswith("backbone."))
    assert (backbone_grad == 0.0) == frozen


def test_registry_builders_check_the_criterion() -> None:
    from metafit.algorithms.neural_process import build_in_context, build_neural_process

    assert build_neural_process("mse", variance_scale=2.0).variance_scale == 2.0
    built = build_neural_process("gaussian_nll", variance_scale=2.0, loss_points="all")
    assert isinstance(built, AllPointsLoss) and built.learner.variance_scale == 2.0
    with pytest.raises(ValueError, match="loss_points must be 'target' or 'all', got 'context'"):
        build_neural_process("gaussian_nll", loss_points="context")
    with pytest.raises(ValueError, match="regression learner"):
        build_neural_process("cross_entropy")
    with pytest.raises(ValueError, match="cross_entropy"):
        build_in_context("mse")


def test_evaluate_scores_in_context_learner_and_padded_np_task_by_task() -> None:
    from metafit import evaluate

    net, algo = _icl(), InContextLearner()
    mp = algo.init(net)
    batch = TabularPriorTasks(generator=G().manual_seed(2), dtype=torch.float64).sample_batch(4)
    ev = evaluate(algo, net, mp, batch)
    per = [float(algo.loss(net, mp, {}, t)[1]["accuracy"]) for t in batch]
    assert ev.per_task["accuracy"] == pytest.approx(per)
    tnp, padded = _tnp(), Padded()
    tasks = _gp_batch(4, seed=11)
    ev = evaluate(padded, tnp, padded.init(tnp), tasks)
    plain = [float(NeuralProcess().loss(tnp, padded.init(tnp), {}, t)[0].detach()) for t in _unpadded(tasks)]
    assert ev.per_task["nll"] == pytest.approx(plain)
