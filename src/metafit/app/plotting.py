"""PNG plots of a run folder (matplotlib, Agg backend: no display needed).

* ``learning_curve.png``: training loss and accuracy/mse per logged step, validation points;
* ``adaptation_curve.png``: query error vs inner steps with 95% CI bands (gradient learners);
* ``task_errors.png``: histogram of the per-task error of the final evaluation;
* ``shots.png``: accuracy (or mse) vs shots, when an evaluation file holds several shots.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metafit.algorithms.base import MetaParams
from metafit.algorithms.cnp import _z

__all__ = [
    "plot_run",
    "plot_learning_curve",
    "plot_adaptation_curve",
    "plot_task_errors",
    "plot_shots",
    "plot_compare_sweeps",
    "load_evals",
    "plot_regression_tasks",
]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def load_evals(run_dir: str | Path) -> list[dict[str, Any]]:
    """Evaluation documents of a run (``eval.json`` first, then ``eval*.json``)."""
    d = Path(run_dir)
    files = sorted(d.glob("eval*.json"), key=lambda p: (p.name != "eval.json", p.name))
    out = []
    for p in files:
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict) and doc.get("results"):
            doc["_file"] = p.name
            out.append(doc)
    return out


def _error_key(metrics: dict[str, Any]) -> tuple[str, bool]:
    """(metric, is_accuracy): errors are plotted as 1 - accuracy or mse."""
    return ("accuracy", True) if "accuracy" in metrics else ("mse" if "mse" in metrics else "loss", False)


def plot_learning_curve(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Training loss (and accuracy/mse) per logged step, plus validation points."""
    plt = _plt()
    train = [r for r in rows if r.get("kind", "train") == "train"]
    val = [r for r in rows if r.get("kind") == "val"]
    if not train:
        raise ValueError("no training rows to plot (metrics.jsonl is empty)")
    second = next((k for k in ("accuracy", "mse") if k in train[0]), None)
    fig, axes = plt.subplots(1, 2 if second else 1, figsize=(10 if second else 5, 3.6), squeeze=False)
    steps = [r["step"] for r in train]
    axes[0][0].plot(steps, [r["loss"] for r in train], lw=1)
    axes[0][0].set(
        xlabel="step", ylabel="meta-training loss", yscale="log" if min(r["loss"] for r in train) > 0 else "linear"
    )
    if second:
        ax = axes[0][1]
        ax.plot(steps, [r[second] for r in train], lw=1, label="train (query)")
        vs = [r for r in val if second in r]
        if vs:
            ax.errorbar(
                [r["step"] for r in vs],
                [r[second] for r in vs],
                yerr=[r.get(f"{second}_ci95", 0) for r in vs],
                fmt="o",
                ms=3,
                label="validation ± 95% CI",
            )
        ax.set(xlabel="step", ylabel=second)
        ax.legend()
    fig.suptitle(title or "learning curve")
    return _save(fig, Path(path))


def plot_adaptation_curve(result: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Query error vs inner steps (mean with a 95% CI band) from one evaluation result."""
    plt = _plt()
    key, acc = _error_key(result["curve"])
    curve = result["curve"][key]
    x = list(range(len(curve)))
    mean = [(1 - c["mean"]) if acc else c["mean"] for c in curve]
    ci = [c["ci95"] for c in curve]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(x, mean, marker="o")
    ax.fill_between(x, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)], alpha=0.25)
    ax.set(
        xlabel="inner steps",
        ylabel="query error (1 - accuracy)" if acc else f"query {key}",
        title=title or "adaptation curve",
    )
    return _save(fig, Path(path))


def plot_task_errors(result: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Histogram of per-task errors of one evaluation result."""
    plt = _plt()
    key, acc = _error_key(result["per_task"])
    vals = [(1 - v) if acc else v for v in result["per_task"][key]]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.hist(vals, bins=min(30, max(5, len(vals) // 5)))
    ax.set(
        xlabel="per-task error (1 - accuracy)" if acc else f"per-task {key}",
        ylabel="tasks",
        title=title or f"per-task error ({len(vals)} tasks)",
    )
    return _save(fig, Path(path))


def plot_shots(results: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Metric vs shots (with 95% CI error bars) for results at several ``k_shot``."""
    plt = _plt()
    key, _ = _error_key(results[0]["metrics"])
    rs = sorted(results, key=lambda r: r["k_shot"])
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.errorbar(
        [r["k_shot"] for r in rs],
        [r["metrics"][key]["mean"] for r in rs],
        yerr=[r["metrics"][key]["ci95"] for r in rs],
        marker="o",
        capsize=3,
    )
    ax.set(xlabel="shots (k_shot)", ylabel=key, title=title or f"{key} vs shots")
    return _save(fig, Path(path))


def plot_compare_sweeps(data: dict[str, Any], out_dir: str | Path, stem: str) -> list[Path]:
    """Way and shot curves of a ``metafit compare`` result: accuracy (95% CI bars) per run.

    One plot per fixed ``k_shot`` whose settings vary ``n_way`` (``{stem}_way_{k}shot.png``) and
    one per fixed ``n_way`` whose settings vary ``k_shot`` (``{stem}_shot_{n}way.png``); a result
    with a single setting has none.

    Args:
        data: The JSON written by ``metafit compare --out``.
        out_dir: Folder of the PNGs.
        stem: Prefix of their names.

    Returns:
        The PNG paths.
    """
    settings = [s for s in data["settings"] if "comparison" in s]
    paths: list[Path] = []
    for axis, fixed in (("n_way", "k_shot"), ("k_shot", "n_way")):
        by_fixed: dict[int, list[dict[str, Any]]] = {}
        for s in settings:
            by_fixed.setdefault(int(s[fixed]), []).append(s)
        for value, group in sorted(by_fixed.items()):
            if len({int(s[axis]) for s in group}) < 2:
                continue
            group = sorted(group, key=lambda s: int(s[axis]))
            plt = _plt()
            fig, ax = plt.subplots(figsize=(5.5, 3.8))
            names = list(dict.fromkeys(r["name"] for s in group for r in s["comparison"]["runs"]))
            for name in names:
                pts = [(int(s[axis]), r) for s in group for r in s["comparison"]["runs"] if r["name"] == name]
                xs = [x for x, _ in pts]
                ys = [100 * r["mean"] for _, r in pts]
                err = [[100 * (r["mean"] - r["low"]) for _, r in pts], [100 * (r["high"] - r["mean"]) for _, r in pts]]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
            label = "classes per episode (n_way)" if axis == "n_way" else "shots per class (k_shot)"
            title = f"accuracy vs {axis}, {value}-{'shot' if fixed == 'k_shot' else 'way'}"
            ax.set(xlabel=label, ylabel="accuracy % (95% CI)", title=title)
            ax.set_xticks(sorted({int(s[axis]) for s in group}))
            ax.legend(fontsize=7)
            name = f"{stem}_way_{value}shot.png" if axis == "n_way" else f"{stem}_shot_{value}way.png"
            paths.append(_save(fig, Path(out_dir) / name))
    return paths


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Writes every plot the run folder has data for; returns the PNG paths.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run folder.
    """
    from metafit.app.runs import read_metrics

    d = Path(run_dir)
    if not (d / "config.json").exists():
        raise FileNotFoundError(f"not a metafit run folder (no config.json): {d}")
    out = Path(out_dir) if out_dir else d / "plots"
    name = d.name
    paths = []
    rows = read_metrics(d)
    if any(r.get("kind", "train") == "train" for r in rows):
        paths.append(plot_learning_curve(rows, out / "learning_curve.png", title=f"{name}: learning curve"))
    evals = load_evals(d)
    if evals:
        main = evals[0]["results"][0]
        if main.get("curve"):
            paths.append(plot_adaptation_curve(main, out / "adaptation_curve.png", title=f"{name}: adaptation"))
        paths.append(plot_task_errors(main, out / "task_errors.png", title=f"{name}: per-task error"))
        multi = next((e["results"] for e in evals if len({r["k_shot"] for r in e["results"]}) > 1), None)
        if multi:
            paths.append(plot_shots(multi, out / "shots.png", title=f"{name}: shots"))
    return paths


def plot_regression_tasks(
    algorithm: Any,
    model: nn.Module,
    meta_params: MetaParams,
    contexts: Sequence[tuple[Tensor, Tensor]],
    truths: Sequence[Any],
    path: str | Path,
    *,
    level: float = 0.9,
    x_range: tuple[float, float] = (-5.0, 5.0),
    titles: Sequence[str] | None = None,
) -> Path:
    """Plots a few 1-D regression tasks to a PNG (matplotlib, Agg backend).

    Each panel shows the context points, the true function, the predictive mean and the central
    ``level`` interval.

    Args:
        algorithm: A regression learner with ``predict_distribution`` (e.g. :class:`metafit.algorithms.CNP`).
        model: A 1-D-input, 1-D-output network.
        meta_params: Trained meta-parameters.
        contexts: Per panel ``(context_x (C, 1), context_y (C, 1))``.
        truths: Per panel a callable ``x (G, 1) -> y (G, 1)`` (the true function).
        path: Output PNG.
        level: Interval to draw.
        x_range: Plotted input range.
        titles: Optional panel titles.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    n = len(contexts)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
    z = _z(level)
    grid = torch.linspace(x_range[0], x_range[1], 200).unsqueeze(-1)
    for i, ((cx, cy), truth) in enumerate(zip(contexts, truths)):
        ax = axes[0][i]
        with torch.no_grad():
            state = algorithm.adapt(model, meta_params, {}, cx, cy)
            mean, var = algorithm.predict_distribution(model, meta_params, {}, state, grid.to(cx.dtype))
            sd = var.sqrt()
        g = grid.squeeze(-1).numpy()
        ax.plot(g, truth(grid).squeeze(-1).numpy(), "k--", lw=1, label="true function")
        ax.plot(g, mean.squeeze(-1).numpy(), "C0", lw=1.5, label="predictive mean")
        ax.fill_between(
            g,
            (mean - z * sd).squeeze(-1).numpy(),
            (mean + z * sd).squeeze(-1).numpy(),
            color="C0",
            alpha=0.25,
            label=f"{int(round(100 * level))}% interval",
        )
        ax.plot(cx.squeeze(-1).numpy(), cy.squeeze(-1).numpy(), "ko", ms=4, label="context")
        ax.set_title(titles[i] if titles else f"task {i}, {cx.shape[0]} context points")
        if i == 0:
            ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
