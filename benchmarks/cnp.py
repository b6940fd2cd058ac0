"""Conditional Neural Process (Garnelo et al., ICML 2018) on sinusoid regression: MSE, NLL, calibration.

The run is ``metafit train configs/sinusoid_cnp.toml`` (encoder 128-128-128 -> r = 128, mean
aggregation, decoder 128-128 -> (mean, variance), context size drawn per meta-batch from 3..20,
20 targets, meta-batch 16, Adam 1e-3 with a cosine over 45,000 iterations, at most 9 minutes),
then ``metafit eval RUN --k-shot 5 10 20`` (the 1,000 fixed held-out tasks of MAML/Meta-SGD, 100
query points: MSE, Gaussian NLL per point and the coverage of the central 50/90/95% predictive
intervals), and the same with ``--recalibrate nll`` and ``--recalibrate quantile`` (the variance
scale fitted on validation tasks, never the test tasks). With ``--omniglot``, also
``configs/omniglot_cnp.toml`` evaluated at 5-way 1- and 5-shot. This script adds only the tables
and an optional PNG of four held-out tasks.

Usage:
    python benchmarks/cnp.py --out results/cnp.json --plot results/cnp_sinusoid.png
    python benchmarks/cnp.py --quick
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import data_root, markdown_table, parser, record_process_settings, write_out  # noqa: E402

from metafit.app.config import apply_overrides, load_config  # noqa: E402
from metafit.app.runs import evaluate_checkpoint, load_trained, train  # noqa: E402
from metafit.data.sinusoid import sinusoid_eval_tasks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _fmt(m: dict, scale: float = 1.0) -> str:
    return f"{scale * m['mean']:.3f} ± {scale * m['ci95']:.3f}"


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--plot", type=Path, default=None, help="PNG of four held-out tasks")
    p.add_argument("--omniglot", action="store_true", help="also train and evaluate configs/omniglot_cnp.toml")
    p.add_argument("--data-root", default=None)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--run-root", type=Path, default=None)
    args = p.parse_args()
    sets = [f"train.seed={args.seed}", *args.set]
    if args.threads:
        sets.append(f"train.num_threads={args.threads}")
    if args.quick:
        sets += ["train.steps=300", "train.max_minutes=0.5", "data.eval_tasks=200"]
    root = args.run_root or Path(tempfile.mkdtemp(prefix="metafit-cnp-"))
    config = apply_overrides(load_config(ROOT / "configs" / "sinusoid_cnp.toml"), sets)
    record_process_settings(config)
    run = root / "sinusoid-cnp"
    res = train(config, run, force=True, progress=False)
    out: dict = {
        "train": {"iterations": res.step, "train_seconds": res.train_seconds, "stop_reason": res.stop_reason},
        "eval": {},
        "recalibrated": {},
    }
    rows, cal_rows = [], []
    raw = evaluate_checkpoint(run, shots=[5, 10, 20])
    for r in raw["results"]:
        m = r["metrics"]
        out["eval"][r["k_shot"]] = m
        rows.append([r["k_shot"], _fmt(m["mse"]), _fmt(m["nll"]), r["episodes"]])
        cal_rows.append([r["k_shot"], "raw"] + [_fmt(m[f"coverage_{c}"], 100) for c in (50, 90, 95)])
    for method in ("nll", "quantile"):
        rec = evaluate_checkpoint(run, shots=[5, 10, 20], recalibrate=method)
        scale = rec["recalibration"]["variance_scale"]
        out["recalibrated"][method] = {"variance_scale": scale, **{r["k_shot"]: r["metrics"] for r in rec["results"]}}
        for r in rec["results"]:
            m = r["metrics"]
            cal_rows.append(
                [r["k_shot"], f"recalibrated ({method}, s={scale:.3g}), NLL {m['nll']['mean']:.3f}"]
                + [_fmt(m[f"coverage_{c}"], 100) for c in (50, 90, 95)]
            )
    if args.plot is not None:
        from metafit.app.plotting import plot_regression_tasks

        tr = load_trained(run)
        tasks = sinusoid_eval_tasks(4, 10, 100, seed=12345)
        g = torch.Generator().manual_seed(12345)  # the amplitudes and phases of those tasks (same stream)
        amp = 0.1 + 4.9 * torch.rand((4, 1, 1), generator=g)
        phase = torch.pi * torch.rand((4, 1, 1), generator=g)
        truths = [lambda x, a=amp[i, 0, 0], ph=phase[i, 0, 0]: a * torch.sin(x - ph) for i in range(4)]
        ctx = [(tasks[i].support_x[: 5 + 5 * (i % 2)], tasks[i].support_y[: 5 + 5 * (i % 2)]) for i in range(4)]
        plot_regression_tasks(tr.algorithm, tr.model, tr.meta_params, ctx, truths, args.plot, level=0.9)
        out["plot"] = str(args.plot)
    print(f"CNP sinusoid: {res.step} meta-iterations in {res.train_seconds:.0f} s of training ({res.stop_reason})\n")
    print(markdown_table(["K (context)", "MSE ± 95% CI", "NLL (nats/point) ± 95% CI", "tasks"], rows))
    print()
    print(markdown_table(["K", "variance", "coverage 50% (%)", "coverage 90% (%)", "coverage 95% (%)"], cal_rows))
    if args.omniglot:
        oc = apply_overrides(
            load_config(ROOT / "configs" / "omniglot_cnp.toml"),
            [
                f"data.data_root={data_root(args.data_root)}",
                *sets,
                *(["train.max_minutes=0.2", "data.eval_tasks=100"] if args.quick else []),
            ],
        )
        ores = train(oc, root / "omniglot-cnp", force=True, progress=False)
        ev = evaluate_checkpoint(root / "omniglot-cnp", shots=[1, 5])
        out["omniglot"] = [
            {
                "k_shot": r["k_shot"],
                "accuracy": 100 * r["metrics"]["accuracy"]["mean"],
                "ci95": 100 * r["metrics"]["accuracy"]["ci95"],
                "episodes": r["episodes"],
                "iterations": ores.step,
                "train_minutes": ores.train_seconds / 60,
            }
            for r in ev["results"]
        ]
        print("\n## CNP on Omniglot (Vinyals split), 5-way, accuracy % ± 95% CI\n")
        print(
            markdown_table(
                ["k_shot", "accuracy", "episodes", "iterations", "train min"],
                [
                    [
                        o["k_shot"],
                        f"{o['accuracy']:.2f} ± {o['ci95']:.2f}",
                        o["episodes"],
                        o["iterations"],
                        f"{o['train_minutes']:.1f}",
                    ]
                    for o in out["omniglot"]
                ],
            )
        )
    write_out(args.out, {"benchmark": "cnp_sinusoid", "quick": args.quick, "config": config.to_dict(), **out})


if __name__ == "__main__":
    main()
