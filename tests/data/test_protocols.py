"""Harder protocols: within-alphabet episodes, Dirichlet queries, inductive statistics, sweeps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metafit.algorithms.maml import MAML
from metafit.algorithms.protonet import ProtoNet
from metafit.data.datasets import LabelledDataset
from metafit.data.protocols import (
    Inductive,
    InductiveGradient,
    SupportStatsNorm,
    fixed_episodes_with_classes,
    imbalanced_query_counts,
    imbalanced_query_episodes,
    inductive,
    rotated_classes,
    support_statistics,
    sweep,
    within_alphabet_episodes,
    within_group_episodes,
)
from metafit.data.sampling import fixed_episodes
from metafit.evaluation import evaluate, summarize
from metafit.functional import params_of
from metafit.models import Conv4, TaskBatchNorm, fuse_norm_relu_pool
from metafit.seeding import seeded
from tests.conftest import DATA_ROOT, TinyConv, image_tasks


def _coded(groups: list[str], per_class: int = 10, names: list[str] | None = None) -> LabelledDataset:
    """Class c, example i has x = 1000 c + i: every gathered input tells where it came from."""
    n = len(groups)
    y = torch.arange(n).repeat_interleave(per_class)
    x = (1000 * y + torch.arange(per_class).repeat(n)).double()[:, None]
    return LabelledDataset(x, y, tuple(names or [f"{g}/c{i}" for i, g in enumerate(groups)]), tuple(groups))


def _classes_of(x: torch.Tensor) -> torch.Tensor:
    return torch.div(x[..., 0], 1000, rounding_mode="floor").long()


@pytest.mark.parametrize("n_classes", [12, 50])  # the sampler's top-k path and its rejection path
def test_fixed_episodes_with_classes_matches_fixed_episodes_and_the_labels(n_classes: int) -> None:
    ds = _coded(["g"] * n_classes)
    n_way = 4 if n_classes == 12 else 3
    es = fixed_episodes_with_classes(ds, n_way, 2, 3, 50, seed=7)
    ref = fixed_episodes(ds, n_way, 2, 3, 50, seed=7)
    assert torch.equal(es.tasks.support_x, ref.support_x) and torch.equal(es.tasks.query_x, ref.query_x)
    t = es.tasks
    assert torch.equal(_classes_of(t.support_x), es.classes.gather(1, t.support_y))
    assert torch.equal(_classes_of(t.query_x), es.classes.gather(1, t.query_y))


def test_within_group_episodes_keep_each_episode_inside_one_group() -> None:
    groups = ["A"] * 6 + ["B"] * 3 + ["C"] * 8
    ds = _coded(groups)
    es = within_group_episodes(ds, 5, 1, 2, 200, generator=torch.Generator().manual_seed(0))
    t = es.tasks
    assert t.support_x.shape == (200, 5, 1) and t.query_x.shape == (200, 10, 1)
    assert torch.equal(_classes_of(t.support_x), es.classes.gather(1, t.support_y))
    assert torch.equal(_classes_of(t.query_x), es.classes.gather(1, t.query_y))
    for cls, grp in zip(es.classes.tolist(), es.groups):
        assert {groups[c] for c in cls} == {grp} and len(set(cls)) == 5
    assert set(es.groups) == {"A", "C"} and 60 < es.groups.count("A") < 140  # B is too small; A, C uniform
    # support and query never share an example
    assert not (t.support_x[:, :, None, 0] == t.query_x[:, None, :, 0]).any()


def test_within_group_episodes_refuse_rotated_classes_and_missing_groups() -> None:
    names = [f"A/character{i:02d}/rot{r}" for i in range(3) for r in (0, 90, 180, 270)]
    rot = _coded(["A"] * 12, names=names)
    assert rotated_classes(rot) == [c for c in range(12) if c % 4]
    with pytest.raises(ValueError, match="rotated classes .* rotations=False"):
        within_group_episodes(rot, 5, 1, 1, 3, generator=torch.Generator())
    ok = within_group_episodes(rot, 5, 1, 1, 3, generator=torch.Generator(), allow_rotations=True)
    assert len(ok) == 3
    plain = LabelledDataset(torch.zeros(20, 1), torch.arange(2).repeat_interleave(10), ("a", "b"))
    with pytest.raises(ValueError, match="need dataset.groups"):
        within_group_episodes(plain, 2, 1, 1, 3, generator=torch.Generator())
    with pytest.raises(ValueError, match="n_way=7 exceeds the classes of every group \\(the largest has 3\\)"):
        within_group_episodes(_coded(["A", "A", "A", "B"]), 7, 1, 1, 3, generator=torch.Generator())


@pytest.fixture(scope="module")
def omniglot_test_split() -> LabelledDataset:
    if not (DATA_ROOT / "omniglot").exists():
        pytest.skip(f"Omniglot not found under {DATA_ROOT}")
    from metafit.data import omniglot as om

    return om.omniglot_split(om.load_omniglot(DATA_ROOT), "test", protocol="lake", rotations=False)


def test_within_alphabet_episodes_on_real_omniglot(omniglot_test_split: LabelledDataset) -> None:
    ds = omniglot_test_split
    es = within_alphabet_episodes(ds, 30, seed=0)
    t = es.tasks
    assert t.support_x.shape == (30, 20, 1, 28, 28) and t.query_x.shape == (30, 20, 1, 28, 28)
    for e, (cls, alphabet) in enumerate(zip(es.classes.tolist(), es.groups)):
        assert {ds.groups[c] for c in cls} == {alphabet}
        assert all(ds.class_names[c].startswith(alphabet + "/") and "/rot" not in ds.class_names[c] for c in cls)
        for j in (0, 19):  # the support image of label j is an image of class cls[j]
            imgs = ds.x[ds.y == cls[j]]
            assert (imgs == t.support_x[e, j]).flatten(1).all(1).any()
    assert len(set(es.groups)) > 5  # episodes spread over the 20 evaluation alphabets


def test_within_alphabet_episodes_refuse_the_rotated_omniglot_split() -> None:
    if not (DATA_ROOT / "omniglot").exists():
        pytest.skip(f"Omniglot not found under {DATA_ROOT}")
    from metafit.data import omniglot as om

    data = om.load_omniglot(DATA_ROOT)
    rot = om.omniglot_alphabets(data, [om.alphabet_names(data, "evaluation")[0]], rotations=True)
    with pytest.raises(ValueError, match="rotated classes"):
        within_alphabet_episodes(rot, 2, seed=0)


def test_imbalanced_query_counts_follow_the_dirichlet_mean_and_variance() -> None:
    g = torch.Generator().manual_seed(0)
    n, q, alpha, reps = 5, 30, 2.0, 4000
    counts = torch.stack([imbalanced_query_counts(n, q, alpha, generator=g) for _ in range(reps)])
    assert (counts.sum(1) == q).all() and (counts >= 1).all()
    prop = counts.double() / q
    assert prop.mean(0).tolist() == pytest.approx([1 / n] * n, abs=0.01)
    # prop = (1 + p (q - n)) / q up to rounding, Var p = (1/n)(1 - 1/n) / (n alpha + 1)
    var = ((q - n) / q) ** 2 * (1 / n) * (1 - 1 / n) / (n * alpha + 1)
    assert prop.var(0).mean().item() == pytest.approx(var, rel=0.1)
    huge = torch.stack([imbalanced_query_counts(n, q, 1e9, generator=g) for _ in range(50)])
    assert (huge == 6).all()
    with pytest.raises(ValueError, match="below n_way \\* min_per_class"):
        imbalanced_query_counts(5, 4, 1.0, generator=g)
    capped = imbalanced_query_counts(
        3, 12, 0.05, generator=torch.Generator().manual_seed(2), capacity=torch.tensor([5, 5, 5])
    )
    assert capped.sum() == 12 and (capped <= 5).all()


def test_imbalanced_query_episodes_shapes_labels_and_sources() -> None:
    ds = _coded(["g"] * 8, per_class=20)
    es = imbalanced_query_episodes(ds, 4, 2, 16, 100, alpha=0.5, seed=3)
    t = es.tasks
    assert t.query_x.shape == (100, 16, 1) and t.support_y.shape == (100, 8)
    assert torch.equal(_classes_of(t.query_x), es.classes.gather(1, t.query_y))
    assert torch.equal(_classes_of(t.support_x), es.classes.gather(1, t.support_y))
    counts = torch.nn.functional.one_hot(t.query_y, 4).sum(1)
    assert (counts >= 1).all() and (counts.max(1).values > 6).float().mean() > 0.3  # really imbalanced
    assert (t.query_y[:, 1:] >= t.query_y[:, :-1]).all()  # grouped by label
    assert not (t.support_x[:, :, None, 0] == t.query_x[:, None, :, 0]).any()
    with pytest.raises(ValueError, match="exceeds the size of class"):
        imbalanced_query_episodes(_coded(["g"] * 8, per_class=2), 4, 2, 16, 3, alpha=1.0, seed=0)
    # small classes (10 examples, 2 shots): counts capped at 8, the overflow moves to other classes
    small = imbalanced_query_episodes(_coded(["g"] * 8, per_class=10), 4, 2, 16, 200, alpha=0.3, seed=0)
    c = torch.nn.functional.one_hot(small.tasks.query_y, 4).sum(1)
    assert (c <= 8).all() and (c.sum(1) == 16).all() and (c == 8).any()
    assert torch.equal(_classes_of(small.tasks.query_x), small.classes.gather(1, small.tasks.query_y))
    with pytest.raises(ValueError, match="summing to >= n_query_total=40"):
        imbalanced_query_episodes(_coded(["g"] * 8, per_class=10), 4, 2, 40, 3, alpha=1.0, seed=0)


# -- inductive -------------------------------------------------------------------------------------


def _proto_setup() -> tuple[nn.Module, dict, object]:
    model = seeded(0, lambda: Conv4(1, None, width=8, image_size=16).double())
    tasks = image_tasks(n_tasks=2, n_way=3, k_shot=2, n_query=4, side=16, seed=1)
    return model, {"model": params_of(model)}, tasks


def test_support_stats_norm_oracles() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 4, 4, generator=g, dtype=torch.float64)
    tbn = TaskBatchNorm(3).double()
    nn.init.uniform_(tbn.weight, generator=g)
    nn.init.uniform_(tbn.bias, generator=g)
    full = SupportStatsNorm(3, 7).double()
    full.weight, full.bias = tbn.weight, tbn.bias
    assert torch.allclose(full(x), tbn(x), atol=1e-12)
    part = SupportStatsNorm(3, 4).double()
    part.weight, part.bias = tbn.weight, tbn.bias
    mean = x[:4].mean((0, 2, 3), keepdim=True)
    var = x[:4].var((0, 2, 3), unbiased=False, keepdim=True)
    hand = (x - mean) / torch.sqrt(var + 1e-5) * tbn.weight.view(1, -1, 1, 1) + tbn.bias.view(1, -1, 1, 1)
    assert torch.allclose(part(x), hand, atol=1e-12)


def test_support_statistics_copy_shares_parameters_and_leaves_the_model_alone() -> None:
    model, _, _ = _proto_setup()
    shadow = support_statistics(model, 6)
    assert [k for k, _ in shadow.named_parameters()] == [k for k, _ in model.named_parameters()]
    assert all(a is b for a, b in zip(shadow.parameters(), model.parameters()))
    assert model.fuse and not shadow.fuse
    assert sum(isinstance(m, TaskBatchNorm) for m in model.modules()) == 4
    assert sum(isinstance(m, SupportStatsNorm) for m in shadow.modules()) == 4
    with pytest.raises(TypeError, match="torch.fx graph calling"):
        support_statistics(fuse_norm_relu_pool(Conv4(1, None, width=8, image_size=16, fuse=False)), 3)
    # a traced graph without fused calls (TinyConv: no ReLU -> max-pool chain) calls its norm modules: fine
    traced = fuse_norm_relu_pool(TinyConv().double())
    assert sum(isinstance(m, SupportStatsNorm) for m in support_statistics(traced, 3).modules()) == 1


def test_inductive_protonet_query_logits_do_not_depend_on_the_other_queries() -> None:
    model, mp, tasks = _proto_setup()
    task = tasks[0]
    ind, trans = inductive(ProtoNet()), ProtoNet()
    assert isinstance(ind, Inductive) and not isinstance(ind, InductiveGradient)
    for learner, independent in ((ind, True), (trans, False)):
        adapted = learner.adapt(model, mp, {}, task.support_x, task.support_y, n_way=3)
        full = learner.predict(model, mp, {}, adapted, task.query_x)
        perm = torch.tensor([5, 2, 11, 0, 7, 1, 3, 4, 6, 8, 9, 10])
        permuted = learner.predict(model, mp, {}, adapted, task.query_x[perm])
        subset = learner.predict(model, mp, {}, adapted, task.query_x[[2, 7]])
        single = learner.predict(model, mp, {}, adapted, task.query_x[[7]])
        same = [
            torch.allclose(permuted, full[perm], atol=1e-9),
            torch.allclose(subset, full[[2, 7]], atol=1e-9),
            torch.allclose(single, full[[7]], atol=1e-9),
        ]
        if independent:
            assert all(same)
        else:
            assert not same[1] and not same[2]  # transductive: the batch changes the statistics
            assert (subset - full[[2, 7]]).abs().max() > 1e-3


def test_inductive_maml_predictions_and_curve_are_independent_of_other_queries() -> None:
    model = seeded(0, lambda: TinyConv(norm="task", n_way=3).double())
    maml = MAML(inner_lr=0.1, inner_steps=2)
    ind = inductive(maml)
    assert isinstance(ind, InductiveGradient) and ind.spec == maml.spec
    mp = maml.init(model)
    tasks = image_tasks(n_tasks=2, n_way=3, k_shot=2, n_query=3, seed=4)
    task = tasks[0]
    adapted = ind.adapt(model, mp, {}, task.support_x, task.support_y)
    full = ind.predict(model, mp, {}, adapted, task.query_x)
    assert torch.allclose(ind.predict(model, mp, {}, adapted, task.query_x[[4]]), full[[4]], atol=1e-10)
    # the support predictions equal the transductive ones on the support batch itself
    fast = maml.adapt(model, mp, {}, task.support_x, task.support_y)
    sup = ind.predict(model, mp, {}, adapted, task.support_x)
    assert torch.allclose(sup, maml.predict(model, mp, {}, fast, task.support_x), atol=1e-10)
    loop = evaluate(ind, model, mp, tasks)
    vmapped = evaluate(ind, model, mp, tasks, chunk=2)
    assert loop.per_task["loss"] == pytest.approx(vmapped.per_task["loss"], abs=1e-9)
    trans = evaluate(maml, model, mp, tasks)
    assert loop.per_task["loss"] != pytest.approx(trans.per_task["loss"], abs=1e-6)
    assert ind.with_eval(steps=1).eval_settings().steps == 1


def test_inductive_evaluate_matches_a_per_query_loop() -> None:
    model, mp, tasks = _proto_setup()
    ind = inductive(ProtoNet())
    res = evaluate(ind, model, mp, tasks)
    for e, task in enumerate(tasks):
        adapted = ind.adapt(model, mp, {}, task.support_x, task.support_y, n_way=3)
        one_by_one = torch.cat([ind.predict(model, mp, {}, adapted, task.query_x[[i]]) for i in range(12)])
        acc = (one_by_one.argmax(1) == task.query_y).double().mean().item()
        assert res.per_task["accuracy"][e] == pytest.approx(acc)


def test_sweep_returns_the_curve_in_order() -> None:
    calls = []

    def fake(n: int, k: int) -> object:
        calls.append((n, k))
        return summarize([1.0 / n + 0.01 * k, 1.0 / n + 0.01 * k + 0.02])

    pts = sweep(fake, [(5, 1), (5, 5), (20, 1)])
    assert calls == [(5, 1), (5, 5), (20, 1)]
    assert [(p.n_way, p.k_shot, p.n) for p in pts] == [(5, 1, 2), (5, 5, 2), (20, 1, 2)]
    assert pts[1].mean == pytest.approx(0.2 + 0.05 + 0.01) and pts[0].to_dict()["k_shot"] == 1
    with pytest.raises(ValueError, match="n_way must be >= 1"):
        sweep(fake, [(0, 1)])


def test_inductive_meta_gradients_vmap_equal_loop() -> None:
    from metafit.engine import meta_gradients

    model, mp, tasks = _proto_setup()
    ind = inductive(ProtoNet())
    g_loop, m_loop = meta_gradients(ind, model, mp, {}, tasks, path="loop")
    g_vmap, m_vmap = meta_gradients(ind, model, mp, {}, tasks, path="vmap")
    assert m_loop["loss"] == pytest.approx(m_vmap["loss"], abs=1e-10)
    for k, v in g_loop["model"].items():
        assert torch.allclose(v, g_vmap["model"][k], atol=1e-9), k
