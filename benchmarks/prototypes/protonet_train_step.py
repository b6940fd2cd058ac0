"""Prototype: median ProtoNet training-step time, fused Conv4 blocks or not, malloc tuned or not.

The CPU recipe's step (channels-last Conv-4, 30-way 1-shot, 2 queries per class, Adam, loop path)
on random binary 28x28 images, through metafit.Trainer.

Usage: python benchmarks/prototypes/protonet_train_step.py fuse|nofuse keep|default [STEPS]
(docs/results.md, "Page faults"; run each configuration in a fresh process: malloc settings and
its history are per process).
"""
import statistics
import sys
import time

import torch

from metafit import ProtoNet, Trainer, seeded
from metafit.data.task import TaskBatch
from metafit.models import Conv4
from metafit.runtime import keep_freed_memory

fuse, malloc = sys.argv[1], sys.argv[2]
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 100
if fuse not in ("fuse", "nofuse") or malloc not in ("keep", "default"):
    sys.exit(__doc__)
torch.set_num_threads(2)
if malloc == "keep":
    keep_freed_memory()
model = seeded(0, lambda: Conv4(1, None, fuse=fuse == "fuse").to(memory_format=torch.channels_last))
trainer = Trainer(ProtoNet(), model, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), path="loop")
g = torch.Generator().manual_seed(0)
n, q = 30, 2
batches = [TaskBatch((torch.rand(1, n, 1, 28, 28, generator=g) > 0.8).float(), torch.arange(n)[None],
                     (torch.rand(1, n * q, 1, 28, 28, generator=g) > 0.8).float(),
                     torch.arange(n).repeat_interleave(q)[None], n_way=n) for _ in range(8)]
times = []
for i in range(steps):
    t0 = time.perf_counter()
    trainer.step(batches[i % 8])
    times.append(time.perf_counter() - t0)
print(f"{fuse} {malloc}: median {1e3 * statistics.median(times[5:]):.1f} ms per step over {steps - 5} steps")
