"""Metric heads and MetricLearner: oracles, gradients, vmap == loop, ProtoNet equivalence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from metafit import ProtoNet, meta_gradients, seeded
from metafit.algorithms.heads import (
    CosineHead,
    EuclideanHead,
    LDAHead,
    MahalanobisHead,
    RidgeHead,
    class_covariances,
    ledoit_wolf_shrinkage,
)
from metafit.algorithms.metric import MetricLearner, build_metric
from metafit.models import Conv4
from tests.conftest import image_tasks

HEADS = [
    EuclideanHead(),
    CosineHead(),
    MahalanobisHead(method="direct"),
    MahalanobisHead(method="woodbury"),
    RidgeHead(init_lambda=0.5, init_scale=2.0, init_bias=0.1),
    LDAHead(method="direct", init_scale=2.0),
    LDAHead(method="woodbury"),
    LDAHead(shrinkage=0.3),
]


def _toy(
    s: int = 7, q: int = 5, d: int = 4, n: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(s, d, generator=g, dtype=torch.float64)
    xq = torch.randn(q, d, generator=g, dtype=torch.float64)
    ys = torch.arange(s) % n
    return xs, ys, xq


def _hp(head: object) -> dict[str, torch.Tensor]:
    return {k: v.detach().double().requires_grad_(True) for k, v in head.init_params().items()}  # type: ignore[attr-defined]


def test_ridge_head_dual_form_equals_primal_normal_equations() -> None:
    xs, ys, xq = _toy(s=6, d=9)
    head = RidgeHead(init_lambda=0.7, init_scale=1.5, init_bias=-0.2)
    hp = _hp(head)
    y = F.one_hot(ys, 3).double()
    lam = 0.7
    w_primal = torch.linalg.solve(xs.T @ xs + lam * torch.eye(9, dtype=torch.float64), xs.T @ y)
    want = 1.5 * xq @ w_primal - 0.2
    torch.testing.assert_close(head.logits(xs, ys, 3, xq, hp), want)
    # also when S > D (the Woodbury identity holds either way)
    xs, ys, xq = _toy(s=12, d=3)
    y = F.one_hot(ys, 3).double()
    w_primal = torch.linalg.solve(xs.T @ xs + lam * torch.eye(3, dtype=torch.float64), xs.T @ y)
    torch.testing.assert_close(head.logits(xs, ys, 3, xq, hp), 1.5 * xq @ w_primal - 0.2)


@pytest.mark.parametrize("method", ["direct", "woodbury", "auto"])
@pytest.mark.parametrize("d", [3, 20])
def test_mahalanobis_head_matches_explicit_inverse_of_shrunk_covariances(method: str, d: int) -> None:
    xs, ys, xq = _toy(s=8, d=d)
    ys = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])  # 4, 3 and 1 examples (1-shot class: zero covariance)
    head = MahalanobisHead(beta=0.7, method=method)
    got = head.logits(xs, ys, 4, xq, {})  # class 3 has no example
    task_cov = torch.cov(xs.T, correction=1)
    eye = torch.eye(d, dtype=torch.float64)
    want = torch.empty(xq.shape[0], 4, dtype=torch.float64)
    for k in range(4):
        xk = xs[ys == k]
        nk = xk.shape[0]
        cov_k = torch.cov(xk.T, correction=1) if nk > 1 else torch.zeros(d, d, dtype=torch.float64)
        lam = nk / (nk + 1)
        qk = lam * cov_k + (1 - lam) * task_cov + 0.7 * eye
        inv = torch.linalg.inv(qk)
        diff = xq - (xk.mean(0) if nk else torch.zeros(d, dtype=torch.float64))
        want[:, k] = -0.5 * torch.einsum("qd,de,qe->q", diff, inv, diff)
    torch.testing.assert_close(got, want)


def test_class_covariances_are_unbiased_per_class() -> None:
    xs, ys, _ = _toy(s=9, d=2)
    means, covs, counts = class_covariances(xs, ys, 4)  # class 3 empty
    for k in range(3):
        torch.testing.assert_close(means[k], xs[ys == k].mean(0))
        torch.testing.assert_close(covs[k], torch.cov(xs[ys == k].T))
    assert counts.tolist() == [3.0, 3.0, 3.0, 0.0]
    assert float(covs[3].abs().max()) == 0.0


def test_cosine_head_logits_by_hand() -> None:
    xs = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    ys = torch.tensor([0, 0, 1])
    xq = torch.tensor([[1.0, 1.0], [0.0, -5.0]], dtype=torch.float64)
    head = CosineHead(scale=4.0)
    got = head.logits(xs, ys, 2, xq, {"scale": torch.tensor(4.0, dtype=torch.float64)})
    r = 2**-0.5
    want = 4.0 * torch.tensor([[r, r], [0.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(got, want)
    fixed = CosineHead(scale=3.0, learn_scale=False)
    assert fixed.init_params() == {}
    torch.testing.assert_close(fixed.logits(xs, ys, 2, xq, {}), 0.75 * want)


@pytest.mark.parametrize("head", HEADS, ids=repr)
def test_head_gradcheck_float64(head: object) -> None:
    xs, ys, xq = _toy(s=5, q=3, d=3, n=2)
    hp = _hp(head)
    names = sorted(hp)

    def f(a: torch.Tensor, b: torch.Tensor, *hv: torch.Tensor) -> torch.Tensor:
        return head.logits(a, ys, 2, b, dict(zip(names, hv)))  # type: ignore[attr-defined]

    inputs = (xs.clone().requires_grad_(), xq.clone().requires_grad_(), *(hp[k] for k in names))
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize(("scale", "distance", "joint"), [(1.0, "squared_euclidean", True), (0.5, "euclidean", False)])
def test_metric_learner_euclidean_equals_protonet_exactly(scale: float, distance: str, joint: bool) -> None:
    model = seeded(0, lambda: Conv4(1, None, width=4, image_size=16)).double()
    batch = image_tasks(3, side=16)
    ml = MetricLearner(EuclideanHead(scale, distance), joint_embedding=joint)
    pn = ProtoNet(distance_scale=scale, distance=distance, joint_embedding=joint)
    mp = ml.init(model)
    assert sorted(mp) == ["model"]
    for t in batch:
        torch.testing.assert_close(ml.loss(model, mp, {}, t)[0], pn.loss(model, mp, {}, t)[0], rtol=0, atol=0)
    g1, _ = meta_gradients(ml, model, mp, {}, batch, path="loop")
    g2, _ = meta_gradients(pn, model, mp, {}, batch, path="loop")
    for k in g1["model"]:
        torch.testing.assert_close(g1["model"][k], g2["model"][k], rtol=0, atol=0)


@pytest.mark.parametrize("head", HEADS, ids=repr)
def test_metric_learner_vmap_equals_loop(head: object) -> None:
    model = seeded(0, lambda: Conv4(1, None, width=4, image_size=16)).double()
    algo = MetricLearner(head)  # type: ignore[arg-type]
    mp = algo.init(model)
    batch = image_tasks(3, side=16)
    gl, ml = meta_gradients(algo, model, mp, {}, batch, path="loop")
    gv, mv = meta_gradients(algo, model, mp, {}, batch, path="vmap")
    for grp in gl:
        for k in gl[grp]:
            torch.testing.assert_close(gv[grp][k], gl[grp][k], rtol=1e-9, atol=1e-11)
    assert abs(ml["loss"] - mv["loss"]) < 1e-10
    # head parameters get a meta-gradient
    for k, v in gl.get("head", {}).items():
        assert float(v.abs()) > 0, k


def test_metric_learner_head_params_are_meta_params_of_model_dtype() -> None:
    model = seeded(0, lambda: Conv4(1, None, width=4, image_size=16)).double()
    mp = MetricLearner(RidgeHead()).init(model)
    assert sorted(mp["head"]) == ["bias", "log_lambda", "scale"]
    assert all(v.dtype == torch.float64 and v.requires_grad for v in mp["head"].values())
    with pytest.raises(ValueError, match=r"meta_params\['head'\] must hold \['bias', 'log_lambda', 'scale'\]"):
        MetricLearner(RidgeHead()).loss(model, {"model": mp["model"]}, {}, image_tasks(1, side=16)[0])


def test_metric_learner_predict_agrees_with_loss_metrics() -> None:
    model = seeded(0, lambda: Conv4(1, None, width=4, image_size=16)).double()
    algo = MetricLearner(MahalanobisHead())
    mp = algo.init(model)
    t = image_tasks(1, side=16)[0]
    _, m = algo.loss(model, mp, {}, t)
    support = algo.adapt(model, mp, {}, t.support_x, t.support_y, n_way=3)
    acc = (algo.predict(model, mp, {}, support, t.query_x).argmax(-1) == t.query_y).double().mean()
    assert float(acc) == float(m["accuracy"])


def test_build_metric_refuses_unknown_head() -> None:
    with pytest.raises(
        ValueError, match=r"head must be one of \['cosine', 'euclidean', 'lda', 'mahalanobis', 'ridge'\], got 'l1'"
    ):
        build_metric("cross_entropy", head="l1")
    with pytest.raises(ValueError, match="criterion must be 'cross_entropy'"):
        build_metric("mse")
    with pytest.raises(TypeError, match="head must have init_params"):
        MetricLearner(head=object())  # type: ignore[arg-type]


def test_ledoit_wolf_shrinkage_equals_sklearn() -> None:
    cov = pytest.importorskip("sklearn.covariance")
    g = torch.Generator().manual_seed(3)
    for n, d in ((15, 4), (10, 30), (40, 3)):
        x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3.0, d, dtype=torch.float64)
        want = cov.ledoit_wolf_shrinkage(x.numpy(), assume_centered=True)
        assert float(ledoit_wolf_shrinkage(x)) == pytest.approx(want, rel=1e-10, abs=1e-12)
    assert float(ledoit_wolf_shrinkage(torch.zeros(6, 3, dtype=torch.float64))) == 0.0  # no spread: no shrinkage


@pytest.mark.parametrize("shrinkage", [0.0, 0.3, 1.0])
def test_lda_head_decisions_equal_sklearn_lsqr_lda(shrinkage: float) -> None:
    da = pytest.importorskip("sklearn.discriminant_analysis")
    g = torch.Generator().manual_seed(1)
    ys = torch.arange(3).repeat_interleave(6)
    xs = torch.randn(18, 5, generator=g, dtype=torch.float64) * torch.tensor([0.3, 1.0, 2.0, 0.5, 1.5]) + ys[:, None]
    xq = torch.randn(40, 5, generator=g, dtype=torch.float64) * 1.5 + 1.0
    head = LDAHead(shrinkage=shrinkage, eps=1e-12)  # sklearn adds no definite floor
    got = head.logits(xs, ys, 3, xq, _hp(head)).argmax(1).numpy()
    lda = da.LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage).fit(xs.numpy(), ys.numpy())
    assert (got == lda.predict(xq.numpy())).all()
    # and the scores themselves, up to the shared log-prior, with scale 1
    torch.testing.assert_close(
        head.logits(xs, ys, 3, xq, _hp(head)), torch.from_numpy(lda.decision_function(xq.numpy())) - math.log(1 / 3)
    )


@pytest.mark.parametrize("d", [4, 30])  # D <= S and D > S
def test_lda_head_woodbury_equals_direct_and_ignores_the_embedding_scale(d: int) -> None:
    xs, ys, xq = _toy(s=12, q=6, d=d, n=3)
    direct, wood = LDAHead(method="direct"), LDAHead(method="woodbury")
    hp = _hp(direct)
    want = direct.logits(xs, ys, 3, xq, hp)
    torch.testing.assert_close(wood.logits(xs, ys, 3, xq, hp), want, rtol=1e-8, atol=1e-9)
    # the shrinkage target follows the embedding's scale: logits scale by 1 (decision unchanged)
    torch.testing.assert_close(direct.logits(7.0 * xs, ys, 3, 7.0 * xq, hp), want, rtol=1e-8, atol=1e-9)


def test_lda_head_refuses_bad_options() -> None:
    for bad in ("oas", 1.5, -0.1, True):
        with pytest.raises(ValueError, match="shrinkage must be 'ledoit-wolf' or a number in \\[0, 1\\], got"):
            LDAHead(shrinkage=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method must be"):
        LDAHead(method="qr")
    with pytest.raises(ValueError, match="init_scale must be a finite number > 0"):
        LDAHead(init_scale=0.0)


def test_lda_head_with_one_shot_is_half_the_protonet_logits() -> None:
    xs, ys, xq = _toy(s=3, q=5, d=4, n=3)  # one support row per class: no within-class covariance
    for head in (LDAHead(), LDAHead(shrinkage=0.0, method="woodbury")):
        got = head.logits(xs, ys, 3, xq, _hp(head))
        want = -0.5 * torch.cdist(xq, xs).pow(2)
        assert torch.isfinite(got).all()
        # equal up to a per-query constant (-|x_q|^2 / 2)
        torch.testing.assert_close(got - got[:, :1], want - want[:, :1])
