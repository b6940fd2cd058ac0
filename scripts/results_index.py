"""Write ``results/INDEX.md``: one row per file under ``results/``, read from the JSON provenance.

Each row gives the file, what it holds, the command that produced it, the commit, the machine,
the date and the docs that cite it. A PNG takes its provenance from the JSON whose ``plot`` field
names it; a GPU description (``results/gpu/*.txt``) from the JSON of the same device run
(:data:`COMPANIONS`). Files git ignores (logs, ``results/main_sinusoid.json`` of
``scripts/main.sh``) are left out.

Usage (from the repository root)::

    python scripts/results_index.py            # rewrite results/INDEX.md
    python scripts/results_index.py --check    # exit 1 if INDEX.md is stale or a file is cited by no doc

``tests/test_docs_tables.py`` runs :func:`check`. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_tables  # noqa: E402  (the table registry: which doc cites which JSON)

ROOT = Path(__file__).resolve().parents[1]
INDEX = "results/INDEX.md"
# files that are not JSON and name no plot field: the JSON of the same run
COMPANIONS = {
    "results/gpu/gpu.txt": ("results/gpu/speed_cuda.json", "nvidia-smi and torch version of the device run"),
    "results/gpu/gpu2.txt": (
        "results/gpu/omniglot_maml_paper_5w1s.json",
        "nvidia-smi and torch version of the device run (`scripts/gpu_maml.sh`)",
    ),
}

Json = dict[str, Any]


def pm(m: float, c: float) -> str:
    return f"{m:.2f} ± {c:.2f}"


def holds(d: Json) -> str:
    """One line on what a benchmark JSON holds."""
    kind = d.get("benchmark", "?")
    if kind == "?" and "settings" in d and "runs" in d:  # a `metafit compare --out` file
        kind = "compare"
    if kind == "?" and "results" in d and "checkpoint" in d:  # a `metafit eval --out` file
        r0 = d["results"][0]
        shots = ", ".join(str(r["k_shot"]) for r in d["results"])
        return (
            f"metafit eval: {r0['algo']} on {r0['dataset']}, k_shot {shots}, {r0['episodes']} held-out tasks each, "
            f"step {d['step']:,}"
        )
    if kind == "monitor_curve":
        return f"monitor curve of {d['run']}: {len(d['rows'])} points, final {d['final']}"
    if kind == "sinusoid":
        algos = sorted({r["algo"] for r in d["runs"]})
        ks = sorted({r["k_train"] for r in d["runs"]})
        return (
            f"sinusoid regression: {', '.join(algos)} trained with K = {', '.join(map(str, ks))}, "
            f"{d['iterations']:,} iterations, MSE on {d['eval_tasks']:,} held-out tasks"
        )
    if kind == "omniglot" and d["rows"] and "config" in d["rows"][0]:  # the product path: a config per row
        parts = [
            f"{r['config']} ({r['learner']}): {r['n_way']}-way {r['k_shot']}-shot {pm(r['accuracy'], r['ci95'])}% "
            f"on {r['episodes']} episodes after {r['train_minutes']:.1f} training min"
            for r in d["rows"]
        ]
        return "Omniglot via metafit train + eval: " + "; ".join(parts)
    if kind == "omniglot":
        parts = [
            f"{r['learner']} {r['n_way']}-way {r['k_shot']}-shot, {r['protocol']} protocol, "
            f"{r['train_minutes']:.1f} training min on {r['device']}: {pm(r['accuracy'], r['ci95'])}%"
            for r in d["rows"]
        ]
        return "Omniglot " + "; ".join(parts)
    if kind == "time_to_accuracy" and d["rows"] and "seed" in d["rows"][0]:  # the product path
        parts = [
            f"seed {r['seed']}: 98% at {r['first_minutes'].get('98.0') or 'not reached'} min, final "
            f"{pm(r['final']['accuracy'], r['final']['ci95'])}% ({r['final']['episodes']} episodes), "
            f"{r['iterations']:,} episodes in {r['train_minutes']:.2f} min"
            for r in d["rows"]
        ]
        return f"Omniglot time to accuracy via metafit train ({d['rows'][0]['config'].split('/')[-1]}): " + "; ".join(
            parts
        )
    if kind == "time_to_accuracy":
        parts = []
        for r in d["rows"]:
            ep = f", {r['train_way']}-way {r['train_query']}-query episodes" if "train_query" in r else ""
            fin = next((f for f in r.get("final", []) if f["n_way"] == 5 and f["k_shot"] == 1), None)
            tail = f", final 5w1s {pm(fin['accuracy'], fin['ci95'])}%" if fin else ""
            parts.append(f"{r['learner']}{ep}, {r['budget_minutes']:g}-min budget, {r['iterations']:,} episodes{tail}")
        return "Omniglot time to accuracy: " + "; ".join(parts)
    if kind in ("speed", "compile_modes"):
        setups = ", ".join(f"{s['setup']} ({len(s['variants'])} variants)" for s in d["setups"])
        what = "timings (meta-gradient or ProtoNet episode)" if kind == "speed" else "compiled-vmap timings"
        return f"{what}: {setups}"
    if kind == "cnp_sinusoid":
        extra = "; CNP on Omniglot" if "omniglot" in d else ""
        return (
            f"CNP sinusoid: {d.get('bound', 'variance')} bound, floor {d.get('min_variance', 0.1)}, "
            f"{d['train']['iterations']:,} iterations, MSE/NLL/coverage at K = {', '.join(d['eval'])}{extra}"
        )
    if kind == "fusion_omniglot":
        return (
            f"model fusion on Omniglot, {d.get('scenario', 'homogeneous')} base models, "
            f"{len(d['base_models'])} base models, K = {', '.join(d['eval'])}"
        )
    if kind == "eval_unrotated":
        return "metafit eval --no-test-rotations of the product-path ProtoNets runs: " + "; ".join(
            f"{k} {pm(v['accuracy'], v['ci95'])}%" for k, v in d["runs"].items()
        )
    if kind == "compare" and d.get("kind") == "regression":
        st = d["settings"][0]
        sizes = ", ".join(str(s["k_shot"]) if s["context"] == "fixed" else "drawn per task" for s in d["settings"])
        return (
            f"metafit compare of regression runs: {len(d['runs'])} runs on {st['episodes']} fixed {st['dataset']} "
            f"tasks per context size ({sizes}), paired target log-likelihood and MSE"
        )
    if kind == "compare":
        st = d["settings"][0]
        ds = st.get("dataset")
        where = ds if isinstance(ds, str) else (ds or {}).get("dataset", "")
        return (
            f"metafit compare: {len(d['runs'])} runs on {st['episodes']} fixed {st['n_way']}-way {st['k_shot']}-shot "
            f"episodes{', ' + where if where else ''}, {st['protocol']} protocol, paired tests, seed groups, calibration"
        )
    if kind == "data_path":
        return (
            f"data path: {d['classes']} classes x {d['per_class']} images 84x84 RGB, episode sampling "
            f"{1000 * d['sample_median_s']:.2f} ms = {100 * d['sample_share_of_step']:.2f}% of a ProtoNet step"
        )
    if kind == "distributed":
        works = sorted({r["workload"] for r in d["results"]})
        return f"multi-process scaling: {', '.join(works)}"
    return kind


def machine(p: Json) -> str:
    host = f"{p['cores']}-core {p['cpu']}"
    if p.get("cuda"):
        host = f"{p['cuda']} ({host})"
    return f"{host}, {p['threads']} thread(s), torch {p['torch']}"


def cited_in(root: Path, rel: str) -> list[str]:
    """The docs whose text names the file or that hold a generated table read from it."""
    out = []
    for path in results_tables.doc_files(root):
        text = path.read_text()
        tables = {m.group("name") for m in results_tables.MARKER.finditer(text)}
        if rel in text or any(rel in results_tables.TABLES[t].files for t in tables if t in results_tables.TABLES):
            out.append(str(path.relative_to(root)))
    return out


def git_ignored(root: Path, rels: Sequence[str]) -> set[str]:
    """The paths among ``rels`` that git ignores in ``root`` (none when ``root`` is not a git checkout)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "check-ignore", "--stdin"],
            input="\n".join(rels),
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return set()
    return set(done.stdout.splitlines()) if done.returncode in (0, 1) else set()


def result_files(root: Path = ROOT) -> list[Path]:
    """Every file under ``results/`` except INDEX.md and what git ignores (logs, local outputs)."""
    files = sorted(p for p in (root / "results").rglob("*") if p.is_file() and p.name != "INDEX.md")
    skip = git_ignored(root, [str(p.relative_to(root)) for p in files])
    return [p for p in files if str(p.relative_to(root)) not in skip]


def rows(root: Path = ROOT) -> list[list[str]]:
    files = result_files(root)
    plots: dict[str, str] = {}
    for p in files:
        if p.suffix == ".json":
            plot = json.loads(p.read_text()).get("plot")
            if plot:
                plots[plot] = str(p.relative_to(root))
    out = []
    for p in files:
        rel = str(p.relative_to(root))
        if p.suffix == ".json":
            source, what = rel, holds(json.loads(p.read_text()))
        elif rel in plots:
            source, what = plots[rel], f"plot of four held-out tasks from `{plots[rel]}`"
        elif rel in COMPANIONS:
            source, what = COMPANIONS[rel]
            what = f"{what} of `{source}`: " + " / ".join(p.read_text().strip().splitlines()[1:])
        else:
            raise SystemExit(f"{rel}: no provenance (not JSON, no JSON names it as its plot, not in COMPANIONS)")
        prov = json.loads((root / source).read_text())["provenance"]
        date = prov["date"] if "started" not in prov else f"{prov['started']} to {prov['date']}"
        out.append(
            [
                f"`{rel}`",
                what,
                f"`{prov['command']}`",
                f"`{prov['commit']}`",
                machine(prov),
                date,
                ", ".join(cited_in(root, rel)) or "none",
            ]
        )
    return out


def render(root: Path = ROOT) -> str:
    header = ["file", "holds", "command (as recorded)", "commit", "machine", "date (UTC)", "cited in"]
    body = results_tables.markdown(header, rows(root))
    return (
        "# Results index\n\n"
        "Generated by `python scripts/results_index.py` from each file's JSON provenance; do not edit by hand\n"
        "(`--check` fails when it is stale). The command is the one the JSON recorded: `--out` paths of runs\n"
        "written elsewhere and then copied here differ, and environment variables are not recorded (the docs\n"
        'give the full commands). Commits: see "Commits" in `docs/results.md`.\n\n' + body
    )


def check(root: Path = ROOT) -> list[str]:
    problems = []
    path = root / INDEX
    if not path.is_file() or path.read_text() != render(root):
        problems.append(f"{INDEX} is stale: run python scripts/results_index.py")
    for r in rows(root):
        if r[-1] == "none":
            problems.append(f"{r[0]} is cited by no doc (README.md, docs/*.md)")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if INDEX.md is stale or a file is uncited")
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.root)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    (args.root / INDEX).write_text(render(args.root))
    print(f"wrote {INDEX}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
