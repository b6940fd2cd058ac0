"""`metafit compare` through the CLI: identical runs differ by exactly 0 (not significant), a
trained run beats an untrained one significantly, seeds are grouped, and the outputs are written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from metafit.app.cli import main

TRAIN = [
    "--quiet",
    "--algo",
    "protonet",
    "--path",
    "loop",
    "--set",
    "data.n_way=3",
    "--set",
    "data.k_shot=1",
    "--set",
    "data.n_query=3",
    "--set",
    "data.tasks_per_batch=4",
    "--set",
    "data.eval_tasks=4",
    "--set",
    "model.hidden=[32, 16]",
    "--set",
    "train.outer_lr=0.01",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    g = np.random.default_rng(0)
    y = np.repeat(np.arange(20), 12)
    centres = g.normal(size=(20, 8)) * 3.0
    x = (centres[y] + g.normal(size=(len(y), 8))).astype(np.float32)
    x = np.concatenate([x, g.normal(size=(len(y), 24)).astype(np.float32) * 4.0], axis=1)  # distracting features
    np.savez(root / "data.npz", x=x, y=y)
    out = {}
    for name, steps, seed in (("trained-s0", 60, 0), ("trained-s1", 60, 1), ("untrained", 0, 0)):
        code = main(
            [
                "train",
                "--dataset",
                str(root / "data.npz"),
                "--run-dir",
                str(root / name),
                "--steps",
                str(steps),
                "--seed",
                str(seed),
                *TRAIN,
            ]
        )
        assert code == 0
        out[name] = root / name
    shutil.copytree(root / "trained-s0", root / "copy-of-s0")
    out["copy-of-s0"] = root / "copy-of-s0"
    return out


def test_a_run_compared_with_itself_differs_by_exactly_zero(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "compare",
            str(runs["trained-s0"]),
            str(runs["copy-of-s0"]),
            "--setting",
            "3:1",
            "--episodes",
            "50",
            "--baseline",
            "trained-s0",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    diff = next(d for d in out["settings"][0]["comparison"]["differences"] if d["run"] == "copy-of-s0")
    assert diff["mean"] == 0.0 and diff["t_p"] == 1.0 and not diff["significant"]
    assert any(
        v.startswith("no significant difference between copy-of-s0 and trained-s0")
        for v in out["settings"][0]["verdicts"]
    )


def test_trained_beats_untrained_and_seeds_are_grouped(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "cmp.json"
    code = main(
        [
            "compare",
            str(runs["trained-s0"]),
            str(runs["trained-s1"]),
            str(runs["untrained"]),
            "--setting",
            "3:1",
            "--episodes",
            "200",
            "--out",
            str(dest),
        ]
    )
    assert code == 0
    capsys.readouterr()
    out = json.loads(dest.read_text())
    s = out["settings"][0]
    diff = next(d for d in s["comparison"]["differences"] if d["run"] == "untrained")
    assert diff["mean"] < 0 and diff["significant"], diff
    assert "seeds" in s and any(g["n_seeds"] == 2 for g in s["seeds"]["groups"])
    assert "nearest centroid (raw inputs)" in s["scores"]
    assert dest.with_suffix(".md").is_file() and list(tmp_path.glob("cmp_reliability_3w1s_*.png"))
    prov = out["provenance"]
    assert prov["command"].startswith("metafit compare ") and "--out" in prov["command"]
    assert {"commit", "date", "cpu", "cores", "threads", "torch", "python"} <= set(prov)
    # each run's steps and training minutes (from its checkpoint) head the report
    assert out["runs"]["trained-s0"]["step"] == 60 and out["runs"]["untrained"]["step"] == 0
    assert out["runs"]["trained-s0"]["train_minutes"] > 0 and out["runs"]["untrained"]["train_minutes"] == 0
    md = dest.with_suffix(".md").read_text()
    assert md.splitlines()[2].startswith("| trained-s0 | protonet | 0 | 60 | "), md[:400]


def test_compare_refuses_an_unknown_baseline(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(runs["trained-s0"]), "--baseline", "nope"]) == 2
    assert "baseline must be one of the runs ['trained-s0'], got 'nope'" in capsys.readouterr().err


def test_report_shows_the_comparison_and_its_reliability_diagrams(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "cmp.json"
    assert (
        main(
            [
                "compare",
                str(runs["trained-s0"]),
                str(runs["untrained"]),
                "--setting",
                "3:1",
                "--episodes",
                "20",
                "--out",
                str(dest),
            ]
        )
        == 0
    )
    assert main(["report", str(runs["trained-s0"]), "--compare", str(dest), "--out", str(tmp_path / "rep")]) == 0
    capsys.readouterr()
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Comparison: cmp.json" in md and "### 3-way 1-shot" in md and "Verdicts:" in md
    assert md.count("_reliability_3w1s_") >= 3  # trained, untrained, the raw baseline
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "data:image/png;base64," in html and "Verdicts:" in html


def test_temperature_scaling_is_fitted_on_validation_classes(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from metafit.app.compare import compare

    plain = compare([runs["trained-s0"]], settings=[(3, 1)], episodes=40)
    scaled = compare([runs["trained-s0"]], settings=[(3, 1)], episodes=40, temperature=True)
    a, b = plain["settings"][0]["scores"]["trained-s0"], scaled["settings"][0]["scores"]["trained-s0"]
    assert a["per_episode"] == b["per_episode"]  # a temperature never changes the argmax
    assert "temperature" not in a
    t = b["temperature"]
    assert t["temperature"] > 0 and t["nll_after"] <= t["nll_before"] + 1e-12  # on the validation queries
    assert t["n_queries"] == 40 * 3 * 3  # 40 validation episodes x 3 ways x 3 queries
    assert t["ece"] >= 0 and t["nll"] > 0
    dest = tmp_path / "t.json"
    argv = ["compare", str(runs["trained-s0"]), "--setting", "3:1", "--episodes", "40", "--temperature-scale"]
    assert main([*argv, "--out", str(dest)]) == 0
    capsys.readouterr()
    md = dest.with_suffix(".md").read_text()
    assert "Temperature scaling (T fitted on validation-class episodes" in md
    assert f"| trained-s0 | {t['temperature']:.3g}" in md


def test_report_draws_way_and_shot_curves_of_a_sweep(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "sweep.json"
    settings = ["--setting", "2:1", "--setting", "3:1", "--setting", "3:2", "--setting", "3:3"]
    argv = ["compare", str(runs["trained-s0"]), str(runs["untrained"]), *settings, "--episodes", "20"]
    assert main([*argv, "--out", str(dest)]) == 0
    assert main(["report", "--compare", str(dest), "--out", str(tmp_path / "rep")]) == 0
    capsys.readouterr()
    plots = tmp_path / "rep" / "plots"
    assert (plots / "sweep_way_1shot.png").is_file()  # 2-way and 3-way at 1 shot
    assert (plots / "sweep_shot_3way.png").is_file()  # 1, 2, 3 shots at 3 ways
    assert not (plots / "sweep_shot_2way.png").exists()  # one setting only: no curve
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "plots/sweep_way_1shot.png" in md and "plots/sweep_shot_3way.png" in md


def test_pipelines_differing_only_in_the_seeds_of_their_stages_are_one_group(tmp_path: Path) -> None:
    from metafit.app.compare import _group_key
    from metafit.app.config import RunConfig

    def stage(name: str, seed: int, steps: int, init_from: str | None = None) -> RunConfig:
        train: dict = {"seed": seed, "steps": steps}
        if init_from:
            train["init_from"] = init_from
        cfg = RunConfig.from_dict({"data": {"dataset": "omniglot"}, "algo": {"name": "protonet"}, "train": train})
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg.to_dict()))
        return cfg

    stage("pre0", 0, 100)
    stage("pre1", 1, 100)
    stage("pre_long", 0, 200)
    meta0 = stage("meta0", 0, 50, str(tmp_path / "pre0"))
    meta1 = stage("meta1", 1, 50, str(tmp_path / "pre1"))
    meta_long = stage("meta_long", 1, 50, str(tmp_path / "pre_long"))
    assert _group_key(meta0) == _group_key(meta1)  # other seeds at both stages, the same recipe
    assert _group_key(meta0) != _group_key(meta_long)  # a different pretraining
    gone = RunConfig.from_dict(
        {
            "data": {"dataset": "omniglot"},
            "algo": {"name": "protonet"},
            "train": {"steps": 50, "init_from": str(tmp_path / "missing")},
        }
    )
    assert str(tmp_path / "missing") in _group_key(gone)  # unreadable: named by its path
