"""Tasks from any data through the CLI: train, eval, predict and data info on generated image
folders (class folders, split folders, split CSVs), an .npz and a CSV table; bad data exits 2 with
one line and writes nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metafit.app.cli import main

PIL = pytest.importorskip("PIL.Image")


def _image(path: Path, cls: int, i: int, rgb: bool) -> None:
    """A small image whose pattern depends on the class (learnable), with per-image noise."""
    g = np.random.default_rng(1000 * cls + i)
    side = 20 + (i % 3) * 4  # differing sizes: resized to the configured size
    img = np.zeros((side, side, 3), dtype=np.uint8)
    img[: side // 2 * (1 + cls % 2), :: 2 + cls] = 200
    img = np.clip(img + g.integers(0, 40, img.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.fromarray(img if rgb else img[..., 0], "RGB" if rgb else "L").save(path)


def _class_folders(root: Path, n_classes: int = 15, per_class: int = 6, rgb: bool = False) -> Path:
    for c in range(n_classes):
        for i in range(per_class):
            _image(root / f"class{c}" / f"img{i}.png", c, i, rgb)
    return root


def _split_folders(root: Path) -> Path:
    for split, classes in (("train", range(0, 6)), ("val", range(6, 8)), ("test", range(8, 11))):
        for c in classes:
            for i in range(6):
                _image(root / split / f"c{c}" / f"{i}.jpg", c, i, True)
    return root


def _split_csvs(root: Path) -> Path:
    for split, classes in (("train", range(0, 6)), ("val", range(6, 8)), ("test", range(8, 11))):
        rows = []
        for c in classes:
            for i in range(6):
                name = f"n{c:02d}_{i}.png"
                _image(root / "images" / name, c, i, True)
                rows.append((name, f"n{c:02d}"))
        with open(root / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filename", "label"])
            w.writerows(rows)
    return root


def _npz(path: Path) -> Path:
    g = np.random.default_rng(0)
    y = np.repeat(np.arange(15), 8)
    x = (g.normal(size=(len(y), 6)) + y[:, None] * 0.5).astype(np.float32)
    np.savez(path, x=x, y=y)
    return path


def _csv(path: Path) -> Path:
    g = np.random.default_rng(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["age", "colour", "score", "kind"])
        for c in range(15):
            for i in range(8):
                w.writerow(
                    [
                        f"{30 + c + g.normal():.3f}",
                        ["red", "blue", "green"][(c + i) % 3],
                        f"{c * 0.3 + g.normal():.3f}",
                        f"k{c}",
                    ]
                )
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


TRAIN = [
    "--steps",
    "3",
    "--quiet",
    "--set",
    "data.n_way=3",
    "--set",
    "data.k_shot=1",
    "--set",
    "data.n_query=2",
    "--set",
    "data.tasks_per_batch=2",
    "--set",
    "data.eval_tasks=4",
    "--set",
    "model.width=8",
    "--path",
    "loop",
]


@pytest.mark.parametrize("layout", ["class-folders", "split-folders", "split-csvs"])
def test_image_folders_train_eval_predict_and_info(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    make = {"class-folders": _class_folders, "split-folders": _split_folders, "split-csvs": _split_csvs}[layout]
    data = make(tmp_path / "data")
    code, out, _ = _run(["data", "info", str(data), "--image-size", "16", "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert set(info["splits"]) == {"train", "val", "test"} and info["example_shape"][1:] == [16, 16]
    run = tmp_path / "run"
    code, _, err = _run(
        [
            "train",
            "--dataset",
            str(data),
            "--algo",
            "protonet",
            "--run-dir",
            str(run),
            "--set",
            "data.image_size=16",
            "--set",
            f"data.cache_dir={tmp_path / 'cache'}",
            *TRAIN,
        ],
        capsys,
    )
    assert code == 0, err
    pre = json.loads(next((run / "checkpoints").glob("*.json")).read_text())["preprocessing"]
    assert pre["kind"] == "image" and pre["input_shape"][1:] == [16, 16]
    code, out, err = _run(["eval", str(run), "--episodes", "5", "--n-way", "3"], capsys)
    assert code == 0, err
    assert "| protonet | 3 | 1 | 5 |" in out
    test_classes = sorted(p for p in (data / "test").iterdir()) if (data / "test").is_dir() else None
    support, query = tmp_path / "support", tmp_path / "query"
    for j, c in enumerate([8, 9, 10] if test_classes else [0, 1, 2]):
        _image(support / f"cls{j}" / "a.png", c, 0, True)
        _image(query / f"q{j}.png", c, 1, True)
    code, out, err = _run(["predict", str(run), "--support", str(support), "--query", str(query)], capsys)
    assert code == 0, err
    rows = list(csv.reader(out.strip().splitlines()))
    assert rows[0] == ["file", "predicted_class", "score_cls0", "score_cls1", "score_cls2"] and len(rows) == 4


def test_npz_train_eval_predict_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _npz(tmp_path / "data.npz")
    code, out, _ = _run(["data", "info", str(data)], capsys)
    assert code == 0 and "example shape (6,)" in out and "train" in out
    run = tmp_path / "run"
    code, _, err = _run(["train", "--dataset", str(data), "--algo", "protonet", "--run-dir", str(run), *TRAIN], capsys)
    assert code == 0, err
    code, out, err = _run(["eval", str(run), "--episodes", "4"], capsys)
    assert code == 0, err
    g = np.random.default_rng(1)
    np.savez(tmp_path / "support.npz", x=g.normal(size=(3, 6)).astype(np.float32), y=np.array([4, 7, 9]))
    np.savez(tmp_path / "query.npz", x=g.normal(size=(5, 6)).astype(np.float32))
    code, out, err = _run(
        ["predict", str(run), "--support", str(tmp_path / "support.npz"), "--query", str(tmp_path / "query.npz")],
        capsys,
    )
    assert code == 0, err
    rows = list(csv.reader(out.strip().splitlines()))
    assert rows[0] == ["file", "predicted_class", "score_4", "score_7", "score_9"] and len(rows) == 6


def test_csv_table_train_eval_predict_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _csv(tmp_path / "table.csv")
    code, out, _ = _run(["data", "info", str(data), "--label-column", "kind", "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["preprocessing"]["kind"] == "table" and info["example_shape"] == [5]  # 2 numeric + 3 one-hot
    run = tmp_path / "run"
    code, _, err = _run(
        ["train", "--dataset", str(data), "--label-column", "kind", "--algo", "maml", "--run-dir", str(run), *TRAIN],
        capsys,
    )
    assert code == 0, err
    code, out, err = _run(["eval", str(run), "--episodes", "4"], capsys)
    assert code == 0, err
    with open(tmp_path / "support.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [
                ["age", "colour", "score", "kind"],
                ["31", "red", "0.2", "a"],
                ["35", "blue", "1.4", "b"],
                ["39", "green", "2.9", "c"],
            ]
        )
    with open(tmp_path / "query.csv", "w", newline="") as f:
        csv.writer(f).writerows([["age", "colour", "score"], ["36", "blue", "1.5"], ["30", "purple", "0.1"]])
    code, out, err = _run(
        ["predict", str(run), "--support", str(tmp_path / "support.csv"), "--query", str(tmp_path / "query.csv")],
        capsys,
    )
    assert code == 0, err
    rows = list(csv.reader(out.strip().splitlines()))
    assert rows[0][:2] == ["file", "predicted_class"] and len(rows) == 3


def _bad(tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    run = tmp_path / "bad-run"
    code, _, err = _run(["train", *argv, "--run-dir", str(run), "--steps", "2", "--quiet", "--path", "loop"], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert not run.exists(), "nothing may be written for bad data"
    return err.strip()


def test_bad_data_gets_one_line_and_nothing_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = _class_folders(tmp_path / "small", per_class=3)
    err = _bad(tmp_path, ["--dataset", str(small), "--set", "data.k_shot=2", "--set", "data.n_query=2"], capsys)
    assert "fewer examples than k_shot + n_query" in err or "has 3 examples" in err, err
    broken = _class_folders(tmp_path / "broken", per_class=6)
    (broken / "class3" / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    err = _bad(
        tmp_path,
        [
            "--dataset",
            str(broken),
            "--set",
            "data.k_shot=1",
            "--set",
            "data.n_query=2",
            "--set",
            f"data.cache_dir={tmp_path / 'c2'}",
        ],
        capsys,
    )
    assert "img2.png" in err and ("unreadable" in err or "truncated" in err), err
    table = _csv(tmp_path / "t.csv")
    err = _bad(tmp_path, ["--dataset", str(table), "--label-column", "nope"], capsys)
    assert "nope" in err and "kind" in err, err
    leaky = _split_folders(tmp_path / "leaky")
    _image(leaky / "val" / "c0" / "0.jpg", 0, 0, True)  # class c0 in both train and val
    err = _bad(
        tmp_path,
        [
            "--dataset",
            str(leaky),
            "--set",
            "data.k_shot=1",
            "--set",
            "data.n_query=2",
            "--set",
            f"data.cache_dir={tmp_path / 'c3'}",
        ],
        capsys,
    )
    assert "c0" in err and ("both" in err or "shared" in err or "leak" in err), err
    empty = _split_folders(tmp_path / "empty")
    for d in (empty / "val").iterdir():
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    err = _bad(
        tmp_path,
        [
            "--dataset",
            str(empty),
            "--set",
            "data.k_shot=1",
            "--set",
            "data.n_query=2",
            "--set",
            f"data.cache_dir={tmp_path / 'c4'}",
        ],
        capsys,
    )
    assert "val" in err and "empty" in err, err
    text = tmp_path / "text.csv"
    with open(text, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["note", "kind"])
        w.writerows([[f"free text number {i}", f"k{i % 20}"] for i in range(400)])
    err = _bad(tmp_path, ["--dataset", str(text), "--label-column", "kind"], capsys)
    assert "note" in err, err


def test_cross_domain_eval_states_the_conversion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _class_folders(tmp_path / "rgb", per_class=6, rgb=True)
    run = tmp_path / "run"
    code, _, err = _run(
        [
            "train",
            "--dataset",
            str(data),
            "--algo",
            "protonet",
            "--run-dir",
            str(run),
            "--set",
            "data.image_size=16",
            "--set",
            "data.channels=3",
            *TRAIN,
        ],
        capsys,
    )
    assert code == 0, err
    code, out, err = _run(
        ["eval", str(run), "--dataset", "digits", "--n-way", "3", "--episodes", "4", "--json"], capsys
    )
    assert code == 0, err
    res = json.loads(out)["results"][0]
    assert res["dataset"] == "digits" and res["cross_domain"]["checkpoint_shape"] == [3, 16, 16]
    assert res["cross_domain"]["source_shape"] == [1, 8, 8] and "->" in res["cross_domain"]["converted"]
    assert torch.isfinite(torch.tensor(res["metrics"]["accuracy"]["mean"]))


def test_two_sources_with_metadataset_episodes_train_and_evaluate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _class_folders(tmp_path / "a", per_class=12)
    b = _class_folders(tmp_path / "b", n_classes=20, per_class=12, rgb=True)  # RGB: converted to the run's grey format
    cfg = tmp_path / "multi.toml"
    cfg.write_text(
        f'[data]\nsources = ["{a}", "{b}"]\nepisodes = "metadataset"\nimage_size = 16\ntasks_per_batch = 2\n'
        "n_way = 3\nk_shot = 1\nn_query = 2\neval_tasks = 4\n"
        f'cache_dir = "{tmp_path / "cache"}"\n[model]\nwidth = 8\n[algo]\nname = "protonet"\n'
        '[train]\nsteps = 3\npath = "loop"\n'
    )
    run = tmp_path / "run"
    code, _, err = _run(["train", str(cfg), "--run-dir", str(run), "--quiet"], capsys)
    assert code == 0, err
    pre = json.loads(next((run / "checkpoints").glob("*.json")).read_text())["preprocessing"]
    assert pre["input_shape"] == [1, 16, 16] and set(pre["sources"]) == {str(a), str(b)}
    code, out, err = _run(["eval", str(run), "--dataset", str(b), "--episodes", "4", "--n-way", "3", "--json"], capsys)
    assert code == 0, err
    conv = json.loads(out)["results"][0]["cross_domain"]
    assert conv["source_shape"] == [3, 84, 84] and conv["checkpoint_shape"] == [1, 16, 16]  # decoded at 84, converted
