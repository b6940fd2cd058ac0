"""The core never imports the application: ``import metafit`` and every core module load without
``metafit.app`` (config files, run folders, the CLI, reports, plots, pipelines)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import metafit

CORE = sorted(
    m.name
    for m in pkgutil.walk_packages(metafit.__path__, "metafit.")
    if not m.name.startswith("metafit.app") and m.name != "metafit.__main__"
)


def test_core_modules_do_not_import_the_application() -> None:
    code = (
        "import importlib, sys\n"
        f"mods = {CORE!r}\n"
        "bad = {}\n"
        "for m in mods:\n"
        "    importlib.import_module(m)\n"
        "    app = sorted(k for k in sys.modules if k.startswith('metafit.app'))\n"
        "    if app:\n"
        "        bad[m] = app\n"
        "        break\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "{}", f"core module imported the application: {out.stdout}"


def test_the_split_is_visible_in_the_tree() -> None:
    assert "metafit.engine" in CORE and "metafit.algorithms.registry" in CORE
    app = [m.name for m in pkgutil.walk_packages(metafit.__path__, "metafit.") if m.name.startswith("metafit.app.")]
    assert {"metafit.app.cli", "metafit.app.config", "metafit.app.runs", "metafit.app.fuse"} <= set(app)


def test_core_source_names_no_cli_flag() -> None:
    """Core errors name function arguments; only the application speaks of ``--flags``."""
    import re
    from pathlib import Path

    root = Path(metafit.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if "app" in path.relative_to(root).parts:
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"raise \w+\(.*--[a-z][a-z-]+", line) or re.search(r"f?\"[^\"]*\(--[a-z][a-z-]+\)", line):
                offenders.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
