"""Callbacks of the one training loop, :meth:`metafit.engine.Trainer.fit`.

Each concern of a training run is a small :class:`~metafit.engine.Callback`:

* :class:`JsonlLog`: one JSON row per logged step in a ``metrics.jsonl`` file;
* :class:`Validation`: scores fixed held-out tasks every N steps and/or every N seconds of
  training (its time is not counted as training time), keeps the best score;
* :class:`Checkpointing`: writes resumable checkpoints (:mod:`metafit.checkpoint`) every N steps
  and at the end, keeping the last few and the best;
* :class:`TimeBudget`: stops after a number of training seconds;
* :class:`ProgressBar`: a tqdm bar on stderr (``tqdm`` is an optional dependency);
* :class:`TensorBoard`: scalars as TensorBoard event files (optional ``tensorboard`` package);
* :class:`StepHook`: calls a function after every step (e.g. to schedule a learner's settings);
* :class:`~metafit.engine.DivergenceGuard` (in the engine) refuses non-finite steps;
  :class:`metafit.distributed.DistributedReduce` shards batches and all-reduces gradients.

On several ranks (``torch.distributed``), only rank 0 writes files; decisions that change the
number of steps (time budget) are agreed by all ranks, so they stop together.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from metafit.checkpoint import latest_checkpoint, prune_checkpoints, save_checkpoint, trainer_state
from metafit.data.task import Task, TaskBatch
from metafit.engine import Callback, StepResult, Trainer
from metafit.evaluation import EvalResult, evaluate

__all__ = [
    "JsonlLog",
    "Validation",
    "Checkpointing",
    "TimeBudget",
    "ProgressBar",
    "TensorBoard",
    "StepHook",
    "LearnerSchedule",
    "is_main_process",
    "read_jsonl",
]

Row = dict[str, Any]


def is_main_process() -> bool:
    """True without a process group, or on rank 0 of one (the rank that writes files)."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _agree_any(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any rank (no-op without a process group)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def read_jsonl(path: str | Path) -> list[Row]:
    """Rows of a JSON-lines file (a torn last line from a crash is skipped)."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class JsonlLog(Callback):
    """Appends a ``{"kind": "train", "step", metrics..., "lr", "seconds", "train_seconds"}`` row
    every ``every`` steps (and at the last step) to ``path``; other callbacks add rows with
    :meth:`write`.

    Args:
        path: The ``metrics.jsonl`` file (appended to: a resumed run continues it).
        every: Steps between rows.
        total_steps: The run's last step (always logged).
    """

    def __init__(self, path: str | Path, *, every: int = 10, total_steps: int | None = None) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        self.path = Path(path)
        self.every = every
        self.total_steps = total_steps
        self.rows: list[Row] = []
        self._f: Any = None

    def write(self, row: Row) -> None:
        """Appends one row (rank 0 only) and keeps it in :attr:`rows`."""
        self.rows.append(row)
        if not is_main_process():
            return
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        s = result.step
        if s % self.every == 0 or s == self.total_steps:
            metrics = {k: v for k, v in result.metrics.items() if k != "n_tasks"}
            self.write(
                {
                    "kind": "train",
                    "step": s,
                    **metrics,
                    "lr": result.lr,
                    "seconds": result.seconds,
                    "train_seconds": trainer.train_seconds,
                    "path": trainer.resolved_path,
                }
            )

    def on_fit_end(self, trainer: Trainer) -> None:
        self.close()

    def close(self) -> None:
        """Closes the file (it reopens on the next write)."""
        if self._f is not None:
            self._f.close()
            self._f = None


class Validation(Callback):
    """Scores fixed held-out tasks during training and keeps the best score.

    Args:
        tasks: The held-out tasks (the same every time).
        metric: The metric that ranks checkpoints (``"accuracy"``, ``"mse"``, ...).
        higher_is_better: Whether a larger ``metric`` is better.
        every_steps: Validate every this many steps (0: never by steps).
        every_seconds: Validate every this many seconds of TRAINING time (0: never by time);
            the validation's own time is not counted.
        at_end: Also validate after the last step.
        kind: The ``"kind"`` of the rows this callback writes (``"val"``; a test-set monitor that
            never selects checkpoints writes ``"monitor"``).
        select: Whether this callback's best score picks the best checkpoint.
        sink: Where rows go (e.g. :meth:`JsonlLog.write`); each row holds ``step``,
            ``train_seconds``, the metric's mean and 95% half-width.
        evaluate_fn: ``fn(trainer, tasks) -> EvalResult`` (default :func:`metafit.evaluation.evaluate`
            with the trainer's learner, model, meta-parameters and buffers).
    """

    def __init__(
        self,
        tasks: TaskBatch | Sequence[Task],
        *,
        metric: str,
        higher_is_better: bool,
        every_steps: int = 0,
        every_seconds: float = 0.0,
        at_end: bool = True,
        kind: str = "val",
        select: bool = True,
        sink: Callable[[Row], None] | None = None,
        evaluate_fn: Callable[[Trainer, Any], EvalResult] | None = None,
    ) -> None:
        if isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 0:
            raise ValueError(f"every_steps must be an int >= 0, got {every_steps!r}")
        if not (isinstance(every_seconds, (int, float)) and math.isfinite(every_seconds) and every_seconds >= 0):
            raise ValueError(f"every_seconds must be a finite number >= 0, got {every_seconds!r}")
        self.tasks = tasks
        self.metric = metric
        self.higher = higher_is_better
        self.every_steps = every_steps
        self.every_seconds = float(every_seconds)
        self.at_end = at_end
        self.kind = kind
        self.select = select
        self.sink = sink
        self.evaluate_fn = evaluate_fn
        self.best_step: int | None = None
        self.best_value: float | None = None
        self.next_seconds = self.every_seconds
        self.history: list[Row] = []
        self._last_step: int | None = None

    def _run(self, trainer: Trainer) -> None:
        if not is_main_process() or self._last_step == trainer.step_count:
            return
        self._last_step = trainer.step_count
        if self.evaluate_fn is not None:
            res = self.evaluate_fn(trainer, self.tasks)
        else:
            res = evaluate(trainer.algorithm, trainer.model, trainer.meta_params, self.tasks, buffers=trainer.buffers)
        s = res.metrics[self.metric]
        row = {
            "kind": self.kind,
            "step": trainer.step_count,
            "train_seconds": trainer.train_seconds,
            self.metric: s.mean,
            f"{self.metric}_ci95": s.ci95,
            "episodes": s.n,
        }
        self.history.append(row)
        if self.sink is not None:
            self.sink(row)
        if (
            self.select
            and math.isfinite(s.mean)
            and (self.best_value is None or (s.mean > self.best_value if self.higher else s.mean < self.best_value))
        ):
            self.best_step, self.best_value = trainer.step_count, s.mean

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        due = self.every_steps and result.step % self.every_steps == 0
        if self.every_seconds and trainer.train_seconds >= self.next_seconds:
            due = True
            while self.next_seconds <= trainer.train_seconds:
                self.next_seconds += self.every_seconds
        if due:
            self._run(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.at_end:
            self._run(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"best_step": self.best_step, "best_value": self.best_value, "next_seconds": self.next_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_step = state.get("best_step")
        self.best_value = state.get("best_value")
        self.next_seconds = float(state.get("next_seconds", self.every_seconds))


class Checkpointing(Callback):
    """Writes resumable checkpoints of the trainer (rank 0 only).

    Args:
        folder: The checkpoints folder.
        every: Steps between checkpoints (one is always written after the last step).
        keep_last: Checkpoints kept besides the best one.
        generator: The task sampler's generator, saved so that a resumed run draws the same tasks.
        meta: JSON-able metadata stored in every checkpoint (config, preprocessing, ...), or a
            function returning it.
        best: The :class:`Validation` whose best step is kept when pruning (and recorded).
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        every: int,
        keep_last: int = 3,
        generator: torch.Generator | None = None,
        meta: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
        best: Validation | None = None,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"keep_last must be an int >= 1, got {keep_last!r}")
        self.folder = Path(folder)
        self.every = every
        self.keep_last = keep_last
        self.generator = generator
        self.meta = meta
        self.best = best
        self.last: Path | None = latest_checkpoint(self.folder)
        self._written_step: int | None = None
        self.metrics: dict[str, Any] = {}

    def save(self, trainer: Trainer) -> Path | None:
        """Writes a checkpoint of the trainer's current state; returns its JSON path."""
        if not is_main_process() or self._written_step == trainer.step_count:
            return self.last
        tensors, meta = trainer_state(trainer, generator=self.generator)
        extra = self.meta() if callable(self.meta) else dict(self.meta or {})
        best_step = self.best.best_step if self.best is not None else None
        meta.update(extra)
        meta.update(
            {
                "metrics": self.metrics,
                "best_step": best_step,
                "best_value": self.best.best_value if self.best is not None else None,
            }
        )
        if self.best is not None:
            meta["callbacks"][type(self.best).__name__] = self.best.state_dict()
        self.last = save_checkpoint(self.folder, trainer.step_count, tensors, meta)
        self._written_step = trainer.step_count
        prune_checkpoints(self.folder, self.keep_last, {best_step} if best_step is not None else set())
        return self.last

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        self.metrics = {k: v for k, v in result.metrics.items() if k != "n_tasks"}
        if result.step % self.every == 0:
            self.save(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.save(trainer)


class TimeBudget(Callback):
    """Stops training once :attr:`Trainer.train_seconds` reaches ``seconds`` (all ranks together)."""

    def __init__(self, seconds: float) -> None:
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or seconds <= 0
        ):
            raise ValueError(f"seconds must be a finite number > 0, got {seconds!r}")
        self.seconds = float(seconds)

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if _agree_any(trainer.train_seconds >= self.seconds):
            trainer.request_stop(f"time budget of {self.seconds / 60:g} min reached")


class ProgressBar(Callback):
    """A tqdm progress bar on stderr (rank 0 only; needs the optional ``tqdm`` package)."""

    def __init__(self, total: int, *, desc: str = "", keys: Sequence[str] = ("loss", "accuracy", "mse")) -> None:
        self.total = total
        self.desc = desc
        self.keys = tuple(keys)
        self.bar: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if is_main_process():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.total, initial=trainer.step_count, desc=self.desc, unit="step", dynamic_ncols=True
            )

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{result.metrics[k]:.4g}" for k in self.keys if k in result.metrics})

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TensorBoard(Callback):
    """Training metrics (and rows given to :meth:`write`) as TensorBoard event files.

    Needs the optional ``tensorboard`` package (``pip install metafit[tensorboard]``).

    Args:
        log_dir: Folder of the event files.
        every: Steps between scalar writes.
    """

    def __init__(self, log_dir: str | Path, *, every: int = 10) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard missing
            raise ImportError(
                f"TensorBoard logging needs the tensorboard package (pip install tensorboard): {e}"
            ) from None
        self.every = every
        self.writer = SummaryWriter(str(log_dir)) if is_main_process() else None

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if self.writer is not None and result.step % self.every == 0:
            for k, v in result.metrics.items():
                if k != "n_tasks" and math.isfinite(v):
                    self.writer.add_scalar(f"train/{k}", v, result.step)
            self.writer.add_scalar("train/lr", result.lr, result.step)

    def write(self, row: Row) -> None:
        """Adds the numeric fields of a validation row as ``<kind>/<field>`` scalars."""
        if self.writer is None:
            return
        for k, v in row.items():
            if k not in ("kind", "step") and isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(f"{row.get('kind', 'val')}/{k}", v, row["step"])

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


class LearnerSchedule(Callback):
    """Before each step, ``trainer.algorithm = trainer.algorithm.at_iteration(trainer.step_count)``.

    For learners whose settings follow the meta-iteration (MAML++'s multi-step loss weights and
    derivative-order annealing): step ``i`` (0-based) runs at iteration ``i``, also after a resume.
    """

    def on_batch(self, trainer: Trainer, batch: Any) -> Any:
        at = getattr(trainer.algorithm, "at_iteration", None)
        if at is None:
            raise TypeError(
                f"LearnerSchedule needs a learner with at_iteration(i), got {type(trainer.algorithm).__name__}"
            )
        trainer.algorithm = at(trainer.step_count)
        return batch


class StepHook(Callback):
    """Calls ``fn(trainer)`` before every step's batch is used (e.g. a learner schedule)."""

    def __init__(self, fn: Callable[[Trainer], None]) -> None:
        self.fn = fn

    def on_batch(self, trainer: Trainer, batch: Any) -> Any:
        self.fn(trainer)
        return batch
