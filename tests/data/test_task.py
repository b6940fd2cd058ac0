"""Task / TaskBatch validation and stacking."""

from __future__ import annotations

import pytest
import torch

from metafit.data.task import Task, TaskBatch, stack_tasks


def _task(s: int = 4, q: int = 6) -> Task:
    return Task(
        torch.zeros(s, 2),
        torch.zeros(s, dtype=torch.long),
        torch.zeros(q, 2),
        torch.zeros(q, dtype=torch.long),
        n_way=2,
    )


def test_task_rejects_mismatched_lengths_naming_both_arguments() -> None:
    with pytest.raises(ValueError, match="support_x and support_y"):
        Task(torch.zeros(4, 2), torch.zeros(3), torch.zeros(6, 2), torch.zeros(6))


def test_task_rejects_different_example_shapes() -> None:
    with pytest.raises(ValueError, match="per-example shape"):
        Task(torch.zeros(4, 2), torch.zeros(4), torch.zeros(6, 3), torch.zeros(6))


def test_task_is_frozen() -> None:
    t = _task()
    with pytest.raises(AttributeError):
        t.n_way = 3  # type: ignore[misc]


def test_stack_and_index_round_trip() -> None:
    tasks = [_task() for _ in range(3)]
    b = stack_tasks(tasks)
    assert len(b) == 3 and b.support_x.shape == (3, 4, 2) and b.n_way == 2
    assert torch.equal(b[1].query_x, tasks[1].query_x)
    assert [len(c) for c in b.chunks(2)] == [2, 1]


def test_stack_rejects_variable_shot_tasks() -> None:
    with pytest.raises(ValueError, match="variable-way or variable-shot"):
        stack_tasks([_task(4), _task(5)])


def test_non_finite_data_is_refused_when_a_task_is_built() -> None:
    with pytest.raises(ValueError, match="support_x contains 1 non-finite value"):
        Task(torch.tensor([[float("nan")]]), torch.zeros(1), torch.zeros(1, 1), torch.zeros(1))
    with pytest.raises(ValueError, match="query_x contains 1 non-finite value"):
        TaskBatch(torch.zeros(1, 1, 1), torch.zeros(1, 1), torch.full((1, 1, 1), float("inf")), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="query_y contains 1 non-finite value"):
        Task(torch.zeros(1, 1), torch.zeros(1), torch.zeros(1, 1), torch.tensor([float("nan")]))


def test_to_keeps_integer_labels() -> None:
    t = _task().to(torch.float64)
    assert t.support_x.dtype == torch.float64 and t.support_y.dtype == torch.long
