"""The engine: maps an algorithm's loss over a batch of tasks and steps the outer optimiser.

Four interchangeable paths compute the same meta-gradient:

* ``"vmap"``: ``torch.func.vmap`` of ``algorithm.loss`` over the task dimension of a
  :class:`~metafit.data.task.TaskBatch`, one backward for the whole batch. Fast for small
  models whose per-task work is overhead-bound (the sinusoid MLP: ~7x faster on 2 CPU cores).
* ``"loop"``: one task at a time, each task's loss backpropagated at once (peak memory of one
  task), gradients accumulated. Faster for conv nets on CPU and works for variable-shape tasks.
* ``"compile"``: the loop, with each task's loss run by a ``torch.compile`` (inductor) graph of
  ``algorithm.loss``. Inside the graph the inner gradients come from ``torch.func.grad``, so the
  whole adaptation is traced and the outer backward differentiates through it exactly (second
  order included). The first call compiles (one to a few minutes on 2 CPU cores; again for each
  new task shape); afterwards a conv-4 second-order MAML meta-iteration takes 0.59-0.68 of the
  eager loop's time on 2 CPU cores, 1.5x faster than the fastest peer (benchmarks/speed.py,
  docs/results.md); a ProtoNet episode runs level with eager channels-last. On the CPU inductor runs without
  its max-pool decompositions (see ``_inductor_backend``). Opt-in: ``"auto"`` never picks it.
* ``"vmap_compile"``: the vmap path's whole batch loss (``vmap`` of ``algorithm.loss``) run by one
  ``torch.compile`` graph, with the same exact inner gradients. For overhead-bound models it
  removes most of what eager vmap leaves (the sinusoid MLP: ~2x faster than eager vmap on 2 CPU
  cores, docs/results.md). Opt-in, like ``"compile"``; refused where ``"vmap"`` is.

``"auto"`` measures both on the first batch, checks that they agree, and keeps the faster.
Known-wrong combinations are refused: vmap through torch's fused batch-norm kernels gives a
wrong second-order gradient in torch 2.13 (see docs/design.md), so ``"vmap"`` with such a model
and a second-order learner raises, and ``"auto"`` picks the loop.

Only this module steps optimisers. :class:`Trainer` is metafit's one training loop; logging,
validation, checkpoints, progress, time budgets, the divergence guard and distributed gradient
reduction are :class:`Callback` s (:mod:`metafit.callbacks`).
"""

from __future__ import annotations

import functools
import math
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from metafit.algorithms.base import Algorithm, MetaParams
from metafit.data.task import Task, TaskBatch, stack_tasks
from metafit.functional import Buffers, buffers_of, has_batchnorm

Path = Literal["vmap", "loop", "compile", "vmap_compile"]
PathChoice = Literal["vmap", "loop", "compile", "vmap_compile", "auto"]
PATH_NAMES = ("vmap", "loop", "compile", "vmap_compile")
_PATH_LIST = ", ".join(repr(p) for p in PATH_NAMES) + " or 'auto'"
Tasks = TaskBatch | Sequence[Task]

__all__ = [
    "meta_backward",
    "meta_gradients",
    "check_path",
    "choose_path",
    "DivergenceError",
    "Trainer",
    "StepResult",
    "Callback",
    "DivergenceGuard",
    "make_optimizer",
    "parameters_of",
]


class DivergenceError(RuntimeError):
    """A non-finite loss or meta-gradient; raised before the optimiser touches anything."""

    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"training diverged at step {step}: {what}")
        self.step = step
        self.what = what


def parameters_of(meta_params: MetaParams) -> list[Tensor]:
    """Every trainable meta-parameter tensor, group by group, in a stable order (for optimisers).

    A tensor with ``requires_grad=False`` is frozen (e.g. a pretrained backbone kept fixed): it
    is left out, so no optimiser state, gradient or weight decay ever touches it.
    """
    return [t for g in meta_params for t in meta_params[g].values() if t.requires_grad]


def check_path(algorithm: Algorithm, model: nn.Module, path: Path) -> None:
    """Raises ValueError for a path known to give wrong results with this model/learner.

    The vmap path through ``nn.BatchNorm*``/``nn.InstanceNorm*`` (torch's fused kernels) gives a
    wrong second-order meta-gradient in torch 2.13 (off by up to 8e-3 in float64), and fails
    outright when the layer tracks running statistics.
    """
    if path not in PATH_NAMES:
        raise ValueError(f"path must be {_PATH_LIST}, got {path!r}")
    if path in ("vmap", "vmap_compile") and has_batchnorm(model) and algorithm.spec.second_order:
        raise ValueError(
            f"path={path!r} with a second-order learner and a model containing torch BatchNorm/"
            "InstanceNorm layers gives a WRONG meta-gradient in torch 2.13 (the vmap batching rule "
            "of batch_norm's backward); use path='loop', or metafit.models.TaskBatchNorm, which is exact"
        )


def _as_list(tasks: Tasks) -> list[Task]:
    return list(tasks) if isinstance(tasks, TaskBatch) else list(tasks)


# model -> {(id(algorithm), kind): (algorithm, compiled loss)}; the algorithm is kept in the
# value so that its id cannot be reused while the entry lives.
_COMPILED: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, str], tuple[Any, Callable[..., Any]]]] = (
    weakref.WeakKeyDictionary()
)


def _inductor_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
    """Inductor without its max-pool decompositions on the CPU.

    By default inductor decomposes ``max_pool2d_with_indices`` into a low-memory "offsets" form
    whose backward is a scatter; without those decompositions it lowers max-pool and its backward
    directly (the backward as a gather over each input position's windows), which on this
    project's 2-core CPU made a compiled conv-4 second-order MAML task ~10-15% faster: 0.60
    instead of 0.67 of the eager loop's time (measured with a prototype script, removed, at commit 6cb68de;
    docs/results.md, "compile path without inductor's max-pool decompositions"). Same function
    (the tests compare float64 meta-gradients with the eager loop). Off the CPU the default
    backend is used unchanged.
    """
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.decomposition import select_decomp_table

    if any(isinstance(t, Tensor) and t.device.type != "cpu" for t in example_inputs):
        return compile_fx(gm, example_inputs)
    table = {op: fn for op, fn in select_decomp_table().items() if "max_pool" not in str(op)}
    # AOTAutograd's on-disk cache is keyed on the graph BEFORE decomposition and does not see a
    # custom decomposition table, so it would hand back a graph compiled earlier with inductor's
    # default table (observed: a warm cache gave a 13 s first call and the old, slower timing).
    # It is bypassed here, and with it inductor's FX-graph cache, so each new process compiles
    # these graphs again (the generated C++ kernels stay cached on disk: roughly half the cold
    # compile time).
    with torch._functorch.config.patch(enable_autograd_cache=False):
        return compile_fx(gm, example_inputs, decompositions=table)


def _compiled(
    algorithm: Algorithm, model: nn.Module, kind: str, build: Callable[[], Callable[..., Any]]
) -> Callable[..., Any]:
    """``torch.compile(build())`` cached per (model, algorithm, kind), with ``model`` bound first."""
    per_model = _COMPILED.setdefault(model, {})
    entry = per_model.get((id(algorithm), kind))
    if entry is None:
        entry = (algorithm, torch.compile(build(), dynamic=False, backend=_inductor_backend))
        per_model[(id(algorithm), kind)] = entry
    # The model is an argument, not a closure variable: a cached value holding the model
    # strongly would keep its weak key alive forever.
    return functools.partial(entry[1], model)


def compiled_task_loss(algorithm: Algorithm, model: nn.Module) -> Callable[..., tuple[Tensor, dict[str, Tensor]]]:
    """The ``torch.compile``d per-task loss of ``algorithm`` on ``model`` (cached per pair).

    Returns:
        ``fn(meta_params, buffers, support_x, support_y, query_x, query_y, n_way) -> (loss, metrics)``,
        the same values as ``algorithm.loss(model, meta_params, buffers, Task(...))``.
    """

    def build() -> Callable[..., Any]:
        def task_loss(
            net: nn.Module,
            meta_params: MetaParams,
            buffers: Buffers,
            sx: Tensor,
            sy: Tensor,
            qx: Tensor,
            qy: Tensor,
            n_way: int | None,
        ) -> tuple[Tensor, dict[str, Tensor]]:
            return algorithm.loss(net, meta_params, buffers, Task(sx, sy, qx, qy, n_way=n_way))

        return task_loss

    return _compiled(algorithm, model, "task", build)


def _vmapped_loss(
    algorithm: Algorithm,
    net: nn.Module,
    meta_params: MetaParams,
    buffers: Buffers,
    sx: Tensor,
    sy: Tensor,
    qx: Tensor,
    qy: Tensor,
    n_way: int | None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-task losses ``(T,)`` and metrics ``{name: (T,)}`` of a task batch by ``vmap``."""

    def one(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return algorithm.loss(net, meta_params, buffers, Task(a, b, c, d, n_way=n_way))

    return torch.func.vmap(one, randomness="different")(sx, sy, qx, qy)


def compiled_batch_loss(algorithm: Algorithm, model: nn.Module) -> Callable[..., tuple[Tensor, dict[str, Tensor]]]:
    """The ``torch.compile``d ``vmap`` of ``algorithm.loss`` over a task batch (cached per pair).

    Returns:
        ``fn(meta_params, buffers, support_x, support_y, query_x, query_y, n_way) -> (losses, metrics)``
        with a leading task dimension ``T`` on every input and output.
    """
    return _compiled(algorithm, model, "vmap", lambda: functools.partial(_vmapped_loss, algorithm))


def meta_backward(
    algorithm: Algorithm,
    model: nn.Module,
    meta_params: MetaParams,
    buffers: Buffers,
    tasks: Tasks,
    *,
    path: Path = "loop",
    denominator: int | None = None,
) -> dict[str, float]:
    """Accumulates ``d(sum_t loss_t / denominator) / d meta_params`` into their ``.grad``.

    Args:
        algorithm: The learner.
        model: The module whose forward the learner calls (its own tensors are not used).
        meta_params: Leaf tensors requiring grad; their ``.grad`` is added to, not reset.
        buffers: Model buffers (never mutated).
        tasks: A :class:`TaskBatch` (either path) or a sequence of :class:`Task` (loop path;
            shapes may vary).
        path: One of ``PATH_NAMES`` (same result; see the module docstring).
        denominator: Number of tasks the loss is averaged over (default: ``len(tasks)``).
            A distributed rank passes the global meta-batch size.

    Returns:
        Mean of each metric over ``tasks`` (Python floats) plus ``"n_tasks"``.
    """
    check_path(algorithm, model, path)
    n = len(tasks)
    if n == 0:
        raise ValueError("tasks is empty: a meta-batch needs at least one task")
    denom = float(n if denominator is None else denominator)
    if path in ("vmap", "vmap_compile"):
        batch = tasks if isinstance(tasks, TaskBatch) else stack_tasks(list(tasks))
        loss_fn = (
            compiled_batch_loss(algorithm, model)
            if path == "vmap_compile"
            else functools.partial(_vmapped_loss, algorithm, model)
        )
        losses, metrics = loss_fn(
            meta_params, buffers, batch.support_x, batch.support_y, batch.query_x, batch.query_y, batch.n_way
        )
        (losses.sum() / denom).backward()
        out = {k: float(v.detach().mean()) for k, v in metrics.items()}
    else:
        sums: dict[str, float] = {}
        compiled = compiled_task_loss(algorithm, model) if path == "compile" else None
        for task in _as_list(tasks):
            if compiled is not None:
                loss, metrics = compiled(
                    meta_params, buffers, task.support_x, task.support_y, task.query_x, task.query_y, task.n_way
                )
            else:
                loss, metrics = algorithm.loss(model, meta_params, buffers, task)
            (loss / denom).backward()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        out = {k: v / n for k, v in sums.items()}
    out["n_tasks"] = float(n)
    return out


def meta_gradients(
    algorithm: Algorithm,
    model: nn.Module,
    meta_params: MetaParams,
    buffers: Buffers,
    tasks: Tasks,
    *,
    path: Path = "loop",
) -> tuple[dict[str, dict[str, Tensor]], dict[str, float]]:
    """The meta-gradient of the mean task loss, without touching ``meta_params[...].grad``.

    Returns:
        ``({group: {name: grad}}, metrics)``.
    """
    leaves = {g: {k: v.detach().clone().requires_grad_(True) for k, v in d.items()} for g, d in meta_params.items()}
    metrics = meta_backward(algorithm, model, leaves, buffers, tasks, path=path)
    grads = {
        g: {k: (v.grad if v.grad is not None else torch.zeros_like(v)) for k, v in d.items()} for g, d in leaves.items()
    }
    return grads, metrics


def choose_path(
    algorithm: Algorithm,
    model: nn.Module,
    meta_params: MetaParams,
    buffers: Buffers,
    batch: TaskBatch,
    *,
    repeats: int = 2,
    check_tasks: int = 2,
    rtol: float = 1e-6,
) -> tuple[Path, dict[str, Any]]:
    """Measures both paths on ``batch`` and returns the faster one that is correct.

    Correctness: vmap is considered only if :func:`check_path` allows it, if it runs, and if
    its meta-gradient on the first ``check_tasks`` tasks agrees with the loop's in float64 (max
    abs difference within ``rtol`` times the largest entry). float64 makes the check immune to
    float32/TF32 round-off (which differs between the paths on GPUs) while still exposing real
    errors such as the torch 2.13 BatchNorm vmap rule (1e-3 relative). Speed: best of
    ``repeats`` timed runs of each path on the whole batch in its own dtype, after a warm-up.

    Returns:
        ``(path, report)`` where the report holds the timings and the gradient difference.
    """
    report: dict[str, Any] = {}
    device = next(iter(meta_params["model"].values())).device

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(path: Path) -> float:
        meta_gradients(algorithm, model, meta_params, buffers, batch, path=path)
        best = math.inf
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            meta_gradients(algorithm, model, meta_params, buffers, batch, path=path)
            sync()
            best = min(best, time.perf_counter() - t0)
        return best

    report["loop_s"] = timed("loop")
    try:
        check_path(algorithm, model, "vmap")
    except ValueError as e:
        report["vmap_refused"] = str(e)
        return "loop", report
    try:
        report["vmap_s"] = timed("vmap")
        small = batch.split([min(check_tasks, len(batch)), len(batch) - min(check_tasks, len(batch))])[0]
        small = small.to(torch.float64)
        mp64 = {g: {k: v.detach().to(torch.float64) for k, v in d.items()} for g, d in meta_params.items()}
        buf64 = {k: (v.to(torch.float64) if v.is_floating_point() else v) for k, v in buffers.items()}
        g_loop, _ = meta_gradients(algorithm, model, mp64, buf64, small, path="loop")
        g_vmap, _ = meta_gradients(algorithm, model, mp64, buf64, small, path="vmap")
    except Exception as e:  # a model vmap cannot handle (data-dependent control flow, ...)
        report["vmap_error"] = f"{type(e).__name__}: {e}"
        return "loop", report
    scale = max(float(v.abs().max()) for d in g_loop.values() for v in d.values()) or 1.0
    diff = max(float((g_vmap[g][k] - g_loop[g][k]).abs().max()) for g in g_loop for k in g_loop[g])
    report.update(grad_max_abs_diff_float64=diff, grad_scale=scale)
    if diff > rtol * scale:
        report["vmap_disagrees"] = True
        return "loop", report
    return ("vmap" if report["vmap_s"] < report["loop_s"] else "loop"), report


OptimizerFactory = Callable[[list[Tensor]], torch.optim.Optimizer]


def make_optimizer(name: str, params: list[Tensor], lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """Builds ``torch.optim.<name>(params, lr=lr, **kwargs)`` with a clear error for bad names."""
    cls = getattr(torch.optim, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or name == "Optimizer":
        options = sorted(
            n
            for n in dir(torch.optim)
            if isinstance(getattr(torch.optim, n), type)
            and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
            and n != "Optimizer"
        )
        raise ValueError(f"optimizer must be a torch.optim optimizer name, one of {options}; got {name!r}")
    return cls(params, lr=lr, **kwargs)


@dataclass
class StepResult:
    """What one meta-training step reports.

    Attributes:
        step: The step count after this step.
        metrics: Means over the step's tasks (``loss``, ``accuracy`` / ``mse``, ...), plus
            ``grad_norm`` and ``n_tasks``.
        seconds: Wall time of the step (meta-gradient and optimiser step).
        lr: The outer learning rate used (first parameter group).
    """

    step: int
    metrics: dict[str, float]
    seconds: float
    lr: float


class Callback:
    """Hooks of :meth:`Trainer.fit` and :meth:`Trainer.step`; a subclass overrides what it needs.

    Order of one step inside ``fit``: draw a batch, ``on_batch`` (may return a different batch,
    e.g. this rank's shard), meta-gradient, ``on_gradients`` (may reduce the gradients and
    metrics across ranks, or raise to refuse the step), optional clipping, the optimiser and
    scheduler step, then ``on_step_end``. Time spent in ``on_step_end`` (validation, checkpoints,
    logging) is not counted in :attr:`Trainer.train_seconds`. A callback stops training by calling
    :meth:`Trainer.request_stop`.
    """

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step of :meth:`Trainer.fit`."""

    def on_batch(self, trainer: Trainer, batch: Tasks) -> Tasks:
        """Sees (and may replace) the task batch of the next step."""
        return batch

    def on_gradients(self, trainer: Trainer, grads: list[Tensor], metrics: dict[str, float]) -> None:
        """After the meta-gradient, before the optimiser step; ``grads`` follow ``trainer.parameters``.

        May modify ``grads`` in place (an all-reduce) and ``metrics`` (global means). Raising here
        leaves the meta-parameters and the optimiser state untouched.
        """

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        """After the optimiser step (logging, validation, checkpoints, time budget)."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last step (also when a callback requested a stop)."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state to checkpoint (e.g. the best validation score so far)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`."""


class DivergenceGuard(Callback):
    """Refuses a step whose loss or meta-gradient is not finite (raises :class:`DivergenceError`).

    It runs in ``on_gradients``, before the optimiser step, so the meta-parameters and the
    optimiser state are left exactly as before the step. Put it after any callback that reduces
    gradients across ranks, so every rank sees the same values and stops together.
    """

    def on_gradients(self, trainer: Trainer, grads: list[Tensor], metrics: dict[str, float]) -> None:
        step = trainer.step_count + 1
        if not math.isfinite(metrics.get("loss", 0.0)):
            raise DivergenceError(step, f"non-finite loss {metrics.get('loss')}")
        total_sq = torch.stack([g.detach().double().pow(2).sum() for g in grads]).sum() if grads else torch.zeros(())
        if not bool(torch.isfinite(total_sq)):
            bad = [n for n, g in zip(trainer.parameter_names, grads) if not bool(torch.isfinite(g).all())]
            raise DivergenceError(step, f"non-finite meta-gradient in {bad[:5]}")


@dataclass
class Trainer:
    """Meta-trains an algorithm on a stream of task batches: the one training loop of metafit.

    Args:
        algorithm: The learner (e.g. :class:`~metafit.algorithms.MAML`).
        model: Any ``nn.Module``; its tensors are copied into ``meta_params`` by ``algorithm.init``.
        optimizer: An outer optimiser over ``parameters_of(meta_params)``, or a factory taking
            that list (default: Adam, lr 1e-3).
        meta_params: Initial meta-parameters (default ``algorithm.init(model)``).
        path: ``"vmap"``, ``"loop"``, ``"compile"``, ``"vmap_compile"`` or ``"auto"`` (measure vmap
            and loop on the first batch).
        scheduler: Optional learning-rate scheduler stepped after each optimiser step.
        grad_clip: Clip the global meta-gradient norm to this value (``None``: no clipping).
        callbacks: Hooks run by every :meth:`step` and :meth:`fit` (default: a
            :class:`DivergenceGuard`); ``fit`` may add more for one call.
        buffers: Model buffers (default: copies of the model's).

    Example:
        >>> from metafit import MAML, Trainer, SinusoidTasks
        >>> from metafit.models import MLP
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> trainer = Trainer(MAML(criterion="mse"), MLP(1, (40, 40), 1), path="loop")
        >>> r = trainer.step(SinusoidTasks(k_shot=5, generator=g).sample_batch(4))
        >>> r.step
        1
    """

    algorithm: Algorithm
    model: nn.Module
    optimizer: torch.optim.Optimizer | OptimizerFactory | None = None
    meta_params: MetaParams | None = None
    path: PathChoice = "auto"
    scheduler: Any = None
    grad_clip: float | None = None
    callbacks: Sequence[Callback] | None = None
    buffers: Buffers = field(default_factory=dict)
    step_count: int = 0
    train_seconds: float = 0.0
    path_report: dict[str, Any] = field(default_factory=dict)
    stop_reason: str | None = field(default=None, init=False)
    _active: list[Callback] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.path not in (*PATH_NAMES, "auto"):
            raise ValueError(f"path must be {_PATH_LIST}, got {self.path!r}")
        if self.meta_params is None:
            self.meta_params = self.algorithm.init(self.model)
        if not self.buffers:
            self.buffers = buffers_of(self.model)
        params = parameters_of(self.meta_params)
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(params, lr=1e-3)
        elif not isinstance(self.optimizer, torch.optim.Optimizer):
            self.optimizer = self.optimizer(params)
        if self.callbacks is None:
            self.callbacks = [DivergenceGuard()]
        self.callbacks = list(self.callbacks)
        self._active = list(self.callbacks)
        if self.grad_clip is not None and not (self.grad_clip > 0):
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.path != "auto":
            check_path(self.algorithm, self.model, self.path)

    @property
    def resolved_path(self) -> Path | None:
        """The path in use (``None`` while ``"auto"`` has not measured yet)."""
        return None if self.path == "auto" else self.path

    @property
    def parameters(self) -> list[Tensor]:
        """Every trainable meta-parameter tensor in optimiser order (frozen ones left out)."""
        assert self.meta_params is not None
        return parameters_of(self.meta_params)

    @property
    def parameter_names(self) -> list[str]:
        """``"group/name"`` of each tensor of :attr:`parameters`."""
        assert self.meta_params is not None
        return [f"{g}/{k}" for g, d in self.meta_params.items() for k, v in d.items() if v.requires_grad]

    def request_stop(self, reason: str) -> None:
        """Asks :meth:`fit` to stop after the current step (the first reason is kept)."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def _resolve(self, tasks: Tasks) -> Path:
        if self.path == "auto":
            if isinstance(tasks, TaskBatch) and len(tasks) > 1:
                chosen, report = choose_path(self.algorithm, self.model, self.meta_params, self.buffers, tasks)
            else:
                chosen, report = "loop", {"reason": "tasks of different shapes or a single task"}
            self.path_report = {"chosen": chosen, **report}
            self.path = chosen
        return self.path  # type: ignore[return-value]

    def step(self, tasks: Tasks, *, denominator: int | None = None) -> StepResult:
        """One meta-training step: zero grads, meta-gradient over ``tasks``, hooks, optimiser step.

        Args:
            tasks: A task batch (or list of tasks) for this step.
            denominator: Number of tasks the loss is averaged over (default ``len(tasks)``; a
                distributed rank passes the global meta-batch size).

        Raises:
            DivergenceError: from :class:`DivergenceGuard` if the loss or a gradient is not
                finite; the meta-parameters and optimiser state are left exactly as before.
        """
        assert self.meta_params is not None and isinstance(self.optimizer, torch.optim.Optimizer)
        path = self._resolve(tasks)
        t0 = time.perf_counter()
        params = self.parameters
        for p in params:
            p.grad = None
        if len(tasks):
            metrics = meta_backward(
                self.algorithm, self.model, self.meta_params, self.buffers, tasks, path=path, denominator=denominator
            )
        else:  # a rank with no task this step still takes part in the reduction
            metrics = {"n_tasks": 0.0}
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        for p, g in zip(params, grads):
            p.grad = g
        for cb in self._active:
            cb.on_gradients(self, grads, metrics)
        total_sq = torch.stack([g.detach().pow(2).sum() for g in grads]).sum()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step_count += 1
        metrics["grad_norm"] = float(total_sq.sqrt())
        return StepResult(
            step=self.step_count,
            metrics=metrics,
            seconds=time.perf_counter() - t0,
            lr=float(self.optimizer.param_groups[0]["lr"]),
        )

    def fit(
        self,
        batches: Iterable[Tasks],
        steps: int,
        *,
        callbacks: Sequence[Callback] = (),
    ) -> list[StepResult]:
        """Runs meta-training steps on successive batches until ``steps`` or a requested stop.

        Args:
            batches: Any iterable of task batches (e.g. an
                :class:`~metafit.data.sampling.EpisodeSampler`).
            steps: The step count to reach (``trainer.step_count`` counts on from a resumed run).
            callbacks: Extra hooks for this call, run after the trainer's own.

        Returns:
            The results of the steps run by this call.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an int >= 0, got {steps!r}")
        self._active = [*self.callbacks, *callbacks]  # type: ignore[misc]
        self.stop_reason = None
        results: list[StepResult] = []
        it = iter(batches)
        try:
            for cb in self._active:
                cb.on_fit_start(self)
            while self.step_count < steps and self.stop_reason is None:
                t0 = time.perf_counter()
                batch = next(it, None)
                if batch is None:
                    self.request_stop("batches exhausted")
                    break
                full = len(batch)
                for cb in self._active:
                    batch = cb.on_batch(self, batch)
                r = self.step(batch, denominator=full)
                self.train_seconds += time.perf_counter() - t0
                results.append(r)
                for cb in self._active:
                    cb.on_step_end(self, r)
            if self.stop_reason is None:
                self.stop_reason = "steps"
            for cb in self._active:
                cb.on_fit_end(self)
        finally:
            self._active = list(self.callbacks)  # type: ignore[arg-type]
        return results
