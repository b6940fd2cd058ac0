"""Ordinary mini-batches over all classes, for supervised pretraining through the engine.

:class:`ClassBatchSampler` yields each mini-batch as a :class:`~metafit.data.task.TaskBatch` with
one task (``T = 1``):

* the **query** set is the mini-batch, with the dataset's **global** class ids as labels and
  ``n_way = dataset.num_classes``;
* the **support** set is **empty** (``S = 0``: shapes ``(1, 0, *example_shape)`` and ``(1, 0)``).
  :class:`~metafit.data.task.Task` allows an empty support set, and an empty support is how
  :class:`~metafit.algorithms.pretrain.Pretrain` tells a pretraining batch from a few-shot episode
  (a static shape, so the choice is vmap- and compile-safe).

The order is epoch-wise: each epoch is a fresh random permutation of all examples drawn from the
sampler's CPU ``torch.Generator``, cut into consecutive batches of ``batch_size``; the incomplete
trailing batch of an epoch is dropped (every batch has the same shape). Pass the dataset of the
**training classes only** (e.g. :func:`metafit.data.omniglot.omniglot_split`'s background split, or
``dataset.subset_classes(train_ids)``): the sampler sees nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from metafit.data.datasets import LabelledDataset
from metafit.data.task import TaskBatch

__all__ = ["ClassBatchSampler"]

Augment = Callable[[Tensor, torch.Generator], Tensor]


class ClassBatchSampler:
    """Endless stream of shuffled mini-batches with global labels (see the module docstring).

    Args:
        dataset: The training classes.
        batch_size: Examples per batch (``<= len(dataset)``).
        generator: CPU ``torch.Generator``, the only source of randomness.
        augment: Optional ``augment(x, generator) -> x`` applied to the batch inputs, shape
            ``(1, batch_size, *example_shape)`` (the :class:`~metafit.data.sampling.EpisodeSampler`
            convention).

    Yields:
        :class:`TaskBatch` with ``query_x (1, B, *example_shape)``, ``query_y (1, B)`` (int64 in
        ``0..C-1``), empty ``support_x (1, 0, *example_shape)``, ``support_y (1, 0)`` and
        ``n_way = C = dataset.num_classes``.

    Attributes:
        epoch: Completed passes over the dataset.
    """

    def __init__(
        self,
        dataset: LabelledDataset,
        batch_size: int,
        *,
        generator: torch.Generator,
        augment: Augment | None = None,
    ) -> None:
        if not isinstance(dataset, LabelledDataset):
            raise TypeError(f"dataset must be a LabelledDataset, got {type(dataset).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if batch_size > len(dataset):
            raise ValueError(f"batch_size={batch_size} exceeds the number of examples in the dataset ({len(dataset)})")
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise TypeError(f"generator must be a CPU torch.Generator, got {generator!r}")
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be callable or None, got {type(augment).__name__}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.generator = generator
        self.augment = augment
        self.epoch = 0
        self._perm: Tensor | None = None
        self._pos = 0

    @property
    def n_classes(self) -> int:
        """Number of classes ``C`` (the ``n_way`` of every batch)."""
        return self.dataset.num_classes

    def batches_per_epoch(self) -> int:
        """Full batches in one pass over the dataset."""
        return len(self.dataset) // self.batch_size

    def _next_indices(self) -> Tensor:
        b = self.batch_size
        if self._perm is None or self._pos + b > self._perm.numel():
            if self._perm is not None:
                self.epoch += 1
            self._perm = torch.randperm(len(self.dataset), generator=self.generator)
            self._pos = 0
        idx = self._perm[self._pos : self._pos + b]
        self._pos += b
        return idx

    def sample_batch(self) -> TaskBatch:
        """The next mini-batch as a one-task :class:`TaskBatch` with an empty support set."""
        idx = self._next_indices()
        x, y = self.dataset.x, self.dataset.y
        qx = torch.index_select(x, 0, idx.to(x.device))[None]
        if self.augment is not None:
            qx = self.augment(qx, self.generator)
        qy = torch.index_select(y, 0, idx.to(y.device))[None]
        sx = qx.new_empty((1, 0, *qx.shape[2:]))
        sy = qy.new_empty((1, 0))
        return TaskBatch(sx, sy, qx, qy, n_way=self.n_classes)

    def __iter__(self) -> Iterator[TaskBatch]:
        while True:
            yield self.sample_batch()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the stream exactly: generator state, permutation, position."""
        return {
            "generator": self.generator.get_state(),
            "perm": None if self._perm is None else self._perm.clone(),
            "pos": self._pos,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`."""
        self.generator.set_state(state["generator"])
        self._perm = None if state["perm"] is None else state["perm"].clone()
        self._pos = int(state["pos"])
        self.epoch = int(state["epoch"])
