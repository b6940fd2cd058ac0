"""Prototype: inductor's decomposition table for the compile path, screened on speed.py's nets.

Variants (each a separately compiled per-task loss, inductor's caches off by the env vars below):
``default`` (inductor's full table), ``no_max_pool`` (max-pool entries removed: what the engine's
CPU backend does now), ``no_max_pool_bn`` (batch-norm forward entries removed too), against the
eager loop. Prints each variant's float32 gradient difference to the loop and interleaved paired
ratios (median and every round). Prints only; writes no JSON.

Usage (docs/results.md, "compile path without inductor's max-pool decompositions"):
    TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 \\
        python benchmarks/prototypes/compile_decompositions.py maml 16 6      # conv-4 MAML, 16 tasks, 6 rounds
    TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 \\
        python benchmarks/prototypes/compile_decompositions.py protonet 1 30  # ProtoNet episode, channels-last
"""
import functools
import statistics
import sys
import time
from pathlib import Path

import torch
from torch._inductor.compile_fx import compile_fx
from torch._inductor.decomposition import select_decomp_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import speed  # noqa: E402
from metafit import MAML, ProtoNet, meta_backward  # noqa: E402
from metafit.data.task import Task  # noqa: E402

which, n_tasks, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(2)
BN_FORWARD = {"aten._native_batch_norm_legit.no_stats", "aten._native_batch_norm_legit.default",
              "aten.native_batch_norm.default", "aten._native_batch_norm_legit_functional.default"}


def backend(drop_bn: bool):  # noqa: ANN201
    table = {op: fn for op, fn in select_decomp_table().items()
             if "max_pool" not in str(op) and not (drop_bn and str(op) in BN_FORWARD)}
    return functools.partial(compile_fx, decompositions=table)


if which == "maml":
    speed.SETUPS["omniglot5"]["tasks"] = n_tasks
    cfg = speed.SETUPS["omniglot5"]
    model, batch, _ = speed.build("omniglot5", torch.float32)
    algo = MAML(inner_lr=cfg["lr"], inner_steps=cfg["steps"])
    params = dict(model.named_parameters())
else:
    model, batch, _ = speed.build("protonet", torch.float32)
    algo = ProtoNet(distance="euclidean", joint_embedding=False)
    params = {k: v.detach().clone(memory_format=torch.channels_last if v.dim() == 4 else torch.preserve_format)
              .requires_grad_() for k, v in model.named_parameters()}
mp = {"model": params}


def compiled(**kw):  # noqa: ANN003, ANN201
    # A fresh code object per variant: dynamo caches compiled code per code object.
    src = "def task_loss(net, mp, sx, sy, qx, qy, n):\n    return algo.loss(net, mp, {}, Task(sx, sy, qx, qy, n_way=n))[0]\n"
    ns = {"algo": algo, "Task": Task}
    exec(compile(src, f"<task_loss {kw}>", "exec"), ns)  # noqa: S102
    fn = torch.compile(ns["task_loss"], dynamic=False, **kw)

    def run() -> None:
        for t in range(len(batch)):
            (fn(model, mp, batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t], batch.n_way)
             / len(batch)).backward()
    return run


variants = {
    "eager_loop": lambda: meta_backward(algo, model, mp, {}, batch, path="loop"),
    "default": compiled(),
    "no_max_pool": compiled(backend=backend(False)),
    "no_max_pool_bn": compiled(backend=backend(True)),
}
grads = {}
for name, fn in variants.items():
    for p in params.values():
        p.grad = None
    t0 = time.perf_counter()
    fn()
    print(name, "first call", round(time.perf_counter() - t0, 1), "s", flush=True)
    grads[name] = [p.grad.clone() for p in params.values()]
for name in variants:
    diff = max(float((a - b).abs().max()) for a, b in zip(grads[name], grads["eager_loop"]))
    print(name, "float32 grad diff to the loop", f"{diff:.1e}")
times = {n: [] for n in variants}
for r in range(rounds):
    for name, fn in variants.items():
        for p in params.values():
            p.grad = None
        t0 = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - t0)
for name in variants:
    ratios = [a / b for a, b in zip(times[name], times["eager_loop"])]
    print(f"{name:15s} median {statistics.median(times[name]):.4f} s, ratio vs eager loop "
          f"{statistics.median(ratios):.3f} {[round(x, 3) for x in ratios]}")
