"""Few-shot classification on real Omniglot: every learner, beside the papers' numbers.

Two protocols, recorded in every row:

* ``paper``: the papers' settings (MAML: 60,000 meta-iterations, meta-batch 32 (5-way) / 16
  (20-way), strided conv-4, 1 inner step alpha = 0.4 (5-way) / 5 steps alpha = 0.1 (20-way), 3 / 5
  steps at test; ProtoNets: 60-way training episodes, 5 queries, Adam 1e-3 halved every 2,000
  episodes; ...). Far beyond a 2-core CPU; meant for a GPU.
* ``cpu``: the same learners and settings, but each trained for a wall-clock budget
  (``--minutes``) on this machine, with smaller meta-batches where that reaches accuracy sooner.

Data: the MAML/Vinyals split (1,200 training characters with 90° rotations as new classes, 423
test characters, seed 0), 28x28. Evaluation: a fixed list of test episodes per setting (600;
1,000 for ProtoNets), 15 queries per class for 5-way and 5 for 20-way, mean ± 95% CI.

Usage:
    python benchmarks/omniglot.py --learners protonet maml --minutes 30 --out results/omniglot.json
    python benchmarks/omniglot.py --quick
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import data_root, markdown_table, parser, setup_threads, write_out  # noqa: E402
from metafit import ANIL, MAML, MetaSGD, ProtoNet, Reptile, Trainer, evaluate, generator, seeded  # noqa: E402
from metafit.app.config import PATHS  # noqa: E402
from metafit.data.omniglot import load_omniglot, omniglot_split  # noqa: E402
from metafit.data.sampling import EpisodeSampler, fixed_episodes  # noqa: E402
from metafit.models import Conv4  # noqa: E402

PAPER = {  # (learner, n_way, k_shot) -> published accuracy (%), see docs/results.md for sources
    ("maml", 5, 1): "98.7 ± 0.4", ("maml", 5, 5): "99.9 ± 0.1", ("maml", 20, 1): "95.8 ± 0.3", ("maml", 20, 5): "98.9 ± 0.2",
    ("fomaml", 5, 1): "98.3 ± 0.5", ("fomaml", 5, 5): "99.2 ± 0.2", ("fomaml", 20, 1): "89.4 ± 0.5", ("fomaml", 20, 5): "97.9 ± 0.1",
    ("metasgd", 5, 1): "99.53 ± 0.26", ("metasgd", 5, 5): "99.93 ± 0.09",
    ("protonet", 5, 1): "98.8", ("protonet", 5, 5): "99.7", ("protonet", 20, 1): "96.0", ("protonet", 20, 5): "98.9",
    ("reptile", 5, 1): "97.68 ± 0.04", ("reptile", 5, 5): "99.48 ± 0.06", ("reptile", 20, 1): "89.43 ± 0.14", ("reptile", 20, 5): "97.12 ± 0.32",
    ("anil", 20, 1): "96.2 ± 0.5", ("anil", 20, 5): "98.0 ± 0.3",
    ("cnp", 5, 1): "95.3 (unconfirmed)", ("cnp", 5, 5): "98.5 (unconfirmed)",
}


@dataclass
class Recipe:
    """How one learner is meta-trained for one (n_way, k_shot) setting."""

    learner: str
    n_way: int
    k_shot: int
    make_algo: Callable[[], Any]
    make_model: Callable[[int], torch.nn.Module]
    train_way: int
    train_shot: int
    train_query: int
    tasks_per_batch: int
    optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer]
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None
    iterations: int = 60000
    eval_ways_shots: list[tuple[int, int]] = field(default_factory=list)
    path: str = "loop"


def _adam(lr: float) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
    return lambda p: torch.optim.Adam(p, lr=lr)


def recipe(learner: str, n_way: int, k_shot: int, protocol: str) -> Recipe:
    """The training recipe of ``learner`` for ``n_way``-way ``k_shot``-shot under ``protocol``."""
    cpu = protocol == "cpu"
    five = n_way == 5
    strided = lambda out: Conv4(1, out, downsample="stride")  # noqa: E731  (MAML paper Omniglot net)
    if learner == "protonet":
        return Recipe(
            learner, n_way, k_shot, ProtoNet,
            # channels-last conv weights: ~1.4x faster ProtoNet steps on this CPU (same function);
            # Conv4 computes each block's norm -> ReLU -> max-pool fused by default (same function
            # and gradients, fewer passes over memory: docs/results.md, "Fused ReLU and max-pool")
            lambda out: Conv4(1, None, downsample="pool").to(memory_format=torch.channels_last),
            # 60-way training episodes as the paper; on the CPU with 2 queries per class (an episode
            # costs 1.5x a 20-way 5-query one, and beat it in an 11-minute screen and in 30 minutes:
            # docs/results.md, "60-way 2-query training episodes")
            train_way=60, train_shot=k_shot, train_query=2 if cpu else 5, tasks_per_batch=1,
            optimizer=_adam(1e-3),
            scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 2000, 0.5),
            iterations=20000 if not cpu else 10**9,
            eval_ways_shots=[(5, 1), (5, 5), (20, 1), (20, 5)] if k_shot == 1 else [(5, 5), (20, 5)],
        )
    if learner in ("maml", "fomaml", "metasgd"):
        kw = dict(inner_lr=0.4 if five else 0.1, inner_steps=1 if five else 5,
                  eval_inner_steps=3 if five else 5, first_order=learner == "fomaml")
        make = (lambda: MetaSGD(**kw)) if learner == "metasgd" else (lambda: MAML(**kw))
        return Recipe(
            learner, n_way, k_shot, make, strided,
            train_way=n_way, train_shot=k_shot, train_query=15 if five else 5,
            tasks_per_batch=(32 if five else 16) if not cpu else (8 if five else 4),
            optimizer=_adam(1e-3), iterations=60000 if not cpu else 10**9,
            eval_ways_shots=[(n_way, k_shot)],
        )
    if learner == "anil":
        return Recipe(
            learner, n_way, k_shot,
            lambda: ANIL(inner_lr=0.4 if five else 0.1, inner_steps=1 if five else 5, eval_inner_steps=3 if five else 10),
            strided, train_way=n_way, train_shot=k_shot, train_query=15 if five else 5,
            tasks_per_batch=32 if not cpu else 8, optimizer=_adam(1e-3), iterations=60000 if not cpu else 10**9,
            eval_ways_shots=[(n_way, k_shot)],
        )
    if learner == "reptile":
        # Nichol et al. 2018 Omniglot: 5 inner steps on 10-shot training tasks, meta-batch 5,
        # outer step 1.0 annealed linearly to 0. Inner loop here is plain SGD.
        iters = 100000 if not cpu else 20000
        return Recipe(
            learner, n_way, k_shot,
            lambda: Reptile(inner_lr=0.1, inner_steps=5, eval_inner_steps=10 if five else 20),
            strided, train_way=n_way, train_shot=10, train_query=1, tasks_per_batch=5,
            optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
            scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: max(0.0, 1.0 - s / iters)),
            iterations=iters, eval_ways_shots=[(n_way, k_shot)],
        )
    raise ValueError(f"unknown learner {learner!r}; choose from protonet, maml, fomaml, metasgd, anil, reptile")


def eval_tasks(test_set: Any, n_way: int, k_shot: int, n_episodes: int, seed: int = 2024):
    n_query = 15 if n_way == 5 else 5
    return fixed_episodes(test_set, n_way, k_shot, n_query, n_episodes, seed=seed + 100 * n_way + k_shot)


def train(
    r: Recipe,
    train_set: Any,
    *,
    minutes: float | None,
    iterations: int | None,
    seed: int,
    monitor: Callable[[Trainer, Any, float], None] | None = None,
    monitor_every_s: float = 60.0,
    device: str = "cpu",
    path: str | None = None,
) -> tuple[Any, torch.nn.Module, Trainer, dict[str, Any]]:
    """Meta-trains ``r`` until the time budget or the iteration count runs out.

    ``monitor(trainer, model, train_minutes)`` is called every ``monitor_every_s`` seconds of
    training time; its own time is excluded from the training clock.
    """
    model = seeded(seed, lambda: r.make_model(r.n_way)).to(device)
    algo = r.make_algo()
    trainer = Trainer(algo, model, optimizer=r.optimizer, path=path or r.path)
    if r.scheduler is not None:
        trainer.scheduler = r.scheduler(trainer.optimizer)
    sampler = EpisodeSampler(train_set, r.train_way, r.train_shot, r.train_query,
                             tasks_per_batch=r.tasks_per_batch, generator=generator(seed + 1))
    it = iter(sampler)
    limit = iterations if iterations is not None else r.iterations
    train_s, next_mon, losses = 0.0, monitor_every_s, []
    while trainer.step_count < limit and (minutes is None or train_s < minutes * 60):
        t0 = time.perf_counter()
        res = trainer.step(next(it).to(device))
        train_s += time.perf_counter() - t0
        losses.append(res.metrics.get("loss", float("nan")))
        if monitor is not None and train_s >= next_mon:
            monitor(trainer, model, train_s / 60)
            next_mon += monitor_every_s
    info = {"iterations": trainer.step_count, "train_minutes": train_s / 60, "path": trainer.path,
            "final_train_loss": sum(losses[-50:]) / max(1, len(losses[-50:]))}
    return algo, model, trainer, info


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--learners", nargs="+", default=["protonet", "maml", "fomaml", "metasgd", "anil", "reptile"])
    p.add_argument("--settings", nargs="+", default=["5:1"], help="n_way:k_shot settings to train, e.g. 5:1 20:1")
    p.add_argument("--protocol", choices=["cpu", "paper"], default="cpu")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per learner and setting (cpu protocol)")
    p.add_argument("--minutes-paper", action="store_true",
                   help="also apply --minutes to the paper protocol (a truncated paper run; the row records the iterations)")
    p.add_argument("--iterations", type=int, default=None, help="override the iteration count")
    p.add_argument("--episodes", type=int, default=600, help="test episodes (ProtoNets use 1000)")
    p.add_argument("--data-root", default=None, help="folder holding omniglot/ (default $METAFIT_DATA)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--path", default=None, choices=PATHS, help="engine path (default: the recipe's)")
    args = p.parse_args()
    setup_threads(args.threads, args.keep_freed_memory)
    if args.quick:
        args.minutes, args.episodes = 0.15, 100
    t_all = time.perf_counter()
    data = load_omniglot(data_root(args.data_root))
    train_set = omniglot_split(data, "trainval", protocol="vinyals", rotations=True)
    test_set = omniglot_split(data, "test", protocol="vinyals", rotations=False)
    rows, records = [], []
    for learner in args.learners:
        for setting in args.settings:
            n_way, k_shot = (int(v) for v in setting.split(":"))
            r = recipe(learner, n_way, k_shot, args.protocol)
            budget = args.minutes if (args.protocol == "cpu" or args.minutes_paper) else None
            algo, model, trainer, info = train(r, train_set, minutes=budget, iterations=args.iterations, seed=args.seed,
                                               device=args.device, path=args.path)
            for ew, es in r.eval_ways_shots:
                n_ep = 1000 if learner == "protonet" and not args.quick else args.episodes
                res = evaluate(algo, model, trainer.meta_params, eval_tasks(test_set, ew, es, n_ep).to(args.device))
                acc = res.metrics["accuracy"]
                rec = {"learner": learner, "protocol": args.protocol, "device": args.device, "train_setting": setting, "n_way": ew, "k_shot": es,
                       "accuracy": 100 * acc.mean, "ci95": 100 * acc.ci95, "episodes": acc.n, "eval_steps": res.steps, **info}
                records.append(rec)
                rows.append([learner, args.protocol, f"{ew}-way {es}-shot", f"{100 * acc.mean:.2f} ± {100 * acc.ci95:.2f}",
                             acc.n, PAPER.get((learner, ew, es), "–"), info["iterations"], f"{info['train_minutes']:.1f}"])
    print("## Omniglot (Vinyals split, 28x28, rotations), accuracy % ± 95% CI\n")
    print(markdown_table(["learner", "protocol", "test setting", "metafit", "episodes", "paper", "iterations", "train min"], rows))
    wall = time.perf_counter() - t_all
    print(f"\nwall time {wall / 60:.1f} min")
    write_out(args.out, {"benchmark": "omniglot", "quick": args.quick, "wall_seconds": wall, "rows": records})


if __name__ == "__main__":
    main()
