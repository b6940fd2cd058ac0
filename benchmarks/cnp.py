"""Conditional Neural Process (Garnelo et al., ICML 2018) on sinusoid regression: MSE, NLL, calibration.

Protocol (full): one CNP (encoder 1+1 -> 128-128-128 -> r = 128, mean aggregation, decoder
1+128 -> 128-128 -> (mean, raw variance), variance = 0.1 + 0.9 softplus(raw)) meta-trained on
the MAML sinusoid family (A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5]) with a context size
drawn per meta-batch uniformly from {3, ..., 20} (the CNP is trained for variable context
sizes, as in the paper), 20 separate target points per task, meta-batch 16, Adam lr 1e-3, vmap
path, for ``--iterations`` meta-iterations or ``--minutes`` of wall time, whichever ends first.
Evaluation: the 1,000 fixed held-out tasks of ``sinusoid_eval_tasks`` (seed 12345, 100 query
points, the same tasks and query points as MAML/Meta-SGD in benchmarks/sinusoid.py) with
K = 5, 10, 20 context points: query MSE of the predictive mean and Gaussian NLL (per point,
nats) with 95% CIs over tasks, and the coverage of the central 50/90/95% predictive intervals
(fraction of query targets inside, mean ± 95% CI over tasks). Also writes a PNG of four tasks.

Usage:
    python benchmarks/cnp.py --out results/cnp.json --plot results/cnp_sinusoid.png   # full
    # calibrated without recalibration (measured: 10-shot 90% interval covers 90.3 ± 0.5%):
    python benchmarks/cnp.py --threads 1 --minutes 9 --iterations 45000 --cosine --min-variance 0.0001
    python benchmarks/cnp.py --quick
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import markdown_table, parser, setup_threads, write_out  # noqa: E402
from metafit import SinusoidTasks, Trainer, evaluate, generator, seeded, sinusoid_eval_tasks, summarize  # noqa: E402
from metafit.algorithms import CNP, calibration, recalibrate  # noqa: E402
from metafit.algorithms.cnp import plot_regression_tasks  # noqa: E402
from metafit.models import CNPRegressor  # noqa: E402

K_TRAIN = (3, 20)
K_TEST = (5, 10, 20)
LEVELS = (0.5, 0.9, 0.95)


def train(iterations: int, minutes: float, seed: int, bound: str = "variance", min_variance: float = 0.1,
          cosine: bool = False) -> tuple[CNP, CNPRegressor, Trainer, dict]:
    model = seeded(seed, lambda: CNPRegressor(1, 1, bound=bound, min_variance=min_variance))
    algo = CNP()
    trainer = Trainer(algo, model, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), path="vmap")
    if cosine:  # anneal the outer lr to 0 over --iterations (a quieter final model than constant lr)
        trainer.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(trainer.optimizer, T_max=iterations)
    g_k = generator(seed + 1)
    samplers = {k: SinusoidTasks(k_shot=k, n_query=20, tasks_per_batch=16, generator=generator(seed + 100 + k))
                for k in range(K_TRAIN[0], K_TRAIN[1] + 1)}
    t0 = time.perf_counter()
    log = []
    it = 0
    while it < iterations and time.perf_counter() - t0 < minutes * 60:
        k = int(torch.randint(K_TRAIN[0], K_TRAIN[1] + 1, (1,), generator=g_k))
        r = trainer.step(samplers[k].sample_batch())
        it += 1
        if it % 500 == 0 or it == 1:
            log.append((it, r.metrics["loss"], r.metrics["mse"]))
    return algo, model, trainer, {"iterations": it, "train_seconds": time.perf_counter() - t0, "log": log}


def omniglot_rows(args) -> list[dict]:  # noqa: ANN001
    """CNP classifier (Conv-4 features, per-class mean aggregation) on Omniglot 5-way episodes.

    Trained on the Vinyals split with rotations, meta-batch 8 tasks of 5-way episodes whose shot
    alternates between 1 and 5 (one model for both test settings), 15 queries per class, Adam 1e-3,
    for ``--omniglot-minutes`` of training; evaluated on 600 fixed test episodes per setting
    (the same episodes as benchmarks/omniglot.py).
    """
    from metafit.data.sampling import EpisodeSampler  # noqa: PLC0415
    from metafit.data.omniglot import load_omniglot, omniglot_split  # noqa: PLC0415
    from metafit.models import CNPClassifier  # noqa: PLC0415
    from _common import data_root  # noqa: PLC0415
    from omniglot import PAPER, eval_tasks  # noqa: PLC0415

    data = load_omniglot(data_root(args.data_root))
    train_set = omniglot_split(data, "trainval", protocol="vinyals", rotations=True)
    test_set = omniglot_split(data, "test", protocol="vinyals", rotations=False)
    model = seeded(args.seed, lambda: CNPClassifier(max_way=20).to(memory_format=torch.channels_last))
    algo = CNP("cross_entropy")
    trainer = Trainer(algo, model, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), path="loop")
    samplers = [iter(EpisodeSampler(train_set, 5, k, 15, tasks_per_batch=8, generator=generator(args.seed + 10 + k)))
                for k in (1, 5)]
    t0, it = time.perf_counter(), 0
    while time.perf_counter() - t0 < args.omniglot_minutes * 60:
        trainer.step(next(samplers[it % 2]))
        it += 1
    train_s = time.perf_counter() - t0
    out, rows = [], []
    n_ep = 100 if args.quick else 600
    for k in (1, 5):
        r = evaluate(algo, model, trainer.meta_params, eval_tasks(test_set, 5, k, n_ep))
        a = r.metrics["accuracy"]
        out.append({"n_way": 5, "k_shot": k, "accuracy": 100 * a.mean, "ci95": 100 * a.ci95, "episodes": a.n,
                    "iterations": it, "train_minutes": train_s / 60})
        rows.append([f"5-way {k}-shot", f"{100 * a.mean:.2f} ± {100 * a.ci95:.2f}", a.n, PAPER.get(("cnp", 5, k), "–"),
                     it, f"{train_s / 60:.1f}"])
    print("\n## CNP on Omniglot (Vinyals split), accuracy % ± 95% CI\n")
    print(markdown_table(["setting", "CNP", "episodes", "paper", "iterations", "train min"], rows))
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=100_000)
    p.add_argument("--minutes", type=float, default=10.0, help="training wall-time cap")
    p.add_argument("--eval-tasks", type=int, default=1000)
    p.add_argument("--plot", type=Path, default=None, help="PNG of four held-out tasks")
    p.add_argument("--bound", choices=["variance", "scale"], default="variance",
                   help="0.1 + 0.9 softplus bounds the variance (default) or the sd (DeepMind notebook)")
    p.add_argument("--min-variance", type=float, default=0.1,
                   help="lower bound of the bounded variance/sd (0.1 in the paper's code; smaller lets a noise-free fit be calibrated)")
    p.add_argument("--cosine", action="store_true", help="cosine-anneal the outer lr to 0 over --iterations")
    p.add_argument("--val-tasks", type=int, default=500,
                   help="validation tasks (seed 777, disjoint from the test seed) for post-hoc variance recalibration")
    p.add_argument("--omniglot-minutes", type=float, default=0.0,
                   help="also train a CNP classifier on Omniglot 5-way episodes (1- and 5-shot) for this many minutes")
    p.add_argument("--data-root", default=None, help="folder holding omniglot/ (default $METAFIT_DATA)")
    args = p.parse_args()
    setup_threads(args.threads, args.keep_freed_memory)
    if args.quick:
        args.iterations, args.minutes, args.eval_tasks, args.val_tasks = 300, 0.5, 200, 50
        args.omniglot_minutes = min(args.omniglot_minutes, 0.2)
    t_all = time.perf_counter()
    algo, model, trainer, info = train(args.iterations, args.minutes, args.seed, args.bound, args.min_variance, args.cosine)
    assert trainer.meta_params is not None
    mp = trainer.meta_params
    results: dict = {"bound": args.bound, "min_variance": args.min_variance, "cosine": args.cosine, "train": info,
                     "eval": {}, "calibration": {}, "recalibrated": {}}
    # Post-hoc recalibration of the variance on validation tasks (never the test tasks): one
    # scale per method, fitted on a mix of the test context sizes.
    val = [t for k in K_TEST for t in sinusoid_eval_tasks(args.val_tasks, k, 100, seed=777 + k)]
    fitted = {m: recalibrate(algo, model, mp, val, method=m) for m in ("nll", "quantile")}
    results["variance_scale"] = {m: a.variance_scale for m, a in fitted.items()}
    rows, cal_rows = [], []
    for k in K_TEST:
        tasks = sinusoid_eval_tasks(args.eval_tasks, k, 100, seed=12345)
        r = evaluate(algo, model, mp, tasks)
        results["eval"][k] = {m: {"mean": s.mean, "ci95": s.ci95} for m, s in r.metrics.items()}
        rows.append([k, f"{r.metrics['mse'].mean:.3f} ± {r.metrics['mse'].ci95:.3f}",
                     f"{r.metrics['nll'].mean:.3f} ± {r.metrics['nll'].ci95:.3f}", r.n_tasks])
        for label, a in (("raw", algo), *((f"recalibrated ({m}, s={f.variance_scale:.3g})", f) for m, f in fitted.items())):
            cov = calibration(a, model, mp, tasks, levels=LEVELS)
            cs = {lv: summarize(v) for lv, v in cov.items()}
            summary = {str(lv): {"mean": s.mean, "ci95": s.ci95} for lv, s in cs.items()}
            if label == "raw":
                results["calibration"][k] = summary
            else:
                nll = evaluate(a, model, mp, tasks).metrics["nll"]
                summary["nll"] = {"mean": nll.mean, "ci95": nll.ci95}
                results["recalibrated"].setdefault(label.split(",")[0].split("(")[1], {})[k] = summary
                label += f", NLL {nll.mean:.3f}"
            cal_rows.append([k, label] + [f"{100 * cs[lv].mean:.1f} ± {100 * cs[lv].ci95:.1f}" for lv in LEVELS])
    if args.plot is not None:
        tasks = sinusoid_eval_tasks(4, 10, 100, seed=12345)
        amp_phase = []
        g = torch.Generator().manual_seed(12345)  # re-derive the amplitudes and phases (same stream)
        amp = 0.1 + 4.9 * torch.rand((4, 1, 1), generator=g)
        phase = torch.pi * torch.rand((4, 1, 1), generator=g)
        for i in range(4):
            a, ph = amp[i, 0, 0], phase[i, 0, 0]
            amp_phase.append(lambda x, a=a, ph=ph: a * torch.sin(x - ph))
        ctx = [(tasks[i].support_x[: 5 + 5 * (i % 2)], tasks[i].support_y[: 5 + 5 * (i % 2)]) for i in range(4)]
        plot_regression_tasks(algo, model, mp, ctx, amp_phase, args.plot, level=0.9)
        results["plot"] = str(args.plot)
    results["total_seconds"] = time.perf_counter() - t_all
    print(f"CNP sinusoid: {info['iterations']} meta-iterations in {info['train_seconds']:.0f} s "
          f"(threads {torch.get_num_threads()}), eval on {args.eval_tasks} held-out tasks\n")
    print(markdown_table(["K (context)", "MSE ± 95% CI", "NLL (nats/point) ± 95% CI", "tasks"], rows))
    print()
    print(markdown_table(["K", "variance", "coverage 50% (%)", "coverage 90% (%)", "coverage 95% (%)"], cal_rows))
    if args.omniglot_minutes > 0:
        results["omniglot"] = omniglot_rows(args)
    print(f"\ntotal {results['total_seconds']:.0f} s")
    write_out(args.out, {"benchmark": "cnp_sinusoid", "quick": args.quick, **results})


if __name__ == "__main__":
    main()
