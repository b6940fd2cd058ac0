"""Channels-last check: conv-4 second-order MAML (loop path) and a ProtoNet episode, default vs channels-last.

Same models, weights and data as benchmarks/speed.py (conv-4, BatchNorm2d, max-pool; MAML with 8
tasks of 5-way 1-shot 15-query, 1 inner step). Prints the max gradient difference to the plain
loop and interleaved timings (median). Not part of the --out/--quick contract: a diagnostic.

Usage:
    python benchmarks/channels_last_check.py maml      # ~3 min on 2 threads
    python benchmarks/channels_last_check.py protonet [compile]
"""
import sys, time, statistics, copy
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(2)
import speed
from metafit import MAML, ProtoNet, meta_backward

def timeit(fn, b, model_params, rounds):
    ts = []
    for _ in range(rounds):
        for p in model_params: p.grad = None
        t0 = time.perf_counter(); fn(b); ts.append(time.perf_counter() - t0)
    return ts

which = sys.argv[1]
if which == "maml":
    speed.SETUPS["omniglot5"]["tasks"] = 8
    model, batch, loss_fn = speed.build("omniglot5", torch.float32)
    algo = MAML(inner_lr=0.4, inner_steps=1, criterion="cross_entropy")
    mp = {"model": dict(model.named_parameters())}
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    mp_cl = {"model": {k: v.detach().clone().requires_grad_() for k, v in cl_model.named_parameters()}}
    batch_cl = type(batch)(batch.support_x, batch.support_y, batch.query_x, batch.query_y, n_way=batch.n_way)
    def cl_inputs(b):
        from metafit.data.task import Task
        return [Task(b.support_x[t].contiguous(memory_format=torch.channels_last), b.support_y[t],
                     b.query_x[t].contiguous(memory_format=torch.channels_last), b.query_y[t], n_way=b.n_way) for t in range(len(b))]
    tasks_cl = cl_inputs(batch)
    V = {
      "plain": speed.maml_variants("omniglot5", model, loss_fn)["plain_loop"],
      "metafit": lambda b: meta_backward(algo, model, mp, {}, b, path="loop"),
      "metafit_clw": lambda b: meta_backward(algo, model, mp_cl, {}, b, path="loop"),
      "metafit_clwx": lambda b: meta_backward(algo, model, mp_cl, {}, tasks_cl, path="loop"),
    }
    params = list(mp["model"].values()) + list(mp_cl["model"].values())
    # grad check
    for n in ("metafit", "metafit_clw", "metafit_clwx"):
        for p in params: p.grad = None
        V[n](batch)
        src = mp if n == "metafit" else mp_cl
        g = [v.grad.clone() for v in src["model"].values()]
        for p in model.parameters(): p.grad = None
        V["plain"](batch)
        ref = [p.grad for p in model.parameters()]
        print(n, "max grad diff", max(float((a - b).abs().max()) for a, b in zip(g, ref)))
    for n in V: V[n](batch)
    res = {n: [] for n in V}
    for r in range(4):
        for n in V:
            res[n] += timeit(V[n], batch, params + list(model.parameters()), 1)
    for n in V: print(n, [round(x, 3) for x in res[n]], "median", round(statistics.median(res[n]), 3))
else:
    model, batch, loss_fn = speed.build("protonet", torch.float32)
    vs = speed.proto_variants(model)
    algo = ProtoNet(distance="euclidean", joint_embedding=False)
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    mp_cl = {"model": {k: v.detach().clone().requires_grad_() for k, v in cl_model.named_parameters()}}
    V = {"plain": vs["plain_proto"], "easyfsl": vs.get("easyfsl"), "metafit": vs["metafit_protonet"],
         "metafit_cl": lambda b: meta_backward(algo, model, mp_cl, {}, b, path="loop")}
    if len(sys.argv) > 2:
        from torch.func import functional_call
        cm = torch.compile(model)
        def comp(b):
            # compiled embedding through the same params
            xs, ys, xq, yq = b.support_x[0], b.support_y[0], b.query_x[0], b.query_y[0]
            zs, zq = cm(xs), cm(xq)
            protos = torch.stack([zs[ys == c].mean(0) for c in range(5)])
            F.cross_entropy(-torch.cdist(zq, protos), yq).backward()
        V["compiled_plain"] = comp
    V = {k: v for k, v in V.items() if v is not None}
    params = list(model.parameters()) + list(mp_cl["model"].values())
    for n in V: V[n](batch); V[n](batch)
    res = {n: [] for n in V}
    for r in range(30):
        for n in V:
            res[n] += timeit(V[n], batch, params, 1)
    for n in V: print(n, "median", round(statistics.median(res[n]), 4), "ratio vs easyfsl/plain", round(statistics.median(res[n]) / statistics.median(res["plain"]), 3))
