"""The metafit command line: train/eval/plot/report end to end on tiny sinusoid runs; clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from metafit.app.cli import build_parser, main
from metafit.checkpoint import latest_checkpoint, load_checkpoint
from tests.conftest import one_line_error as _one_line_error

TINY = [
    "--set",
    "model.hidden=[8,8]",
    "--set",
    "data.eval_tasks=10",
    "--set",
    "data.tasks_per_batch=2",
    "--set",
    "train.checkpoint_every=5",
    "--set",
    "train.log_every=2",
    "--set",
    "train.num_threads=1",
]


def _train(run_dir: Path, *extra: str) -> int:
    return main(
        [
            "train",
            "--dataset",
            "sinusoid",
            "--algo",
            "fomaml",
            "--steps",
            "10",
            "--run-dir",
            str(run_dir),
            "--quiet",
            *TINY,
            *extra,
        ]
    )


def test_cli_train_eval_plot_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert _train(run, "--set", "train.eval_every=5") == 0
    for name in ("config.json", "metrics.jsonl", "eval.json"):
        assert (run / name).is_file(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["algo"]["name"] == "fomaml" and cfg["train"]["steps"] == 10
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8, 10]
    assert {"loss", "mse", "lr", "train_seconds", "path"} <= train_rows[0].keys()
    assert load_checkpoint(run).step == 10

    assert (
        main(
            [
                "eval",
                str(run),
                "--k-shot",
                "2",
                "5",
                "--episodes",
                "8",
                "--inner-steps",
                "2",
                "--out",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| fomaml |" in out and "± 95% CI" in out
    doc = json.loads((tmp_path / "e.json").read_text())
    assert [r["k_shot"] for r in doc["results"]] == [2, 5] and doc["results"][0]["episodes"] == 8
    assert (tmp_path / "e.md").read_text().startswith("| algo |")

    (run / "eval_shots.json").write_text((tmp_path / "e.json").read_text())
    assert main(["plot", str(run)]) == 0
    pngs = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert pngs == ["adaptation_curve.png", "learning_curve.png", "shots.png", "task_errors.png"]
    for p in (run / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000

    run2 = tmp_path / "run2"
    assert _train(run2, "--algo", "reptile", "--seed", "1") == 0
    assert main(["report", str(run), str(run2), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "| run |" in md and "reptile" in md and "fomaml" in md and "±" in md
    assert html.count("data:image/png;base64,") >= 6


def test_cli_refuses_existing_run_unless_resume_or_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert _train(run) == 0
    before = load_checkpoint(run)
    capsys.readouterr()
    assert _train(run, "--seed", "5") == 2
    line = _one_line_error(capsys)
    assert "already holds a different run" in line and "train.seed" in line and "--resume" in line and "--force" in line
    after = load_checkpoint(run)
    assert after.path == before.path and after.meta["tensors_sha256"] == before.meta["tensors_sha256"]
    assert _train(run, "--seed", "5", "--force") == 0
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 5
    # --resume without a config file continues the saved run (nothing left to do here).
    assert main(["train", "--run-dir", str(run), "--resume", "--quiet"]) == 0
    # each invocation since the last --force is recorded with its command, commit and machine
    calls = json.loads((run / "provenance.json").read_text())["invocations"]
    assert len(calls) == 2 and "--force" in calls[0]["command"] and "--resume" in calls[1]["command"]
    assert calls[0]["command"].startswith("metafit train ") and calls[1]["final_step"] == after.step
    assert {"commit", "started", "date", "cpu", "threads", "torch"} <= set(calls[1])
    assert [c["status"] for c in calls] == ["finished", "finished"]


def test_a_killed_train_command_leaves_its_running_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import metafit.app.runs as runs

    run = tmp_path / "run"

    def killed(config: object, run_dir: Path, **kwargs: object) -> None:
        Path(run_dir).mkdir(parents=True)
        for callback in kwargs["callbacks"]:  # type: ignore[attr-defined]
            callback.on_fit_start(None)
        raise KeyboardInterrupt  # the process dies mid-training

    monkeypatch.setattr(runs, "train", killed)
    assert _train(run) != 0  # "metafit: error: interrupted"
    (call,) = json.loads((run / "provenance.json").read_text())["invocations"]
    assert call["status"] == "running" and call["final_step"] is None
    assert call["command"].startswith("metafit train ") and "commit" in call


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--set", "train.stesp=3", "--quiet"], "unknown config key 'stesp' in section 'train'"),
        (["train", "--set", "algo.inner_lr=-1", "--quiet"], "algo.inner_lr must be a finite number > 0, got -1"),
        (["train", "/nonexistent/cfg.yaml"], "config file not found: /nonexistent/cfg.yaml"),
        (["eval", "/nonexistent/run"], "checkpoint not found: /nonexistent/run"),
        (["plot", "/nonexistent/run"], "not a metafit run folder"),
        (
            ["train", "--dataset", "omniglot", "--data-root", "/nonexistent/data", "--steps", "1", "--quiet"],
            "/nonexistent/data",
        ),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert needle in _one_line_error(capsys)


def test_cli_debug_reraises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stesp"):
        main(["--debug", "train", "--set", "train.stesp=3"])


def test_cli_divergence_stops_and_keeps_last_good_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--steps",
            "200",
            "--run-dir",
            str(run),
            "--quiet",
            *TINY,
            "--set",
            "train.optimizer=SGD",
            "--set",
            "train.outer_lr=1e3",
            "--set",
            "train.checkpoint_every=1",
        ]
    )
    assert code == 1
    line = _one_line_error(capsys)
    assert "training diverged at step" in line and "last good checkpoint is" in line
    good = latest_checkpoint(run / "checkpoints")
    assert good is not None and str(good) in line
    step = int(line.split("training diverged at step ")[1].split()[0])
    assert load_checkpoint(good).step == step - 1


def test_cli_every_option_has_help() -> None:
    parser = build_parser()
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"{p.prog} {action.option_strings or action.dest} has no help"
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                stack.extend(action.choices.values())


def test_python_dash_m_metafit_runs() -> None:
    r = subprocess.run([sys.executable, "-m", "metafit", "train", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--resume" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "metafit", "train", "--set", "x"], capture_output=True, text=True, timeout=60
    )
    assert (
        r.returncode == 2
        and r.stderr.strip() == "metafit: error: override 'x' must look like section.key=value (e.g. train.steps=100)"
    )


def test_cli_train_seeds_makes_one_run_per_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from metafit.app.compare import _group_key
    from metafit.app.runs import load_trained

    base = tmp_path / "run"
    assert _train(base, "--seeds", "3", "7") == 0
    runs = [tmp_path / "run-seed3", tmp_path / "run-seed7"]
    assert [json.loads((r / "config.json").read_text())["train"]["seed"] for r in runs] == [3, 7]
    assert load_checkpoint(runs[0]).meta["tensors_sha256"] != load_checkpoint(runs[1]).meta["tensors_sha256"]
    assert not base.exists()
    # the same config less its seed: `metafit compare` groups them as one config with two seeds
    assert _group_key(load_trained(runs[0]).config) == _group_key(load_trained(runs[1]).config)
    capsys.readouterr()
    assert _train(tmp_path / "x", "--seeds", "1", "--seed", "2") == 2
    assert "give --seed or --seeds, not both" in _one_line_error(capsys)
    assert _train(tmp_path / "x", "--seeds", "1", "1") == 2
    assert "--seeds must be distinct, got [1, 1]" in _one_line_error(capsys)


def test_cli_train_seeds_argv_for_torchrun_relaunch() -> None:
    from metafit.app.cli import _drop_seeds

    argv = ["train", "c.toml", "--seeds", "0", "1", "--run-dir", "r", "--nproc", "2", "--run-dir=q", "--seeds=4"]
    assert _drop_seeds(argv) == ["train", "c.toml", "--nproc", "2"]
