"""Sinusoid regression (MAML §5.1): MAML and Meta-SGD trained at K = 5, 10, 20.

Protocol (full): meta-batch 25 tasks, K support + K query points per training task, one inner
step with alpha = 0.01 during meta-training, Adam outer optimiser (lr 1e-3), ``--iterations``
meta-iterations (default 40,000; the MAML paper used 70,000). Evaluation: 1,000 fixed held-out
tasks (``sinusoid_eval_tasks``, seed 12345, 100 query points each, the same tasks for every
learner), K = 5, 10, 20 support points; MAML after 0..10 steps of SGD with alpha = 0.01 (the
adaptation curve), Meta-SGD after one step with its learned rates (and its curve). MSE with a
95% confidence interval over tasks.

Usage:
    python benchmarks/sinusoid.py --out results/sinusoid.json          # full
    python benchmarks/sinusoid.py --quick                              # < 1 minute
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import markdown_table, parser, setup_threads, write_out  # noqa: E402
from metafit import MAML, MetaSGD, SinusoidTasks, Trainer, evaluate, generator, seeded, sinusoid_eval_tasks  # noqa: E402
from metafit.app.config import PATHS  # noqa: E402
from metafit.models import MLP  # noqa: E402

PAPER_MAML_TABLE2 = {1: 0.67, 5: 0.38, 10: 0.35}  # MAML App. C Table 2, 5-shot, after 1/5/10 steps
PAPER_METASGD_5_5 = {"Meta-SGD": "0.90 ± 0.16", "MAML": "1.13 ± 0.18"}  # Meta-SGD Table 1, train 5 -> test 5


def run(algo_name: str, k_train: int, iterations: int, eval_tasks: int, seed: int, path: str) -> dict:
    model = seeded(seed, lambda: MLP(1, (40, 40), 1))
    if algo_name == "MAML":
        algo = MAML(inner_lr=0.01, inner_steps=1, eval_inner_steps=10, criterion="mse")
    else:
        algo = MetaSGD(inner_lr=0.01, inner_steps=1, eval_inner_steps=1, criterion="mse")
    trainer = Trainer(algo, model, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), path=path)
    sampler = SinusoidTasks(k_shot=k_train, n_query=k_train, tasks_per_batch=25, generator=generator(seed + 1000 * k_train))
    t0 = time.perf_counter()
    trainer.fit(sampler, iterations)
    train_s = time.perf_counter() - t0
    evals = {}
    for k_test in (5, 10, 20):
        tasks = sinusoid_eval_tasks(eval_tasks, k_test, 100, seed=12345)
        r = evaluate(algo, model, trainer.meta_params, tasks, curve_steps=10, chunk=250)
        evals[k_test] = {
            "mse": r.metrics["mse"].mean,
            "ci95": r.metrics["mse"].ci95,
            "steps": r.steps,
            "curve": [(s.mean, s.ci95) for s in r.curve["mse"]],
        }
    return {"algo": algo_name, "k_train": k_train, "iterations": iterations, "train_seconds": train_s,
            "path": trainer.path, "eval": evals}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=40000)
    p.add_argument("--eval-tasks", type=int, default=1000)
    p.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--algos", nargs="+", default=["MAML", "Meta-SGD"])
    p.add_argument("--path", default="vmap", choices=PATHS)
    args = p.parse_args()
    setup_threads(args.threads, args.keep_freed_memory)
    if args.quick:
        args.iterations, args.eval_tasks, args.shots = 600, 200, [5]
    t0 = time.perf_counter()
    runs = [run(a, k, args.iterations, args.eval_tasks, args.seed, args.path) for a in args.algos for k in args.shots]
    wall = time.perf_counter() - t0

    rows = []
    for r in runs:
        for k_test, e in r["eval"].items():
            steps = e["steps"]
            rows.append([r["algo"], r["k_train"], k_test, steps, f"{e['mse']:.3f} ± {e['ci95']:.3f}",
                         f"{r['train_seconds'] / 60:.1f}"])
    print(f"## Sinusoid: MSE ± 95% CI over {args.eval_tasks} held-out tasks ({args.iterations} meta-iterations)\n")
    print(markdown_table(["learner", "train K", "test K", "inner steps", "MSE", "train min"], rows))
    print("\n## MAML 5-shot adaptation curve vs MAML App. C Table 2\n")
    crow = []
    for r in runs:
        if r["algo"] == "MAML" and 5 in r["eval"]:
            c = r["eval"][5]["curve"]
            crow.append([f"metafit MAML (train K={r['k_train']})"] + [f"{c[s][0]:.3f} ± {c[s][1]:.3f}" for s in (1, 5, 10)])
    crow.append(["MAML paper (Table 2)"] + [str(PAPER_MAML_TABLE2[s]) for s in (1, 5, 10)])
    print(markdown_table(["", "1 step", "5 steps", "10 steps"], crow))
    print("\n## Train 5-shot -> test 5-shot vs Meta-SGD Table 1\n")
    srow = []
    for r in runs:
        if r["k_train"] == 5:
            e = r["eval"][5]
            srow.append([f"metafit {r['algo']} ({e['steps']} steps)", f"{e['mse']:.3f} ± {e['ci95']:.3f}",
                         PAPER_METASGD_5_5["Meta-SGD" if r["algo"] == "Meta-SGD" else "MAML"]])
    print(markdown_table(["learner", "ours", "Meta-SGD paper Table 1"], srow))
    print(f"\nwall time {wall / 60:.1f} min")
    write_out(args.out, {"benchmark": "sinusoid", "quick": args.quick, "iterations": args.iterations,
                         "eval_tasks": args.eval_tasks, "wall_seconds": wall, "runs": runs})


if __name__ == "__main__":
    main()
