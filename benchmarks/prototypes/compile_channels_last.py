"""Prototype: the compile path with channels-last weights against the compile path and the eager loop.

Usage: python benchmarks/prototypes/compile_channels_last.py TASKS  (docs/results.md: 8 tasks, 2 threads).
"""
import sys, time, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import speed
from metafit import MAML, meta_backward
T = int(sys.argv[1]) if len(sys.argv) > 1 else 8
torch.set_num_threads(2)
speed.SETUPS["omniglot5"]["tasks"] = T
cfg = speed.SETUPS["omniglot5"]
model, batch, _ = speed.build("omniglot5", torch.float32)
algo = MAML(inner_lr=cfg["lr"], inner_steps=cfg["steps"])
mp = {"model": dict(model.named_parameters())}
mp_cl = {"model": {k: v.detach().clone(memory_format=torch.channels_last if v.dim() == 4 else torch.preserve_format).requires_grad_() for k, v in model.named_parameters()}}
b_cl = type(batch)(batch.support_x, batch.support_y, batch.query_x, batch.query_y, n_way=batch.n_way)
vs = {
  "loop": lambda: meta_backward(algo, model, mp, {}, batch, path="loop"),
  "compile": lambda: meta_backward(algo, model, mp, {}, batch, path="compile"),
  "compile_cl": lambda: meta_backward(algo, model, mp_cl, {}, batch, path="compile"),
}
for n, f in vs.items():
    t0 = time.perf_counter(); f(); print(n, "first", round(time.perf_counter() - t0, 1), flush=True)
times = {n: [] for n in vs}
for r in range(4):
    for n, f in vs.items():
        for d in (mp, mp_cl):
            for v in d["model"].values(): v.grad = None
        t0 = time.perf_counter(); f(); times[n].append(time.perf_counter() - t0)
for n, v in times.items():
    print(n, [round(x, 3) for x in v], "median ratio vs loop", round(sorted(a / b for a, b in zip(v, times["loop"]))[2], 3))
