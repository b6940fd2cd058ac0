"""``metafit predict``: adapt a trained run to a folder of labelled images and score new images."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

__all__ = ["predict_folders", "write_predictions_csv"]


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
    sx, sy, classes = ds.load_support_folder(support_dir, image_size=size)
    qx, files = ds.load_image_folder(query_dir, image_size=size)
    adapted = predictor.adapt(sx, sy, n_way=len(classes), classes=classes)
    scores = adapted(qx)
    rows = []
    for f, s in zip(files, scores.tolist()):
        rows.append((str(f), classes[max(range(len(s)), key=s.__getitem__)], s))
    return rows, list(classes)


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

