"""Tabular few-shot classification on the product path: a synthetic prior to train on, real
scikit-learn tables to test on, and the classical classifiers fitted on the same support rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metafit.app.cli import main
from metafit.app.config import RunConfig
from metafit.app.runs import eval_tasks, train_batches
from metafit.data.gp import (
    TabularPriorTasks,
    standardise_tasks,
    support_baseline_logits,
    support_baselines,
)
from metafit.data.sources import SKLEARN_TABLES, resolve_dataset
from metafit.data.task import TaskBatch
from metafit.seeding import generator

pytest.importorskip("sklearn")

TINY = {
    "data": {
        "dataset": "tabular-prior",
        "n_features": 16,
        "n_features_min": 2,
        "n_way": 4,
        "n_way_min": 2,
        "k_shot": 3,
        "n_query": 4,
        "tasks_per_batch": 2,
        "eval_n_way": 3,
        "eval_tasks": 8,
    },
    "model": {"arch": "mlp", "hidden": [16, 16], "d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32},
    "algo": {"name": "caml"},
    "train": {"steps": 4, "path": "loop", "log_every": 2, "checkpoint_every": 4},
}


def test_prior_tasks_use_a_per_task_feature_count_and_zero_the_rest() -> None:
    prior = TabularPriorTasks(n_features=12, n_way=3, k_shot=4, n_query=5, min_features=2, generator=generator(0))
    used = []
    for _ in range(30):
        t = prior.sample_task()
        real = (t.support_x.abs().sum(0) > 0).nonzero().flatten()
        d = int(real.max()) + 1
        assert real.tolist() == list(range(d)), "the real features come first, the padding after"
        assert torch.equal(t.query_x[:, d:], torch.zeros_like(t.query_x[:, d:]))
        torch.testing.assert_close(t.support_x[:, :d].mean(0), torch.zeros(d), atol=1e-5, rtol=0)
        used.append(d)
    assert min(used) < 6 and max(used) > 8  # drawn from 2..12
    with pytest.raises(ValueError, match=r"min_features must be <= n_features=12, got 13"):
        TabularPriorTasks(n_features=12, min_features=13, generator=generator(0))


def test_standardise_tasks_uses_support_statistics_only() -> None:
    g = torch.Generator().manual_seed(0)
    sx, qx = 5 + 3 * torch.randn(2, 6, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    sx[..., 3] = 7.0  # a constant feature keeps sd 1: it becomes 0, never inf
    b = TaskBatch(sx, torch.zeros(2, 6, dtype=torch.long), qx, torch.zeros(2, 5, dtype=torch.long), n_way=1)
    out = standardise_tasks(b)
    torch.testing.assert_close(out.support_x.mean(1), torch.zeros(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.support_x[..., :3].std(1, unbiased=False), torch.ones(2, 3), atol=1e-5, rtol=0)
    assert torch.equal(out.support_x[..., 3], torch.zeros(2, 6))
    mu, sd = sx.mean(1, keepdim=True), sx.std(1, unbiased=False, keepdim=True)
    want = (qx - mu) / sd
    want[..., 3] = 0.0  # constant on the support: dropped from the queries too, not divided by a dummy 1
    torch.testing.assert_close(out.query_x, want)
    moved = TaskBatch(sx, b.support_y, qx * 100, b.query_y, n_way=1)  # other queries: the same statistics
    want = (qx * 100 - mu) / sd
    want[..., 3] = 0.0
    torch.testing.assert_close(standardise_tasks(moved).query_x, want)


def test_support_baseline_logits_match_sklearn_predictions() -> None:
    from sklearn.linear_model import LogisticRegression

    t = TabularPriorTasks(n_features=6, n_way=3, k_shot=5, n_query=7, generator=generator(1)).sample_task()
    lp = support_baseline_logits(t, "logistic_regression")
    assert lp.shape == (21, 3) and torch.allclose(lp.exp().sum(-1), torch.ones(21, dtype=torch.float64))
    ref = LogisticRegression(max_iter=1000).fit(t.support_x.double().numpy(), t.support_y.numpy())
    assert lp.argmax(-1).tolist() == ref.predict(t.query_x.double().numpy()).tolist()
    acc = support_baselines(t)
    assert acc["logistic_regression"] == pytest.approx(float((lp.argmax(-1) == t.query_y).double().mean()))
    assert 0.0 <= acc["gradient_boosting"] <= 1.0
    # shrinkage LDA ignores the zero padding: the same predictions as on the real columns alone
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    d = int((t.support_x.abs().sum(0) > 0).sum())
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    lda.fit(t.support_x[:, :d].double().numpy(), t.support_y.numpy())
    got = support_baseline_logits(t, "shrinkage_lda").argmax(-1).tolist()
    assert got == lda.predict(t.query_x[:, :d].double().numpy()).tolist()
    with pytest.raises(ValueError, match=r"method must be one of"):
        support_baseline_logits(t, "svm")
    one = TabularPriorTasks(n_features=6, n_way=3, k_shot=1, n_query=2, generator=generator(1)).sample_task()
    with pytest.raises(ValueError, match=r"shrinkage_lda needs more support rows than classes .* got 3 rows for 3"):
        support_baseline_logits(one, "shrinkage_lda")


@pytest.mark.parametrize("name", SKLEARN_TABLES)
def test_sklearn_tables_are_built_in_test_domains(name: str) -> None:
    ds = resolve_dataset(name)
    test = ds.splits["test"]
    assert list(ds.splits) == ["test"] and test.x.dim() == 2 and test.x.dtype == torch.float32
    assert test.num_classes == {"iris": 3, "wine": 3, "breast-cancer": 2, "digits-table": 10}[name]


def test_config_checks_for_the_prior() -> None:
    with pytest.raises(ValueError, match=r"model.arch must be 'mlp' or 'auto' for data.dataset='tabular-prior'"):
        RunConfig.from_dict({**TINY, "model": {"arch": "conv4"}})
    with pytest.raises(ValueError, match=r"data.n_way_min must be None for algo.name='maml'"):
        RunConfig.from_dict({**TINY, "algo": {"name": "maml"}})
    with pytest.raises(ValueError, match=r"data.k_shot_max must be None for data.dataset='tabular-prior'"):
        RunConfig.from_dict({**TINY, "data": {**TINY["data"], "k_shot_max": 9, "n_way_min": None}})
    with pytest.raises(ValueError, match=r"data.n_features_min must be None unless data.dataset='tabular-prior'"):
        RunConfig.from_dict({"data": {"dataset": "omniglot", "n_features_min": 3}, "algo": {"name": "protonet"}})
    bad = {**TINY, "data": {**TINY["data"], "n_features_min": 17}}
    with pytest.raises(ValueError, match=r"data.n_features_min must be an int in 1..data.n_features=16, got 17"):
        RunConfig.from_dict(bad)


def test_training_batches_vary_the_way_and_eval_tasks_are_fixed() -> None:
    cfg = RunConfig.from_dict(TINY)
    it = iter(train_batches(cfg, generator(0)))
    ways = {next(it).n_way for _ in range(40)}
    assert ways == {2, 3, 4}
    a, b = eval_tasks(cfg), eval_tasks(cfg)
    assert isinstance(a, TaskBatch) and a.n_way == 3 and a.support_x.shape == (8, 9, 16)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)


def _train_and_compare_on_iris(tmp_path: Path, spec: dict, episodes: int = 20) -> tuple[Path, dict]:
    """Train ``spec`` (a config dict) for its few steps, then ``metafit compare`` it on iris 3:5."""
    cfg = tmp_path / "tab.json"
    cfg.write_text(json.dumps(spec))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--run-dir", str(run), "--quiet"]) == 0
    out = tmp_path / "iris.json"
    code = main(
        ["compare", str(run), "--dataset", "iris", "--setting", "3:5", "--n-query", "5", "--episodes", str(episodes)]
        + ["--out", str(out)]
    )
    assert code == 0
    return run, json.loads(out.read_text())["settings"][0]


def test_a_prior_run_is_scored_on_a_real_table_beside_the_classical_baselines(tmp_path: Path) -> None:
    run, s = _train_and_compare_on_iris(tmp_path, TINY)
    assert s["dataset"]["converted"] == "4 features zero-padded to 16"
    assert s["standardisation"].startswith("each episode's features by its support rows")
    names = set(s["scores"])
    assert {"run", "logistic regression (support rows)", "gradient boosting (support rows)"} <= names
    assert "shrinkage LDA (support rows)" in names
    lr = s["scores"]["logistic regression (support rows)"]["per_episode"]
    assert len(lr) == 20 and sum(lr) / 20 > 0.7  # iris is easy for a linear model at 5 shots
    # a temperature is fitted on fresh prior tasks (never on the table)
    out_t = tmp_path / "iris_t.json"
    code = main(
        ["compare", str(run), "--dataset", "iris", "--setting", "3:5", "--n-query", "5", "--episodes", "10"]
        + ["--temperature-scale", "--out", str(out_t)]
    )
    assert code == 0
    t = json.loads(out_t.read_text())["settings"][0]["scores"]["run"]["temperature"]
    assert t["temperature"] > 0 and "nll" in t
    # metafit eval on the same table scores the same standardised, padded episodes
    assert main(["eval", str(run), "--dataset", "iris", "--n-way", "3", "--k-shot", "5", "--episodes", "6"]) == 0


def test_a_fixed_head_on_the_prior_keeps_its_way_and_compare_needs_a_table(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict(
        {**TINY, "data": {**TINY["data"], "n_way_min": None, "eval_n_way": 3}, "algo": {"name": "fomaml"}}
    )
    with pytest.raises(ValueError, match=r"n_way=3 at evaluation, but algo.name='fomaml' has a 4-way head"):
        eval_tasks(cfg)
    path = tmp_path / "tab.json"
    path.write_text(json.dumps({**TINY, "train": {**TINY["train"], "steps": 1}}))
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0
    from metafit.app.compare import compare

    with pytest.raises(ValueError, match=r"no test classes of its own: compare it on a table, e.g. --dataset iris"):
        compare([tmp_path / "run"], settings=[(3, 5)], episodes=2)


def test_the_cluster_prior_has_structure_a_few_shots_can_find() -> None:
    # Gaussian clusters of a few latent causes: logistic regression on the 5-shot support clearly
    # beats chance (the ranked prior of independent features barely does), and the real columns
    # are correlated (mixtures of the same causes), as in real tables.
    prior = TabularPriorTasks(
        n_features=16, n_way=2, k_shot=5, n_query=10, latent_dim=2, classes="clusters", generator=generator(0)
    )
    accs = [
        support_baselines(prior.sample_task(), methods=("logistic_regression",))["logistic_regression"]
        for _ in range(20)
    ]
    assert sum(accs) / len(accs) > 0.7
    t = prior.sample_task()
    corr = torch.corrcoef(t.support_x.T.double())
    assert float(corr.abs().triu(1).max()) > 0.8
    assert sorted(t.support_y.tolist()) == [0] * 5 + [1] * 5
    with pytest.raises(ValueError, match=r"classes='clusters' needs latent_dim"):
        TabularPriorTasks(classes="clusters", generator=generator(0))


def test_a_caml_checkpoint_from_before_the_pre_norm_network_loads_as_the_post_norm_one(tmp_path: Path) -> None:
    from metafit.app.runs import checkpoint_config, load_trained
    from metafit.checkpoint import latest_checkpoint

    old = json.loads(json.dumps(TINY))
    old["model"].update(norm_first=False, tied_qk=False, label_dim=0)
    cfg = tmp_path / "old.json"
    cfg.write_text(json.dumps(old))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--run-dir", str(run), "--quiet"]) == 0
    before = load_trained(run)
    # the checkpoint as the earlier release wrote it: no such keys in its recorded config
    path = latest_checkpoint(run / "checkpoints")
    assert path is not None
    meta = json.loads(path.read_text())
    for key in ("norm_first", "tied_qk", "label_dim"):
        del meta["config"]["model"][key]
    path.write_text(json.dumps(meta))
    saved = json.loads((run / "config.json").read_text())
    for key in ("norm_first", "tied_qk", "label_dim"):
        del saved["model"][key]
    (run / "config.json").write_text(json.dumps(saved))
    after = load_trained(run)
    assert after.model.final_norm is None and after.model.label_dim == 0 and after.model.layers[0].attn.k is not None
    batch = next(iter(train_batches(after.config, generator(3))))
    x, y, q = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    torch.testing.assert_close(
        before.algorithm.predict(
            before.model,
            before.meta_params,
            before.buffers,
            before.algorithm.adapt(before.model, before.meta_params, before.buffers, x, y, n_way=batch.n_way),
            q,
        ),
        after.algorithm.predict(
            after.model,
            after.meta_params,
            after.buffers,
            after.algorithm.adapt(after.model, after.meta_params, after.buffers, x, y, n_way=batch.n_way),
            q,
        ),
    )
    # the run folder of that release resumes too (its config.json predates the fields as well)
    assert main(["train", "--run-dir", str(run), "--resume", "--steps", "6", "--quiet"]) == 0
    assert load_trained(run).checkpoint.meta["step"] == 6
    # a current checkpoint and other learners keep their recorded fields
    current = checkpoint_config({**TINY, "model": {**TINY["model"], "norm_first": True}})
    assert current.model.tied_qk and current.model.label_dim is None
    assert checkpoint_config({"algo": {"name": "protonet"}, "data": {"dataset": "omniglot"}}).model.norm_first


def test_irrelevant_columns_are_shuffled_copies_that_lose_the_class() -> None:
    prior = TabularPriorTasks(n_features=20, irrelevant=0.99, generator=generator(0))
    labels = torch.arange(4).repeat_interleave(50).double()
    x = labels[:, None].repeat(1, 20)  # every column is the class
    counts = []
    for _ in range(20):
        out = prior._corrupt(x)
        same = (out == x).all(0)
        for c in (~same).nonzero().flatten().tolist():  # a shuffled column: the same values, reordered
            assert torch.equal(out[:, c].sort().values, x[:, c].sort().values)
            assert float((out[:, c] == labels).double().mean()) < 0.6
        counts.append(int((~same).sum()))
    assert min(counts) <= 5 and max(counts) >= 12  # f ~ U[0, 0.99] of the 20 columns
    assert TabularPriorTasks(n_features=20, generator=generator(0))._corrupt(x) is x  # off: untouched


def test_warped_columns_are_monotone_and_discrete_sparse_or_heavy_tailed() -> None:
    prior = TabularPriorTasks(n_features=60, warp=1.0, generator=generator(1))
    x = torch.randn(300, 60, generator=generator(2), dtype=torch.float64)
    out = prior._corrupt(x)
    kinds = set()
    for c in range(60):
        order = x[:, c].argsort()
        assert bool((out[order, c].diff() >= -1e-12).all()), f"column {c} is not a monotone warp"
        col = out[:, c]
        if col.unique().numel() <= 17:
            kinds.add("quantised")
        elif float((col == 0).double().mean()) >= 0.29:
            kinds.add("rectified")
        else:
            assert float(col.min()) > 0 and float(((col - col.mean()) ** 3).mean()) > 0, f"column {c}"
            kinds.add("exponentiated")
    assert kinds == {"quantised", "rectified", "exponentiated"}
    t = TabularPriorTasks(
        n_features=16,
        n_way=3,
        k_shot=5,
        n_query=5,
        latent_dim=3,
        classes="clusters",
        warp=0.5,
        irrelevant=0.5,
        generator=generator(3),
    ).sample_task()
    assert torch.isfinite(t.support_x).all() and torch.isfinite(t.query_x).all()
    with pytest.raises(ValueError, match=r"irrelevant must be a fraction in \[0, 1\), got 1.0"):
        TabularPriorTasks(irrelevant=1.0, generator=generator(0))
    with pytest.raises(ValueError, match=r"warp must be a probability in \[0, 1\], got -0.1"):
        TabularPriorTasks(warp=-0.1, generator=generator(0))


def test_the_prior_fields_of_a_config_reach_its_tasks_and_are_checked() -> None:
    cfg = RunConfig.from_dict({**TINY, "data": {**TINY["data"], "prior_irrelevant": 0.5, "prior_warp": 0.25}})
    sampler = next(iter(train_batches(cfg, generator(0)).samplers.values()))  # type: ignore[attr-defined]
    assert (sampler.irrelevant, sampler.warp) == (0.5, 0.25)
    from metafit.app.runs import preprocessing_info

    assert "irrelevant=0.5, warp=0.25" in preprocessing_info(cfg)["prior"]
    with pytest.raises(ValueError, match=r"data.prior_warp must be a number in \[0, 1\], got 1.5"):
        RunConfig.from_dict({**TINY, "data": {**TINY["data"], "prior_warp": 1.5}})
    with pytest.raises(ValueError, match=r"data.prior_irrelevant must be a number in \[0, 1\), got 1"):
        RunConfig.from_dict({**TINY, "data": {**TINY["data"], "prior_irrelevant": 1}})
    with pytest.raises(ValueError, match=r"data.prior_warp must be 0 unless data.dataset='tabular-prior', got 0.5"):
        RunConfig.from_dict({"data": {"dataset": "omniglot", "prior_warp": 0.5}, "algo": {"name": "protonet"}})


def test_an_lda_head_on_a_skip_input_embedding_trains_on_the_prior_and_scores_a_table(tmp_path: Path) -> None:
    from metafit.app.runs import build_model

    spec = {**TINY, "algo": {"name": "lda"}, "model": {**TINY["model"], "skip_input": True}}
    model = build_model(RunConfig.from_dict(spec))
    x = torch.randn(5, 16)
    out = model(x)
    assert out.shape == (5, 16 + 16) and model.feature_dim == 32
    torch.testing.assert_close(out[:, :16], x)  # the raw columns ride beside the learned ones
    _, s = _train_and_compare_on_iris(tmp_path, spec)
    acc = s["scores"]["run"]["per_episode"]
    assert len(acc) == 20 and sum(acc) / 20 > 0.7  # the raw columns alone make iris easy for LDA
    with pytest.raises(ValueError, match=r"model.skip_input=true is for model.arch='mlp' embedding networks"):
        build_model(
            RunConfig.from_dict({**spec, "data": {**spec["data"], "n_way_min": None}, "algo": {"name": "fomaml"}})
        )
    with pytest.raises(ValueError, match=r"model.skip_input must be"):
        RunConfig.from_dict({**spec, "model": {**spec["model"], "skip_input": "yes"}})
