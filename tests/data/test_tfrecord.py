"""TFRecord framing, tf.train.Example protos and Meta-Dataset source folders, without TensorFlow."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from metafit.data import tfrecord
from metafit.data.datasets import LabelledDataset
from metafit.data.metadataset import (
    MultiSourceEpisodes,
    load_metadataset_source,
    write_metadataset_source,
)
from metafit.data.sources import resolve_dataset
from metafit.data.tfrecord import (
    crc32c,
    decode_example,
    encode_example,
    masked_crc32c,
    read_tfrecords,
    write_tfrecords,
)

OMNIGLOT_ZIP = Path("/work/shared/data/omniglot/images_background.zip")


@pytest.fixture(autouse=True)
def _private_default_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loaders called without cache_dir write under $METAFIT_CACHE: keep that inside tmp_path."""
    monkeypatch.setenv("METAFIT_CACHE", str(tmp_path / "default-cache"))


def test_crc32c_known_vectors() -> None:
    # RFC 3720 appendix B.4 and the usual check value.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    data = bytes(range(256)) * 3
    assert tfrecord._crc32c_py(data) == crc32c(data)


def test_write_tfrecords_framing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.tfrecords"
    assert write_tfrecords(path, [b"abc", b""]) == 2
    raw = path.read_bytes()
    head = struct.pack("<Q", 3)
    c = crc32c(head)
    masked = ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
    first = head + struct.pack("<I", masked) + b"abc" + struct.pack("<I", masked_crc32c(b"abc"))
    assert raw.startswith(first) and len(raw) == len(first) + 16
    assert list(read_tfrecords(path)) == [b"abc", b""]


def test_read_tfrecords_refuses_corruption_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.tfrecords"
    write_tfrecords(path, [b"hello world", b"second"])
    raw = bytearray(path.read_bytes())
    bad = bytearray(raw)
    bad[14] ^= 0x01  # a data byte of record 0
    (tmp_path / "d.tfrecords").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=r"TFRecord file .*d\.tfrecords: record 0 has a bad data CRC"):
        list(read_tfrecords(tmp_path / "d.tfrecords"))
    bad = bytearray(raw)
    bad[0] ^= 0x02  # the length of record 0
    (tmp_path / "l.tfrecords").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=r"l\.tfrecords: record 0 has a bad length CRC"):
        list(read_tfrecords(tmp_path / "l.tfrecords"))
    (tmp_path / "t.tfrecords").write_bytes(bytes(raw[:-3]))
    with pytest.raises(ValueError, match=r"t\.tfrecords: record 1 is truncated"):
        list(read_tfrecords(tmp_path / "t.tfrecords"))


def test_encode_example_matches_hand_computed_proto_bytes() -> None:
    # Example{features{feature{key:"label" value{int64_list{value:[1]}}}}}, packed as TensorFlow writes it.
    want = b"\x0a\x10\x0a\x0e\x0a\x05label\x12\x05\x1a\x03\x0a\x01\x01"
    assert encode_example({"label": 1}) == want
    assert decode_example(want) == {"label": [1]}


def test_example_round_trip_and_unpacked_or_unknown_fields() -> None:
    feats = {"image": [b"\x00\xff", b"x"], "label": [-3, 2**40], "w": [0.5, -1.25], "name": "k"}
    out = decode_example(encode_example(feats))
    assert out == {"image": [b"\x00\xff", b"x"], "label": [-3, 2**40], "w": [0.5, -1.25], "name": [b"k"]}
    # Unpacked int64 values (wire type 0) and an unknown field 7 in the Example are accepted.
    int_list = b"\x08\x05\x08\x07"  # value: 5, value: 7 (unpacked)
    feature = b"\x1a" + bytes([len(int_list)]) + int_list
    entry = b"\x0a\x01y\x12" + bytes([len(feature)]) + feature
    features = b"\x0a" + bytes([len(entry)]) + entry
    example = b"\x38\x01" + b"\x0a" + bytes([len(features)]) + features
    assert decode_example(example) == {"y": [5, 7]}
    with pytest.raises(ValueError, match="malformed protobuf"):
        decode_example(b"\x0a\x50\x01")


def _images(n_classes: int, per_class: int, channels: int, size: int, seed: int) -> LabelledDataset:
    g = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (n_classes * per_class, channels, size, size), generator=g, dtype=torch.uint8)
    return LabelledDataset(
        x=u8.float() / 255,
        y=torch.arange(n_classes).repeat_interleave(per_class),
        class_names=tuple(f"s{seed}c{i}" for i in range(n_classes)),
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_metadataset_source_round_trip(tmp_path: Path, channels: int) -> None:
    splits = {
        "train": _images(4, 3, channels, 9, 0),
        "val": _images(2, 2, channels, 9, 1),
        "test": _images(3, 4, channels, 9, 2),
    }
    folder = write_metadataset_source(tmp_path / "toy", splits, name="toy")
    spec = json.loads((folder / "dataset_spec.json").read_text())
    assert spec["classes_per_split"] == {"TRAIN": 4, "VALID": 2, "TEST": 3}
    assert spec["images_per_class"]["4"] == 2
    assert sorted(p.name for p in folder.glob("*.tfrecords")) == sorted(f"{i}.tfrecords" for i in range(9))
    ds = load_metadataset_source(folder, image_size=9, channels=channels, cache_dir=tmp_path / "cache")
    assert ds.name == "toy" and list(ds.splits) == ["train", "val", "test"]
    for k, part in splits.items():
        assert ds.splits[k].class_names == part.class_names
        assert torch.equal(ds.splits[k].y, part.y)
        assert torch.equal(ds.splits[k].x, part.x)
    again = load_metadataset_source(folder, image_size=9, channels=channels, cache_dir=tmp_path / "cache")
    assert again.load_info["cache_hit"] is True and torch.equal(again.splits["test"].x, splits["test"].x)
    assert resolve_dataset(folder, image_size=9).preprocessing["format"] == "meta-dataset tfrecords"


@pytest.mark.skipif(not OMNIGLOT_ZIP.is_file(), reason="shared Omniglot zip absent")
def test_metadataset_source_round_trip_of_an_omniglot_slice(tmp_path: Path) -> None:
    from metafit.data.omniglot import preprocess_image

    with zipfile.ZipFile(OMNIGLOT_ZIP) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))[:60]  # 3 characters x 20 drawers
        x = torch.stack([preprocess_image(Image.open(io.BytesIO(zf.read(n))), 28) for n in names])
    chars = sorted({n.rsplit("/", 2)[1] for n in names})
    ds = LabelledDataset(x=x, y=torch.arange(3).repeat_interleave(20), class_names=tuple(chars))
    folder = write_metadataset_source(tmp_path / "omniglot", {"train": ds}, name="omniglot")
    back = load_metadataset_source(folder, image_size=28, channels=1, use_cache=False)
    assert torch.equal(back.splits["train"].x, x) and back.splits["train"].class_names == tuple(chars)


def _write_class(folder: Path, cid: int, n: int, size: int = 4) -> None:
    recs = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("L", (size, size), 10 * cid + i).save(buf, format="PNG")
        recs.append(encode_example({"image": buf.getvalue(), "label": cid}))
    write_tfrecords(folder / f"{cid}.tfrecords", recs)


def test_load_metadataset_source_bilevel_spec_gives_groups(tmp_path: Path) -> None:
    folder = tmp_path / "omni"
    folder.mkdir()
    # superclasses: 0 (2 classes) and 1 (1 class) train, 2 (2 classes) test; none in VALID.
    cps = {"0": 2, "1": 1, "2": 2}
    for c in range(5):
        _write_class(folder, c, 3)
    spec = {
        "__class__": "BiLevelDatasetSpecification",
        "name": "omniglot",
        "superclasses_per_split": {"TRAIN": 2, "VALID": 0, "TEST": 1},
        "classes_per_superclass": cps,
        "images_per_class": {str(c): 3 for c in range(5)},
        "superclass_names": {"0": "A", "1": "B", "2": "C"},
        "class_names": {str(c): f"char{c}" for c in range(5)},
        "path": "x",
        "file_pattern": "{}.tfrecords",
    }
    (folder / "dataset_spec.json").write_text(json.dumps(spec))
    ds = load_metadataset_source(folder, image_size=4, channels=1, use_cache=False)
    assert list(ds.splits) == ["train", "test"]
    assert ds.splits["train"].groups == ("A", "A", "B") and ds.splits["test"].groups == ("C", "C")
    assert ds.splits["test"].class_names == ("char3", "char4")
    assert float(ds.splits["test"].x[0, 0, 0, 0]) == pytest.approx(30 / 255)


def test_load_metadataset_source_hierarchical_spec_gives_a_tree(tmp_path: Path) -> None:
    folder = tmp_path / "inet"
    folder.mkdir()
    wn = [f"n{i:02d}" for i in range(8)]
    train_nodes = [
        {"wn_id": "root", "words": "", "children_ids": ["a", "b"], "parents_ids": []},
        {"wn_id": "a", "words": "", "children_ids": wn[:3], "parents_ids": ["root"]},
        {"wn_id": "b", "words": "", "children_ids": wn[3:6], "parents_ids": ["root"]},
    ] + [
        {"wn_id": w, "words": "", "children_ids": [], "parents_ids": ["a" if i < 3 else "b"]}
        for i, w in enumerate(wn[:6])
    ]
    test_nodes = [{"wn_id": "t", "words": "", "children_ids": wn[6:], "parents_ids": []}] + [
        {"wn_id": w, "words": "", "children_ids": [], "parents_ids": ["t"]} for w in wn[6:]
    ]
    for c in range(8):
        _write_class(folder, c, 4)
    spec = {
        "__class__": "HierarchicalDatasetSpecification",
        "name": "ilsvrc_2012",
        "split_subgraphs": {"TRAIN": train_nodes, "VALID": [], "TEST": test_nodes},
        "images_per_class": {"TRAIN": {w: 4 for w in wn[:6]}, "VALID": {}, "TEST": {w: 4 for w in wn[6:]}},
        "class_names": {str(i): w for i, w in enumerate(wn)},
        "path": "x",
        "file_pattern": "{}.tfrecords",
    }
    (folder / "dataset_spec.json").write_text(json.dumps(spec))
    ds = load_metadataset_source(folder, image_size=4, channels=1, use_cache=False)
    assert ds.splits["train"].class_names == tuple(wn[:6]) and ds.splits["test"].class_names == tuple(wn[6:])
    assert ds.trees["train"] == {"root": tuple(wn[:6]), "a": tuple(wn[:3]), "b": tuple(wn[3:6])}
    episodes = MultiSourceEpisodes(
        {"inet": ds.splits["train"]},
        generator=torch.Generator().manual_seed(0),
        hierarchies={"inet": ds.trees["train"]},
    )
    assert episodes.sample_task().n_way == 6  # only "root" spans >= min_ways=5 leaves


def test_load_metadataset_source_bad_records_are_named(tmp_path: Path) -> None:
    splits = {"train": _images(2, 2, 1, 4, 0)}
    folder = write_metadataset_source(tmp_path / "bad", splits, name="bad")
    raw = bytearray((folder / "1.tfrecords").read_bytes())
    raw[20] ^= 0xFF
    (folder / "1.tfrecords").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"TFRecord file .*1\.tfrecords: record 0 has a bad data CRC"):
        load_metadataset_source(folder, image_size=4, use_cache=False)
    write_tfrecords(folder / "1.tfrecords", [encode_example({"image": b"\x89PNG", "label": 0})] * 2)
    with pytest.raises(ValueError, match=r"1\.tfrecords: record 0 has label \[0\], expected class id 1"):
        load_metadataset_source(folder, image_size=4, use_cache=False)
    write_tfrecords(folder / "1.tfrecords", [encode_example({"image": b"\x89PNG", "label": 1})])
    with pytest.raises(ValueError, match=r"class 1 of .*: dataset_spec.json says 2 images, found 1"):
        load_metadataset_source(folder, image_size=4, use_cache=False)
    write_tfrecords(folder / "1.tfrecords", [encode_example({"image": b"\x89PNG", "label": 1})] * 2)
    with pytest.raises(ValueError, match=r"cannot decode image file .*1\.tfrecords record 0"):
        load_metadataset_source(folder, image_size=4, use_cache=False)
    (folder / "1.tfrecords").unlink()
    with pytest.raises(FileNotFoundError, match=r"class 1 of .*1\.tfrecords not found"):
        load_metadataset_source(folder, image_size=4, use_cache=False)
