"""Omniglot (Lake, Salakhutdinov & Tenenbaum, Science 2015): loading, caching, splits, image folders.

Data root
    ``root`` argument or the ``METAFIT_DATA`` environment variable: the folder that *contains*
    ``omniglot/``, which holds ``images_background.zip`` and ``images_evaluation.zip`` (the
    official zips) or the same trees unzipped (``omniglot/images_background/<Alphabet>/
    characterNN/IIII_DD.png``). 964 background + 659 evaluation characters, 20 drawers each.

Preprocessing (:func:`preprocess_image`, shared by the loader and the image-folder helpers so
that they cannot drift)
    1. transparent images are composited onto white;
    2. ``PIL.Image.convert("L")`` (8-bit grey; Omniglot's 1-bit images become 0/255);
    3. inversion ``255 - v`` so that ink is bright (1.0) and the background dark (0.0); the
       Omniglot loader always inverts (its PNGs are black strokes on white), the folder helpers
       invert when ``invert=True`` or, with ``invert="auto"``, when the image's mean grey level
       before resizing is above 127.5 (a light background);
    4. if the image is not already ``image_size x image_size``: ``PIL.Image.resize((image_size,
       image_size), PIL.Image.Resampling.BILINEAR)`` on the 8-bit ``"L"`` image (Pillow's
       bilinear filter widens its support when downscaling, i.e. it antialiases; non-square
       images are stretched, not cropped), giving ``uint8``;
    5. float: ``uint8.to(torch.float32) / 255`` -> values in ``[0, 1]``, shape ``(1, H, W)``.

Cache
    Decoding the 32,460 PNGs is done once; the decoded ``uint8`` array
    ``(1623, 20, image_size, image_size)`` is cached as an ``.npz`` file in ``cache_dir``
    (default ``$METAFIT_CACHE/omniglot`` if ``METAFIT_CACHE`` is set, else
    ``~/.cache/metafit/omniglot``), named by the image size and a fingerprint (sha256 of the two
    zips; for unzipped trees, of the file names, sizes and mtimes). Cache files are written
    atomically (temporary file + ``os.replace``) and are safe to delete at any time.

Character order
    Background characters first, then evaluation; within a set, sorted by alphabet folder name
    and then ``characterNN``. The class splits (:func:`omniglot_split`) are defined on this order.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import re
import threading
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metafit.atomic import atomic_file, download
from metafit.data.datasets import LabelledDataset

__all__ = [
    "OmniglotData",
    "load_omniglot",
    "omniglot_split",
    "omniglot_alphabets",
    "alphabet_names",
    "download_omniglot",
    "verify_omniglot",
    "preprocess_image",
    "load_image_folder",
    "load_support_folder",
    "PREPROCESSING",
    "write_episode_folders",
    "EXPECTED_CHARACTERS",
    "IMAGES_PER_CHARACTER",
    "PROTOCOLS",
    "SPLITS",
]

#: Characters per Omniglot set, as in the upstream release.
EXPECTED_CHARACTERS = {"background": 964, "evaluation": 659}
EXPECTED_ALPHABETS = {"background": 30, "evaluation": 20}
IMAGES_PER_CHARACTER = 20
RAW_SIZE = 105
#: sha256 of the offline copies described in ``omniglot/MANIFEST.txt`` (repacked zips).
MANIFEST_SHA256 = {
    "background": "7a4cae547f16207901bd3acaabd866c1dbbef4d559dff26d797dbc6423a64a1e",
    "evaluation": "d84af890b3ea334eca90f1cb04c6111603a1b620d66b82f86414b8707fbd0e8d",
}
#: md5 of the upstream zips (github.com/brendenlake/omniglot, python/).
UPSTREAM_MD5 = {
    "background": "68d2efa1b9178cc56df9314c21c6e718",
    "evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
UPSTREAM_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/images_{}.zip"
PROTOCOLS = ("vinyals", "lake")
SPLITS = ("train", "val", "trainval", "test")
#: Vinyals protocol sizes (characters): train, val, test (trainval = train + val).
VINYALS_SIZES = (1100, 100, 423)
LAKE_VAL_ALPHABETS = 5
ROTATIONS = (0, 90, 180, 270)
_CACHE_VERSION = 1
_ENTRY = re.compile(r"^images_(background|evaluation)/([^/]+)/(character\d+)/(\d{4})_(\d{2})\.png$")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: How model inputs are made from raw images (recorded in checkpoints by ``metafit.app.runs``).
PREPROCESSING: dict[str, Any] = {
    "function": "metafit.data.omniglot.preprocess_image",
    "grayscale": "PIL convert('L')",
    "ink": "bright (1.0); background 0.0",
    "invert": "auto",
    "resize": "PIL.Image.resize BILINEAR on the 8-bit image",
    "value_range": [0.0, 1.0],
}


# -- preprocessing ---------------------------------------------------------------------------------


def _check_size(image_size: object) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise TypeError(f"image_size must be an int, got {type(image_size).__name__} {image_size!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    return image_size


def _preprocess_u8(image: Any, image_size: int, invert: bool | str = True) -> np.ndarray:
    """Steps 1-4 of the module docstring: a PIL image -> ``uint8 (image_size, image_size)``."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    arr = np.asarray(image.convert("L"), dtype=np.uint8)
    if invert == "auto":
        do_invert = bool(arr.mean() > 127.5)
    elif isinstance(invert, bool):
        do_invert = invert
    else:
        raise ValueError(f"invert must be True, False or 'auto', got {invert!r}")
    if do_invert:
        arr = 255 - arr
    if arr.shape != (image_size, image_size):
        small = Image.fromarray(arr, mode="L").resize((image_size, image_size), Image.Resampling.BILINEAR)
        arr = np.asarray(small, dtype=np.uint8)
    return arr


def _to_unit_float(u8: Tensor) -> Tensor:
    """``uint8 -> float32 / 255`` (step 5); the single place where the scaling is done."""
    return u8.to(torch.float32).div_(255.0)


def preprocess_image(image: Any, image_size: int = 28, invert: bool | str = True) -> Tensor:
    """Turns a PIL image of any size and mode into a model input.

    Exactly the Omniglot loader's pipeline (module docstring): grey, ink bright, bilinear resize
    to ``image_size`` (PIL, 8-bit), scaled to ``[0, 1]``.

    Args:
        image: A ``PIL.Image.Image``.
        image_size: Output side length ``S``.
        invert: ``True`` (Omniglot: dark ink on white), ``False``, or ``"auto"`` (invert when the
            mean grey level is above 127.5).

    Returns:
        float32 tensor ``(1, S, S)`` in ``[0, 1]``.
    """
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    u8 = _preprocess_u8(image, _check_size(image_size), invert)
    return _to_unit_float(torch.from_numpy(np.array(u8, dtype=np.uint8))).unsqueeze(0)


def _open_image_file(path: Path, image_size: int, invert: bool | str) -> Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return preprocess_image(im, image_size, invert)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot decode image file {path}: expected a PNG or JPEG image ({e})") from e


def _image_files(folder: Path) -> list[Path]:
    files = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        if p.suffix.lower() not in _IMAGE_SUFFIXES:
            raise ValueError(f"unexpected file {p}: expected only images with suffix {', '.join(_IMAGE_SUFFIXES)}")
        files.append(p)
    return files


def _check_folder(folder: str | Path, what: str) -> Path:
    path = Path(folder).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{what} {path} is not a folder")
    return path


def load_image_folder(
    folder: str | Path, image_size: int = 28, invert: bool | str = "auto"
) -> tuple[Tensor, list[Path]]:
    """Reads every PNG/JPEG image of a folder (any size) with :func:`preprocess_image`.

    Hidden files and sub-folders are skipped; files are read in sorted name order.

    Args:
        folder: The folder.
        image_size: Output side length ``S``.
        invert: As in :func:`preprocess_image`; ``"auto"`` decides per image.

    Returns:
        ``(x, files)``: float32 ``(N, 1, S, S)`` in ``[0, 1]`` and the ``N`` file paths.

    Raises:
        FileNotFoundError, NotADirectoryError: missing folder.
        ValueError: no images, a non-image file, or an undecodable image (naming the file).
    """
    path = _check_folder(folder, "image folder")
    _check_size(image_size)
    files = _image_files(path)
    if not files:
        raise ValueError(f"image folder {path} holds no images (expected *.png / *.jpg files)")
    x = torch.stack([_open_image_file(f, image_size, invert) for f in files])
    return x, files


def load_support_folder(
    folder: str | Path, image_size: int = 28, invert: bool | str = "auto"
) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """Reads a labelled support set: one sub-folder of images per class.

    Args:
        folder: Folder whose (non-hidden) sub-folders are the classes, in sorted name order.
        image_size: Output side length ``S``.
        invert: As in :func:`preprocess_image`.

    Returns:
        ``(x, y, class_names)``: float32 ``(N, 1, S, S)``, int64 labels ``(N,)`` in
        ``0..C-1`` (sub-folder order), and the ``C`` sub-folder names.

    Raises:
        FileNotFoundError, NotADirectoryError: missing folder.
        ValueError: no class sub-folders, an empty class, or a bad image (naming the file).
    """
    path = _check_folder(folder, "support folder")
    classes = [p for p in sorted(path.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if not classes:
        raise ValueError(f"support folder {path} must hold one sub-folder of images per class; found none")
    xs, ys = [], []
    for c, sub in enumerate(classes):
        x, _ = load_image_folder(sub, image_size, invert)
        xs.append(x)
        ys.append(torch.full((x.shape[0],), c, dtype=torch.int64))
    return torch.cat(xs), torch.cat(ys), tuple(p.name for p in classes)


# -- sources (zip or unzipped tree) ----------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    split: str  # "background" | "evaluation"
    path: Path  # the zip, or the omniglot/ folder holding images_<split>/
    is_zip: bool

    @property
    def label(self) -> str:
        return str(self.path if self.is_zip else self.path / f"images_{self.split}")


def _resolve_root(root: str | Path | None) -> tuple[Path, Path]:
    """(data root, omniglot folder)."""
    if root is None:
        env = os.environ.get("METAFIT_DATA")
        if not env:
            raise ValueError(
                "no Omniglot data root: pass root=<folder containing omniglot/> or set the "
                "METAFIT_DATA environment variable (neither is set)"
            )
        root = env
    base = Path(root).expanduser()
    omni = base / "omniglot"
    if not omni.is_dir() and ((base / "images_background.zip").is_file() or (base / "images_background").is_dir()):
        omni = base  # root given as the omniglot/ folder itself
    return base, omni


def _sources(root: str | Path | None) -> dict[str, _Source]:
    base, omni = _resolve_root(root)
    out = {}
    for split in ("background", "evaluation"):
        zpath, tree = omni / f"images_{split}.zip", omni / f"images_{split}"
        if zpath.is_file():
            out[split] = _Source(split, zpath, True)
        elif tree.is_dir():
            out[split] = _Source(split, omni, False)
        else:
            raise FileNotFoundError(
                f"Omniglot {split} set not found: expected {zpath} (or the unzipped folder {tree}); "
                f"data root is {base} (from root= or METAFIT_DATA); `metafit data fetch` downloads it"
            )
    return out


def _damaged(source: _Source, err: BaseException, entry: str | None = None) -> ValueError:
    where = f" (entry {entry})" if entry else ""
    if source.is_zip:
        return ValueError(
            f"damaged Omniglot zip {source.path}{where}: {type(err).__name__}: {err}; expected a "
            "valid zip archive - delete it and download it again (`metafit data fetch`)"
        )
    return ValueError(f"unreadable Omniglot file {source.path / entry if entry else source.label}: {err}")


def _names(source: _Source) -> list[str]:
    if source.is_zip:
        try:
            with zipfile.ZipFile(source.path) as zf:
                return zf.namelist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise _damaged(source, e) from e
    top = source.path / f"images_{source.split}"
    return sorted(p.relative_to(source.path).as_posix() for p in top.rglob("*.png"))


@dataclass(frozen=True)
class _Character:
    alphabet: str
    character: str
    file_id: int
    entries: tuple[str, ...]  # 20 entry names, drawer 01..20


def _index(source: _Source, names: Sequence[str]) -> list[_Character]:
    """Groups and validates the PNG entries of one set (counts, drawers, file ids)."""
    groups: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
    for name in names:
        m = _ENTRY.match(name)
        if m is None or m.group(1) != source.split:
            continue
        groups.setdefault((m.group(2), m.group(3)), []).append((int(m.group(5)), int(m.group(4)), name))
    chars = []
    for (alphabet, character), files in sorted(groups.items()):
        files.sort()
        drawers = [d for d, _, _ in files]
        ids = {i for _, i, _ in files}
        if drawers != list(range(1, IMAGES_PER_CHARACTER + 1)) or len(ids) != 1:
            raise ValueError(
                f"{source.label}: character {alphabet}/{character} must have {IMAGES_PER_CHARACTER} "
                f"images with drawers 01..{IMAGES_PER_CHARACTER} and one file id, found "
                f"{len(files)} images (drawers {drawers[:25]}, file ids {sorted(ids)[:5]})"
            )
        chars.append(_Character(alphabet, character, ids.pop(), tuple(n for _, _, n in files)))
    want, want_a = EXPECTED_CHARACTERS[source.split], EXPECTED_ALPHABETS[source.split]
    n_alpha = len({c.alphabet for c in chars})
    if len(chars) != want or n_alpha != want_a:
        raise ValueError(
            f"{source.label}: expected {want} characters in {want_a} alphabets with "
            f"{IMAGES_PER_CHARACTER} images each in the Omniglot {source.split} set, found "
            f"{len(chars)} characters in {n_alpha} alphabets (incomplete or wrong archive)"
        )
    return chars


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprint(source: _Source, names: Sequence[str]) -> str:
    if source.is_zip:
        return _sha256(source.path)
    h = hashlib.sha256()
    for n in names:
        st = (source.path / n).stat()
        h.update(f"{n}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# -- decoding --------------------------------------------------------------------------------------


def _read_entries(source: _Source, chars: Sequence[_Character]) -> list[list[bytes]]:
    """The PNG bytes of every image of ``chars`` (reading a zip entry checks its CRC).

    Reading everything before decoding makes a damaged zip fail within about a second.
    """
    zf = None
    try:
        if source.is_zip:
            try:
                zf = zipfile.ZipFile(source.path)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise _damaged(source, e) from e
        out = []
        for ch in chars:
            blobs = []
            for entry in ch.entries:
                try:
                    blobs.append(zf.read(entry) if zf is not None else (source.path / entry).read_bytes())
                except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError) as e:
                    raise _damaged(source, e, entry) from e
            out.append(blobs)
        return out
    finally:
        if zf is not None:
            zf.close()


def _decode_characters(
    source: _Source,
    chars: Sequence[_Character],
    blobs: Sequence[Sequence[bytes]],
    out: np.ndarray,
    image_size: int,
    stop: threading.Event,
) -> None:
    """Decodes ``chars`` into ``out (len(chars), 20, S, S)``; stops early once ``stop`` is set."""
    from PIL import Image, UnidentifiedImageError

    for i, (ch, files) in enumerate(zip(chars, blobs)):
        if stop.is_set():
            return
        for j, (entry, data) in enumerate(zip(ch.entries, files)):
            try:
                with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
                    if im.size != (RAW_SIZE, RAW_SIZE):
                        raise ValueError(f"expected a {RAW_SIZE}x{RAW_SIZE} image, got {im.size}")
                    im.load()
                    out[i, j] = _preprocess_u8(im, image_size, True)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                raise _damaged(source, e, entry) from e


def _decode_all(
    sources: dict[str, _Source], index: dict[str, list[_Character]], image_size: int, workers: int
) -> np.ndarray:
    blobs = {split: _read_entries(sources[split], index[split]) for split in ("background", "evaluation")}
    total = sum(len(v) for v in index.values())
    out = np.empty((total, IMAGES_PER_CHARACTER, image_size, image_size), dtype=np.uint8)
    jobs = []
    start = 0
    for split in ("background", "evaluation"):
        chars = index[split]
        bounds = np.linspace(0, len(chars), max(1, workers) + 1).astype(int)
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            if b > a:
                jobs.append((sources[split], chars[a:b], blobs[split][a:b], out[start + a : start + b]))
        start += len(chars)
    stop = threading.Event()
    if workers <= 1:
        for src, chars, data, view in jobs:
            _decode_characters(src, chars, data, view, image_size, stop)
        return out
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_decode_characters, *job, image_size, stop) for job in jobs]
        try:
            for f in concurrent.futures.as_completed(futures):
                f.result()
        except BaseException:
            stop.set()
            raise
    return out


# -- the loaded data set ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class OmniglotData:
    """All 1,623 Omniglot characters, decoded (see the module docstring for the order).

    Attributes:
        images: uint8 ``(1623, 20, S, S)``, ink 255, background 0; ``images[c, d]`` is drawer
            ``d + 1`` of character ``c``. Treat as read-only.
        character_names: ``"Alphabet/characterNN"`` per character.
        alphabets: Alphabet folder name per character.
        background: bool ``(1623,)``: True for the background set (964), False for evaluation.
        file_ids: The upstream character file id ``IIII`` (1..1623) per character.
    """

    images: Tensor
    character_names: tuple[str, ...]
    alphabets: tuple[str, ...]
    background: Tensor
    file_ids: tuple[int, ...]

    @property
    def image_size(self) -> int:
        """Side length ``S`` of the decoded images."""
        return int(self.images.shape[-1])

    @property
    def num_characters(self) -> int:
        """Number of characters (1623)."""
        return int(self.images.shape[0])

    def split(self, split: str, *, protocol: str = "vinyals", rotations: bool = True, seed: int = 0) -> LabelledDataset:
        """Same as :func:`omniglot_split` on this data."""
        return omniglot_split(self, split, protocol=protocol, rotations=rotations, seed=seed)


def _default_cache_dir() -> Path:
    env = os.environ.get("METAFIT_CACHE")
    if env:
        return Path(env).expanduser() / "omniglot"
    return Path.home() / ".cache" / "metafit" / "omniglot"


def _read_cache(path: Path, image_size: int) -> OmniglotData | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            images = z["images"]
            names, alphabets = z["character_names"], z["alphabets"]
            background, file_ids = z["background"], z["file_ids"]
        n = sum(EXPECTED_CHARACTERS.values())
        if images.shape != (n, IMAGES_PER_CHARACTER, image_size, image_size) or images.dtype != np.uint8:
            return None
        if not (len(names) == len(alphabets) == len(background) == len(file_ids) == n):
            return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None
    return OmniglotData(
        images=torch.from_numpy(images),
        character_names=tuple(str(s) for s in names),
        alphabets=tuple(str(s) for s in alphabets),
        background=torch.from_numpy(background.astype(bool)),
        file_ids=tuple(int(i) for i in file_ids),
    )


def _write_cache(path: Path, data: OmniglotData) -> None:
    try:
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                images=data.images.numpy(),
                character_names=np.array(data.character_names),
                alphabets=np.array(data.alphabets),
                background=data.background.numpy(),
                file_ids=np.array(data.file_ids, dtype=np.int64),
            )
    except OSError as e:
        warnings.warn(f"could not write the Omniglot cache {path}: {e}", RuntimeWarning, stacklevel=3)


def load_omniglot(
    root: str | Path | None = None,
    *,
    image_size: int = 28,
    cache_dir: str | Path | None = None,
    num_workers: int | None = None,
) -> OmniglotData:
    """Loads all of Omniglot, decoding the PNGs once and caching the result.

    Args:
        root: Folder containing ``omniglot/`` (default: ``$METAFIT_DATA``).
        image_size: Side length ``S`` of the resized images (105 keeps the originals).
        cache_dir: Where the decoded ``.npz`` is cached (default ``$METAFIT_CACHE/omniglot`` or
            ``~/.cache/metafit/omniglot``). An unwritable cache only warns.
        num_workers: Decoding threads (default ``min(2, cpu_count)``).

    Returns:
        :class:`OmniglotData` with ``images`` uint8 ``(1623, 20, S, S)``.

    Raises:
        ValueError: no root given, a damaged zip or unreadable image, or wrong counts (the
            message names the file, what was expected and what was found).
        FileNotFoundError: a set is missing under the root (naming the expected paths).
    """
    _check_size(image_size)
    sources = _sources(root)
    names = {s: _names(src) for s, src in sources.items()}
    index = {s: _index(sources[s], names[s]) for s in sources}
    file_ids = [c.file_id for s in ("background", "evaluation") for c in index[s]]
    total = sum(EXPECTED_CHARACTERS.values())
    if sorted(file_ids) != list(range(1, total + 1)):
        raise ValueError(
            f"Omniglot character file ids must be 0001..{total}, each used once; found "
            f"{len(set(file_ids))} distinct ids in {sources['background'].label} and "
            f"{sources['evaluation'].label}"
        )
    fp = hashlib.sha256(
        f"v{_CACHE_VERSION}|{image_size}|"
        f"{_fingerprint(sources['background'], names['background'])}|"
        f"{_fingerprint(sources['evaluation'], names['evaluation'])}".encode()
    ).hexdigest()[:20]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    cache_file = cache / f"omniglot_{image_size}px_{fp}.npz"
    if cache_file.is_file():
        cached = _read_cache(cache_file, image_size)
        if cached is not None and cached.file_ids == tuple(file_ids):
            return cached
    workers = num_workers if num_workers is not None else min(2, os.cpu_count() or 1)
    images = _decode_all(sources, index, image_size, max(1, workers))
    chars = [c for s in ("background", "evaluation") for c in index[s]]
    data = OmniglotData(
        images=torch.from_numpy(images),
        character_names=tuple(f"{c.alphabet}/{c.character}" for c in chars),
        alphabets=tuple(c.alphabet for c in chars),
        background=torch.tensor([s == "background" for s in ("background", "evaluation") for _ in index[s]]),
        file_ids=tuple(file_ids),
    )
    _write_cache(cache_file, data)
    return data


# -- splits ----------------------------------------------------------------------------------------


def _split_characters(data: OmniglotData, split: str, protocol: str, seed: int) -> list[int]:
    n = data.num_characters
    if protocol == "vinyals":
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        n_train, n_val, _ = VINYALS_SIZES
        parts = {
            "train": perm[:n_train],
            "val": perm[n_train : n_train + n_val],
            "trainval": perm[: n_train + n_val],
            "test": perm[n_train + n_val :],
        }
        return parts[split]
    bg = data.background.tolist()
    if split == "test":
        return [i for i in range(n) if not bg[i]]
    if split == "trainval":
        return [i for i in range(n) if bg[i]]
    alphabets = sorted({data.alphabets[i] for i in range(n) if bg[i]})
    order = torch.randperm(len(alphabets), generator=torch.Generator().manual_seed(seed)).tolist()
    val = {alphabets[j] for j in order[:LAKE_VAL_ALPHABETS]}
    keep = (lambda a: a in val) if split == "val" else (lambda a: a not in val)
    return [i for i in range(n) if bg[i] and keep(data.alphabets[i])]


def omniglot_split(
    data: OmniglotData | str | Path | None,
    split: str,
    *,
    protocol: str = "vinyals",
    rotations: bool = True,
    seed: int = 0,
    image_size: int = 28,
    cache_dir: str | Path | None = None,
) -> LabelledDataset:
    """An Omniglot class split as a :class:`LabelledDataset`.

    Protocols (characters in the order of the module docstring):

    * ``"vinyals"`` (Vinyals et al. 2016; MAML; ProtoNets): the 1,623 characters are shuffled by
      ``torch.randperm(1623, generator=torch.Generator().manual_seed(seed))``; the first 1,200
      are ``"trainval"``, of which the first 1,100 are ``"train"`` and the last 100 ``"val"``;
      the remaining 423 are ``"test"``. (The permutation is metafit's own: character sets differ
      from other code bases' random splits of the same sizes.)
    * ``"lake"`` (Lake et al. 2015): ``"trainval"`` = the 964 background characters, ``"test"``
      = the 659 evaluation characters; ``"val"`` = the characters of 5 background alphabets
      chosen by ``torch.randperm(30, generator=manual_seed(seed))`` over the sorted background
      alphabet names, and ``"train"`` = the other 25 background alphabets (so train and val are
      disjoint, and train + val = trainval).

    With ``rotations=True`` each character gives 4 classes, rotated by 0, 90, 180 and 270
    degrees counter-clockwise (``torch.rot90(img, k, dims=(-2, -1))``), as in MAML/ProtoNets.

    Args:
        data: Loaded :class:`OmniglotData`, or a data root (``None``: ``$METAFIT_DATA``) passed
            to :func:`load_omniglot` with ``image_size`` and ``cache_dir``.
        split: ``"train"``, ``"val"``, ``"trainval"`` or ``"test"``.
        protocol: ``"vinyals"`` or ``"lake"``.
        rotations: Add the rotated classes.
        seed: Seed of the split permutation (default 0).
        image_size: Used only when ``data`` is a root.
        cache_dir: Used only when ``data`` is a root.

    Returns:
        :class:`LabelledDataset` with ``x`` float32 ``(n_classes * 20, 1, S, S)`` in ``[0, 1]``
        (class ``j * R + r`` is rotation ``r`` of the ``j``-th selected character, ``R`` = 4 or 1;
        examples of a class are contiguous, in drawer order), class names
        ``"Alphabet/characterNN/rot90"`` (``"Alphabet/characterNN"`` without rotations) and
        ``groups`` = the alphabet of each class.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    if not isinstance(data, OmniglotData):
        if data is not None and not isinstance(data, (str, Path)):
            raise TypeError(f"data must be OmniglotData, a data root path or None, got {type(data).__name__}")
        data = load_omniglot(data, image_size=image_size, cache_dir=cache_dir)
    chars = _split_characters(data, split, protocol, seed)
    return _character_dataset(data, chars, rotations)


def _character_dataset(data: OmniglotData, chars: Sequence[int], rotations: bool) -> LabelledDataset:
    """The :class:`LabelledDataset` of characters ``chars`` (indices into ``data``), in that order."""
    n_rot = len(ROTATIONS) if rotations else 1
    s = data.image_size
    sel = data.images[torch.tensor(list(chars), dtype=torch.int64)]  # (n, 20, S, S) uint8
    x = torch.empty(len(chars), n_rot, IMAGES_PER_CHARACTER, s, s, dtype=torch.float32)
    for r in range(n_rot):
        x[:, r].copy_(torch.rot90(sel, r, dims=(-2, -1)) if r else sel)
    x.div_(255.0)  # identical to _to_unit_float: exact uint8 -> float32, then / 255
    n_classes = len(chars) * n_rot
    names, groups = [], []
    for c in chars:
        for r in range(n_rot):
            names.append(f"{data.character_names[c]}/rot{ROTATIONS[r]}" if rotations else data.character_names[c])
            groups.append(data.alphabets[c])
    return LabelledDataset(
        x=x.view(n_classes * IMAGES_PER_CHARACTER, 1, s, s),
        y=torch.arange(n_classes).repeat_interleave(IMAGES_PER_CHARACTER),
        class_names=tuple(names),
        groups=tuple(groups),
    )


def alphabet_names(data: OmniglotData, subset: str = "all") -> tuple[str, ...]:
    """The Omniglot alphabet names, sorted.

    Args:
        data: Loaded :class:`OmniglotData`.
        subset: ``"background"`` (the 30 alphabets of ``images_background``), ``"evaluation"``
            (the 20 of ``images_evaluation``) or ``"all"`` (the 50).

    Returns:
        Sorted alphabet folder names.

    Raises:
        ValueError: an unknown ``subset``.
    """
    if subset not in ("background", "evaluation", "all"):
        raise ValueError(f"subset must be 'background', 'evaluation' or 'all', got {subset!r}")
    bg = data.background.tolist()
    keep = (lambda b: True) if subset == "all" else (lambda b: b == (subset == "background"))
    return tuple(sorted({a for a, b in zip(data.alphabets, bg) if keep(b)}))


def omniglot_alphabets(
    data: OmniglotData | str | Path | None,
    alphabets: Sequence[str],
    *,
    rotations: bool = False,
    image_size: int = 28,
    cache_dir: str | Path | None = None,
) -> LabelledDataset:
    """The characters of the given alphabets as a :class:`LabelledDataset` (a split by alphabet).

    For protocols that :func:`omniglot_split` does not cover, e.g. disjoint groups of alphabets
    for several models. Characters come in the module's character order (background set first,
    then by alphabet and ``characterNN``), whatever the order of ``alphabets``.

    Args:
        data: Loaded :class:`OmniglotData`, or a data root (``None``: ``$METAFIT_DATA``) passed
            to :func:`load_omniglot` with ``image_size`` and ``cache_dir``.
        alphabets: Alphabet folder names (see :func:`alphabet_names`), at least one.
        rotations: Add the 90/180/270 degree rotations as classes (as in :func:`omniglot_split`).
        image_size: Used only when ``data`` is a root.
        cache_dir: Used only when ``data`` is a root.

    Returns:
        :class:`LabelledDataset` laid out as in :func:`omniglot_split` (``groups`` = alphabets).

    Raises:
        ValueError: no alphabet given, or a name that is not an Omniglot alphabet.

    Example:
        >>> data = load_omniglot()  # doctest: +SKIP
        >>> ds = omniglot_alphabets(data, alphabet_names(data, "background")[:2])  # doctest: +SKIP
    """
    if isinstance(alphabets, str) or not isinstance(alphabets, Sequence):
        raise TypeError(f"alphabets must be a sequence of alphabet names, got {type(alphabets).__name__}")
    if not alphabets:
        raise ValueError("alphabets must name at least one Omniglot alphabet, got an empty sequence")
    if not isinstance(data, OmniglotData):
        if data is not None and not isinstance(data, (str, Path)):
            raise TypeError(f"data must be OmniglotData, a data root path or None, got {type(data).__name__}")
        data = load_omniglot(data, image_size=image_size, cache_dir=cache_dir)
    known = set(data.alphabets)
    unknown = [a for a in alphabets if a not in known]
    if unknown:
        raise ValueError(
            f"unknown Omniglot alphabet {unknown[0]!r}: expected one of the {len(known)} alphabet folder "
            f"names (e.g. {sorted(known)[0]!r}; see alphabet_names)"
        )
    wanted = set(alphabets)
    chars = [i for i, a in enumerate(data.alphabets) if a in wanted]
    return _character_dataset(data, chars, rotations)


# -- verification and download ---------------------------------------------------------------------


def verify_omniglot(root: str | Path | None = None) -> dict[str, Any]:
    """Checks the Omniglot files without decoding the images (for ``metafit data verify``).

    Reports, per set: the source path, whether it is a zip, for zips the size, the sha256 and
    whether it matches ``MANIFEST_SHA256`` (the offline copy) and the zip's CRC check
    (``ZipFile.testzip``); and the alphabet/character/image counts against the expected ones.

    Args:
        root: Folder containing ``omniglot/`` (default ``$METAFIT_DATA``).

    Returns:
        ``{"root": str, "ok": bool, "sets": {"background": {...}, "evaluation": {...}},
        "errors": [str, ...]}``; ``ok`` is True when every count is right and every zip passes
        its CRC check (a sha256 different from the MANIFEST, e.g. an upstream download, is
        reported but not an error).

    Raises:
        ValueError, FileNotFoundError: no root, or a set missing under it.
    """
    base, _ = _resolve_root(root)
    sources = _sources(root)
    report: dict[str, Any] = {"root": str(base), "ok": True, "sets": {}, "errors": []}
    for split, src in sources.items():
        entry: dict[str, Any] = {"source": src.label, "zip": src.is_zip}
        try:
            if src.is_zip:
                entry["bytes"] = src.path.stat().st_size
                entry["sha256"] = _sha256(src.path)
                entry["manifest_sha256"] = MANIFEST_SHA256[split]
                entry["sha256_matches_manifest"] = entry["sha256"] == MANIFEST_SHA256[split]
                try:
                    with zipfile.ZipFile(src.path) as zf:
                        bad = zf.testzip()
                except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
                    raise _damaged(src, e) from e
                entry["crc_ok"] = bad is None
                if bad is not None:
                    raise ValueError(f"damaged Omniglot zip {src.path}: bad CRC for entry {bad}")
            chars = _index(src, _names(src))
            entry.update(
                alphabets=len({c.alphabet for c in chars}),
                characters=len(chars),
                images=len(chars) * IMAGES_PER_CHARACTER,
                expected_characters=EXPECTED_CHARACTERS[split],
                counts_ok=True,
            )
        except ValueError as e:
            entry["counts_ok"] = False
            report["errors"].append(str(e))
            report["ok"] = False
        report["sets"][split] = entry
    return report


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_omniglot(root: str | Path | None = None, *, timeout: float = 60.0) -> Path:
    """Downloads the two official Omniglot zips into ``<root>/omniglot/`` (skipping valid ones).

    Sources: ``https://raw.githubusercontent.com/brendenlake/omniglot/master/python/
    images_background.zip`` and ``.../images_evaluation.zip``. Each download goes to a temporary
    file and is verified before it is moved into place: the upstream md5
    (``UPSTREAM_MD5``) or, failing that, a zip that opens, passes ``ZipFile.testzip`` and holds
    the expected 964 / 659 characters x 20 images.

    Args:
        root: Folder that will contain ``omniglot/`` (default ``$METAFIT_DATA``).
        timeout: Socket timeout in seconds.

    Returns:
        The ``omniglot/`` folder.

    Raises:
        ValueError: no root, or a download that fails verification.
        RuntimeError: a network error (naming the URL).
    """

    if root is None:
        root = os.environ.get("METAFIT_DATA")
        if not root:
            raise ValueError("no data root: pass root=<folder> or set METAFIT_DATA")
    omni = Path(root).expanduser() / "omniglot"
    omni.mkdir(parents=True, exist_ok=True)
    for split in ("background", "evaluation"):
        target = omni / f"images_{split}.zip"
        if target.is_file() and _zip_ok(target, split) is None:
            continue
        download(
            UPSTREAM_URL.format(split),
            target,
            timeout=timeout,
            check=lambda tmp, split=split: None if _md5(tmp) == UPSTREAM_MD5[split] else _zip_ok(tmp, split),
        )
    return omni


def _zip_ok(path: Path, split: str) -> str | None:
    """None if ``path`` is a sound Omniglot ``split`` zip, else what is wrong."""
    src = _Source(split, path, True)
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
        if bad is not None:
            return f"{path}: bad CRC for entry {bad}"
        _index(src, _names(src))
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as e:
        return f"{path}: {e}"
    return None


def write_episode_folders(
    out: str | Path,
    *,
    root: str | Path | None = None,
    split: str = "evaluation",
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Writes one N-way K-shot episode of RAW Omniglot PNGs (105x105, as in the zips) to folders.

    Layout (what ``metafit predict`` reads): ``out/support/<class>/<file>.png`` (``k_shot``
    drawings per class), ``out/query/<file>.png`` (``n_query`` other drawings per class, file
    names prefixed with a running number so their order does not reveal the class) and
    ``out/truth.csv`` (``file,class``). Classes are characters of the ``split`` set (the
    evaluation alphabets by default, unseen in background training) chosen with ``seed``.

    Returns:
        ``{"classes": [...], "support": n_files, "query": n_files, "truth": path}``.
    """
    import csv
    import zipfile

    if split not in ("background", "evaluation"):
        raise ValueError(f"split must be 'background' or 'evaluation', got {split!r}")
    src = _sources(root)[split]
    g = torch.Generator().manual_seed(seed)
    if src.is_zip:
        with zipfile.ZipFile(src.path) as zf:
            names = sorted(n for n in zf.namelist() if n.endswith(".png"))
    else:
        names = sorted(str(p.relative_to(src.path)) for p in (src.path / f"images_{split}").rglob("*.png"))
    by_char: dict[str, list[str]] = {}
    for n in names:
        parts = n.split("/")
        by_char.setdefault(f"{parts[-3]}_{parts[-2]}", []).append(n)
    chars = sorted(by_char)
    if n_way > len(chars):
        raise ValueError(f"n_way={n_way} exceeds the {len(chars)} characters of the {split} set")
    if k_shot + n_query > IMAGES_PER_CHARACTER:
        raise ValueError(
            f"k_shot + n_query = {k_shot + n_query} exceeds the {IMAGES_PER_CHARACTER} drawings per character"
        )
    out = Path(out)
    picked = [chars[int(i)] for i in torch.randperm(len(chars), generator=g)[:n_way]]
    truth_rows, q_index = [], 0
    if src.is_zip:
        zf = zipfile.ZipFile(src.path)
        get = zf.read
    else:
        get = lambda n: (src.path / n).read_bytes()  # noqa: E731
    try:
        for c in picked:
            files = by_char[c]
            order = torch.randperm(len(files), generator=g)
            (out / "support" / c).mkdir(parents=True, exist_ok=True)
            (out / "query").mkdir(parents=True, exist_ok=True)
            for j, i in enumerate(order[: k_shot + n_query].tolist()):
                data = get(files[i])
                fname = Path(files[i]).name
                if j < k_shot:
                    (out / "support" / c / fname).write_bytes(data)
                else:
                    qname = f"{q_index:04d}_{fname}"
                    (out / "query" / qname).write_bytes(data)
                    truth_rows.append((qname, c))
                    q_index += 1
    finally:
        if src.is_zip:
            zf.close()
    with open(out / "truth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "class"])
        w.writerows(sorted(truth_rows))
    return {"classes": picked, "support": n_way * k_shot, "query": len(truth_rows), "truth": str(out / "truth.csv")}
