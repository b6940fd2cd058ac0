"""Meta-Dataset episodes across sources: the rules' counts and bounds, hierarchies, fixed variants."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metafit.data.datasets import LabelledDataset
from metafit.data.metadataset import (
    EpisodeConfig,
    MultiSourceEpisodes,
    episodes_for_split,
    fixed_multisource_episodes,
)
from metafit.data.sampling import VariableEpisodeSampler
from metafit.data.sources import SplitDataset
from metafit.data.task import Task

FAST = settings(max_examples=25, deadline=None)


def _ds(sizes: list[int], offset: int = 0, groups: list[str] | None = None) -> LabelledDataset:
    """Example ``i`` has ``x = offset + i``, so every drawn example can be traced back."""
    y = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    x = (torch.arange(len(y)) + offset).double().view(-1, 1)
    return LabelledDataset(
        x=x,
        y=y,
        class_names=tuple(f"c{i}" for i in range(len(sizes))),
        groups=None if groups is None else tuple(groups),
    )


def _trace(task: Task, ds: LabelledDataset, offset: int = 0) -> tuple[list[int], list[int], int]:
    """(dataset class of each label, shots per label, queries per class), checking the invariants."""
    s_ids = task.support_x[:, 0].long() - offset
    q_ids = task.query_x[:, 0].long() - offset
    assert len(set(s_ids.tolist())) == len(s_ids) and len(set(q_ids.tolist())) == len(q_ids)
    assert not set(s_ids.tolist()) & set(q_ids.tolist()), "an example is in both support and query"
    n = task.n_way
    classes, shots, queries = [], [], set()
    for j in range(n):
        sc = set(ds.y[s_ids[task.support_y == j]].tolist())
        qc = set(ds.y[q_ids[task.query_y == j]].tolist())
        assert len(sc) == 1 and sc == qc, f"label {j} mixes classes {sc} / {qc}"
        classes.append(sc.pop())
        shots.append(int((task.support_y == j).sum()))
        queries.add(int((task.query_y == j).sum()))
    assert len(set(classes)) == n and len(queries) == 1
    assert torch.equal(task.support_y, torch.arange(n).repeat_interleave(torch.tensor(shots)))
    return classes, shots, queries.pop()


def _oracle_shots(sizes: torch.Tensor, q: int, g: torch.Generator, cfg: EpisodeConfig) -> list[int]:
    """Steps 3-4 computed directly from the paper's formulas, drawing like the sampler."""
    n = sizes.numel()
    beta = 1.0 - float(torch.rand((), generator=g, dtype=torch.float64))
    remaining = (sizes - q).tolist()
    total = min(cfg.max_support, sum(math.ceil(beta * min(cfg.max_support_per_class, r)) for r in remaining))
    u = torch.rand(n, generator=g, dtype=torch.float64) * (math.log(2.0) - math.log(0.5)) + math.log(0.5)
    w = [float(s) * math.exp(float(ui)) for s, ui in zip(sizes.tolist(), u)]
    return [min(math.floor(wi / sum(w) * (total - n)) + 1, r) for wi, r in zip(w, remaining)]


sizes_st = st.lists(st.integers(2, 40), min_size=5, max_size=40)


@FAST
@given(
    sizes=sizes_st,
    max_ways=st.integers(5, 50),
    max_query=st.integers(1, 12),
    max_support=st.integers(50, 500),
    per_class=st.integers(1, 100),
    seed=st.integers(0, 10**6),
)
def test_multisource_flat_episode_follows_the_paper_rules(
    sizes: list[int], max_ways: int, max_query: int, max_support: int, per_class: int, seed: int
) -> None:
    ds = _ds(sizes)
    cfg = EpisodeConfig(
        max_ways=max_ways, max_query=max_query, max_support=max_support, max_support_per_class=per_class
    )
    g = torch.Generator().manual_seed(seed)
    episodes = MultiSourceEpisodes({"only": ds}, generator=g, config=cfg)
    replay = torch.Generator().set_state(g.get_state())
    source, task = episodes.sample()
    assert source == "only"
    classes, shots, q = _trace(task, ds)
    n = len(classes)
    assert cfg.min_ways <= n <= min(max_ways, len(sizes))
    chosen = torch.tensor([sizes[c] for c in classes])
    assert q == min(max_query, int(chosen.min()) // 2)
    assert all(1 <= k <= s - q for k, s in zip(shots, chosen.tolist()))
    assert sum(shots) <= max_support
    # Replay the draws: N, the classes (in label order), then the shot rule from the formulas.
    hi = min(max_ways, len(sizes))
    assert n == int(torch.randint(cfg.min_ways, hi + 1, (1,), generator=replay))
    assert classes == torch.randperm(len(sizes), generator=replay)[:n].tolist()
    assert shots == _oracle_shots(chosen, q, replay, cfg)


@FAST
@given(group_sizes=st.lists(st.integers(2, 14), min_size=2, max_size=6), seed=st.integers(0, 10**6))
def test_multisource_groups_keep_an_episode_within_one_group(group_sizes: list[int], seed: int) -> None:
    groups = [f"g{i}" for i, k in enumerate(group_sizes) for _ in range(k)]
    ds = _ds([6] * len(groups), groups=groups)
    if max(group_sizes) < 5:
        with pytest.raises(
            ValueError, match=r"needs a group with at least min_ways=5 classes|has \d classes, fewer than min_ways=5"
        ):
            MultiSourceEpisodes({"o": ds}, generator=torch.Generator(), hierarchies={"o": "groups"})
        return
    episodes = MultiSourceEpisodes(
        {"o": ds}, generator=torch.Generator().manual_seed(seed), hierarchies={"o": "groups"}
    )
    for _ in range(5):
        classes, _, q = _trace(episodes.sample_task(), ds)
        used = {groups[c] for c in classes}
        assert len(used) == 1
        g_size = group_sizes[int(used.pop()[1:])]
        assert g_size >= 5 and 5 <= len(classes) <= min(50, g_size) and q == 3


@FAST
@given(n_leaves=st.lists(st.integers(1, 70), min_size=1, max_size=5), seed=st.integers(0, 10**6))
def test_multisource_tree_samples_an_eligible_node_then_its_leaves(n_leaves: list[int], seed: int) -> None:
    n_classes = 80
    ds = _ds([4] * n_classes)
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, n_classes, (len(n_leaves),), generator=g).tolist()
    tree = {
        f"node{i}": [f"c{(s + j) % n_classes}" for j in range(k)] + ["not-a-class"]
        for i, (s, k) in enumerate(zip(starts, n_leaves))
    }
    eligible = {frozenset(int(c[1:]) for c in v if c != "not-a-class") for v in tree.values() if 5 <= len(v) - 1 <= 392}
    if not eligible:
        with pytest.raises(ValueError, match="no tree node spans between min_ways=5"):
            MultiSourceEpisodes({"inet": ds}, generator=g, hierarchies={"inet": tree})
        return
    episodes = MultiSourceEpisodes({"inet": ds}, generator=g, hierarchies={"inet": tree})
    for _ in range(5):
        classes, _, q = _trace(episodes.sample_task(), ds)
        homes = [leaves for leaves in eligible if set(classes) <= leaves]
        assert homes, f"classes {classes} are not the leaves of one eligible node"
        assert any(len(classes) == min(50, len(h)) for h in homes)
        assert q == 2


@FAST
@given(
    sizes=st.lists(st.integers(8, 30), min_size=6, max_size=30),
    n_way=st.integers(2, 6),
    k_shot=st.integers(1, 4),
    n_query=st.integers(1, 4),
    seed=st.integers(0, 10**6),
)
def test_multisource_fixed_way_shot_query(sizes: list[int], n_way: int, k_shot: int, n_query: int, seed: int) -> None:
    ds = _ds(sizes)
    episodes = MultiSourceEpisodes(
        {"d": ds}, generator=torch.Generator().manual_seed(seed), config=EpisodeConfig.fixed(n_way, k_shot, n_query)
    )
    classes, shots, q = _trace(episodes.sample_task(), ds)
    assert len(classes) == n_way and shots == [k_shot] * n_way and q == n_query


@FAST
@given(
    sizes=st.lists(st.integers(6, 30), min_size=5, max_size=30), k_shot=st.integers(1, 5), seed=st.integers(0, 10**6)
)
def test_multisource_fixed_shot_variable_way_uses_compute_num_query(sizes: list[int], k_shot: int, seed: int) -> None:
    ds = _ds(sizes)
    episodes = MultiSourceEpisodes(
        {"d": ds}, generator=torch.Generator().manual_seed(seed), config=EpisodeConfig(k_shot=k_shot)
    )
    classes, shots, q = _trace(episodes.sample_task(), ds)
    assert 5 <= len(classes) <= min(50, len(sizes)) and shots == [k_shot] * len(classes)
    assert q == min(10, min(sizes[c] for c in classes) - k_shot)


def test_multisource_records_the_source_and_respects_weights() -> None:
    a, b, c = _ds([10] * 8, offset=0), _ds([10] * 6, offset=1000), _ds([10] * 7, offset=5000)
    episodes = MultiSourceEpisodes(
        {"a": a, "b": b, "c": c}, generator=torch.Generator().manual_seed(1), weights={"a": 3.0, "b": 1.0}
    )
    counts = {"a": 0, "b": 0, "c": 0}
    for _ in range(120):
        source, task = episodes.sample()
        counts[source] += 1
        offset, ds = {"a": (0, a), "b": (1000, b), "c": (5000, c)}[source]
        _trace(task, ds, offset)
    assert counts["c"] == 0 and 70 < counts["a"] < 110  # 90 expected (binomial sd 4.7)
    uniform = MultiSourceEpisodes({"a": a, "b": b}, generator=torch.Generator().manual_seed(2))
    n_a = sum(uniform.sample().source == "a" for _ in range(120))
    assert 40 < n_a < 80  # 60 expected (sd 5.5)


def test_multisource_same_seed_same_episodes() -> None:
    srcs = {"a": _ds([12, 7, 20, 9, 15, 11]), "b": _ds([5] * 9, offset=500)}

    def draw(seed: int) -> list:
        eps = MultiSourceEpisodes(srcs, generator=torch.Generator().manual_seed(seed))
        return [eps.sample() for _ in range(10)]

    one, two, other = draw(7), draw(7), draw(8)
    for (s1, t1), (s2, t2) in zip(one, two):
        assert s1 == s2 and torch.equal(t1.support_x, t2.support_x) and torch.equal(t1.query_y, t2.query_y)
    assert any(not torch.equal(t1.support_x, t2.support_x) or s1 != s2 for (s1, t1), (s2, t2) in zip(one, other))


def test_multisource_errors() -> None:
    ds = _ds([6] * 10, groups=["g"] * 10)
    with pytest.raises(ValueError, match=r"a class hierarchy is incompatible with a fixed n_way=5"):
        MultiSourceEpisodes(
            {"o": ds}, generator=torch.Generator(), config=EpisodeConfig.fixed(5, 1, 1), hierarchies={"o": "groups"}
        )
    with pytest.raises(ValueError, match=r"class 'c0' of source 'o' has 6 examples; episodes need at least 8"):
        MultiSourceEpisodes({"o": ds}, generator=torch.Generator(), config=EpisodeConfig.fixed(5, 3, 5))
    with pytest.raises(ValueError, match=r"weights names unknown source\(s\) \['x'\]"):
        MultiSourceEpisodes({"o": ds}, generator=torch.Generator(), weights={"x": 1.0})
    with pytest.raises(ValueError, match=r"source 'o' has 10 classes, fewer than min_ways=20"):
        MultiSourceEpisodes({"o": ds}, generator=torch.Generator(), config=EpisodeConfig(min_ways=20))


def test_episodes_for_split_skips_sources_without_the_split_and_uses_groups() -> None:
    omni = SplitDataset("omni", {"train": _ds([4] * 12, groups=["a"] * 6 + ["b"] * 6)}, {})
    fm = SplitDataset("fm", {"test": _ds([20] * 10, offset=1000)}, {})
    train = episodes_for_split({"omni": omni, "fm": fm}, "train", generator=torch.Generator().manual_seed(0))
    assert train.names == ("omni",)
    for _ in range(5):
        classes, _, _ = _trace(train.sample_task(), omni.splits["train"])
        assert len({c // 6 for c in classes}) == 1  # one alphabet per episode
    with pytest.raises(ValueError, match=r"no dataset has a 'val' split"):
        episodes_for_split({"omni": omni, "fm": fm}, "val", generator=torch.Generator())


def test_variable_sampler_sample_task_is_sample_classes_then_task_for_classes() -> None:
    ds = _ds([9, 4, 17, 6, 12, 8, 5, 30])
    a = VariableEpisodeSampler(ds, generator=torch.Generator().manual_seed(5))
    b = VariableEpisodeSampler(ds, generator=torch.Generator().manual_seed(5))
    for _ in range(5):
        t1 = a.sample_task()
        t2 = b.task_for_classes(b.sample_classes())
        assert torch.equal(t1.support_x, t2.support_x) and torch.equal(t1.query_x, t2.query_x)
        assert torch.equal(t1.support_y, t2.support_y) and t1.n_way == t2.n_way
    with pytest.raises(ValueError, match=r"classes must be distinct class ids, got \[1, 1\]"):
        a.task_for_classes(torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"class 'c1' \(class 1\) has 4 examples; this episode needs at least 5"):
        a.task_for_classes(torch.tensor([0, 1]), k_shot=4)


def test_fixed_multisource_episodes_are_reproducible() -> None:
    srcs = {"a": _ds([10] * 8), "b": _ds([12] * 9, offset=100)}
    one = fixed_multisource_episodes(srcs, 4, seed=3, config=EpisodeConfig.fixed(5, 2, 3))
    two = fixed_multisource_episodes(srcs, 4, seed=3, config=EpisodeConfig.fixed(5, 2, 3))
    assert [e.source for e in one] == [e.source for e in two]
    assert all(torch.equal(x.task.support_x, y.task.support_x) for x, y in zip(one, two))
    assert all(e.task.n_support == 10 and e.task.n_query == 15 for e in one)
