"""``metafit predict``: adapt a trained run to a labelled support set and score new examples.

The inputs are read with the checkpoint's recorded preprocessing, by kind:

* images: ``--support`` is a folder with one sub-folder of images per class, ``--query`` a folder
  of images (Omniglot runs with Omniglot's preprocessing; image-folder runs decoded exactly as
  their training images, size and grey/RGB from the checkpoint);
* tables: ``--support`` is a CSV with the training label column, ``--query`` a CSV of rows
  (the training standardisation and one-hot encoding are applied; extra columns are ignored);
* arrays: ``--support`` is a ``.npz`` with ``x`` and ``y``, ``--query`` a ``.npz`` (or ``.npy``) with ``x``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

__all__ = ["predict_folders", "predict_files", "write_predictions_csv"]


def predict_folders(
    checkpoint: str | Path, support_dir: str | Path, query_dir: str | Path, *, data_root: str | None = None
) -> tuple[list[tuple[str, str, list[float]]], list[str]]:
    """Adapts a trained image classifier to a folder of labelled images and scores new images.

    Args:
        checkpoint: Run folder or checkpoint file.
        support_dir: One sub-folder of images per class (the sub-folder name is the class).
        query_dir: Images to classify (all scored together, in file-name order).

    Returns:
        ``([(file, predicted_class, [score per class])], class_names)``.

    Raises:
        FileNotFoundError, ValueError: missing folders, unreadable images, a class count the
            model cannot handle, or a checkpoint that is not an image classifier.
    """
    from metafit.app.runs import load_predictor
    from metafit.data import datasets as ds

    predictor = load_predictor(checkpoint)
    pre = predictor.preprocessing
    if pre.get("kind") != "image":
        raise ValueError(f"checkpoint {checkpoint} is not an image classifier (preprocessing kind {pre.get('kind')!r})")
    size = int(pre["image_size"])
    if pre.get("source") is not None and not pre.get("invert", False):  # an image-folder run
        sx, sy, classes, qx, files = _image_folders(support_dir, query_dir, size, int(pre.get("channels", 1)))
    else:  # Omniglot's preprocessing (ink inverted to 1)
        sx, sy, classes = ds.load_support_folder(support_dir, image_size=size)
        qx, files = ds.load_image_folder(query_dir, image_size=size)
    return _score(predictor, sx, sy, list(classes), qx, [str(f) for f in files])


def _image_folders(support_dir: str | Path, query_dir: str | Path, size: int, channels: int) -> tuple:
    import torch

    from metafit.data.sources import IMAGE_SUFFIXES, load_image_files

    def images(folder: Path) -> list[Path]:
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    sup = Path(support_dir)
    classes = sorted(d.name for d in sup.iterdir() if d.is_dir()) if sup.is_dir() else []
    if not classes:
        raise ValueError(f"support folder {sup} must hold one sub-folder of images per class, found none")
    files, labels = [], []
    for i, c in enumerate(classes):
        found = images(sup / c)
        if not found:
            raise ValueError(f"support class folder {sup / c} holds no images")
        files += found
        labels += [i] * len(found)
    qfiles = images(Path(query_dir))
    if not qfiles:
        raise ValueError(f"query folder {query_dir} holds no images")
    sx = load_image_files(files, image_size=size, channels=channels)
    qx = load_image_files(qfiles, image_size=size, channels=channels)
    return sx, torch.tensor(labels), classes, qx, qfiles


def _score(
    predictor, sx, sy, classes: list[str], qx, names: list[str]
) -> tuple[list[tuple[str, str, list[float]]], list[str]]:  # noqa: ANN001
    adapted = predictor.adapt(sx, sy, n_way=len(classes), classes=classes)
    scores = adapted(qx)
    rows = []
    for f, s in zip(names, scores.tolist()):
        rows.append((f, classes[max(range(len(s)), key=s.__getitem__)], s))
    return rows, list(classes)


def predict_files(
    checkpoint: str | Path, support: str | Path, query: str | Path
) -> tuple[list[tuple[str, str, list[float]]], list[str]]:
    """Adapts a trained classifier to a support set and scores the query examples (any input kind).

    Args:
        checkpoint: Run folder or checkpoint file.
        support: Image folder of class sub-folders, a CSV table with the label column, or a ``.npz``.
        query: Image folder, CSV table or ``.npz``/``.npy``, as the support set.

    Returns:
        ``([(example, predicted_class, [score per class])], class_names)``; ``example`` is the
        file (images) or the row number (tables, arrays).
    """
    import numpy as np
    import torch

    from metafit.app.runs import load_predictor

    predictor = load_predictor(checkpoint)
    pre = predictor.preprocessing
    kind = pre.get("kind")
    if kind == "image":
        return predict_folders(checkpoint, support, query)
    if kind == "table":
        from metafit.data.sources import apply_table_preprocessing

        label = pre.get("label_column")
        srows, qrows = _read_csv(support), _read_csv(query)
        if not srows or label not in srows[0]:
            raise ValueError(f"support table {support} must have the training label column {label!r}")
        classes = sorted({str(r[label]) for r in srows})
        sy = torch.tensor([classes.index(str(r[label])) for r in srows])
        sx, qx = apply_table_preprocessing(pre, srows), apply_table_preprocessing(pre, qrows)
        return _score(predictor, sx, sy, classes, qx, [str(i) for i in range(len(qrows))])
    if kind == "array":
        with np.load(support) as z:
            if "x" not in z or "y" not in z:
                raise ValueError(f"support file {support} must hold arrays 'x' and 'y', found {sorted(z.files)}")
            sx_np, sy_np = z["x"], z["y"]
        if str(query).endswith(".npy"):
            qx_np = np.load(query)
        else:
            with np.load(query) as z:
                if "x" not in z:
                    raise ValueError(f"query file {query} must hold an array 'x', found {sorted(z.files)}")
                qx_np = z["x"]
        scale = 1.0 / 255.0 if sx_np.dtype == np.uint8 else 1.0
        values = sorted({v.item() for v in np.asarray(sy_np).reshape(-1)})
        classes = [str(v) for v in values]
        sy = torch.tensor([values.index(v.item()) for v in np.asarray(sy_np).reshape(-1)])
        sx = torch.as_tensor(sx_np, dtype=torch.float32) * scale
        qx = torch.as_tensor(qx_np, dtype=torch.float32) * (1.0 / 255.0 if qx_np.dtype == np.uint8 else 1.0)
        return _score(predictor, sx, sy, classes, qx, [str(i) for i in range(len(qx))])
    raise ValueError(
        f"checkpoint {checkpoint} is not a classifier of images, tables or arrays (preprocessing kind {kind!r})"
    )


def _read_csv(path: str | Path) -> list[dict[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"table not found: {p}")
    with open(p, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_predictions_csv(
    rows: Sequence[tuple[str, str, list[float]]], classes: Sequence[str], out: str | Path | TextIO
) -> None:
    """Writes ``file,predicted_class,score_<class>...`` rows to a path or text stream."""
    handle: TextIO
    close = False
    if isinstance(out, (str, Path)):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        handle, close = open(out, "w", newline="", encoding="utf-8"), True
    else:
        handle = out
    try:
        w = csv.writer(handle)
        w.writerow(["file", "predicted_class", *[f"score_{c}" for c in classes]])
        for f, pred, s in rows:
            w.writerow([f, pred, *[f"{v:.6g}" for v in s]])
    finally:
        if close:
            handle.close()
