"""Where and how a result file was produced: the command, the code's commit, the machine.

Every JSON result the CLI writes (``metafit compare --out``) carries this record, so a figure
quoted from it can be reproduced: ``scripts/results_index.py`` reads it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["provenance", "start_commit"]


def _commit() -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes), ``None`` outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "") if sha else None


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def start_commit() -> str | None:
    """The commit to record for a command that runs long: read it when the command starts (the
    checkout may move while it runs; the code already imported does not)."""
    return _commit()


def provenance(argv: Sequence[str], *, started: float | None = None, commit: str | None = None) -> dict[str, Any]:
    """The provenance record of a result.

    Args:
        argv: The command's arguments after the program name (``sys.argv[1:]`` of ``metafit``).
        started: ``time.time()`` when the command started (default: now).
        commit: The commit read when the command started (:func:`start_commit`; default: now).

    Returns:
        ``{"command", "commit", "started", "date", "cpu", "cores", "threads", "torch", "python",
        "cuda", "executable"}`` (UTC times; ``commit`` is the git checkout holding this module's
        source, ``None`` outside one: an editable install reports the code that ran).
    """
    fmt = "%Y-%m-%d %H:%M:%S UTC"
    return {
        "command": " ".join(["metafit", *argv]),
        "commit": commit if commit is not None else _commit(),
        "started": time.strftime(fmt, time.gmtime(started if started is not None else time.time())),
        "date": time.strftime(fmt, time.gmtime()),
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "executable": Path(sys.executable).name,
    }
