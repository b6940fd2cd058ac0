"""Few-shot classification on real Omniglot with the product's recipes, beside the papers' numbers.

Each row is ``metafit train CONFIG`` (a file of ``configs/``: the learner, its inner loop, the
training episodes, the budget ``train.max_minutes``) followed by ``metafit eval RUN`` at the
requested test settings on fixed test episodes of the Vinyals split (600 per setting; 15 queries
per class for 5-way and 5 for 20-way). This script adds only timing and the table.

Usage:
    python benchmarks/omniglot.py --configs configs/omniglot_protonet_30min.toml --settings 5:1 5:5 20:1 20:5 \\
        --episodes 1000 --out results/omniglot_protonet.json
    python benchmarks/omniglot.py --configs configs/omniglot_maml_5way.toml --set train.num_threads=1
    python benchmarks/omniglot.py --quick
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import data_root, markdown_table, parser, record_process_settings, write_out  # noqa: E402

from metafit.app.config import apply_overrides, load_config  # noqa: E402
from metafit.app.papers import paper_reference  # noqa: E402
from metafit.app.runs import evaluate_checkpoint, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", type=Path, default=[ROOT / "configs" / "omniglot_protonet_3min.toml"])
    p.add_argument(
        "--settings",
        nargs="+",
        default=None,
        help="test n_way:k_shot settings, e.g. 5:1 20:1 (default: each config's evaluation setting)",
    )
    p.add_argument("--episodes", type=int, default=600, help="fixed test episodes per setting")
    p.add_argument("--data-root", default=None, help="folder holding omniglot/ (default $METAFIT_DATA)")
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config overrides for every run"
    )
    p.add_argument(
        "--run-root", type=Path, default=None, help="keep the run folders here (default: a temporary folder)"
    )
    args = p.parse_args()
    sets = [f"data.data_root={data_root(args.data_root)}", f"train.seed={args.seed}", *args.set]
    if args.threads:
        sets.append(f"train.num_threads={args.threads}")
    if not args.keep_freed_memory:
        sets.append("train.keep_freed_memory=false")
    if args.quick:
        sets += ["train.max_minutes=0.15", "train.monitor_every_seconds=0"]
        args.episodes = 100
    root = args.run_root or Path(tempfile.mkdtemp(prefix="metafit-omniglot-"))
    t_all = time.perf_counter()
    rows, records = [], []
    for cfg_path in args.configs:
        config = apply_overrides(load_config(cfg_path), sets)
        record_process_settings(config)
        run_dir = root / cfg_path.stem
        res = train(config, run_dir, force=True, progress=False)
        d = config.data
        settings = args.settings or [f"{d.eval_n_way or d.n_way}:{d.eval_k_shot or d.k_shot}"]
        for setting in settings:
            n_way, k_shot = (int(v) for v in setting.split(":"))
            out = evaluate_checkpoint(
                run_dir, n_way=n_way, shots=[k_shot], n_query=15 if n_way == 5 else 5, episodes=args.episodes
            )
            r = out["results"][0]
            acc = r["metrics"]["accuracy"]
            paper = paper_reference("omniglot", config.algo.name, n_way, k_shot, "accuracy") or "-"
            records.append(
                {
                    "config": str(cfg_path.relative_to(ROOT)) if cfg_path.is_relative_to(ROOT) else str(cfg_path),
                    "learner": config.algo.name,
                    "n_way": n_way,
                    "k_shot": k_shot,
                    "accuracy": 100 * acc["mean"],
                    "ci95": 100 * acc["ci95"],
                    "episodes": r["episodes"],
                    "eval_steps": r["steps"],
                    "iterations": res.step,
                    "train_minutes": res.train_seconds / 60,
                    "stop_reason": res.stop_reason,
                    "path": res.path,
                    "run_dir": str(run_dir),
                }
            )
            rows.append(
                [
                    cfg_path.stem,
                    config.algo.name,
                    f"{n_way}-way {k_shot}-shot",
                    f"{100 * acc['mean']:.2f} ± {100 * acc['ci95']:.2f}",
                    r["episodes"],
                    paper,
                    res.step,
                    f"{res.train_seconds / 60:.1f}",
                ]
            )
    print("## Omniglot (Vinyals split, 28x28), accuracy % ± 95% CI\n")
    print(
        markdown_table(
            ["config", "learner", "test setting", "metafit", "episodes", "paper", "iterations", "train min"], rows
        )
    )
    wall = time.perf_counter() - t_all
    print(f"\nwall time {wall / 60:.1f} min")
    write_out(args.out, {"benchmark": "omniglot", "quick": args.quick, "wall_seconds": wall, "rows": records})


if __name__ == "__main__":
    main()
