"""Pretrain: class batches through the engine, test-time heads, logistic regression against sklearn."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from metafit import Trainer, evaluate, meta_gradients, seeded
from metafit.algorithms.heads import CosineHead
from metafit.algorithms.metric import MetricLearner
from metafit.algorithms.pretrain import (
    CosineClassifier,
    CosineClassifierHead,
    FineTune,
    LogisticRegressionHead,
    NearestCentroidHead,
    Pretrain,
    build_pretrain,
    cosine_classifier_gradients,
    fit_logistic_regression,
)
from metafit.algorithms.warm_start import init_from
from metafit.data.batches import ClassBatchSampler
from metafit.data.datasets import LabelledDataset, from_tensors
from metafit.data.sampling import fixed_episodes
from metafit.data.task import Task, TaskBatch
from metafit.models import MLP

TRAIN_IDS = list(range(0, 24, 2))  # 12 training classes
TEST_IDS = list(range(1, 24, 2))  # 12 held-out classes


def _blobs(n_classes: int = 24, per_class: int = 30, dim: int = 8, seed: int = 0) -> LabelledDataset:
    """Gaussian classes; x[:, 0] carries the class id (a marker, scaled small) for the leak test."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n_classes, dim, generator=g) * 1.5
    y = torch.arange(n_classes).repeat_interleave(per_class)
    x = means[y] + 0.6 * torch.randn(y.numel(), dim, generator=g)
    x = torch.cat([y[:, None].float() * 1e-3, x], dim=1)
    return from_tensors(x, y)


@pytest.fixture(scope="module")
def pretrained() -> tuple[MLP, dict, LabelledDataset, LabelledDataset, list[float]]:
    full = _blobs()
    train, test = full.subset_classes(TRAIN_IDS), full.subset_classes(TEST_IDS)
    model = seeded(0, lambda: MLP(9, (32,), 16))
    algo = Pretrain(n_classes=train.num_classes, feature_dim=16)
    mp = algo.init(model, generator=torch.Generator().manual_seed(0))
    tr = Trainer(algo, model, meta_params=mp, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), path="loop")
    sampler = ClassBatchSampler(train, 60, generator=torch.Generator().manual_seed(1))
    losses = [r.metrics["loss"] for r in tr.fit(sampler, 120)]
    return model, tr.meta_params, train, test, losses


def test_pretrain_sees_only_training_classes_with_global_labels() -> None:
    full = _blobs()
    train = full.subset_classes(TRAIN_IDS)
    sampler = ClassBatchSampler(train, 40, generator=torch.Generator().manual_seed(0))
    seen: set[int] = set()
    for _ in range(2 * sampler.batches_per_epoch()):
        b = sampler.sample_batch()
        original = torch.round(b.query_x[0, :, 0] * 1e3).long()
        assert set(original.tolist()) <= set(TRAIN_IDS)
        # the batch label is the global (training-set) class id of the original class
        assert torch.equal(torch.tensor([TRAIN_IDS[i] for i in b.query_y[0].tolist()]), original)
        seen |= set(b.query_y[0].tolist())
    assert seen == set(range(12))
    model = MLP(9, (8,), 4)
    algo = Pretrain(n_classes=12, feature_dim=4)
    mp = algo.init(model)
    algo.loss(model, mp, {}, b[0])  # n_way 12 == n_classes
    wrong = ClassBatchSampler(full, 40, generator=torch.Generator().manual_seed(0)).sample_batch()
    with pytest.raises(ValueError, match="must have n_way = n_classes = 12, got n_way=24"):
        algo.loss(model, mp, {}, wrong[0])


def test_pretrain_loss_is_classifier_cross_entropy_and_vmap_equals_loop() -> None:
    ds = _blobs().subset_classes(TRAIN_IDS)
    model = seeded(0, lambda: MLP(9, (8,), 4)).double()
    algo = Pretrain(n_classes=12, feature_dim=4)
    mp = algo.init(model, generator=torch.Generator().manual_seed(0))
    batch = ClassBatchSampler(ds, 16, generator=torch.Generator().manual_seed(0)).sample_batch().to(torch.float64)
    loss, _ = algo.loss(model, mp, {}, batch[0])
    emb = model(batch.query_x[0])
    want = F.cross_entropy(emb @ mp["classifier"]["weight"].T + mp["classifier"]["bias"], batch.query_y[0])
    torch.testing.assert_close(loss, want)
    gl, _ = meta_gradients(algo, model, mp, {}, batch, path="loop")
    gv, _ = meta_gradients(algo, model, mp, {}, batch, path="vmap")
    for grp in gl:
        for k in gl[grp]:
            torch.testing.assert_close(gv[grp][k], gl[grp][k], rtol=1e-10, atol=1e-12)
    assert float(gl["model"]["body.0.weight"].abs().max()) > 0


def test_pretrain_init_needs_feature_dim_and_n_classes() -> None:
    with pytest.raises(ValueError, match="Pretrain needs the feature size"):
        Pretrain(n_classes=5).init(torch.nn.Sequential(torch.nn.Linear(2, 4)))  # no feature_dim attribute
    assert Pretrain(n_classes=5).init(MLP(2, (3,), 4))["classifier"]["weight"].shape == (5, 4)  # MLP.feature_dim
    with pytest.raises(ValueError, match="n_classes must be the number of training classes"):
        Pretrain()
    a = Pretrain(n_classes=3, feature_dim=4).init(MLP(2, (3,), 4))["classifier"]
    b = Pretrain(n_classes=3, feature_dim=4).init(MLP(2, (3,), 4))["classifier"]
    assert torch.equal(a["weight"], b["weight"]) and float(a["weight"].detach().abs().min()) > 0  # seeded 0
    assert float(a["weight"].detach().abs().max()) <= 0.5 and float(a["bias"].detach().abs().max()) == 0


def test_pretrain_cosine_classifier_logits_by_hand() -> None:
    model = seeded(0, lambda: MLP(3, (5,), 4)).double()
    for clf in (CosineClassifier(scale=2.0), CosineClassifier(scale=3.0, learn_scale=True)):
        algo = Pretrain(n_classes=6, feature_dim=4, classifier=clf)
        mp = algo.init(model, generator=torch.Generator().manual_seed(1))
        assert sorted(mp["classifier"]) == (["scale", "weight"] if clf.learn_scale else ["weight"])
        x = torch.randn(7, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        emb = model(x)
        w = mp["classifier"]["weight"]
        want = clf.scale * (emb / emb.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).T
        torch.testing.assert_close(algo.classifier_logits(model, mp, {}, x), want)
    assert isinstance(build_pretrain("cross_entropy", n_classes=5, classifier="cosine").classifier, CosineClassifier)
    with pytest.raises(ValueError, match=r"classifier must be one of \['cosine', 'linear'\], got 'mlp'"):
        build_pretrain("cross_entropy", n_classes=5, classifier="mlp")


@pytest.mark.parametrize(
    "head",
    [LogisticRegressionHead(), CosineClassifierHead(), NearestCentroidHead(), FineTune(steps=10, lr=0.01)],
    ids=lambda h: type(h).__name__,
)
def test_pretrain_head_beats_chance_on_held_out_classes(head: object, pretrained: tuple) -> None:
    model, mp, _, test, losses = pretrained
    assert losses[-1] < 0.5 * losses[0]  # pretraining learned something
    algo = Pretrain(n_classes=12, head=head, feature_dim=16)  # type: ignore[arg-type]
    episodes = fixed_episodes(test, 5, 5, 10, 20, seed=0)
    acc = evaluate(algo, model, mp, episodes).metrics["accuracy"].mean
    assert acc > 0.6, acc  # chance: 0.2
    # predict agrees with the loss' accuracy
    t = episodes[0]
    state = algo.adapt(model, mp, {}, t.support_x, t.support_y, n_way=5)
    with torch.no_grad():
        _, m = algo.loss(model, mp, {}, t)
    acc0 = (algo.predict(model, mp, {}, state, t.query_x).argmax(-1) == t.query_y).float().mean()
    assert float(acc0) == pytest.approx(float(m["accuracy"]))


@pytest.mark.parametrize("shape", [(24, 5), (9, 20)], ids=["S>D", "D>S"])
def test_logistic_regression_head_matches_sklearn(shape: tuple[int, int]) -> None:
    sklearn_lm = pytest.importorskip("sklearn.linear_model")
    s, d = shape
    g = torch.Generator().manual_seed(0)
    y = torch.arange(s) % 3
    x = torch.randn(s, d, generator=g, dtype=torch.float64) + 1.5 * F.one_hot(y, d).double()
    xq = torch.randn(7, d, generator=g, dtype=torch.float64)
    head = LogisticRegressionHead(l2=0.5, steps=30, normalize=False)
    state = head.fit_features(x, y, 3)
    probs = torch.softmax(head.logits_features(state, xq), -1)
    ref = sklearn_lm.LogisticRegression(C=1 / 0.5, tol=1e-12, max_iter=10000).fit(x.numpy(), y.numpy())
    want = torch.from_numpy(ref.predict_proba(xq.numpy()))
    torch.testing.assert_close(probs, want, rtol=0, atol=1e-6)
    assert head.logits_features(state, xq).argmax(-1).tolist() == ref.predict(xq.numpy()).tolist()


def test_logistic_regression_newton_never_increases_the_objective() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(10) % 2
    x = torch.randn(10, 3, generator=g, dtype=torch.float64) * 5.0  # badly scaled: needs the line search
    objectives = []
    for steps in range(6):
        basis, theta = fit_logistic_regression(x, y, 2, l2=0.01, steps=steps)
        logits = torch.cat([x @ basis, torch.ones(10, 1, dtype=x.dtype)], 1) @ theta.T
        obj = F.cross_entropy(logits, y, reduction="sum") + 0.005 * theta[:, :-1].pow(2).sum()
        objectives.append(float(obj))
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(objectives))
    assert objectives[-1] < 0.5 * objectives[0]


@pytest.mark.parametrize(
    "head",
    [LogisticRegressionHead(steps=5), CosineClassifierHead(steps=5), FineTune(steps=3)],
    ids=lambda h: type(h).__name__,
)
def test_pretrain_episode_loss_vmaps(head: object) -> None:
    ds = _blobs().subset_classes(TEST_IDS)
    model = seeded(0, lambda: MLP(9, (8,), 6)).double()
    algo = Pretrain(n_classes=12, head=head, feature_dim=6)  # type: ignore[arg-type]
    mp = algo.init(model)
    batch = fixed_episodes(ds, 3, 2, 3, 3, seed=0).to(torch.float64)

    def one(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor) -> torch.Tensor:
        return algo.loss(model, mp, {}, Task(sx, sy, qx, qy, n_way=3))[0]

    with torch.no_grad():
        vm = torch.func.vmap(one)(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        lp = torch.stack([algo.loss(model, mp, {}, t)[0] for t in batch])
    torch.testing.assert_close(vm, lp, rtol=1e-8, atol=1e-10)


def test_meta_baseline_starts_cosine_protonet_from_pretrained_backbone(pretrained: tuple) -> None:
    model, mp, _, test, _ = pretrained
    meta = MetricLearner(CosineHead(scale=10.0))
    start = init_from(meta.init(model), mp["model"])
    for k, v in mp["model"].items():
        assert torch.equal(start["model"][k], v.detach())
    episodes: TaskBatch = fixed_episodes(test, 5, 5, 10, 10, seed=1)
    before = evaluate(meta, model, start, episodes).metrics["accuracy"].mean
    assert before > 0.6  # the pretrained features already work with the cosine metric


def test_build_pretrain_heads() -> None:
    assert isinstance(build_pretrain("cross_entropy", n_classes=5, head="finetune").head, FineTune)
    with pytest.raises(ValueError, match=r"head must be one of \['centroid', 'cosine', 'finetune', 'logistic'\]"):
        build_pretrain("cross_entropy", n_classes=5, head="svm")


def test_cosine_classifier_closed_form_gradients_match_autograd() -> None:
    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(7, 4, generator=g, dtype=torch.float64), dim=-1)
    y = torch.arange(7) % 3
    w = torch.randn(3, 4, generator=g, dtype=torch.float64).requires_grad_()
    ls = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    loss = F.cross_entropy(torch.exp(ls) * emb @ F.normalize(w, dim=-1).T, y)
    want_w, want_ls = torch.autograd.grad(loss, [w, ls])
    got_w, got_ls = cosine_classifier_gradients(w.detach(), ls.detach(), emb, F.one_hot(y, 3).double())
    torch.testing.assert_close(got_w, want_w)
    torch.testing.assert_close(got_ls, want_ls)


def test_pretrain_reads_feature_dim_of_conv4_and_trains_on_images() -> None:
    from metafit.models import Conv4

    model = seeded(0, lambda: Conv4(1, None, width=4, image_size=16))
    algo = Pretrain(n_classes=3)
    mp = algo.init(model, generator=torch.Generator().manual_seed(0))
    assert tuple(mp["classifier"]["weight"].shape) == (3, model.feature_dim)
    g = torch.Generator().manual_seed(0)
    ds = from_tensors(torch.randn(12, 1, 16, 16, generator=g), torch.arange(12) % 3)
    tr = Trainer(algo, model, meta_params=mp, path="auto")
    r = tr.step(ClassBatchSampler(ds, 6, generator=g).sample_batch())
    assert tr.resolved_path == "loop" and r.metrics["n_tasks"] == 1.0
