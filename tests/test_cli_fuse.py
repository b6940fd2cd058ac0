"""`metafit fuse`: trained Omniglot runs as base models of a meta-learned fusion (issue 6); clean errors.

The base runs are tiny (a few ProtoNet steps, width 8, no rotations): the numbers are meaningless,
the test checks the pipeline, the files and the errors. The Omniglot decode is cached by the data
layer (``$METAFIT_CACHE`` or ``~/.cache/metafit``), as `metafit train` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metafit.app.cli import main
from metafit.app.fuse import BaseRun, load_base_run, load_fusion
from metafit.fusion import fuse
from tests.conftest import one_line_error as _one_line_error

TINY_OMNI = [
    "--set",
    "model.width=8",
    "--set",
    "data.rotations=false",
    "--set",
    "data.n_way=5",
    "--set",
    "data.k_shot=1",
    "--set",
    "data.n_query=5",
    "--set",
    "data.tasks_per_batch=1",
    "--set",
    "data.eval_tasks=2",
    "--set",
    "train.checkpoint_every=100",
    "--set",
    "train.num_threads=1",
]


@pytest.fixture(scope="module")
def base_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from tests.conftest import DATA_ROOT

    if not (DATA_ROOT / "omniglot").exists():
        pytest.skip(f"Omniglot not found under {DATA_ROOT} (set METAFIT_DATA)")
    root = tmp_path_factory.mktemp("fuse_bases")
    runs = []
    for seed, algo in ((0, "protonet"), (1, "fomaml")):  # an embedding net and a classifier (features before its head)
        run = root / f"{algo}{seed}"
        code = main(
            [
                "train",
                "--dataset",
                "omniglot",
                "--algo",
                algo,
                "--steps",
                "3",
                "--seed",
                str(seed),
                "--data-root",
                str(DATA_ROOT),
                "--run-dir",
                str(run),
                "--quiet",
                *TINY_OMNI,
            ]
        )
        assert code == 0
        runs.append(run)
    return runs


def test_cli_fuse_end_to_end(
    base_runs: list[Path], data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fusion"
    argv = [
        "fuse",
        "--base",
        str(base_runs[0]),
        "--base",
        str(base_runs[1]),
        "--data-root",
        str(data_root),
        "--n-way",
        "5",
        "--k-shot",
        "1",
        "--n-query",
        "3",
        "--steps",
        "4",
        "--train-tasks",
        "8",
        "--episodes",
        "6",
        "--seed",
        "2",
        "--out-dir",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| method | accuracy (%) ± 95% CI |" in printed and "| uniform average |" in printed
    assert "protonet0, fomaml1" in printed

    doc = json.loads((out / "fusion.json").read_text())
    acc = doc["accuracy"]
    assert list(acc) == [
        "fusion (meta-learned)",
        "base model 0",
        "base model 1",
        "uniform average",
        "best single (support)",
        "stacking (LR, sklearn contract)",
        "stacking (class-symmetric LR)",
    ]
    for name, s in acc.items():
        assert s["n"] == 6 and 0.0 <= s["mean"] <= 1.0 and s["ci95"] >= 0.0
        assert (s["diff_vs_fusion"] is None) == (name == "fusion (meta-learned)")
        assert len(doc["per_task_accuracy"][name]) == 6
    assert doc["settings"] == {
        "n_way": 5,
        "k_shot": 1,
        "n_query": 3,
        "steps": 4,
        "episodes": 6,
        "train_tasks": 8,
        "tasks_per_batch": 8,
        "lr": 0.01,
        "inner_steps": 1,
        "seed": 2,
    }
    assert doc["data"]["fusion_split"] == "val" and doc["data"]["test_split"] == "test" and not doc["data"]["rotations"]
    assert [b["algo"] for b in doc["bases"]] == ["protonet", "fomaml"] and sum(doc["best_single_choice_counts"]) == 6
    assert (out / "fusion.md").read_text().startswith("| method |")

    # The head's checkpoint reloads and fuses raw images with the reloaded base models.
    ck = load_fusion(out)
    assert ck.bases == [str(load_base_run(r).path) for r in base_runs]
    torch.testing.assert_close(ck.meta_params["model"]["log_scale"], torch.tensor(doc["learned_log_scale"]))
    bases = [load_base_run(p) for p in ck.bases]
    assert all(isinstance(b, BaseRun) for b in bases)
    g = torch.Generator().manual_seed(0)
    sx, sy, qx = torch.rand(5, 1, 28, 28, generator=g), torch.arange(5), torch.rand(4, 1, 28, 28, generator=g)
    logits = fuse(bases, ck.head, ck.meta_params, sx, sy, qx, learner=ck.learner)
    assert logits.shape == (4, 5) and bool(torch.isfinite(logits).all())
    assert bases[0](sx).shape == (5, 8 * 1 * 1)  # ProtoNet: the network's output (width 8, 28 px -> 1x1)
    assert bases[1](sx).shape == (5, 8)  # classifier: the features before its 5-way head

    # Same seed, same result; an existing result is refused without --force.
    assert main(argv) == 2
    assert "already holds a fusion result" in _one_line_error(capsys)
    assert main([*argv, "--force", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["accuracy"] == doc["accuracy"] and again["learned_log_scale"] == doc["learned_log_scale"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ([], "bases must name at least one trained Omniglot run folder or checkpoint, got []"),
        (
            ["--base", "/nonexistent/run"],
            "base run /nonexistent/run: expected a trained metafit run folder or checkpoint",
        ),
        (["--base", "RUN", "--n-way", "1"], "n_way must be an int >= 2, got 1"),
        (
            ["--base", "RUN", "--n-way", "5000"],
            "n_way must be <= 100 (classes of the Omniglot 'vinyals' val/test splits), got 5000",
        ),
        (["--base", "RUN", "--k-shot", "10", "--n-query", "15"], "k_shot + n_query must be <= 20"),
        (
            ["--base", "SINE"],
            "expected a model trained on Omniglot (data.dataset='omniglot'), got data.dataset='sinusoid'",
        ),
        (["--base", "CNP"], "expected an image classifier or embedding network (algo.name one of"),
    ],
)
def test_cli_fuse_bad_input_exits_2_with_one_line(
    extra: list[str],
    needle: str,
    base_runs: list[Path],
    data_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if "SINE" in extra:
        sine = tmp_path / "sine"
        assert (
            main(
                [
                    "train",
                    "--dataset",
                    "sinusoid",
                    "--algo",
                    "fomaml",
                    "--steps",
                    "1",
                    "--run-dir",
                    str(sine),
                    "--quiet",
                    "--set",
                    "model.hidden=[4]",
                    "--set",
                    "data.eval_tasks=1",
                    "--set",
                    "data.tasks_per_batch=1",
                ]
            )
            == 0
        )
        capsys.readouterr()
    if "CNP" in extra:
        assert (
            main(
                [
                    "train",
                    "--dataset",
                    "omniglot",
                    "--set",
                    "algo.name=cnp",
                    "--steps",
                    "1",
                    "--run-dir",
                    str(tmp_path / "cnp"),
                    "--data-root",
                    str(data_root),
                    "--quiet",
                    *TINY_OMNI,
                    "--set",
                    "model.r_dim=8",
                ]
            )
            == 0
        )
        capsys.readouterr()
    extra = [
        {"RUN": str(base_runs[0]), "SINE": str(tmp_path / "sine"), "CNP": str(tmp_path / "cnp")}.get(a, a)
        for a in extra
    ]
    code = main(
        [
            "fuse",
            *extra,
            "--data-root",
            str(data_root),
            "--steps",
            "1",
            "--train-tasks",
            "2",
            "--episodes",
            "2",
            "--out-dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    assert needle in _one_line_error(capsys)
    assert not (tmp_path / "out" / "fusion.json").exists()
