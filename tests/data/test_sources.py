"""Dataset sources: image folders (three layouts, cache), arrays, tables, checks, built-ins."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metafit.data import sources
from metafit.data.datasets import LabelledDataset
from metafit.data.sources import (
    SplitDataset,
    apply_table_preprocessing,
    check_split_dataset,
    class_split,
    convert_images,
    download_fashion_mnist,
    load_array_dataset,
    load_fashion_mnist,
    load_image_folder_dataset,
    load_kuzushiji_kanji,
    load_sklearn_digits,
    load_table_dataset,
    resolve_dataset,
)

SHARED = Path("/work/shared/data")


@pytest.fixture(autouse=True)
def _private_default_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loaders called without cache_dir write under $METAFIT_CACHE: keep that inside tmp_path."""
    monkeypatch.setenv("METAFIT_CACHE", str(tmp_path / "default-cache"))


def _img(path: Path, size: tuple[int, int], value: int | tuple[int, int, int], mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def _class_folder(root: Path, n_classes: int = 6, per_class: int = 3) -> None:
    """Class c: solid images of grey level 10*c+i, sizes varying, every other class RGB (grey-valued)."""
    for c in range(n_classes):
        for i in range(per_class):
            v = 10 * c + i
            size = (8 + i, 5 + c)
            if c % 2:
                _img(root / f"cls{c}" / f"{i}.png", size, (v, v, v), "RGB")
            else:
                _img(root / f"cls{c}" / f"{i}.bmp", size, v)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# -- image folders ---------------------------------------------------------------------------------


def test_load_image_folder_dataset_class_folders_split_by_seeded_class_split(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "imgs"
    _class_folder(root, n_classes=10)
    ds = load_image_folder_dataset(root, image_size=4, channels=3, cache_dir=cache, val_fraction=0.2, test_fraction=0.2)
    parts = class_split(10, val_fraction=0.2, test_fraction=0.2, seed=0)
    for split, ids in parts.items():
        part = ds.splits[split]
        assert part.class_names == tuple(f"cls{c}" for c in ids)
        assert part.x.shape == (3 * len(ids), 3, 4, 4)
        for j, c in enumerate(ids):  # solid images stay solid through the bilinear resize
            vals = part.x[part.y == j]
            expected = torch.tensor([10 * c + i for i in range(3)], dtype=torch.float32) / 255
            assert torch.equal(vals[:, 0, 0, 0], expected)
            assert torch.equal(vals.amax(dim=(1, 2, 3)), vals.amin(dim=(1, 2, 3)))
    assert ds.preprocessing["layout"] == "class-folders" and ds.preprocessing["class_split"]["seed"] == 0
    train_x = ds.splits["train"].x.double()
    stats = ds.preprocessing["channel_stats"]
    assert stats["split"] == "train" and stats["mean"] == pytest.approx(train_x.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert stats["std"] == pytest.approx(train_x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-6)
    other = load_image_folder_dataset(root, image_size=4, cache_dir=cache, seed=1)
    assert (
        other.splits["test"].class_names != ds.splits["test"].class_names
        or other.splits["val"].class_names != ds.splits["val"].class_names
    )


def test_load_image_folder_dataset_auto_channels_grey_and_rgb(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "grey"
    _class_folder(root, n_classes=5)
    ds = load_image_folder_dataset(root, image_size=6, channels="auto", cache_dir=cache)
    assert ds.example_shape == (1, 6, 6) and ds.preprocessing["channels"] == 1
    _img(root / "cls0" / "colour.png", (9, 9), (200, 10, 30), "RGB")
    ds = load_image_folder_dataset(root, image_size=6, channels="auto", cache_dir=cache)
    assert ds.example_shape == (3, 6, 6) and ds.preprocessing["channels"] == 3
    grey = load_image_folder_dataset(root, image_size=6, channels=1, cache_dir=cache)
    want = np.asarray(Image.new("RGB", (1, 1), (200, 10, 30)).convert("L"))[0, 0] / 255
    part = next(p for p in grey.splits.values() if "cls0" in p.class_names)
    c0 = part.class_names.index("cls0")
    assert torch.isclose(part.x[part.y == c0][-1, 0, 0, 0], torch.tensor(want, dtype=torch.float32))


def test_load_image_folder_dataset_split_folders(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "sf"
    for split, classes in (("train", ["a", "b", "c"]), ("val", ["d"]), ("test", ["e", "f"])):
        for c in classes:
            for i in range(2):
                _img(root / split / c / f"{i}.png", (5, 7), 40 + i)
    ds = load_image_folder_dataset(root, image_size=5, cache_dir=cache)
    assert {k: v.class_names for k, v in ds.splits.items()} == {
        "train": ("a", "b", "c"),
        "val": ("d",),
        "test": ("e", "f"),
    }
    assert ds.preprocessing["layout"] == "split-folders"
    assert torch.equal(ds.splits["val"].x[:, 0, 2, 2], torch.tensor([40 / 255, 41 / 255], dtype=torch.float32))


def test_load_image_folder_dataset_split_csv_layout(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "mini"
    rows = {"train": [("n1_0.jpg", "n1"), ("n1_1.jpg", "n1"), ("n2_0.jpg", "n2")], "test": [("n3_0.jpg", "n3")]}
    root.mkdir(parents=True)
    for split, items in rows.items():
        with open(root / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filename", "label"])
            w.writerows(items)
        for fname, _ in items:
            _img(root / "images" / fname, (12, 10), (0, 128, 255), "RGB")
    ds = load_image_folder_dataset(root, image_size=3, cache_dir=cache)
    assert ds.splits["train"].class_names == ("n1", "n2") and ds.splits["test"].class_names == ("n3",)
    assert ds.splits["train"].class_sizes().tolist() == [2, 1]
    px = ds.splits["test"].x[0, :, 1, 1] * 255
    assert torch.allclose(px, torch.tensor([0.0, 128.0, 255.0]), atol=2)  # JPEG is lossy


def test_load_image_folder_dataset_csv_errors(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    (root / "train.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(ValueError, match=r"must have the header 'filename,label'; found columns file, class"):
        load_image_folder_dataset(root, use_cache=False)
    (root / "train.csv").write_text("filename,label\nmissing.png,x\n")
    with pytest.raises(FileNotFoundError, match=r"image 'missing.png' listed in .*train.csv"):
        load_image_folder_dataset(root, use_cache=False)


def test_load_image_folder_dataset_truncated_and_unreadable_images_are_named(tmp_path: Path) -> None:
    root = tmp_path / "broken"
    _class_folder(root, n_classes=3)
    buf = io.BytesIO()
    Image.new("L", (64, 64), 7).save(buf, format="PNG")
    (root / "cls0" / "trunc.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ValueError, match=r"cannot decode image file .*cls0/trunc\.png"):
        load_image_folder_dataset(root, use_cache=False)
    (root / "cls0" / "trunc.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"cannot decode image file .*cls0/trunc\.png"):
        load_image_folder_dataset(root, use_cache=False)


def test_load_image_folder_dataset_empty_class_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "e"
    _class_folder(root, n_classes=3)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"class folder .*empty holds no images"):
        load_image_folder_dataset(root, use_cache=False)


def _count_opens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = Image.open

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting)
    return calls


def test_load_image_folder_dataset_cache_hit_does_not_decode_and_is_memory_mapped(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "c"
    _class_folder(root, n_classes=5)
    calls = _count_opens(monkeypatch)
    first = load_image_folder_dataset(root, image_size=4, cache_dir=cache)
    assert calls[0] == 15 and first.load_info["cache_hit"] is False
    second = load_image_folder_dataset(root, image_size=4, cache_dir=cache)
    assert calls[0] == 15 and second.load_info["cache_hit"] is True
    assert second.preprocessing == first.preprocessing  # the transform record does not depend on the cache
    for k in first.splits:
        assert torch.equal(first.splits[k].x, second.splits[k].x)
    npy = next(cache.rglob("images.npy"))
    arr = np.load(npy, mmap_mode="r")
    assert arr.dtype == np.float32 and arr.shape == (15, 3, 4, 4)
    assert not list(cache.rglob("*.tmp"))


def test_load_image_folder_dataset_cache_invalidated_by_changed_file_or_size(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "c"
    _class_folder(root, n_classes=5)
    load_image_folder_dataset(root, image_size=4, cache_dir=cache)
    calls = _count_opens(monkeypatch)
    target = root / "cls0" / "0.bmp"
    _img(target, (8, 5), 250)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds = load_image_folder_dataset(root, image_size=4, cache_dir=cache)
    assert calls[0] == 15 and ds.load_info["cache_hit"] is False
    part = next(p for p in ds.splits.values() if "cls0" in p.class_names)
    assert float(part.x[part.y == part.class_names.index("cls0")][0].max()) == pytest.approx(250 / 255)
    ds = load_image_folder_dataset(root, image_size=5, cache_dir=cache)
    assert calls[0] == 30 and ds.example_shape == (3, 5, 5)
    assert len(list(cache.rglob("images.npy"))) == 3


# -- arrays ----------------------------------------------------------------------------------------


def test_load_array_dataset_npz_class_split_and_scaling(tmp_path: Path) -> None:
    x = np.arange(40 * 2, dtype=np.uint8).reshape(40, 2)
    y = np.repeat(np.arange(10) * 3, 4)  # labels 0, 3, 6, ...
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_array_dataset(tmp_path / "d.npz", val_fraction=0.2, test_fraction=0.3, seed=4)
    parts = class_split(10, val_fraction=0.2, test_fraction=0.3, seed=4)
    for split, ids in parts.items():
        part = ds.splits[split]
        assert part.class_names == tuple(str(3 * i) for i in ids)
        want = torch.from_numpy(np.concatenate([x[y == 3 * i] for i in ids]).astype(np.float32) / 255)
        assert torch.equal(part.x, want)
    assert ds.preprocessing["scaling"] == "uint8 / 255"


def test_load_array_dataset_split_keys_and_npy_pair(tmp_path: Path) -> None:
    xt, yt = np.random.default_rng(0).normal(size=(6, 3)), np.array([0, 0, 1, 1, 2, 2])
    np.savez(tmp_path / "s.npz", x_train=xt, y_train=yt, x_test=xt[:2] + 1, y_test=np.array([5, 5]))
    ds = load_array_dataset(tmp_path / "s.npz")
    assert list(ds.splits) == ["train", "test"] and ds.splits["test"].class_names == ("5",)
    assert torch.allclose(ds.splits["train"].x, torch.from_numpy(xt).float())
    np.save(tmp_path / "train_x.npy", xt)
    np.save(tmp_path / "train_y.npy", yt)
    ds = load_array_dataset(tmp_path / "train_x.npy", val_fraction=0.0, test_fraction=0.0)
    assert list(ds.splits) == ["train"] and ds.splits["train"].num_classes == 3


def test_load_array_dataset_bad_inputs(tmp_path: Path) -> None:
    np.savez(tmp_path / "k.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match=r"must hold keys 'x' and 'y'.*found a"):
        load_array_dataset(tmp_path / "k.npz")
    np.savez(tmp_path / "m.npz", x=np.zeros((4, 2)), y=np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"y must have shape \(4,\) to match x, got shape \(3,\)"):
        load_array_dataset(tmp_path / "m.npz")
    np.savez(tmp_path / "f.npz", x=np.zeros((4, 2)), y=np.zeros(4))
    with pytest.raises(ValueError, match=r"y must hold integer class labels, got dtype float64"):
        load_array_dataset(tmp_path / "f.npz")


# -- tables ----------------------------------------------------------------------------------------


def _table(path: Path, rows: list[dict[str, object]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _species_rows(violet: int = 9) -> list[dict[str, object]]:
    colours = ["red", "green", "blue"]
    rows = []
    for k in range(10):
        for i in range(4):
            rows.append(
                {
                    "id": f"r{k}{i}",
                    "size": k * 10 + i,
                    "colour": colours[(k + i) % 3] if k != violet else "violet",
                    "species": f"s{k}",
                }
            )
    return rows


def test_load_table_dataset_standardises_with_train_statistics_and_one_hot_encodes(tmp_path: Path) -> None:
    parts = class_split(10, seed=0)
    rows = _species_rows(violet=parts["test"][0])  # a category seen only outside the train classes
    path = _table(tmp_path / "t.csv", rows)
    ds = load_table_dataset(path, label_column="species", drop_columns=["id"], seed=0)
    train_classes = {f"s{k}" for k in parts["train"]}
    sizes = np.array([r["size"] for r in rows if r["species"] in train_classes], dtype=np.float64)
    prep = ds.preprocessing
    num = prep["columns"][0]
    assert (
        num["name"] == "size"
        and num["mean"] == pytest.approx(sizes.mean())
        and num["std"] == pytest.approx(sizes.std())
    )
    cats = sorted({str(r["colour"]) for r in rows if r["species"] in train_classes})
    assert prep["columns"][1] == {"name": "colour", "type": "categorical", "categories": cats}
    assert prep["feature_names"] == ["size"] + [f"colour={c}" for c in cats]
    all_x = torch.cat([ds.splits[s].x for s in ds.splits])
    all_rows = [r for s in ds.splits for c in ds.splits[s].class_names for r in rows if r["species"] == c]
    want = apply_table_preprocessing(prep, [{k: str(v) for k, v in r.items()} for r in all_rows])
    assert torch.equal(all_x, want)
    row0 = all_rows[0]
    assert want[0, 0] == pytest.approx((float(row0["size"]) - sizes.mean()) / sizes.std(), rel=1e-5)
    unseen = apply_table_preprocessing(prep, [{"size": "3", "colour": "violet"}])
    assert "violet" not in cats and torch.equal(unseen[0, 1:], torch.zeros(len(cats)))


def test_parquet_table_loads_like_the_same_csv_with_typed_and_missing_cells(tmp_path: Path) -> None:
    """A Parquet file (typed int/str columns, nulls) gives the same dataset as the CSV of the same
    rows (strings, empty cells): same splits, features and preprocessing record."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = _species_rows()
    rows[3]["size"] = None  # a missing numeric cell
    rows[5]["colour"] = None  # a missing categorical cell
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").schema.field("size").type == pa.int64()
    csv_rows = [{k: "" if v is None else v for k, v in r.items()} for r in rows]
    a = load_table_dataset(tmp_path / "t.parquet", label_column="species", drop_columns=["id"], seed=0)
    b = load_table_dataset(_table(tmp_path / "t.csv", csv_rows), label_column="species", drop_columns=["id"], seed=0)
    assert a.splits.keys() == b.splits.keys()
    for s in a.splits:
        assert a.splits[s].class_names == b.splits[s].class_names
        assert torch.equal(a.splits[s].x, b.splits[s].x) and torch.equal(a.splits[s].y, b.splits[s].y)
    assert a.preprocessing["columns"] == b.preprocessing["columns"]
    assert a.preprocessing["feature_names"] == b.preprocessing["feature_names"]


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import fails as if it were not installed
    with pytest.raises(ValueError, match=r"t\.parquet needs pyarrow \(pip install pyarrow\)"):
        load_table_dataset(path, label_column="species")


def test_load_table_dataset_errors_name_the_column(tmp_path: Path) -> None:
    path = _table(tmp_path / "t.csv", _species_rows())
    with pytest.raises(
        ValueError, match=r"label_column 'label' is not a column of .*; columns: id, size, colour, species"
    ):
        load_table_dataset(path, label_column="label")
    with pytest.raises(
        ValueError, match=r"column 'colour' .* is not numeric \(e.g. 'red'\) and encode_categorical=False"
    ):
        load_table_dataset(path, label_column="species", drop_columns=["id"], encode_categorical=False)
    with pytest.raises(
        ValueError,
        match=r"column 'id' .* distinct non-numeric values in the train classes \(more than "
        r"max_categories=10; free text or an id\?\)",
    ):
        load_table_dataset(path, label_column="species", max_categories=10)
    with pytest.raises(ValueError, match=r"row 0 has no column 'size'"):
        apply_table_preprocessing(
            load_table_dataset(path, label_column="species", drop_columns=["id"]).preprocessing, [{"colour": "red"}]
        )


# -- checks and info -------------------------------------------------------------------------------


def _ld(sizes: list[int], names: list[str]) -> LabelledDataset:
    y = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    return LabelledDataset(x=torch.zeros(len(y), 2), y=y, class_names=tuple(names))


def test_check_split_dataset_reports_small_classes_leakage_and_empty_splits() -> None:
    ds = SplitDataset("toy", {"train": _ld([6, 6], ["a", "b"]), "test": _ld([6, 3], ["c", "d"])}, {"kind": "array"})
    check_split_dataset(ds, k_shot=1, n_query=2)
    with pytest.raises(
        ValueError,
        match=r"class 'd' in split 'test' of dataset 'toy' has 3 examples, but k_shot \+ "
        r"n_query = 1 \+ 5 = 6 are needed \(1 class\(es\) of 2 are too small\)",
    ):
        check_split_dataset(ds, k_shot=1, n_query=5)
    leak = SplitDataset("toy", {"train": _ld([6, 6], ["a", "b"]), "val": _ld([6, 6], ["b", "e"])}, {})
    with pytest.raises(
        ValueError,
        match=r"classes shared between splits 'train' and 'val' of dataset 'toy' "
        r"\(support/query leakage across splits\): 'b' \(1 in total\)",
    ):
        check_split_dataset(leak, k_shot=1, n_query=1)
    empty = SplitDataset("toy", {"train": _ld([6], ["a"])}, {}, empty=("val",))
    with pytest.raises(ValueError, match=r"split 'val' of dataset 'toy' is empty"):
        check_split_dataset(empty, k_shot=1, n_query=1)
    with pytest.raises(ValueError, match=r"has no 'val' split \(required\); available: train"):
        check_split_dataset(ds, k_shot=1, n_query=1, required=("train", "val"))


def test_load_image_folder_dataset_empty_split_folder_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "sf"
    for c in ("a", "b"):
        _img(root / "train" / c / "0.png", (4, 4), 1)
    (root / "val").mkdir()
    ds = load_image_folder_dataset(root, image_size=4, use_cache=False)
    assert ds.empty == ("val",)
    with pytest.raises(ValueError, match=r"split 'val' of dataset 'sf' is empty"):
        check_split_dataset(ds, k_shot=1, n_query=0)


def test_split_dataset_info_summary() -> None:
    ds = SplitDataset("toy", {"train": _ld([2, 5, 9, 4], list("abcd")), "test": _ld([3], ["e"])}, {"kind": "array"})
    info = ds.info()
    assert info["splits"]["train"] == {
        "classes": 4,
        "examples": 20,
        "examples_per_class": {"min": 2, "median": 4.5, "max": 9},
        "groups": None,
    }
    assert info["splits"]["test"]["examples_per_class"] == {"min": 3, "median": 3.0, "max": 3}
    assert info["example_shape"] == [2] and info["preprocessing"] == {"kind": "array"}


# -- conversion and resolution ---------------------------------------------------------------------


def test_convert_images_channels_and_size() -> None:
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 6, 6, generator=g)
    grey = convert_images(rgb, image_size=6, channels=1)
    assert torch.allclose(grey[:, 0], 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])
    back = convert_images(grey, image_size=6, channels=3)
    assert torch.equal(back, grey.expand(-1, 3, -1, -1))
    const = torch.full((1, 1, 8, 8), 0.25)
    assert torch.allclose(convert_images(const, image_size=3, channels=1), torch.full((1, 1, 3, 3), 0.25))
    assert convert_images(rgb, image_size=6, channels=3) is rgb


def test_resolve_dataset_dispatches_on_path_kind(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _class_folder(root, n_classes=5)
    assert resolve_dataset(root, image_size=4, cache_dir=tmp_path / "c").preprocessing["kind"] == "image"
    np.savez(tmp_path / "a.npz", x=np.zeros((10, 2)), y=np.arange(10) % 5)
    assert resolve_dataset(tmp_path / "a.npz").preprocessing["kind"] == "array"
    path = _table(tmp_path / "t.csv", _species_rows())
    with pytest.raises(ValueError, match="needs label_column"):
        resolve_dataset(path)
    assert resolve_dataset(path, label_column="species").preprocessing["kind"] == "table"
    with pytest.raises(
        ValueError,
        match=r"dataset 'nope' is neither a built-in name \(breast-cancer, digits, digits-table, fashion-mnist, "
        r"iris, kuzushiji-kanji, omniglot, wine\)",
    ):
        resolve_dataset("nope")


# -- built-ins -------------------------------------------------------------------------------------


def test_load_sklearn_digits_test_domain() -> None:
    from sklearn.datasets import load_digits

    ds = load_sklearn_digits()
    assert list(ds.splits) == ["test"] and ds.splits["test"].num_classes == 10
    d = load_digits()
    first = np.flatnonzero(d.target == 0)[0]
    want = np.rint(d.images[first] * 255 / 16) / 255
    assert torch.allclose(ds.splits["test"].x[0, 0].double(), torch.from_numpy(want), atol=1e-7)
    assert load_sklearn_digits(image_size=28).example_shape == (1, 28, 28)


@pytest.mark.skipif(not (SHARED / "fashion-mnist").is_dir(), reason="shared Fashion-MNIST copy absent")
def test_load_fashion_mnist_matches_the_idx_files() -> None:
    ds = load_fashion_mnist(SHARED)
    test = ds.splits["test"]
    assert list(ds.splits) == ["test"] and test.class_sizes().tolist() == [1000] * 10
    assert test.class_names[9] == "Ankle boot"
    with gzip.open(SHARED / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    with gzip.open(SHARED / "fashion-mnist" / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    k = np.flatnonzero(labels == 3)[0]
    assert torch.equal(test.x[test.y == 3][0, 0], torch.from_numpy(images[k].astype(np.float32) / 255))
    assert float(test.x[:, 0, 0, 0].mean()) < 0.05  # dark background, bright object (Omniglot polarity)


@pytest.mark.slow  # decodes 21,600 PNGs (about 3-7 s on the shared 2-core machine)
@pytest.mark.skipif(not (SHARED / "kuzushiji-kanji").is_dir(), reason="shared Kuzushiji-Kanji copy absent")
def test_load_kuzushiji_kanji_split_and_polarity(tmp_path: Path) -> None:
    ds = load_kuzushiji_kanji(SHARED, cache_dir=tmp_path)
    assert [ds.splits[s].num_classes for s in ("train", "val", "test")] == [720, 180, 180]
    check_split_dataset(ds, k_shot=5, n_query=15)
    train = ds.splits["train"]
    name = train.class_names[0]
    with zipfile.ZipFile(SHARED / "kuzushiji-kanji" / "kkanji_1080x20.zip") as zf:
        entry = min(n for n in zf.namelist() if f"/{name}/" in n)
        im = Image.open(io.BytesIO(zf.read(entry))).convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    assert torch.equal(train.x[0, 0], torch.from_numpy(np.asarray(im, dtype=np.float32) / 255))
    assert float(train.x.mean()) < 0.4 and float(train.x[:, 0, 0, 0].mean()) < 0.05  # ink bright on black
    again = load_kuzushiji_kanji(SHARED, cache_dir=tmp_path)
    assert again.load_info["cache_hit"] is True and torch.equal(again.splits["test"].x, ds.splits["test"].x)


def test_class_split_is_a_seeded_partition() -> None:
    p = class_split(17, val_fraction=0.2, test_fraction=0.3, seed=3)
    assert [len(p[s]) for s in ("train", "val", "test")] == [17 - 3 - 5, 3, 5]
    assert sorted(p["train"] + p["val"] + p["test"]) == list(range(17))
    assert p == class_split(17, val_fraction=0.2, test_fraction=0.3, seed=3)
    with pytest.raises(ValueError, match=r"val_fraction \+ test_fraction must be < 1"):
        class_split(5, val_fraction=0.5, test_fraction=0.5)


@pytest.mark.slow  # decodes Omniglot unless the default ~/.cache/metafit/omniglot cache already holds it
@pytest.mark.skipif(not (SHARED / "omniglot").is_dir(), reason="shared Omniglot copy absent")
def test_resolve_dataset_omniglot_vinyals_splits_share_the_polarity_of_kanji() -> None:
    ds = resolve_dataset("omniglot", root=SHARED, cache_dir=Path.home() / ".cache" / "metafit" / "omniglot")
    assert [ds.splits[s].num_classes for s in ("train", "val", "test")] == [4400, 100, 423]
    check_split_dataset(ds, k_shot=5, n_query=15, n_way=20)
    train = ds.splits["train"]
    assert train.groups is not None and float(train.x[:, 0, 0, 0].mean()) < 0.01 < float(train.x.mean()) < 0.3


def test_info_of_every_kind_is_json_serialisable(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _class_folder(root, n_classes=5)
    np.savez(tmp_path / "a.npz", x=np.zeros((10, 2)), y=np.arange(10) % 5)
    kinds = [
        load_image_folder_dataset(root, image_size=4, cache_dir=tmp_path / "c"),
        load_array_dataset(tmp_path / "a.npz"),
        load_table_dataset(_table(tmp_path / "t.csv", _species_rows()), label_column="species", drop_columns=["id"]),
        load_sklearn_digits(),
    ]
    for ds in kinds:
        info = ds.info()
        assert json.loads(json.dumps(info)) == info
        assert sum(v["examples"] for v in info["splits"].values()) == sum(len(p) for p in ds.splits.values())


@pytest.mark.skipif(not (SHARED / "fashion-mnist").is_dir(), reason="shared Fashion-MNIST copy absent")
def test_download_fashion_mnist_verifies_checksums_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    urls: list[str] = []

    def fake_urlopen(url: str, timeout: float) -> io.BytesIO:
        urls.append(url)
        return io.BytesIO((SHARED / "fashion-mnist" / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    folder = download_fashion_mnist(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(sources.FASHION_MNIST_SHA256)
    assert len(urls) == 4 and urls[0].startswith("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
    assert load_fashion_mnist(tmp_path).splits["test"].class_sizes().tolist() == [1000] * 10
    download_fashion_mnist(tmp_path)  # valid files are kept: nothing fetched again
    assert len(urls) == 4
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"not the file"))
    with pytest.raises(
        ValueError,
        match=r"downloaded .*t10k-labels-idx1-ubyte.gz failed verification: sha256 [0-9a-f]{64}, expected 8d36",
    ):
        download_fashion_mnist(tmp_path)
    assert not list(folder.glob(".*.tmp")) and not (folder / "t10k-labels-idx1-ubyte.gz").exists()


@pytest.mark.skipif(not (SHARED / "kuzushiji-kanji").is_dir(), reason="shared Kuzushiji-Kanji copy absent")
def test_download_kuzushiji_kanji_verifies_the_present_archive_or_explains(tmp_path: Path) -> None:
    assert sources.download_kuzushiji_kanji(SHARED) == SHARED / "kuzushiji-kanji" / "kkanji_1080x20.zip"
    with pytest.raises(FileNotFoundError, match=r"kkanji_1080x20.zip is absent: download http://codh.rois.ac.jp/"):
        sources.download_kuzushiji_kanji(tmp_path)
    (tmp_path / "kuzushiji-kanji").mkdir()
    (tmp_path / "kuzushiji-kanji" / "kkanji_1080x20.zip").write_bytes(b"PK")
    with pytest.raises(ValueError, match=r"has sha256 [0-9a-f]{64}, expected 3017f2c8"):
        sources.download_kuzushiji_kanji(tmp_path)
