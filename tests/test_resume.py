"""Exact resume: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metafit.app.config import RunConfig, save_config
from metafit.app.runs import read_metrics, train
from metafit.checkpoint import latest_checkpoint, load_checkpoint

TINY = {
    "data": {"dataset": "sinusoid", "k_shot": 5, "n_query": 5, "tasks_per_batch": 2, "eval_tasks": 4, "val_tasks": 4},
    "model": {"hidden": [8, 8]},
    "algo": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1},
    "train": {
        "steps": 200,
        "checkpoint_every": 7,
        "log_every": 5,
        "keep_last": 2,
        "path": "loop",
        "num_threads": 1,
        "seed": 3,
        "scheduler": "cosine",
    },
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cmd(cfg: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "metafit", "train", str(cfg), "--run-dir", str(run_dir), "--quiet", *extra]


def _final_meta(run_dir: Path) -> dict[str, torch.Tensor]:
    ck = load_checkpoint(run_dir)
    return {k: v for k, v in ck.tensors.items() if not k.startswith("rng/")}


def test_resume_after_sigkill_is_bit_identical(tmp_path: Path) -> None:
    cfg = save_config(RunConfig.from_dict(TINY), tmp_path / "tiny.json")
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    env = _env()
    proc = subprocess.Popen(_cmd(cfg, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        ck = latest_checkpoint(killed / "checkpoints")
        if ck is not None and json.loads(ck.read_text())["step"] >= 14:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make TINY longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads(latest_checkpoint(killed / "checkpoints").read_text())["step"]  # type: ignore[union-attr]
    assert 14 <= killed_at < 200

    # Without --resume the folder is refused and nothing is lost.
    refused = subprocess.run(_cmd(cfg, killed), env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "--resume" in refused.stderr and "Traceback" not in refused.stderr
    assert latest_checkpoint(killed / "checkpoints") is not None

    # Resume and the uninterrupted reference run side by side.
    ref_proc = subprocess.Popen(_cmd(cfg, ref), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    resumed = subprocess.run(_cmd(cfg, killed, "--resume"), env=env, capture_output=True, text=True, timeout=120)
    _, ref_err = ref_proc.communicate(timeout=120)
    assert ref_proc.returncode == 0, ref_err
    assert resumed.returncode == 0, resumed.stderr
    a, b = _final_meta(ref), _final_meta(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert load_checkpoint(killed).step == 200
    # The metrics log has each step once, in order, despite the crash.
    steps = [r["step"] for r in read_metrics(killed) if r["kind"] == "train"]
    assert steps == [r["step"] for r in read_metrics(ref) if r["kind"] == "train"]


def test_resume_in_process_extends_run_exactly(tmp_path: Path) -> None:
    base = RunConfig.from_dict(
        {
            **TINY,
            "train": {
                **TINY["train"],
                "steps": 30,
                "eval_every": 10,
                "scheduler": "step",
                "scheduler_kwargs": {"step_size": 7, "gamma": 0.9},
            },
        }
    )
    longer = base.replace(train={"steps": 50})
    train(base, tmp_path / "a", progress=False)
    r = train(longer, tmp_path / "a", resume=True, progress=False)
    assert r.resumed_from == 30 and r.step == 50
    train(longer, tmp_path / "b", progress=False)
    a, b = _final_meta(tmp_path / "a"), _final_meta(tmp_path / "b")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_different_config(tmp_path: Path) -> None:
    base = RunConfig.from_dict({**TINY, "train": {**TINY["train"], "steps": 5}})
    train(base, tmp_path / "a", progress=False)
    other = base.replace(algo={"inner_lr": 0.5})
    with pytest.raises(ValueError, match=r"algo.inner_lr"):
        train(other, tmp_path / "a", resume=True, progress=False)
    assert load_checkpoint(tmp_path / "a").step == 5


def test_resume_refuses_new_steps_with_cosine_schedule(tmp_path: Path) -> None:
    base = RunConfig.from_dict({**TINY, "train": {**TINY["train"], "steps": 5}})
    train(base, tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match=r"cosine"):
        train(base.replace(train={"steps": 9}), tmp_path / "a", resume=True, progress=False)
