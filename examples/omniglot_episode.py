"""Write one Omniglot episode of raw 105x105 PNGs to folders, or score `metafit predict` output.

    python examples/omniglot_episode.py write /tmp/episode --n-way 5 --k-shot 1 --n-query 5
    metafit predict runs/omni-proto --support /tmp/episode/support --query /tmp/episode/query --out /tmp/pred.csv
    python examples/omniglot_episode.py score /tmp/episode/truth.csv /tmp/pred.csv

The data root is --data-root, else $METAFIT_DATA, else ../shared/data beside the repository.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from metafit.data.omniglot import write_episode_folders


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write support/, query/ and truth.csv")
    w.add_argument("out")
    w.add_argument(
        "--data-root",
        default=os.environ.get("METAFIT_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")),
    )
    w.add_argument("--n-way", type=int, default=5)
    w.add_argument("--k-shot", type=int, default=1)
    w.add_argument("--n-query", type=int, default=5)
    w.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score", help="accuracy of a predictions CSV against truth.csv")
    s.add_argument("truth")
    s.add_argument("predictions")
    a = p.parse_args()
    if a.cmd == "write":
        info = write_episode_folders(
            a.out, root=a.data_root, n_way=a.n_way, k_shot=a.k_shot, n_query=a.n_query, seed=a.seed
        )
        sys.stdout.write(
            f"{len(info['classes'])} classes, {info['support']} support and {info['query']} query images in {a.out}\n"
        )
        return 0
    truth = {r["file"]: r["class"] for r in csv.DictReader(open(a.truth))}
    rows = list(csv.reader(open(a.predictions)))[1:]
    hits = sum(truth.get(Path(r[0]).name) == r[1] for r in rows)
    sys.stdout.write(f"accuracy {hits}/{len(rows)} = {hits / max(1, len(rows)):.4f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
