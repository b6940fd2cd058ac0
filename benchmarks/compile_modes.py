"""Eager vmap against the compiled vmap path, with and without CUDA graphs.

For one setup of ``speed.py`` (``TaskBatchNorm`` in the conv nets, so vmap is exact second
order) this times, in float32 with TF32 off (so float32 gradients are comparable):

* ``vmap``: the engine's eager vmap path;
* ``vmap_compile``: the engine's ``"vmap_compile"`` path (``torch.compile``, default mode);
* ``vmap_compile_cudagraphs`` (CUDA only): the same function compiled with
  ``mode="reduce-overhead"`` (CUDA graphs).

Each variant's first call (compilation included) is recorded; then the variants run
interleaved for ``--rounds`` rounds; the table gives median seconds, the paired ratio to eager
vmap and the max abs difference of the meta-gradient from eager vmap's. Results are written
after every variant, so a run cut short keeps what it measured.

Usage:
    python benchmarks/compile_modes.py --device cuda --setups omniglot5 sinusoid --out results/gpu/compile_modes.json
    python benchmarks/compile_modes.py --quick
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import speed  # noqa: E402
import torch  # noqa: E402
from _common import markdown_table, parser, setup_threads, write_out  # noqa: E402

from metafit import MAML, meta_backward  # noqa: E402
from metafit.data.task import TaskBatch  # noqa: E402
from metafit.engine import _vmapped_loss  # noqa: E402


def variants(setup: str, model: torch.nn.Module, device: torch.device) -> dict[str, Callable[[TaskBatch], None]]:
    cfg = speed.SETUPS[setup]
    algo = MAML(
        inner_lr=cfg["lr"], inner_steps=cfg["steps"], criterion="mse" if cfg["kind"] == "mlp" else "cross_entropy"
    )
    mp = {"model": dict(model.named_parameters())}
    out: dict[str, Callable[[TaskBatch], None]] = {
        "vmap": lambda b: meta_backward(algo, model, mp, {}, b, path="vmap") and None,
        "vmap_compile": lambda b: meta_backward(algo, model, mp, {}, b, path="vmap_compile") and None,
    }
    if device.type == "cuda":
        graphed = torch.compile(lambda *a: _vmapped_loss(algo, model, *a), mode="reduce-overhead", dynamic=False)

        def run_graphed(b: TaskBatch) -> None:
            losses, _ = graphed(mp, {}, b.support_x, b.support_y, b.query_x, b.query_y, b.n_way)
            (losses.sum() / len(b)).backward()

        out["vmap_compile_cudagraphs"] = run_graphed
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(setup: str, rounds: int, device: torch.device, out: dict[str, Any], path: Path | None) -> list[list[str]]:
    speed.DEVICE, speed.TASKNORM = device, True
    model, batch, _ = speed.build(setup, torch.float32)
    vs = variants(setup, model, device)
    res: dict[str, Any] = {"setup": setup, **speed.SETUPS[setup], "variants": {}}
    out["setups"].append(res)
    ref = None
    for name, fn in vs.items():
        _sync(device)
        t0 = time.perf_counter()
        g = speed.grads_of(model, fn, batch)
        _sync(device)
        first = time.perf_counter() - t0
        ref = g if ref is None else ref
        res["variants"][name] = {
            "first_call_s": first,
            "grad_max_abs_diff_vs_vmap": max(float((a - r).abs().max()) for a, r in zip(g, ref)),
        }
        write_out(path, out)
    times: dict[str, list[float]] = {n: [] for n in vs}
    for name in vs:  # one more warm call (CUDA graphs record on their second and third calls)
        speed.grads_of(model, vs[name], batch)
    for r in range(rounds):
        names = list(vs)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            model.zero_grad(set_to_none=True)
            _sync(device)
            t0 = time.perf_counter()
            vs[name](batch)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    rows = []
    for name in vs:
        v = res["variants"][name]
        ratios = [t / e for t, e in zip(times[name], times["vmap"])]
        v.update(
            median_s=statistics.median(times[name]),
            ratio_median=statistics.median(ratios),
            ratio_min=min(ratios),
            ratio_max=max(ratios),
        )
        rows.append(
            [
                setup,
                name,
                f"{v['median_s']:.4f}",
                f"{v['ratio_median']:.2f} [{v['ratio_min']:.2f}, {v['ratio_max']:.2f}]",
                f"{v['first_call_s']:.1f}",
                f"{v['grad_max_abs_diff_vs_vmap']:.1e}",
            ]
        )
    write_out(path, out)
    return rows


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--setups", nargs="+", default=["sinusoid", "omniglot5"], choices=["sinusoid", "omniglot5", "omniglot20"]
    )
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args()
    setup_threads(args.threads, args.keep_freed_memory)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    if args.quick:  # a smoke test: the sinusoid MLP only (compiling a conv net takes minutes on a CPU)
        args.setups, args.rounds = ["sinusoid"], 2
    out: dict[str, Any] = {
        "benchmark": "compile_modes",
        "device": str(device),
        "quick": args.quick,
        "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "setups": [],
    }
    rows = []
    for s in args.setups:
        rows += bench(s, args.rounds, device, out, args.out)
        print(f"{s} done", flush=True)
    print(f"## Eager vmap vs compiled vmap on {args.device} (float32, TF32 off; paired ratio vs eager vmap)\n")
    print(
        markdown_table(
            ["setup", "variant", "median s", "ratio vs vmap [min, max]", "first call s", "grad diff vs vmap"], rows
        )
    )


if __name__ == "__main__":
    main()
