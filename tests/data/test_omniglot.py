"""Omniglot loader, cache, splits and image-folder helpers on the real data (skipped if absent)."""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from metafit.data import omniglot as om
from metafit.data.datasets import LabelledDataset
from metafit.data.sampling import EpisodeSampler, VariableEpisodeSampler, fixed_episodes

DATA_ROOT = Path(os.environ.get("METAFIT_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
ZIPS = {s: DATA_ROOT / "omniglot" / f"images_{s}.zip" for s in ("background", "evaluation")}

pytestmark = pytest.mark.skipif(
    not all(p.is_file() for p in ZIPS.values()),
    reason=f"Omniglot zips not found under {DATA_ROOT / 'omniglot'} (set METAFIT_DATA)",
)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("omniglot_cache")


@pytest.fixture(scope="session")
def data(cache_dir: Path) -> om.OmniglotData:
    """Decoded once per test session (into a temporary cache)."""
    return om.load_omniglot(DATA_ROOT, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def val_rot(data: om.OmniglotData) -> LabelledDataset:
    return om.omniglot_split(data, "val", rotations=True)


def _base(name: str) -> str:
    return name.rsplit("/rot", 1)[0]


def test_load_omniglot_counts(data: om.OmniglotData) -> None:
    assert data.images.shape == (1623, 20, 28, 28) and data.images.dtype == torch.uint8
    assert int(data.background.sum()) == 964 and int((~data.background).sum()) == 659
    assert sorted(data.file_ids) == list(range(1, 1624))
    assert len(set(data.character_names)) == 1623
    assert len(set(data.alphabets[:964])) == 30 and len(set(data.alphabets[964:])) == 20
    assert data.character_names[0] == "Alphabet_of_the_Magi/character01"
    # Ink is bright: most pixels are background (0).
    assert float(data.images.float().mean()) < 0.25 * 255


def test_load_omniglot_reads_cache(data: om.OmniglotData, cache_dir: Path) -> None:
    files = list(cache_dir.glob("omniglot_28px_*.npz"))
    assert len(files) == 1 and not list(cache_dir.glob("*.tmp"))
    again = om.load_omniglot(DATA_ROOT, cache_dir=cache_dir)
    assert torch.equal(again.images, data.images) and again.character_names == data.character_names


def test_omniglot_split_vinyals_sizes_disjoint(data: om.OmniglotData, val_rot: LabelledDataset) -> None:
    parts = {s: om.omniglot_split(data, s, rotations=False) for s in ("train", "val", "test", "trainval")}
    names = {s: set(d.class_names) for s, d in parts.items()}
    assert {s: len(n) for s, n in names.items()} == {"train": 1100, "val": 100, "test": 423, "trainval": 1200}
    assert not names["train"] & names["val"] and not names["trainval"] & names["test"]
    assert names["train"] | names["val"] == names["trainval"]
    assert len(names["trainval"] | names["test"]) == 1623
    assert parts["test"].x.shape == (423 * 20, 1, 28, 28) and parts["test"].x.dtype == torch.float32
    assert float(parts["test"].x.min()) >= 0.0 and float(parts["test"].x.max()) == 1.0
    assert val_rot.num_classes == 400 and val_rot.x.shape == (8000, 1, 28, 28)
    assert {_base(n) for n in val_rot.class_names} == names["val"]
    assert val_rot.class_names[:2] == (val_rot.class_names[0], _base(val_rot.class_names[0]) + "/rot90")
    assert val_rot.groups is not None and val_rot.groups[0] == val_rot.class_names[0].split("/")[0]
    # Same seed: same split; another seed: another split.
    assert set(om.omniglot_split(data, "val", rotations=False, seed=0).class_names) == names["val"]
    assert set(om.omniglot_split(data, "val", rotations=False, seed=1).class_names) != names["val"]


def test_omniglot_split_rotations_are_real_rotations(data: om.OmniglotData, val_rot: LabelledDataset) -> None:
    x = val_rot.x.view(100, 4, 20, 1, 28, 28)
    for j in (0, 57):
        char = data.character_names.index(_base(val_rot.class_names[4 * j]))
        assert torch.equal(x[j, 0, :, 0], data.images[char].float() / 255)
        for r in (1, 2, 3):
            assert val_rot.class_names[4 * j + r].endswith(f"/rot{90 * r}")
            assert torch.equal(x[j, r], torch.rot90(x[j, 0], r, dims=(-2, -1)))
            assert not torch.equal(x[j, r], x[j, 0])


def test_omniglot_split_lake(data: om.OmniglotData) -> None:
    parts = {s: om.omniglot_split(data, s, protocol="lake", rotations=False) for s in om.SPLITS}
    n = {s: d.num_classes for s, d in parts.items()}
    assert n["trainval"] == 964 and n["test"] == 659 and n["train"] + n["val"] == 964
    assert len(set(parts["val"].groups or ())) == 5
    assert not set(parts["train"].groups or ()) & set(parts["val"].groups or ())
    assert not set(parts["trainval"].groups or ()) & set(parts["test"].groups or ())


def test_omniglot_split_bad_arguments(data: om.OmniglotData) -> None:
    with pytest.raises(ValueError, match="protocol must be one of .* got 'foo'"):
        om.omniglot_split(data, "train", protocol="foo")
    with pytest.raises(ValueError, match="split must be one of .* got 'dev'"):
        om.omniglot_split(data, "dev")


def test_episode_sampler_omniglot_episodes(val_rot: LabelledDataset) -> None:
    batch = EpisodeSampler(
        val_rot, 5, 1, 15, tasks_per_batch=32, generator=torch.Generator().manual_seed(0)
    ).sample_batch()
    assert batch.support_x.shape == (32, 5, 1, 28, 28) and batch.query_x.shape == (32, 75, 1, 28, 28)
    for task in list(batch)[:4]:
        assert task.support_y.tolist() == list(range(5))
        assert torch.bincount(task.query_y).tolist() == [15] * 5
        s, q = task.support_x.flatten(1), task.query_x.flatten(1)
        assert not bool((s[:, None] == q[None]).all(-1).any()), "a support image is also a query image"
    a = fixed_episodes(val_rot, 5, 5, 5, 8, seed=3)
    b = fixed_episodes(val_rot, 5, 5, 5, 8, seed=3)
    c = fixed_episodes(val_rot, 5, 5, 5, 8, seed=4)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert not torch.equal(a.support_x, c.support_x)


def test_episode_sampler_omniglot_errors(val_rot: LabelledDataset) -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"n_way=401 exceeds the number of classes in the dataset \(400\)"):
        EpisodeSampler(val_rot, 401, 1, 1, generator=g)
    with pytest.raises(ValueError, match=r"k_shot \+ n_query = 15 \+ 10 = 25 .*rot0' \(class 0, 20 examples\)"):
        EpisodeSampler(val_rot, 5, 15, 10, generator=g)


def test_variable_episode_sampler_omniglot_by_alphabet(val_rot: LabelledDataset) -> None:
    sampler = VariableEpisodeSampler(val_rot, generator=torch.Generator().manual_seed(0), by_group=True)
    for _, task in zip(range(3), sampler):
        assert task.n_query == task.n_way * 10  # q = min(10, 20 // 2)
        assert 5 <= task.n_way <= 50 and task.n_support <= 500


def test_preprocess_image_matches_cached_array(data: om.OmniglotData) -> None:
    from PIL import Image

    for split, char, drawer in (("background", 0, 0), ("background", 500, 13), ("evaluation", 1622, 19)):
        name = data.character_names[char]
        entry = f"images_{split}/{name}/{data.file_ids[char]:04d}_{drawer + 1:02d}.png"
        with zipfile.ZipFile(ZIPS[split]) as zf, Image.open(io.BytesIO(zf.read(entry))) as im:
            assert im.size == (105, 105)
            x = om.preprocess_image(im, 28)
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        assert torch.equal(x[0], data.images[char, drawer].float() / 255)


def test_load_support_folder_matches_loader(data: om.OmniglotData, tmp_path: Path) -> None:
    chars = {"a": 3, "b": 1000}
    with zipfile.ZipFile(ZIPS["background"]) as bz, zipfile.ZipFile(ZIPS["evaluation"]) as ez:
        for cls, char in chars.items():
            (tmp_path / "support" / cls).mkdir(parents=True)
            split, zf = ("background", bz) if bool(data.background[char]) else ("evaluation", ez)
            for d in (1, 2):
                raw = zf.read(f"images_{split}/{data.character_names[char]}/{data.file_ids[char]:04d}_{d:02d}.png")
                (tmp_path / "support" / cls / f"{d}.png").write_bytes(raw)
    x, y, names = om.load_support_folder(tmp_path / "support")
    assert names == ("a", "b") and y.tolist() == [0, 0, 1, 1] and x.shape == (4, 1, 28, 28)
    for i, (char, d) in enumerate([(3, 0), (3, 1), (1000, 0), (1000, 1)]):
        assert torch.equal(x[i, 0], data.images[char, d].float() / 255)
    qx, files = om.load_image_folder(tmp_path / "support" / "b", image_size=14)
    assert qx.shape == (2, 1, 14, 14) and [f.name for f in files] == ["1.png", "2.png"]
    (tmp_path / "support" / "b" / "3.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"3\.png"):
        om.load_support_folder(tmp_path / "support")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        om.load_image_folder(tmp_path / "nowhere")


def test_load_omniglot_damaged_zip_names_file(tmp_path: Path) -> None:
    omni = tmp_path / "root" / "omniglot"
    omni.mkdir(parents=True)
    for p in ZIPS.values():
        shutil.copyfile(p, omni / p.name)
    bad = omni / "images_background.zip"
    raw = bytearray(bad.read_bytes())
    mid = int(len(raw) * 0.6)
    raw[mid : mid + 4096] = bytes(4096)  # corrupt compressed data in the middle
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"damaged Omniglot zip .*images_background\.zip"):
        om.load_omniglot(tmp_path / "root", cache_dir=tmp_path / "cache")
    bad.write_bytes(bytes(raw[: len(raw) // 2]))  # truncated: no central directory
    with pytest.raises(ValueError, match=r"damaged Omniglot zip .*images_background\.zip"):
        om.load_omniglot(tmp_path / "root", cache_dir=tmp_path / "cache")
    report = om.verify_omniglot(tmp_path / "root")
    assert not report["ok"] and "images_background.zip" in report["errors"][0]
    assert report["sets"]["evaluation"]["counts_ok"]


def test_load_omniglot_missing_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "omniglot").mkdir()
    with pytest.raises(FileNotFoundError, match=r"images_background\.zip"):
        om.load_omniglot(tmp_path, cache_dir=tmp_path / "cache")
    monkeypatch.delenv("METAFIT_DATA", raising=False)
    with pytest.raises(ValueError, match="root=.*METAFIT_DATA"):
        om.load_omniglot(None, cache_dir=tmp_path / "cache")


def test_verify_omniglot_report() -> None:
    report = om.verify_omniglot(DATA_ROOT)
    assert report["ok"], report["errors"]
    bg, ev = report["sets"]["background"], report["sets"]["evaluation"]
    assert bg["characters"] == 964 and ev["characters"] == 659 and bg["images"] == 19280
    assert bg["sha256_matches_manifest"] and ev["sha256_matches_manifest"] and bg["crc_ok"]
