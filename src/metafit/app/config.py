"""Run configuration: frozen dataclasses, one per layer, checked on construction.

A :class:`RunConfig` holds a :class:`DataConfig`, :class:`ModelConfig`, :class:`AlgoConfig` and
:class:`TrainConfig`. Configs round-trip through plain dicts (:meth:`RunConfig.from_dict`,
:meth:`RunConfig.to_dict`) and through JSON, YAML and TOML files (:func:`load_config`,
:func:`save_config`). Unknown keys are errors (a typo never silently falls back to a default),
and every field is validated in ``__post_init__`` with a message naming the field, the expected
and the actual value.

Example:
    >>> cfg = RunConfig.from_dict({"train": {"steps": 10}, "algo": {"name": "fomaml"}})
    >>> cfg.train.steps, cfg.algo.name
    (10, 'fomaml')
    >>> apply_overrides(cfg, ["algo.inner_lr=0.05"]).algo.inner_lr
    0.05
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from metafit.algorithms.registry import LEARNERS, learner_options
from metafit.engine import PATH_NAMES

__all__ = [
    "DataConfig",
    "ModelConfig",
    "AlgoConfig",
    "TrainConfig",
    "RunConfig",
    "DATASETS",
    "CLASSIFICATION_FAMILIES",
    "IMAGE_COMPLETION",
    "REGRESSION_FAMILIES",
    "TASK_FAMILIES",
    "ARCHS",
    "ALGORITHMS",
    "PATHS",
    "SCHEDULERS",
    "load_config",
    "save_config",
    "apply_overrides",
    "config_diff",
]

#: Regression task families (generated, no data files): MAML's sinusoids and 1-D Gaussian processes.
IMAGE_COMPLETION = ("completion-omniglot", "completion-fashion-mnist")  # pixels as points (x: row, col)
REGRESSION_FAMILIES = ("sinusoid", "gp-rbf", "gp-matern52", "gp-periodic", *IMAGE_COMPLETION)
CLASSIFICATION_FAMILIES = ("tabular-prior",)  # synthetic classification task families (no stored data)
TASK_FAMILIES = (*REGRESSION_FAMILIES, *CLASSIFICATION_FAMILIES)
DATASETS = (*TASK_FAMILIES, "omniglot", "fashion-mnist", "kuzushiji-kanji", "digits")  # built-ins; also a path
ARCHS = ("auto", "mlp", "conv4")
ALGORITHMS = tuple(LEARNERS)  # the registry is the one list of learner names
PATHS = ("auto", *PATH_NAMES)
SCHEDULERS = ("none", "cosine", "step", "exponential", "linear")
SPLITS = ("train", "trainval")


def _fail(section: str, name: str, expected: str, actual: Any) -> None:
    raise ValueError(f"{section}.{name} must be {expected}, got {actual!r}")


def _check_int(section: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(section, name, f"an int >= {minimum}", value)


def _check_opt_int(section: str, name: str, value: Any, minimum: int) -> None:
    if value is not None:
        _check_int(section, name, value, minimum)


def _check_pos_float(section: str, name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        _fail(section, name, "a finite number > 0" + (" or null" if allow_none else ""), value)


def _check_choice(section: str, name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        _fail(section, name, f"one of {list(choices)}", value)


def _check_bool(section: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(section, name, "true or false", value)


@dataclass(frozen=True)
class DataConfig:
    """What tasks look like and where they come from.

    Attributes:
        dataset: ``"sinusoid"`` (MAML §5.1 regression), ``"gp-rbf"`` / ``"gp-matern52"`` /
            ``"gp-periodic"`` (1-D Gaussian-process regression, the NP benchmark; its held-out tasks
            have per-task context sizes, for learners with a padding mask: ``anp``, ``tnp``),
            ``"completion-omniglot"`` / ``"completion-fashion-mnist"`` (image completion, the NP
            image benchmark: a task is one image of the split, ``x`` a pixel's (row, column) in
            ``[-1, 1]^2``, ``y`` its intensity; the context is ``k_shot..k_shot_max`` random pixels,
            the targets every pixel; :class:`metafit.data.gp.ImageCompletionTasks`),
            ``"tabular-prior"`` (few-shot tabular classification tasks from a random-MLP prior,
            :class:`metafit.data.gp.TabularPriorTasks`, ``n_features`` wide; evaluate on real tables
            with ``metafit compare RUN --dataset iris``), a built-in classification dataset
            (``"omniglot"``, ``"fashion-mnist"``, ``"kuzushiji-kanji"``, ``"digits"``; the last two
            of which hold only test classes... see :mod:`metafit.data.sources`) or a path: an
            image folder (class folders, split folders or split CSV files), a ``.npz``/``.npy``
            array file, a ``.csv``/``.parquet`` table (``label_column``) or a Meta-Dataset
            converted source (``dataset_spec.json`` + ``.tfrecords``).
        sources: Several training sources (built-in names or paths, e.g. ``["omniglot",
            "kuzushiji-kanji"]``) instead of ``dataset``: each keeps its own class split, every
            source's images are converted to ``image_size`` and ``channels`` (``"auto"``: grey),
            and each training episode draws its source (``source_weights``, default uniform).
            Evaluation uses the first source's test classes (``metafit eval --dataset`` for the
            others).
        source_weights: Sampling weight of each source (``None``: uniform).
        episodes: ``"fixed"`` (``n_way``-way ``k_shot``-shot training episodes) or
            ``"metadataset"`` (Triantafillou et al. 2020: variable way 5..50, imbalanced
            support, class hierarchies where the source has them).
        label_column: Tables: the column holding the class.
        channels: Image folders: 1 (grey), 3 (RGB) or ``"auto"``.
        n_way: Classes per task (classification only).
        k_shot: Support examples per class (per task for regression).
        n_query: Query examples per class (per task for regression).
        tasks_per_batch: Tasks per meta-batch.
        protocol: Omniglot class split (``"vinyals"``: 1200 background+evaluation classes for
            training, the rest for testing; ``"lake"``: background vs evaluation alphabets).
        rotations: Omniglot: add the 90/180/270 degree rotations as new classes.
        test_rotations: Omniglot: whether the TEST classes include the rotated copies (``None``:
            as ``rotations``; ``false``: the unrotated test characters only).
        data_root: Folder holding ``omniglot/images_*.zip`` (``None``: ``$METAFIT_DATA``).
        cache_dir: Where the data layer may cache decoded arrays (``None``: none/default).
        image_size: Side length the images are resized to.
        eval_tasks: Held-out tasks (episodes) for the final evaluation.
        eval_k_shot: Shots at evaluation (``None``: ``k_shot``).
        eval_n_way: Ways at evaluation (``None``: ``n_way``).
        eval_n_query: Query examples at evaluation (``None``: ``n_query``; 100 for sinusoid).
        eval_seed: Seed of the fixed evaluation episodes.
        val_tasks: Held-out tasks of the ``val`` split scored every ``train.eval_every`` steps or
            ``train.eval_every_seconds`` (picks the best checkpoint).
        train_split: Classes meta-training draws from: ``"train"`` (the ``val`` classes are held
            out for validation) or ``"trainval"`` (both, as the papers' final runs; validation is
            then off).
        batch_size: Examples per mini-batch for learners that train on ordinary class batches
            (``pretrain``).
        k_shot_max: Draw each meta-batch's shot (support size per class; per task for
            regression) uniformly from ``k_shot..k_shot_max`` (``None``: always ``k_shot``), e.g. a
            CNP trained for variable context sizes.
        n_way_min: Draw each meta-batch's way uniformly from ``n_way_min..n_way`` (``None``:
            always ``n_way``), for learners that take any number of classes (not a fixed head).
        n_features: ``"tabular-prior"``: feature width of the tasks (a real table with fewer
            features is zero-padded to it at evaluation).
        prior: ``"tabular-prior"``: ``"clusters"`` (each class a Gaussian cluster of latent causes
            seen through a random MLP; the default) or ``"ranked"`` (a random MLP's scalar ranked
            into classes); see :class:`metafit.data.gp.TabularPriorTasks` ``classes``.
        prior_latent_dim: ``"tabular-prior"``: the most latent causes of a task (``latent_dim``;
            ``0``: independent features read directly, ``"ranked"`` only).
        prior_irrelevant: ``"tabular-prior"``: each task shuffles up to this fraction of its
            columns across rows, uninformative columns (``TabularPriorTasks`` ``irrelevant``).
        prior_warp: ``"tabular-prior"``: the chance that a column is quantised, rectified or
            exponentiated (``TabularPriorTasks`` ``warp``).
        n_features_min: ``"tabular-prior"``: each task uses its first ``d ~ U{n_features_min..n_features}``
            features, the rest zero (``None``: all ``n_features``), the layout of a padded table.
        augment_shift: Image datasets: meta-training episodes and pretraining batches move each
            image by up to this many pixels along each axis (:class:`metafit.data.RandomShift`;
            ``0``: no augmentation). Evaluation episodes are never augmented.
        monitor_tasks: Fixed TEST episodes (evaluation settings) scored every
            ``train.monitor_every_seconds`` of training time, written as ``"monitor"`` rows of
            ``metrics.jsonl``: a time-to-accuracy curve. They never select a checkpoint.
    """

    dataset: str = "sinusoid"
    label_column: str | None = None
    channels: Any = "auto"
    sources: tuple[str, ...] = ()
    source_weights: tuple[float, ...] | None = None
    episodes: str = "fixed"
    n_way: int = 5
    k_shot: int = 5
    n_query: int = 10
    tasks_per_batch: int = 4
    protocol: str = "vinyals"
    rotations: bool = True
    test_rotations: bool | None = None
    data_root: str | None = None
    cache_dir: str | None = None
    image_size: int = 28
    eval_tasks: int = 200
    eval_k_shot: int | None = None
    eval_n_way: int | None = None
    eval_n_query: int | None = None
    eval_seed: int = 12345
    val_tasks: int = 32
    train_split: str = "train"
    monitor_tasks: int = 600
    k_shot_max: int | None = None
    batch_size: int = 64
    n_way_min: int | None = None
    n_features: int = 64
    n_features_min: int | None = None
    prior: str = "clusters"
    prior_latent_dim: int = 4
    prior_irrelevant: float = 0.0
    prior_warp: float = 0.0
    augment_shift: int = 0

    def __post_init__(self) -> None:
        s = "data"
        _check_int(s, "augment_shift", self.augment_shift, 0)
        _check_choice(s, "train_split", self.train_split, SPLITS)
        _check_opt_int(s, "k_shot_max", self.k_shot_max, 1)
        _check_int(s, "batch_size", self.batch_size, 1)
        _check_int(s, "n_features", self.n_features, 1)
        _check_opt_int(s, "n_way_min", self.n_way_min, 2)
        _check_opt_int(s, "n_features_min", self.n_features_min, 1)
        _check_choice(s, "prior", self.prior, ("clusters", "ranked"))
        _check_int(s, "prior_latent_dim", self.prior_latent_dim, 0)
        if self.prior == "clusters" and self.prior_latent_dim < 1:
            _fail(s, "prior_latent_dim", "an int >= 1 for data.prior='clusters'", self.prior_latent_dim)
        for name, top, closed in (("prior_irrelevant", 1.0, False), ("prior_warp", 1.0, True)):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not (0 <= v <= top if closed else 0 <= v < top)
            ):
                _fail(s, name, "a number in [0, 1]" if closed else "a number in [0, 1)", v)
        if self.n_features_min is not None and self.n_features_min > self.n_features:
            _fail(s, "n_features_min", f"an int in 1..data.n_features={self.n_features}", self.n_features_min)
        if self.n_way_min is not None and self.n_way_min > self.n_way:
            _fail(s, "n_way_min", f"an int in 2..data.n_way={self.n_way}", self.n_way_min)
        if self.n_way_min is not None and self.k_shot_max is not None:
            _fail(
                s, "n_way_min", "None when data.k_shot_max is set (vary the way or the shot, not both)", self.n_way_min
            )
        if self.k_shot_max is not None and self.k_shot_max < self.k_shot:
            _fail(s, "k_shot_max", f"an int >= data.k_shot={self.k_shot}", self.k_shot_max)
        if not isinstance(self.dataset, str) or not self.dataset:
            _fail(s, "dataset", f"a built-in name {list(DATASETS)} or a path", self.dataset)
        if self.channels not in ("auto", 1, 3):
            _fail(s, "channels", "1, 3 or 'auto'", self.channels)
        if isinstance(self.sources, list):
            object.__setattr__(self, "sources", tuple(self.sources))
        if self.sources and self.dataset == "sinusoid":  # the default: the first source names the run's data
            object.__setattr__(self, "dataset", self.sources[0])
        if not all(isinstance(x, str) and x for x in self.sources):
            _fail(s, "sources", "a list of built-in dataset names or paths", self.sources)
        if self.source_weights is not None:
            if isinstance(self.source_weights, list):
                object.__setattr__(self, "source_weights", tuple(self.source_weights))
            if len(self.source_weights) != len(self.sources) or not all(
                isinstance(w, (int, float)) and w > 0 for w in self.source_weights
            ):
                _fail(
                    s, "source_weights", f"{len(self.sources)} positive numbers (one per source)", self.source_weights
                )
        _check_choice(s, "episodes", self.episodes, ("fixed", "metadataset"))
        for name in ("n_way", "k_shot", "n_query", "tasks_per_batch", "eval_tasks", "val_tasks", "monitor_tasks"):
            _check_int(s, name, getattr(self, name), 1)
        _check_int(s, "image_size", self.image_size, 8)
        _check_int(s, "eval_seed", self.eval_seed, 0)
        for name in ("eval_k_shot", "eval_n_way", "eval_n_query"):
            _check_opt_int(s, name, getattr(self, name), 1)
        _check_choice(s, "protocol", self.protocol, ("vinyals", "lake"))
        _check_bool(s, "rotations", self.rotations)
        if self.test_rotations is not None:
            _check_bool(s, "test_rotations", self.test_rotations)
        if self.dataset not in REGRESSION_FAMILIES and self.n_way < 2:
            _fail(s, "n_way", "an int >= 2 for a classification dataset", self.n_way)


@dataclass(frozen=True)
class ModelConfig:
    """The backbone.

    Attributes:
        arch: ``"mlp"``, ``"conv4"`` or ``"auto"`` (mlp for sinusoid, conv4 for images).
        hidden: Hidden sizes of the MLP.
        width: Filters per Conv4 block.
        downsample: Conv4 ``"pool"`` (ProtoNets) or ``"stride"`` (MAML Omniglot).
        norm: Conv4 normalisation ``"task"``, ``"batchnorm"`` or ``"none"``.
        r_dim: CNP representation size; also the width of the CNP's encoder/decoder MLPs
            (three and two hidden layers for regression, one each for classification; 128 in
            Garnelo et al. 2018). Used only with ``algo.name="cnp"``.
        min_variance: CNP regression: lower bound of the bounded variance (or sd), in (0, 1).
        variance_bound: CNP regression: ``"variance"`` (the paper code's
            ``0.1 + 0.9 softplus`` on the variance) or ``"scale"`` (the same bound on the sd).
        post_layers: CNP regression (``cnp``, ``npcnp``): hidden layers of an MLP applied to the
            mean-aggregated representation (0: none, as in Garnelo et al. 2018; the TNP reference
            code's CNP has 1).
        channels_last: Store Conv4 weights channels-last (same function; faster ProtoNet steps on
            the CPU).
        d_model: Token width of the attentive / transformer learners (``anp``, ``tnp``, ``caml``).
        n_heads: Attention heads of those learners.
        n_layers: Their attention layers (0: each network's default).
        d_ff: Feed-forward width of their attention layers.
        label_dim: ``caml``: width of the label part of a token (``None``: ``d_model // 4``; 0:
            label vectors added to the features; see :class:`metafit.models.InContextClassifier`).
        norm_first: ``caml``: pre-norm transformer layers (``false``: post-norm).
        tied_qk: ``caml``: one projection for the attention's queries and keys.
        skip_input: ``arch="mlp"`` embedding networks (metric learners, ``caml``'s backbone):
            the input features beside the MLP's output (see :class:`metafit.models.MLP`).
    """

    arch: str = "auto"
    hidden: tuple[int, ...] = (40, 40)
    width: int = 64
    downsample: str = "pool"
    norm: str = "task"
    r_dim: int = 128
    min_variance: float = 0.1
    variance_bound: str = "variance"
    post_layers: int = 0
    channels_last: bool = False
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 0
    d_ff: int = 128
    label_dim: int | None = None
    norm_first: bool = True
    tied_qk: bool = True
    skip_input: bool = False

    def __post_init__(self) -> None:
        s = "model"
        for name, minimum in (("d_model", 1), ("n_heads", 1), ("n_layers", 0), ("d_ff", 1), ("post_layers", 0)):
            _check_int(s, name, getattr(self, name), minimum)
        _check_opt_int(s, "label_dim", self.label_dim, 0)
        if self.d_model % self.n_heads:
            _fail(s, "d_model", f"a multiple of model.n_heads={self.n_heads}", self.d_model)
        if self.label_dim is not None and self.label_dim >= self.d_model:
            _fail(s, "label_dim", f"an int below model.d_model={self.d_model}", self.label_dim)
        for name in ("channels_last", "norm_first", "tied_qk", "skip_input"):
            _check_bool(s, name, getattr(self, name))
        _check_choice(s, "arch", self.arch, ARCHS)
        if isinstance(self.hidden, list):
            object.__setattr__(self, "hidden", tuple(self.hidden))
        if not isinstance(self.hidden, tuple) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in self.hidden
        ):
            _fail(s, "hidden", "a list of ints >= 1", self.hidden)
        _check_int(s, "width", self.width, 1)
        _check_choice(s, "downsample", self.downsample, ("pool", "stride"))
        _check_choice(s, "norm", self.norm, ("task", "batchnorm", "none"))
        _check_int(s, "r_dim", self.r_dim, 1)
        if (
            isinstance(self.min_variance, bool)
            or not isinstance(self.min_variance, (int, float))
            or not 0.0 < self.min_variance < 1.0
        ):
            _fail(s, "min_variance", "a number in (0, 1)", self.min_variance)
        _check_choice(s, "variance_bound", self.variance_bound, ("variance", "scale"))


@dataclass(frozen=True)
class AlgoConfig:
    """The learner: a name of the registry and that learner's own options.

    In a config file the options sit beside the name (``[algo] name = "maml"`` plus
    ``inner_lr = 0.4``); their names and defaults are the learner's builder signature in
    :mod:`metafit.algorithms.registry` (:func:`~metafit.algorithms.registry.learner_options`), so
    a misspelt or foreign option is an error naming the valid ones.

    Attributes:
        name: A learner of :data:`metafit.algorithms.registry.LEARNERS`.
        options: The options given (the others take the builder's defaults).
    """

    name: str = "maml"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_choice("algo", "name", self.name, ALGORITHMS)
        if not isinstance(self.options, dict):
            _fail("algo", "options", "a table of the learner's options", self.options)
        valid = learner_options(self.name)
        object.__setattr__(self, "options", dict(self.options))
        for key, value in self.options.items():
            if key not in valid:
                import difflib

                close = difflib.get_close_matches(str(key), list(valid), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(
                    f"unknown config key {key!r} in section 'algo' for learner {self.name!r}{hint}; "
                    f"valid keys are {['name', *sorted(valid)]}"
                )
            default = valid[key]
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                self.options[key] = float(value)  # TOML/YAML ``1`` for a float option
        for key in ("inner_lr", "eval_inner_lr", "init_inner_lr", "distance_scale"):
            if key in self.options:
                _check_pos_float(
                    "algo", key, self.options[key], allow_none=key != "inner_lr" and key != "distance_scale"
                )
        for key in ("inner_steps", "eval_inner_steps"):
            if key in self.options and not (key == "eval_inner_steps" and self.options[key] is None):
                _check_int("algo", key, self.options[key], 0)

    def get(self, key: str) -> Any:
        """The option's value: given, else the builder's default."""
        return self.options.get(key, learner_options(self.name).get(key))

    def __getattr__(self, key: str) -> Any:
        # ``config.algo.inner_lr``: an option of the learner (given or default)
        if key.startswith("_") or key in ("name", "options"):
            raise AttributeError(key)
        valid = learner_options(self.name)
        if key not in valid:
            raise AttributeError(f"learner {self.name!r} has no option {key!r}; its options are {sorted(valid)}")
        return self.options.get(key, valid[key])

    def to_flat(self) -> dict[str, Any]:
        """``{"name": ..., **options}`` (the file form)."""
        return {"name": self.name, **self.options}


@dataclass(frozen=True)
class TrainConfig:
    """The outer loop.

    Attributes:
        steps: Meta-training steps (outer optimiser updates).
        optimizer: Any ``torch.optim`` optimiser class name (``"Adam"``, ``"SGD"``, ...).
        outer_lr: Outer learning rate.
        optimizer_kwargs: Extra keyword arguments of the optimiser (e.g. ``{"momentum": 0.9}``).
        scheduler: ``"none"``, ``"cosine"`` (to 0 over ``steps``), ``"linear"`` (to 0 over
            ``steps``), ``"step"`` or ``"exponential"``.
        scheduler_kwargs: Extra arguments (``cosine``: ``T_max``; ``linear``: ``total_iters``;
            ``step``: ``step_size``, ``gamma``; ``exponential``: ``gamma``).
        grad_clip: Clip the global meta-gradient norm (``None``: off).
        path: Engine path ``"auto"``, ``"vmap"``, ``"loop"``, ``"compile"`` or ``"vmap_compile"`` (``auto`` is recorded in the
            checkpoint so a resumed run keeps the same path).
        seed: Seeds the model initialisation and the task sampler.
        log_every: Steps between rows of ``metrics.jsonl``.
        eval_every: Steps between validations (0: only at the end).
        checkpoint_every: Steps between checkpoints (a final one is always written).
        keep_last: Checkpoints kept besides the best one.
        num_threads: ``torch.set_num_threads`` for the run (0: leave torch's default).
        keep_freed_memory: Make glibc's malloc keep freed memory for reuse
            (:func:`metafit.runtime.keep_freed_memory`): same results, fewer page faults (on the
            CPU here 1.2-1.5x faster Conv-4 steps); no effect outside glibc.
        deterministic: Turn on ``torch.use_deterministic_algorithms``.
        max_minutes: Stop after this many minutes of TRAINING time (validation, monitoring and
            checkpoints not counted; ``None``: no limit). A resumed run continues the clock.
        eval_every_seconds: Also validate every this many seconds of training time (0: off).
        monitor_every_seconds: Score ``data.monitor_tasks`` test episodes every this many seconds
            of training time (0: off).
        tensorboard: Also write TensorBoard event files into ``<run>/tensorboard`` (needs the
            ``tensorboard`` package).
        dist_timeout: Seconds before a collective of a multi-process run fails (a hung rank).
        init_from: A trained run folder (or checkpoint) whose ``"model"`` parameters start this run
            (e.g. Meta-Baseline from a ``pretrain`` run); names and shapes must match.
        init_prefix: The prefix the ``init_from`` run's parameter names get in this run; only
            this run's names under it are initialised (e.g. ``"backbone."``: an in-context
            classifier's encoder from a ``pretrain`` run's network; ``""``: every name).
        freeze: Prefixes of ``"model"`` parameter names that are not meta-trained (e.g.
            ``["backbone."]`` for a frozen pretrained encoder): the outer optimiser never updates
            them (no optimiser state, no weight decay); a gradient learner's inner loop still
            adapts them within each task.
        distill_from: A trained ``pretrain`` run of the same architecture and classes to distil
            from (RFS-distill, :class:`metafit.algorithms.distill.SelfDistill`; ``algo.name`` must
            be ``"pretrain"``): the loss mixes the labels' cross-entropy (weight
            ``1 - distill_weight``) and the distillation term (weight ``distill_weight``).
        distill_weight: Weight of the distillation term, in ``[0, 1]`` (RFS: 0.5).
        distill_temperature: Distillation temperature (RFS: 4). The teacher is read from
            ``distill_from`` at every start, a resumed run included: keep that run unchanged.

    ``num_threads``, ``keep_freed_memory`` and ``deterministic`` are process-wide settings: the
    program that owns the process applies them (``metafit train`` does, with
    :func:`metafit.app.runs.apply_process_settings`); :func:`metafit.app.runs.train` never does.
    """

    steps: int = 1000
    optimizer: str = "Adam"
    outer_lr: float = 1e-3
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    scheduler: str = "none"
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    grad_clip: float | None = None
    path: str = "loop"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 100
    keep_last: int = 3
    num_threads: int = 0
    keep_freed_memory: bool = True
    deterministic: bool = True
    max_minutes: float | None = None
    eval_every_seconds: float = 0.0
    monitor_every_seconds: float = 0.0
    tensorboard: bool = False
    dist_timeout: float = 300.0
    init_from: str | None = None
    init_prefix: str = ""
    freeze: tuple[str, ...] = ()
    distill_from: str | None = None
    distill_weight: float = 0.5
    distill_temperature: float = 4.0

    def __post_init__(self) -> None:
        s = "train"
        for name in ("init_from", "distill_from"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v):
                _fail(s, name, "a run folder or checkpoint path, or null", v)
        if not isinstance(self.init_prefix, str):
            _fail(s, "init_prefix", "a string (a parameter-name prefix, '' for none)", self.init_prefix)
        if self.init_prefix and self.init_from is None:
            _fail(s, "init_prefix", "'' unless train.init_from is set", self.init_prefix)
        if isinstance(self.freeze, list):
            object.__setattr__(self, "freeze", tuple(self.freeze))
        if not isinstance(self.freeze, tuple) or not all(isinstance(f, str) and f for f in self.freeze):
            _fail(s, "freeze", "a list of non-empty parameter-name prefixes", self.freeze)
        w = self.distill_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
            _fail(s, "distill_weight", "a number in [0, 1]", w)
        _check_pos_float(s, "distill_temperature", self.distill_temperature)
        _check_pos_float(s, "max_minutes", self.max_minutes, allow_none=True)
        for name in ("eval_every_seconds", "monitor_every_seconds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                _fail(s, name, "a finite number >= 0", v)
        _check_bool(s, "tensorboard", self.tensorboard)
        _check_pos_float(s, "dist_timeout", self.dist_timeout)
        _check_int(s, "steps", self.steps, 0)
        if not isinstance(self.optimizer, str) or not self.optimizer:
            _fail(s, "optimizer", "a torch.optim class name such as 'Adam'", self.optimizer)
        import torch  # local: keep ``import metafit.app.config`` light

        cls = getattr(torch.optim, self.optimizer, None)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or self.optimizer == "Optimizer":
            _fail(s, "optimizer", "a torch.optim optimizer class name (Adam, SGD, AdamW, ...)", self.optimizer)
        _check_pos_float(s, "outer_lr", self.outer_lr)
        for name in ("optimizer_kwargs", "scheduler_kwargs"):
            if not isinstance(getattr(self, name), dict):
                _fail(s, name, "a table/dict", getattr(self, name))
        _check_choice(s, "scheduler", self.scheduler, SCHEDULERS)
        _check_pos_float(s, "grad_clip", self.grad_clip, allow_none=True)
        _check_choice(s, "path", self.path, PATHS)
        _check_int(s, "seed", self.seed, 0)
        _check_int(s, "log_every", self.log_every, 1)
        _check_int(s, "eval_every", self.eval_every, 0)
        _check_int(s, "checkpoint_every", self.checkpoint_every, 1)
        _check_int(s, "keep_last", self.keep_last, 1)
        _check_int(s, "num_threads", self.num_threads, 0)
        _check_bool(s, "keep_freed_memory", self.keep_freed_memory)
        _check_bool(s, "deterministic", self.deterministic)


_SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "algo": AlgoConfig, "train": TrainConfig}


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; the content of ``config.json`` in a run folder.

    Attributes:
        data: :class:`DataConfig`.
        model: :class:`ModelConfig`.
        algo: :class:`AlgoConfig`.
        train: :class:`TrainConfig`.
        name: A free label shown in reports.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = ""

    def __post_init__(self) -> None:
        for key, cls in _SECTIONS.items():
            if not isinstance(getattr(self, key), cls):
                _fail("run", key, f"a {cls.__name__}", getattr(self, key))
        from metafit.algorithms.registry import build_learner

        regression = self.data.dataset in REGRESSION_FAMILIES
        from metafit.algorithms.registry import learner_entry

        placeholders = {k: 2 for k in learner_entry(self.algo.name).data_options if k not in self.algo.options}
        try:  # the learner's own checks (e.g. Reptile refuses inner_steps=0) before anything is written
            learner = build_learner(
                self.algo.name, "mse" if regression else "cross_entropy", **self.algo.options, **placeholders
            )
        except ValueError as e:
            if regression and "classifier" in str(e):
                raise ValueError(
                    f"algo.name={self.algo.name!r} is a classifier and needs a classification dataset "
                    f"(data.dataset='omniglot'), got data.dataset={self.data.dataset!r}"
                ) from None
            raise ValueError(f"algo ({self.algo.name}): {e}") from None
        arch = self.resolved_arch
        if (
            self.data.dataset.startswith("gp-")
            and learner_entry(self.algo.name).network != "np"
            and not learner.spec.inner_loop
        ):
            _fail(
                "algo",
                "name",
                "a masked neural process (anp, tnp, npcnp) or a gradient-based learner (maml, metasgd, ...) "
                "for the padded GP tasks",
                self.algo.name,
            )
        if regression and arch != "mlp":
            _fail("model", "arch", f"'mlp' or 'auto' for data.dataset={self.data.dataset!r}", self.model.arch)
        if self.train.distill_from is not None and self.algo.name != "pretrain":
            _fail("algo", "name", "'pretrain' when train.distill_from is set (RFS-distill)", self.algo.name)
        if self.data.dataset == "tabular-prior" and self.data.k_shot_max is not None:
            _fail(
                "data",
                "k_shot_max",
                "None for data.dataset='tabular-prior' (its tasks have k_shot shots)",
                self.data.k_shot_max,
            )
        if self.data.dataset != "tabular-prior" and self.data.n_features_min is not None:
            _fail("data", "n_features_min", "None unless data.dataset='tabular-prior'", self.data.n_features_min)
        if self.data.augment_shift and (
            regression
            or self.data.dataset in CLASSIFICATION_FAMILIES
            or self.data.dataset.lower().endswith((".csv", ".parquet"))
        ):
            _fail(
                "data",
                "augment_shift",
                f"0 for data.dataset={self.data.dataset!r} (not images)",
                self.data.augment_shift,
            )
        if self.data.augment_shift and (self.data.sources or self.data.episodes == "metadataset"):
            _fail("data", "augment_shift", "0 with data.sources / data.episodes='metadataset'", self.data.augment_shift)
        for name in ("prior_irrelevant", "prior_warp"):
            if self.data.dataset != "tabular-prior" and getattr(self.data, name) != 0:
                _fail("data", name, "0 unless data.dataset='tabular-prior'", getattr(self.data, name))
        if self.data.dataset in CLASSIFICATION_FAMILIES and arch != "mlp":
            _fail("model", "arch", f"'mlp' or 'auto' for data.dataset={self.data.dataset!r}", self.model.arch)
        if self.data.n_way_min is not None and not regression:
            head = build_learner(self.algo.name, "cross_entropy", **self.algo.options, **placeholders).spec.head
            if head == "fixed":
                _fail(
                    "data",
                    "n_way_min",
                    f"None for algo.name={self.algo.name!r} (a fixed {self.data.n_way}-way head)",
                    self.data.n_way_min,
                )
        if self.data.dataset == "omniglot" and arch != "conv4":
            _fail("model", "arch", "'conv4' or 'auto' for data.dataset='omniglot'", self.model.arch)
        if self.data.dataset.lower().endswith((".csv", ".parquet")) and not self.data.label_column:
            _fail("data", "label_column", f"the class column of the table {self.data.dataset}", self.data.label_column)

    @property
    def resolved_arch(self) -> str:
        """``model.arch`` with ``"auto"`` resolved from the dataset (tables and arrays: ``"mlp"``)."""
        if self.model.arch != "auto":
            return self.model.arch
        if self.data.dataset in TASK_FAMILIES or self.data.dataset.lower().endswith(
            (".csv", ".parquet", ".npz", ".npy")
        ):
            return "mlp"
        return "conv4"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        """Builds a config from a nested dict; missing keys take defaults, unknown keys raise.

        Raises:
            ValueError: naming the unknown key, its section and the valid keys, or a bad value.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"a run config must be a mapping of sections, got {type(d).__name__}")
        top = {"name"} | set(_SECTIONS)
        unknown = sorted(set(d) - top)
        if unknown:
            raise ValueError(f"unknown config section {unknown[0]!r} at top level; valid keys are {sorted(top)}")
        kwargs: dict[str, Any] = {}
        for key, sub in _SECTIONS.items():
            kwargs[key] = _section_from_dict(sub, key, d.get(key, {}) or {})
        if "name" in d:
            if not isinstance(d["name"], str):
                _fail("run", "name", "a string", d["name"])
            kwargs["name"] = d["name"]
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (tuples become lists); ``from_dict(to_dict())`` is the identity."""
        d = dataclasses.asdict(self)
        d["algo"] = self.algo.to_flat()
        return json.loads(json.dumps(d))

    def replace(self, **sections: Mapping[str, Any]) -> RunConfig:
        """A copy with some fields of some sections replaced, e.g. ``replace(train={"steps": 5})``."""
        d = self.to_dict()
        for key, values in sections.items():
            if key not in _SECTIONS:
                raise ValueError(f"unknown config section {key!r}; valid sections are {sorted(_SECTIONS)}")
            d[key].update(values)
        return RunConfig.from_dict(d)


def _section_from_dict(cls: type, section: str, d: Any) -> Any:
    if not isinstance(d, Mapping):
        raise ValueError(f"config section {section!r} must be a mapping, got {d!r}")
    if cls is AlgoConfig:
        rest = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k != "name"}
        return AlgoConfig(name=d.get("name", "maml"), options=dict(rest))
    names = [f.name for f in fields(cls)]
    for key in d:
        if key not in names:
            import difflib

            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown config key {key!r} in section {section!r}{hint}; valid keys are {names}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        hint = str(hints[key])
        if "float" in hint and isinstance(value, int) and not isinstance(value, bool) and "int" not in hint:
            value = float(value)  # YAML/TOML ``1`` for a float field
        if "tuple" in hint and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def load_config(path: str | Path) -> RunConfig:
    """Reads a config from ``.json``, ``.yaml``/``.yml`` or ``.toml``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown extension, unparsable file, unknown key or bad value (message names
            the file).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ValueError(f"config file {p} must end in .json, .yaml, .yml or .toml, got {suffix!r}")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"cannot parse config file {p}: {e}") from None
    except Exception as e:  # yaml.YAMLError without importing yaml at module level
        if type(e).__module__.startswith("yaml"):
            raise ValueError(f"cannot parse config file {p}: {e}") from None
        raise
    try:
        return RunConfig.from_dict(data)
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None


def save_config(config: RunConfig, path: str | Path) -> Path:
    """Writes ``config`` as JSON, YAML or TOML according to the extension.

    ``None`` values are omitted in TOML (which has no null); loading restores the default,
    which is ``None`` for every optional field.
    """
    p = Path(path)
    d = config.to_dict()
    suffix = p.suffix.lower()
    if suffix == ".json":
        text = json.dumps(d, indent=2, sort_keys=True) + "\n"
    elif suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(d, sort_keys=True)
    elif suffix == ".toml":
        text = _to_toml(d)
    else:
        raise ValueError(f"config file {p} must end in .json, .yaml, .yml or .toml, got {suffix!r}")
    p.write_text(text, encoding="utf-8")
    return p


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise ValueError(f"cannot write {v!r} to TOML")


def _to_toml(d: Mapping[str, Any]) -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict) and v is not None]
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines += [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items() if vv is not None]
    return "\n".join(lines) + "\n"


def _parse_value(text: str) -> Any:
    """JSON first (so ``1e3`` is a float), then a YAML scalar/list, else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    import yaml

    try:
        return yaml.safe_load(text)
    except Exception:
        return text


def apply_overrides(config: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """Applies ``section.key=value`` strings (values parsed as YAML scalars/lists).

    Example: ``["train.steps=100", "model.hidden=[40, 40]", "data.eval_k_shot=null"]``.

    Raises:
        ValueError: malformed override, unknown section/key or bad value.
    """
    d = config.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value (e.g. train.steps=100)")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) == 1 and parts[0] == "name":
            d["name"] = raw
            continue
        if len(parts) != 2:
            raise ValueError(f"override {item!r} must look like section.key=value (e.g. train.steps=100)")
        section, key = parts
        if section not in _SECTIONS:
            raise ValueError(
                f"unknown config section {section!r} in override {item!r}; valid sections are {sorted(_SECTIONS)}"
            )
        valid = (
            ["name", *learner_options(d["algo"].get("name", "maml"))]
            if section == "algo"
            else [f.name for f in fields(_SECTIONS[section])]
        )
        if key not in valid:
            raise ValueError(f"unknown config key {key!r} in section {section!r}; valid keys are {valid}")
        d[section][key] = _parse_value(raw)
    return RunConfig.from_dict(d)


def config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    """``section.key`` names whose values differ between two configs."""
    da, db = a.to_dict(), b.to_dict()
    out = []
    for key in da:
        if isinstance(da[key], dict):
            names = list(da[key]) + [k for k in db[key] if k not in da[key]]
            out += [f"{key}.{k}" for k in names if da[key].get(k) != db[key].get(k)]
        elif da[key] != db[key]:
            out.append(key)
    return out
