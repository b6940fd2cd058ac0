"""Datasets from real data: image folders, arrays, tables, built-in sources, one resolver.

Every loader returns a :class:`SplitDataset`: a name, up to three class splits ``"train"`` /
``"val"`` / ``"test"`` (each a :class:`~metafit.data.datasets.LabelledDataset`, classes disjoint
between splits) and a JSON-able ``preprocessing`` record that says how raw data became model
inputs (so evaluation and prediction can apply the same transform, and a checkpoint can store it).

Sources
    * Image folders (:func:`load_image_folder_dataset`), three layouts:
      (a) ``ROOT/<class>/*.{png,jpg,jpeg,bmp,webp}``: classes split by :func:`class_split`;
      (b) ``ROOT/{train,val,test}/<class>/...``: the split folders are the splits;
      (c) ``ROOT/{train,val,test}.csv`` with header ``filename,label`` and the images in
      ``ROOT/images/`` or ``ROOT/`` (the Ravi & Larochelle mini-ImageNet layout).
    * Arrays (:func:`load_array_dataset`): ``.npz`` with ``x``/``y`` (classes split by
      :func:`class_split`) or with split keys ``x_train``/``y_train``, ``x_val``/``y_val``,
      ``x_test``/``y_test`` (the splits as given); or a pair of ``.npy`` files.
    * Tables (:func:`load_table_dataset`): CSV (Parquet when ``pyarrow`` is importable); numeric
      columns standardised with statistics of the TRAIN classes, non-numeric columns one-hot
      encoded with the categories seen in the TRAIN classes (:func:`apply_table_preprocessing`).
    * Built-ins, offline from a data root: :func:`load_fashion_mnist` (a test domain),
      :func:`load_kuzushiji_kanji` (720/180/180 classes), :func:`load_sklearn_digits` (a test
      domain), the scikit-learn tables (:func:`load_sklearn_table`, test domains) and Omniglot
      (:func:`metafit.data.omniglot.omniglot_split`).
    * :func:`resolve_dataset` maps a name or a path to one of the above.

Image conventions (the same as :mod:`metafit.data.omniglot`, so that cross-domain evaluation
compares like with like): float32 in ``[0, 1]`` computed as ``uint8 / 255``, shape ``(N, C, H, W)``;
resizing with ``PIL.Image.resize(..., BILINEAR)`` on the 8-bit image; for the grey character and
sketch sources (Omniglot, Kuzushiji-Kanji, Fashion-MNIST, digits) ink/foreground is bright (1.0)
on a dark background (0.0). Folders of natural images are not inverted.

Cache (image folders and Kuzushiji-Kanji)
    Images are decoded once into ``<cache_dir>/<name>-<key>/images.npy`` (float32, the splits
    stored one after the other) plus ``meta.json``; later loads memory-map the ``.npy``
    (``numpy.load(mmap_mode="c")``: copy-on-write, so the pages are shared with the OS file cache
    and a stray in-place write changes only the process's copy instead of crashing on a read-only
    map) and wrap it with ``torch.from_numpy`` without copying. ``key`` is a sha256 of the file
    list with sizes and modification times, the split files, the split parameters and the
    preprocessing, so any changed file or setting makes a new cache. Files are written
    atomically (temporary file + ``os.replace``; ``meta.json`` last). Default ``cache_dir``:
    ``$METAFIT_CACHE/sources`` or ``~/.cache/metafit/sources``.
"""

from __future__ import annotations

import concurrent.futures
import csv
import gzip
import hashlib
import io
import json
import math
import os
import struct
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metafit.atomic import atomic_file, download
from metafit.data.datasets import LabelledDataset

__all__ = [
    "load_image_files",
    "BUILTIN_DATASETS",
    "SKLEARN_TABLES",
    "FASHION_MNIST_CLASSES",
    "KANJI_SPLIT_SIZES",
    "SPLIT_NAMES",
    "SplitDataset",
    "apply_table_preprocessing",
    "check_split_dataset",
    "class_split",
    "convert_images",
    "download_fashion_mnist",
    "download_kuzushiji_kanji",
    "download_sklearn_digits",
    "load_array_dataset",
    "load_fashion_mnist",
    "load_image_folder_dataset",
    "load_sklearn_table",
    "load_kuzushiji_kanji",
    "load_omniglot_dataset",
    "load_sklearn_digits",
    "load_table_dataset",
    "resolve_dataset",
]

SPLIT_NAMES = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_CACHE_VERSION = 1
#: Built-in names accepted by :func:`resolve_dataset` (aliases map to the first name).
BUILTIN_DATASETS = {
    "omniglot": "omniglot",
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "kuzushiji-kanji": "kuzushiji-kanji",
    "kanji": "kuzushiji-kanji",
    "kkanji": "kuzushiji-kanji",
    "digits": "digits",
    "sklearn-digits": "digits",
    "iris": "iris",
    "wine": "wine",
    "breast-cancer": "breast-cancer",
    "breast_cancer": "breast-cancer",
    "digits-table": "digits-table",
    "digits_table": "digits-table",
}
SKLEARN_TABLES = ("iris", "wine", "breast-cancer", "digits-table")  # real tables shipped with scikit-learn
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: sha256 of the original Fashion-MNIST files (as in ``fashion-mnist/MANIFEST.txt``).
FASHION_MNIST_SHA256 = {
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
}
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{}"
#: Kuzushiji-Kanji class split (train, val, test) of the 1,080 classes: 2/3, 1/6, 1/6.
KANJI_SPLIT_SIZES = (720, 180, 180)
KANJI_ZIP = "kkanji_1080x20.zip"
#: sha256 of ``kkanji_1080x20.zip`` (``kuzushiji-kanji/MANIFEST.txt``).
KANJI_SHA256 = "3017f2c87514ca48a5cf9e3eb540083b9351bb2d7213ac6321b3519f9fc30525"
KANJI_URL = "http://codh.rois.ac.jp/kmnist/dataset/kkanji/kkanji.tar"


# -- the dataset -----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SplitDataset:
    """A dataset with disjoint class splits and the record of how it was preprocessed.

    Attributes:
        name: Short name (e.g. ``"fashion-mnist"`` or the folder name).
        splits: ``"train"`` / ``"val"`` / ``"test"`` -> :class:`LabelledDataset` (absent splits
            are simply missing; a test-domain source has only ``"test"``).
        preprocessing: JSON-able record: ``kind`` (``"image"``, ``"table"`` or ``"array"``) and,
            by kind, ``image_size``, ``channels``, value range, feature statistics, category
            encodings, the source path, the split rule...
        empty: Splits the source declares (a split folder or CSV) that hold no examples; kept so
            that :func:`check_split_dataset` can report them.
        trees: Optional class hierarchy per split: ``split -> {node: leaf class names}`` (e.g. a
            Meta-Dataset ImageNet subgraph), for hierarchical episode sampling.
        load_info: Facts about this particular load that are not part of the transform (e.g.
            ``{"cache": folder, "cache_hit": bool}``); not compared, not stored in checkpoints.
    """

    name: str
    splits: dict[str, LabelledDataset]
    preprocessing: dict[str, Any]
    empty: tuple[str, ...] = ()
    trees: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    load_info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.splits, Mapping):
            raise TypeError(f"splits must be a dict of split name -> LabelledDataset, got {type(self.splits).__name__}")
        bad = [k for k in self.splits if k not in SPLIT_NAMES]
        if bad:
            raise ValueError(f"splits must be named {SPLIT_NAMES}, got unknown split name(s) {bad}")
        for k, v in self.splits.items():
            if not isinstance(v, LabelledDataset):
                raise TypeError(f"split {k!r} must be a LabelledDataset, got {type(v).__name__}")
        if not self.splits and not self.empty:
            raise ValueError(f"dataset {self.name!r} has no split: expected at least one of {SPLIT_NAMES}")
        shapes = {k: v.example_shape for k, v in self.splits.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"every split must have the same example shape, got {shapes}")
        object.__setattr__(self, "splits", {k: self.splits[k] for k in SPLIT_NAMES if k in self.splits})

    @property
    def example_shape(self) -> tuple[int, ...]:
        """Shape of one example (shared by every split)."""
        return next(iter(self.splits.values())).example_shape

    def split(self, name: str) -> LabelledDataset:
        """The split ``name``; ValueError naming the available splits if it is absent."""
        if name not in self.splits:
            raise ValueError(
                f"dataset {self.name!r} has no {name!r} split; available: {', '.join(self.splits) or 'none'}"
            )
        return self.splits[name]

    def info(self) -> dict[str, Any]:
        """A JSON-able summary (for ``metafit data info``).

        Returns:
            ``{"name", "example_shape", "splits": {split: {"classes", "examples",
            "examples_per_class": {"min", "median", "max"}, "groups"}}, "empty_splits",
            "preprocessing"}``.
        """
        splits: dict[str, Any] = {}
        for k, ds in self.splits.items():
            sizes = ds.class_sizes().double()
            splits[k] = {
                "classes": ds.num_classes,
                "examples": len(ds),
                "examples_per_class": {
                    "min": int(sizes.min()),
                    "median": float(sizes.median()) if sizes.numel() % 2 else float(sizes.quantile(0.5)),
                    "max": int(sizes.max()),
                },
                "groups": None if ds.groups is None else len(set(ds.groups)),
            }
        return {
            "name": self.name,
            "example_shape": list(self.example_shape) if self.splits else None,
            "splits": splits,
            "empty_splits": list(self.empty),
            "hierarchy_splits": sorted(self.trees),
            "preprocessing": self.preprocessing,
            "load": self.load_info,
        }


def check_split_dataset(
    ds: SplitDataset, *, k_shot: int, n_query: int, n_way: int | None = None, required: Sequence[str] = ()
) -> None:
    """Checks that a dataset can give ``k_shot``-shot episodes with ``n_query`` queries per class.

    Args:
        ds: The dataset.
        k_shot: Support examples per class.
        n_query: Query examples per class.
        n_way: If given, every split needs at least ``n_way`` classes.
        required: Splits that must be present (e.g. ``("train", "val")`` for training).

    Raises:
        ValueError (one line): an empty or missing required split; a class with fewer than
            ``k_shot + n_query`` examples (naming the class, the split and the counts); classes
            shared between two splits (support/query leakage across splits; naming them).
    """
    if not isinstance(ds, SplitDataset):
        raise TypeError(f"ds must be a SplitDataset, got {type(ds).__name__}")
    for name, value in (("k_shot", k_shot), ("n_query", n_query)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    for split in ds.empty:
        raise ValueError(f"split {split!r} of dataset {ds.name!r} is empty: its folder or file holds no examples")
    for split in required:
        if split not in ds.splits:
            raise ValueError(
                f"dataset {ds.name!r} has no {split!r} split (required); available: {', '.join(ds.splits) or 'none'}"
            )
    need = k_shot + n_query
    for split, part in ds.splits.items():
        if n_way is not None and part.num_classes < n_way:
            raise ValueError(
                f"split {split!r} of dataset {ds.name!r} has {part.num_classes} classes, fewer than n_way={n_way}"
            )
        sizes = part.class_sizes()
        c = int(torch.argmin(sizes))
        if int(sizes[c]) < need:
            n_small = int((sizes < need).sum())
            raise ValueError(
                f"class {part.class_names[c]!r} in split {split!r} of dataset {ds.name!r} has {int(sizes[c])} "
                f"examples, but k_shot + n_query = {k_shot} + {n_query} = {need} are needed "
                f"({n_small} class(es) of {part.num_classes} are too small)"
            )
    names = list(ds.splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = sorted(set(ds.splits[a].class_names) & set(ds.splits[b].class_names))
            if shared:
                shown = ", ".join(repr(s) for s in shared[:5])
                raise ValueError(
                    f"classes shared between splits {a!r} and {b!r} of dataset {ds.name!r} (support/query "
                    f"leakage across splits): {shown}{' ...' if len(shared) > 5 else ''} ({len(shared)} in total)"
                )


def class_split(
    n_classes: int, *, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[int]]:
    """The seeded class split used by every source without split information.

    ``perm = torch.randperm(n_classes, generator=torch.Generator().manual_seed(seed))``;
    ``n_test = round(test_fraction * C)``, ``n_val = round(val_fraction * C)``, the first
    ``C - n_val - n_test`` classes of ``perm`` are train, the next ``n_val`` val, the rest test;
    each split's class ids are sorted (so a split lists its classes in name order).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` (a split may be empty).

    Raises:
        ValueError: fractions outside ``[0, 1)`` or summing to 1 or more, or no train class.
    """
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0.0 <= f < 1.0:
            raise ValueError(f"{name} must be a number in [0, 1), got {f!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 (train keeps the rest), got {val_fraction} + {test_fraction}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    n_test, n_val = round(test_fraction * n_classes), round(val_fraction * n_classes)
    n_train = n_classes - n_val - n_test
    if n_train < 1:
        raise ValueError(
            f"the class split leaves no train class: {n_classes} classes with val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}"
        )
    perm = torch.randperm(n_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    return {
        "train": sorted(perm[:n_train]),
        "val": sorted(perm[n_train : n_train + n_val]),
        "test": sorted(perm[n_train + n_val :]),
    }


def _check_size(image_size: object, name: str = "image_size") -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"{name} must be an int >= 1, got {image_size!r}")
    return image_size


def _check_channels(channels: object) -> int | str:
    if channels not in (1, 3, "auto") or isinstance(channels, bool):
        raise ValueError(f"channels must be 1, 3 or 'auto', got {channels!r}")
    return channels  # type: ignore[return-value]


# -- cache -----------------------------------------------------------------------------------------


def _default_cache_dir() -> Path:
    env = os.environ.get("METAFIT_CACHE")
    return Path(env).expanduser() / "sources" if env else Path.home() / ".cache" / "metafit" / "sources"


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    with atomic_file(path) as tmp, open(tmp, mode) as f:
        write(f)


def _from_numpy(arr: np.ndarray) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only array (never the case with mmap "c")
        return torch.from_numpy(arr)


def _cached(
    cache_dir: str | Path | None,
    use_cache: bool,
    name: str,
    key_material: Any,
    build: Callable[[], tuple[np.ndarray, dict[str, Any]]],
) -> tuple[Tensor, dict[str, Any], dict[str, Any]]:
    """``(x, meta, load_info)`` for the uint8 ``(N, ...)`` array built by ``build``.

    ``x`` is float32 ``uint8 / 255``. With the cache it is written chunk by chunk into
    ``images.npy`` (so the float copy never sits in memory twice) and memory-mapped back.
    """
    if not use_cache:
        u8, meta = build()
        return torch.from_numpy(_to_float(u8)), meta, {"cache": None, "cache_hit": False}
    key = hashlib.sha256(json.dumps([_CACHE_VERSION, key_material], sort_keys=True).encode()).hexdigest()[:24]
    folder = (Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()) / f"{name}-{key}"
    npy, meta_path = folder / "images.npy", folder / "meta.json"
    if npy.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            arr = np.load(npy, mmap_mode="c", allow_pickle=False)
            if list(arr.shape) == meta["shape"] and arr.dtype == np.float32:
                return _from_numpy(arr), meta, {"cache": str(folder), "cache_hit": True}
        except (OSError, ValueError, KeyError):
            pass
    u8, meta = build()
    meta = dict(meta, shape=list(u8.shape))
    try:
        with atomic_file(npy) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=u8.shape)
            step = max(1, (1 << 24) // max(1, int(np.prod(u8.shape[1:]))))  # ~64 MB of float32 per chunk
            for i in range(0, u8.shape[0], step):
                out[i : i + step] = _to_float(u8[i : i + step])
            out.flush()
            del out
        _atomic_write(meta_path, lambda f: json.dump(meta, f), mode="w")
        arr = np.load(npy, mmap_mode="c", allow_pickle=False)
    except OSError as e:
        warnings.warn(f"could not write the dataset cache {folder}: {e}", RuntimeWarning, stacklevel=3)
        return torch.from_numpy(_to_float(u8)), meta, {"cache": None, "cache_hit": False}
    return _from_numpy(arr), meta, {"cache": str(folder), "cache_hit": False}


# -- image decoding --------------------------------------------------------------------------------


def _decode_image(source: Path | bytes, label: str, image_size: int, mode: str) -> np.ndarray:
    """One image -> uint8 ``(C, S, S)``: alpha onto white, ``convert(mode)``, 8-bit bilinear resize."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                im2 = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            else:
                im2 = im
            im2 = im2.convert(mode)
            if im2.size != (image_size, image_size):
                im2 = im2.resize((image_size, image_size), Image.Resampling.BILINEAR)
            arr = np.asarray(im2, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as e:
        raise ValueError(f"cannot decode image file {label}: unreadable or truncated image ({e})") from e
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_image_files(paths: Sequence[str | Path], *, image_size: int, channels: int) -> Tensor:
    """Decodes image files exactly as :func:`load_image_folder_dataset` does (for ``predict``).

    Args:
        paths: Image files.
        image_size: Output side.
        channels: 1 (grey) or 3 (RGB).

    Returns:
        float32 ``(len(paths), channels, image_size, image_size)`` in ``[0, 1]``.

    Raises:
        ValueError: an unreadable or truncated image (the message names the file).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    items = [(Path(p), str(p)) for p in paths]
    return _from_numpy(_to_float(_decode_many(items, _check_size(image_size), "L" if channels == 1 else "RGB", 1)))


def _decode_many(items: Sequence[tuple[Path | bytes, str]], image_size: int, mode: str, workers: int) -> np.ndarray:
    c = 1 if mode == "L" else 3
    out = np.empty((len(items), c, image_size, image_size), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = _decode_image(items[i][0], items[i][1], image_size, mode)

    if workers <= 1 or len(items) < 64:
        for i in range(len(items)):
            work(i)
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(work, range(len(items))))
    return out


def _to_float(u8: np.ndarray) -> np.ndarray:
    """``uint8 / 255`` in float32 (the single scaling rule, as in Omniglot)."""
    return u8.astype(np.float32) / np.float32(255.0)


def _channel_stats(u8: np.ndarray) -> dict[str, list[float]]:
    """Per-channel mean and (population) std of ``uint8 (N, C, H, W) / 255``, in float64 chunks."""
    c = u8.shape[1]
    total, sq, count = np.zeros(c), np.zeros(c), 0
    step = max(1, (1 << 22) // max(1, int(np.prod(u8.shape[1:]))))
    for i in range(0, u8.shape[0], step):
        v = u8[i : i + step].astype(np.float64) / 255.0
        total += v.sum(axis=(0, 2, 3))
        sq += (v * v).sum(axis=(0, 2, 3))
        count += v.shape[0] * v.shape[2] * v.shape[3]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(sq / max(count, 1) - mean * mean, 0.0))
    return {"mean": [round(float(m), 6) for m in mean], "std": [round(float(x), 6) for x in std]}


def _image_files(folder: Path) -> tuple[list[Path], int]:
    files, ignored = [], 0
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p)
        else:
            ignored += 1
    return files, ignored


def _class_dirs(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]


def _split_folders(root: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in _class_dirs(root):
        split = _SPLIT_ALIASES.get(p.name.lower())
        if split is not None:
            if split in out:
                raise ValueError(
                    f"image folder {root} has two folders for split {split!r}: {out[split].name}, {p.name}"
                )
            out[split] = p
    return out


def _read_split_csv(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        if "filename" not in cols or "label" not in cols:
            raise ValueError(
                f"split file {path} must have the header 'filename,label'; found columns {', '.join(cols) or 'none'}"
            )
        return [(row["filename"], row["label"]) for row in reader]


def load_image_folder_dataset(
    root: str | Path,
    *,
    image_size: int = 84,
    channels: int | str = 3,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    num_workers: int | None = None,
) -> SplitDataset:
    """Loads a folder of class-labelled images (layouts (a), (b), (c) of the module docstring).

    Layout detection: any of ``train.csv`` / ``val.csv`` / ``test.csv`` in ``ROOT`` -> (c);
    else sub-folders named ``train`` / ``val`` (or ``valid``, ``validation``) / ``test`` -> (b);
    else every non-hidden sub-folder is a class -> (a). Classes are named by their folder (or CSV
    label); within a split, class ids follow sorted names and images sorted file names. Hidden
    files are skipped, other non-image files ignored (counted in ``preprocessing``).

    Args:
        root: The folder.
        image_size: Output side ``S`` (images of any size are stretched to ``S x S``).
        channels: 3 (RGB), 1 (grey, ``PIL convert("L")``) or ``"auto"`` (1 if every decoded image
            has R == G == B, else 3).
        cache_dir: Cache folder (module docstring).
        use_cache: False decodes every time and writes nothing.
        val_fraction: Layout (a): share of classes for val (:func:`class_split`).
        test_fraction: Layout (a): share of classes for test.
        seed: Layout (a): seed of the class split.
        num_workers: Decoding threads (default ``min(4, cpu_count)``).

    Returns:
        :class:`SplitDataset` with float32 ``x (N, C, S, S)`` in ``[0, 1]``.

    Raises:
        FileNotFoundError, NotADirectoryError: a missing folder or an image named in a CSV that
            is in neither ``ROOT/images`` nor ``ROOT``.
        ValueError: an unreadable/truncated image (naming the file), a class folder without
            images, a CSV without ``filename,label``, no classes at all.
    """
    base = Path(root).expanduser()
    if not base.exists():
        raise FileNotFoundError(f"image folder {base} does not exist")
    if not base.is_dir():
        raise NotADirectoryError(f"image folder {base} is not a folder")
    size = _check_size(image_size)
    chan = _check_channels(channels)
    # entries[split] = [(class name, [files])]
    entries: dict[str, list[tuple[str, list[Path]]]] = {}
    declared: list[str] = []
    ignored = 0
    key_files: list[Path] = []
    csvs = {s: base / f"{s}.csv" for s in SPLIT_NAMES if (base / f"{s}.csv").is_file()}
    if csvs:
        layout = "csv"
        image_dir = base / "images" if (base / "images").is_dir() else base
        for split, path in csvs.items():
            declared.append(split)
            key_files.append(path)
            by_class: dict[str, list[Path]] = {}
            for fname, label in _read_split_csv(path):
                p = image_dir / fname
                if not p.is_file():
                    alt = base / fname
                    if not alt.is_file():
                        raise FileNotFoundError(
                            f"image {fname!r} listed in {path} is in neither {image_dir} nor {base}"
                        )
                    p = alt
                by_class.setdefault(label, []).append(p)
            entries[split] = [(c, by_class[c]) for c in sorted(by_class)]
    else:
        folders = _split_folders(base)
        if folders:
            layout = "split-folders"
            groups = {s: _class_dirs(p) for s, p in folders.items()}
            declared = list(folders)
        else:
            layout = "class-folders"
            groups = {"all": _class_dirs(base)}
            if not groups["all"]:
                raise ValueError(
                    f"image folder {base} holds no class sub-folders, split folders (train/val/test) or split CSV "
                    "files (train.csv/val.csv/test.csv)"
                )
        for split, class_dirs in groups.items():
            items = []
            for d in class_dirs:
                files, n_ign = _image_files(d)
                ignored += n_ign
                if not files:
                    raise ValueError(
                        f"class folder {d} holds no images (expected files ending in {', '.join(IMAGE_SUFFIXES)})"
                    )
                items.append((d.name, files))
            entries[split] = items
        if layout == "class-folders":
            items = entries.pop("all")
            parts = class_split(len(items), val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
            entries = {s: [items[i] for i in ids] for s, ids in parts.items() if ids}
    order = [s for s in SPLIT_NAMES if entries.get(s)]
    empty = tuple(s for s in SPLIT_NAMES if s in declared and not entries.get(s))
    flat: list[Path] = [f for s in order for _, files in entries[s] for f in files]
    if not flat:
        raise ValueError(f"image folder {base} holds no images")
    listing = []
    for p in flat + key_files:
        st = p.stat()
        listing.append([str(p.relative_to(base)) if p.is_relative_to(base) else str(p), st.st_size, st.st_mtime_ns])
    prep: dict[str, Any] = {
        "kind": "image",
        "source": str(base),
        "layout": layout,
        "image_size": size,
        "channels": chan,
        "resize": "PIL.Image.resize BILINEAR on the 8-bit image (stretched to a square)",
        "value_range": [0.0, 1.0],
        "scaling": "uint8 / 255",
        "alpha": "composited onto white",
        "invert": False,
        # channel_stats: per-channel mean/std of the train split in [0, 1] (recorded, not applied)
    }
    if layout == "class-folders":
        prep["class_split"] = {
            "rule": "metafit.data.sources.class_split",
            "seed": seed,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
        }
    workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)

    def build() -> tuple[np.ndarray, dict[str, Any]]:
        mode = "L" if chan == 1 else "RGB"
        u8 = _decode_many([(p, str(p)) for p in flat], size, mode, workers)
        out_channels = chan
        if chan == "auto":
            grey = bool((u8[:, 0] == u8[:, 1]).all() and (u8[:, 1] == u8[:, 2]).all())
            out_channels = 1 if grey else 3
            if grey:
                u8 = u8[:, :1]
        n_stat = sum(len(f) for _, f in entries["train"]) if "train" in entries else u8.shape[0]
        return u8, {"channels": out_channels, "stats": _channel_stats(u8[:n_stat])}

    x, meta, load_info = _cached(cache_dir, use_cache, _safe_name(base.name), [listing, prep], build)
    prep["channels"] = meta["channels"]
    prep["channel_stats"] = dict(meta["stats"], split="train" if "train" in entries else "all")
    if ignored:
        prep["ignored_files"] = ignored
    splits: dict[str, LabelledDataset] = {}
    start = 0
    for s in order:
        counts = [len(files) for _, files in entries[s]]
        n = sum(counts)
        splits[s] = LabelledDataset(
            x=x[start : start + n],
            y=torch.arange(len(counts)).repeat_interleave(torch.tensor(counts)),
            class_names=tuple(c for c, _ in entries[s]),
        )
        start += n
    return SplitDataset(name=base.name, splits=splits, preprocessing=prep, empty=empty, load_info=load_info)


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:40] or "dataset"


# -- arrays ----------------------------------------------------------------------------------------


def _array_x(x: np.ndarray, where: str) -> tuple[Tensor, str]:
    if x.ndim < 2:
        raise ValueError(f"{where}: x must have shape (N, *example_shape), got shape {x.shape}")
    if x.dtype == np.uint8:
        return torch.from_numpy(_to_float(x)), "uint8 / 255"
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{where}: x must be a numeric array, got dtype {x.dtype}")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), "float32 cast"


def _array_y(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{where}: y must have shape ({n},) to match x, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: y must hold integer class labels, got dtype {y.dtype}")
    return y.astype(np.int64)


def _labelled(x: Tensor, y: np.ndarray, keep: Sequence[int] | None = None) -> LabelledDataset:
    """Dataset of the rows of ``x`` whose label is in ``keep`` (all labels if None), grouped by class."""
    labels = np.unique(y) if keep is None else np.asarray(sorted(keep), dtype=np.int64)
    idx = [np.flatnonzero(y == v) for v in labels]
    sel = torch.from_numpy(np.concatenate(idx))
    return LabelledDataset(
        x=x[sel],
        y=torch.arange(len(labels)).repeat_interleave(torch.tensor([len(i) for i in idx])),
        class_names=tuple(str(int(v)) for v in labels),
    )


def load_array_dataset(
    path: str | Path,
    *,
    labels_path: str | Path | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> SplitDataset:
    """Loads labelled arrays.

    Conventions:
        * ``.npz`` with keys ``x`` (``(N, *example_shape)``) and ``y`` (``(N,)`` int labels): the
          distinct labels are classes, split by :func:`class_split` (``seed``, fractions).
        * ``.npz`` with split keys ``x_train``/``y_train``, ``x_val``/``y_val``,
          ``x_test``/``y_test`` (any non-empty subset of the three pairs): the splits as given
          (labels must then be disjoint between splits; see :func:`check_split_dataset`).
        * ``.npy``: ``path`` holds ``x``; the labels come from ``labels_path`` or, by default, the
          sibling file whose name replaces a final ``x`` of the stem by ``y`` (``x.npy`` ->
          ``y.npy``, ``train_x.npy`` -> ``train_y.npy``).

        ``uint8`` inputs are scaled by ``1/255``; other numeric inputs are cast to float32
        unchanged. Class names are ``str(label)``.

    Raises:
        FileNotFoundError: a missing file. ValueError: missing keys, mismatched shapes, non-integer
            labels.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"array file {p} does not exist")
    prep: dict[str, Any] = {"kind": "array", "source": str(p)}
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            split_keys = [s for s in SPLIT_NAMES if f"x_{s}" in keys]
            if split_keys:
                splits = {}
                for s in split_keys:
                    if f"y_{s}" not in keys:
                        raise ValueError(f"{p}: key x_{s} has no matching y_{s}; keys: {', '.join(sorted(keys))}")
                    x, prep["scaling"] = _array_x(z[f"x_{s}"], f"{p} x_{s}")
                    y = _array_y(z[f"y_{s}"], x.shape[0], f"{p} y_{s}")
                    splits[s] = _labelled(x, y)
                prep["class_split"] = {"rule": "npz split keys x_<split>/y_<split>"}
                return SplitDataset(name=p.stem, splits=splits, preprocessing=prep)
            if "x" not in keys or "y" not in keys:
                raise ValueError(
                    f"{p} must hold keys 'x' and 'y' (or x_train/y_train, x_val/y_val, x_test/y_test); "
                    f"found {', '.join(sorted(keys)) or 'none'}"
                )
            x_np, y_np = z["x"], z["y"]
    elif p.suffix == ".npy":
        if labels_path is None:
            stem = p.stem
            if not stem.endswith("x"):
                raise ValueError(f"{p}: pass labels_path= (no default label file for a stem not ending in 'x')")
            labels_path = p.with_name(stem[:-1] + "y" + p.suffix)
        lp = Path(labels_path).expanduser()
        if not lp.is_file():
            raise FileNotFoundError(f"label file {lp} for {p} does not exist")
        x_np, y_np = np.load(p, allow_pickle=False), np.load(lp, allow_pickle=False)
        prep["labels"] = str(lp)
    else:
        raise ValueError(f"array file {p} must end in .npz or .npy, got {p.suffix!r}")
    x, prep["scaling"] = _array_x(x_np, f"{p} x")
    y = _array_y(y_np, x.shape[0], f"{p} y")
    labels = np.unique(y)
    parts = class_split(len(labels), val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    prep["class_split"] = {
        "rule": "metafit.data.sources.class_split",
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
    }
    splits = {s: _labelled(x, y, [int(labels[i]) for i in ids]) for s, ids in parts.items() if ids}
    return SplitDataset(name=p.stem, splits=splits, preprocessing=prep)


# -- tables ----------------------------------------------------------------------------------------


def _read_table(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq  # type: ignore[import-not-found]
        except ImportError as e:
            raise ValueError(f"reading {path} needs pyarrow (pip install pyarrow), which is not importable") from e
        table = pq.read_table(path)
        return list(table.column_names), table.to_pylist()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = list(reader.fieldnames or [])
        rows = list(reader)
    return cols, rows


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip() == "") or (isinstance(v, float) and math.isnan(v))


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    try:
        f = float(str(v).strip())
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def load_table_dataset(
    path: str | Path,
    *,
    label_column: str,
    feature_columns: Sequence[str] | None = None,
    drop_columns: Sequence[str] = (),
    split_column: str | None = None,
    encode_categorical: bool = True,
    max_categories: int = 50,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> SplitDataset:
    """Loads a table whose rows are examples and one column the class label.

    Classes are the distinct label values (as strings), split by :func:`class_split` unless
    ``split_column`` names a column with values ``train``/``val``/``test``. Features (all columns
    but the label, split and dropped ones, in table order, or ``feature_columns``):

    * numeric columns (every non-empty value parses as a finite float): ``(v - mean) / std`` with
      the mean and the population std of the TRAIN-class rows (std 0 -> 1); empty cells -> the
      mean (0 after standardising);
    * other columns: one-hot over the categories seen in the TRAIN-class rows (sorted); an empty
      cell or a category unseen in train -> all zeros.

    The transform is recorded in ``preprocessing`` and applied by
    :func:`apply_table_preprocessing` (also to the loaded rows, so the two cannot drift).

    Raises:
        ValueError: the label (or split/feature) column is missing (naming it and listing the
            columns); a non-numeric column with ``encode_categorical=False``; a column with more
            than ``max_categories`` train categories (free text or an id); no feature column.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"table {p} does not exist")
    cols, rows = _read_table(p)
    for what, col in (("label_column", label_column), ("split_column", split_column)):
        if col is not None and col not in cols:
            raise ValueError(f"{what} {col!r} is not a column of {p}; columns: {', '.join(cols)}")
    if not rows:
        raise ValueError(f"table {p} has no rows")
    skip = {label_column, split_column, *drop_columns}
    if feature_columns is None:
        features = [c for c in cols if c not in skip]
    else:
        features = list(feature_columns)
        bad = [c for c in features if c not in cols]
        if bad:
            raise ValueError(f"feature column {bad[0]!r} is not a column of {p}; columns: {', '.join(cols)}")
    if not features:
        raise ValueError(f"table {p} has no feature column besides label_column {label_column!r}")
    labels = [str(r[label_column]).strip() for r in rows]
    bad_rows = [i for i, v in enumerate(labels) if _missing(rows[i][label_column])]
    if bad_rows:
        raise ValueError(
            f"label_column {label_column!r} of {p} is empty in {len(bad_rows)} row(s), e.g. row {bad_rows[0] + 2}"
        )
    classes = sorted(set(labels))
    if split_column is not None:
        split_of = {}
        for i, r in enumerate(rows):
            s = _SPLIT_ALIASES.get(str(r[split_column]).strip().lower())
            if s is None:
                raise ValueError(
                    f"split_column {split_column!r} of {p} must hold train/val/test, got {r[split_column]!r} "
                    f"in row {i + 2}"
                )
            split_of[i] = s
        members = {s: sorted({labels[i] for i in split_of if split_of[i] == s}) for s in SPLIT_NAMES}
        prep_split: dict[str, Any] = {"rule": f"column {split_column!r}"}
    else:
        parts = class_split(len(classes), val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        members = {s: [classes[i] for i in ids] for s, ids in parts.items()}
        prep_split = {
            "rule": "metafit.data.sources.class_split",
            "seed": seed,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
        }
        split_of = {}
        where = {c: s for s, cs in members.items() for c in cs}
        for i, c in enumerate(labels):
            split_of[i] = where[c]
    train_rows = [r for i, r in enumerate(rows) if split_of[i] == "train"]
    if not train_rows:
        raise ValueError(f"table {p}: no row belongs to a train class; the feature statistics need train rows")
    specs: list[dict[str, Any]] = []
    for c in features:
        values = [r.get(c) for r in rows]
        nonmissing = [v for v in values if not _missing(v)]
        numeric = bool(nonmissing) and all(_as_float(v) is not None for v in nonmissing)
        if numeric:
            tv = np.array([_as_float(r.get(c)) for r in train_rows if not _missing(r.get(c))], dtype=np.float64)
            mean = float(tv.mean()) if tv.size else 0.0
            std = float(tv.std()) if tv.size else 1.0
            specs.append({"name": c, "type": "numeric", "mean": mean, "std": std if std > 0 else 1.0})
            continue
        example = next(v for v in nonmissing if _as_float(v) is None) if nonmissing else None
        if not encode_categorical:
            raise ValueError(
                f"column {c!r} of {p} is not numeric (e.g. {example!r}) and encode_categorical=False: drop it "
                f"(drop_columns=[{c!r}]) or enable one-hot encoding"
            )
        cats = sorted({str(r.get(c)).strip() for r in train_rows if not _missing(r.get(c))})
        if len(cats) > max_categories:
            raise ValueError(
                f"column {c!r} of {p} has {len(cats)} distinct non-numeric values in the train classes (more than "
                f"max_categories={max_categories}; free text or an id?): drop it (drop_columns=[{c!r}]) or raise "
                "max_categories"
            )
        specs.append({"name": c, "type": "categorical", "categories": cats})
    names = []
    for s in specs:
        names.extend([s["name"]] if s["type"] == "numeric" else [f"{s['name']}={v}" for v in s["categories"]])
    if not names:
        raise ValueError(f"table {p}: the feature columns give no feature (every categorical column is empty in train)")
    prep = {
        "kind": "table",
        "source": str(p),
        "label_column": label_column,
        "columns": specs,
        "feature_names": names,
        "n_features": len(names),
        "standardise": "train classes: (v - mean) / std (population std; 0 -> 1); empty -> mean",
        "categorical": "one-hot over train categories; unseen or empty -> all zeros",
        "class_split": prep_split,
    }
    x_all = apply_table_preprocessing(prep, rows)
    index = {c: i for i, c in enumerate(classes)}
    y_arr = np.array([index[c] for c in labels], dtype=np.int64)
    s_arr = np.array([split_of[i] for i in range(len(rows))])
    splits: dict[str, LabelledDataset] = {}
    for s in SPLIT_NAMES:
        cs = members[s]
        if not cs:
            continue
        sel = [np.flatnonzero((y_arr == index[c]) & (s_arr == s)) for c in cs]
        idx = torch.from_numpy(np.concatenate(sel))
        splits[s] = LabelledDataset(
            x=x_all[idx],
            y=torch.arange(len(cs)).repeat_interleave(torch.tensor([len(v) for v in sel])),
            class_names=tuple(cs),
        )
    return SplitDataset(name=p.stem, splits=splits, preprocessing=prep)


def apply_table_preprocessing(preprocessing: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> Tensor:
    """Applies a recorded table transform (from :func:`load_table_dataset`) to new rows.

    Args:
        preprocessing: The ``preprocessing`` dict of a table :class:`SplitDataset` (or as stored in
            a checkpoint).
        rows: Mappings column name -> raw value (strings as read from a CSV, or numbers); extra
            columns (e.g. the label) are ignored.

    Returns:
        float32 ``(len(rows), n_features)``.

    Raises:
        ValueError: not a table record, a row missing a feature column, or a non-numeric value
            in a numeric column (naming the row and column).
    """
    if preprocessing.get("kind") != "table":
        raise ValueError(f"preprocessing must be a table record (kind 'table'), got kind {preprocessing.get('kind')!r}")
    specs = preprocessing["columns"]
    out = np.zeros((len(rows), int(preprocessing["n_features"])), dtype=np.float32)
    for i, row in enumerate(rows):
        j = 0
        for s in specs:
            c = s["name"]
            if c not in row:
                raise ValueError(
                    f"row {i} has no column {c!r}; the table transform needs columns "
                    f"{', '.join(t['name'] for t in specs)}"
                )
            v = row[c]
            if s["type"] == "numeric":
                if _missing(v):
                    out[i, j] = 0.0
                else:
                    f = _as_float(v)
                    if f is None:
                        raise ValueError(f"row {i}, column {c!r}: expected a number, got {v!r}")
                    out[i, j] = (f - s["mean"]) / s["std"]
                j += 1
            else:
                cats = s["categories"]
                if not _missing(v):
                    key = str(v).strip()
                    k = _bisect(cats, key)
                    if k is not None:
                        out[i, j + k] = 1.0
                j += len(cats)
    return torch.from_numpy(out)


def _bisect(sorted_list: Sequence[str], key: str) -> int | None:
    import bisect

    k = bisect.bisect_left(sorted_list, key)
    return k if k < len(sorted_list) and sorted_list[k] == key else None


# -- built-in sources ------------------------------------------------------------------------------


def _data_root(root: str | Path | None, what: str) -> Path:
    if root is None:
        env = os.environ.get("METAFIT_DATA")
        if not env:
            raise ValueError(f"no data root for {what}: pass root=<folder> or set METAFIT_DATA (neither is set)")
        root = env
    return Path(root).expanduser()


def _resize_u8(u8: np.ndarray, image_size: int) -> np.ndarray:
    """``(N, H, W)`` uint8 -> ``(N, S, S)`` with PIL bilinear on the 8-bit images (no-op at size)."""
    from PIL import Image

    if u8.shape[1:] == (image_size, image_size):
        return u8
    out = np.empty((u8.shape[0], image_size, image_size), dtype=np.uint8)
    for i in range(u8.shape[0]):
        out[i] = np.asarray(
            Image.fromarray(u8[i], mode="L").resize((image_size, image_size), Image.Resampling.BILINEAR), dtype=np.uint8
        )
    return out


def _read_idx(path: Path, magic: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read {path}: not a valid gzip'd IDX file ({e})") from e
    if len(data) < 8 or struct.unpack(">I", data[:4])[0] != magic:
        raise ValueError(f"{path}: expected IDX magic {magic}, got {data[:4].hex()}")
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes), found {body.size} bytes")
    return body.reshape(dims)


def load_fashion_mnist(root: str | Path | None = None, *, image_size: int = 28, subset: str = "t10k") -> SplitDataset:
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv 1708.07747) as a cross-domain TEST domain.

    Reads ``<root>/fashion-mnist/{t10k,train}-{images-idx3,labels-idx1}-ubyte.gz``. Only 10
    classes, so all of them are in the ``"test"`` split (5-way episodes over 10 classes); there is
    no train/val split. Fashion-MNIST is already bright objects on a black background, which is
    the Omniglot polarity (no inversion); ``uint8 / 255``, resized with PIL bilinear when
    ``image_size != 28``.

    Args:
        root: Data root holding ``fashion-mnist/`` (default ``$METAFIT_DATA``).
        image_size: Output side.
        subset: ``"t10k"`` (10,000 images, 1,000 per class; default), ``"train"`` (60,000) or
            ``"all"`` (70,000).

    Returns:
        :class:`SplitDataset` with ``splits == {"test": ...}``, ``x (N, 1, S, S)``.
    """
    size = _check_size(image_size)
    if subset not in ("t10k", "train", "all"):
        raise ValueError(f"subset must be 't10k', 'train' or 'all', got {subset!r}")
    folder = _data_root(root, "fashion-mnist") / "fashion-mnist"
    parts = ("t10k", "train") if subset == "all" else (subset,)
    xs, ys = [], []
    for part in parts:
        ip, lp = folder / f"{part}-images-idx3-ubyte.gz", folder / f"{part}-labels-idx1-ubyte.gz"
        for f in (ip, lp):
            if not f.is_file():
                raise FileNotFoundError(f"Fashion-MNIST file {f} not found (download_fashion_mnist fetches it)")
        imgs, labels = _read_idx(ip, 2051), _read_idx(lp, 2049)
        if imgs.shape[0] != labels.shape[0]:
            raise ValueError(f"{ip} holds {imgs.shape[0]} images but {lp} {labels.shape[0]} labels")
        xs.append(imgs)
        ys.append(labels.astype(np.int64))
    u8, y = np.concatenate(xs), np.concatenate(ys)
    x = torch.from_numpy(_to_float(_resize_u8(u8, size)[:, None]))
    test = _labelled(x, y)
    test = LabelledDataset(
        x=test.x, y=test.y, class_names=tuple(FASHION_MNIST_CLASSES[int(c)] for c in test.class_names)
    )
    prep = {
        "kind": "image",
        "source": str(folder),
        "image_size": size,
        "channels": 1,
        "subset": subset,
        "polarity": "bright object (1.0) on black (0.0), as stored; no inversion (Omniglot convention)",
        "resize": "PIL.Image.resize BILINEAR on the 8-bit image",
        "scaling": "uint8 / 255",
        "value_range": [0.0, 1.0],
        "class_split": {"rule": "test domain: all 10 classes in 'test'"},
    }
    return SplitDataset(name="fashion-mnist", splits={"test": test}, preprocessing=prep)


def download_fashion_mnist(root: str | Path | None = None, *, timeout: float = 60.0) -> Path:
    """Downloads the four Fashion-MNIST IDX files into ``<root>/fashion-mnist/`` (NEEDS A NETWORK).

    Source: ``http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/<file>`` (the upstream
    README's links). Each file is downloaded to a temporary file, checked against
    ``FASHION_MNIST_SHA256`` and moved into place; valid files already present are kept.

    Raises:
        RuntimeError: a network error (naming the URL). ValueError: a checksum mismatch.
    """

    folder = _data_root(root, "fashion-mnist") / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for name, sha in FASHION_MNIST_SHA256.items():
        target = folder / name
        if target.is_file() and _sha256(target) == sha:
            continue
        download(
            FASHION_MNIST_URL.format(name),
            target,
            timeout=timeout,
            check=lambda tmp, sha=sha: None if (got := _sha256(tmp)) == sha else f"sha256 {got}, expected {sha}",
        )
    return folder


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_kuzushiji_kanji(
    root: str | Path | None = None,
    *,
    image_size: int = 28,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> SplitDataset:
    """Kuzushiji-Kanji (Clanuwat et al. 2018, arXiv 1812.01718), the 1,080-class x 20-image subset.

    Reads ``<root>/kuzushiji-kanji/kkanji_1080x20.zip`` (entries ``kkanji/U+XXXX/<name>.png``,
    64x64 grey, white ink on black: already the Omniglot polarity, so no inversion). Each image
    goes through exactly Omniglot's pipeline (:func:`metafit.data.omniglot._preprocess_u8` with
    ``invert=False``: grey, 8-bit PIL bilinear resize) and ``uint8 / 255``.

    Class split (no official one exists): classes sorted by code point; ``torch.randperm(1080,
    generator=manual_seed(seed))``; the first 720 are train, the next 180 val, the last 180 test
    (``KANJI_SPLIT_SIZES``; 2/3 : 1/6 : 1/6, enough val classes for 20-way model selection and
    test classes for 50-way Meta-Dataset episodes). Decoded images are cached (module docstring).

    Returns:
        :class:`SplitDataset` with ``x (N, 1, S, S)``; class names ``"U+XXXX"``.
    """
    from metafit.data.omniglot import _preprocess_u8

    size = _check_size(image_size)
    zpath = _data_root(root, "kuzushiji-kanji") / "kuzushiji-kanji" / KANJI_ZIP
    if not zpath.is_file():
        raise FileNotFoundError(f"Kuzushiji-Kanji archive {zpath} not found (see download_kuzushiji_kanji)")
    try:
        with zipfile.ZipFile(zpath) as zf:
            names = sorted(n for n in zf.namelist() if n.lower().endswith(".png"))
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"damaged Kuzushiji-Kanji zip {zpath}: {e}") from e
    by_class: dict[str, list[str]] = {}
    for n in names:
        parts = n.split("/")
        if len(parts) >= 3:
            by_class.setdefault(parts[-2], []).append(n)
    classes = sorted(by_class)
    counts = [len(by_class[c]) for c in classes]
    total = sum(KANJI_SPLIT_SIZES)
    if len(classes) != total:
        raise ValueError(f"{zpath}: expected {total} class folders kkanji/U+XXXX/, found {len(classes)}")
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).tolist()
    n_tr, n_va, _ = KANJI_SPLIT_SIZES
    split_ids = {
        "train": sorted(perm[:n_tr]),
        "val": sorted(perm[n_tr : n_tr + n_va]),
        "test": sorted(perm[n_tr + n_va :]),
    }
    order = [c for s in SPLIT_NAMES for c in split_ids[s]]
    st = zpath.stat()
    prep = {
        "kind": "image",
        "source": str(zpath),
        "image_size": size,
        "channels": 1,
        "polarity": "white ink (1.0) on black (0.0), as stored; no inversion (Omniglot convention)",
        "resize": "PIL.Image.resize BILINEAR on the 8-bit image (metafit.data.omniglot pipeline)",
        "scaling": "uint8 / 255",
        "value_range": [0.0, 1.0],
        "class_split": {"rule": "randperm(1080, manual_seed(seed)) -> 720/180/180", "seed": seed},
    }

    def build() -> tuple[np.ndarray, dict[str, Any]]:
        from PIL import Image, UnidentifiedImageError

        out = np.empty((sum(counts), 1, size, size), dtype=np.uint8)
        i = 0
        with zipfile.ZipFile(zpath) as zf:
            for c in order:
                for entry in by_class[classes[c]]:
                    try:
                        with Image.open(io.BytesIO(zf.read(entry))) as im:
                            im.load()
                            out[i, 0] = _preprocess_u8(im, size, False)
                    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, zipfile.BadZipFile) as e:
                        raise ValueError(f"cannot decode image {entry} in {zpath}: {e}") from e
                    i += 1
        return out, {"channels": 1}

    key = [str(zpath), st.st_size, st.st_mtime_ns, prep]
    x, _, load_info = _cached(cache_dir, use_cache, "kuzushiji-kanji", key, build)
    splits, start = {}, 0
    for s in SPLIT_NAMES:
        cnt = [counts[c] for c in split_ids[s]]
        n = sum(cnt)
        splits[s] = LabelledDataset(
            x=x[start : start + n],
            y=torch.arange(len(cnt)).repeat_interleave(torch.tensor(cnt)),
            class_names=tuple(classes[c] for c in split_ids[s]),
        )
        start += n
    return SplitDataset(name="kuzushiji-kanji", splits=splits, preprocessing=prep, load_info=load_info)


def download_kuzushiji_kanji(root: str | Path | None = None) -> Path:
    """Explains how to obtain Kuzushiji-Kanji; it cannot be fetched as the ready-made subset.

    The subset read by :func:`load_kuzushiji_kanji` (``kkanji_1080x20.zip``) is metafit's own
    cut of the full set: the full Kuzushiji-Kanji archive (``kkanji.tar``, about 310 MB,
    ``http://codh.rois.ac.jp/kmnist/dataset/kkanji/kkanji.tar``; CC BY-SA 4.0, from
    github.com/rois-codh/kmnist) NEEDS A NETWORK; the subset keeps the 1,080 classes with at least
    20 usable (non-blank) images, the first 20 of each by sorted file name, stored as
    ``kkanji/U+XXXX/<name>.png`` in a zip (see ``kuzushiji-kanji/MANIFEST.txt``).

    Returns:
        The archive path if it is present and its sha256 is ``KANJI_SHA256``.

    Raises:
        FileNotFoundError: the archive is absent (with the instructions above).
        ValueError: the archive is present but its sha256 differs (a damaged or different copy).
    """
    target = _data_root(root, "kuzushiji-kanji") / "kuzushiji-kanji" / KANJI_ZIP
    if target.is_file():
        got = _sha256(target)
        if got != KANJI_SHA256:
            raise ValueError(f"{target} has sha256 {got}, expected {KANJI_SHA256} (see kuzushiji-kanji/MANIFEST.txt)")
        return target
    raise FileNotFoundError(
        f"{target} is absent: download {KANJI_URL} (network needed), keep the classes with >= 20 non-blank images, "
        "the first 20 of each by file name, and zip them as kkanji/U+XXXX/<name>.png"
    )


def load_sklearn_digits(*, image_size: int = 8) -> SplitDataset:
    """scikit-learn's 8x8 handwritten digits (UCI optdigits test set; 1,797 images) as a TEST domain.

    Bundled with scikit-learn (no download). Values ``0..16`` with ink bright (Omniglot polarity)
    become ``uint8 = round(v * 255 / 16)``, are resized with PIL bilinear when ``image_size != 8``,
    and scaled by ``1/255``. 10 classes, all in ``"test"``.
    """
    from sklearn.datasets import load_digits

    size = _check_size(image_size)
    d = load_digits()
    u8 = np.rint(np.asarray(d.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    x = torch.from_numpy(_to_float(_resize_u8(u8, size)[:, None]))
    test = _labelled(x, np.asarray(d.target, dtype=np.int64))
    prep = {
        "kind": "image",
        "source": "sklearn.datasets.load_digits",
        "image_size": size,
        "channels": 1,
        "polarity": "ink bright (1.0) on 0.0, as stored (Omniglot convention)",
        "scaling": "round(v * 255 / 16) as uint8, then / 255",
        "resize": "PIL.Image.resize BILINEAR on the 8-bit image",
        "value_range": [0.0, 1.0],
        "class_split": {"rule": "test domain: all 10 classes in 'test'"},
    }
    return SplitDataset(name="digits", splits={"test": test}, preprocessing=prep)


def load_sklearn_table(name: str) -> SplitDataset:
    """A real table shipped with scikit-learn (no download) as a TEST domain of feature vectors.

    ``"iris"`` (150 rows x 4 features, 3 classes), ``"wine"`` (178 x 13, 3), ``"breast-cancer"``
    (569 x 30, 2) and ``"digits-table"`` (the 1,797 8x8 digits as 64 raw pixel values 0..16, 10
    classes). The raw feature values are kept (float32, no scaling): few-shot episodes are
    standardised with their own support rows (:func:`metafit.data.gp.standardise_tasks`). All
    classes are in ``"test"``: these tables test a learner trained elsewhere (e.g. on
    :class:`metafit.data.gp.TabularPriorTasks`).
    """
    from sklearn import datasets

    loaders = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast-cancer": datasets.load_breast_cancer,
        "digits-table": datasets.load_digits,
    }
    key = BUILTIN_DATASETS.get(str(name).lower())
    if key not in loaders:
        raise ValueError(f"name must be one of {SKLEARN_TABLES}, got {name!r}")
    bunch = loaders[key]()
    x = torch.as_tensor(np.asarray(bunch.data, dtype=np.float32))
    test = _labelled(x, np.asarray(bunch.target, dtype=np.int64))
    names = [str(n) for n in getattr(bunch, "target_names", [])]
    if len(names) == test.num_classes:
        test = LabelledDataset(test.x, test.y, tuple(names), test.groups)
    prep = {
        "kind": "table",
        "source": f"sklearn.datasets.load_{'breast_cancer' if key == 'breast-cancer' else key.split('-')[0]}",
        "features": int(x.shape[1]),
        "scaling": "none (raw values); episodes are standardised with their support rows",
        "class_split": {"rule": f"test domain: all {test.num_classes} classes in 'test'"},
    }
    return SplitDataset(name=key, splits={"test": test}, preprocessing=prep)


def download_sklearn_digits() -> str:
    """Nothing to download: the digits ship inside scikit-learn (no network needed).

    Returns:
        The path of the bundled data file, after checking that scikit-learn can load it.

    Raises:
        ImportError: scikit-learn is not installed.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    return str(getattr(d, "filename", "sklearn.datasets.load_digits"))


def load_omniglot_dataset(
    root: str | Path | None = None, *, image_size: int = 28, seed: int = 0, cache_dir: str | Path | None = None
) -> SplitDataset:
    """Omniglot with the Vinyals protocol (:func:`metafit.data.omniglot.omniglot_split`).

    ``train`` = 1,100 characters x 4 rotations (4,400 classes), ``val`` = 100 and ``test`` = 423
    characters without rotations; ``groups`` = alphabets (for hierarchical episodes).
    """
    from metafit.data.omniglot import PREPROCESSING, load_omniglot

    size = _check_size(image_size)
    data = load_omniglot(root, image_size=size, cache_dir=cache_dir)
    splits = {
        "train": data.split("train", protocol="vinyals", rotations=True, seed=seed),
        "val": data.split("val", protocol="vinyals", rotations=False, seed=seed),
        "test": data.split("test", protocol="vinyals", rotations=False, seed=seed),
    }
    prep = dict(
        PREPROCESSING,
        kind="image",
        image_size=size,
        channels=1,
        value_range=[0.0, 1.0],
        invert=True,  # the Omniglot PNGs are black strokes on white; the loader always inverts
        polarity="ink bright (1.0) on 0.0",
        source=str(root) if root is not None else "$METAFIT_DATA",
        class_split={
            "rule": "omniglot_split vinyals 1100/100/423",
            "seed": seed,
            "rotations": "train only (0/90/180/270 as classes)",
        },
    )
    return SplitDataset(name="omniglot", splits=splits, preprocessing=prep)


def resolve_dataset(
    spec: str | Path,
    *,
    root: str | Path | None = None,
    image_size: int | None = None,
    channels: int | str = "auto",
    cache_dir: str | Path | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    label_column: str | None = None,
) -> SplitDataset:
    """A dataset from a built-in name or a path (``--dataset NAME_OR_PATH``).

    Names (``BUILTIN_DATASETS``): ``omniglot`` (:func:`load_omniglot_dataset`), ``fashion-mnist``
    (:func:`load_fashion_mnist`), ``kuzushiji-kanji`` / ``kanji`` (:func:`load_kuzushiji_kanji`),
    ``digits`` (:func:`load_sklearn_digits`), the tables ``iris``, ``wine``, ``breast-cancer`` and
    ``digits-table`` (:func:`load_sklearn_table`); they read ``root`` (default ``$METAFIT_DATA``).
    Paths: a folder holding ``dataset_spec.json`` (Meta-Dataset records,
    :func:`metafit.data.metadataset.load_metadataset_source`), any other folder (images,
    :func:`load_image_folder_dataset`), ``.csv``/``.parquet`` (:func:`load_table_dataset`, needs
    ``label_column``), ``.npz``/``.npy`` (:func:`load_array_dataset`).

    Args:
        spec: The name or path.
        root: Data root of the built-ins.
        image_size: Output side of image sources; default: the source's own (28 for the
            character sources and Fashion-MNIST, 8 for digits, 84 for image folders and
            Meta-Dataset records).
        channels: Image folders only (1, 3 or ``"auto"``).
        cache_dir: Decoded-image cache (image folders, Kanji, Omniglot).
        seed: Seed of the class split where the source has none.
        val_fraction: Share of val classes where the source has no split.
        test_fraction: Share of test classes where the source has no split.
        label_column: Tables only: the class column.

    Raises:
        ValueError: an unknown name or unsupported file type (listing what is accepted).
    """
    name = str(spec)
    key = BUILTIN_DATASETS.get(name.lower())
    if key == "omniglot":
        return load_omniglot_dataset(root, image_size=image_size or 28, seed=seed, cache_dir=cache_dir)
    if key == "fashion-mnist":
        return load_fashion_mnist(root, image_size=image_size or 28)
    if key == "kuzushiji-kanji":
        return load_kuzushiji_kanji(root, image_size=image_size or 28, seed=seed, cache_dir=cache_dir)
    if key == "digits":
        return load_sklearn_digits(image_size=image_size or 8)
    if key in SKLEARN_TABLES:
        return load_sklearn_table(key)
    p = Path(name).expanduser()
    if not p.exists():
        raise ValueError(
            f"dataset {name!r} is neither a built-in name ({', '.join(sorted(set(BUILTIN_DATASETS.values())))}) nor an "
            "existing path (a folder of images or Meta-Dataset records, a .csv/.parquet table, a .npz/.npy array file)"
        )
    if p.is_dir():
        if (p / "dataset_spec.json").is_file():
            from metafit.data.metadataset import load_metadataset_source

            return load_metadataset_source(p, image_size=image_size or 84, cache_dir=cache_dir)
        return load_image_folder_dataset(
            p,
            image_size=image_size or 84,
            channels=channels,
            cache_dir=cache_dir,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
        )
    suffix = p.suffix.lower()
    if suffix in (".csv", ".parquet"):
        if label_column is None:
            raise ValueError(f"table {p} needs label_column=<the class column>")
        return load_table_dataset(
            p, label_column=label_column, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
        )
    if suffix in (".npz", ".npy"):
        return load_array_dataset(p, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    raise ValueError(f"unsupported dataset file {p}: expected a folder, .csv, .parquet, .npz or .npy")


def convert_images(x: Tensor, *, image_size: int, channels: int) -> Tensor:
    """Converts images to a checkpoint's input format (cross-domain evaluation).

    Channels first: RGB -> grey with PIL's ``convert("L")`` weights ``(299 R + 587 G + 114 B) /
    1000``; grey -> RGB by repeating the channel. Then, if the size differs, bilinear resizing
    with ``torch.nn.functional.interpolate(mode="bilinear", antialias=True)`` on the float images
    (close to, but not bit-identical with, PIL's 8-bit bilinear used when loading).

    Args:
        x: float ``(N, C, H, W)`` with ``C`` 1 or 3.
        image_size: Output side ``S``.
        channels: Output channels, 1 or 3.

    Returns:
        float ``(N, channels, S, S)`` (``x`` itself when nothing changes).
    """
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"x must be a float tensor (N, C, H, W) with C in (1, 3), got {getattr(x, 'shape', type(x))}")
    size = _check_size(image_size)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    out = x if x.is_floating_point() else x.float()
    if out.shape[1] == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=out.dtype, device=out.device)
        out = (out * w[None, :, None, None]).sum(dim=1, keepdim=True)
    elif out.shape[1] == 1 and channels == 3:
        out = out.expand(-1, 3, -1, -1).contiguous()
    if out.shape[-2:] != (size, size):
        out = torch.nn.functional.interpolate(
            out, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        ).clamp_(0.0, 1.0)
    return out
