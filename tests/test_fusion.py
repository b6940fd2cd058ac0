"""Model fusion: reduction to one model, learning, support dependence, baselines, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metafit import Trainer, evaluate, meta_gradients, seeded
from metafit.data.task import Task, TaskBatch, stack_tasks
from metafit.fusion import (
    FusionHead,
    FusionLearner,
    best_single,
    embed_task,
    embed_tasks,
    fuse,
    loo_logits,
    model_logits,
    stacking,
    uniform_average,
)

NOISE = (0.5, 2.0, 4.0)  # model 0 is informative, model 2 mostly noise


def _tasks(n_tasks: int, n_way: int = 5, k: int = 2, q: int = 3, m: int = 3, d: int = 6, seed: int = 0) -> TaskBatch:
    """Embedded tasks: model i sees class means plus noise NOISE[i] (different scales too)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_tasks):
        mu = 2.0 * torch.randn(n_way, m, d, generator=g, dtype=torch.float64)
        noise = torch.tensor(NOISE[:m], dtype=torch.float64)[None, :, None]
        sy, qy = torch.arange(n_way).repeat_interleave(k), torch.arange(n_way).repeat_interleave(q)
        sx = mu[sy] + noise * torch.randn(n_way * k, m, d, generator=g, dtype=torch.float64)
        qx = mu[qy] + noise * torch.randn(n_way * q, m, d, generator=g, dtype=torch.float64)
        out.append(Task(sx, sy, qx, qy, n_way=n_way))
    return stack_tasks(out)


def _acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(-1) == y).double().mean())


@pytest.mark.parametrize("k", [1, 3])
def test_single_model_fusion_equals_the_model(k: int) -> None:
    head, algo = FusionHead(1).double(), FusionLearner(inner_steps=2)
    mp = algo.init(head)
    for t in _tasks(5, k=k, m=1, seed=k):
        state = algo.adapt(head, mp, {}, t.support_x, t.support_y, n_way=t.n_way)
        fused = algo.predict(head, mp, {}, state, t.query_x)
        single = model_logits(t.support_x, t.support_y, t.query_x, 5)[0]
        assert torch.equal(fused.argmax(-1), single.argmax(-1))
        assert _acc(fused, t.query_y) == _acc(single, t.query_y)
        # the fused distribution is a tempered version of the model's (a positive multiple)
        ratio = fused / single
        torch.testing.assert_close(ratio, ratio.flatten()[0].expand_as(ratio))


def test_fusion_weights_are_learned_and_help() -> None:
    head, algo = FusionHead(3).double(), FusionLearner(inner_steps=1)
    trainer = Trainer(algo, head, path="vmap", optimizer=lambda p: torch.optim.Adam(p, lr=3e-2))
    assert trainer.meta_params is not None
    init = {k: v.detach().clone() for k, v in trainer.meta_params["model"].items()}
    for i in range(15):
        trainer.step(_tasks(8, k=1, seed=100 + i))
    learned = trainer.meta_params["model"]
    assert not torch.allclose(learned["log_scale"], init["log_scale"])
    assert float(learned["log_scale"][0].detach()) > float(
        learned["log_scale"][2].detach()
    )  # trusts the good model more
    assert not torch.equal(learned["attention.2.weight"], init["attention.2.weight"])


def test_adapted_fusion_depends_on_the_support_set() -> None:
    head, algo = FusionHead(3).double(), FusionLearner(inner_steps=1)
    with torch.no_grad():  # a non-trivial attention so that statistics matter
        nn.init.normal_(head.attention[2].weight, std=1.0, generator=torch.Generator().manual_seed(0))
    mp = algo.init(head)
    a, b = _tasks(1, seed=1)[0], _tasks(1, seed=2)[0]
    sa = algo.adapt(head, mp, {}, a.support_x, a.support_y, n_way=5)
    sb = algo.adapt(head, mp, {}, b.support_x, b.support_y, n_way=5)
    assert not torch.allclose(sa.log_weights, sb.log_weights)
    pa = algo.predict(head, mp, {}, sa, a.query_x)
    pb = algo.predict(head, mp, {}, sb, a.query_x)  # same queries, other support
    assert not torch.allclose(pa, pb)
    # the inner loop alone also makes the weights task-dependent
    plain = FusionLearner(inner_steps=1, use_attention=False)
    mp0 = plain.init(FusionHead(3).double())
    wa = plain.adapt(FusionHead(3).double(), mp0, {}, a.support_x, a.support_y, n_way=5).log_weights
    wb = plain.adapt(FusionHead(3).double(), mp0, {}, b.support_x, b.support_y, n_way=5).log_weights
    assert not torch.allclose(wa, wb)


@pytest.mark.parametrize("k", [1, 3])
def test_vmap_and_loop_agree(k: int) -> None:
    head, algo = FusionHead(3).double(), FusionLearner(inner_steps=2)
    mp = algo.init(head)
    batch = _tasks(4, k=k, seed=7)
    gl, ml = meta_gradients(algo, head, mp, {}, batch, path="loop")
    gv, mv = meta_gradients(algo, head, mp, {}, batch, path="vmap")
    for name in gl["model"]:
        torch.testing.assert_close(gl["model"][name], gv["model"][name], atol=1e-10, rtol=1e-7)
    assert ml["accuracy"] == pytest.approx(mv["accuracy"])


def test_loo_logits_leave_the_point_out() -> None:
    t = _tasks(1, k=3, m=1, seed=3)[0]
    loo = loo_logits(t.support_x, t.support_y, 5)[0]
    i = 4  # class 1
    keep = torch.ones(t.n_support, dtype=torch.bool)
    keep[i] = False
    own = t.support_x[keep & (t.support_y == t.support_y[i]), 0].mean(0)
    torch.testing.assert_close(loo[i, t.support_y[i]], -(t.support_x[i, 0] - own).pow(2).sum())
    t1 = _tasks(1, k=1, m=1, seed=3)[0]  # K = 1: in-sample, own distance 0
    assert torch.all(loo_logits(t1.support_x, t1.support_y, 5)[0].diagonal() == 0)


@pytest.mark.parametrize("k", [1, 3])
def test_baselines_shapes_and_sanity(k: int) -> None:
    t = _tasks(1, k=k, seed=5)[0]
    for logits in (uniform_average(t), best_single(t)[0], stacking(t), stacking(t, symmetric=True)):
        assert logits.shape == (15, 5) and bool(torch.isfinite(logits).all())
    if k > 1:
        assert best_single(t)[1] == 0
    t1 = _tasks(1, k=k, m=1, seed=5)[0]  # one model: every baseline is that model
    single = model_logits(t1.support_x, t1.support_y, t1.query_x, 5)[0].argmax(-1)
    assert torch.equal(uniform_average(t1).argmax(-1), single)
    assert torch.equal(best_single(t1)[0].argmax(-1), single)


def test_fuse_raw_inputs_and_embed_tasks() -> None:
    nets = [seeded(i, lambda i=i: nn.Sequential(nn.Flatten(), nn.Linear(16, 4 + i))).double() for i in range(2)]
    g = torch.Generator().manual_seed(0)
    sx, qx = (
        torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64),
        torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64),
    )
    sy = torch.arange(3).repeat(2)
    head = FusionHead(2).double()
    logits = fuse(nets, head, None, sx, sy, qx, n_way=3)
    assert logits.shape == (4, 3)
    task = Task(sx, sy, qx, torch.arange(4) % 3, n_way=3)
    e = embed_task(nets, task)
    assert e.support_x.shape == (6, 2, 5) and e.query_x.shape == (4, 2, 5)  # padded to max D
    assert isinstance(embed_tasks(nets, [task, task]), TaskBatch)
    r = evaluate(FusionLearner(), head, FusionLearner().init(head), [e])
    assert {"accuracy", "nll", "loss"} <= set(r.metrics)


def test_load_base_model_from_checkpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("safetensors")
    from metafit.checkpoint import save_checkpoint
    from metafit.fusion import load_base_model

    src = seeded(0, lambda: nn.Linear(3, 2))
    tensors = {f"meta_params/model/{k}": v for k, v in src.state_dict().items()}
    path = save_checkpoint(tmp_path, 10, tensors, {})
    dst = load_base_model(path, seeded(1, lambda: nn.Linear(3, 2)))
    torch.testing.assert_close(dst.weight, src.weight)
    assert not dst.weight.requires_grad
    with pytest.raises(ValueError, match="matching"):
        load_base_model(path, nn.Linear(4, 2))


def test_meta_train_and_compare_on_embedded_tasks() -> None:
    from metafit import generator
    from metafit.app.fuse import fusion_markdown
    from metafit.fusion import FUSION_METHOD, compare_fusion, meta_train_fusion

    pool = list(_tasks(24, k=2, seed=11))
    head, mp, losses = meta_train_fusion(
        pool, 3, steps=15, generator=generator(0), tasks_per_batch=8, lr=5e-2, head=FusionHead(3).double()
    )
    assert len(losses) == 15 and losses[-1] < losses[0]
    torch.testing.assert_close(
        head.log_scale.detach(), mp["model"]["log_scale"].detach()
    )  # head holds the trained values
    cmp = compare_fusion(FusionLearner(), head, mp, _tasks(10, k=2, seed=12))
    assert len(cmp.best_single_choice) == 10 and len(cmp.fusion_nll) == 10
    s = cmp.summary()
    assert s[FUSION_METHOD]["diff_vs_fusion"] is None and s[FUSION_METHOD]["n"] == 10
    for name in ("base model 0", "base model 2", "uniform average"):
        d = torch.tensor(cmp.per_task[FUSION_METHOD]) - torch.tensor(cmp.per_task[name])
        assert s[name]["diff_vs_fusion"]["mean"] == pytest.approx(float(d.double().mean()))
    assert s[FUSION_METHOD]["mean"] > s["base model 2"]["mean"]  # model 2 is mostly noise
    assert fusion_markdown(s).count("\n") == 2 + len(s)


def test_load_fusion_refuses_other_checkpoints(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from metafit.app.fuse import load_fusion
    from metafit.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path, 1, {"meta/model/w": torch.zeros(2)}, {"config": {}})
    with pytest.raises(ValueError, match="is not a fusion checkpoint: expected kind 'metafit-fusion-1'"):
        load_fusion(path)
