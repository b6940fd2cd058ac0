"""GP, image-completion and tabular task families: covariances, protocol, padding, standardisation."""

from __future__ import annotations

import math

import pytest
import torch

from metafit.data.datasets import from_tensors
from metafit.data.gp import (
    GPTasks,
    ImageCompletionTasks,
    TabularPriorTasks,
    gp_eval_tasks,
    kernel_matrix,
    pad_tasks,
    pixel_coordinates,
    sample_gp,
    sklearn_table_tasks,
    split_mask,
    support_baselines,
)
from metafit.data.task import Task

G = torch.Generator


def test_kernel_matrix_known_values() -> None:
    x1 = torch.tensor([[0.0]], dtype=torch.float64)
    x2 = torch.tensor([[0.0], [0.3], [0.6]], dtype=torch.float64)
    rbf = kernel_matrix("rbf", x1, x2, lengthscale=0.3, scale=2.0)
    torch.testing.assert_close(rbf[0], 4.0 * torch.tensor([1.0, math.exp(-0.5), math.exp(-2.0)], dtype=torch.float64))
    mat = kernel_matrix("matern52", x1, x2, lengthscale=0.3, scale=1.0)
    r5 = math.sqrt(5.0)
    torch.testing.assert_close(
        mat[0],
        torch.tensor(
            [1.0, (1 + r5 + 5 / 3) * math.exp(-r5), (1 + 2 * r5 + 20 / 3) * math.exp(-2 * r5)], dtype=torch.float64
        ),
    )
    per = kernel_matrix("periodic", x1, x2, lengthscale=0.5, scale=1.0, period=0.6)
    # one full period apart -> correlation 1; half a period -> exp(-2 / l^2)
    torch.testing.assert_close(per[0], torch.tensor([1.0, math.exp(-2 / 0.25), 1.0], dtype=torch.float64))


@pytest.mark.parametrize("kernel", ["rbf", "matern52", "periodic"])
def test_gp_samples_have_the_kernel_covariance(kernel: str) -> None:
    n = 20000
    pts = torch.tensor([[0.1], [0.35]], dtype=torch.float64)
    x = pts.expand(n, 2, 1)
    hyp = {"lengthscale": 0.4, "scale": 0.8, "period": 0.5 if kernel == "periodic" else None}
    y = sample_gp(x, kernel, generator=G().manual_seed(0), noise_std=0.1, **hyp).squeeze(-1)  # (n, 2)
    emp = (y.T @ y) / n  # zero-mean process
    expected = kernel_matrix(kernel, pts, pts, **hyp) + 0.01 * torch.eye(2, dtype=torch.float64)
    # standard error of a second moment of N(0, 0.65) from 20000 draws ~ 0.0065
    torch.testing.assert_close(emp, expected, rtol=0, atol=0.03)
    assert abs(float(y.mean())) < 0.02


def test_gp_context_and_target_sizes_follow_the_tnp_protocol() -> None:
    batch = GPTasks(generator=G().manual_seed(0)).sample_padded_batch(4000)
    ctx = split_mask(batch.support_x[0])[1].shape[0]
    assert ctx == 46 and batch.query_x.shape[1] == 46
    nc = (batch.support_x[..., -1] > 0.5).sum(1)
    nt = (batch.query_x[..., -1] > 0.5).sum(1)
    assert int(nc.min()) == 3 and int(nc.max()) == 46
    assert int(nt.min()) == 3 and int((nc + nt).max()) == 49
    assert bool((nt <= 49 - nc).all())
    assert len(set(nc.tolist())) == 44  # every size 3..46 occurs
    # the padded masks are prefixes; padded rows are zeros
    cm = batch.support_x[..., -1] > 0.5
    assert bool((cm[:, :-1] | ~cm[:, 1:]).all())
    assert not batch.support_x[~cm].any() and not batch.support_y[~cm].any()
    assert bool((batch.support_x[..., 0][cm].abs() <= 2).all())


def test_gp_shared_size_batch_and_seeding() -> None:
    a = GPTasks("matern52", generator=G().manual_seed(3)).sample_batch()
    b = GPTasks("matern52", generator=G().manual_seed(3)).sample_batch()
    c = GPTasks("matern52", generator=G().manual_seed(4)).sample_batch()
    assert torch.equal(a.query_y, b.query_y)
    assert a.support_x.shape[:2] != c.support_x.shape[:2] or not torch.equal(a.support_y, c.support_y)
    assert len(a) == 16 and 3 <= a.support_x.shape[1] <= 46 and a.support_x.shape[1] + a.query_x.shape[1] <= 49
    e1, e2 = gp_eval_tasks("periodic", 8, seed=1), gp_eval_tasks("periodic", 8, seed=1)
    assert torch.equal(e1.support_y, e2.support_y)


def test_gp_padded_targets_are_not_context_points() -> None:
    tasks = GPTasks(generator=G().manual_seed(0), dtype=torch.float64, noise_std=0.0, max_points=12)
    batch = tasks.sample_padded_batch(50)
    for t in batch:
        sx, sm = split_mask(t.support_x)
        qx, qm = split_mask(t.query_x)
        # no target coincides with a context point
        assert (qx[qm][:, None, 0] - sx[sm][None, :, 0]).abs().min() > 0


def test_pad_tasks_and_split_mask_roundtrip() -> None:
    g = G().manual_seed(0)
    tasks = [
        Task(
            torch.randn(c, 2, generator=g),
            torch.randn(c, 1, generator=g),
            torch.randn(q, 2, generator=g),
            torch.randn(q, 1, generator=g),
        )
        for c, q in ((3, 5), (6, 2))
    ]
    batch = pad_tasks(tasks)
    assert batch.support_x.shape == (2, 6, 3) and batch.query_x.shape == (2, 5, 3)
    for t, p in zip(tasks, batch):
        sx, sm = split_mask(p.support_x)
        torch.testing.assert_close(sx[sm], t.support_x)
        torch.testing.assert_close(p.support_y[sm], t.support_y)
        assert int(sm.sum()) == t.n_support
    with pytest.raises(ValueError, match="smaller than a task"):
        pad_tasks(tasks, n_support=4)


def test_image_completion_points_read_the_image() -> None:
    g = G().manual_seed(0)
    imgs = torch.rand(5, 1, 6, 7, generator=g)
    ds = from_tensors(imgs, torch.arange(5))
    batch = ImageCompletionTasks(
        ds, generator=G().manual_seed(1), tasks_per_batch=4, min_context=5, max_context=10
    ).sample_batch()
    assert batch.query_x.shape == (4, 42, 2) and 5 <= batch.support_x.shape[1] <= 10
    coords = pixel_coordinates(6, 7)
    for t in batch:
        # the query is the whole image in raster order: find which image it is
        img = next(i for i in range(5) if torch.equal(t.query_y[:, 0], imgs[i, 0].flatten()))
        torch.testing.assert_close(t.query_x, coords)
        rows = ((t.support_x[:, 0] + 1) / 2 * 5).round().long()
        cols = ((t.support_x[:, 1] + 1) / 2 * 6).round().long()
        torch.testing.assert_close(t.support_y[:, 0], imgs[img, 0, rows, cols])
        assert len(set((rows * 7 + cols).tolist())) == t.n_support  # distinct pixels
    disjoint = ImageCompletionTasks(ds, generator=G().manual_seed(2), max_context=5, n_target=8).sample_batch(3)
    for t in disjoint:
        assert (t.query_x[:, None] - t.support_x[None]).abs().sum(-1).min() > 0


def test_tabular_prior_tasks_are_balanced_and_support_standardised() -> None:
    fam = TabularPriorTasks(
        n_features=5, n_way=4, k_shot=6, n_query=3, generator=G().manual_seed(0), dtype=torch.float64
    )
    for t in fam.sample_batch(5):
        assert torch.equal(torch.bincount(t.support_y, minlength=4), torch.full((4,), 6))
        assert torch.equal(torch.bincount(t.query_y, minlength=4), torch.full((4,), 3))
        torch.testing.assert_close(t.support_x.mean(0), torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)
        torch.testing.assert_close(t.support_x.std(0, unbiased=False), torch.ones(5, dtype=torch.float64))
    # the labels carry signal: logistic regression on the support beats chance on average
    accs = [
        support_baselines(t, methods=("logistic_regression",))["logistic_regression"]
        for t in TabularPriorTasks(k_shot=10, n_query=10, generator=G().manual_seed(1)).sample_batch(10)
    ]
    assert sum(accs) / len(accs) > 0.5  # chance 1/3


def test_sklearn_table_tasks_baselines_learn_iris() -> None:
    batch = sklearn_table_tasks("iris", 2, k_shot=10, n_query=10, generator=G().manual_seed(0), n_features=8)
    assert batch.support_x.shape == (2, 30, 8) and batch.n_way == 3
    assert not batch.support_x[..., 4:].any()  # zero-padded features
    torch.testing.assert_close(batch.support_x[..., :4].mean(1), torch.zeros(2, 4), atol=1e-5, rtol=0)
    for t in batch:
        accs = support_baselines(t)
        assert accs["logistic_regression"] > 0.8 and accs["gradient_boosting"] > 0.7


def test_sklearn_table_tasks_refuse_impossible_requests() -> None:
    with pytest.raises(ValueError, match="k_shot \\+ n_query must be <="):
        sklearn_table_tasks("iris", 1, k_shot=40, n_query=20, generator=G().manual_seed(0))
    with pytest.raises(ValueError, match="n_way must be <= 2"):
        sklearn_table_tasks("breast_cancer", 1, k_shot=2, n_query=2, n_way=3, generator=G().manual_seed(0))
    with pytest.raises(ValueError, match="name must be one of"):
        sklearn_table_tasks("titanic", 1, k_shot=2, n_query=2, generator=G().manual_seed(0))


def test_gp_tasks_need_a_generator() -> None:
    with pytest.raises(TypeError, match="explicit generator"):
        GPTasks()


@pytest.mark.parametrize("kernel", ["rbf", "matern52", "periodic"])
def test_gp_predictive_matches_sklearn(kernel: str) -> None:
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import (
        RBF,
        ConstantKernel,
        ExpSineSquared,
        Matern,
        WhiteKernel,
    )

    from metafit.data.gp import gp_predictive

    g = G().manual_seed(0)
    cx, tx = torch.rand(12, 1, generator=g, dtype=torch.float64) * 4 - 2, torch.linspace(-2, 2, 9).double()[:, None]
    cy = torch.randn(12, 1, generator=g, dtype=torch.float64)
    ls, s, p, noise = 0.4, 0.7, 0.5, 0.05
    base = {
        "rbf": RBF(ls, "fixed"),
        "matern52": Matern(ls, "fixed", nu=2.5),
        "periodic": ExpSineSquared(ls, p, "fixed", "fixed"),
    }[kernel]
    sk = GaussianProcessRegressor(
        ConstantKernel(s**2, "fixed") * base + WhiteKernel(noise**2, "fixed"), optimizer=None, alpha=1e-9
    ).fit(cx.numpy(), cy.numpy().ravel())
    mu, sd = sk.predict(tx.numpy(), return_std=True)
    mean, var = gp_predictive(
        kernel, cx, cy, tx, lengthscale=ls, scale=s, period=p if kernel == "periodic" else None, noise_std=noise
    )
    torch.testing.assert_close(mean[:, 0], torch.as_tensor(mu), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(var[:, 0].sqrt(), torch.as_tensor(sd), rtol=1e-6, atol=1e-7)


def test_gp_eval_truth_replays_the_eval_tasks() -> None:
    from metafit.data.gp import gp_eval_truth

    tasks = gp_eval_tasks("periodic", 6, seed=5)
    batch, hyp = GPTasks("periodic", generator=G().manual_seed(5)).sample_padded(6)
    assert torch.equal(tasks.query_y, batch.query_y)
    truth = gp_eval_truth("periodic", 6, seed=5)
    assert sorted(truth) == ["lengthscale", "period", "scale"]
    for k in truth:
        assert torch.equal(truth[k], hyp[k])
    assert bool(((truth["period"] >= 0.1) & (truth["period"] <= 0.5)).all())
