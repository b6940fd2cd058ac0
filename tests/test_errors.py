"""Bad input gives a clear error that names what is wrong, and nothing on disk is lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import metafit.app.runs as runs
from metafit.app.cli import main
from metafit.app.config import RunConfig
from metafit.checkpoint import latest_checkpoint, load_checkpoint
from metafit.data.task import TaskBatch

TINY = {
    "data": {"eval_tasks": 4, "tasks_per_batch": 2},
    "model": {"hidden": [8]},
    "train": {"steps": 6, "checkpoint_every": 3, "num_threads": 1},
}


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.fixture
def run(tmp_path: Path) -> Path:
    runs.train(RunConfig.from_dict(TINY), tmp_path / "run", progress=False)
    return tmp_path / "run"


def test_nan_in_training_data_names_the_step_and_keeps_checkpoints(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = runs.train_batches

    def poisoned(config, generator):  # noqa: ANN001, ANN202
        for i, b in enumerate(real(config, generator)):
            if i == 1:
                qy = b.query_y.clone()
                qy[0, 0] = float("nan")
                b = TaskBatch(b.support_x, b.support_y, b.query_x, qy)
            yield b

    monkeypatch.setattr(runs, "train_batches", poisoned)
    before = load_checkpoint(run)
    with pytest.raises(ValueError, match=r"task batch for step 8: query_y contains 1 non-finite value"):
        runs.train(
            RunConfig.from_dict({**TINY, "train": {**TINY["train"], "steps": 12}}), run, resume=True, progress=False
        )
    assert load_checkpoint(run).meta["tensors_sha256"] == before.meta["tensors_sha256"]


def test_foreign_non_empty_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["train", "--run-dir", str(tmp_path), "--quiet", "--steps", "1"]) == 2
    assert "is not empty and holds no metafit run" in _err(capsys)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_truncated_and_tampered_checkpoint_via_cli(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jp = latest_checkpoint(run / "checkpoints")
    assert jp is not None
    st = jp.with_suffix(".safetensors")
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    assert main(["eval", str(jp)]) == 2
    line = _err(capsys)
    assert str(st) in line and "truncated or damaged" in line
    st.write_bytes(data[:-4] + bytes(b ^ 0xFF for b in data[-4:]))
    assert main(["eval", str(jp)]) == 2
    assert "modified or damaged: expected sha256" in _err(capsys)
    # A run folder falls back to the previous, intact checkpoint.
    assert load_checkpoint(run).step == 3


def test_missing_checkpoint_names_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "checkpoints").mkdir()
    assert main(["eval", str(tmp_path)]) == 2
    assert f"no valid checkpoint (step_*.json + .safetensors) in {tmp_path / 'checkpoints'}" in _err(capsys)


def test_checkpoint_from_different_architecture(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other"
    shutil.copytree(run / "checkpoints", other)
    jp = latest_checkpoint(other)
    assert jp is not None
    doc = json.loads(jp.read_text())
    doc["config"]["model"]["hidden"] = [4]
    jp.write_text(json.dumps(doc))
    assert main(["eval", str(jp)]) == 2
    line = _err(capsys)
    assert "different architecture" in line and "expected shape [4, 1]" in line and "checkpoint has [8, 1]" in line


def test_unknown_config_key_in_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nsteps = 3\nouter_rl = 0.1\n")
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "r")]) == 2
    line = _err(capsys)
    assert "unknown config key 'outer_rl' in section 'train'" in line and "did you mean 'outer_lr'" in line
    assert not (tmp_path / "r").exists()


# -- Omniglot data errors (need the data layer and the real zips) --------------------------------


def _omniglot_cfg(data_root: Path, **data: object) -> RunConfig:
    return RunConfig.from_dict(
        {
            "data": {"dataset": "omniglot", "data_root": str(data_root), "eval_tasks": 2, **data},
            "model": {"width": 4},
            "train": {"steps": 1, "num_threads": 1},
        }
    )


def test_omniglot_n_way_larger_than_classes(data_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("metafit.data.sampling")
    with pytest.raises(ValueError, match=r"n_way"):
        runs.train(_omniglot_cfg(data_root, n_way=100000), tmp_path / "r", progress=False)
    assert latest_checkpoint(tmp_path / "r" / "checkpoints") is None


def test_omniglot_shots_plus_queries_larger_than_class(data_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("metafit.data.sampling")
    with pytest.raises(ValueError, match=r"k_shot|n_query"):
        runs.train(_omniglot_cfg(data_root, k_shot=15, n_query=10), tmp_path / "r", progress=False)


def test_omniglot_missing_or_damaged_zip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data" / "omniglot").mkdir(parents=True)
    argv = [
        "train",
        "--dataset",
        "omniglot",
        "--data-root",
        str(tmp_path / "data"),
        "--steps",
        "1",
        "--quiet",
        "--run-dir",
        str(tmp_path / "r"),
    ]
    pytest.importorskip("metafit.data.omniglot")
    assert main(argv) == 2
    assert "images_background" in _err(capsys)
    (tmp_path / "data" / "omniglot" / "images_background.zip").write_bytes(b"not a zip")
    (tmp_path / "data" / "omniglot" / "images_evaluation.zip").write_bytes(b"not a zip")
    assert main([*argv, "--force"]) == 2
    assert "zip" in _err(capsys)
