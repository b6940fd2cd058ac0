"""Shared plumbing for benchmark scripts: the --out/--quick contract, provenance, tables."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def parser(description: str) -> argparse.ArgumentParser:
    """An ArgumentParser with the flags every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    p.add_argument("--quick", action="store_true", help="a smoke-sized run that finishes in under a minute")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="base seed")
    p.add_argument(
        "--keep-freed-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="glibc malloc keeps freed memory (metafit.runtime.keep_freed_memory; same results, fewer "
        "page faults); --no-keep-freed-memory leaves glibc's defaults, as runs before 2026-11-27 did",
    )
    return p


def _git_commit() -> str:
    """The checkout's short commit (``+dirty`` with uncommitted changes to tracked files)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parent,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    return commit + ("+dirty" if dirty else "")


# Read when the benchmark starts: a long run must record the code it ran, not the commit the
# checkout has moved on to by the time the figures are written.
_START_COMMIT = _git_commit()
_START_DATE = time.strftime("%Y-%m-%d %H:%M:%S %Z")


def provenance() -> dict[str, Any]:
    """Where and how a figure was produced (commit as of the start of the run)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": _START_COMMIT,
        "started": _START_DATE,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "malloc": _MALLOC["mode"],
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_out(path: Path | None, payload: dict[str, Any]) -> None:
    """Writes ``payload`` (plus provenance) as JSON if ``path`` is given."""
    payload = {"provenance": provenance(), **payload}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, path)


def setup_threads(n: int | None, keep_memory: bool = False) -> None:
    """Sets torch's thread count (if given) and, with ``keep_memory``, glibc's malloc to keep freed memory."""
    if n is not None:
        torch.set_num_threads(n)
    if keep_memory:
        from metafit.runtime import keep_freed_memory

        _MALLOC["mode"] = "keep freed memory (mallopt)" if keep_freed_memory() else "default (not glibc)"


_MALLOC = {"mode": "default"}


def record_process_settings(config: Any) -> None:
    """Applies a run config's process-wide settings (as ``metafit train`` does) and records them."""
    from metafit.app.runs import apply_process_settings

    apply_process_settings(config)
    if config.train.keep_freed_memory:
        _MALLOC["mode"] = "keep freed memory (mallopt, train.keep_freed_memory)"


def data_root(arg: str | None) -> str:
    """--data-root, else $METAFIT_DATA, else ../shared/data beside the repository."""
    if arg:
        return arg
    env = os.environ.get("METAFIT_DATA")
    if env:
        return env
    return str(Path(__file__).resolve().parents[2] / "shared" / "data")
