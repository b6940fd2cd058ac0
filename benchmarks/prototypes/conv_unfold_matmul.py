"""Prototype (negative result): conv2d rewritten as unfold + matmul by a TorchFunctionMode.

Compares the meta-gradients (float64) and times (float32) of loop, vmap, and both under the
mode, for speed.py's omniglot5 net with TaskBatchNorm. Usage: python benchmarks/prototypes/conv_unfold_matmul.py omniglot5 TASKS THREADS
(docs/results.md: 2 tasks, 1 thread -> vmap with the mode 1.7x slower than eager vmap).
"""
import sys, time, torch, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from torch.overrides import TorchFunctionMode
import speed
speed.TASKNORM = True
from metafit import MAML, meta_backward
from metafit.engine import meta_gradients

def conv2d_mm(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    Cout, Cin, kh, kw = w.shape
    N, C, H, W = x.shape
    s = (stride, stride) if isinstance(stride, int) else tuple(stride)
    p = (padding, padding) if isinstance(padding, int) else tuple(padding)
    d = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
    Ho = (H + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1
    Wo = (W + 2 * p[1] - d[1] * (kw - 1) - 1) // s[1] + 1
    cols = F.unfold(x, (kh, kw), dilation=d, padding=p, stride=s)  # (N, C*kh*kw, L)
    out = cols.transpose(1, 2).reshape(N * Ho * Wo, C * kh * kw) @ w.reshape(Cout, -1).t()
    out = out.view(N, Ho, Wo, Cout).permute(0, 3, 1, 2)
    if b is not None:
        out = out + b.view(1, -1, 1, 1)
    return out

class ConvMM(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv2d and (len(args) < 7 or args[6] == 1) and not isinstance(args[4] if len(args) > 4 else 0, str):
            return conv2d_mm(*args, **kwargs)
        return func(*args, **kwargs)

setup = sys.argv[1] if len(sys.argv) > 1 else "omniglot5"
T = int(sys.argv[2]) if len(sys.argv) > 2 else 8
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
speed.SETUPS[setup]["tasks"] = T
cfg = speed.SETUPS[setup]
def variants(model):
    algo = MAML(inner_lr=cfg["lr"], inner_steps=cfg["steps"])
    mp = {"model": dict(model.named_parameters())}
    def run(path, mode):
        def f(b):
            if mode:
                with ConvMM():
                    meta_backward(algo, model, mp, {}, b, path=path)
            else:
                meta_backward(algo, model, mp, {}, b, path=path)
        return f
    return {"loop": run("loop", False), "vmap": run("vmap", False), "vmap_mm": run("vmap", True), "loop_mm": run("loop", True)}

model, batch, _ = speed.build(setup, torch.float64)
vs = variants(model)
ref = None
for name, f in vs.items():
    model.zero_grad(set_to_none=True); f(batch)
    g = [p.grad.clone() for p in model.parameters()]
    if ref is None: ref = g
    print(name, "max abs diff vs loop", max(float((a - r).abs().max()) for a, r in zip(g, ref)), flush=True)
model, batch, _ = speed.build(setup, torch.float32)
vs = variants(model)
times = {k: [] for k in vs}
for name, f in vs.items():
    f(batch)
for r in range(3):
    for name, f in vs.items():
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter(); f(batch); times[name].append(time.perf_counter() - t0)
for k, v in times.items():
    v.sort(); print(k, "median s", round(v[len(v)//2], 3), "ratio vs loop", round(v[len(v)//2] / sorted(times["loop"])[1], 2), flush=True)
