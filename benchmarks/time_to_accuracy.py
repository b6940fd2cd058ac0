"""Minutes of training until held-out Omniglot accuracy first reaches 96%, 97% and 98%, per seed.

Each run is ``metafit train CONFIG --seed S`` with a config that monitors fixed test episodes
every ``train.monitor_every_seconds`` of training time (``configs/omniglot_protonet_3min.toml``:
600 episodes of 5-way 1-shot every 60 s; the monitor's own time is not counted, data decoding
and model construction are not counted either) and ``metafit eval RUN`` of the final model on
the config's evaluation episodes. The curve is read from the run's ``metrics.jsonl`` (rows of
kind ``"monitor"``); the final model's score on the same monitor episodes is its last point.
This script adds only the thresholds and the table.

Usage:
    python benchmarks/time_to_accuracy.py --seeds 0 1 2 --out results/tta_protonet_3min.json
    python benchmarks/time_to_accuracy.py --quick
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import data_root, markdown_table, parser, record_process_settings, write_out  # noqa: E402

from metafit.app.config import apply_overrides, load_config  # noqa: E402
from metafit.app.runs import evaluate_checkpoint, read_metrics, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = (96.0, 97.0, 98.0)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "omniglot_protonet_3min.toml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--data-root", default=None, help="folder holding omniglot/ (default $METAFIT_DATA)")
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config overrides for every run"
    )
    p.add_argument(
        "--run-root", type=Path, default=None, help="keep the run folders here (default: a temporary folder)"
    )
    args = p.parse_args()
    sets = [f"data.data_root={data_root(args.data_root)}", *args.set]
    if args.threads:
        sets.append(f"train.num_threads={args.threads}")
    if not args.keep_freed_memory:
        sets.append("train.keep_freed_memory=false")
    if args.quick:
        sets += [
            "train.max_minutes=0.3",
            "train.monitor_every_seconds=6",
            "data.monitor_tasks=100",
            "data.eval_tasks=100",
        ]
    root = args.run_root or Path(tempfile.mkdtemp(prefix="metafit-tta-"))
    rows, records = [], []
    for seed in args.seeds:
        config = apply_overrides(load_config(args.config), [*sets, f"train.seed={seed}"])
        record_process_settings(config)
        run_dir = root / f"{args.config.stem}-seed{seed}"
        t0 = time.perf_counter()
        res = train(config, run_dir, force=True, progress=False)
        wall = time.perf_counter() - t0
        curve = [
            (r["train_seconds"] / 60, 100 * r["accuracy"], 100 * r["accuracy_ci95"])
            for r in read_metrics(run_dir)
            if r.get("kind") == "monitor"
        ]
        first = {th: next((m for m, a, _ in curve if a >= th), None) for th in THRESHOLDS}
        final = evaluate_checkpoint(run_dir)["results"][0]
        acc = final["metrics"]["accuracy"]
        records.append(
            {
                "seed": seed,
                "config": str(args.config),
                "curve": curve,
                "first_minutes": first,
                "final": {"accuracy": 100 * acc["mean"], "ci95": 100 * acc["ci95"], "episodes": final["episodes"]},
                "iterations": res.step,
                "train_minutes": res.train_seconds / 60,
                "stop_reason": res.stop_reason,
                "wall_minutes": wall / 60,
                "run_dir": str(run_dir),
            }
        )
        budget = config.train.max_minutes
        rows.append(
            [seed]
            + [f"{first[t]:.2f}" if first[t] is not None else f"> {budget:g}" for t in THRESHOLDS]
            + [
                f"{max((a for _, a, _ in curve), default=float('nan')):.2f}",
                f"{100 * acc['mean']:.2f} ± {100 * acc['ci95']:.2f} ({final['episodes']})",
                res.step,
                f"{res.train_seconds / 60:.2f}",
            ]
        )
    print(f"## Training minutes to held-out accuracy ({args.config.name})\n")
    print(
        markdown_table(
            ["seed", "96%", "97%", "98%", "best monitored %", "final model (episodes)", "iterations", "train min"], rows
        )
    )
    write_out(args.out, {"benchmark": "time_to_accuracy", "quick": args.quick, "rows": records})


if __name__ == "__main__":
    main()
