"""`metafit predict` on raw 105x105 Omniglot PNGs agrees with the library evaluator (issue 3)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metafit.app.runs import load_predictor
from metafit.data import datasets as ds
from metafit.data.omniglot import write_episode_folders
from metafit.data.task import Task, stack_tasks
from metafit.evaluation import evaluate


@pytest.mark.parametrize("algo", ["protonet", "maml", "cnp"])
def test_cli_predict_on_raw_pngs_matches_evaluator(tmp_path: Path, data_root: Path, algo: str) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "METAFIT_CACHE": str(tmp_path / "cache")}
    extra = ["--set", "model.downsample=stride", "--set", "algo.inner_lr=0.4"] if algo == "maml" else []
    subprocess.run(
        [
            sys.executable,
            "-m",
            "metafit",
            "train",
            "--dataset",
            "omniglot",
            "--algo",
            algo,
            "--steps",
            "15",
            "--data-root",
            str(data_root),
            "--run-dir",
            str(run),
            "--quiet",
            "--path",
            "loop",
            "--set",
            "model.width=16",
            "--set",
            "data.eval_tasks=5",
            "--set",
            "data.tasks_per_batch=2",
            *extra,
        ],
        check=True,
        timeout=300,
        env=env,
    )
    ep = write_episode_folders(tmp_path / "episode", root=data_root, n_way=5, k_shot=1, n_query=4, seed=3)
    assert ep["query"] == 20
    assert all(len(list((tmp_path / "episode" / "support" / c).glob("*.png"))) == 1 for c in ep["classes"])
    out = tmp_path / "pred.csv"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "metafit",
            "predict",
            str(run),
            "--support",
            str(tmp_path / "episode" / "support"),
            "--query",
            str(tmp_path / "episode" / "query"),
            "--out",
            str(out),
        ],
        check=True,
        timeout=120,
        env=env,
    )
    truth = {r["file"]: r["class"] for r in csv.DictReader(open(tmp_path / "episode" / "truth.csv"))}
    rows = list(csv.reader(open(out)))
    preds = {Path(r[0]).name: r[1] for r in rows[1:]}
    assert set(preds) == set(truth)
    cli_acc = sum(preds[f] == truth[f] for f in truth) / len(truth)

    # The same episode through the library evaluator.
    sx, sy, classes = ds.load_support_folder(tmp_path / "episode" / "support", image_size=28)
    qx, files = ds.load_image_folder(tmp_path / "episode" / "query", image_size=28)
    qy = torch.tensor([classes.index(truth[Path(f).name]) for f in files])
    p = load_predictor(run)
    res = evaluate(p.algorithm, p.model, p.meta_params, stack_tasks([Task(sx, sy, qx, qy, n_way=5)]), buffers=p.buffers)
    assert cli_acc == pytest.approx(res.metrics["accuracy"].mean, abs=1e-6)
    assert sx.shape == (5, 1, 28, 28) and float(sx.max()) <= 1.0
