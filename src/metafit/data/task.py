"""Tasks: the unit of meta-learning.

A :class:`Task` holds one task's support set (what the learner adapts on) and query set (what
the adapted learner is scored on). A :class:`TaskBatch` stacks tasks of identical shapes along
a leading task dimension ``T`` so that the engine can map a loss over them with
``torch.func.vmap``. Both are frozen dataclasses and registered as torch pytrees: vmap over a
``TaskBatch`` yields ``Task`` objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from metafit.functional import under_transform

__all__ = ["Task", "TaskBatch", "stack_tasks"]


def _check_pair(name_x: str, x: Tensor, name_y: str, y: Tensor, lead: int) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{name_x} and {name_y} must be torch.Tensor, got {type(x).__name__} and {type(y).__name__}")
    if x.dim() <= lead or y.dim() < lead + 1:
        raise ValueError(
            f"{name_x} must have at least {lead + 1} dimensions and {name_y} at least {lead + 1}; "
            f"got shapes {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[: lead + 1] != y.shape[: lead + 1]:
        raise ValueError(
            f"{name_x} and {name_y} must agree on their first {lead + 1} dimension(s) "
            f"(examples); got {tuple(x.shape)} and {tuple(y.shape)}"
        )


@dataclass(frozen=True)
class Task:
    """One few-shot task.

    Attributes:
        support_x: Support inputs, shape ``(S, *input_shape)``.
        support_y: Support targets, shape ``(S,)`` (class labels, int64) or ``(S, *target_shape)``
            (regression, floating point).
        query_x: Query inputs, shape ``(Q, *input_shape)``.
        query_y: Query targets, shape ``(Q,)`` or ``(Q, *target_shape)``.
        n_way: Number of classes for classification tasks (labels are ``0..n_way-1``), or
            ``None`` for regression. It is static metadata (not mapped by vmap), so learners
            such as Prototypical Networks can build fixed-size prototype tensors.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    n_way: int | None = None

    def __post_init__(self) -> None:
        # Under torch.func.vmap the tensors are BatchedTensors whose shapes are per-task:
        # the same checks apply.
        _check_pair("support_x", self.support_x, "support_y", self.support_y, 0)
        _check_pair("query_x", self.query_x, "query_y", self.query_y, 0)
        if self.support_x.shape[1:] != self.query_x.shape[1:]:
            raise ValueError(
                "support_x and query_x must have the same per-example shape; got "
                f"{tuple(self.support_x.shape[1:])} and {tuple(self.query_x.shape[1:])}"
            )
        if self.n_way is not None and (not isinstance(self.n_way, int) or self.n_way < 1):
            raise ValueError(f"n_way must be a positive int or None, got {self.n_way!r}")
        if not under_transform(self.support_x, self.query_x):
            self.check_finite()

    @property
    def n_support(self) -> int:
        """Number of support examples ``S``."""
        return int(self.support_x.shape[0])

    @property
    def n_query(self) -> int:
        """Number of query examples ``Q``."""
        return int(self.query_x.shape[0])

    def to(self, *args: Any, **kwargs: Any) -> Task:
        """Returns a copy with every tensor moved/cast like :meth:`torch.Tensor.to`.

        Integer label tensors keep their dtype when a floating dtype is requested.
        """
        return Task(*(_to(getattr(self, f), *args, **kwargs) for f in _TENSOR_FIELDS), n_way=self.n_way)

    def check_finite(self) -> None:
        """Raises ValueError if any input or target contains NaN or inf."""
        _check_finite(self)


_TENSOR_FIELDS = ("support_x", "support_y", "query_x", "query_y")


def _check_finite(obj: Any) -> None:
    for name in _TENSOR_FIELDS:
        t = getattr(obj, name)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(
                f"{name} contains {bad} non-finite value(s) (NaN or inf); expected finite inputs and targets"
            )


def _to(t: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    dtype = kwargs.get("dtype") or next((a for a in args if isinstance(a, torch.dtype)), None)
    if dtype is not None and dtype.is_floating_point and not t.is_floating_point():
        kwargs = {k: v for k, v in kwargs.items() if k != "dtype"}
        args = tuple(a for a in args if not isinstance(a, torch.dtype))
        return t.to(*args, **kwargs) if (args or kwargs) else t
    return t.to(*args, **kwargs)


@dataclass(frozen=True)
class TaskBatch:
    """``T`` tasks of identical shapes stacked along a leading task dimension.

    Attributes:
        support_x: ``(T, S, *input_shape)``.
        support_y: ``(T, S)`` or ``(T, S, *target_shape)``.
        query_x: ``(T, Q, *input_shape)``.
        query_y: ``(T, Q)`` or ``(T, Q, *target_shape)``.
        n_way: As in :class:`Task`, shared by every task of the batch.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    n_way: int | None = None

    def __post_init__(self) -> None:
        _check_pair("support_x", self.support_x, "support_y", self.support_y, 1)
        _check_pair("query_x", self.query_x, "query_y", self.query_y, 1)
        if self.support_x.shape[0] != self.query_x.shape[0]:
            raise ValueError(
                "support and query must hold the same number of tasks; got "
                f"{self.support_x.shape[0]} and {self.query_x.shape[0]}"
            )
        if self.support_x.shape[2:] != self.query_x.shape[2:]:
            raise ValueError(
                "support_x and query_x must have the same per-example shape; got "
                f"{tuple(self.support_x.shape[2:])} and {tuple(self.query_x.shape[2:])}"
            )
        if self.n_way is not None and (not isinstance(self.n_way, int) or self.n_way < 1):
            raise ValueError(f"n_way must be a positive int or None, got {self.n_way!r}")
        if not under_transform(self.support_x, self.query_x):
            self.check_finite()

    def __len__(self) -> int:
        return int(self.support_x.shape[0])

    def __getitem__(self, i: int) -> Task:
        # A slice of a batch that passed its checks when it was built: no second check per task
        # (the per-task loop path would pay it on every step).
        return _trusted(Task, [getattr(self, f)[i] for f in _TENSOR_FIELDS], self.n_way)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (self[i] for i in range(len(self)))

    def to(self, *args: Any, **kwargs: Any) -> TaskBatch:
        """Returns a copy with every tensor moved/cast like :meth:`torch.Tensor.to`."""
        return TaskBatch(*(_to(getattr(self, f), *args, **kwargs) for f in _TENSOR_FIELDS), n_way=self.n_way)

    def split(self, sizes: Sequence[int]) -> list[TaskBatch]:
        """Splits the batch into consecutive sub-batches of the given sizes (sum must be T)."""
        if sum(sizes) != len(self) or any(s < 0 for s in sizes):
            raise ValueError(f"sizes must be non-negative and sum to {len(self)}, got {list(sizes)}")
        out, start = [], 0
        for s in sizes:
            out.append(
                TaskBatch(
                    *(getattr(self, f)[start : start + s] for f in _TENSOR_FIELDS),
                    n_way=self.n_way,
                )
            )
            start += s
        return out

    def chunks(self, size: int) -> list[TaskBatch]:
        """Splits the batch into chunks of at most ``size`` tasks."""
        n = len(self)
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        return self.split([min(size, n - i) for i in range(0, n, size)] if n else [])

    def check_finite(self) -> None:
        """Raises ValueError if any input or target contains NaN or inf."""
        _check_finite(self)


def stack_tasks(tasks: Sequence[Task]) -> TaskBatch:
    """Stacks tasks of identical shapes into a :class:`TaskBatch`.

    Raises:
        ValueError: if ``tasks`` is empty or the tasks differ in shapes or ``n_way``.
    """
    if len(tasks) == 0:
        raise ValueError("stack_tasks needs at least one task, got an empty sequence")
    ways = {t.n_way for t in tasks}
    if len(ways) != 1:
        raise ValueError(f"all tasks must share n_way to be stacked, got {sorted(map(str, ways))}")
    for name in _TENSOR_FIELDS:
        shapes = {tuple(getattr(t, name).shape) for t in tasks}
        if len(shapes) != 1:
            raise ValueError(
                f"tasks differ in {name} shape ({sorted(shapes)[:3]}...): variable-way or "
                "variable-shot tasks cannot be stacked; pass them as a list (per-task loop path)"
            )
    return TaskBatch(
        *(torch.stack([getattr(t, f) for t in tasks]) for f in _TENSOR_FIELDS),
        n_way=tasks[0].n_way,
    )


def _trusted(cls: type, values: Sequence[Tensor], n_way: int | None) -> Any:
    """An instance of ``cls`` from already-checked tensors, without running ``__post_init__``."""
    obj = object.__new__(cls)
    for f, v in zip(_TENSOR_FIELDS, values):
        object.__setattr__(obj, f, v)
    object.__setattr__(obj, "n_way", n_way)
    return obj


def _flatten(obj: Any) -> tuple[list[Tensor], Any]:
    return [getattr(obj, f) for f in _TENSOR_FIELDS], obj.n_way


def _register(cls: type) -> None:
    def unflatten(values: list[Tensor], context: Any) -> Any:
        return _trusted(cls, values, context)

    pytree.register_pytree_node(
        cls,
        _flatten,
        unflatten,
        serialized_type_name=f"metafit.data.task.{cls.__name__}",
    )


# Registered as pytrees so that torch.utils._pytree utilities (and torch.func transforms)
# can flatten tasks; n_way travels as static context.
_register(Task)
_register(TaskBatch)
