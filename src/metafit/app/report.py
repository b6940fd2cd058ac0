"""Markdown and HTML reports comparing runs: one table with 95% CIs, plots embedded.

``report.md`` links the PNGs (copied next to it); ``report.html`` is self-contained (PNGs as
base64 data URIs).
"""

from __future__ import annotations

import base64
import html
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metafit.app.plotting import load_evals, plot_compare_sweeps, plot_run

__all__ = ["write_report", "comparison_rows"]


def comparison_rows(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One row per (run, evaluation setting): config summary and mean ± 95% CI per metric.

    Raises:
        FileNotFoundError: a folder is not a run folder.
    """
    rows = []
    for rd in run_dirs:
        d = Path(rd)
        cfg_path = d / "config.json"
        if not cfg_path.exists():
            raise FileNotFoundError(f"not a metafit run folder (no config.json): {d}")
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        evals = load_evals(d)
        base = {
            "run": d.name,
            "algo": cfg["algo"]["name"],
            "dataset": cfg["data"]["dataset"],
            "steps": cfg["train"]["steps"],
        }
        if not evals:
            rows.append({**base, "setting": "not evaluated", "metrics": {}})
            continue
        for e in evals:
            for r in e["results"]:
                way = f"{r['n_way']}-way " if r.get("n_way") else ""
                rows.append(
                    {
                        **base,
                        "setting": f"{way}{r['k_shot']}-shot, {r['episodes']} tasks"
                        if r.get("k_shot") is not None
                        else f"context sizes per task, {r['episodes']} tasks",
                        "file": e["_file"],
                        "metrics": {k: v for k, v in r["metrics"].items() if k != "loss" or len(r["metrics"]) == 1},
                    }
                )
    return rows


def _fmt(m: dict[str, Any] | None) -> str:
    return "-" if not m else f"{m['mean']:.4g} ± {m['ci95']:.2g}"


def _compare_sections(files: Sequence[str | Path], out: Path) -> tuple[list[str], list[str]]:
    """Markdown and HTML of ``metafit compare --out`` results: tables, verdicts, reliability
    diagrams, and way/shot curves when the result holds several settings."""
    from metafit.app.compare import compare_markdown

    md: list[str] = []
    h: list[str] = []
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise FileNotFoundError(f"compare result not found: {p} (write one with metafit compare ... --out FILE)")
        data = json.loads(p.read_text(encoding="utf-8"))
        if "settings" not in data:
            raise ValueError(f"{p} is not a metafit compare result (no 'settings')")
        text = compare_markdown(data)
        md += [f"## Comparison: {p.name}", "", ("\n" + text).replace("\n## ", "\n### ").lstrip("\n")]
        h.append(f"<h2>Comparison: {html.escape(p.name)}</h2><pre>{html.escape(text)}</pre>")
        sweeps = plot_compare_sweeps(data, out / "plots", p.stem)
        pngs = sorted(p.parent.glob(f"{p.stem}_reliability_*.png"))
        for png in [*sweeps, *pngs]:
            dest = out / "plots" / png.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if png != dest:
                shutil.copyfile(png, dest)
            md.append(f"![{png.stem}]({dest.relative_to(out).as_posix()})")
            b64 = base64.b64encode(dest.read_bytes()).decode()
            h.append(
                f"<figure style='display:inline-block'><img alt='{html.escape(png.stem)}' "
                f"src='data:image/png;base64,{b64}'><figcaption>{html.escape(png.stem)}</figcaption></figure>"
            )
        md.append("")
    return md, h


def write_report(
    run_dirs: Sequence[str | Path], out_dir: str | Path, *, compare_files: Sequence[str | Path] = ()
) -> tuple[Path, Path]:
    """Writes ``report.md`` and ``report.html`` into ``out_dir``; returns their paths.

    Args:
        run_dirs: Run folders (their evaluations and plots).
        out_dir: Output folder.
        compare_files: ``metafit compare --out`` JSON files: their tables, verdicts and
            reliability diagrams are added.
    """
    if not run_dirs and not compare_files:
        raise ValueError("report needs at least one run folder or compare result")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = comparison_rows(run_dirs)
    metrics = sorted({k for r in rows for k in r["metrics"]})
    head = ["run", "algo", "dataset", "steps", "setting", *[f"{m} (mean ± 95% CI)" for m in metrics]]
    table = [
        [
            str(r["run"]),
            r["algo"],
            r["dataset"],
            str(r["steps"]),
            r["setting"],
            *[_fmt(r["metrics"].get(m)) for m in metrics],
        ]
        for r in rows
    ]
    plots: list[tuple[str, Path]] = []
    for rd in run_dirs:
        d = Path(rd)
        for p in plot_run(d):
            dest = out / "plots" / f"{d.name}-{p.name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest)
            plots.append((f"{d.name}: {p.stem.replace('_', ' ')}", dest))

    md = [
        "# metafit report",
        "",
        "Mean ± 95% confidence half-width over the evaluation tasks (1.96·std/√n).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    md += ["| " + " | ".join(row) + " |" for row in table]
    md += ["", "## Plots", ""]
    md += [f"![{t}]({p.relative_to(out).as_posix()})" for t, p in plots]
    cmp_md, cmp_html = _compare_sections(compare_files, out)
    md += ["", *cmp_md]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")

    e = html.escape
    h = [
        "<!doctype html><html><head><meta charset='utf-8'><title>metafit report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px}img{max-width:48%;margin:4px}</style></head><body>",
        "<h1>metafit report</h1><p>Mean ± 95% confidence half-width over the evaluation tasks.</p><table>",
        "<tr>" + "".join(f"<th>{e(c)}</th>" for c in head) + "</tr>",
    ]
    h += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table]
    h.append("</table><h2>Plots</h2>")
    for t, p in plots:
        b64 = base64.b64encode(p.read_bytes()).decode()
        h.append(
            f"<figure style='display:inline-block'><img alt='{e(t)}' src='data:image/png;base64,{b64}'><figcaption>{e(t)}</figcaption></figure>"
        )
    h += cmp_html
    h.append("</body></html>")
    html_path = out / "report.html"
    html_path.write_text("\n".join(h), encoding="utf-8")
    return md_path, html_path
