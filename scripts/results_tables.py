"""Render the documentation's result tables from the JSON files under ``results/``.

A table in a Markdown file is delimited by marker comments::

    <!-- table: NAME -->
    | ... generated ... |
    <!-- /table -->

``NAME`` is a key of :data:`TABLES`, which names the JSON files the table is read from and the
function that renders it. Nothing between the markers is written by hand.

Usage (from the repository root)::

    python scripts/results_tables.py            # rewrite every table in README.md and docs/*.md
    python scripts/results_tables.py --check    # exit 1 if any table differs from what the JSON gives
    python scripts/results_tables.py --list     # the table names and their JSON files

``tests/test_docs_tables.py`` runs :func:`check` so that a table that drifts from its JSON fails CI.
Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC_GLOBS = ("README.md", "docs/*.md")
MARKER = re.compile(
    r"^<!-- table: (?P<name>[A-Za-z0-9_.-]+) -->\n(?P<body>.*?)<!-- /table -->", re.DOTALL | re.MULTILINE
)
OPEN = re.compile(r"^<!-- table: ", re.MULTILINE)

Rows = list[list[str]]
Json = dict[str, Any]

# Published numbers the tables compare with (paper, venue, year in docs/results.md).
PAPER_OMNIGLOT = {
    ("maml", 5, 1): "98.7 ± 0.4",
    ("maml", 20, 1): "95.8 ± 0.3",
    ("fomaml", 5, 1): "98.3 ± 0.5",
    ("metasgd", 5, 1): "99.53 ± 0.26",
    ("anil", 20, 1): "96.2 ± 0.5",
    ("reptile", 5, 1): "97.68 ± 0.04",
    ("protonet", 5, 1): "98.8",
    ("protonet", 5, 5): "99.7",
    ("protonet", 20, 1): "96.0",
    ("protonet", 20, 5): "98.9",
}
LEARNER_NAMES = {
    "maml": "MAML (2nd order)",
    "fomaml": "FOMAML",
    "metasgd": "Meta-SGD",
    "anil": "ANIL",
    "reptile": "Reptile",
    "protonet": "ProtoNets",
}
PEERS = ("learn2learn", "higher", "torchopt", "easyfsl")
SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))


# --------------------------------------------------------------------------------------------
# formatting helpers


def pm(mean: float, ci: float, digits: int = 2) -> str:
    """``mean ± ci`` with ``digits`` decimals, ``nan`` as ``diverged (nan)``."""
    if math.isnan(mean):
        return "diverged (nan)"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"


def num(x: float | None, digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "not measured"
    return f"{x:.{digits}f}"


def sig(x: float, digits: int = 4) -> str:
    """Seconds with ``digits`` significant figures (3.586, 0.0474)."""
    if x == 0:
        return "0"
    return f"{x:.{max(0, digits - 1 - math.floor(math.log10(abs(x))))}f}"


def sci(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "not measured"
    return "0" if x == 0 else f"{x:.1e}"


def count(n: int) -> str:
    return f"{n:,}"


def ratio(v: Json) -> str:
    if v["ratio_median"] == 1.0 and v["ratio_min"] == 1.0 and v["ratio_max"] == 1.0:
        return "1.00"
    return f"{v['ratio_median']:.2f} [{v['ratio_min']:.2f}, {v['ratio_max']:.2f}]"


def setting(n_way: int, k_shot: int) -> str:
    return f"{n_way}-way {k_shot}-shot"


def markdown(header: Sequence[str], rows: Rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# readers


def load(root: Path, name: str) -> Json:
    return json.loads((root / name).read_text())


def tta_row(d: Json) -> Json:
    (row,) = d["rows"]
    return row


def final_of(row: Json, n_way: int, k_shot: int) -> Json | None:
    for f in row.get("final", []):
        if f["n_way"] == n_way and f["k_shot"] == k_shot:
            return f
    return None


def first(row: Json, threshold: str) -> str:
    t = row["first_minutes"].get(threshold)
    return "not reached" if t is None else f"{t:.1f} min"


def setup_of(d: Json, name: str) -> Json:
    for s in d["setups"]:
        if s["setup"] == name:
            return s
    raise KeyError(f"setup {name!r} not in the JSON (has {[s['setup'] for s in d['setups']]})")


def fastest_peer(variants: Json, key: str = "ratio_median") -> tuple[str, float]:
    peers = {k: v[key] for k, v in variants.items() if k in PEERS}
    name = min(peers, key=peers.__getitem__)
    return name, peers[name]


# --------------------------------------------------------------------------------------------
# renderers: each takes the loaded JSON files (in the order of Table.files) and the options


def r_sinusoid(ds: list[Json]) -> tuple[list[str], Rows]:
    (d,) = ds
    rows = []
    for run in d["runs"]:
        for k, ev in sorted(run["eval"].items(), key=lambda kv: int(kv[0])):
            rows.append(
                [
                    run["algo"],
                    str(run["k_train"]),
                    k,
                    str(ev["steps"]),
                    pm(ev["mse"], ev["ci95"], 3),
                    f"{run['train_seconds'] / 60:.1f}",
                ]
            )
    return ["learner", "train K", "test K", "inner steps", "MSE ± 95% CI", "train min"], rows


def r_sinusoid_curve(ds: list[Json]) -> tuple[list[str], Rows]:
    (d,) = ds
    rows = []
    for run in d["runs"]:
        if run["algo"] != "MAML" or run["k_train"] not in (5, 10):
            continue
        curve = run["eval"]["5"]["curve"]
        rows.append([f"metafit MAML (train K={run['k_train']})"] + [pm(*curve[s], 3) for s in (1, 5, 10)])
    rows.append(["MAML paper (App. C, Table 2)", "0.67", "0.38", "0.35"])
    return ["5-shot test tasks", "1 step", "5 steps", "10 steps"], rows


def r_omniglot(ds: list[Json]) -> tuple[list[str], Rows]:
    rows = []
    for d in ds:
        for r in d["rows"]:
            paper = PAPER_OMNIGLOT.get((r["learner"], r["n_way"], r["k_shot"]), "–")
            rows.append(
                [
                    LEARNER_NAMES.get(r["learner"], r["learner"]),
                    r["protocol"],
                    r["path"],
                    setting(r["n_way"], r["k_shot"]),
                    pm(r["accuracy"], r["ci95"]),
                    paper,
                    count(r["iterations"]),
                    f"{r['train_minutes']:.1f}",
                    str(r["episodes"]),
                ]
            )
    header = [
        "learner",
        "protocol",
        "engine path",
        "setting",
        "metafit (%)",
        "paper (%)",
        "iterations",
        "train min",
        "test episodes",
    ]
    return header, rows


def r_tta_protonet(ds: list[Json], labels: Sequence[str], paper: bool = False) -> tuple[list[str], Rows]:
    rows = []
    for label, d in zip(labels, ds, strict=True):
        r = tta_row(d)
        end = f"{r['curve'][-1][1]:.2f}" if r["curve"] else "–"
        finals = []
        for n, k in SETTINGS:
            f = final_of(r, n, k)
            finals.append("–" if f is None else pm(f["accuracy"], f["ci95"]))
        rows.append(
            [
                label,
                f"{r['train_way']}-way {r['train_query']}-query",
                count(r["iterations"]),
                f"{r['train_minutes']:.2f}",
                first(r, "96.0"),
                first(r, "97.0"),
                first(r, "98.0"),
                end,
            ]
            + finals
        )
    if paper:
        rows.append(
            ["ProtoNets paper", "60-way 5-query", "–", "–", "–", "–", "–", "–"]
            + [PAPER_OMNIGLOT[("protonet", n, k)] for n, k in SETTINGS]
        )
    header = [
        "run",
        "training episodes",
        "episodes",
        "train min",
        "96% at",
        "97% at",
        "98% at",
        "monitor at end (600 ep.)",
    ] + [f"final {n}w{k}s (1,000 ep.)" for n, k in SETTINGS]
    return header, rows


def r_tta_gradient(ds: list[Json]) -> tuple[list[str], Rows]:
    rows = []
    for d in ds:
        r = tta_row(d)
        f = final_of(r, 5, 1)
        rows.append(
            [
                LEARNER_NAMES[r["learner"]],
                f"{r['budget_minutes']:.0f}",
                str(d["provenance"]["threads"]),
                first(r, "96.0"),
                first(r, "97.0"),
                first(r, "98.0"),
                pm(f["accuracy"], f["ci95"]),
                PAPER_OMNIGLOT[(r["learner"], 5, 1)],
                count(r["iterations"]),
            ]
        )
    header = [
        "learner",
        "budget min",
        "threads",
        "96% at",
        "97% at",
        "98% at",
        "final 5-way 1-shot (600 ep.)",
        "paper",
        "iterations",
    ]
    return header, rows


def r_calibration(ds: list[Json], labels: Sequence[str]) -> tuple[list[str], Rows]:
    rows = []
    for label, d in zip(labels, ds, strict=True):
        r = tta_row(d)
        ms = r["train_minutes"] * 60e3 / r["iterations"]
        rows.append(
            [
                label,
                d["provenance"].get("malloc", "default"),
                d["provenance"]["commit"],
                count(r["iterations"]),
                f"{r['train_minutes'] * 60:.1f}",
                f"{ms:.1f}",
            ]
        )
    return ["network", "malloc", "commit", "episodes", "training s", "ms per episode"], rows


SPEED_COLUMNS: dict[str, tuple[str, Callable[[Json], str]]] = {
    "median": ("median s", lambda v: sig(v["median_s"])),
    "ratio": ("ratio vs plain (median) [min, max]", ratio),
    "tensor_peak": ("tensor peak MiB", lambda v: num(v.get("peak_tensor_mib"), 1)),
    "peak_mib": ("peak MiB", lambda v: num(v.get("peak_mib"), 0)),
    "gpu_peak": ("peak GPU MiB", lambda v: num(v.get("peak_rss_mib"), 0)),
    "grad64": ("grad diff f64 (max abs)", lambda v: sci(v.get("grad_max_abs_diff_float64"))),
    "grad32": ("grad diff f32 (max abs)", lambda v: sci(v.get("grad_max_abs_diff_float32"))),
}


def r_speed(ds: list[Json], setup: str, columns: Sequence[str]) -> tuple[list[str], Rows]:
    (d,) = ds
    variants = setup_of(d, setup)["variants"]
    rows = [[name] + [SPEED_COLUMNS[c][1](v) for c in columns] for name, v in variants.items()]
    return ["variant"] + [SPEED_COLUMNS[c][0] for c in columns], rows


def r_speed_runs(ds: list[Json], setup: str, labels: Sequence[str]) -> tuple[list[str], Rows]:
    runs = [setup_of(d, setup)["variants"] for d in ds]
    names = list(runs[0])
    for v in runs[1:]:
        names += [n for n in v if n not in names]
    rows = []
    for name in names:
        cells = []
        for v in runs:
            cells.append(f"{ratio(v[name])} ({sig(v[name]['median_s'], 3)} s)" if name in v else "–")
        rows.append([name] + cells + [num(runs[-1].get(name, {}).get("peak_tensor_mib"), 1)])
    return ["variant"] + list(labels) + ["tensor peak MiB (last run)"], rows


def r_compile_modes(ds: list[Json]) -> tuple[list[str], Rows]:
    (d,) = ds
    rows = []
    for s in d["setups"]:
        for name, v in s["variants"].items():
            rows.append(
                [
                    f"{s['setup']} ({s['tasks']} tasks)",
                    name,
                    sig(v["median_s"], 2),
                    ratio(v),
                    f"{v['first_call_s']:.1f}",
                    sci(v["grad_max_abs_diff_vs_vmap"]),
                ]
            )
    header = [
        "setup",
        "variant",
        "median s",
        "ratio vs eager vmap [min, max]",
        "first call s (compile)",
        "grad diff f32 vs vmap",
    ]
    return header, rows


def r_cnp(ds: list[Json]) -> tuple[list[str], Rows]:
    (d,) = ds
    rows = []
    for k, ev in sorted(d["eval"].items(), key=lambda kv: int(kv[0])):
        cal = d["calibration"][k]
        rows.append(
            [k, pm(ev["mse"]["mean"], ev["mse"]["ci95"], 3), pm(ev["nll"]["mean"], ev["nll"]["ci95"], 3)]
            + [pm(100 * cal[q]["mean"], 100 * cal[q]["ci95"], 1) for q in ("0.5", "0.9", "0.95")]
        )
    header = [
        "K (context)",
        "MSE ± 95% CI",
        "NLL (nats/point)",
        "coverage 50% (%)",
        "coverage 90% (%)",
        "coverage 95% (%)",
    ]
    return header, rows


def r_cnp_recal(ds: list[Json]) -> tuple[list[str], Rows]:
    (d,) = ds
    rows = []
    for k, ev in sorted(d["eval"].items(), key=lambda kv: int(kv[0])):
        cal = d["calibration"][k]
        rows.append(
            [k, "raw", pm(ev["nll"]["mean"], ev["nll"]["ci95"], 3)]
            + [pm(100 * cal[q]["mean"], 100 * cal[q]["ci95"], 1) for q in ("0.5", "0.9", "0.95")]
        )
        for how in ("nll", "quantile"):
            rc = d["recalibrated"][how][k]
            rows.append(
                [
                    k,
                    f"recalibrated ({how}, s = {d['variance_scale'][how]:.4f})",
                    pm(rc["nll"]["mean"], rc["nll"]["ci95"], 3),
                ]
                + [pm(100 * rc[q]["mean"], 100 * rc[q]["ci95"], 1) for q in ("0.5", "0.9", "0.95")]
            )
    header = ["K", "variance", "NLL (nats/point)", "coverage 50% (%)", "coverage 90% (%)", "coverage 95% (%)"]
    return header, rows


def r_cnp_omniglot(ds: list[Json]) -> tuple[list[str], Rows]:
    (d,) = ds
    paper = {1: "95.3", 5: "98.5"}
    rows = [
        [
            setting(r["n_way"], r["k_shot"]),
            pm(r["accuracy"], r["ci95"]),
            str(r["episodes"]),
            count(r["iterations"]),
            f"{r['train_minutes']:.1f}",
            paper.get(r["k_shot"], "–"),
        ]
        for r in d["omniglot"]
    ]
    return ["setting", "CNP (%)", "test episodes", "iterations", "train min", "CNP paper (%)"], rows


def r_fusion(ds: list[Json], k_shot: int) -> tuple[list[str], Rows]:
    (d,) = ds
    acc = d["eval"][str(k_shot)]["accuracy"]
    bases = d["base_models"]
    rows = []
    for method, s in acc.items():
        label = method
        if method.startswith("base model ") and d.get("scenario") == "heterogeneous":
            b = bases[int(method.rsplit(" ", 1)[1])]
            label += " (untrained)" if b["untrained"] else f" ({b['budget_minutes']:g} min, {b['steps']} steps)"
        diff = s["diff_vs_fusion"]
        rows.append(
            [
                label,
                pm(100 * s["mean"], 100 * s["ci95"]),
                "—" if diff is None else f"{100 * diff['mean']:+.2f} ± {100 * diff['ci95']:.2f}",
            ]
        )
    return ["method", "accuracy (%) ± 95% CI", "fusion − method (paired) ± 95% CI"], rows


def r_distributed(ds: list[Json]) -> tuple[list[str], Rows]:
    (d,) = ds
    rows = []
    for r in d["results"]:
        e1 = r["efficiency_vs_1proc_1thread"]
        rows.append(
            [
                r["workload"],
                str(r["nproc"]),
                str(r["threads_per_proc"]),
                str(r["steps"]),
                f"{r['it_per_s']:.3g}",
                f"{r['efficiency']:.2f}",
                "-" if e1 is None else f"{e1:.2f}",
                f"{r['sample_ms']:.2f}",
            ]
        )
    header = [
        "workload",
        "nproc",
        "threads/proc",
        "timed steps",
        "it/s",
        "efficiency",
        "eff. vs 1 proc x 1 thread",
        "sample ms/batch",
    ]
    return header, rows


def speedup(d: Json, setup: str, variant: str) -> tuple[float, float, str]:
    """(paired-ratio speed-up, median-seconds speed-up, fastest peer) of ``variant`` over the peers."""
    v = setup_of(d, setup)["variants"]
    peer, peer_ratio = fastest_peer(v)
    _, peer_s = fastest_peer(v, "median_s")
    return peer_ratio / v[variant]["ratio_median"], peer_s / v[variant]["median_s"], peer


def r_targets(ds: list[Json]) -> tuple[list[str], Rows]:
    (p30s0, p30s1, maml60, msgd60, gpu5, fused5, rerun5, nocache5, vmapc, thin100, thin300, t0, t1, t2) = ds
    rows = []

    def status(ok: bool, note: str = "") -> str:
        return ("met" if ok else "NOT met") + (f" ({note})" if note else "")

    f = [final_of(tta_row(x), 5, 1) for x in (p30s0, p30s1)]
    rows.append(
        [
            "ProtoNets 5w1s >= 98.8% within 30 min (CPU)",
            status(all(x["accuracy"] >= 98.8 for x in f), "both seeds"),
            " and ".join(pm(x["accuracy"], x["ci95"]) for x in f) + " (final model, 1,000 episodes, two seeds)",
        ]
    )
    f = [final_of(tta_row(x), 20, 1) for x in (p30s0, p30s1)]
    rows.append(
        [
            "ProtoNets 20w1s >= 96.0% within 30 min (CPU)",
            status(all(x["accuracy"] >= 96.0 for x in f), "both seeds"),
            " and ".join(pm(x["accuracy"], x["ci95"]) for x in f),
        ]
    )
    for d in (maml60, msgd60):
        r = tta_row(d)
        t = r["first_minutes"].get("96.0")
        fin = final_of(r, 5, 1)
        rows.append(
            [
                f"{LEARNER_NAMES[r['learner']]} 5w1s >= 96% within 60 min (CPU)",
                status(t is not None and t <= 60, "one core"),
                f"96% at {t:.0f} min; final {pm(fin['accuracy'], fin['ci95'])} after {r['budget_minutes']:.0f} min",
            ]
        )
    (r,) = gpu5["rows"]
    rows.append(
        [
            "MAML paper protocol on a GPU (5w1s)",
            f"truncated ({100 * r['iterations'] / 60000:.0f}% of the paper's 60,000 iterations)",
            f"{pm(r['accuracy'], r['ci95'])} after {r['train_minutes']:.0f} min ({gpu5['provenance']['cuda']})",
        ]
    )
    pr, ps, peer = speedup(fused5, "omniglot5", "metafit_fused_compile")
    v = setup_of(fused5, "omniglot5")["variants"]
    mem = v["metafit_fused_compile"]["peak_tensor_mib"]
    peer_mem = [v[p]["peak_tensor_mib"] for p in PEERS if p in v]
    early = [speedup(x, "omniglot5", "metafit_compile")[0] for x in (rerun5, nocache5)]
    rows.append(
        [
            "conv-4 2nd-order MAML >= 1.5x faster than the fastest peer, memory no higher",
            status(pr >= 1.5 and mem <= min(peer_mem)),
            f"{pr:.2f}x (paired) / {ps:.2f}x (median s) over {peer}, fused blocks on the compile path; "
            f"tensor peak {mem:.1f} vs {min(peer_mem):.1f}-{max(peer_mem):.1f} MiB "
            f"(compile path alone, two earlier runs: {early[0]:.2f}x, {early[1]:.2f}x)",
        ]
    )
    v = setup_of(vmapc, "sinusoid")["variants"]
    x = v["learn2learn"]["ratio_median"] / v["metafit_vmap_compile"]["ratio_median"]
    rows.append(
        [
            "sinusoid 2nd-order MAML >= 10x faster than learn2learn",
            status(x >= 10),
            f"{x:.1f}x (vmap_compile path, paired)",
        ]
    )
    a = [speedup(d, "protonet", "metafit_protonet_fused_channels_last") for d in (thin100, thin300)]
    rows.append(
        [
            "ProtoNet episode >= 1.5x faster than easyfsl",
            status(min(y[1] for y in a) >= 1.5),
            f"{a[0][1]:.2f}x (100 paired rounds) and {a[1][1]:.2f}x (300 rounds) by median s, "
            "fused Conv-4 blocks, channels-last",
        ]
    )
    ends = [tta_row(d)["curve"][-1] for d in (t0, t1, t2)]
    rows.append(
        [
            "98% 5w1s within 3 min (CPU)",
            status(all(e[0] <= 3.0 + 1e-3 and e[1] >= 98.0 for e in ends), "three seeds"),
            ", ".join(f"{e[1]:.2f} ({e[0]:.2f} min)" for e in ends) + " on the 600 monitor episodes",
        ]
    )
    return ["target", "status", "measured"], rows


def r_product_path(ds: list[Json]) -> tuple[list[str], Rows]:
    """The figures re-measured with ``metafit train CONFIG`` + ``metafit eval`` against the earlier
    benchmark-loop measurements of the same recipes."""
    (
        old30a,
        old30b,
        old3a,
        old3b,
        old3c,
        old_fused5,
        old_vmapc,
        old_thin100,
        new30,
        new3,
        new_speed,
        new_speed5,
        unrot,
    ) = ds
    u = unrot["runs"]
    rows: Rows = []
    old = [final_of(tta_row(x), 5, 1) for x in (old30a, old30b)]
    new = {(r["n_way"], r["k_shot"]): r for r in new30["rows"]}
    for n, k, target in ((5, 1, 98.8), (20, 1, 96.0)):
        o = [final_of(tta_row(x), n, k) for x in (old30a, old30b)]
        r = new[(n, k)]
        rows.append(
            [
                f"ProtoNets {n}w{k}s within 30 min (target {target})",
                " and ".join(pm(x["accuracy"], x["ci95"]) for x in o) + " (two seeds)",
                f"{pm(r['accuracy'], r['ci95'])} after {r['train_minutes']:.1f} min, {count(r['iterations'])} "
                f"episodes (rotated test classes); {pm(u[f'p30_{n}w{k}s']['accuracy'], u[f'p30_{n}w{k}s']['ci95'])} "
                "on the unrotated test characters",
                "met" if min(r["accuracy"], u[f"p30_{n}w{k}s"]["accuracy"]) >= target else "NOT met",
            ]
        )
    del old
    ends_old = [tta_row(d)["curve"][-1] for d in (old3a, old3b, old3c)]
    ends_new = [
        (r["curve"][-1][0], r["curve"][-1][1]) if r["curve"] else (float("nan"), float("nan")) for r in new3["rows"]
    ]
    firsts = [r["first_minutes"].get("98.0") for r in new3["rows"]]
    rows.append(
        [
            "ProtoNets 98% 5w1s within 3 min (600 monitor episodes)",
            ", ".join(f"{e[1]:.2f} ({e[0]:.2f} min)" for e in ends_old),
            ", ".join(f"{e[1]:.2f} ({e[0]:.2f} min)" for e in ends_new)
            + " (rotated test classes); final models on 1,000 unrotated-character episodes: "
            + ", ".join(f"{u['p3_seed' + str(r['seed'])]['accuracy']:.2f}" for r in new3["rows"]),
            "met"
            if all(f is not None and f <= 3.0 + 1e-3 for f in firsts)
            else f"NOT met ({sum(f is not None for f in firsts)} of {len(firsts)} seeds reached 98%)",
        ]
    )
    pr_old = speedup(old_fused5, "omniglot5", "metafit_fused_compile")
    pr_new = speedup(new_speed5, "omniglot5", "metafit_fused_compile")
    rows.append(
        [
            "conv-4 2nd-order MAML vs the fastest peer (paired ratio / median s)",
            f"{pr_old[0]:.2f}x / {pr_old[1]:.2f}x over {pr_old[2]}",
            f"{pr_new[0]:.2f}x / {pr_new[1]:.2f}x over {pr_new[2]}",
            "met" if pr_new[0] >= 1.5 else "NOT met",
        ]
    )
    v_old, v_new = setup_of(old_vmapc, "sinusoid")["variants"], setup_of(new_speed, "sinusoid")["variants"]
    x_old = v_old["learn2learn"]["ratio_median"] / v_old["metafit_vmap_compile"]["ratio_median"]
    x_new = v_new["learn2learn"]["ratio_median"] / v_new["metafit_vmap_compile"]["ratio_median"]
    rows.append(
        [
            "sinusoid 2nd-order MAML vs learn2learn (paired)",
            f"{x_old:.1f}x",
            f"{x_new:.1f}x",
            "met" if x_new >= 10 else "NOT met",
        ]
    )
    a_old = speedup(old_thin100, "protonet", "metafit_protonet_fused_channels_last")
    a_new = speedup(new_speed, "protonet", "metafit_protonet_fused_channels_last")
    rows.append(
        [
            "ProtoNet episode vs easyfsl (median s)",
            f"{a_old[1]:.2f}x",
            f"{a_new[1]:.2f}x",
            "met" if a_new[1] >= 1.5 else "NOT met",
        ]
    )
    return ["figure", "earlier benchmark loop", "product path (metafit train + eval; speed.py re-run)", "target"], rows


def r_compare(ds: list[Json], part: str = "runs") -> tuple[list[str], Rows]:
    """A ``metafit compare --out`` result: the per-run table (``part="runs"``), the seed groups
    (``"seeds"``), the verdicts (``"verdicts"``) or the temperature scaling (``"temperature"``,
    from ``compare --temperature-scale``) of its first setting."""
    (d,) = ds
    s = d["settings"][0]
    if part == "temperature":
        rows = []
        for name, sc in s["scores"].items():
            t, c = sc.get("temperature"), sc.get("calibration")
            if t is None or "skipped" in t:
                continue
            rows.append(
                [
                    name,
                    f"{t['temperature']:.3g}",
                    f"{c['nll']:.3f} -> {t['nll']:.3f}",
                    f"{c['brier']:.3f} -> {t['brier']:.3f}",
                    f"{c['ece']:.3f} -> {t['ece']:.3f}",
                ]
            )
        return [
            "run",
            "T (fitted on validation classes)",
            "test NLL raw -> scaled",
            "Brier",
            "ECE (15 bins, pooled)",
        ], rows
    if part == "verdicts":
        return ["verdict (paired tests, Holm-corrected; seed groups: Welch over seed means)"], [
            [v] for v in s["verdicts"]
        ]
    if part == "seeds":
        rows = [
            [
                g["name"],
                str(g["n_seeds"]),
                f"{100 * g['mean']:.2f}",
                f"{100 * g['seed_std']:.2f}",
                f"[{100 * g['seed_low']:.2f}, {100 * g['seed_high']:.2f}]",
                f"[{100 * g['episode_low']:.2f}, {100 * g['episode_high']:.2f}]",
            ]
            for g in s["seeds"]["groups"]
        ]
        return ["config (seeds)", "seeds", "mean %", "sd over seeds", "95% CI over seeds", "episode 95% CI"], rows
    diffs = {x["run"]: x for x in s["comparison"]["differences"]}
    runs = {r["name"]: r for r in s["comparison"]["runs"]}
    trained = d["runs"]
    timed = all(r.get("train_minutes") is not None for r in trained.values())  # files that record it
    rows = []
    for name, sc in s["scores"].items():
        if "per_episode" not in sc:
            continue
        r, b, c = runs[name], sc["bootstrap"], sc["calibration"]
        dd = diffs.get(name)
        training = []
        if timed:
            t = trained.get(name)
            training = ["–" if t is None else f"{t['algo']}, {t['step']:,} steps, {t['train_minutes']:.1f} min"]
        rows.append(
            [
                name,
                *training,
                pm(100 * r["mean"], 100 * (r["high"] - r["low"]) / 2),
                f"[{100 * b['low']:.2f}, {100 * b['high']:.2f}]",
                "reference"
                if dd is None
                else f"{100 * dd['mean']:+.2f} [{100 * dd['low']:+.2f}, {100 * dd['high']:+.2f}]",
                "–" if dd is None else f"{dd['p_holm']:.2g}",
                f"{c['nll']:.3f}",
                f"{c['brier']:.3f}",
                f"{c['ece']:.3f}",
            ]
        )
    return [
        "run",
        *(["learner, training"] if timed else []),
        "accuracy % ± 95% CI (episodes)",
        "class-bootstrap 95% CI",
        "paired diff to the best (points)",
        "p (t-test, Holm)",
        "NLL",
        "Brier",
        "ECE (15 bins, pooled)",
    ], rows


def _setting(d: Json) -> Json:
    return d["settings"][0]


def _accuracy(sc: Json) -> tuple[float, float]:
    """Mean and 95% half-width (normal approximation, 600 episodes) of per-episode accuracies, in %."""
    v = sc["per_episode"]
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    return 100 * m, 100 * 1.96 * sd / math.sqrt(len(v))


def _paired(a: Json, b: Json) -> tuple[float, float, float]:
    """Paired difference a - b of per-episode accuracies (points): mean and 95% interval."""
    m, lo, hi = _paired_values(a["per_episode"], b["per_episode"])
    return 100 * m, 100 * lo, 100 * hi


def _paired_values(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Paired difference a - b of per-task values: mean and 95% interval (normal approximation)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    m = sum(d) / len(d)
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1))
    h = 1.96 * sd / math.sqrt(len(d))
    return m, m - h, m + h


TABLE_LR = "logistic regression (support rows)"
TABLE_GBM = "gradient boosting (support rows)"
TABLE_LDA = "shrinkage LDA (support rows)"
NAIVE_ROW = "nearest centroid (raw inputs)"


def r_regression_compare(ds: list[Json]) -> tuple[list[str], Rows]:
    """A ``metafit compare --out`` result of regression runs: every context size, every run, the
    target and context log-likelihood, MSE and 90% coverage with the paired differences."""
    (d,) = ds
    rows = []
    for s in d["settings"]:
        size = str(s["k_shot"]) if s["context"] == "fixed" else s["context"]
        diffs = {
            m: {x["run"]: x for x in c["differences"]} | {c["reference"]: None} for m, c in s["comparisons"].items()
        }

        def paired(metric: str, name: str, digits: int, diffs: dict[str, Any] = diffs) -> str:
            if name not in diffs.get(metric, {}):
                return "–"
            x = diffs[metric][name]
            return (
                "reference"
                if x is None
                else f"{x['mean']:+.{digits}f} [{x['low']:+.{digits}f}, {x['high']:+.{digits}f}]"
            )

        for name, sc in s["scores"].items():
            summ, run = sc["summary"], d["runs"][name]

            def cell(metric: str, digits: int, summ: Json = summ) -> str:
                return "–" if metric not in summ else pm(summ[metric]["mean"], summ[metric]["ci95"], digits)

            rows.append(
                [
                    size,
                    f"{name} ({run['algo']}, {run['step']:,} steps)",
                    cell("target_ll", 3),
                    paired("target_ll", name, 3),
                    cell("context_ll", 3),
                    cell("mse", 4),
                    paired("mse", name, 4),
                    cell("coverage_90", 3),
                ]
            )
    return [
        "context points",
        "run",
        "target log-likelihood per point",
        "paired diff to the reference (nats)",
        "context log-likelihood",
        "target MSE",
        "paired diff to the reference (MSE)",
        "90% interval coverage",
    ], rows


def r_tabular(
    ds: list[Json], run: str | None = None, versus: str | None = None, learner: str = "in-context classifier"
) -> tuple[list[str], Rows]:
    """``metafit compare RUN --dataset TABLE`` of a tabular-prior run, one JSON per real table:
    the prior-trained learner against the classical classifiers fitted on the same support rows
    (``run``: which run of a multi-run comparison; ``versus``: another run of it, paired;
    ``learner``: its name in the header). Comparisons that scored shrinkage LDA on the support rows
    (every table of them) get its accuracy and the paired difference to it."""
    rows = []
    with_lda = all(TABLE_LDA in _setting(d)["scores"] for d in ds)
    for d in ds:
        s = _setting(d)
        name = run if run is not None else next(iter(d["runs"]))
        if run is None and len(d["runs"]) != 1:
            raise ValueError(f"{d['provenance']['command']}: several runs {list(d['runs'])}; name one with run=")
        sc = s["scores"]
        diff, lo, hi = _paired(sc[name], sc[TABLE_LR])
        row = [
            f"{s['dataset']['dataset']} ({s['dataset']['source_shape'][0]} features)",
            f"{s['n_way']}-way {s['k_shot']}-shot, {s['n_query']} queries/class",
            pm(*_accuracy(sc[name])),
            pm(*_accuracy(sc[TABLE_LR])),
            pm(*_accuracy(sc[TABLE_GBM])),
            pm(*_accuracy(sc[NAIVE_ROW])),
            f"{diff:+.2f} [{lo:+.2f}, {hi:+.2f}]",
            "met" if hi >= 0 else "NOT met",
        ]
        if with_lda:
            ld, llo, lhi = _paired(sc[name], sc[TABLE_LDA])
            row[5:5] = [pm(*_accuracy(sc[TABLE_LDA]))]
            row.append(f"{ld:+.2f} [{llo:+.2f}, {lhi:+.2f}]")
        if versus is not None:
            vd, vlo, vhi = _paired(sc[name], sc[versus])
            row.insert(3, f"{pm(*_accuracy(sc[versus]))}; {vd:+.2f} [{vlo:+.2f}, {vhi:+.2f}]")
        rows.append(row)
    header = [
        "real table (never seen in training)",
        "episodes (600 fixed)",
        f"{learner} %",
        "logistic regression %",
        "gradient boosting %",
        "nearest centroid %",
        f"{learner} - logistic regression (paired, points)",
        "target: >= LR within the CI",
    ]
    if with_lda:
        header[5:5] = ["shrinkage LDA %"]
        header.append(f"{learner} - shrinkage LDA (paired, points)")
    if versus is not None:
        header.insert(3, f"{versus} % ; this run - it (paired, points)")
    return header, rows


def r_completion(ds: list[Json], context: str = "context pixels") -> tuple[list[str], Rows]:
    """``metafit eval RUN --k-shot ...`` of regression runs (image completion, sinusoid): one JSON
    per learner, the same held-out tasks and context sizes for each."""
    rows = []
    for d in ds:
        for r in d["results"]:
            m = r["metrics"]
            rows.append(
                [
                    r["algo"],
                    str(r["k_shot"]),
                    pm(m["nll"]["mean"], m["nll"]["ci95"], 3),
                    pm(-m["nll"]["mean"], m["nll"]["ci95"], 3),
                    pm(m["mse"]["mean"], m["mse"]["ci95"], 4),
                    f"{m['coverage_90']['mean']:.3f}",
                    f"{d['step']:,}",
                ]
            )
    return [
        "learner",
        context,
        "NLL per target",
        "log-likelihood per target",
        "MSE",
        "90% interval coverage",
        "training steps",
    ], rows


def r_inner_steps(ds: list[Json], labels: Sequence[str], reference: int) -> tuple[list[str], Rows]:
    """``metafit eval RUN --inner-steps S`` of Gaussian gradient-based runs on the same tasks, one
    JSON per (run, S) and one label per JSON: the per-task tails beside the means (a few diverging
    tasks decide a mean), and the paired per-task differences to row ``reference`` (an index)."""
    ref = ds[reference]["results"][0]["per_task"]
    rows = []
    for i, (d, label) in enumerate(zip(ds, labels, strict=True)):
        r = d["results"][0]
        m, per = r["metrics"], r["per_task"]
        mse, nll = per["mse"], per["nll"]
        far = sum(v > 10.0 or not math.isfinite(v) for v in mse)
        paired = ["reference"] * 2
        if i != reference:
            dm, dl = _paired_values(mse, ref["mse"]), _paired_values(ref["nll"], nll)
            paired = [
                f"{v[0]:+.3g} [{v[1]:+.3g}, {v[2]:+.3g}]" if math.isfinite(v[0]) else "non-finite tasks"
                for v in (dm, dl)
            ]
        rows.append(
            [
                label,
                str(r["steps"]),
                f"{statistics.median(mse):.3f}",
                f"{far} / {len(mse)}",
                f"{m['mse']['mean']:.3g} ± {m['mse']['ci95']:.2g}",
                f"{-statistics.median(nll):.3f}",
                f"{m['coverage_90']['mean']:.3f}",
                *paired,
            ]
        )
    return [
        "run",
        "inner steps at evaluation",
        "median task MSE",
        "tasks with MSE > 10",
        "mean MSE ± 95% CI",
        "median task log-likelihood",
        "90% interval coverage",
        "MSE minus the reference's (paired)",
        "log-likelihood minus the reference's (paired)",
    ], rows


def r_gp_product(ds: list[Json], labels: tuple[str, ...] | None = None) -> tuple[list[str], Rows]:
    """``metafit eval RUN`` of GP-regression runs on the same padded held-out tasks (one JSON per
    learner, the reference last): target and context log-likelihood per point, and the paired
    difference of target log-likelihood to the reference over the shared tasks. ``labels`` name
    the rows (default: the learner)."""
    ref = ds[-1]["results"][0]["per_task"]["nll"]
    rows = []
    for i, d in enumerate(ds):
        (r,) = d["results"]
        m, per = r["metrics"], r["per_task"]["nll"]
        if per is ref:
            paired = "reference"
        else:
            diff = [b - a for a, b in zip(per, ref, strict=True)]  # log-likelihood = -nll
            mu = sum(diff) / len(diff)
            h = 1.96 * math.sqrt(sum((x - mu) ** 2 for x in diff) / (len(diff) - 1)) / math.sqrt(len(diff))
            paired = f"{mu:+.3f} [{mu - h:+.3f}, {mu + h:+.3f}]"
        rows.append(
            [
                r["algo"] if labels is None else labels[i],
                f"{d['step']:,}",
                pm(-m["nll"]["mean"], m["nll"]["ci95"], 3),
                pm(-m["context_nll"]["mean"], m["context_nll"]["ci95"], 3),
                pm(m["mse"]["mean"], m["mse"]["ci95"], 4),
                paired,
                str(r["episodes"]),
            ]
        )
    return [
        "learner",
        "training steps",
        "target log-likelihood per point",
        "context log-likelihood per point",
        "target MSE",
        "target log-likelihood minus the CNP's (paired over the tasks)",
        "held-out tasks",
    ], rows


def r_learner_targets(ds: list[Json]) -> tuple[list[str], Rows]:
    """The Omniglot targets of the learners issue, from the all-learner comparisons, the long
    Meta-SGD comparison and its monitor curve."""
    all5, all20, msgd, curve, maml20, msgd20, mb5, mb20, seeds5, seeds20, shift5, shift20, sseeds5, sseeds20 = ds
    rows = []

    def acc(d: Json, name: str) -> tuple[float, float] | None:
        sc = _setting(d)["scores"].get(name, {})
        return _accuracy(sc) if "per_episode" in sc else None

    minutes = msgd["runs"]["metasgd60"]["train_minutes"]
    a = acc(msgd, "metasgd60")
    assert a is not None
    first98 = next((r for r in curve["rows"] if r["accuracy"] >= 0.98), None)
    seen = (
        f"98% first on the {curve['rows'][0]['episodes']} monitor episodes at {first98['train_seconds'] / 60:.0f} min"
        if first98
        else "never 98% on the monitor episodes"
    )
    rows.append(
        [
            "a gradient-based learner 5w1s >= 98.0% within 60 min",
            "met" if a[0] >= 98.0 and minutes <= 60.5 else "NOT met",
            f"Meta-SGD {pm(*a)} after {minutes:.1f} min ({msgd['runs']['metasgd60']['step']:,} steps); {seen}",
        ]
    )
    # (pretraining run, Meta-Baseline run) pairs of the comparisons: the 10+10 and the cosine 15+15 recipes
    recipes = (
        (all5, all20, "pretrain10", "metabaseline"),
        (mb5, mb20, "pretrain15", "metabaseline15"),
        (shift5, shift20, "pretrain_shift", "metabaseline_shift"),
    )
    for i, (w, goal) in enumerate(((5, 98.8), (20, 96.0))):
        cands = []
        for d5, d20, pre_run, mb_run in recipes:
            d = (d5, d20)[i]
            pre = d["runs"][pre_run]["train_minutes"]
            for name in (pre_run, mb_run):
                v = acc(d, name)
                if v is None:
                    continue
                mb = d["runs"][mb_run]["train_minutes"] if name == mb_run else None
                cands.append((v, pre, mb, " (shift augmentation)" if pre_run == "pretrain_shift" else ""))
        within = [c for c in cands if c[1] + (c[2] or 0.0) <= 30.5]
        v, pre, mb, aug = max(within or cands, key=lambda c: c[0][0])
        spent = pre + (mb or 0.0)
        label = ("Meta-Baseline" if mb is not None else "pretrain + logistic regression") + aug
        status = v[0]
        seed0 = acc((mb5, mb20)[i], "metabaseline15")
        other = acc((seeds5, seeds20)[i], "metabaseline15_s1")
        if aug:  # the best run is the augmented recipe: the unaugmented one beside it
            again = "; without augmentation (Meta-Baseline 15+15 min): " + ", ".join(
                f"{pm(*a)} (seed {k})" for k, a in enumerate((seed0, other)) if a is not None
            )
            if mb is None:
                again += (
                    f"; Meta-Baseline after this pretraining: {pm(*acc((shift5, shift20)[i], 'metabaseline_shift'))}"
                )
            else:
                again += f"; its pretraining alone: {pm(*acc((shift5, shift20)[i], 'pretrain_shift'))}"
            # the recipe's second training seed: the status follows the mean over both seeds
            s1 = acc((sseeds5, sseeds20)[i], ("metabaseline_shift" if mb is not None else "pretrain_shift") + "_s1")
            if s1 is not None:
                status = (v[0] + s1[0]) / 2
                again += f"; training seed 1 of the same recipe: {pm(*s1)}; mean of the two seeds {status:.2f}"
        else:
            runs_s1 = (seeds5, seeds20)[i]["runs"]
            again = (
                ""
                if other is None
                else f"; the same recipe, training seed 1: {pm(*other)} after "
                f"{runs_s1['pretrain15_s1']['train_minutes'] + runs_s1['metabaseline15_s1']['train_minutes']:.1f} min"
            )
        rows.append(
            [
                f"pretrain or Meta-Baseline {w}w1s >= {goal}% within 30 min",
                "met" if status >= goal and spent <= 30.5 else "NOT met",
                f"{label} {pm(*v)} after {spent:.1f} min in all (pretraining {pre:.1f} min"
                + (f" + meta-training {mb:.1f} min)" if mb is not None else ")")
                + again,
            ]
        )
    a20 = acc(msgd20, "metasgd20")
    assert a20 is not None
    run20 = msgd20["runs"]["metasgd20"]
    rows.append(
        [
            "20-way 1-shot for the best gradient-based learner within 60 min",
            "reported",
            f"Meta-SGD trained 20-way {pm(*a20)} after {run20['train_minutes']:.1f} min ({run20['step']:,} steps; "
            + "MAML paper 95.8); earlier: "
            + "; ".join(
                f"{LEARNER_NAMES[r['learner']]} 20w1s {pm(r['accuracy'], r['ci95'])} after {r['train_minutes']:.0f} min"
                for r in maml20["rows"]
            ),
        ]
    )
    rows.append(
        [
            "MAML++ with the paper's protocol on a GPU",
            "not run",
            "no GPU was lent to this task",
        ]
    )
    return ["target (Omniglot, 600 fixed test episodes)", "status", "measured"], rows


# --------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class Table:
    """One named table: the JSON files it reads and the function that renders them."""

    render: Callable[..., tuple[list[str], Rows]]
    files: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


TTA_3MIN = tuple(f"results/tta_protonet_3min_thin_seed{s}.json" for s in (0, 1, 2))
TTA_30MIN = ("results/tta_protonet_30min_60w2q.json", "results/tta_protonet_30min_60w2q_seed1.json")

PRODUCT = (
    "results/product_omniglot_protonet_30min.json",
    "results/product_tta_protonet_3min.json",
    "results/product_speed_sinusoid_protonet.json",
    "results/product_speed_omniglot5.json",
    "results/product_eval_unrotated.json",
)

TABLES: dict[str, Table] = {
    "compare_vinyals": Table(r_compare, ("results/compare_vinyals_5w1s.json",)),
    "compare_vinyals_seeds": Table(r_compare, ("results/compare_vinyals_5w1s.json",), {"part": "seeds"}),
    "compare_vinyals_verdicts": Table(r_compare, ("results/compare_vinyals_5w1s.json",), {"part": "verdicts"}),
    "compare_vinyals_temperature": Table(
        r_compare, ("results/compare_vinyals_5w1s_temperature.json",), {"part": "temperature"}
    ),
    "compare_within": Table(r_compare, ("results/compare_within_5w1s.json",)),
    "compare_within_20w": Table(r_compare, ("results/compare_within_20w1s.json",)),
    "compare_within_20w_seeds": Table(r_compare, ("results/compare_within_20w1s.json",), {"part": "seeds"}),
    "compare_fashion": Table(r_compare, ("results/compare_crossdomain_fashion_5w1s.json",)),
    "compare_digits": Table(r_compare, ("results/compare_crossdomain_digits_5w1s.json",)),
    "compare_within_seeds": Table(r_compare, ("results/compare_within_5w1s.json",), {"part": "seeds"}),
    "compare_within_verdicts": Table(r_compare, ("results/compare_within_5w1s.json",), {"part": "verdicts"}),
    "product_path": Table(
        r_product_path,
        TTA_30MIN
        + TTA_3MIN
        + (
            "results/speed_cpu_omniglot5_fused.json",
            "results/speed_cpu_vmap_compile.json",
            "results/speed_cpu_protonet_thin_conv.json",
        )
        + PRODUCT,
    ),
    "targets": Table(
        r_targets,
        TTA_30MIN
        + (
            "results/tta_maml_60min.json",
            "results/tta_metasgd_60min.json",
            "results/gpu/omniglot_maml_paper_5w1s.json",
            "results/speed_cpu_omniglot5_fused.json",
            "results/speed_cpu_compile_maxpool_rerun.json",
            "results/speed_cpu_compile_maxpool_nocache.json",
            "results/speed_cpu_vmap_compile.json",
            "results/speed_cpu_protonet_thin_conv.json",
            "results/speed_cpu_protonet_thin_conv_300.json",
        )
        + TTA_3MIN,
    ),
    "sinusoid": Table(r_sinusoid, ("results/sinusoid.json",)),
    "sinusoid_curve": Table(r_sinusoid_curve, ("results/sinusoid.json",)),
    "omniglot_gpu": Table(
        r_omniglot, ("results/gpu/omniglot_maml_paper_5w1s.json", "results/gpu/omniglot_maml_paper_20w1s.json")
    ),
    "omniglot_cpu": Table(
        r_omniglot,
        (
            "results/omniglot_maml20_cpu_compile.json",
            "results/omniglot_anil_cpu15.json",
            "results/omniglot_reptile_cpu15.json",
        ),
    ),
    "protonet_30min": Table(r_tta_protonet, TTA_30MIN, {"labels": ("seed 0", "seed 1"), "paper": True}),
    "protonet_screen": Table(
        r_tta_protonet,
        ("results/screen_protonet_20w5q_11min_1thread.json", "results/screen_protonet_60w2q_11min_1thread.json"),
        {"labels": ("screen, 1 thread", "screen, 1 thread")},
    ),
    "protonet_3min": Table(r_tta_protonet, TTA_3MIN, {"labels": ("seed 0", "seed 1", "seed 2")}),
    "gradient_tta": Table(
        r_tta_gradient, ("results/tta_maml_60min.json", "results/tta_metasgd_60min.json", "results/tta_fomaml.json")
    ),
    "protonet_calibration": Table(
        r_calibration,
        (
            "results/tta_protonet_calibration_default.json",
            "results/tta_protonet_calibration_keep.json",
            "results/tta_protonet_calibration_thin.json",
        ),
        {
            "labels": (
                "Conv4, ReLU after the pool",
                "Conv4, ReLU after the pool",
                "Conv4 (fused blocks, thin first convolution)",
            )
        },
    ),
    "speed_omniglot5": Table(
        r_speed,
        ("results/speed_cpu_omniglot5_fused.json",),
        {"setup": "omniglot5", "columns": ("median", "ratio", "tensor_peak", "grad64")},
    ),
    "speed_omniglot20": Table(
        r_speed,
        ("results/speed_cpu_omniglot20_fused.json",),
        {"setup": "omniglot20", "columns": ("median", "ratio", "tensor_peak", "grad64")},
    ),
    "speed_compile_maxpool": Table(
        r_speed_runs,
        ("results/speed_cpu_compile_maxpool_rerun.json", "results/speed_cpu_compile_maxpool_nocache.json"),
        {"setup": "omniglot5", "labels": ("run b626d8b, 7 rounds", "run 253969d, caches off, 5 rounds")},
    ),
    "speed_protonet84": Table(
        r_speed,
        ("results/product_speed_protonet84.json",),
        {"setup": "protonet84", "columns": ("median", "ratio", "tensor_peak", "grad64")},
    ),
    "speed_protonet": Table(
        r_speed_runs,
        ("results/speed_cpu_protonet_thin_conv.json", "results/speed_cpu_protonet_thin_conv_300.json"),
        {"setup": "protonet", "labels": ("100 rounds", "300 rounds")},
    ),
    "speed_sinusoid": Table(
        r_speed,
        ("results/speed_cpu_vmap_compile.json",),
        {"setup": "sinusoid", "columns": ("median", "ratio", "peak_mib", "grad64")},
    ),
    "speed_gpu_omniglot5": Table(
        r_speed,
        ("results/gpu/speed_cuda.json",),
        {"setup": "omniglot5", "columns": ("median", "ratio", "gpu_peak", "grad64", "grad32")},
    ),
    "speed_gpu_omniglot20": Table(
        r_speed, ("results/gpu/speed_cuda.json",), {"setup": "omniglot20", "columns": ("median", "ratio", "gpu_peak")}
    ),
    "speed_gpu_sinusoid": Table(
        r_speed, ("results/gpu/speed_cuda.json",), {"setup": "sinusoid", "columns": ("median", "ratio", "gpu_peak")}
    ),
    "speed_gpu_protonet": Table(
        r_speed, ("results/gpu/speed_cuda.json",), {"setup": "protonet", "columns": ("median", "ratio", "gpu_peak")}
    ),
    "compile_modes_gpu": Table(r_compile_modes, ("results/gpu/compile_modes_cuda.json",)),
    "cnp_default": Table(r_cnp, ("results/cnp.json",)),
    "cnp_recal": Table(r_cnp_recal, ("results/cnp_recal.json",)),
    "cnp_floor": Table(r_cnp, ("results/cnp_floor1e-4.json",)),
    "cnp_scale": Table(r_cnp, ("results/cnp_scale.json",)),
    "cnp_omniglot": Table(r_cnp_omniglot, ("results/cnp_recal.json",)),
    "fusion_homogeneous_1": Table(r_fusion, ("results/fusion_homogeneous.json",), {"k_shot": 1}),
    "fusion_homogeneous_5": Table(r_fusion, ("results/fusion_homogeneous.json",), {"k_shot": 5}),
    "fusion_heterogeneous_1": Table(r_fusion, ("results/fusion_heterogeneous.json",), {"k_shot": 1}),
    "fusion_heterogeneous_5": Table(r_fusion, ("results/fusion_heterogeneous.json",), {"k_shot": 5}),
    "distributed": Table(r_distributed, ("results/distributed.json",)),
    "learner_targets": Table(
        r_learner_targets,
        (
            "results/compare_all_5w1s.json",
            "results/compare_all_20w1s.json",
            "results/compare_all_5w1s.json",
            "results/metasgd60_monitor.json",
            "results/omniglot_maml20_cpu_compile.json",
            "results/compare_metasgd20_20w1s.json",
            "results/compare_mb30_5w1s.json",
            "results/compare_mb30_20w1s.json",
            "results/compare_mb30_seeds_5w1s.json",
            "results/compare_mb30_seeds_20w1s.json",
            "results/compare_mb_shift_5w1s.json",
            "results/compare_mb_shift_20w1s.json",
            "results/compare_mb_shift_seeds_5w1s.json",
            "results/compare_mb_shift_seeds_20w1s.json",
        ),
    ),
    "mb_shift_seeds_5w1s": Table(r_compare, ("results/compare_mb_shift_seeds_5w1s.json",)),
    "mb_shift_seeds_20w1s": Table(r_compare, ("results/compare_mb_shift_seeds_20w1s.json",)),
    "distill_5w1s": Table(r_compare, ("results/compare_distill_5w1s.json",)),
    "distill_20w1s": Table(r_compare, ("results/compare_distill_20w1s.json",)),
    "new_fashion": Table(r_compare, ("results/compare_new_fashion-mnist.json",)),
    "new_digits": Table(r_compare, ("results/compare_new_digits.json",)),
    "film_5w1s": Table(r_compare, ("results/compare_film_5w1s.json",)),
    "film_20w1s": Table(r_compare, ("results/compare_film_20w1s.json",)),
    "film_fashion": Table(r_compare, ("results/compare_film_fashion-mnist.json",)),
    "film_digits": Table(r_compare, ("results/compare_film_digits.json",)),
    "mb_shift_5w1s": Table(r_compare, ("results/compare_mb_shift_5w1s.json",)),
    "mb_shift_20w1s": Table(r_compare, ("results/compare_mb_shift_20w1s.json",)),
    "mb30_seeds_5w1s": Table(r_compare, ("results/compare_mb30_seeds_5w1s.json",)),
    "mb30_seeds_20w1s": Table(r_compare, ("results/compare_mb30_seeds_20w1s.json",)),
    "all_5w1s": Table(r_compare, ("results/compare_all_5w1s.json",)),
    "all_20w1s": Table(r_compare, ("results/compare_all_20w1s.json",)),
    "all_fashion": Table(r_compare, ("results/compare_all_fashion_5w1s.json",)),
    "all_digits": Table(r_compare, ("results/compare_all_digits_5w1s.json",)),
    "tabular": Table(
        r_tabular,
        (
            "results/tabular_iris.json",
            "results/tabular_wine.json",
            "results/tabular_breast-cancer.json",
            "results/tabular_digits-table.json",
        ),
    ),
    "caml4_5w1s": Table(r_compare, ("results/compare_caml4_5w1s.json",)),
    "caml30_5w1s": Table(r_compare, ("results/compare_caml30_5w1s.json",)),
    "gp_product": Table(r_gp_product, ("results/gp_rbf_tnp_product.json", "results/gp_rbf_npcnp_product.json")),
    "gp_product_all": Table(
        r_gp_product,
        (
            "results/gp_rbf_tnp_product.json",
            "results/gp_rbf_anp_product.json",
            "results/gp_rbf_npcnp_allpoints_product.json",
            "results/gp_rbf_npcnp_ref_product.json",
            "results/gp_rbf_npcnp_product.json",
        ),
        {
            "labels": (
                "tnp (TNP-D, 10 min)",
                "anp (deterministic ANP, 10 min)",
                "npcnp, width 128, cosine schedule, context points in the loss",
                "npcnp, width 128, cosine schedule",
                "npcnp (the table above)",
            )
        },
    ),
    "multisource_omniglot": Table(r_compare, ("results/compare_multisource_omniglot.json",)),
    "multisource_kanji": Table(r_compare, ("results/compare_multisource_kuzushiji-kanji.json",)),
    "multisource_fashion": Table(r_compare, ("results/compare_multisource_fashion-mnist.json",)),
    "multisource_digits": Table(r_compare, ("results/compare_multisource_digits.json",)),
    "single_omniglot": Table(r_compare, ("results/compare_single_omniglot.json",)),
    "single_kanji": Table(r_compare, ("results/compare_single_kuzushiji-kanji.json",)),
    "single_fashion": Table(r_compare, ("results/compare_single_fashion-mnist.json",)),
    "single_digits": Table(r_compare, ("results/compare_single_digits.json",)),
    "tabular_long": Table(
        r_tabular,
        (
            "results/tabular_long_iris.json",
            "results/tabular_long_wine.json",
            "results/tabular_long_breast-cancer.json",
            "results/tabular_long_digits-table.json",
        ),
    ),
    "compare_sine": Table(r_regression_compare, ("results/compare_sine.json",)),
    "compare_gp_rbf": Table(r_regression_compare, ("results/compare_gp_rbf.json",)),
    "compare_completion": Table(r_regression_compare, ("results/compare_completion.json",)),
    "compare_completion_tnp": Table(r_regression_compare, ("results/compare_completion_tnp.json",)),
    "compare_gp_gradient": Table(r_regression_compare, ("results/compare_gp_gradient.json",)),
    "compare_completion_gradient": Table(r_regression_compare, ("results/compare_completion_gradient.json",)),
    "compare_sine_gaussian": Table(r_regression_compare, ("results/compare_sine_gaussian.json",)),
    "compare_gp_beta": Table(r_regression_compare, ("results/compare_gp_beta.json",)),
    "tabular_warped": Table(
        r_tabular,
        (
            "results/tabular_warped_iris.json",
            "results/tabular_warped_wine.json",
            "results/tabular_warped_breast-cancer.json",
            "results/tabular_warped_digits-table.json",
        ),
        {"run": "tabular_warped", "versus": "tabular_long"},
    ),
    "tabular_ensemble": Table(
        r_tabular,
        tuple(f"results/tabular_ens_{t}.json" for t in ("iris", "wine", "breast-cancer", "digits-table")),
        {"run": "tabular_warped", "versus": "tabular_long"},
    ),
    **{
        f"tabular_metric_{name}": Table(
            r_tabular,
            tuple(f"results/tabular_metric_ens_{t}.json" for t in ("iris", "wine", "breast-cancer", "digits-table")),
            {"run": f"{name}_prior", "versus": "tabular_warped", "learner": label},
        )
        for name, label in (("protonet", "ProtoNet on the prior"), ("r2d2", "R2D2 on the prior"))
    },
    "tabular_metric_simple_cnaps": Table(
        r_tabular,
        tuple(f"results/tabular_metric_sc_{t}.json" for t in ("iris", "wine", "breast-cancer", "digits-table")),
        {"run": "simple_cnaps_prior", "versus": "tabular_warped", "learner": "Simple CNAPS head on the prior"},
    ),
    **{
        f"tabular_lda{suffix}": Table(
            r_tabular,
            tuple(f"results/tabular_lda{suffix}_{t}.json" for t in ("iris", "wine", "breast-cancer", "digits-table")),
            {"run": "lda_noskip", "versus": "lda_skip", "learner": "LDA head on the prior"},
        )
        for suffix in ("", "_seed7")
    },
    **{
        f"tabular_lda_seeds_{run}": Table(
            r_tabular,
            tuple(f"results/tabular_lda_seeds_{t}.json" for t in ("iris", "wine", "breast-cancer", "digits-table")),
            {"run": run, "versus": versus, "learner": "LDA head on the prior"},
        )
        for run, versus in (("lda_noskip_s0", None), ("lda_noskip_s1", "lda_noskip_s0"))
    },
    "tabular_caml_skip": Table(
        r_tabular,
        tuple(f"results/tabular_caml_skip_{t}.json" for t in ("iris", "wine", "breast-cancer", "digits-table")),
        {"run": "caml_skip", "versus": "lda_skip", "learner": "in-context classifier, input columns kept"},
    ),
    "caml_frozen_5w1s": Table(r_compare, ("results/compare_caml_frozen_5w1s.json",)),
    "caml20_20w1s": Table(r_compare, ("results/compare_caml20_20w1s.json",)),
    "caml20_5w1s": Table(r_compare, ("results/compare_caml20_5w1s.json",)),
    "mb30_5w1s": Table(r_compare, ("results/compare_mb30_5w1s.json",)),
    "mb30_20w1s": Table(r_compare, ("results/compare_mb30_20w1s.json",)),
    "completion": Table(r_completion, ("results/completion_npcnp.json", "results/completion_anp.json")),
    "sine_np": Table(r_completion, ("results/sine_anp.json", "results/sine_tnp.json"), {"context": "context points"}),
    "sine_inner_beta": Table(
        r_inner_steps,
        tuple(
            f"results/sine_inner_{run}_s{steps}.json"
            for run in ("maml-gauss", "maml-gauss-beta05", "maml-gauss-beta1")
            for steps in (1, 2, 5, 10)
        ),
        {
            "labels": tuple(
                label
                for label in ("NLL (as before)", "beta-NLL, beta = 0.5", "beta-NLL, beta = 1")
                for _ in (1, 2, 5, 10)
            ),
            "reference": 1,  # the NLL inner loss at its best step count, 2
        },
    ),
    "sine_inner_metasgd": Table(
        r_inner_steps,
        tuple(f"results/sine_inner_msgd-{run}_s{steps}.json" for run in ("plain", "beta05") for steps in (1, 2, 5, 10)),
        {
            "labels": tuple(
                label for label in ("Meta-SGD, NLL", "Meta-SGD, beta-NLL, beta = 0.5") for _ in (1, 2, 5, 10)
            ),
            "reference": 0,  # the NLL inner loss at its training step count, 1
        },
    ),
}


def render(name: str, root: Path = ROOT) -> str:
    """The Markdown of table ``name`` (header, separator, rows; trailing newline)."""
    if name not in TABLES:
        raise KeyError(f"unknown table {name!r}; known: {sorted(TABLES)}")
    t = TABLES[name]
    header, rows = t.render([load(root, f) for f in t.files], **t.options)
    return markdown(header, rows)


def doc_files(root: Path = ROOT) -> list[Path]:
    out: list[Path] = []
    for pattern in DOC_GLOBS:
        out += sorted(root.glob(pattern))
    return out


def update_text(text: str, root: Path = ROOT, *, where: str = "<text>") -> tuple[str, list[str]]:
    """``text`` with every marked table re-rendered, and the problems found (unknown names, open markers)."""
    problems: list[str] = []
    if len(OPEN.findall(text)) != len(MARKER.findall(text)):
        problems.append(f"{where}: a '<!-- table: NAME -->' marker has no matching '<!-- /table -->'")

    def sub(m: re.Match[str]) -> str:
        name = m.group("name")
        try:
            body = render(name, root)
        except KeyError as e:
            problems.append(f"{where}: {e.args[0]}")
            return m.group(0)
        return f"<!-- table: {name} -->\n{body}<!-- /table -->"

    return MARKER.sub(sub, text), problems


def check(root: Path = ROOT) -> list[str]:
    """Problems with the docs' tables: one line per drifted table, unknown name or open marker."""
    problems: list[str] = []
    for path in doc_files(root):
        text = path.read_text()
        where = str(path.relative_to(root))
        new, found = update_text(text, root, where=where)
        problems += found
        if new != text:
            old_tables = {m.group("name"): m.group("body") for m in MARKER.finditer(text)}
            new_tables = {m.group("name"): m.group("body") for m in MARKER.finditer(new)}
            for name, body in new_tables.items():
                if old_tables.get(name) != body:
                    problems.append(f"{where}: table {name!r} differs from what {TABLES[name].files} give")
    return problems


def write(root: Path = ROOT) -> list[str]:
    """Re-render every marked table in place; returns the files that changed."""
    changed = []
    for path in doc_files(root):
        text = path.read_text()
        new, problems = update_text(text, root, where=str(path.relative_to(root)))
        if problems:
            raise SystemExit("\n".join(problems))
        if new != text:
            path.write_text(new)
            changed.append(str(path.relative_to(root)))
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a table differs from its JSON")
    parser.add_argument("--list", action="store_true", help="print the table names and their JSON files")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    if args.list:
        for name, t in TABLES.items():
            print(f"{name}: {', '.join(t.files)}")
        return 0
    if args.check:
        problems = check(args.root)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    for f in write(args.root):
        print(f"updated {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
