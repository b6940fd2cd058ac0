"""Meta-iteration speed: metafit against learn2learn, higher, TorchOpt, easyfsl and a plain loop.

For each setup every variant gets the same seed, data and initial weights (one shared
``nn.Module``, BatchNorm with batch statistics as in the peers' examples). Before timing, the
meta-gradient of every variant is compared with the plain loop's (max abs and relative
difference). Then the variants run interleaved in one process, one meta-iteration each per
round with the starting position rotated, and the report gives paired ratios (variant time /
plain time in the same round: median [min, max]), the median seconds, the peak memory one call
of the variant adds (CPU: VmHWM of a forked child minus its RSS at entry; CUDA:
max_memory_allocated), on the CPU also the peak bytes of tensors one call holds at once
(``torch.profiler`` allocation events; the only memory figure for compiled variants, whose
forked children deadlock) and achieved GFLOP/s
(FLOPs counted by torch.utils.flop_counter on one iteration) against the measured fp32
matrix-multiply peak.

Peers are optional: run this script with a Python that has them (see
../shared/anchors/install.sh; metafit installed there with ``pip install --no-deps -e .``);
missing ones are reported and skipped.

Setups: ``omniglot5`` (conv-4, 5-way 1-shot, 15 queries, 32 tasks, 1 inner step, alpha 0.4,
second order), ``omniglot20`` (20-way 1-shot, 5 queries, 16 tasks, 5 inner steps, alpha 0.1),
``sinusoid`` (MLP 1-40-40-1, K = 10, 10 queries, 25 tasks, 1 step, alpha 0.01), ``protonet``
(conv-4 embedding, 5-way 1-shot, 15 queries, one episode), ``protonet84`` (the same on 84x84 RGB
mini-ImageNet-shaped episodes, 5-way 5-shot, 15 queries).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import markdown_table, parser, setup_threads, write_out  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call  # noqa: E402

from metafit import MAML, ProtoNet, meta_backward  # noqa: E402
from metafit.data.task import TaskBatch  # noqa: E402
from metafit.models import fuse_norm_relu_pool  # noqa: E402

SETUPS: dict[str, dict[str, Any]] = {
    "omniglot5": dict(kind="conv", n_way=5, k=1, q=15, tasks=32, steps=1, lr=0.4),
    "omniglot20": dict(kind="conv", n_way=20, k=1, q=5, tasks=16, steps=5, lr=0.1),
    "sinusoid": dict(kind="mlp", k=10, q=10, tasks=25, steps=1, lr=0.01),
    "protonet": dict(kind="proto", n_way=5, k=1, q=15, tasks=1),
    # mini-ImageNet-shaped episodes: 84x84 RGB, 5-way 5-shot, 15 queries (issue: tasks from any data)
    "protonet84": dict(kind="proto", n_way=5, k=5, q=15, tasks=1, channels=3, side=84),
}


def conv_backbone(cin: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [
            nn.Conv2d(cin, 64, 3, padding=1),
            nn.BatchNorm2d(64, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        cin = 64
    layers.append(nn.Flatten())
    return nn.Sequential(*layers)


DEVICE = torch.device("cpu")


def build(setup: str, dtype: torch.dtype) -> tuple[nn.Module, TaskBatch, Callable]:
    cfg = SETUPS[setup]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if cfg["kind"] == "mlp":
        model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
        T, k, q = cfg["tasks"], cfg["k"], cfg["q"]
        amp = 0.1 + 4.9 * torch.rand(T, 1, 1, generator=g)
        ph = torch.pi * torch.rand(T, 1, 1, generator=g)
        xs, xq = 10 * torch.rand(T, k, 1, generator=g) - 5, 10 * torch.rand(T, q, 1, generator=g) - 5
        batch = TaskBatch(xs, amp * torch.sin(xs - ph), xq, amp * torch.sin(xq - ph))
        loss_fn = F.mse_loss
    else:
        n, k, q, T = cfg["n_way"], cfg["k"], cfg["q"], cfg["tasks"]
        c, side = cfg.get("channels", 1), cfg.get("side", 28)
        model = conv_backbone(c) if cfg["kind"] == "proto" else nn.Sequential(conv_backbone(c), nn.Linear(64, n))
        batch = TaskBatch(
            torch.rand(T, n * k, c, side, side, generator=g),
            torch.arange(n).repeat_interleave(k).expand(T, -1).contiguous(),
            torch.rand(T, n * q, c, side, side, generator=g),
            torch.arange(n).repeat_interleave(q).expand(T, -1).contiguous(),
            n_way=n,
        )
        loss_fn = F.cross_entropy
    if TASKNORM and cfg["kind"] == "conv":
        # Same function as BatchNorm2d(track_running_stats=False), but exact under vmap.
        from metafit.models import TaskBatchNorm

        for seq in model.modules():
            if isinstance(seq, nn.Sequential):
                for i, m in enumerate(seq):
                    if isinstance(m, nn.BatchNorm2d):
                        seq[i] = TaskBatchNorm(m.num_features)
    return model.to(DEVICE, dtype), batch.to(DEVICE).to(dtype), loss_fn


TASKNORM = False


_IMPORTED: dict[str, types.ModuleType] = {}


def _import_skipping_init(package: str, module: str) -> types.ModuleType:
    """Imports package.module without running package/__init__ (its torchvision import fails here)."""
    key = f"{package}.{module}"
    if key in _IMPORTED:
        return _IMPORTED[key]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(package)
    pkg = types.ModuleType(package)
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules[package] = pkg
    _IMPORTED[key] = importlib.import_module(key)
    return _IMPORTED[key]


def maml_variants(setup: str, model: nn.Module, loss_fn: Callable) -> dict[str, Callable[[TaskBatch], None]]:
    cfg = SETUPS[setup]
    lr, steps = cfg["lr"], cfg["steps"]
    out: dict[str, Callable[[TaskBatch], None]] = {}

    def plain(b: TaskBatch) -> None:
        params = dict(model.named_parameters())
        for t in range(len(b)):
            fast = params
            for _ in range(steps):
                sl = loss_fn(functional_call(model, fast, (b.support_x[t],)), b.support_y[t])
                grads = torch.autograd.grad(sl, list(fast.values()), create_graph=True)
                fast = {n: p - lr * g for (n, p), g in zip(fast.items(), grads)}
            (loss_fn(functional_call(model, fast, (b.query_x[t],)), b.query_y[t]) / len(b)).backward()

    out["plain_loop"] = plain
    criterion = "mse" if loss_fn is F.mse_loss else "cross_entropy"
    algo = MAML(inner_lr=lr, inner_steps=steps, criterion=criterion)
    mp = {"model": dict(model.named_parameters())}
    out["metafit_loop"] = lambda b: meta_backward(algo, model, mp, {}, b, path="loop") and None
    if cfg["kind"] == "conv":  # torch.compile of the per-task loss (inductor), exact second order
        out["metafit_compile"] = lambda b: meta_backward(algo, model, mp, {}, b, path="compile") and None
        # The same module through metafit.models.fuse_norm_relu_pool (a torch.fx pass: one fused,
        # twice-differentiable node per BatchNorm -> ReLU -> MaxPool chain; same parameters).
        fused = fuse_norm_relu_pool(model)
        out["metafit_fused_loop"] = lambda b: meta_backward(algo, fused, mp, {}, b, path="loop") and None
        out["metafit_fused_compile"] = lambda b: meta_backward(algo, fused, mp, {}, b, path="compile") and None
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        out["metafit_vmap"] = lambda b: meta_backward(algo, model, mp, {}, b, path="vmap") and None
        if cfg["kind"] == "mlp":  # one torch.compile graph of the vmapped batch loss
            out["metafit_vmap_compile"] = lambda b: meta_backward(algo, model, mp, {}, b, path="vmap_compile") and None
    try:
        try:
            from learn2learn.algorithms import MAML as L2LMAML  # type: ignore
        except Exception:
            L2LMAML = _import_skipping_init("learn2learn", "algorithms.maml").MAML
        l2l = L2LMAML(model, lr=lr)

        def run_l2l(b: TaskBatch) -> None:
            for t in range(len(b)):
                learner = l2l.clone()
                for _ in range(steps):
                    learner.adapt(loss_fn(learner(b.support_x[t]), b.support_y[t]))
                (loss_fn(learner(b.query_x[t]), b.query_y[t]) / len(b)).backward()

        out["learn2learn"] = run_l2l
    except Exception as e:  # noqa: BLE001
        NOTES.append(f"learn2learn unavailable: {type(e).__name__}: {str(e)[:80]}")
    try:
        import higher  # type: ignore

        inner = torch.optim.SGD(model.parameters(), lr=lr)

        def run_higher(b: TaskBatch) -> None:
            for t in range(len(b)):
                with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fm, dopt):
                    for _ in range(steps):
                        dopt.step(loss_fn(fm(b.support_x[t]), b.support_y[t]))
                    (loss_fn(fm(b.query_x[t]), b.query_y[t]) / len(b)).backward()

        out["higher"] = run_higher
    except Exception as e:  # noqa: BLE001
        NOTES.append(f"higher unavailable: {type(e).__name__}: {str(e)[:80]}")
    try:
        import torchopt  # type: ignore

        topt = torchopt.MetaSGD(model, lr=lr)
        net_state = torchopt.extract_state_dict(model, by="reference", detach_buffers=True)
        opt_state = torchopt.extract_state_dict(topt, by="reference")

        def run_torchopt(b: TaskBatch) -> None:
            for t in range(len(b)):
                for _ in range(steps):
                    topt.step(loss_fn(model(b.support_x[t]), b.support_y[t]))
                (loss_fn(model(b.query_x[t]), b.query_y[t]) / len(b)).backward()
                torchopt.recover_state_dict(model, net_state)
                torchopt.recover_state_dict(topt, opt_state)

        out["torchopt"] = run_torchopt
    except Exception as e:  # noqa: BLE001
        NOTES.append(f"torchopt unavailable: {type(e).__name__}: {str(e)[:80]}")
    return out


def proto_variants(model: nn.Module) -> dict[str, Callable[[TaskBatch], None]]:
    out: dict[str, Callable[[TaskBatch], None]] = {}

    def plain(b: TaskBatch) -> None:
        xs, ys, xq, yq = b.support_x[0], b.support_y[0], b.query_x[0], b.query_y[0]
        zs, zq = model(xs), model(xq)
        onehot = F.one_hot(ys).to(zs.dtype)
        protos = (onehot.t() @ zs) / onehot.sum(0, keepdim=True).t()
        F.cross_entropy(-torch.cdist(zq, protos), yq).backward()

    out["plain_proto"] = plain
    # Same function as easyfsl (separate support/query passes, Euclidean distance).
    algo = ProtoNet(distance="euclidean", joint_embedding=False)
    mp = {"model": dict(model.named_parameters())}
    out["metafit_protonet"] = lambda b: meta_backward(algo, model, mp, {}, b, path="loop") and None
    # The same function with channels-last conv weights (what benchmarks/omniglot.py's ProtoNet
    # recipe uses on the CPU); gradients are copied back onto the shared module for the check.
    mp_cl = {
        "model": {
            k: v.detach()
            .clone(memory_format=torch.channels_last if v.dim() == 4 else torch.preserve_format)
            .requires_grad_()
            for k, v in model.named_parameters()
        }
    }

    def run_cl(b: TaskBatch, path: str = "loop", model: nn.Module = model) -> None:
        for v in mp_cl["model"].values():
            v.grad = None
        meta_backward(algo, model, mp_cl, {}, b, path=path)
        for k, p in model.named_parameters():
            p.grad = mp_cl["model"][k].grad

    out["metafit_protonet_channels_last"] = run_cl
    # The same module through metafit.models.fuse_norm_relu_pool (same parameters, same function).
    fused = fuse_norm_relu_pool(model)
    out["metafit_protonet_fused"] = lambda b: meta_backward(algo, fused, mp, {}, b, path="loop") and None
    out["metafit_protonet_fused_channels_last"] = lambda b: run_cl(b, model=fused)
    # The compile path on the same channels-last weights (inductor without its max-pool
    # decompositions on the CPU, as the engine does).
    out["metafit_protonet_compile_channels_last"] = lambda b: run_cl(b, "compile")
    # torch.compile of the episode loss: 1.63x SLOWER than the plain episode with inductor's default
    # decompositions (results/speed_cpu_compile.json); with the engine's CPU table about level with
    # eager channels-last (results/speed_cpu_protonet_compile_cl.json).
    out["metafit_protonet_compile"] = lambda b: meta_backward(algo, model, mp, {}, b, path="compile") and None
    try:
        try:
            from easyfsl.methods import PrototypicalNetworks  # type: ignore
        except Exception:
            PrototypicalNetworks = _import_skipping_init(
                "easyfsl.methods", "prototypical_networks"
            ).PrototypicalNetworks
        net = PrototypicalNetworks(model)

        def run_easyfsl(b: TaskBatch) -> None:
            net.process_support_set(b.support_x[0], b.support_y[0])
            F.cross_entropy(net(b.query_x[0]), b.query_y[0]).backward()

        out["easyfsl"] = run_easyfsl
    except Exception as e:  # noqa: BLE001
        NOTES.append(f"easyfsl unavailable: {type(e).__name__}: {str(e)[:80]}")
    return out


NOTES: list[str] = []
# FLOPs of a compiled variant are counted on the eager variant computing the same function.
EAGER_TWIN = {
    "metafit_compile": "metafit_loop",
    "metafit_fused_compile": "metafit_fused_loop",
    "metafit_protonet_compile": "metafit_protonet",
    "metafit_protonet_compile_channels_last": "metafit_protonet_channels_last",
    "metafit_vmap_compile": "metafit_vmap",
}


def grads_of(model: nn.Module, fn: Callable[[TaskBatch], None], batch: TaskBatch) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    fn(batch)
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_memory_mib(fn: Callable[[TaskBatch], None], batch: TaskBatch) -> float:
    """Peak memory ONE call of ``fn`` adds, in MiB.

    CUDA: ``max_memory_allocated`` after a reset. CPU: the call runs in a forked child, whose peak
    resident set (VmHWM) starts at its own resident set, so ``VmHWM - VmRSS at entry`` is what this
    variant allocates on top of the shared state (a per-process reset through
    /proc/self/clear_refs does not work on every kernel, e.g. this machine's).
    """
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(batch)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    if not Path("/proc/self/status").exists() or not hasattr(os, "fork"):
        return float("nan")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: measure, report, exit without running any cleanup of the parent
        try:
            os.close(r)
            torch.set_num_threads(1)  # the child must not reuse the parent's OpenMP pool
            base = _status_mib("VmRSS")
            fn(batch)
            os.write(w, f"{_status_mib('VmHWM') - base}".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return float(text) if text else float("nan")


def peak_tensor_mib(fn: Callable[[TaskBatch], None], batch: TaskBatch) -> float:
    """Peak bytes of tensors ONE call of ``fn`` holds at once, in MiB (CPU; profiler events).

    ``torch.profiler`` with ``profile_memory`` records every CPU tensor allocation and free with
    its size; the running sum of those events, in time order, peaks at what the call holds at
    once on top of what existed before it. Unlike the resident-set figure this needs no fork, so
    it also measures compiled variants (inductor deadlocked in forked children), and it counts
    tensors only (no allocator caching, no compiled code). Run after a warm-up call.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(batch)
    sizes: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu":
            sizes.append((e.start_time_ns, e.extra_fields.alloc_size))
        stack.extend(e.children)
    current = peak = 0
    for _, n in sorted(sizes):
        current += n
        peak = max(peak, current)
    return peak / 2**20


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    if DEVICE.type == "cuda":
        n = 8192
    a, b = torch.randn(n, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
    a @ b
    _sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        _sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def count_flops(model: nn.Module, fn: Callable[[TaskBatch], None], batch: TaskBatch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as fc:
        fn(batch)
    return float(fc.get_total_flops())


SKIP_COMPILE = False


def bench_setup(setup: str, rounds: int, dtype_check: torch.dtype = torch.float64) -> dict[str, Any]:
    # 1) gradient agreement in float64 (float32 too)
    results: dict[str, Any] = {"setup": setup, **SETUPS[setup], "variants": {}}
    for dtype in (dtype_check, torch.float32):
        model, batch, loss_fn = build(setup, dtype)
        variants = proto_variants(model) if SETUPS[setup]["kind"] == "proto" else maml_variants(setup, model, loss_fn)
        if SKIP_COMPILE:  # --quick: a smoke test, no compile variants (each compiles for a minute or more)
            variants = {k: v for k, v in variants.items() if "compile" not in k}
        ref_name = "plain_proto" if "plain_proto" in variants else "plain_loop"
        ref = grads_of(model, variants[ref_name], batch)
        scale = max(float(g.abs().max()) for g in ref)
        tag = str(dtype).split(".")[-1]
        for name, fn in variants.items():
            t0 = time.perf_counter()  # the first call of a compiled variant in this dtype compiles
            g = grads_of(model, fn, batch)
            v = results["variants"].setdefault(name, {})
            v[f"first_call_s_{tag}"] = time.perf_counter() - t0
            diff = max(float((a - b).abs().max()) for a, b in zip(g, ref))
            v[f"grad_max_abs_diff_{tag}"] = diff
            v[f"grad_rel_diff_{tag}"] = diff / scale
    # 2) interleaved timing in float32
    names = list(variants)
    for name in names:  # a compiled variant computes the same function as its eager twin
        eager = EAGER_TWIN.get(name, name)
        results["variants"][name]["gflop"] = count_flops(model, variants[eager], batch) / 1e9
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, float] = {}
    tensor_peaks: dict[str, float] = {}
    for name in names:  # warm-up, then peak memory
        grads_of(model, variants[name], batch)
        model.zero_grad(set_to_none=True)
        tensor_peaks[name] = peak_tensor_mib(variants[name], batch) if DEVICE.type == "cpu" else float("nan")
        model.zero_grad(set_to_none=True)
        if "compile" in name and DEVICE.type == "cpu":
            # A forked child calling an inductor-compiled function deadlocked here (futex wait);
            # compiled variants' CPU peak memory is therefore not measured.
            peaks[name] = float("nan")
            NOTES.append(
                "resident-set peak of the compiled variants not measured on CPU (fork + inductor deadlock); "
                "see the profiler's tensor peak column"
            )
        else:
            peaks[name] = peak_memory_mib(variants[name], batch)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            model.zero_grad(set_to_none=True)
            _sync()
            t0 = time.perf_counter()
            variants[name](batch)
            _sync()
            times[name].append(time.perf_counter() - t0)
    for name in names:
        ratios = [t / p for t, p in zip(times[name], times[ref_name])]
        v = results["variants"][name]
        v.update(
            median_s=statistics.median(times[name]),
            ratio_median=statistics.median(ratios),
            ratio_min=min(ratios),
            ratio_max=max(ratios),
            peak_mib=peaks[name],
            peak_tensor_mib=tensor_peaks[name],
        )
        v["gflops_per_s"] = v["gflop"] / v["median_s"]
    results["reference"] = ref_name
    return results


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--setups", nargs="+", default=None, choices=list(SETUPS), help="default: all (quick: the small ones)"
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--tasknorm",
        action="store_true",
        help="use metafit.models.TaskBatchNorm instead of nn.BatchNorm2d (same function; lets vmap run second order)",
    )
    args = p.parse_args()
    global DEVICE, TASKNORM
    DEVICE, TASKNORM = torch.device(args.device), args.tasknorm
    setup_threads(args.threads, args.keep_freed_memory)
    if args.setups is None:
        args.setups = ["omniglot5", "sinusoid", "protonet"] if args.quick else list(SETUPS)
    if args.quick:
        global SKIP_COMPILE
        SKIP_COMPILE = True
        SETUPS["omniglot5"]["tasks"] = 4
        SETUPS["omniglot20"]["tasks"] = 2
        args.rounds = 2
    peak = matmul_peak_gflops()
    out = {"benchmark": "speed", "quick": args.quick, "matmul_peak_gflops": peak, "setups": []}
    rows = []
    for s in args.setups:
        fast = s in ("sinusoid", "protonet", "protonet84") and not args.quick  # cheap steps: more rounds
        r = bench_setup(s, max(args.rounds, 20) if fast else args.rounds)
        out["setups"].append(r)
        for name, v in r["variants"].items():
            if "median_s" not in v:
                continue
            rows.append(
                [
                    s,
                    name,
                    f"{v['median_s']:.4f}",
                    f"{v['ratio_median']:.2f} [{v['ratio_min']:.2f}, {v['ratio_max']:.2f}]",
                    f"{v['peak_mib']:.0f}",
                    f"{v['peak_tensor_mib']:.1f}",
                    f"{v['gflops_per_s']:.1f} ({100 * v['gflops_per_s'] / peak:.0f}%)",
                    f"{v['grad_max_abs_diff_float64']:.1e} ({v['grad_rel_diff_float64']:.1e})",
                    f"{v['grad_max_abs_diff_float32']:.1e}",
                ]
            )
    print(
        f"## Meta-iteration speed on {args.device} (paired ratio vs the plain loop; fp32 matmul peak {peak:.0f} GFLOP/s)\n"
    )
    print(
        markdown_table(
            [
                "setup",
                "variant",
                "median s",
                "ratio vs plain [min, max]",
                "peak MiB added (one call)" if DEVICE.type == "cpu" else "peak GPU MiB added",
                "peak tensor MiB (profiler)",
                "GFLOP/s (% of peak)",
                "grad diff f64 abs (rel)",
                "grad diff f32 abs",
            ],
            rows,
        )
    )
    for n in sorted(set(NOTES)):
        print(f"- {n}")
    out["notes"] = sorted(set(NOTES))
    write_out(args.out, out)


if __name__ == "__main__":
    main()
