"""Harder evaluation protocols: within-alphabet episodes, imbalanced queries, inductive norms, sweeps.

* :func:`within_group_episodes` / :func:`within_alphabet_episodes`: every class of an episode
  from ONE group of the dataset; for Omniglot the within-alphabet one-shot task of Lake,
  Salakhutdinov & Tenenbaum (Science 2015): 20-way 1-shot on the evaluation alphabets, no
  rotated classes (refused), which is much harder than episodes mixing alphabets.
* :func:`imbalanced_query_episodes`: query sets whose class proportions follow a Dirichlet
  distribution (Veilleux, Boudiaf, Piantanida & Ben Ayed, "Realistic evaluation of transductive
  few-shot learning", NeurIPS 2021, arXiv 2204.11181), fixed total query size.
* :func:`fixed_episodes_with_classes`: :func:`~metafit.data.sampling.fixed_episodes` plus the
  dataset class id of every episode label (what :func:`metafit.comparison.class_bootstrap_ci`
  needs).
* :func:`inductive` / :func:`support_statistics`: evaluation where batch-norm statistics come
  from the SUPPORT set only, so that a query's prediction does not depend on the other queries
  (metafit's default, like the MAML and ProtoNets reference code, is transductive:
  :class:`~metafit.models.TaskBatchNorm` normalises the query batch with its own statistics).
* :func:`sweep`: accuracy over a grid of (n_way, k_shot) settings.

Every episode function takes an explicit seed (a fresh CPU ``torch.Generator``) or generator; no
global random state is touched. Each returns an :class:`EpisodeSet`: the stacked tasks, the
dataset class id of every label and (within-group episodes) the group of every episode.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit.data.datasets import LabelledDataset
from metafit.data.sampling import (
    EpisodeSampler,
    _check_dataset,
    _check_generator,
    _check_int,
    _distinct_classes,
    _gather,
)
from metafit.data.task import Task, TaskBatch
from metafit.functional import Buffers, Params

if TYPE_CHECKING:  # metafit.algorithms imports metafit.data: import it lazily at run time
    from metafit.algorithms.base import (
        Algorithm,
        EvalSettings,
        GradientLearner,
        LearnerSpec,
        MetaParams,
        Metrics,
    )

__all__ = [
    "EpisodeSet",
    "Inductive",
    "InductiveGradient",
    "SupportStatsNorm",
    "SweepPoint",
    "fixed_episodes_with_classes",
    "imbalanced_query_counts",
    "imbalanced_query_episodes",
    "inductive",
    "rotated_classes",
    "support_statistics",
    "sweep",
    "within_alphabet_episodes",
    "within_group_episodes",
]

#: Class-name suffix of the rotated copies made by :func:`metafit.data.omniglot.omniglot_split`.
_ROTATED = re.compile(r"/rot(90|180|270)$")


@dataclass(frozen=True)
class EpisodeSet:
    """Fixed episodes and where their classes come from.

    Attributes:
        tasks: ``T`` stacked episodes (labels ``0..N-1``, support and query grouped by label).
        classes: int64 ``(T, N)``: ``classes[t, j]`` is the dataset class id of label ``j`` in
            episode ``t``.
        groups: The group (e.g. Omniglot alphabet) of each episode for within-group episodes,
            else ``None``.
    """

    tasks: TaskBatch
    classes: Tensor
    groups: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.tasks)


def _seed_generator(seed: object) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    return torch.Generator().manual_seed(seed)


def _check_sizes(dataset: LabelledDataset, classes: Sequence[int] | Tensor, need: int, what: str) -> None:
    sizes = dataset.class_sizes()
    ids = torch.as_tensor(classes, dtype=torch.int64)
    small = ids[sizes[ids] < need]
    if small.numel():
        c = int(small[0])
        raise ValueError(
            f"{what} = {need} exceeds the size of class {dataset.class_names[c]!r} (class {c}, "
            f"{int(sizes[c])} examples); every class needs {need} distinct examples"
        )


def _examples(dataset: LabelledDataset, classes: Tensor, counts: Tensor, g: torch.Generator) -> Tensor:
    """``(N, max(counts))`` distinct example indices per class (random order); padded with -1."""
    table = dataset.index_table()
    sizes = dataset.class_sizes()[classes]
    width = table.shape[1]
    keys = torch.rand(classes.numel(), width, generator=g)
    keys.masked_fill_(torch.arange(width)[None, :] >= sizes[:, None], -1.0)
    pos = keys.topk(int(counts.max()), dim=1).indices
    return table[classes].gather(1, pos)


def fixed_episodes_with_classes(
    dataset: LabelledDataset, n_way: int, k_shot: int, n_query: int, n_episodes: int, *, seed: int
) -> EpisodeSet:
    """:func:`~metafit.data.sampling.fixed_episodes` (identical tensors) plus the class ids.

    Args:
        dataset, n_way, k_shot, n_query, n_episodes, seed: As in ``fixed_episodes``.

    Returns:
        :class:`EpisodeSet` whose ``tasks`` equal ``fixed_episodes(...)`` with the same arguments.
    """
    g = _seed_generator(seed)
    _check_int("n_episodes", n_episodes, 1)
    sampler = EpisodeSampler(dataset, n_way, k_shot, n_query, tasks_per_batch=n_episodes, generator=g)
    state = g.get_state()
    tasks = sampler.sample_batch()
    # The sampler's first draw is the (T, N) class matrix (EpisodeSampler._indices): replay it.
    replay = torch.Generator()
    replay.set_state(state)
    classes = _distinct_classes(n_episodes, dataset.num_classes, n_way, replay)
    return EpisodeSet(tasks, classes)


# -- within-group (within-alphabet) episodes -------------------------------------------------------


def rotated_classes(dataset: LabelledDataset) -> list[int]:
    """Class ids whose name marks a rotated copy (``.../rot90``, ``rot180``, ``rot270``)."""
    return [c for c, name in enumerate(dataset.class_names) if _ROTATED.search(name)]


def within_group_episodes(
    dataset: LabelledDataset,
    n_way: int,
    k_shot: int,
    n_query: int,
    n_episodes: int,
    *,
    generator: torch.Generator,
    allow_rotations: bool = False,
) -> EpisodeSet:
    """Episodes whose classes all come from one group (``dataset.groups``).

    Per episode: a group uniformly among the groups with at least ``n_way`` classes, then
    ``n_way`` distinct classes of that group in a uniformly random order (label ``j`` is the
    ``j``-th), then ``k_shot + n_query`` distinct examples per class (support first).

    Args:
        dataset: Classes with ``groups`` set (e.g. an Omniglot split: groups are alphabets).
        n_way, k_shot, n_query: Episode shape.
        n_episodes: Episodes ``T``.
        generator: CPU ``torch.Generator``.
        allow_rotations: Accept rotated copies as classes (refused by default: the Lake et al.
            task has none, and a rotated copy of a character is not a new character).

    Returns:
        :class:`EpisodeSet` with ``groups`` = the group of every episode.

    Raises:
        ValueError: no groups, rotated classes, no group with ``n_way`` classes, small classes.
    """
    ds = _check_dataset(dataset)
    g = _check_generator(generator)
    n_way, k_shot = _check_int("n_way", n_way, 1), _check_int("k_shot", k_shot, 1)
    n_query, n_episodes = _check_int("n_query", n_query, 1), _check_int("n_episodes", n_episodes, 1)
    if ds.groups is None:
        raise ValueError("within-group episodes need dataset.groups (one group name per class), got None")
    rot = rotated_classes(ds)
    if rot and not allow_rotations:
        raise ValueError(
            f"the dataset holds {len(rot)} rotated classes (e.g. {ds.class_names[rot[0]]!r}); the within-alphabet "
            "protocol uses unrotated characters only: build the split with rotations=False (e.g. "
            "omniglot_split(data, 'test', protocol='lake', rotations=False)) or pass allow_rotations=True"
        )
    members: dict[str, list[int]] = {}
    for c, grp in enumerate(ds.groups):
        members.setdefault(grp, []).append(c)
    pools = [(grp, torch.tensor(v)) for grp, v in members.items() if len(v) >= n_way]
    if not pools:
        biggest = max(len(v) for v in members.values())
        raise ValueError(f"n_way={n_way} exceeds the classes of every group (the largest has {biggest})")
    _check_sizes(ds, torch.cat([p for _, p in pools]), k_shot + n_query, "k_shot + n_query")
    counts = torch.full((n_way,), k_shot + n_query)
    s_idx, q_idx, classes, groups = [], [], [], []
    for _ in range(n_episodes):
        grp, pool = pools[int(torch.randint(len(pools), (1,), generator=g))]
        cls = pool[torch.randperm(pool.numel(), generator=g)[:n_way]]
        idx = _examples(ds, cls, counts, g)
        s_idx.append(idx[:, :k_shot].reshape(-1))
        q_idx.append(idx[:, k_shot:].reshape(-1))
        classes.append(cls)
        groups.append(grp)
    x = ds.x
    sy = torch.arange(n_way).repeat_interleave(k_shot).expand(n_episodes, -1).contiguous().to(ds.y.device)
    qy = torch.arange(n_way).repeat_interleave(n_query).expand(n_episodes, -1).contiguous().to(ds.y.device)
    tasks = TaskBatch(_gather(x, torch.stack(s_idx)), sy, _gather(x, torch.stack(q_idx)), qy, n_way=n_way)
    return EpisodeSet(tasks, torch.stack(classes), tuple(groups))


def within_alphabet_episodes(
    dataset: LabelledDataset, n_episodes: int, *, seed: int, n_way: int = 20, k_shot: int = 1, n_query: int = 1
) -> EpisodeSet:
    """Omniglot within-alphabet one-shot episodes (Lake et al., Science 2015): 20-way 1-shot.

    ``dataset`` is an Omniglot split built WITHOUT rotations whose ``groups`` are alphabets, for
    the paper's task the evaluation alphabets: ``omniglot_split(data, "test", protocol="lake",
    rotations=False)``. Lake et al. score one query per class (``n_query=1``, the default).

    Args:
        dataset: The split.
        n_episodes: Episodes.
        seed: Seed of a fresh CPU generator.
        n_way, k_shot, n_query: Episode shape (20, 1, 1).

    Returns:
        :class:`EpisodeSet` (``groups`` = the alphabet of each episode).
    """
    return within_group_episodes(dataset, n_way, k_shot, n_query, n_episodes, generator=_seed_generator(seed))


# -- Dirichlet-imbalanced query sets ---------------------------------------------------------------


def imbalanced_query_counts(
    n_way: int,
    n_query_total: int,
    alpha: float,
    *,
    generator: torch.Generator,
    min_per_class: int = 1,
    capacity: Tensor | None = None,
) -> Tensor:
    """Query counts per class with Dirichlet(alpha) proportions and a fixed total.

    ``p ~ Dirichlet(alpha * 1_N)`` (normalised ``Gamma(alpha, 1)`` draws from ``generator``); each
    class gets ``min_per_class`` queries and the remaining ``R = n_query_total - N * min_per_class``
    are split in proportion to ``p`` by largest-remainder (Hamilton) rounding (ties to the lower
    label), so the counts sum exactly to ``n_query_total`` and a huge ``alpha`` gives balanced
    counts whenever ``N`` divides ``R``. Veilleux et al. (2021) draw ``p`` the same way; the
    ``min_per_class`` floor (default 1, so that every class is scored) is metafit's choice.

    Returns:
        int64 ``(N,)``.
    """
    n_way = _check_int("n_way", n_way, 1)
    total = _check_int("n_query_total", n_query_total, 1)
    min_per_class = _check_int("min_per_class", min_per_class, 0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not float(alpha) > 0:
        raise ValueError(f"alpha must be a number > 0, got {alpha!r}")
    rest = total - n_way * min_per_class
    if rest < 0:
        raise ValueError(
            f"n_query_total={total} is below n_way * min_per_class = {n_way} * {min_per_class}; "
            "every class needs its minimum"
        )
    gam = torch._standard_gamma(torch.full((n_way,), float(alpha), dtype=torch.float64), generator=generator)
    p = gam / gam.sum() if float(gam.sum()) > 0 else torch.full((n_way,), 1.0 / n_way, dtype=torch.float64)
    share = p * rest
    base = torch.floor(share).long()
    left = rest - int(base.sum())
    if left:
        frac = share - base.double()
        order = torch.argsort(-frac, stable=True)
        base[order[:left]] += 1
    counts = base + min_per_class
    if capacity is not None:
        cap = torch.as_tensor(capacity, dtype=torch.int64)
        if cap.shape != (n_way,) or int(cap.sum()) < total or bool((cap < min_per_class).any()):
            raise ValueError(
                f"capacity must be ({n_way},) ints >= min_per_class={min_per_class} summing to >= n_query_total={total}, "
                f"got {cap.tolist()}"
            )
        over = int((counts - cap).clamp_min(0).sum())
        counts = torch.minimum(counts, cap)
        for j in torch.argsort(-p, stable=True).tolist():
            if over == 0:
                break
            add = min(over, int(cap[j] - counts[j]))
            counts[j] += add
            over -= add
    return counts


def imbalanced_query_episodes(
    dataset: LabelledDataset,
    n_way: int,
    k_shot: int,
    n_query_total: int,
    n_episodes: int,
    *,
    alpha: float,
    seed: int,
    min_per_class: int = 1,
) -> EpisodeSet:
    """N-way K-shot episodes with a Dirichlet-imbalanced query set of fixed total size.

    Per episode: ``N`` distinct classes in random order, query counts from
    :func:`imbalanced_query_counts`, then ``k_shot + count_j`` distinct examples of class ``j``
    (support first). The support stays balanced. Queries are grouped by label.

    Args:
        dataset: Held-out classes.
        n_way, k_shot: Episode shape.
        n_query_total: Queries per episode ``Q`` (fixed, so episodes stack).
        n_episodes: Episodes.
        alpha: Dirichlet concentration (small: very imbalanced; large: balanced).
        seed: Seed of a fresh CPU generator.
        min_per_class: Queries every class gets at least (default 1).

    Returns:
        :class:`EpisodeSet`.

    Raises:
        ValueError: a class smaller than ``k_shot + min_per_class``, or the arguments of
            :func:`imbalanced_query_counts` (e.g. ``Q`` more than the chosen classes can hold).

    Query counts are capped at ``class size - k_shot`` (see :func:`imbalanced_query_counts`).
    """
    ds = _check_dataset(dataset)
    g = _seed_generator(seed)
    n_way, k_shot = _check_int("n_way", n_way, 1), _check_int("k_shot", k_shot, 1)
    n_episodes = _check_int("n_episodes", n_episodes, 1)
    if n_way > ds.num_classes:
        raise ValueError(f"n_way={n_way} exceeds the number of classes in the dataset ({ds.num_classes})")
    _check_sizes(ds, torch.arange(ds.num_classes), k_shot + min_per_class, "k_shot + min_per_class")
    sizes = ds.class_sizes()
    s_idx, q_idx, q_lab, classes = [], [], [], []
    for _ in range(n_episodes):
        cls = _distinct_classes(1, ds.num_classes, n_way, g)[0]
        counts = imbalanced_query_counts(
            n_way, n_query_total, alpha, generator=g, min_per_class=min_per_class, capacity=sizes[cls] - k_shot
        )
        idx = _examples(ds, cls, counts + k_shot, g)
        s_idx.append(idx[:, :k_shot].reshape(-1))
        q_idx.append(torch.cat([idx[j, k_shot : k_shot + int(counts[j])] for j in range(n_way)]))
        q_lab.append(torch.arange(n_way).repeat_interleave(counts))
        classes.append(cls)
    dev = ds.y.device
    sy = torch.arange(n_way).repeat_interleave(k_shot).expand(n_episodes, -1).contiguous().to(dev)
    tasks = TaskBatch(
        _gather(ds.x, torch.stack(s_idx)),
        sy,
        _gather(ds.x, torch.stack(q_idx)),
        torch.stack(q_lab).to(dev),
        n_way=n_way,
    )
    return EpisodeSet(tasks, torch.stack(classes))


# -- inductive batch statistics --------------------------------------------------------------------


class SupportStatsNorm(nn.Module):
    """Batch normalisation whose statistics come from the first ``n_stats`` rows of the batch only.

    The same function as :class:`~metafit.models.TaskBatchNorm` (biased variance over every
    dimension but ``C``, then the affine map) except that the mean and variance are those of
    ``x[:n_stats]``; every row is normalised with them. With ``n_stats >= B`` it is TaskBatchNorm.
    Its parameters are named ``weight`` and ``bias`` like TaskBatchNorm's and ``nn.BatchNorm*``'s,
    so a model's parameter dict is unchanged by the swap. Written from elementary ops (exact under
    ``torch.func`` transforms).

    Args:
        num_features: Channels ``C``.
        n_stats: Rows whose statistics are used (the support set when support rows come first).
        eps: Added to the variance.
        affine: Has ``weight``/``bias``.
    """

    def __init__(self, num_features: int, n_stats: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.n_stats = _check_int("n_stats", n_stats, 1)
        self.eps = eps
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"SupportStatsNorm expected input (B, {self.num_features}, ...), got {tuple(x.shape)}")
        ref = x[: self.n_stats]
        dims = [0] + list(range(2, x.dim()))
        mean = ref.mean(dim=dims, keepdim=True)
        var = (ref - mean).pow(2).mean(dim=dims, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            shape = [1, -1] + [1] * (x.dim() - 2)
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, n_stats={self.n_stats}, eps={self.eps}, affine={self.weight is not None}"


def _batch_stat_norm(m: nn.Module) -> bool:
    from metafit.models.backbones import TaskBatchNorm

    if isinstance(m, TaskBatchNorm):
        return True
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats


def support_statistics(model: nn.Module, n_support: int) -> nn.Module:
    """A copy of ``model`` whose batch-statistics norms use the first ``n_support`` rows only.

    Every :class:`~metafit.models.TaskBatchNorm` and ``nn.BatchNorm*d(track_running_stats=False)``
    is replaced by a :class:`SupportStatsNorm` with the same parameter names; modules with a
    boolean ``fuse`` attribute (:class:`~metafit.models.Conv4`, whose fused blocks call the norm
    functions directly) get ``fuse=False`` so that every norm goes through its module. Parameters
    and buffers are SHARED with ``model`` (not copied); ``model`` itself is unchanged. Layers with
    running statistics are left alone.

    Args:
        model: Any ``nn.Module``.
        n_support: Leading rows that are the support set.

    Returns:
        The copy (same ``named_parameters()`` / ``named_buffers()`` names, in the same order).

    Raises:
        TypeError: a ``torch.fx`` graph that calls the batch-norm functions directly (e.g. the
            output of :func:`~metafit.models.fuse_norm_relu_pool`): apply this to the unfused model.
    """
    from metafit.models import ops

    n_support = _check_int("n_support", n_support, 1)
    fused_fns = {ops.task_batch_norm, ops.conv_batch_norm, ops.batch_norm_relu_max_pool, F.batch_norm}
    for name, m in model.named_modules():
        if isinstance(m, torch.fx.GraphModule):
            for node in m.graph.nodes:
                if node.op == "call_function" and node.target in fused_fns:
                    raise TypeError(
                        f"support_statistics: module {name or type(model).__name__!r} is a torch.fx graph calling "
                        f"{getattr(node.target, '__name__', node.target)} directly; use the unfused model"
                    )
    memo: dict[int, Any] = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    out = copy.deepcopy(model, memo)
    for m in out.modules():
        if isinstance(getattr(m, "fuse", None), bool):
            m.fuse = False
        for child_name, child in list(m.named_children()):
            if _batch_stat_norm(child):
                affine = child.weight is not None
                new = SupportStatsNorm(child.num_features, n_support, float(child.eps), affine=False)
                if affine:
                    new.weight, new.bias = child.weight, child.bias  # shared Parameter objects
                setattr(m, child_name, new)
    if [k for k, _ in out.named_parameters()] != [k for k, _ in model.named_parameters()]:
        raise RuntimeError("support_statistics changed the parameter names; please report this")
    return out


class _InductiveAdapted(NamedTuple):
    """The inner learner's adapted state and the support inputs (for the statistics)."""

    inner: Any
    support_x: Tensor


@dataclass(frozen=True)
class Inductive:
    """Inductive evaluation of any learner: batch statistics from the support set only.

    ``predict(..., x)`` runs the inner learner's ``predict`` on ``cat(support_x, x)`` with the
    model's norms swapped for support-statistics norms (:func:`support_statistics` with
    ``n_support = len(support_x)``) and keeps the rows of ``x``: each query is normalised with
    statistics of the support set, so its logits do not depend on the other queries. ``adapt`` is
    the inner learner's (it only sees the support set, whose own statistics ARE the support
    statistics). Without batch-statistics norms the predictions equal the inner learner's.

    Args:
        inner: The learner (e.g. :class:`~metafit.algorithms.ProtoNet`).
    """

    inner: Algorithm

    @property
    def spec(self) -> LearnerSpec:
        """The inner learner's spec."""
        return self.inner.spec

    @property
    def criterion(self) -> str:
        """The inner learner's task loss name."""
        return getattr(self.inner, "criterion", "cross_entropy")

    def init(self, model: nn.Module, *, generator: torch.Generator | None = None) -> MetaParams:
        """The inner learner's meta-parameters."""
        return self.inner.init(model, generator=generator)

    def adapt(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        support_x: Tensor,
        support_y: Tensor,
        *,
        n_way: int | None = None,
    ) -> _InductiveAdapted:
        """The inner adaptation, with the support set kept for :meth:`predict`."""
        return _InductiveAdapted(
            self.inner.adapt(model, meta_params, buffers, support_x, support_y, n_way=n_way), support_x
        )

    def _predict_inner(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        inner_adapted: Any,
        support_x: Tensor,
        x: Tensor,
    ) -> Tensor:
        s = int(support_x.shape[0])
        shadow = support_statistics(model, s)
        return self.inner.predict(shadow, meta_params, buffers, inner_adapted, torch.cat([support_x, x]))[s:]

    def predict(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: _InductiveAdapted, x: Tensor
    ) -> Tensor:
        """Outputs ``(B, ...)`` for ``x (B, *input_shape)``, statistics from the support set."""
        return self._predict_inner(model, meta_params, buffers, adapted.inner, adapted.support_x, x)

    def loss(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, task: Task) -> tuple[Tensor, Metrics]:
        """Query loss and metrics of the inductive predictions."""
        adapted = self.adapt(model, meta_params, buffers, task.support_x, task.support_y, n_way=task.n_way)
        out = self.predict(model, meta_params, buffers, adapted, task.query_x)
        from metafit.algorithms.base import criterion_fn, task_metrics

        loss = criterion_fn(self.criterion)(out, task.query_y)
        return loss, task_metrics(self.criterion, out, task.query_y, loss)


@dataclass(frozen=True)
class InductiveGradient(Inductive):
    """:class:`Inductive` for gradient learners (MAML, Meta-SGD, ANIL): also the adaptation curve."""

    inner: GradientLearner

    def adapt_steps(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        support_x: Tensor,
        support_y: Tensor,
        *,
        steps: int | None = None,
        lr: float | None = None,
        create_graph: bool | None = None,
    ) -> Iterator[Params]:
        """The inner learner's inner steps (support set only)."""
        return self.inner.adapt_steps(
            model, meta_params, buffers, support_x, support_y, steps=steps, lr=lr, create_graph=create_graph
        )

    def adaptation_curve(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        task: Task,
        *,
        steps: int,
        lr: float | None = None,
    ) -> Metrics:
        """Inductive query metrics after 0..``steps`` inner updates, each ``(steps + 1,)``."""
        from metafit.algorithms.base import criterion_fn, task_metrics

        lr = self.eval_settings().lr if lr is None else lr
        crit = criterion_fn(self.criterion)
        rows: list[Metrics] = []
        for params in self.inner.adapt_steps(
            model, meta_params, buffers, task.support_x, task.support_y, steps=steps, lr=lr, create_graph=False
        ):
            with torch.no_grad():
                out = self._predict_inner(model, meta_params, buffers, params, task.support_x, task.query_x)
                rows.append(task_metrics(self.criterion, out, task.query_y, crit(out, task.query_y)))
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def eval_settings(self) -> EvalSettings:
        """The inner learner's evaluation settings."""
        return self.inner.eval_settings()

    def with_eval(self, *, steps: int | None = None, lr: float | None = None) -> InductiveGradient:
        """Same wrapper around ``inner.with_eval(...)``."""
        return InductiveGradient(self.inner.with_eval(steps=steps, lr=lr))


def inductive(learner: Algorithm) -> Inductive:
    """The inductive-evaluation wrapper of ``learner`` (:class:`InductiveGradient` for gradient learners)."""
    from metafit.algorithms.base import Algorithm

    if not isinstance(learner, Algorithm):
        raise TypeError(f"learner must satisfy the Algorithm protocol, got {type(learner).__name__}")
    if isinstance(learner, Inductive):
        return learner
    if learner.spec.inner_loop:
        return InductiveGradient(learner)  # type: ignore[arg-type]
    return Inductive(learner)


# -- way/shot sweeps -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPoint:
    """One (n_way, k_shot) setting of a sweep: ``mean ± ci95`` over ``n`` episodes."""

    n_way: int
    k_shot: int
    mean: float
    ci95: float
    std: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return asdict(self)


def sweep(evaluate: Callable[[int, int], Any], settings: Sequence[tuple[int, int]]) -> list[SweepPoint]:
    """Curve data over (n_way, k_shot) settings.

    Args:
        evaluate: ``evaluate(n_way, k_shot) -> Summary`` (anything with ``mean``, ``ci95``, ``std``,
            ``n``; e.g. ``lambda n, k: metafit.evaluation.evaluate(...).metrics["accuracy"]``).
        settings: ``[(n_way, k_shot), ...]`` in the order to evaluate (e.g. ``[(5, k) for k in (1, 5)]``).

    Returns:
        One :class:`SweepPoint` per setting, in order.
    """
    out = []
    for n, k in settings:
        _check_int("n_way", n, 1)
        _check_int("k_shot", k, 1)
        s = evaluate(n, k)
        out.append(SweepPoint(n, k, float(s.mean), float(s.ci95), float(s.std), int(s.n)))
    return out
