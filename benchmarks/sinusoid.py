"""Sinusoid regression (MAML §5.1): MAML and Meta-SGD trained at K = 5, 10, 20, beside the papers.

Each row is a product run: ``metafit train CONFIG --set data.k_shot=K --set data.n_query=K``
(``configs/sinusoid_maml.toml``, ``configs/sinusoid_metasgd.toml``: meta-batch 25, one inner step
alpha = 0.01, Adam 1e-3, 40,000 meta-iterations) followed by ``metafit eval RUN --k-shot 5 10 20``
(1,000 fixed held-out tasks, 100 query points, the same tasks for every learner; MAML after 10
inner steps with its adaptation curve, Meta-SGD after one step of its learned rates). This script
adds only the loop over K, timing and the tables.

Usage:
    python benchmarks/sinusoid.py --out results/sinusoid.json          # full (two learners x three K)
    python benchmarks/sinusoid.py --quick                              # < 2 minutes
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import markdown_table, parser, record_process_settings, write_out  # noqa: E402

from metafit.app.config import apply_overrides, load_config  # noqa: E402
from metafit.app.runs import evaluate_checkpoint, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"MAML": ROOT / "configs" / "sinusoid_maml.toml", "Meta-SGD": ROOT / "configs" / "sinusoid_metasgd.toml"}
PAPER_MAML_TABLE2 = {1: 0.67, 5: 0.38, 10: 0.35}  # MAML App. C Table 2, 5-shot, after 1/5/10 steps
PAPER_METASGD_5_5 = {"Meta-SGD": "0.90 ± 0.16", "MAML": "1.13 ± 0.18"}  # Meta-SGD Table 1, train 5 -> test 5


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20], help="training K values")
    p.add_argument("--algos", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config overrides for every run"
    )
    p.add_argument(
        "--run-root", type=Path, default=None, help="keep the run folders here (default: a temporary folder)"
    )
    args = p.parse_args()
    sets = list(args.set)
    if args.threads:
        sets.append(f"train.num_threads={args.threads}")
    if not args.keep_freed_memory:
        sets.append("train.keep_freed_memory=false")
    if args.quick:
        args.shots = [5]
        sets += ["train.steps=600", "data.eval_tasks=200"]
    root = args.run_root or Path(tempfile.mkdtemp(prefix="metafit-sinusoid-"))
    t_all = time.perf_counter()
    runs = []
    for algo in args.algos:
        for k in args.shots:
            config = apply_overrides(
                load_config(CONFIGS[algo]), [f"data.k_shot={k}", f"data.n_query={k}", f"train.seed={args.seed}", *sets]
            )
            record_process_settings(config)
            run_dir = root / f"{algo.lower()}-k{k}"
            res = train(config, run_dir, force=True, progress=False)
            ev = evaluate_checkpoint(run_dir, shots=[5, 10, 20])
            runs.append(
                {
                    "algo": algo,
                    "k_train": k,
                    "iterations": res.step,
                    "train_seconds": res.train_seconds,
                    "path": res.path,
                    "run_dir": str(run_dir),
                    "config": config.to_dict(),
                    "eval": {
                        r["k_shot"]: {
                            "mse": r["metrics"]["mse"]["mean"],
                            "ci95": r["metrics"]["mse"]["ci95"],
                            "steps": r["steps"],
                            "curve": [(s["mean"], s["ci95"]) for s in r["curve"]["mse"]],
                        }
                        for r in ev["results"]
                    },
                }
            )
    wall = time.perf_counter() - t_all
    rows = []
    for r in runs:
        for k_test, e in r["eval"].items():
            rows.append(
                [
                    r["algo"],
                    r["k_train"],
                    k_test,
                    e["steps"],
                    f"{e['mse']:.3f} ± {e['ci95']:.3f}",
                    f"{r['train_seconds'] / 60:.1f}",
                ]
            )
    n_tasks = runs[0]["config"]["data"]["eval_tasks"]
    print(f"## Sinusoid: MSE ± 95% CI over {n_tasks} held-out tasks ({runs[0]['iterations']} meta-iterations)\n")
    print(markdown_table(["learner", "train K", "test K", "inner steps", "MSE", "train min"], rows))
    crow = []
    for r in runs:
        if r["algo"] == "MAML" and 5 in r["eval"] and len(r["eval"][5]["curve"]) > 10:
            c = r["eval"][5]["curve"]
            crow.append(
                [f"metafit MAML (train K={r['k_train']})"] + [f"{c[s][0]:.3f} ± {c[s][1]:.3f}" for s in (1, 5, 10)]
            )
    if crow:
        crow.append(["MAML paper (Table 2)"] + [str(PAPER_MAML_TABLE2[s]) for s in (1, 5, 10)])
        print("\n## MAML 5-shot adaptation curve vs MAML App. C Table 2\n")
        print(markdown_table(["", "1 step", "5 steps", "10 steps"], crow))
    srow = [
        [
            f"metafit {r['algo']} ({r['eval'][5]['steps']} steps)",
            f"{r['eval'][5]['mse']:.3f} ± {r['eval'][5]['ci95']:.3f}",
            PAPER_METASGD_5_5[r["algo"]],
        ]
        for r in runs
        if r["k_train"] == 5
    ]
    print("\n## Train 5-shot -> test 5-shot vs Meta-SGD Table 1\n")
    print(markdown_table(["learner", "ours", "Meta-SGD paper Table 1"], srow))
    print(f"\nwall time {wall / 60:.1f} min")
    write_out(
        args.out,
        {
            "benchmark": "sinusoid",
            "quick": args.quick,
            "iterations": runs[0]["iterations"],
            "eval_tasks": n_tasks,
            "wall_seconds": wall,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
