"""Episode samplers: N-way K-shot few-shot tasks drawn from a :class:`LabelledDataset`.

* :class:`EpisodeSampler`: fixed-shape N-way K-shot episodes, stacked into
  :class:`~metafit.data.task.TaskBatch` objects (the vmap path of the engine). Index selection is
  vectorised over the whole batch and ``dataset.x`` is gathered once per batch for the support
  and once for the query set.
* :func:`fixed_episodes`: a seeded, reproducible held-out episode list (same seed, same tensors).
* :class:`VariableEpisodeSampler`: Meta-Dataset-style variable-way variable-shot episodes
  (Triantafillou et al., ICLR 2020), yielded one :class:`~metafit.data.task.Task` at a time.

All randomness comes from an explicit CPU ``torch.Generator``: no global ``random``,
``numpy.random`` or torch default-generator state is read or changed, so a sampler's stream is
a pure function of its generator state (which can be checkpointed with ``get_state``).

Within a task, labels ``0..n_way-1`` are assigned to the sampled classes in a random order;
support and query examples are grouped by label (label ``0`` first). Support and query never
share an example.

Rotation augmentation (Omniglot) is not done here: rotated copies are separate classes of the
dataset (:func:`metafit.data.omniglot.omniglot_split`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from metafit.data.datasets import LabelledDataset
from metafit.data.task import Task, TaskBatch

__all__ = ["EpisodeSampler", "VariableEpisodeSampler", "fixed_episodes"]

Augment = Callable[[Tensor, torch.Generator], Tensor]


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_generator(generator: object) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            "generator must be a torch.Generator (e.g. torch.Generator().manual_seed(seed)), "
            f"got {type(generator).__name__}"
        )
    if generator.device.type != "cpu":
        raise ValueError(
            f"generator must be a CPU torch.Generator (episodes are drawn on the CPU so that they "
            f"do not depend on the device), got one on {generator.device}"
        )
    return generator


def _check_dataset(dataset: object) -> LabelledDataset:
    if not isinstance(dataset, LabelledDataset):
        raise TypeError(f"dataset must be a LabelledDataset, got {type(dataset).__name__}")
    return dataset


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """``x[idx]`` for an index tensor of any shape: ``idx.shape + x.shape[1:]``."""
    flat = torch.index_select(x, 0, idx.reshape(-1).to(x.device))
    return flat.view(*idx.shape, *x.shape[1:])


def _distinct_classes(n_tasks: int, n_classes: int, n_way: int, g: torch.Generator) -> Tensor:
    """``(T, N)`` class ids: per row, ``N`` distinct classes in a uniformly random order.

    When duplicates are unlikely (``N (N-1) <= C / 2``), rows are drawn with ``randint`` and rows
    holding a repeated class are redrawn (rejection sampling: exact, and much cheaper than
    ranking all ``C`` classes); otherwise the top-``N`` of ``C`` i.i.d. uniform keys are taken.
    """
    if n_way * (n_way - 1) <= n_classes // 2:
        classes = torch.randint(n_classes, (n_tasks, n_way), generator=g)
        while n_way > 1:
            srt = classes.sort(dim=1).values
            bad = (srt[:, 1:] == srt[:, :-1]).any(dim=1)
            n_bad = int(bad.sum())
            if n_bad == 0:
                break
            classes[bad] = torch.randint(n_classes, (n_bad, n_way), generator=g)
        return classes
    keys = torch.rand(n_tasks, n_classes, generator=g)
    if n_way == n_classes:
        return keys.argsort(dim=1)
    return keys.topk(n_way, dim=1).indices


class EpisodeSampler:
    """Endless stream of batches of N-way K-shot classification episodes.

    Args:
        dataset: The classes to draw from.
        n_way: Classes per task ``N`` (``<= dataset.num_classes``).
        k_shot: Support examples per class ``K``.
        n_query: Query examples per class ``Q`` (``K + Q <= `` the smallest class size).
        tasks_per_batch: Tasks ``T`` per yielded batch.
        generator: CPU ``torch.Generator``, the only source of randomness.
        augment: Optional ``augment(x, generator) -> x`` applied to the gathered ``support_x`` and
            ``query_x`` of each batch (shape ``(T, S, *example_shape)``), e.g. random shifts. It
            must draw its randomness from the given generator.

    Yields:
        :class:`TaskBatch` with ``support_x (T, N*K, *example_shape)``, ``support_y (T, N*K)``,
        ``query_x (T, N*Q, *example_shape)``, ``query_y (T, N*Q)`` (int64 labels ``0..N-1``,
        grouped by label) and ``n_way = N``.

    Raises:
        TypeError: wrong argument types.
        ValueError: non-positive sizes, ``n_way`` above the number of classes, or
            ``k_shot + n_query`` above the smallest class size (the error names that class).
    """

    def __init__(
        self,
        dataset: LabelledDataset,
        n_way: int,
        k_shot: int,
        n_query: int,
        *,
        tasks_per_batch: int = 1,
        generator: torch.Generator,
        augment: Augment | None = None,
    ) -> None:
        self.dataset = _check_dataset(dataset)
        self.n_way = _check_int("n_way", n_way, 1)
        self.k_shot = _check_int("k_shot", k_shot, 1)
        self.n_query = _check_int("n_query", n_query, 1)
        self.tasks_per_batch = _check_int("tasks_per_batch", tasks_per_batch, 1)
        self.generator = _check_generator(generator)
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be callable or None, got {type(augment).__name__}")
        self.augment = augment
        if n_way > dataset.num_classes:
            raise ValueError(
                f"n_way={n_way} exceeds the number of classes in the dataset "
                f"({dataset.num_classes}); expected n_way <= {dataset.num_classes}"
            )
        sizes = dataset.class_sizes()
        smallest = int(torch.argmin(sizes))
        if k_shot + n_query > int(sizes[smallest]):
            raise ValueError(
                f"k_shot + n_query = {k_shot} + {n_query} = {k_shot + n_query} exceeds the size of "
                f"the smallest class {dataset.class_names[smallest]!r} (class {smallest}, "
                f"{int(sizes[smallest])} examples); every class needs k_shot + n_query distinct "
                "examples"
            )
        self._sizes = sizes
        self._table = dataset.index_table()
        self._equal = bool((sizes == sizes[0]).all())
        width = self._table.shape[1]
        # Positions past the end of a class (padding) get key -1 so that top-k never picks them.
        self._pad_mask = None if self._equal else torch.arange(width)[None, :] >= sizes[:, None]
        n, k, q = self.n_way, self.k_shot, self.n_query
        self._support_y = torch.arange(n).repeat_interleave(k)
        self._query_y = torch.arange(n).repeat_interleave(q)

    def _indices(self, n_tasks: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """Example indices ``(T, N*K)`` and ``(T, N*Q)`` of ``n_tasks`` episodes."""
        n, k, q = self.n_way, self.k_shot, self.n_query
        c_total, width = self._table.shape
        classes = _distinct_classes(n_tasks, c_total, n, g)
        keys = torch.rand(n_tasks, n, width, generator=g)
        if self._pad_mask is not None:
            keys.masked_fill_(self._pad_mask[classes], -1.0)
        pos = keys.topk(k + q, dim=2, sorted=True).indices  # (T, N, K+Q), distinct per class
        idx = self._table[classes.unsqueeze(-1), pos]  # (T, N, K+Q) example indices
        support = idx[:, :, :k].reshape(n_tasks, n * k)
        query = idx[:, :, k:].reshape(n_tasks, n * q)
        return support, query

    def sample_batch(self, n: int | None = None, generator: torch.Generator | None = None) -> TaskBatch:
        """Draws ``n`` tasks (default ``tasks_per_batch``) as one :class:`TaskBatch`.

        Args:
            n: Number of tasks ``T``.
            generator: Overrides the sampler's generator for this call.
        """
        n_tasks = self.tasks_per_batch if n is None else _check_int("n", n, 1)
        g = self.generator if generator is None else _check_generator(generator)
        s_idx, q_idx = self._indices(n_tasks, g)
        x = self.dataset.x
        sx, qx = _gather(x, s_idx), _gather(x, q_idx)
        if self.augment is not None:
            sx, qx = self.augment(sx, g), self.augment(qx, g)
        dev = self.dataset.y.device
        sy = self._support_y.to(dev).expand(n_tasks, -1).contiguous()
        qy = self._query_y.to(dev).expand(n_tasks, -1).contiguous()
        return TaskBatch(sx, sy, qx, qy, n_way=self.n_way)

    def sample_task(self, generator: torch.Generator | None = None) -> Task:
        """Draws one task (from ``generator`` if given, else the sampler's generator)."""
        return self.sample_batch(1, generator)[0]

    def __iter__(self) -> Iterator[TaskBatch]:
        while True:
            yield self.sample_batch()


def fixed_episodes(
    dataset: LabelledDataset, n_way: int, k_shot: int, n_query: int, n_episodes: int, *, seed: int
) -> TaskBatch:
    """A fixed, seeded list of held-out episodes (same seed and dataset: identical tensors).

    Args:
        dataset: Held-out classes.
        n_way: Classes per episode.
        k_shot: Support examples per class.
        n_query: Query examples per class.
        n_episodes: Number of episodes ``T``.
        seed: Seed of a fresh CPU ``torch.Generator`` (global RNG state is untouched).

    Returns:
        :class:`TaskBatch` of ``T`` episodes, shapes as in :class:`EpisodeSampler`.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    _check_int("n_episodes", n_episodes, 1)
    g = torch.Generator().manual_seed(seed)
    sampler = EpisodeSampler(dataset, n_way, k_shot, n_query, tasks_per_batch=n_episodes, generator=g)
    return sampler.sample_batch()


class VariableEpisodeSampler:
    """Meta-Dataset variable-way, variable-shot episodes (Triantafillou et al. 2020, §3.2).

    For each episode:

    1. Ways: ``N ~ U{min_ways .. min(max_ways, C)}`` over the ``C`` classes, then ``N`` distinct
       classes uniformly. With ``by_group=True`` (Omniglot): first a group (alphabet) uniformly
       among the groups with at least ``min_ways`` classes, then
       ``N ~ U{min_ways .. min(max_ways, classes in that group)}`` classes within it.
    2. Query: ``q = min(max_query, floor(min_c |c| / 2))`` examples for each class (balanced).
    3. Support size: ``beta ~ U(0, 1]``,
       ``|S| = min(max_support, sum_c ceil(beta * min(max_support_per_class, |c| - q)))``.
    4. Shots: weights ``|c| * exp(u_c)``, ``u_c ~ U(log 0.5, log 2)``, normalised to ``prop_c``;
       ``k_c = min(floor(prop_c * (|S| - N)) + 1, |c| - q)``. Every class gets at least one shot
       and ``sum_c k_c <= |S|``.

    Args:
        dataset: The classes to draw from (every class needs at least 2 examples).
        generator: CPU ``torch.Generator``, the only source of randomness.
        min_ways: Smallest ``N``.
        max_ways: Largest ``N``.
        max_query: Cap on query examples per class.
        max_support: Cap on the support-set size (``>= min_ways``).
        max_support_per_class: Cap on the per-class term of the support-size rule.
        by_group: Sample classes within one group (``dataset.groups`` must be set).

    Yields:
        :class:`Task` with ``support_x (sum_c k_c, *example_shape)``, ``support_y`` (labels
        ``0..N-1`` grouped by label), ``query_x (N*q, *example_shape)``, ``query_y`` and
        ``n_way = N``. Shapes vary between tasks, so tasks are not batched.
    """

    def __init__(
        self,
        dataset: LabelledDataset,
        *,
        generator: torch.Generator,
        min_ways: int = 5,
        max_ways: int = 50,
        max_query: int = 10,
        max_support: int = 500,
        max_support_per_class: int = 100,
        by_group: bool = False,
    ) -> None:
        self.dataset = _check_dataset(dataset)
        self.generator = _check_generator(generator)
        self.min_ways = _check_int("min_ways", min_ways, 1)
        self.max_ways = _check_int("max_ways", max_ways, 1)
        self.max_query = _check_int("max_query", max_query, 1)
        self.max_support = _check_int("max_support", max_support, 1)
        self.max_support_per_class = _check_int("max_support_per_class", max_support_per_class, 1)
        self.by_group = bool(by_group)
        if max_ways < min_ways:
            raise ValueError(f"max_ways must be >= min_ways={min_ways}, got max_ways={max_ways}")
        if max_support < min_ways:
            raise ValueError(f"max_support must be >= min_ways={min_ways} (one shot per class), got {max_support}")
        sizes = dataset.class_sizes()
        smallest = int(torch.argmin(sizes))
        if int(sizes[smallest]) < 2:
            raise ValueError(
                f"every class needs at least 2 examples (one query, one support), but class "
                f"{dataset.class_names[smallest]!r} (class {smallest}) has {int(sizes[smallest])}"
            )
        self._sizes = sizes
        self._table = dataset.index_table()
        if self.by_group:
            if dataset.groups is None:
                raise ValueError("by_group=True needs dataset.groups (one group per class), got None")
            members: dict[str, list[int]] = {}
            for c, grp in enumerate(dataset.groups):
                members.setdefault(grp, []).append(c)
            self._pools = [torch.tensor(v) for v in members.values() if len(v) >= min_ways]
            if not self._pools:
                biggest = max(len(v) for v in members.values())
                raise ValueError(
                    f"by_group=True needs a group with at least min_ways={min_ways} classes; the "
                    f"largest group has {biggest}"
                )
        else:
            if dataset.num_classes < min_ways:
                raise ValueError(
                    f"min_ways={min_ways} exceeds the number of classes in the dataset ({dataset.num_classes})"
                )
            self._pools = [torch.arange(dataset.num_classes)]
        if max_support < min(max_ways, max(p.numel() for p in self._pools)):
            raise ValueError(
                f"max_support={max_support} is below the largest possible way count "
                f"{min(max_ways, max(p.numel() for p in self._pools))}: a class could get no shot"
            )

    def sample_task(self, generator: torch.Generator | None = None) -> Task:
        """Draws one variable-way variable-shot task (step 1, then :meth:`task_for_classes`)."""
        g = self.generator if generator is None else _check_generator(generator)
        return self.task_for_classes(self.sample_classes(g), generator=g)

    def sample_classes(self, generator: torch.Generator | None = None) -> Tensor:
        """Step 1 only: the ``N`` class ids of one episode, int64 ``(N,)`` in a random order."""
        g = self.generator if generator is None else _check_generator(generator)
        if len(self._pools) == 1:
            pool = self._pools[0]
        else:
            pool = self._pools[int(torch.randint(len(self._pools), (1,), generator=g))]
        hi = min(self.max_ways, pool.numel())
        n = int(torch.randint(self.min_ways, hi + 1, (1,), generator=g))
        return pool[torch.randperm(pool.numel(), generator=g)[:n]]

    def task_for_classes(
        self,
        classes: Tensor,
        *,
        generator: torch.Generator | None = None,
        k_shot: int | None = None,
        n_query: int | None = None,
    ) -> Task:
        """Steps 2-4 for given classes (e.g. chosen from a class hierarchy); label ``j`` = ``classes[j]``.

        Args:
            classes: Distinct class ids of the dataset, int64 ``(N,)``.
            generator: Overrides the sampler's generator for this call.
            k_shot: Fixed shots per class (balanced support; steps 3-4 are skipped) instead of
                the variable rule. The query size becomes ``min(max_query, min_c |c| - k_shot)``
                (Meta-Dataset's ``compute_num_query`` with a fixed support size).
            n_query: Fixed query examples per class instead of step 2.

        Raises:
            ValueError: a class too small for the fixed ``k_shot``/``n_query`` (naming it).
        """
        g = self.generator if generator is None else _check_generator(generator)
        classes = torch.as_tensor(classes, dtype=torch.int64).flatten()
        n = int(classes.numel())
        if n < 1 or int(classes.unique().numel()) != n:
            raise ValueError(f"classes must be distinct class ids, got {classes.tolist()[:20]}")
        if int(classes.min()) < 0 or int(classes.max()) >= self.dataset.num_classes:
            raise ValueError(
                f"classes must lie in 0..{self.dataset.num_classes - 1}, got values in "
                f"{int(classes.min())}..{int(classes.max())}"
            )
        sizes = self._sizes[classes]
        if n_query is not None:
            q = _check_int("n_query", n_query, 1)
        elif k_shot is not None:
            q = min(self.max_query, int(sizes.min()) - k_shot)
        else:
            q = min(self.max_query, int(sizes.min()) // 2)
        remaining = sizes - q
        if k_shot is not None:
            _check_int("k_shot", k_shot, 1)
            need = k_shot + max(q, 1)
        else:
            need = q + 1
        if int(sizes.min()) < need or q < 1:
            c = int(classes[int(torch.argmin(sizes))])
            raise ValueError(
                f"class {self.dataset.class_names[c]!r} (class {c}) has {int(sizes.min())} examples; this "
                f"episode needs at least {need} (k_shot={k_shot}, n_query={n_query if n_query else q})"
            )
        if k_shot is not None:
            shots = torch.full((n,), k_shot, dtype=torch.int64)
        else:
            beta = 1.0 - float(torch.rand((), generator=g, dtype=torch.float64))  # U(0, 1]
            per_class = torch.ceil(beta * remaining.clamp(max=self.max_support_per_class).double())
            s_total = min(self.max_support, int(per_class.sum()))
            u = torch.rand(n, generator=g, dtype=torch.float64) * (math.log(2.0) - math.log(0.5)) + math.log(0.5)
            weights = sizes.double() * torch.exp(u)
            prop = weights / weights.sum()
            shots = (torch.floor(prop * (s_total - n)).long() + 1).minimum(remaining)
        # Random order of each class's examples; query first, then that class's shots.
        width = int(sizes.max())
        keys = torch.rand(n, width, generator=g)
        keys.masked_fill_(torch.arange(width)[None, :] >= sizes[:, None], -1.0)
        length = q + int(shots.max())
        pos = keys.topk(length, dim=1).indices
        picked = self._table[classes].gather(1, pos)  # (N, length)
        j = torch.arange(length)[None, :]
        s_mask = (j >= q) & (j < q + shots[:, None])
        s_idx = picked[s_mask]
        q_idx = picked[:, :q].reshape(-1)
        x, dev = self.dataset.x, self.dataset.y.device
        return Task(
            _gather(x, s_idx),
            torch.arange(n).repeat_interleave(shots).to(dev),
            _gather(x, q_idx),
            torch.arange(n).repeat_interleave(q).to(dev),
            n_way=n,
        )

    def __iter__(self) -> Iterator[Task]:
        while True:
            yield self.sample_task()
