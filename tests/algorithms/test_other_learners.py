"""ANIL, Reptile and Prototypical Networks through the shared core."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metafit import ANIL, ProtoNet, Reptile, Trainer, meta_gradients, seeded
from metafit.algorithms.protonet import prototypes, squared_distances
from metafit.models import Conv4
from tests.conftest import TinyConv, image_tasks


def test_anil_adapts_only_the_head() -> None:
    model = seeded(0, lambda: TinyConv()).double()
    algo = ANIL(inner_lr=0.5, inner_steps=2)
    mp = algo.init(model)
    task = image_tasks(1)[0]
    fast = algo.adapt(model, mp, {}, task.support_x, task.support_y)
    for k, v in fast.items():
        same = torch.equal(v, mp["model"][k])
        assert same != k.startswith("head."), k
    # The body is still meta-learned: it receives a meta-gradient.
    g, _ = meta_gradients(algo, model, mp, {}, image_tasks(2), path="loop")
    assert float(g["model"]["conv1.weight"].abs().max()) > 0


def test_anil_rejects_filter_matching_nothing() -> None:
    with pytest.raises(ValueError, match="matches no parameter"):
        ANIL(head="classifier.").init(TinyConv())


def test_reptile_meta_gradient_is_theta_minus_adapted_weights() -> None:
    model = seeded(0, lambda: TinyConv()).double()
    algo = Reptile(inner_lr=0.1, inner_steps=3)
    mp = algo.init(model)
    batch = image_tasks(2)
    g, _ = meta_gradients(algo, model, mp, {}, batch, path="loop")
    phis = [algo.adapt(model, mp, {}, t.support_x, t.support_y, create_graph=False) for t in batch]
    for k, theta in mp["model"].items():
        want = sum(theta.detach() - phi[k].detach() for phi in phis) / len(phis)
        torch.testing.assert_close(g["model"][k], want)
    assert algo.first_order


def test_reptile_with_sgd_outer_lr_one_moves_to_mean_adapted_weights() -> None:
    model = seeded(0, lambda: TinyConv()).double()
    algo = Reptile(inner_lr=0.1, inner_steps=2)
    tr = Trainer(algo, model, optimizer=lambda p: torch.optim.SGD(p, lr=1.0), path="loop")
    batch = image_tasks(2)
    mp0 = {k: v.detach().clone() for k, v in tr.meta_params["model"].items()}
    phis = [algo.adapt(model, tr.meta_params, {}, t.support_x, t.support_y, create_graph=False) for t in batch]
    tr.step(batch)
    for k in mp0:
        want = sum(phi[k].detach() for phi in phis) / 2
        torch.testing.assert_close(tr.meta_params["model"][k].detach(), want)


def test_prototypes_are_class_means_and_logits_are_negative_squared_distances() -> None:
    emb = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, 1])
    protos = prototypes(emb, labels, 3)
    torch.testing.assert_close(protos, torch.tensor([[1.0, 0.0], [0.0, 4.0], [0.0, 0.0]]))
    q = torch.tensor([[1.0, 1.0]])
    torch.testing.assert_close(squared_distances(q, protos), torch.cdist(q, protos) ** 2)


def test_protonet_vmap_equals_loop_and_loss_matches_manual() -> None:
    model = seeded(0, lambda: Conv4(1, None, width=4, image_size=16)).double()
    algo = ProtoNet()
    mp = algo.init(model)
    batch = image_tasks(3, side=16)
    gl, ml = meta_gradients(algo, model, mp, {}, batch, path="loop")
    gv, mv = meta_gradients(algo, model, mp, {}, batch, path="vmap")
    assert max(float((gl["model"][k] - gv["model"][k]).abs().max()) for k in gl["model"]) <= 1e-10
    t = batch[0]
    emb = model(torch.cat([t.support_x, t.query_x])).flatten(1)
    es, eq = emb[: len(t.support_x)], emb[len(t.support_x) :]
    p = torch.stack([es[t.support_y == c].mean(0) for c in range(3)])
    manual = F.cross_entropy(-(torch.cdist(eq, p) ** 2), t.query_y)
    loss, _ = algo.loss(model, mp, {}, t)
    torch.testing.assert_close(loss, manual)


def test_protonet_predict_agrees_with_loss_metrics() -> None:
    model = seeded(0, lambda: Conv4(1, None, width=4, image_size=16)).double()
    algo = ProtoNet()
    mp = algo.init(model)
    t = image_tasks(1, side=16)[0]
    _, m = algo.loss(model, mp, {}, t)
    support = algo.adapt(model, mp, {}, t.support_x, t.support_y, n_way=3)
    acc = (algo.predict(model, mp, {}, support, t.query_x).argmax(-1) == t.query_y).double().mean()
    assert float(acc) == float(m["accuracy"])


def test_protonet_needs_n_way() -> None:
    t = image_tasks(1)[0]
    from metafit.data.task import Task

    with pytest.raises(ValueError, match="n_way"):
        ProtoNet().loss(
            TinyConv(),
            ProtoNet().init(TinyConv()),
            {},
            Task(t.support_x.float(), t.support_y, t.query_x.float(), t.query_y),
        )
