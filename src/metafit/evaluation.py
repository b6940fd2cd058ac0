"""Honest evaluation: mean and 95% confidence interval over many held-out tasks.

The interval is ``mean ± 1.96 * std / sqrt(n)`` (normal approximation of the t interval, exact
to three digits for n >= 600; the sample standard deviation uses ``n - 1``). Gradient-based
learners also get the adaptation curve: the query metric after 0, 1, ..., ``steps`` inner
updates, each point with its own interval.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from metafit.algorithms.base import (
    Algorithm,
    GradientLearner,
    MetaParams,
    check_inner_lr,
    check_steps,
    clone_meta_params,
)
from metafit.data.task import Task, TaskBatch
from metafit.functional import Buffers

__all__ = ["Summary", "EvalResult", "summarize", "evaluate", "Z95"]

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Summary:
    """Mean and 95% confidence half-width of a per-task metric."""

    mean: float
    ci95: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.ci95:.2g}"


def summarize(values: Sequence[float] | Tensor) -> Summary:
    """:class:`Summary` of per-task values (n >= 1; the interval is 0 for n = 1)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = int(v.numel())
    if n == 0:
        raise ValueError("summarize needs at least one value")
    std = float(v.std(unbiased=True)) if n > 1 else 0.0
    return Summary(mean=float(v.mean()), ci95=Z95 * std / math.sqrt(n), std=std, n=n)


@dataclass
class EvalResult:
    """Evaluation of one learner on a fixed list of tasks.

    Attributes:
        metrics: ``{metric: Summary}`` at the evaluation setting (e.g. after ``eval_inner_steps``).
        per_task: ``{metric: list of per-task values}`` at that setting.
        curve: ``{metric: [Summary after 0 steps, after 1 step, ...]}`` for gradient-based
            learners (empty otherwise).
        steps: The inner steps of the evaluation setting (``None`` for non-gradient learners).
        n_tasks: Number of tasks.
        seconds: Wall time of the evaluation.
    """

    metrics: dict[str, Summary]
    per_task: dict[str, list[float]]
    curve: dict[str, list[Summary]] = field(default_factory=dict)
    steps: int | None = None
    n_tasks: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "metrics": {k: asdict(v) for k, v in self.metrics.items()},
            "curve": {k: [asdict(s) for s in v] for k, v in self.curve.items()},
            "per_task": self.per_task,
            "steps": self.steps,
            "n_tasks": self.n_tasks,
            "seconds": self.seconds,
        }


def _task_list(tasks: TaskBatch | Sequence[Task]) -> list[Task]:
    return list(tasks)


def evaluate(
    algorithm: Algorithm,
    model: nn.Module,
    meta_params: MetaParams,
    tasks: TaskBatch | Sequence[Task],
    *,
    buffers: Buffers | None = None,
    steps: int | None = None,
    lr: float | None = None,
    curve_steps: int | None = None,
    chunk: int = 0,
) -> EvalResult:
    """Adapts to each task's support set and scores its query set.

    Args:
        algorithm: The learner.
        model: The module the learner runs.
        meta_params: Trained meta-parameters (they are detached; nothing is modified).
        tasks: Held-out tasks, ideally a fixed seeded list shared by every learner.
        buffers: Model buffers (default: none).
        steps: Inner steps at the evaluation setting (gradient-based learners; default the
            learner's ``eval_inner_steps``/``inner_steps``).
        lr: Inner step size (default the learner's evaluation step size).
        curve_steps: Also record the adaptation curve up to this many steps (default ``steps``).
        chunk: For gradient-based learners, adapt this many tasks at once with ``torch.func.vmap``
            (0 = one task at a time). Same numbers, faster for small models.

    Returns:
        :class:`EvalResult`.
    """
    t0 = time.perf_counter()
    buffers = buffers or {}
    if steps is not None:
        check_steps("steps", steps)
    if lr is not None:
        check_inner_lr("lr", lr)
    if curve_steps is not None:
        check_steps("curve_steps", curve_steps)
    if not algorithm.spec.inner_loop and (steps is not None or lr is not None or curve_steps is not None):
        raise ValueError(
            f"steps, lr and curve_steps are inner-loop settings, but {type(algorithm).__name__} has no inner loop "
            "(leave them unset)"
        )
    mp = clone_meta_params(meta_params, requires_grad=False)
    try:  # tasks are checked when built; this catches tensors changed in place since
        if isinstance(tasks, TaskBatch):
            tasks.check_finite()
        task_list = _task_list(tasks)
        for task in task_list if not isinstance(tasks, TaskBatch) else ():
            task.check_finite()
    except ValueError as e:
        raise ValueError(f"evaluate: tasks: {e}") from None
    if not task_list:
        raise ValueError("evaluate needs at least one task")
    per_task: dict[str, list[float]] = {}
    curve_vals: dict[str, list[list[float]]] = {}
    eval_steps: int | None = None
    if algorithm.spec.inner_loop:
        assert isinstance(algorithm, GradientLearner)
        settings = algorithm.eval_settings()
        eval_steps = settings.steps if steps is None else steps
        lr = settings.lr if lr is None else lr
        n_curve = max(eval_steps, curve_steps if curve_steps is not None else eval_steps)
        curves = _curves(algorithm, model, mp, buffers, tasks, task_list, n_curve, lr, chunk)
        for k, c in curves.items():  # c: (n_tasks, n_curve + 1)
            curve_vals[k] = c.T.tolist()
            per_task[k] = c[:, eval_steps].tolist()
    else:
        # Learners without inner steps: the query metrics of ``loss`` ARE the metrics after
        # adaptation (adapt + predict on the query set), computed without a graph.
        for task in task_list:
            with torch.no_grad():
                _, m = algorithm.loss(model, mp, buffers, task)
            for k, v in m.items():
                per_task.setdefault(k, []).append(float(v))
    return EvalResult(
        metrics={k: summarize(v) for k, v in per_task.items()},
        per_task=per_task,
        curve={k: [summarize(row) for row in rows] for k, rows in curve_vals.items()},
        steps=eval_steps,
        n_tasks=len(task_list),
        seconds=time.perf_counter() - t0,
    )


def _curves(
    algorithm: Any,
    model: nn.Module,
    mp: MetaParams,
    buffers: Buffers,
    tasks: TaskBatch | Sequence[Task],
    task_list: list[Task],
    steps: int,
    lr: float | None,
    chunk: int,
) -> dict[str, Tensor]:
    rows: list[dict[str, Tensor]] = []
    if chunk and isinstance(tasks, TaskBatch):

        def one(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> dict[str, Tensor]:
            return algorithm.adaptation_curve(
                model, mp, buffers, Task(sx, sy, qx, qy, n_way=tasks.n_way), steps=steps, lr=lr
            )

        for part in tasks.chunks(chunk):
            rows.append(
                torch.func.vmap(one, randomness="different")(part.support_x, part.support_y, part.query_x, part.query_y)
            )
        return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
    for task in task_list:
        rows.append(algorithm.adaptation_curve(model, mp, buffers, task, steps=steps, lr=lr))
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
