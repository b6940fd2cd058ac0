"""EpisodeSampler, fixed_episodes and VariableEpisodeSampler on small synthetic datasets."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metafit.data.datasets import LabelledDataset
from metafit.data.sampling import EpisodeSampler, VariableEpisodeSampler, fixed_episodes
from metafit.data.task import Task, TaskBatch


def _ds(sizes: list[int], n_groups: int = 1) -> LabelledDataset:
    """x[i] = i (so an example's value is its index), classes of the given sizes."""
    y = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    x = torch.arange(len(y), dtype=torch.float32).view(-1, 1)
    groups = tuple(f"g{c % n_groups}" for c in range(len(sizes)))
    return LabelledDataset(x, y, tuple(f"c{c}" for c in range(len(sizes))), groups)


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _check_task(ds: LabelledDataset, task: Task, n_way: int) -> tuple[list[int], list[int]]:
    """Checks labels/disjointness/class consistency; returns support and query counts per label."""
    s_idx = task.support_x.flatten().long()
    q_idx = task.query_x.flatten().long()
    assert len(set(s_idx.tolist())) == len(s_idx) and len(set(q_idx.tolist())) == len(q_idx)
    assert not set(s_idx.tolist()) & set(q_idx.tolist()), "support and query share an example"
    assert task.n_way == n_way
    assert set(task.support_y.tolist()) == set(range(n_way)) == set(task.query_y.tolist())
    cls_of_label: dict[int, int] = {}
    for idx, lab in [*zip(s_idx.tolist(), task.support_y.tolist()), *zip(q_idx.tolist(), task.query_y.tolist())]:
        assert cls_of_label.setdefault(lab, int(ds.y[idx])) == int(ds.y[idx]), "a label mixes classes"
    assert len(set(cls_of_label.values())) == n_way
    s_counts = torch.bincount(task.support_y, minlength=n_way).tolist()
    q_counts = torch.bincount(task.query_y, minlength=n_way).tolist()
    return s_counts, q_counts


def test_episode_sampler_shapes_labels_balanced() -> None:
    ds = _ds([6] * 10)
    batch = next(iter(EpisodeSampler(ds, 4, 2, 3, tasks_per_batch=5, generator=_g())))
    assert isinstance(batch, TaskBatch) and len(batch) == 5 and batch.n_way == 4
    assert batch.support_x.shape == (5, 8, 1) and batch.query_x.shape == (5, 12, 1)
    assert batch.support_y.dtype == torch.int64
    for task in batch:
        s, q = _check_task(ds, task, 4)
        assert s == [2] * 4 and q == [3] * 4


def test_episode_sampler_label_order_is_random() -> None:
    ds = _ds([2] * 5)
    batch = EpisodeSampler(ds, 5, 1, 1, generator=_g()).sample_batch(50)
    first_class = ds.y[batch.support_x[:, 0, 0].long()]
    assert len(set(first_class.tolist())) > 1


def test_episode_sampler_deterministic_and_seed_dependent() -> None:
    ds = _ds([7, 5, 9, 6, 8, 5])
    a = EpisodeSampler(ds, 3, 2, 2, tasks_per_batch=4, generator=_g(1)).sample_batch()
    b = EpisodeSampler(ds, 3, 2, 2, tasks_per_batch=4, generator=_g(1)).sample_batch()
    c = EpisodeSampler(ds, 3, 2, 2, tasks_per_batch=4, generator=_g(2)).sample_batch()
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert not torch.equal(a.support_x, c.support_x)


def test_episode_sampler_uses_no_global_rng() -> None:
    state = torch.get_rng_state()
    s = EpisodeSampler(_ds([4] * 6), 3, 1, 2, generator=_g())
    s.sample_batch(3)
    s.sample_task()
    assert torch.equal(torch.get_rng_state(), state)


def test_episode_sampler_sample_task_and_augment() -> None:
    calls = []

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x + 1000

    ds = _ds([4] * 6)
    task = EpisodeSampler(ds, 3, 1, 2, generator=_g(), augment=augment).sample_task()
    assert isinstance(task, Task) and task.support_x.shape == (3, 1) and task.query_x.shape == (6, 1)
    assert calls == [(1, 3, 1), (1, 6, 1)] and bool((task.support_x >= 1000).all())


def test_episode_sampler_n_way_too_large() -> None:
    with pytest.raises(ValueError, match=r"n_way=7 exceeds the number of classes in the dataset \(6\)"):
        EpisodeSampler(_ds([4] * 6), 7, 1, 1, generator=_g())


def test_episode_sampler_shots_plus_queries_too_large() -> None:
    with pytest.raises(ValueError, match=r"k_shot \+ n_query = 2 \+ 3 = 5 .*'c1' \(class 1, 4 examples\)"):
        EpisodeSampler(_ds([6, 4, 5]), 2, 2, 3, generator=_g())


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((0, 1, 1), ValueError, "n_way must be >= 1, got 0"),
        ((2, 0, 1), ValueError, "k_shot must be >= 1, got 0"),
        ((2, 1, -1), ValueError, "n_query must be >= 1, got -1"),
        ((2, 1.5, 1), TypeError, "k_shot must be an int"),
    ],
)
def test_episode_sampler_invalid_sizes(args: tuple, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        EpisodeSampler(_ds([4] * 3), *args, generator=_g())


def test_episode_sampler_requires_generator() -> None:
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        EpisodeSampler(_ds([4] * 3), 2, 1, 1, generator=None)  # type: ignore[arg-type]


def test_fixed_episodes_same_seed_same_tensors() -> None:
    ds = _ds([5] * 8)
    a, b = fixed_episodes(ds, 3, 1, 2, 6, seed=7), fixed_episodes(ds, 3, 1, 2, 6, seed=7)
    c = fixed_episodes(ds, 3, 1, 2, 6, seed=8)
    assert len(a) == 6 and all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("support_x", "query_x", "support_y"))
    assert not torch.equal(a.query_x, c.query_x)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 12), min_size=1, max_size=12),
    data=st.data(),
    seed=st.integers(0, 2**31 - 1),
)
def test_episode_sampler_property(sizes: list[int], data: st.DataObject, seed: int) -> None:
    ds = _ds(sizes)
    n_way = data.draw(st.integers(1, len(sizes)))
    k = data.draw(st.integers(1, min(sizes) - 1))
    q = data.draw(st.integers(1, min(sizes) - k))
    batch = EpisodeSampler(ds, n_way, k, q, tasks_per_batch=3, generator=_g(seed)).sample_batch()
    assert batch.support_x.shape == (3, n_way * k, 1) and batch.query_y.shape == (3, n_way * q)
    for task in batch:
        s, qc = _check_task(ds, task, n_way)
        assert s == [k] * n_way and qc == [q] * n_way


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 40), min_size=3, max_size=20),
    data=st.data(),
    seed=st.integers(0, 2**31 - 1),
    by_group=st.booleans(),
)
def test_variable_episode_sampler_property(sizes: list[int], data: st.DataObject, seed: int, by_group: bool) -> None:
    n_groups = 2 if by_group else 1
    ds = _ds(sizes, n_groups)
    group_sizes = [sum(1 for c in range(len(sizes)) if c % n_groups == g) for g in range(n_groups)]
    min_ways = data.draw(st.integers(1, max(group_sizes)))
    max_ways = data.draw(st.integers(min_ways, 25))
    max_query = data.draw(st.integers(1, 12))
    max_support = data.draw(st.integers(min(max_ways, max(group_sizes)), 200))
    max_per_class = data.draw(st.integers(1, 30))
    sampler = VariableEpisodeSampler(
        ds,
        generator=_g(seed),
        min_ways=min_ways,
        max_ways=max_ways,
        max_query=max_query,
        max_support=max_support,
        max_support_per_class=max_per_class,
        by_group=by_group,
    )
    for _, task in zip(range(3), sampler):
        n = task.n_way
        assert n is not None and min_ways <= n <= min(max_ways, len(sizes))
        s_counts, q_counts = _check_task(ds, task, n)
        classes = sorted({int(ds.y[int(i)]) for i in task.query_x.flatten()})
        if by_group:
            assert len({c % n_groups for c in classes}) == 1, "classes from several groups"
        q = min(max_query, min(sizes[c] for c in classes) // 2)
        assert q_counts == [q] * n
        assert sum(s_counts) <= max_support
        label_class = {int(lab): int(ds.y[int(i)]) for i, lab in zip(task.support_x.flatten(), task.support_y)}
        for lab, k in enumerate(s_counts):
            assert 1 <= k <= sizes[label_class[lab]] - q
        assert task.support_x.shape == (sum(s_counts), 1)


def test_variable_episode_sampler_uses_min_ways_and_deterministic() -> None:
    ds = _ds([20] * 30, n_groups=3)
    a = [t.n_way for _, t in zip(range(30), VariableEpisodeSampler(ds, generator=_g(3), by_group=True))]
    b = [t.n_way for _, t in zip(range(30), VariableEpisodeSampler(ds, generator=_g(3), by_group=True))]
    assert a == b and all(5 <= n <= 10 for n in a) and len(set(a)) > 1


def test_variable_episode_sampler_errors() -> None:
    with pytest.raises(ValueError, match=r"min_ways=5 exceeds the number of classes in the dataset \(4\)"):
        VariableEpisodeSampler(_ds([4] * 4), generator=_g())
    with pytest.raises(ValueError, match="at least 2 examples.*'c1'"):
        VariableEpisodeSampler(_ds([4, 1, 4, 4, 4]), generator=_g())
    with pytest.raises(ValueError, match="by_group=True needs a group with at least min_ways=5"):
        VariableEpisodeSampler(_ds([4] * 8, n_groups=2), generator=_g(), by_group=True)
    with pytest.raises(ValueError, match="max_ways must be >= min_ways"):
        VariableEpisodeSampler(_ds([4] * 8), generator=_g(), min_ways=5, max_ways=3)


def test_variable_episode_sampler_support_size_rule() -> None:
    # With max_support_per_class=1 every beta gives ceil(beta*1) = 1 per class,
    # so |S| = N and every class gets exactly one shot.
    ds = _ds([10] * 8)
    for _, t in zip(range(10), VariableEpisodeSampler(ds, generator=_g(), max_support_per_class=1)):
        assert t.support_y.tolist() == list(range(t.n_way))
        assert t.n_query == t.n_way * 5
