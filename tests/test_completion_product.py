"""Image completion on the product path: ``data.dataset = "completion-omniglot"`` trains and
evaluates the neural processes on pixels as points (x = (row, column), y = intensity)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metafit.app.cli import main
from metafit.app.config import RunConfig
from metafit.app.runs import build_model, eval_tasks, input_shape, train_batches
from metafit.data.gp import pixel_coordinates
from metafit.seeding import generator
from tests.conftest import DATA_ROOT

pytestmark = pytest.mark.skipif(not (DATA_ROOT / "omniglot").exists(), reason=f"Omniglot not found under {DATA_ROOT}")

TINY = {
    "data": {
        "dataset": "completion-omniglot",
        "data_root": str(DATA_ROOT),
        "rotations": False,
        "image_size": 14,
        "k_shot": 5,
        "k_shot_max": 30,
        "tasks_per_batch": 2,
        "eval_k_shot": 20,
        "eval_tasks": 4,
    },
    "model": {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32},
    "algo": {"name": "anp"},
    "train": {"steps": 2, "path": "loop", "log_every": 1, "checkpoint_every": 2},
}


def test_completion_tasks_are_pixels_of_the_split_images() -> None:
    cfg = RunConfig.from_dict(TINY)
    assert input_shape(cfg) == (2,)
    sizes = set()
    it = iter(train_batches(cfg, generator(0)))
    for _ in range(8):
        b = next(it)
        assert b.support_x.shape[-1] == 2 and b.query_x.shape == (2, 14 * 14, 2)
        torch.testing.assert_close(b.query_x[0], pixel_coordinates(14, 14))  # every pixel is a target
        assert b.support_y.min() >= 0 and b.support_y.max() <= 1
        sizes.add(b.support_x.shape[1])
    assert min(sizes) >= 5 and max(sizes) <= 30 and len(sizes) > 1
    a, c = eval_tasks(cfg), eval_tasks(cfg)
    assert a.support_x.shape == (4, 20, 2) and torch.equal(a.support_y, c.support_y)
    net = build_model(cfg)
    assert sum(p.numel() for p in net.parameters()) > 0


def test_train_and_eval_a_neural_process_on_image_completion(tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(TINY))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--run-dir", str(run), "--quiet"]) == 0
    assert main(["eval", str(run), "--k-shot", "10", "30", "--episodes", "3", "--out", str(tmp_path / "e.json")]) == 0
    out = json.loads((tmp_path / "e.json").read_text())
    assert out["provenance"]["command"].startswith("metafit eval ")
    res = out["results"]
    assert [r["k_shot"] for r in res] == [10, 30]
    for r in res:
        assert {"nll", "mse", "coverage_90"} <= set(r["metrics"]) and r["metrics"]["nll"]["n"] == 3


@pytest.mark.skipif(not (DATA_ROOT / "fashion-mnist").exists(), reason="Fashion-MNIST not found")
def test_completion_on_a_source_without_train_classes_splits_its_images() -> None:
    from metafit.app.runs import _completion_images

    cfg = RunConfig.from_dict(
        {**TINY, "data": {**TINY["data"], "dataset": "completion-fashion-mnist", "image_size": 28}}
    )
    parts = {s: _completion_images(cfg, s) for s in ("train", "val", "test")}
    n = sum(len(p.x) for p in parts.values())
    assert len(parts["train"].x) == int(0.8 * n) and len(parts["test"].x) == n - int(0.9 * n)
    b = next(iter(train_batches(cfg, generator(0))))
    assert b.query_x.shape == (2, 28 * 28, 2)
