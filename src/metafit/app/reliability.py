"""Reliability diagram PNG (matplotlib, Agg backend) for `metafit compare --out` and reports.

Top panel: per-bin accuracy as bars over the equal-width confidence bins, the diagonal of perfect
calibration, the mean confidence per bin as points, the gap shaded; bottom panel: queries per bin.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["plot_reliability"]


def plot_reliability(diagram_data: Any, path: str | Path, *, title: str = "", ece: float | None = None) -> Path:
    """Writes a reliability diagram.

    Args:
        diagram_data: A :class:`metafit.calibration.ReliabilityDiagram` or its ``to_dict()``
            (``edges``, ``confidence``, ``accuracy``, ``count``; ``None`` for empty bins).
        path: Output PNG.
        title: Figure title.
        ece: Shown in the title when given.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    d = diagram_data.to_dict() if hasattr(diagram_data, "to_dict") else diagram_data
    if not isinstance(d, Mapping) or not {"edges", "confidence", "accuracy", "count"} <= set(d):
        raise ValueError("diagram_data must be a ReliabilityDiagram or a dict with edges, confidence, accuracy, count")
    edges = [float(e) for e in d["edges"]]
    n = len(edges) - 1
    if not (len(d["confidence"]) == len(d["accuracy"]) == len(d["count"]) == n):
        raise ValueError(f"diagram_data must have {n} bins per field for {n + 1} edges")
    left = edges[:-1]
    width = [edges[i + 1] - edges[i] for i in range(n)]
    centre = [(edges[i] + edges[i + 1]) / 2 for i in range(n)]
    full = [i for i in range(n) if d["count"][i]]
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(
        [left[i] for i in full],
        [d["accuracy"][i] for i in full],
        width=[width[i] for i in full],
        align="edge",
        color="#4c72b0",
        edgecolor="black",
        linewidth=0.5,
        label="accuracy",
    )
    for i in full:
        acc, conf = d["accuracy"][i], d["confidence"][i]
        ax.bar(
            left[i],
            conf - acc,
            bottom=acc,
            width=width[i],
            align="edge",
            color="#dd8452",
            alpha=0.35,
            edgecolor="#dd8452",
            linewidth=0.5,
            label="gap" if i == full[0] else None,
        )
    ax.plot([centre[i] for i in full], [d["confidence"][i] for i in full], "k.", ms=5, label="mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    head = title or "reliability diagram"
    sub = f"ECE {ece:.3f}, {n} equal-width bins" if ece is not None else f"{n} equal-width bins"
    ax.set_title(f"{head}\n{sub}", fontsize=10)
    axc.bar(left, d["count"], width=width, align="edge", color="grey", edgecolor="black", linewidth=0.5)
    axc.set_xlabel("confidence (max probability)")
    axc.set_ylabel("queries")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
