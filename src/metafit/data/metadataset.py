"""Meta-Dataset episodes across several sources, and Meta-Dataset's record format.

Triantafillou, Zhu, Dumoulin, Lamblin, Evci, Xu, Goroshin, Gelada, Swersky, Manzagol & Larochelle,
"Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few Examples", ICLR 2020,
arXiv 1903.03096 (rules as in ``meta_dataset/data/sampling.py``).

Episodes (:class:`MultiSourceEpisodes`)
    Each episode first draws its source: uniformly (as Meta-Dataset's pipeline, "sample uniformly
    among sources") or by ``weights``; then, within that source's class split (every source keeps
    its own split; the caller passes e.g. each source's train split):

    1. classes, by the source's hierarchy:

       * flat: ``N ~ U{min_ways .. min(max_ways, C)}`` distinct classes uniformly;
       * ``"groups"`` (Omniglot's bilevel ontology, ``LabelledDataset.groups`` = alphabets): a
         group uniformly among those with at least ``min_ways`` classes (Meta-Dataset draws
         among all alphabets; every Omniglot alphabet has more than 5 characters, so this is the
         same there), then ``N ~ U{min_ways .. min(max_ways, group size)}`` of its classes;
       * a tree (ImageNet's WordNet DAG; ``{node: leaf class names}``): an internal node
         uniformly among the eligible ones (spanning ``min_ways .. max_spanning_leaves`` = 392
         of the split's classes; nodes in sorted order), all its leaves, subsampled uniformly
         to ``max_ways`` if more;

    2. query per class ``q = min(max_query, floor(min_c |c| / 2))``;
    3. support size ``|S| = min(max_support, sum_c ceil(beta * min(max_support_per_class,
       |c| - q)))``, ``beta ~ U(0, 1]``;
    4. shots ``k_c = min(floor(prop_c * (|S| - N)) + 1, |c| - q)`` with ``prop_c`` proportional
       to ``|c| * exp(u_c)``, ``u_c ~ U(log 0.5, log 2)``.

    Steps 1 (flat, groups) and 2-4 are :class:`~metafit.data.sampling.VariableEpisodeSampler`
    (``sample_classes`` / ``task_for_classes``); this module adds the source choice and the tree.

    Fixed variants (:class:`EpisodeConfig`): ``n_way`` fixes ``N`` (classes uniform; not with a
    hierarchy, as in Meta-Dataset); ``k_shot`` gives every class ``k_shot`` support examples
    (then ``q = min(max_query, min_c |c| - k_shot)``, Meta-Dataset's ``compute_num_query``);
    ``n_query`` fixes ``q``. All three together give classic N-way K-shot episodes.

    Each draw is an :class:`Episode` ``(source, task)`` named tuple: the source name and a
    :class:`~metafit.data.task.Task` (labels ``0..N-1``, ``n_way = N``).

Records (:func:`load_metadataset_source`, :func:`write_metadataset_source`)
    The official conversion output: ``dataset_spec.json`` plus one ``<class id>.tfrecords`` per
    class (or shards ``<class id>_<k>.tfrecords`` with ``file_pattern "{}_{}.tfrecords"``), each
    record a ``tf.train.Example`` with ``image`` (encoded JPEG/PNG bytes) and ``label`` (int64,
    the class id). The spec is one of (``__class__``):

    * ``DatasetSpecification``: ``classes_per_split`` ``{"TRAIN": n, "VALID": n, "TEST": n}``;
      class ids ``0..`` are TRAIN, then VALID, then TEST, contiguous;
    * ``BiLevelDatasetSpecification`` (Omniglot): ``superclasses_per_split``,
      ``classes_per_superclass``, ``superclass_names``; classes are contiguous per superclass
      and become ``groups``;
    * ``HierarchicalDatasetSpecification`` (ImageNet): ``split_subgraphs`` (nodes ``wn_id``,
      ``children_ids``, ``parents_ids``) whose leaves are the split's classes; the subgraph
      becomes ``SplitDataset.trees[split]``.

    Images are decoded with Pillow, resized (bilinear, 8-bit) to ``image_size`` and scaled to
    ``[0, 1]`` (metafit's convention; Meta-Dataset's own pipeline maps to ``[-1, 1]``). TFRecord
    and proto parsing is :mod:`metafit.data.tfrecord` (no TensorFlow).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from metafit.data.datasets import LabelledDataset
from metafit.data.sampling import VariableEpisodeSampler, _check_generator
from metafit.data.sources import (
    SPLIT_NAMES,
    SplitDataset,
    _cached,
    _channel_stats,
    _check_channels,
    _check_size,
    _decode_many,
)
from metafit.data.task import Task
from metafit.data.tfrecord import (
    decode_example,
    encode_example,
    read_tfrecords,
    write_tfrecords,
)

__all__ = [
    "MAX_SPANNING_LEAVES",
    "MD_SPLITS",
    "Episode",
    "EpisodeConfig",
    "MultiSourceEpisodes",
    "episodes_for_split",
    "fixed_multisource_episodes",
    "load_metadataset_source",
    "write_metadataset_source",
]

#: Meta-Dataset's cap on the leaves of an eligible internal node (``MAX_SPANNING_LEAVES_ELIGIBLE``).
MAX_SPANNING_LEAVES = 392
#: Meta-Dataset ``Split`` enum names -> metafit split names.
MD_SPLITS = {"TRAIN": "train", "VALID": "val", "TEST": "test"}

Hierarchy = str | Mapping[str, Sequence[str]]


def _pos_int(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class EpisodeConfig:
    """Meta-Dataset episode rules; the defaults are the paper's variable-way variable-shot ones.

    Attributes:
        min_ways: Smallest ``N`` (5).
        max_ways: Largest ``N`` (50).
        max_query: Cap on query examples per class (10).
        max_support: Cap on the support-set size (500).
        max_support_per_class: Cap on a class's term of the support-size rule (100).
        max_spanning_leaves: Largest leaf count of an eligible tree node (392).
        n_way: Fixed ``N`` (None: variable).
        k_shot: Fixed support examples per class (None: the imbalanced rule).
        n_query: Fixed query examples per class (None: the rule of step 2).
    """

    min_ways: int = 5
    max_ways: int = 50
    max_query: int = 10
    max_support: int = 500
    max_support_per_class: int = 100
    max_spanning_leaves: int = MAX_SPANNING_LEAVES
    n_way: int | None = None
    k_shot: int | None = None
    n_query: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "min_ways",
            "max_ways",
            "max_query",
            "max_support",
            "max_support_per_class",
            "max_spanning_leaves",
        ):
            _pos_int(name, getattr(self, name))
        for name in ("n_way", "k_shot", "n_query"):
            if getattr(self, name) is not None:
                _pos_int(name, getattr(self, name))
        if self.max_ways < self.min_ways:
            raise ValueError(f"max_ways must be >= min_ways={self.min_ways}, got {self.max_ways}")

    @classmethod
    def fixed(cls, n_way: int, k_shot: int, n_query: int) -> EpisodeConfig:
        """Classic N-way K-shot episodes with ``n_query`` queries per class."""
        return cls(n_way=n_way, k_shot=k_shot, n_query=n_query)


class Episode(NamedTuple):
    """One episode: the name of the source it was drawn from and the task."""

    source: str
    task: Task


class _SourceSampler:
    """Episodes of one source: a VariableEpisodeSampler plus, optionally, a class tree."""

    def __init__(
        self,
        name: str,
        dataset: LabelledDataset,
        config: EpisodeConfig,
        hierarchy: Hierarchy | None,
        generator: torch.Generator,
    ) -> None:
        self.name, self.config = name, config
        if not isinstance(dataset, LabelledDataset):
            raise TypeError(f"source {name!r} must be a LabelledDataset, got {type(dataset).__name__}")
        if hierarchy is not None and config.n_way is not None:
            raise ValueError(
                f"source {name!r}: a class hierarchy is incompatible with a fixed n_way={config.n_way} "
                "(as in Meta-Dataset); drop the hierarchy or n_way"
            )
        if isinstance(hierarchy, str) and hierarchy != "groups":
            raise ValueError(
                f"hierarchy of source {name!r} must be 'groups' or a mapping node -> leaves, got {hierarchy!r}"
            )
        lo, hi = (config.n_way, config.n_way) if config.n_way is not None else (config.min_ways, config.max_ways)
        if lo > dataset.num_classes:
            raise ValueError(
                f"source {name!r} has {dataset.num_classes} classes, fewer than "
                f"{'n_way' if config.n_way else 'min_ways'}={lo}"
            )
        sizes = dataset.class_sizes()
        need = (config.k_shot or 1) + (config.n_query or 1)
        c = int(torch.argmin(sizes))
        if int(sizes[c]) < need:
            raise ValueError(
                f"class {dataset.class_names[c]!r} of source {name!r} has {int(sizes[c])} examples; episodes need at "
                f"least {need} (k_shot={config.k_shot}, n_query={config.n_query})"
            )
        self.base = VariableEpisodeSampler(
            dataset,
            generator=generator,
            min_ways=lo,
            max_ways=hi,
            max_query=config.max_query,
            # With fixed shots the support-size cap is unused; keep the base sampler's check satisfied.
            max_support=max(config.max_support, min(hi, dataset.num_classes)) if config.k_shot else config.max_support,
            max_support_per_class=config.max_support_per_class,
            by_group=hierarchy == "groups",
        )
        self.nodes: list[Tensor] | None = None
        if isinstance(hierarchy, Mapping):
            index = {n: i for i, n in enumerate(dataset.class_names)}
            nodes = []
            for node in sorted(hierarchy):
                leaves = sorted({index[leaf] for leaf in hierarchy[node] if leaf in index})
                if config.min_ways <= len(leaves) <= config.max_spanning_leaves:
                    nodes.append(torch.tensor(leaves, dtype=torch.int64))
            if not nodes:
                raise ValueError(
                    f"source {name!r}: no tree node spans between min_ways={config.min_ways} and "
                    f"max_spanning_leaves={config.max_spanning_leaves} of its classes"
                )
            self.nodes = nodes

    def sample(self, g: torch.Generator) -> Task:
        cfg = self.config
        if self.nodes is None:
            classes = self.base.sample_classes(g)
        else:
            leaves = self.nodes[int(torch.randint(len(self.nodes), (1,), generator=g))]
            order = torch.randperm(leaves.numel(), generator=g)[: cfg.max_ways]
            classes = leaves[order]
        return self.base.task_for_classes(classes, generator=g, k_shot=cfg.k_shot, n_query=cfg.n_query)


class MultiSourceEpisodes:
    """Meta-Dataset episodes drawn across several sources (module docstring for the rules).

    Args:
        sources: name -> the source's class split to draw from (e.g. each source's train split;
            the splits of different sources are independent, and each must itself be disjoint
            from that source's evaluation classes).
        generator: CPU ``torch.Generator``, the only source of randomness.
        weights: name -> non-negative weight of choosing that source (default: uniform). Sources
            missing from ``weights`` get weight 0.
        config: The episode rules (:class:`EpisodeConfig`).
        hierarchies: name -> ``"groups"`` (classes of one ``dataset.groups`` value per episode,
            Omniglot's alphabets) or a tree ``{node: leaf class names}`` (internal nodes only);
            sources not listed are flat.

    Yields:
        :class:`Episode` ``(source, task)``; :meth:`tasks` yields the tasks alone.

    Raises:
        ValueError: no source, unknown names in ``weights``/``hierarchies``, all-zero weights, a
            source too small for the rules (naming it).
    """

    def __init__(
        self,
        sources: Mapping[str, LabelledDataset],
        *,
        generator: torch.Generator,
        weights: Mapping[str, float] | None = None,
        config: EpisodeConfig | None = None,
        hierarchies: Mapping[str, Hierarchy] | None = None,
    ) -> None:
        if not isinstance(sources, Mapping) or not sources:
            raise ValueError("sources must be a non-empty mapping name -> LabelledDataset")
        self.generator = _check_generator(generator)
        self.config = EpisodeConfig() if config is None else config
        if not isinstance(self.config, EpisodeConfig):
            raise TypeError(f"config must be an EpisodeConfig, got {type(self.config).__name__}")
        hierarchies = dict(hierarchies or {})
        unknown = sorted(set(hierarchies) - set(sources))
        if unknown:
            raise ValueError(f"hierarchies names unknown source(s) {unknown}; sources: {sorted(sources)}")
        self.names = tuple(sources)
        self._samplers = [
            _SourceSampler(n, sources[n], self.config, hierarchies.get(n), self.generator) for n in self.names
        ]
        if weights is None:
            self.weights: Tensor | None = None
        else:
            unknown = sorted(set(weights) - set(sources))
            if unknown:
                raise ValueError(f"weights names unknown source(s) {unknown}; sources: {sorted(sources)}")
            w = torch.tensor([float(weights.get(n, 0.0)) for n in self.names], dtype=torch.float64)
            if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
                raise ValueError(f"weights must be finite, >= 0 and not all 0, got {dict(weights)}")
            self.weights = w / w.sum()

    def sample(self, generator: torch.Generator | None = None) -> Episode:
        """Draws one episode (from ``generator`` if given, else the sampler's generator)."""
        g = self.generator if generator is None else _check_generator(generator)
        if self.weights is None:
            i = int(torch.randint(len(self._samplers), (1,), generator=g)) if len(self._samplers) > 1 else 0
        else:
            i = int(torch.multinomial(self.weights, 1, generator=g))
        return Episode(self.names[i], self._samplers[i].sample(g))

    def sample_task(self, generator: torch.Generator | None = None) -> Task:
        """Draws one episode and returns its task only."""
        return self.sample(generator).task

    def __iter__(self) -> Iterator[Episode]:
        while True:
            yield self.sample()

    def tasks(self) -> Iterator[Task]:
        """Endless stream of tasks (the sources dropped), for code that takes plain tasks."""
        while True:
            yield self.sample().task


def fixed_multisource_episodes(
    sources: Mapping[str, LabelledDataset],
    n_episodes: int,
    *,
    seed: int,
    config: EpisodeConfig | None = None,
    weights: Mapping[str, float] | None = None,
    hierarchies: Mapping[str, Hierarchy] | None = None,
) -> list[Episode]:
    """A fixed, seeded list of held-out episodes (same arguments and seed: identical episodes).

    Meta-Dataset evaluates on 600 episodes per test source: call this with one source at a time
    (``{"omniglot": test_split}``) and score with :func:`metafit.evaluation.evaluate` on
    ``[e.task for e in episodes]``.

    Args:
        sources: As in :class:`MultiSourceEpisodes`.
        n_episodes: Number of episodes.
        seed: Seed of a fresh CPU ``torch.Generator`` (global RNG state is untouched).
        config: Episode rules.
        weights: Source weights (default uniform).
        hierarchies: As in :class:`MultiSourceEpisodes`.
    """
    _pos_int("n_episodes", n_episodes)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    eps = MultiSourceEpisodes(
        sources, generator=torch.Generator().manual_seed(seed), weights=weights, config=config, hierarchies=hierarchies
    )
    return [eps.sample() for _ in range(n_episodes)]


def episodes_for_split(
    datasets: Mapping[str, SplitDataset],
    split: str,
    *,
    generator: torch.Generator,
    weights: Mapping[str, float] | None = None,
    config: EpisodeConfig | None = None,
) -> MultiSourceEpisodes:
    """:class:`MultiSourceEpisodes` over the ``split`` of each dataset that has it.

    Hierarchies are taken from the datasets: ``SplitDataset.trees[split]`` if present, else
    ``"groups"`` if the split has ``groups`` (Omniglot's alphabets), else flat; with a fixed
    ``n_way`` every source is flat. Datasets without that split are skipped (as Meta-Dataset's
    test-only sources are absent from training).

    Raises:
        ValueError: no dataset has the split.
    """
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
    cfg = EpisodeConfig() if config is None else config
    sources, hier = {}, {}
    for name, ds in datasets.items():
        if split not in ds.splits:
            continue
        sources[name] = ds.splits[split]
        if cfg.n_way is None:
            if split in ds.trees:
                hier[name] = ds.trees[split]
            elif ds.splits[split].groups is not None:
                hier[name] = "groups"
    if not sources:
        raise ValueError(
            f"no dataset has a {split!r} split: {', '.join(f'{k}: {list(v.splits)}' for k, v in datasets.items())}"
        )
    w = None if weights is None else {k: v for k, v in weights.items() if k in sources}
    return MultiSourceEpisodes(sources, generator=generator, weights=w, config=cfg, hierarchies=hier)


# -- Meta-Dataset records --------------------------------------------------------------------------


def _int_keys(d: Mapping[str, Any]) -> dict[int, Any]:
    return {int(k): v for k, v in d.items()}


def _count(v: Any) -> int:
    return int(sum(v.values())) if isinstance(v, Mapping) else int(v)


def _class_files(folder: Path, pattern: str, class_id: int) -> list[Path]:
    if pattern == "{}.tfrecords":
        return [folder / f"{class_id}.tfrecords"]
    if pattern == "{}_{}.tfrecords":
        return sorted(folder.glob(f"{class_id}_*.tfrecords"))
    raise ValueError(f"file_pattern must be '{{}}.tfrecords' or '{{}}_{{}}.tfrecords', got {pattern!r}")


def _spanning_leaves(nodes: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    children = {n["wn_id"]: list(n.get("children_ids", [])) for n in nodes}
    memo: dict[str, tuple[str, ...]] = {}

    def leaves(node: str) -> tuple[str, ...]:
        if node not in memo:
            kids = [c for c in children.get(node, []) if c in children]
            memo[node] = (node,) if not kids else tuple(sorted({x for c in kids for x in leaves(c)}))
        return memo[node]

    for n in children:
        leaves(n)
    return {n: memo[n] for n in children if children[n]}


def _read_spec(folder: Path) -> dict[str, Any]:
    path = folder / "dataset_spec.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a Meta-Dataset source folder holds dataset_spec.json")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    kind = spec.get("__class__", "DatasetSpecification")
    if kind not in ("DatasetSpecification", "BiLevelDatasetSpecification", "HierarchicalDatasetSpecification"):
        raise ValueError(f"{path}: unknown __class__ {kind!r}")
    spec["__class__"] = kind
    return spec


def _split_layout(
    spec: Mapping[str, Any], path: Path
) -> tuple[dict[str, list[int]], dict[int, str] | None, dict[str, dict[str, tuple[str, ...]]]]:
    """(split -> class ids, class id -> group or None, split -> tree) from a dataset spec."""
    kind = spec["__class__"]
    names = _int_keys(spec.get("class_names", {}))
    if kind == "DatasetSpecification":
        per = spec["classes_per_split"]
        out, start = {}, 0
        for md in ("TRAIN", "VALID", "TEST"):
            n = int(per.get(md, 0))
            out[MD_SPLITS[md]] = list(range(start, start + n))
            start += n
        return out, None, {}
    if kind == "BiLevelDatasetSpecification":
        per = spec["superclasses_per_split"]
        cps = _int_keys(spec["classes_per_superclass"])
        sc_names = _int_keys(spec.get("superclass_names", {}))
        out, groups, sc, cls = {}, {}, 0, 0
        for md in ("TRAIN", "VALID", "TEST"):
            ids = []
            for _ in range(int(per.get(md, 0))):
                for _ in range(int(cps[sc])):
                    ids.append(cls)
                    groups[cls] = str(sc_names.get(sc, sc))
                    cls += 1
                sc += 1
            out[MD_SPLITS[md]] = ids
        return out, groups, {}
    # HierarchicalDatasetSpecification: class ids per split are contiguous ranges (TRAIN, VALID,
    # TEST) of sizes = number of leaves of the split's subgraph, as in Meta-Dataset's get_classes.
    to_id = {v: k for k, v in names.items()}
    out, trees, start = {}, {}, 0
    for md in ("TRAIN", "VALID", "TEST"):
        nodes = spec["split_subgraphs"].get(md, [])
        span = _spanning_leaves(nodes)
        present = {n["wn_id"] for n in nodes}
        leaf_ids = sorted({n["wn_id"] for n in nodes if not [c for c in n.get("children_ids", []) if c in present]})
        ids = list(range(start, start + len(leaf_ids)))
        missing = [w for w in leaf_ids if w not in to_id]
        if missing:
            raise ValueError(f"{path}: leaf {missing[0]!r} of the {md} subgraph is not in class_names")
        if sorted(to_id[w] for w in leaf_ids) != ids:
            raise ValueError(f"{path}: the {md} leaves do not have the contiguous class ids {ids[:1]}..{ids[-1:]}")
        out[MD_SPLITS[md]] = ids
        if ids:
            trees[MD_SPLITS[md]] = span
        start += len(leaf_ids)
    return out, None, trees


def load_metadataset_source(
    path: str | Path,
    *,
    image_size: int = 84,
    channels: int | str = 3,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    num_workers: int | None = None,
) -> SplitDataset:
    """Reads one converted Meta-Dataset source (``dataset_spec.json`` + per-class ``.tfrecords``).

    Uses the class split recorded in the spec (module docstring). Every record's ``label`` must be
    its file's class id and every class must hold ``images_per_class`` records.

    Args:
        path: The source folder (e.g. ``<records>/omniglot``).
        image_size: Output side ``S``.
        channels: 3 (as Meta-Dataset decodes), 1, or ``"auto"``.
        cache_dir: Decoded-image cache (see :mod:`metafit.data.sources`).
        use_cache: False decodes every time.
        num_workers: Decoding threads (default ``min(4, cpu_count)``).

    Every record's encoded bytes are read into memory before decoding, and the decoded float32
    images are kept (memory-mapped from the cache): fine for the small and medium sources (Omniglot,
    Aircraft, CUB, DTD, Flowers, Traffic Signs: up to ~2 GB at 84 px), not for ILSVRC-2012 or
    QuickDraw at 84 px.

    Returns:
        :class:`SplitDataset` (``groups`` for a bilevel spec, ``trees`` for a hierarchical one).

    Raises:
        FileNotFoundError: a missing spec or class file. ValueError: a CRC mismatch (naming the
            file), a wrong label or image count, an undecodable image.
    """
    folder = Path(path).expanduser()
    size = _check_size(image_size)
    chan = _check_channels(channels)
    spec = _read_spec(folder)
    split_ids, groups, trees = _split_layout(spec, folder)
    names = _int_keys(spec.get("class_names", {}))
    counts_spec = {int(k): _count(v) for k, v in _flat_counts(spec).items()}
    pattern = spec.get("file_pattern", "{}.tfrecords")
    order = [c for s in SPLIT_NAMES for c in split_ids[s]]
    files = {c: _class_files(folder, pattern, c) for c in order}
    for c, fs in files.items():
        if not fs or not all(f.is_file() for f in fs):
            raise FileNotFoundError(
                f"class {c} of {folder}: record file {fs[0] if fs else pattern.format(c, '*')} not found"
            )
    listing = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for c in order for f in files[c]]
    prep: dict[str, Any] = {
        "kind": "image",
        "source": str(folder),
        "format": "meta-dataset tfrecords",
        "spec_class": spec["__class__"],
        "image_size": size,
        "channels": chan,
        "resize": "PIL.Image.resize BILINEAR on the 8-bit image",
        "scaling": "uint8 / 255",
        "value_range": [0.0, 1.0],
        "class_split": {"rule": "dataset_spec.json (TRAIN/VALID/TEST)"},
    }
    counts: dict[int, int] = {}

    def build() -> tuple[np.ndarray, dict[str, Any]]:
        items: list[tuple[bytes, str]] = []
        for c in order:
            n = 0
            for f in files[c]:
                for i, rec in enumerate(read_tfrecords(f)):
                    ex = decode_example(rec)
                    if "image" not in ex or not ex["image"]:
                        raise ValueError(f"{f}: record {i} has no 'image' feature")
                    label = ex.get("label", [c])
                    if list(label) != [c]:
                        raise ValueError(f"{f}: record {i} has label {list(label)}, expected class id {c}")
                    items.append((ex["image"][0], f"{f} record {i}"))  # type: ignore[arg-type]
                    n += 1
            if c in counts_spec and counts_spec[c] != n:
                raise ValueError(f"class {c} of {folder}: dataset_spec.json says {counts_spec[c]} images, found {n}")
            counts[c] = n
        workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
        u8 = _decode_many(items, size, "L" if chan == 1 else "RGB", workers)
        out_ch = chan
        if chan == "auto":
            grey = bool((u8[:, 0] == u8[:, 1]).all() and (u8[:, 1] == u8[:, 2]).all())
            out_ch, u8 = (1, u8[:, :1]) if grey else (3, u8)
        n_train = sum(counts[c] for c in split_ids["train"]) or u8.shape[0]
        return u8, {"channels": out_ch, "counts": [counts[c] for c in order], "stats": _channel_stats(u8[:n_train])}

    from metafit.data.sources import _safe_name

    x, meta, load_info = _cached(
        cache_dir, use_cache, "md-" + _safe_name(str(spec.get("name", folder.name))), [listing, prep], build
    )
    prep["channels"] = meta["channels"]
    prep["channel_stats"] = dict(meta["stats"], split="train" if split_ids["train"] else "all")
    per_class = dict(zip(order, meta["counts"]))
    splits, start = {}, 0
    for s in SPLIT_NAMES:
        ids = split_ids[s]
        if not ids:
            continue
        cnt = [per_class[c] for c in ids]
        n = sum(cnt)
        splits[s] = LabelledDataset(
            x=x[start : start + n],
            y=torch.arange(len(ids)).repeat_interleave(torch.tensor(cnt)),
            class_names=tuple(str(names.get(c, c)) for c in ids),
            groups=None if groups is None else tuple(groups[c] for c in ids),
        )
        start += n
    return SplitDataset(
        name=str(spec.get("name", folder.name)), splits=splits, preprocessing=prep, trees=trees, load_info=load_info
    )


def _flat_counts(spec: Mapping[str, Any]) -> dict[str, Any]:
    ipc = spec.get("images_per_class", {})
    if spec["__class__"] == "HierarchicalDatasetSpecification":
        names = {v: k for k, v in spec.get("class_names", {}).items()}
        out = {}
        for counts in ipc.values():
            for wn, n in counts.items():
                if wn in names:
                    out[names[wn]] = n
        return out
    return dict(ipc)


def write_metadataset_source(
    path: str | Path,
    splits: Mapping[str, LabelledDataset],
    *,
    name: str,
    image_format: str = "PNG",
) -> Path:
    """Writes datasets in Meta-Dataset's converted format (``DatasetSpecification``; for tests).

    Classes are numbered TRAIN first, then VALID, then TEST (the spec's contiguous layout);
    each class's images go to ``<id>.tfrecords`` as ``tf.train.Example`` records with ``image``
    (the image encoded with Pillow in ``image_format``) and ``label``. Images must be float
    ``(C, H, W)`` in ``[0, 1]`` with ``C`` 1 or 3; they are stored as ``round(255 x)`` uint8.

    Args:
        path: Output folder (created).
        splits: ``"train"`` / ``"val"`` / ``"test"`` -> :class:`LabelledDataset` (any subset).
        name: The spec's ``name``.
        image_format: Pillow format (``"PNG"`` is lossless; ``"JPEG"`` as the official files).

    Returns:
        The folder.
    """
    from PIL import Image

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    per_split, class_names, images_per_class = {}, {}, {}
    cid = 0
    for md, s in (("TRAIN", "train"), ("VALID", "val"), ("TEST", "test")):
        ds = splits.get(s)
        per_split[md] = 0 if ds is None else ds.num_classes
        if ds is None:
            continue
        for c, idx in enumerate(ds.class_indices()):
            records = []
            for i in idx.tolist():
                img = ds.x[i]
                if img.dim() != 3 or img.shape[0] not in (1, 3):
                    raise ValueError(f"images must be (C, H, W) with C in (1, 3), got {tuple(img.shape)}")
                u8 = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                pil = Image.fromarray(u8[:, :, 0] if u8.shape[2] == 1 else u8, mode="L" if u8.shape[2] == 1 else "RGB")
                buf = io.BytesIO()
                pil.save(buf, format=image_format)
                records.append(encode_example({"image": buf.getvalue(), "label": cid}))
            write_tfrecords(out / f"{cid}.tfrecords", records)
            class_names[str(cid)] = ds.class_names[c]
            images_per_class[str(cid)] = len(records)
            cid += 1
    spec = {
        "name": name,
        "classes_per_split": per_split,
        "images_per_class": images_per_class,
        "class_names": class_names,
        "path": str(out),
        "file_pattern": "{}.tfrecords",
        "__class__": "DatasetSpecification",
    }
    (out / "dataset_spec.json").write_text(json.dumps(spec, indent=2))
    return out
