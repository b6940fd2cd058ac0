"""Prototype: torch.profiler table of one conv-4 second-order MAML meta-iteration (8 tasks).

Usage: python benchmarks/prototypes/profile_maml_conv.py compile  (or loop / vmap); inductor's
per-kernel profiling is switched on. docs/results.md quotes the compile-path table.
"""
import sys, time, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import speed
from metafit import MAML, meta_backward
torch.set_num_threads(2)
speed.SETUPS["omniglot5"]["tasks"] = 8
cfg = speed.SETUPS["omniglot5"]
model, batch, _ = speed.build("omniglot5", torch.float32)
algo = MAML(inner_lr=cfg["lr"], inner_steps=cfg["steps"])
mp = {"model": dict(model.named_parameters())}
path = sys.argv[1]
import torch._inductor.config as ic
ic.cpp.enable_kernel_profile = True
f = lambda: meta_backward(algo, model, mp, {}, batch, path=path)
f(); f()
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as prof:
    f()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
