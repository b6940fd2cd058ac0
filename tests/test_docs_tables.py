"""The documentation's result tables and results/INDEX.md agree with the committed JSON files.

Runs the ``--check`` logic of ``scripts/results_tables.py`` and ``scripts/results_index.py`` as
functions (no training, well under a second), so a table edited by hand or left stale after a
JSON changed fails CI.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


tables = _script("results_tables")
index = _script("results_index")


def test_docs_tables_match_the_json() -> None:
    assert tables.check(ROOT) == []


def test_docs_tables_every_registered_table_is_used_and_its_files_exist() -> None:
    used = set()
    for path in tables.doc_files(ROOT):
        used |= {m.group("name") for m in tables.MARKER.finditer(path.read_text())}
    assert sorted(set(tables.TABLES) - used) == []
    missing = [f for t in tables.TABLES.values() for f in t.files if not (ROOT / f).is_file()]
    assert missing == []


def _copy(tmp_path: Path) -> Path:
    for sub in ("docs", "results"):
        shutil.copytree(ROOT / sub, tmp_path / sub)
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    return tmp_path


def test_docs_tables_check_reports_a_hand_edited_cell(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    doc = root / "docs" / "results.md"
    text = doc.read_text()
    cell = "| 0.295 ± 0.027 |"  # MAML 5-shot -> 5-shot in the generated sinusoid table
    assert cell in text
    doc.write_text(text.replace(cell, "| 0.300 ± 0.027 |", 1))
    problems = tables.check(root)
    assert len(problems) == 1 and "'sinusoid'" in problems[0]
    assert tables.write(root) == ["docs/results.md"]
    assert tables.check(root) == [] and doc.read_text() == text


def test_docs_tables_check_reports_a_changed_json(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    path = root / "results" / "distributed.json"
    path.write_text(path.read_text().replace('"it_per_s": 59.0', '"it_per_s": 61.0', 1))
    assert any("'distributed'" in p for p in tables.check(root))


def test_docs_tables_unknown_name_and_open_marker_are_reported() -> None:
    _, problems = tables.update_text("<!-- table: no_such_table -->\n| x |\n<!-- /table -->\n", ROOT)
    assert len(problems) == 1 and "no_such_table" in problems[0]
    _, problems = tables.update_text("<!-- table: sinusoid -->\n| x |\n", ROOT)
    assert len(problems) == 1 and "no matching" in problems[0]


def test_docs_tables_pm_formats_mean_and_interval() -> None:
    assert tables.pm(98.8546, 0.15983) == "98.85 ± 0.16"
    assert tables.pm(float("nan"), 0.1) == "diverged (nan)"
    assert tables.sig(0.0474012) == "0.04740" and tables.sig(3.58626) == "3.586"


def test_results_index_is_up_to_date() -> None:
    assert index.check(ROOT) == []


@pytest.mark.parametrize("missing", ["results/sinusoid.json"])
def test_results_index_check_reports_a_removed_file(tmp_path: Path, missing: str) -> None:
    root = _copy(tmp_path)
    (root / missing).unlink()
    assert index.check(root) != []
