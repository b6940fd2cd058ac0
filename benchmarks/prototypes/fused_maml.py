"""Prototype: conv-4 second-order MAML with the fused blocks (fx pass), eager loop and compile path.

Usage: python benchmarks/prototypes/fused_maml.py TASKS ROUNDS  (speed.py's omniglot5 setup, float32,
2 threads, freed memory kept; paired ratios to the eager loop on the unfused module).
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import speed  # noqa: E402

from metafit import MAML, meta_backward  # noqa: E402
from metafit.models import fuse_norm_relu_pool  # noqa: E402
from metafit.runtime import keep_freed_memory  # noqa: E402

tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 8
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
torch.set_num_threads(2)
keep_freed_memory()
speed.SETUPS["omniglot5"]["tasks"] = tasks
cfg = speed.SETUPS["omniglot5"]
model, batch, _ = speed.build("omniglot5", torch.float32)
fused = fuse_norm_relu_pool(model)
algo = MAML(inner_lr=cfg["lr"], inner_steps=cfg["steps"])
mp = {"model": dict(model.named_parameters())}
variants = {
    "loop": lambda: meta_backward(algo, model, mp, {}, batch, path="loop"),
    "compile": lambda: meta_backward(algo, model, mp, {}, batch, path="compile"),
    "fused_loop": lambda: meta_backward(algo, fused, mp, {}, batch, path="loop"),
    "fused_compile": lambda: meta_backward(algo, fused, mp, {}, batch, path="compile"),
}
grads = {}
for name, fn in variants.items():
    for p in model.parameters():
        p.grad = None
    t0 = time.perf_counter()
    fn()
    grads[name] = [p.grad.clone() for p in model.parameters()]
    print(name, "first call", round(time.perf_counter() - t0, 1), "s", flush=True)
scale = max(g.abs().max().item() for g in grads["loop"])
for name in variants:
    diff = max((a - b).abs().max().item() for a, b in zip(grads[name], grads["loop"]))
    print(name, f"max grad diff vs loop (float32) {diff:.1e} of {scale:.1e}")
times = {n: [] for n in variants}
for r in range(rounds):
    for name, fn in variants.items():
        for p in model.parameters():
            p.grad = None
        t0 = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - t0)
for name, ts in times.items():
    ratio = statistics.median(a / b for a, b in zip(ts, times["loop"]))
    print(f"{name}: median {statistics.median(ts):.3f} s, paired ratio to loop {ratio:.3f}")
