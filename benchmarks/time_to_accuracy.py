"""Wall-clock minutes of training until held-out Omniglot 5-way 1-shot accuracy first reaches
96%, 97% and 98%, for each learner, on this machine.

Held-out accuracy is measured on 600 fixed test episodes (Vinyals split test characters, 15
queries per class) every ``--every`` seconds of training; evaluation time is NOT counted in
the training clock, data decoding and model construction are. Each learner trains with the CPU
recipe of ``benchmarks/omniglot.py`` until ``--minutes`` or until it reaches the last threshold.

Usage:
    python benchmarks/time_to_accuracy.py --learners protonet maml --minutes 60 --out results/tta.json
    python benchmarks/time_to_accuracy.py --quick
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import data_root, markdown_table, parser, setup_threads, write_out  # noqa: E402
from metafit import evaluate  # noqa: E402
from metafit.app.config import PATHS  # noqa: E402
from metafit.data.omniglot import load_omniglot, omniglot_split  # noqa: E402
from omniglot import PAPER, eval_tasks, recipe, train  # noqa: E402

THRESHOLDS = (96.0, 97.0, 98.0)


class Reached(Exception):
    """Stops training once every threshold is reached."""


def decay_to_zero(kind: str, total: int) -> Callable[[torch.optim.Optimizer], Any]:
    """A scheduler factory that decays the learning rate to zero over ``total`` steps."""

    def factor(step: int) -> float:
        frac = min(step, total) / total
        return 0.5 * (1.0 + math.cos(math.pi * frac)) if kind == "cosine" else 1.0 - frac

    return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--learners", nargs="+", default=["protonet", "fomaml", "maml", "metasgd", "anil", "reptile"])
    p.add_argument("--minutes", type=float, default=30.0, help="training budget per learner")
    p.add_argument("--every", type=float, default=30.0, help="evaluate every this many seconds of training")
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--data-root", default=None)
    p.add_argument("--final-eval", action="store_true", help="also evaluate the final model in every setting of its recipe")
    p.add_argument("--no-stop", action="store_true",
                   help="train for the whole budget even after every threshold is reached (for the final model's table)")
    p.add_argument("--train-way", type=int, default=None, help="override the recipe's training-episode way")
    p.add_argument("--train-query", type=int, default=None, help="override the recipe's queries per class in training episodes")
    p.add_argument("--iterations", type=int, default=None,
                   help="stop after this many meta-iterations (also the length of --schedule cosine/linear)")
    p.add_argument("--lr", type=float, default=None, help="override the recipe's outer Adam learning rate")
    p.add_argument("--path", choices=PATHS, default=None,
                   help="engine path (default: the recipe's); compile time counts as training time")
    p.add_argument("--schedule", choices=["recipe", "cosine", "linear"], default="recipe",
                   help="learning-rate schedule: the recipe's (ProtoNets: halve every 2,000 episodes) or "
                        "cosine / linear decay to zero over --iterations (budgeted training)")
    args = p.parse_args()
    setup_threads(args.threads, args.keep_freed_memory)
    if args.quick:
        args.minutes, args.every, args.episodes = 0.3, 6.0, 100
    t0 = time.perf_counter()
    data = load_omniglot(data_root(args.data_root))
    setup_s = time.perf_counter() - t0
    train_set = omniglot_split(data, "trainval", protocol="vinyals", rotations=True)
    test_set = omniglot_split(data, "test", protocol="vinyals", rotations=False)
    episodes = eval_tasks(test_set, 5, 1, args.episodes)
    rows, records, final_rows = [], [], []
    for learner in args.learners:
        curve: list[tuple[float, float, float]] = []
        first: dict[float, float] = {}

        def monitor(trainer, model, minutes, learner=learner, curve=curve, first=first):  # noqa: ANN001
            res = evaluate(trainer.algorithm, model, trainer.meta_params, episodes)
            acc = 100 * res.metrics["accuracy"].mean
            curve.append((minutes, acc, 100 * res.metrics["accuracy"].ci95))
            for th in THRESHOLDS:
                if acc >= th and th not in first:
                    first[th] = minutes
            if len(first) == len(THRESHOLDS) and not args.no_stop:
                raise Reached

        r = recipe(learner, 5, 1, "cpu")
        if args.train_way is not None:
            r = dataclasses.replace(r, train_way=args.train_way)
        if args.train_query is not None:
            r = dataclasses.replace(r, train_query=args.train_query)
        if args.lr is not None:
            r = dataclasses.replace(r, optimizer=lambda ps, lr=args.lr: torch.optim.Adam(ps, lr=lr))
        if args.schedule != "recipe":
            if args.iterations is None:
                p.error(f"--schedule {args.schedule} needs --iterations (the decay length); got none")
            r = dataclasses.replace(r, scheduler=decay_to_zero(args.schedule, args.iterations))
        holder: dict = {}

        def keep(trainer, model, minutes, _m=monitor, holder=holder):  # noqa: ANN001
            holder["trainer"], holder["model"], holder["minutes"] = trainer, model, minutes
            _m(trainer, model, minutes)

        try:
            _, _, trainer, info = train(r, train_set, minutes=args.minutes, iterations=args.iterations, seed=args.seed,
                                        monitor=keep, monitor_every_s=args.every, path=args.path)
            # The final model is scored on the same 600 episodes too, so that a threshold first
            # reached by the end of training shows in the curve (budgeted schedules peak there).
            if not curve or info["train_minutes"] - curve[-1][0] > 1e-6:
                keep(trainer, trainer.model, info["train_minutes"])
        except Reached:
            trainer, info = holder["trainer"], {"stopped_at_minutes": holder["minutes"]}
        info["iterations"] = trainer.step_count
        finals = []
        if args.final_eval:
            for ew, es in r.eval_ways_shots:
                n_ep = args.episodes if args.quick else (1000 if learner == "protonet" else 600)
                res = evaluate(trainer.algorithm, trainer.model, trainer.meta_params, eval_tasks(test_set, ew, es, n_ep))
                a = res.metrics["accuracy"]
                finals.append({"n_way": ew, "k_shot": es, "accuracy": 100 * a.mean, "ci95": 100 * a.ci95, "episodes": a.n})
                final_rows.append([learner, f"{ew}-way {es}-shot", f"{100 * a.mean:.2f} ± {100 * a.ci95:.2f}", a.n,
                                   PAPER.get((learner, ew, es), "–"), trainer.step_count])
        best = max((a for _, a, _ in curve), default=float("nan"))
        records.append({"learner": learner, "train_way": r.train_way, "train_query": r.train_query, "schedule": args.schedule, "engine_path": args.path or r.path, "lr": args.lr,
                        "tasks_per_batch": r.tasks_per_batch, "first_minutes": first, "curve": curve, "budget_minutes": args.minutes,
                        "final": finals, **info})
        rows.append([learner] + [f"{first[t]:.1f}" if t in first else f"> {args.minutes:g}" for t in THRESHOLDS]
                    + [f"{best:.2f}", len(curve)])
    print(f"## Minutes of training to held-out Omniglot 5-way 1-shot accuracy ({args.episodes} episodes)\n")
    print(markdown_table(["learner", "96%", "97%", "98%", "best %", "evaluations"], rows))
    print(f"\n(data load {setup_s:.1f} s, not included; evaluation every {args.every:g} s of training)")
    if final_rows:
        print("\n## Final models on the fixed test episodes (accuracy % ± 95% CI)\n")
        print(markdown_table(["learner", "test setting", "metafit", "episodes", "paper", "iterations"], final_rows))
    write_out(args.out, {"benchmark": "time_to_accuracy", "quick": args.quick, "data_load_seconds": setup_s, "rows": records})


if __name__ == "__main__":
    main()
