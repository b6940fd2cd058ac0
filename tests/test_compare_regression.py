"""`metafit compare` on regression runs: identical held-out tasks of the runs' family, per-task
log-likelihood and MSE, paired differences, and the classification options refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metafit.app.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _train(tmp_path: Path, config: str, name: str, *extra: str) -> Path:
    run = tmp_path / name
    args = ["train", str(ROOT / "configs" / config), "--run-dir", str(run), "--quiet", "--steps", "3"]
    assert main([*args, "--set", "data.eval_tasks=4", "--set", "train.path=loop", *extra]) == 0
    return run


@pytest.fixture(scope="module")
def sine_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("sine")
    return _train(tmp, "sinusoid_maml.toml", "maml"), _train(tmp, "sinusoid_cnp.toml", "cnp")


def test_regression_runs_are_compared_on_the_same_tasks_as_eval_scores_them(
    sine_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    maml, cnp = sine_runs
    out = tmp_path / "cmp.json"
    code = main(
        ["compare", str(maml), str(cnp), "--k-shot", "5", "10", "--episodes", "12", "--n-query", "20",
         "--seed", "7", "--out", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["kind"] == "regression" and [s["k_shot"] for s in res["settings"]] == [5, 10]
    s = res["settings"][0]
    assert s["episodes"] == 12 and s["n_query"] == 20
    assert set(s["scores"]["maml"]) == {"mse", "summary"}  # no predictive distribution
    assert {"mse", "target_ll", "context_ll", "coverage_90"} <= set(s["scores"]["cnp"])
    assert all(0 <= v <= 1 for v in s["scores"]["cnp"]["coverage_90"])
    assert "target_ll" not in s["comparisons"]  # one Gaussian learner: nothing to pair
    # the paired MSE difference is the mean of the per-task differences
    diff = next(d for d in s["comparisons"]["mse"]["differences"])
    other = diff["run"]
    ref = s["comparisons"]["mse"]["reference"]
    per = [a - b for a, b in zip(s["scores"][other]["mse"], s["scores"][ref]["mse"], strict=True)]
    assert diff["mean"] == pytest.approx(sum(per) / len(per))
    assert s["verdicts"] and "MSE" in s["verdicts"][0]
    # the same seed and sizes through `metafit eval`: the same tasks, so the same per-task numbers
    capsys.readouterr()
    assert (
        main(["eval", str(cnp), "--k-shot", "5", "--episodes", "12", "--n-query", "20", "--seed", "7", "--json"]) == 0
    )
    ev = json.loads(capsys.readouterr().out)["results"][0]["per_task"]
    assert ev["mse"] == pytest.approx(s["scores"]["cnp"]["mse"])
    assert [-v for v in ev["nll"]] == pytest.approx(s["scores"]["cnp"]["target_ll"])
    assert [-v for v in ev["context_nll"]] == pytest.approx(s["scores"]["cnp"]["context_ll"])
    assert ev["coverage_90"] == pytest.approx(s["scores"]["cnp"]["coverage_90"])
    md = out.with_suffix(".md").read_text()
    assert "| cnp |" in md and "target log-likelihood per point" in md and "5 context points" in md


def test_two_gaussian_learners_are_paired_on_log_likelihood(
    tmp_path: Path, sine_runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, cnp = sine_runs
    anp = _train(tmp_path, "sinusoid_cnp.toml", "anp", "--algo", "anp", "--set", "model.n_layers=1")
    assert main(["compare", str(cnp), str(anp), "--episodes", "6", "--baseline", "cnp", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)["settings"][0]
    assert s["comparisons"]["target_ll"]["reference"] == "cnp"
    (d,) = s["comparisons"]["target_ll"]["differences"]
    per = [a - b for a, b in zip(s["scores"]["anp"]["target_ll"], s["scores"]["cnp"]["target_ll"], strict=True)]
    assert d["run"] == "anp" and d["mean"] == pytest.approx(sum(per) / len(per))
    assert any("nats per target point" in v for v in s["verdicts"])


def test_regression_compare_refuses_what_does_not_apply(
    tmp_path: Path, sine_runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    maml, _ = sine_runs
    assert main(["compare", str(maml), "--setting", "5:1"]) == 2
    assert "['settings'] apply to classification episodes" in capsys.readouterr().err
    assert main(["compare", str(maml), "--temperature-scale"]) == 2
    assert "['temperature'] apply to classification episodes" in capsys.readouterr().err
    assert main(["compare", str(maml), "--k-shot", "0"]) == 2
    assert "--k-shot must be an int >= 1, got 0" in capsys.readouterr().err
    gp = _train(tmp_path, "gp_rbf_tnp.toml", "gp", "--set", "model.n_layers=1")
    assert main(["compare", str(maml), str(gp)]) == 2
    assert "compared on one family's tasks, got runs trained on ['gp-rbf', 'sinusoid']" in capsys.readouterr().err
    assert main(["compare", str(gp), "--k-shot", "5"]) == 2
    assert "gp-rbf tasks draw their own context sizes" in capsys.readouterr().err
    out = tmp_path / "gp.json"
    assert main(["compare", str(gp), "--episodes", "5", "--out", str(out)]) == 0
    s = json.loads(out.read_text())["settings"][0]
    assert s["context"] == "per task (the GP protocol)" and len(s["scores"]["gp"]["target_ll"]) == 5
    assert "coverage_90" not in s["scores"]["gp"]  # padded tasks: no interval coverage
    assert s["n_query"] is None and "context and target sizes per task" in out.with_suffix(".md").read_text()
