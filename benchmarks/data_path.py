"""Speed of the data path: sampling + collating an episode from a cached image folder, against a
ProtoNet training step on it.

An image folder (``--classes`` classes x ``--per-class`` RGB JPEGs of mixed sizes, generated once
into a temporary folder) is loaded with :func:`metafit.data.sources.load_image_folder_dataset`
(84x84 RGB, the mini-ImageNet convention): the first load decodes and writes the memory-mapped
cache, the second reads it. Then, interleaved over ``--rounds`` rounds: drawing one 5-way 5-shot
15-query episode (:class:`metafit.data.sampling.EpisodeSampler`: index draws, one gather of the
support and one of the query images) and one ProtoNet training step on it
(:class:`metafit.Trainer`, fused Conv-4 with 3 input channels, channels-last, loop path). The
figure is the median sampling time as a share of the median step time.

Usage:
    python benchmarks/data_path.py --threads 2 --out results/data_path.json
    python benchmarks/data_path.py --quick
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import markdown_table, parser, setup_threads, write_out  # noqa: E402

from metafit import ProtoNet, Trainer, generator, seeded  # noqa: E402
from metafit.data.sampling import EpisodeSampler  # noqa: E402
from metafit.data.sources import load_image_folder_dataset  # noqa: E402
from metafit.models import Conv4  # noqa: E402


def _write_folder(root: Path, classes: int, per_class: int) -> None:
    from PIL import Image

    g = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class{c:03d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            side = int(g.integers(70, 130))
            img = g.integers(0, 255, (side, side, 3), dtype=np.uint8)
            Image.fromarray(img, "RGB").save(d / f"{i}.jpg", quality=90)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--rounds", type=int, default=50)
    args = p.parse_args()
    setup_threads(args.threads, args.keep_freed_memory)
    if args.quick:
        args.classes, args.per_class, args.rounds = 20, 20, 5
    tmp = Path(tempfile.mkdtemp(prefix="metafit-datapath-"))
    _write_folder(tmp / "images", args.classes, args.per_class)
    t0 = time.perf_counter()
    ds = load_image_folder_dataset(tmp / "images", image_size=84, channels=3, cache_dir=tmp / "cache")
    first_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds = load_image_folder_dataset(tmp / "images", image_size=84, channels=3, cache_dir=tmp / "cache")
    cached_load = time.perf_counter() - t0
    train = ds.split("train")
    sampler = EpisodeSampler(train, 5, 5, 15, tasks_per_batch=1, generator=generator(0))
    model = seeded(0, lambda: Conv4(3, None, image_size=84)).to(memory_format=torch.channels_last)
    trainer = Trainer(ProtoNet(), model, path="loop")
    for _ in range(3):  # warm-up
        trainer.step(sampler.sample_batch())
    sample_s, step_s = [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        batch = sampler.sample_batch()
        sample_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        trainer.step(batch)
        step_s.append(time.perf_counter() - t0)
    ms, mt = statistics.median(sample_s), statistics.median(step_s)
    share = ms / mt
    rows = [
        ["first load (decode + cache)", f"{first_load:.2f} s"],
        ["cached load (memory map)", f"{cached_load:.3f} s"],
        ["episode sampling + collation (median)", f"{1000 * ms:.2f} ms"],
        ["ProtoNet training step (median)", f"{1000 * mt:.1f} ms"],
        ["sampling / step", f"{100 * share:.2f}%"],
    ]
    print(f"## Data path: {args.classes} classes x {args.per_class} images, 84x84 RGB, 5-way 5-shot 15 queries\n")
    print(markdown_table(["what", "time"], rows))
    write_out(
        args.out,
        {
            "benchmark": "data_path",
            "quick": args.quick,
            "classes": args.classes,
            "per_class": args.per_class,
            "rounds": args.rounds,
            "first_load_s": first_load,
            "cached_load_s": cached_load,
            "sample_median_s": ms,
            "step_median_s": mt,
            "sample_share_of_step": share,
            "sample_s": sample_s,
            "step_s": step_s,
        },
    )


if __name__ == "__main__":
    main()
