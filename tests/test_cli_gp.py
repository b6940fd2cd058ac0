"""GP regression through the product: a masked neural process trains and is scored on the padded
held-out GP tasks; a learner that cannot read the padding (and has no inner loop to score the tasks
unpadded) is refused before anything is written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from metafit.app.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("algo", ["tnp", "npcnp"])
def test_gp_config_trains_and_evaluates_a_masked_neural_process(
    tmp_path: Path, algo: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / algo
    code = main(
        [
            "train",
            str(ROOT / "configs" / "gp_rbf_tnp.toml"),
            "--algo",
            algo,
            "--run-dir",
            str(run),
            "--quiet",
            "--steps",
            "5",
            "--set",
            "data.eval_tasks=8",
            "--set",
            "model.n_layers=1",
            "--set",
            "train.path=loop",
        ]
    )
    assert code == 0, capsys.readouterr().err
    res = json.loads((run / "eval.json").read_text())["results"][0]
    assert res["episodes"] == 8 and {"nll", "mse", "context_nll"} <= set(res["metrics"])
    # the context log-likelihood scores each task's own (real) context points, not its targets
    ctx = res["per_task"]["context_nll"]
    assert len(ctx) == 8 and all(math.isfinite(v) for v in ctx) and ctx != res["per_task"]["nll"]
    assert main(["eval", str(run), "--episodes", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["metrics"]["nll"]["mean"] == pytest.approx(
        res["metrics"]["nll"]["mean"]
    )
    # the published figure of the same task family sits beside the CNP's (none for TNP-D)
    assert main(["eval", str(run), "--episodes", "8"]) == 0
    md = capsys.readouterr().out
    assert ("CNP, Li et al. 2025, Table 4, TNP code" in md) == (algo == "npcnp") and "| per task |" in md
    # sizes are drawn per task: the record says so, and a fixed size is refused, not ignored
    assert res["k_shot"] is None and res["n_query"] is None
    for flag, value in (("--k-shot", "5"), ("--n-query", "10")):
        assert main(["eval", str(run), "--episodes", "8", flag, value]) == 2
        err = capsys.readouterr().err
        assert (
            "gp-rbf tasks draw their own context sizes" in err
            and f"give no {flag[2:].replace('-', '_')}, got {value}" in err
        )


def test_gp_tasks_refuse_a_learner_without_a_padding_mask(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "cnp"
    assert (
        main(
            [
                "train",
                str(ROOT / "configs" / "gp_rbf_tnp.toml"),
                "--algo",
                "cnp",
                "--run-dir",
                str(run),
                "--steps",
                "2",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "a masked neural process (anp, tnp, npcnp) or a gradient-based learner" in err and "got 'cnp'" in err
    assert not run.exists()


def test_all_points_training_loss_is_scored_on_the_targets_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from metafit import evaluate
    from metafit.algorithms.neural_process import AllPointsLoss, NeuralProcess, Padded
    from metafit.app.runs import eval_tasks, load_trained

    run = tmp_path / "cnp_all"
    args = ["train", str(ROOT / "configs" / "gp_rbf_tnp.toml"), "--algo", "npcnp", "--run-dir", str(run)]
    sets = ["data.eval_tasks=8", "algo.loss_points=all", "train.path=loop"]
    assert main([*args, "--quiet", "--steps", "5", *[a for s in sets for a in ("--set", s)]]) == 0, (
        capsys.readouterr().err
    )
    tr = load_trained(run)
    assert isinstance(tr.algorithm, AllPointsLoss)  # trained on context + targets
    tasks = eval_tasks(tr.config)
    targets_only = evaluate(Padded(NeuralProcess()), tr.model, tr.meta_params, tasks, buffers=tr.buffers)
    all_points = evaluate(Padded(tr.algorithm), tr.model, tr.meta_params, tasks, buffers=tr.buffers)
    res = json.loads((run / "eval.json").read_text())["results"][0]
    assert res["per_task"]["nll"] == pytest.approx(targets_only.per_task["nll"])
    assert res["per_task"]["nll"] != pytest.approx(all_points.per_task["nll"])


def test_cnp_network_options_reach_the_npcnp_network_and_are_refused_elsewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from metafit.app.runs import load_trained

    cfg = str(ROOT / "configs" / "gp_rbf_tnp.toml")
    run = tmp_path / "cnp_post"
    sets = ["data.eval_tasks=4", "model.post_layers=1", "model.variance_bound=scale", "model.min_variance=0.1"]
    common = ["--quiet", "--steps", "2", *[a for s in sets for a in ("--set", s)]]
    assert main(["train", cfg, "--algo", "npcnp", "--run-dir", str(run), *common]) == 0, capsys.readouterr().err
    cnp = load_trained(run).model.cnp
    assert cnp.bound == "scale" and hasattr(cnp, "post")
    # an option the network would not use is an error, not silently dropped
    assert main(["train", cfg, "--algo", "tnp", "--run-dir", str(tmp_path / "tnp"), *common]) == 2
    assert "applies to the CNP network only" in capsys.readouterr().err
