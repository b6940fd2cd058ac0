"""Data-parallel meta-training throughput: meta-iterations per second with 1 and N processes.

Workloads (second-order MAML, one inner step, Adam outer optimiser):

* ``maml_sinusoid``: the 1-40-40-1 MLP of MAML §5.1, meta-batch 25 tasks, K = 10 support and
  10 query points, vmap path;
* ``maml_conv4``: the MAML Omniglot conv-4 (64 filters, stride-2 convolutions, task batch-norm)
  on synthetic Omniglot-shaped tasks (1x28x28), 5-way 1-shot, 1 query example per class (the
  MAML reference protocol), meta-batch 32 tasks, loop path.

Each configuration is started with :func:`metafit.distributed.launch` (torch's ``elastic_launch``, gloo on
loopback, spawn) and trains with the one loop, ``Trainer.fit`` with the distributed callbacks;
every process gets ``cores // nproc`` torch threads (plus, unless ``--quick``, a reference run of
one process with one thread), runs ``--warmup`` untimed steps, then
``--steps`` timed steps between two barriers. Scaling efficiency = (it/s at N) / (N * it/s at 1 process with all cores); the second
efficiency column divides by N times the 1-process 1-thread rate instead.
The time to sample one full meta-batch (duplicated on every rank by design) is reported too.

Usage:
    python benchmarks/distributed.py --out results/distributed.json      # full (a few minutes)
    python benchmarks/distributed.py --quick                             # smoke, < 1 minute
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from _common import markdown_table, parser, write_out  # noqa: E402

from metafit import MAML, SinusoidTasks, Trainer, generator, seeded  # noqa: E402
from metafit.data.task import TaskBatch  # noqa: E402
from metafit.distributed import check_in_sync, distributed_callbacks, launch  # noqa: E402
from metafit.engine import Callback  # noqa: E402
from metafit.models import MLP, Conv4  # noqa: E402


class OmniglotShaped:
    """Seeded synthetic ``n_way``-way ``k_shot``-shot tasks of 1x28x28 images (balanced labels)."""

    def __init__(
        self, g: torch.Generator, tasks: int, n_way: int = 5, k_shot: int = 1, n_query: int = 1, side: int = 28
    ) -> None:
        self.g, self.tasks, self.n, self.k, self.q, self.side = g, tasks, n_way, k_shot, n_query, side

    def __iter__(self):  # type: ignore[no-untyped-def]
        t, n, k, q, s = self.tasks, self.n, self.k, self.q, self.side
        sy = torch.arange(n).repeat_interleave(k).expand(t, -1).contiguous()
        qy = torch.arange(n).repeat_interleave(q).expand(t, -1).contiguous()
        while True:
            sx = torch.rand(t, n * k, 1, s, s, generator=self.g)
            qx = torch.rand(t, n * q, 1, s, s, generator=self.g)
            yield TaskBatch(sx, sy, qx, qy, n_way=n)


def build(workload: str, seed: int, small: bool) -> tuple[Trainer, Any]:
    g = generator(seed + 1)
    if workload == "maml_sinusoid":
        model = seeded(seed, lambda: MLP(1, (40, 40), 1))
        algo = MAML(inner_lr=0.01, inner_steps=1, first_order=False, criterion="mse")
        sampler: Any = SinusoidTasks(k_shot=10, n_query=10, tasks_per_batch=25, generator=g)
        path = "vmap"
    elif workload == "maml_conv4":
        width = 16 if small else 64
        model = seeded(seed, lambda: Conv4(1, 5, width=width, image_size=28, downsample="stride"))
        algo = MAML(inner_lr=0.4, inner_steps=1, first_order=False)
        sampler = OmniglotShaped(g, tasks=8 if small else 32)
        path = "loop"
    else:
        raise ValueError(workload)
    trainer = Trainer(
        algo, model, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), path=path, callbacks=distributed_callbacks()
    )
    return trainer, sampler


class _Clock(Callback):
    """Times the steps after ``warmup`` between two barriers (the only thing this benchmark adds)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.seconds = warmup, None, 0.0

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def on_step_end(self, trainer: Trainer, result: Any) -> None:
        if trainer.step_count == self.warmup:
            self._barrier()
            self.t0 = time.perf_counter()

    def on_fit_end(self, trainer: Trainer) -> None:
        self._barrier()
        self.seconds = time.perf_counter() - self.t0


def _rank_run(workload: str, steps: int, warmup: int, seed: int, small: bool) -> dict[str, Any]:
    trainer, sampler = build(workload, seed, small)
    t0 = time.perf_counter()
    for _ in range(3):
        next(iter(sampler))
    sample_s = (time.perf_counter() - t0) / 3
    clock = _Clock(warmup)
    trainer.fit(sampler, warmup + steps, callbacks=[clock])
    return {
        "seconds": clock.seconds,
        "sample_s": sample_s,
        "threads": torch.get_num_threads(),
        "sync": check_in_sync(trainer.parameters),
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--nprocs", default="1,2", help="comma-separated process counts (first must be 1)")
    p.add_argument("--workloads", default="maml_sinusoid,maml_conv4")
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration")
    p.add_argument(
        "--one-thread-baseline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time 1 process with 1 thread (default: on, off with --quick)",
    )
    args = p.parse_args()
    cores = os.cpu_count() or 1
    nprocs = [int(x) for x in args.nprocs.split(",")]
    if nprocs[0] != 1:
        raise SystemExit("--nprocs must start with 1 (the efficiency baseline)")
    plan = {  # (timed steps, warm-up steps) full / quick
        "maml_sinusoid": (args.steps or 40, 3) if not args.quick else (args.steps or 10, 2),
        "maml_conv4": (args.steps or 3, 1) if not args.quick else (args.steps or 2, 1),
    }
    one_thread = (not args.quick) if args.one_thread_baseline is None else args.one_thread_baseline
    rows, records = [], []
    load_before = os.getloadavg()
    for workload in args.workloads.split(","):
        steps, warmup = plan[workload]
        base = base1 = None
        configs = [(n, args.threads or max(1, cores // n)) for n in nprocs]
        if one_thread and configs[0][1] != 1:
            configs.insert(1, (1, 1))
        for n, threads in configs:
            out = launch(_rank_run, n, workload, steps, warmup, args.seed, args.quick, pg_timeout=600, threads=threads)
            secs = max(o["seconds"] for o in out)
            its = steps / secs
            if n == 1:
                base = its if base is None else base
                base1 = its if threads == 1 else base1
            eff = its / (n * base) if base else float("nan")
            eff1 = its / (n * base1) if base1 else None
            rec = {
                "workload": workload,
                "nproc": n,
                "threads_per_proc": threads,
                "steps": steps,
                "warmup": warmup,
                "seconds": secs,
                "it_per_s": its,
                "efficiency": eff,
                "efficiency_vs_1proc_1thread": eff1,
                "sample_ms": 1000 * out[0]["sample_s"],
                "max_param_diff_across_ranks": max(o["sync"] for o in out),
                "small": args.quick and workload == "maml_conv4",
            }
            records.append(rec)
            rows.append(
                [
                    workload + (" (small)" if rec["small"] else ""),
                    n,
                    threads,
                    steps,
                    f"{its:.3g}",
                    f"{eff:.2f}",
                    "-" if eff1 is None else f"{eff1:.2f}",
                    f"{rec['sample_ms']:.2f}",
                ]
            )
            print(f"{workload} nproc={n}: {its:.3g} it/s, efficiency {eff:.2f}", file=sys.stderr, flush=True)
    table = markdown_table(
        [
            "workload",
            "nproc",
            "threads/proc",
            "timed steps",
            "it/s",
            "efficiency",
            "eff. vs 1 proc x 1 thread",
            "sample ms/batch",
        ],
        rows,
    )
    print(table)
    write_out(
        args.out,
        {
            "benchmark": "distributed",
            "quick": args.quick,
            "cores": cores,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "results": records,
            "table": table,
        },
    )


if __name__ == "__main__":
    main()
