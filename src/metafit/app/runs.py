"""Run folders and the drivers behind the CLI: config -> data -> learner -> ``Trainer.fit`` -> files.

A run folder holds::

    config.json              the full resolved RunConfig
    metrics.jsonl            one JSON row per logged step (kind "train"), validation ("val") and
                             test-episode monitoring ("monitor")
    checkpoints/step_*.{safetensors,json}
    eval.json                final evaluation (mean ± 95% CI, adaptation curve, per-task values)
    tensorboard/             event files (``train.tensorboard``)

:func:`train` builds the model, the learner (from :mod:`metafit.algorithms.registry`), the
optimiser and the task sampler from the config and runs the one training loop,
:meth:`metafit.engine.Trainer.fit`, with callbacks for the log, validation, monitoring,
checkpoints, the time budget, the progress bar, TensorBoard and, under ``torch.distributed``,
gradient reduction. Training resumes EXACTLY: the meta-parameters, optimiser and scheduler
states, the step, the training clock, the engine path, the callbacks' state and the task
sampler's ``torch.Generator`` state are restored from the newest valid checkpoint, and task
sampling depends only on that generator, so a run killed at any moment and resumed ends with the
same parameters, bit for bit on CPU, as an uninterrupted one.

Process-wide settings (threads, malloc, deterministic algorithms) are applied by the program that
owns the process (:func:`apply_process_settings`, called by ``metafit train``), never by
:func:`train`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metafit import callbacks as cbk
from metafit import seeding
from metafit.algorithms.base import Algorithm, MetaParams, flat_meta_params
from metafit.algorithms.registry import build_learner
from metafit.app.config import IMAGE_COMPLETION, REGRESSION_FAMILIES, TASK_FAMILIES, RunConfig, config_diff
from metafit.checkpoint import (
    Checkpoint,
    atomic_write_bytes,
    check_fingerprint,
    fingerprint,
    latest_checkpoint,
    load_checkpoint,
    restore_trainer,
)
from metafit.data.sinusoid import SinusoidTasks, sinusoid_eval_tasks
from metafit.data.task import Task, TaskBatch
from metafit.engine import Callback, DivergenceError, DivergenceGuard, Trainer, make_optimizer, parameters_of
from metafit.evaluation import EvalResult, evaluate
from metafit.functional import Buffers, buffers_of
from metafit.models import MLP, CNPClassifier, CNPRegressor, Conv4
from metafit.predict import Predictor

__all__ = [
    "RunError",
    "TrainingDiverged",
    "TrainResult",
    "build_model",
    "build_algorithm",
    "build_scheduler",
    "train_batches",
    "eval_tasks",
    "preprocessing_info",
    "train",
    "apply_process_settings",
    "load_trained",
    "load_predictor",
    "evaluate_checkpoint",
    "read_metrics",
    "eval_markdown",
    "RESUMABLE_FIELDS",
]

log_module = logging.getLogger(__name__)

#: Fields that may change when a run is resumed (they do not change the maths of a step).
RESUMABLE_FIELDS = frozenset(
    {
        "train.steps",
        "train.log_every",
        "train.eval_every",
        "train.checkpoint_every",
        "train.keep_last",
        "train.num_threads",
        "train.keep_freed_memory",
        "train.max_minutes",
        "train.eval_every_seconds",
        "train.monitor_every_seconds",
        "train.tensorboard",
        "train.dist_timeout",
        "data.monitor_tasks",
        "data.test_rotations",
        "data.data_root",
        "data.cache_dir",
        "data.eval_tasks",
        "name",
    }
)
_OUTPUTS = ("config.json", "metrics.jsonl", "checkpoints", "eval.json", "plots", "tensorboard", "provenance.json")


class RunError(RuntimeError):
    """A run could not continue (the message says why and what is left on disk)."""


class TrainingDiverged(RunError):
    """Training produced a non-finite loss or gradient; the last good checkpoint is intact."""

    def __init__(self, step: int, what: str, last_good: Path | None) -> None:
        where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
        super().__init__(
            f"training diverged at step {step} ({what}); nothing was updated at that step and {where}. "
            "Lower train.outer_lr / algo.inner_lr or set train.grad_clip, then resume."
        )
        self.step = step
        self.last_good = last_good


# -- building blocks ---------------------------------------------------------------------------


def _criterion(config: RunConfig) -> str:
    if config.data.dataset in REGRESSION_FAMILIES:
        return "gaussian_nll" if config.algo.name == "cnp" else "mse"
    return "cross_entropy"


def _max_way(config: RunConfig) -> int:
    """Largest ``n_way`` a CNP classifier of this run must handle (training and evaluation)."""
    return max(20, config.data.n_way, config.data.eval_n_way or 0)


def _spec(config: RunConfig) -> Any:
    return build_algorithm(config).spec


def _entry(config: RunConfig) -> Any:
    from metafit.algorithms.registry import learner_entry

    return learner_entry(config.algo.name)


def build_model(config: RunConfig, shape: Sequence[int] | None = None) -> nn.Module:
    """The network of ``config``, initialised from ``train.seed`` (no global state).

    The learner's spec decides the head: a classifier with a fixed head gets ``n_way`` outputs,
    a learner that takes any number of classes gets the embedding network. ``shape`` is the
    per-example input shape (default: from the data; a checkpoint records it).
    """
    m = config.model
    shape = tuple(input_shape(config) if shape is None else shape)
    network = _entry(config).network
    x_dim = 2 if config.data.dataset in IMAGE_COMPLETION else 1  # regression: a pixel's (row, column) or x
    if m.skip_input and not (
        config.resolved_arch == "mlp"
        and config.data.dataset not in REGRESSION_FAMILIES
        and network not in ("cnp", "np")
        and (network == "in_context" or _spec(config).head != "fixed")
    ):
        raise ValueError(
            "model.skip_input=true is for model.arch='mlp' embedding networks (metric learners, caml), got "
            f"arch={config.resolved_arch!r} with learner {config.algo.name!r} on {config.data.dataset!r}"
        )
    if network == "cnp":
        return seeding.seeded(config.train.seed, lambda: _build_cnp(config))
    if network == "np":
        from metafit.models.attentive import build_np_network

        return seeding.seeded(
            config.train.seed,
            lambda: build_np_network(
                _entry(config).np_kind or config.algo.name,
                x_dim=x_dim,
                y_dim=1,
                d_model=m.d_model,
                n_heads=m.n_heads,
                n_layers=m.n_layers or None,
                d_ff=m.d_ff,
                min_variance=m.min_variance,
                variance_bound=m.variance_bound,
                post_layers=m.post_layers,
            ),
        )
    if network == "in_context":
        from metafit.models.attentive import InContextClassifier

        def icl() -> nn.Module:
            backbone: nn.Module
            if config.resolved_arch == "mlp":  # tables and arrays of vectors
                if len(shape) != 1:
                    raise ValueError(f"model.arch='mlp' needs flat examples, got example shape {shape}")
                # the embedding network of the other learners on vectors: a pretrain/protonet run's transfers
                mlp = MLP(shape[0], m.hidden, m.hidden[-1], skip_input=m.skip_input)
                backbone, features = mlp, mlp.feature_dim
            else:
                conv = Conv4(shape[0], None, width=m.width, image_size=shape[1], downsample=m.downsample, norm=m.norm)  # type: ignore[arg-type]
                backbone, features = conv, conv.feature_dim
            return InContextClassifier(
                backbone,
                features,
                max_way=_max_way(config),
                d_model=m.d_model,
                n_heads=m.n_heads,
                n_layers=m.n_layers or 2,
                d_ff=m.d_ff,
                label_dim=m.label_dim,
                norm_first=m.norm_first,
                tied_qk=m.tied_qk,
            )

        return seeding.seeded(config.train.seed, icl)
    fixed = _spec(config).head == "fixed"
    if config.resolved_arch == "mlp":
        if config.data.dataset in REGRESSION_FAMILIES:
            y_out = 2 if _spec(config).distribution else 1  # a Gaussian predictive: means, then raw variances
            return seeding.seeded(config.train.seed, lambda: MLP(x_dim, m.hidden, y_out))
        if len(shape) != 1:
            raise ValueError(
                f"model.arch='mlp' needs flat examples (tables, arrays of vectors), got example shape {shape}"
            )
        out = config.data.n_way if fixed else m.hidden[-1]  # an embedding network's last layer is its head
        return seeding.seeded(config.train.seed, lambda: MLP(shape[0], m.hidden, out, skip_input=m.skip_input))
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"model.arch='conv4' needs square images (channels, side, side), got example shape {shape}")
    out = config.data.n_way if fixed else None
    model = seeding.seeded(
        config.train.seed,
        lambda: Conv4(
            shape[0],
            out,
            width=m.width,
            image_size=shape[1],
            downsample=m.downsample,
            norm=m.norm,  # type: ignore[arg-type]
        ),
    )
    return model.to(memory_format=torch.channels_last) if m.channels_last else model


def _build_cnp(config: RunConfig) -> nn.Module:
    """The CNP network of the dataset: MLP encoder/decoder (sinusoid) or Conv4 features (images)."""
    m = config.model
    if config.resolved_arch == "mlp":
        return CNPRegressor(
            2 if config.data.dataset in IMAGE_COMPLETION else 1,
            1,
            r_dim=m.r_dim,
            encoder_hidden=(m.r_dim,) * 3,
            decoder_hidden=(m.r_dim,) * 2,
            min_variance=m.min_variance,
            bound=m.variance_bound,
            post_hidden=(m.r_dim,) * m.post_layers,
        )
    if m.post_layers:
        raise ValueError(f"model.post_layers is for CNP regression, got {m.post_layers} on {config.data.dataset!r}")
    conv = Conv4(1, None, width=m.width, image_size=config.data.image_size, downsample=m.downsample, norm=m.norm)  # type: ignore[arg-type]
    return CNPClassifier(conv, conv.feature_dim, max_way=_max_way(config), r_dim=m.r_dim, hidden=m.r_dim)


def build_algorithm(config: RunConfig) -> Algorithm:
    """The learner named by ``config.algo`` (the registry's builder) with the dataset's criterion.

    Options the learner takes from the data (pretraining's ``n_classes``) must be in the config:
    :func:`resolve_data_options` fills them before a run starts.
    """
    return build_learner(config.algo.name, _criterion(config), **config.algo.options)


def resolve_data_options(config: RunConfig) -> RunConfig:
    """``config`` with the learner's data-derived options filled in (recorded in ``config.json``)."""
    missing = [k for k in _entry(config).data_options if k not in config.algo.options]
    if not missing:
        return config
    values: dict[str, Any] = {}
    for k in missing:
        if k == "n_classes":
            values[k] = _dataset(config, config.data.train_split).num_classes
        else:  # pragma: no cover - every data option has a rule above
            raise ValueError(f"no rule fills the learner option {k!r} from the data")
    return config.replace(algo=values)


def build_scheduler(config: RunConfig, optimizer: torch.optim.Optimizer) -> Any:
    """The learning-rate scheduler named by ``train.scheduler`` (``None`` for ``"none"``)."""
    t = config.train
    kw = dict(t.scheduler_kwargs)
    try:
        if t.scheduler == "none":
            if kw:
                raise ValueError(f"train.scheduler_kwargs must be empty when train.scheduler='none', got {kw}")
            return None
        if t.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, kw.pop("T_max", t.steps)), **kw)
        if t.scheduler == "step":
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=kw.pop("step_size", max(1, t.steps // 3)), **kw)
        if t.scheduler == "linear":  # to zero over total_iters (default train.steps), as Reptile's outer step
            total = max(1, kw.pop("total_iters", t.steps))
            return torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=1.0, end_factor=0.0, total_iters=total, **kw
            )
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=kw.pop("gamma", 0.999), **kw)
    except TypeError as e:
        raise ValueError(
            f"train.scheduler_kwargs {t.scheduler_kwargs} do not fit train.scheduler={t.scheduler!r}: {e}"
        ) from None


def _data_root(config: RunConfig) -> Path:
    root = config.data.data_root or os.environ.get("METAFIT_DATA")
    if not root:
        raise ValueError("data.data_root is not set: pass --data-root DIR or set METAFIT_DATA")
    return Path(root)


def _omniglot(config: RunConfig, split: str) -> Any:
    """The Omniglot class-indexed dataset for ``split`` ("train", "val" or "test")."""
    root = _data_root(config)
    if not (root / "omniglot").is_dir():
        raise FileNotFoundError(
            f"Omniglot not found: expected {root / 'omniglot'} holding images_background.zip and "
            "images_evaluation.zip (set --data-root / METAFIT_DATA, or run `metafit data fetch`)"
        )
    from metafit.data import omniglot as om

    d = config.data
    rotations = d.test_rotations if (split == "test" and d.test_rotations is not None) else d.rotations
    return om.omniglot_split(
        root,
        split,
        protocol=config.data.protocol,
        rotations=rotations,
        image_size=config.data.image_size,
        cache_dir=config.data.cache_dir,
    )


_SOURCES: dict[tuple[Any, ...], Any] = {}


def data_source(config: RunConfig) -> Any:
    """The :class:`metafit.data.sources.SplitDataset` of ``data.dataset`` (a built-in name or a
    path; decoded once per process). Not for ``sinusoid`` (a task family)."""
    from metafit.data.sources import resolve_dataset

    d = config.data
    root = d.data_root or os.environ.get("METAFIT_DATA")
    key = (d.dataset, root, d.image_size, d.channels, d.cache_dir, d.label_column)
    if key not in _SOURCES:
        _SOURCES[key] = resolve_dataset(
            d.dataset,
            root=root,
            image_size=d.image_size,
            channels=d.channels,
            cache_dir=d.cache_dir,
            label_column=d.label_column,
        )
    return _SOURCES[key]


def _sources(config: RunConfig) -> dict[str, Any]:
    """``data.sources`` as SplitDatasets converted to one image format (``image_size``, ``channels``)."""
    from metafit.data.datasets import LabelledDataset
    from metafit.data.sources import SplitDataset, convert_images

    d = config.data
    key = ("sources", d.sources, d.data_root or os.environ.get("METAFIT_DATA"), d.image_size, d.channels, d.cache_dir)
    if key not in _SOURCES:
        channels = 1 if d.channels == "auto" else int(d.channels)
        out = {}
        for spec in d.sources:
            src = data_source(config.replace(data={"dataset": spec, "sources": []}))
            splits = {}
            for k, ds in src.splits.items():
                x = ds.x
                if tuple(x.shape[1:]) != (channels, d.image_size, d.image_size):
                    x = convert_images(x, image_size=d.image_size, channels=channels)
                splits[k] = LabelledDataset(x, ds.y, ds.class_names, ds.groups)
            out[spec] = SplitDataset(src.name, splits, src.preprocessing, trees=src.trees)
        _SOURCES[key] = out
    return _SOURCES[key]


def _dataset(config: RunConfig, split: str) -> Any:
    """The :class:`LabelledDataset` of ``split`` (``"train"``, ``"val"``, ``"test"`` or ``"trainval"``)."""
    if config.data.sources:
        first = next(iter(_sources(config).values()))
        if split == "trainval":
            parts = [first.splits[k] for k in ("train", "val") if k in first.splits]
            return parts[0] if len(parts) == 1 else _concat(parts)
        return first.split(split)
    if config.data.dataset == "omniglot":
        return _omniglot(config, split)
    src = data_source(config)
    if split == "trainval":
        parts = [src.splits[k] for k in ("train", "val") if k in src.splits]
        if not parts:
            src.split("train")  # the error names the splits there are
        return parts[0] if len(parts) == 1 else _concat(parts)
    return src.split(split)


COMPLETION_SPLIT = (0.8, 0.1)  # train / val shares of a source's images (the rest: test), seed 0


def _completion_images(config: RunConfig, split: str) -> Any:
    """The images of ``split`` behind an image-completion family (``completion-<dataset>``).

    Omniglot keeps its class split (``data.protocol``). Other sources (Fashion-MNIST holds only
    test classes) pool every image and split the images, not the classes, by one seeded
    permutation: 80% train, 10% val, 10% test (:data:`COMPLETION_SPLIT`).
    """
    d = config.data
    base = d.dataset.removeprefix("completion-")
    if base == "omniglot":
        if split == "trainval":
            return _concat([_omniglot(config, "train"), _omniglot(config, "val")])
        return _omniglot(config, split)
    from metafit.data.datasets import LabelledDataset
    from metafit.data.sources import resolve_dataset

    root = d.data_root or os.environ.get("METAFIT_DATA")
    key = (base, root, d.image_size, "completion")
    if key not in _SOURCES:
        src = resolve_dataset(base, root=root, image_size=d.image_size, cache_dir=d.cache_dir)
        x = torch.cat([ds.x for ds in src.splits.values()])
        order = torch.randperm(x.shape[0], generator=seeding.generator(0))
        a, b = int(COMPLETION_SPLIT[0] * len(order)), int(sum(COMPLETION_SPLIT) * len(order))
        parts = {"train": order[:a], "val": order[a:b], "test": order[b:]}
        # one pseudo-class: completion tasks ignore labels
        _SOURCES[key] = {
            k: LabelledDataset(x[i], torch.zeros(len(i), dtype=torch.int64), ("images",)) for k, i in parts.items()
        }
    images = _SOURCES[key]
    if split == "trainval":
        return _concat([images["train"], images["val"]])
    if split not in images:
        raise ValueError(f"split must be one of {sorted(images)} or 'trainval', got {split!r}")
    return images[split]


def _completion_tasks(
    config: RunConfig, split: str, generator: torch.Generator, n_tasks: int, k: int, k_max: int
) -> Any:
    from metafit.data.gp import ImageCompletionTasks

    return ImageCompletionTasks(
        dataset=_completion_images(config, split),
        generator=generator,
        tasks_per_batch=n_tasks,
        min_context=k,
        max_context=k_max,
    )


def _concat(parts: Sequence[Any]) -> Any:
    """The classes of several LabelledDatasets as one (class ids offset in order)."""
    from metafit.data.datasets import LabelledDataset

    offset, ys = 0, []
    for ds in parts:
        ys.append(ds.y + offset)
        offset += ds.num_classes
    groups = None if any(ds.groups is None for ds in parts) else tuple(g for ds in parts for g in ds.groups)
    return LabelledDataset(
        torch.cat([ds.x for ds in parts]), torch.cat(ys), tuple(c for ds in parts for c in ds.class_names), groups
    )


def input_shape(config: RunConfig) -> tuple[int, ...]:
    """Per-example model input shape of the run's data."""
    d = config.data
    if d.dataset in IMAGE_COMPLETION:
        return (2,)
    if d.dataset in REGRESSION_FAMILIES:
        return (1,)
    if d.dataset == "tabular-prior":
        return (d.n_features,)
    if d.sources:
        return (1 if d.channels == "auto" else int(d.channels), d.image_size, d.image_size)
    if d.dataset == "omniglot":
        return (1, d.image_size, d.image_size)
    return tuple(data_source(config).example_shape)


def check_data(config: RunConfig) -> None:
    """Refuses data that cannot give the run's episodes (one line naming the problem), before
    anything is written: a split missing or empty, classes shared between splits, a class with
    fewer examples than ``k_shot + n_query``, fewer classes than ``n_way``."""
    d = config.data
    if d.sources:
        from metafit.data.sources import check_split_dataset

        for src in _sources(config).values():
            if d.episodes == "fixed" and "train" in src.splits:
                check_split_dataset(src, k_shot=d.k_shot, n_query=d.n_query)
        return
    if d.dataset in (*TASK_FAMILIES, "omniglot"):
        return
    from metafit.data.sources import check_split_dataset

    src = data_source(config)
    if d.augment_shift and len(src.example_shape) != 3:
        raise ValueError(_augment_error(config, tuple(src.example_shape)))
    k = max(d.k_shot if d.k_shot_max is None else d.k_shot_max, d.eval_k_shot or d.k_shot)
    q = max(d.n_query, d.eval_n_query or d.n_query)
    check_split_dataset(src, k_shot=k, n_query=q, required=("train",))
    need = {"train": d.n_way if _entry(config).batches == "episodes" else 2, "test": d.eval_n_way or d.n_way}
    if config.train.eval_every or config.train.eval_every_seconds:
        need["val"] = d.eval_n_way or d.n_way
    for split, n in need.items():
        if split in src.splits and src.splits[split].num_classes < n:
            raise ValueError(
                f"split {split!r} of dataset {src.name!r} has {src.splits[split].num_classes} classes, fewer than "
                f"the {n} an episode needs (data.n_way / data.eval_n_way)"
            )


def tabular_prior(config: RunConfig, n_way: int, k_shot: int, n_query: int, generator: torch.Generator) -> Any:
    """The run's :class:`metafit.data.gp.TabularPriorTasks` for one way and shot (``data.*`` prior fields)."""
    from metafit.data.gp import TabularPriorTasks

    d = config.data
    return TabularPriorTasks(
        n_features=d.n_features,
        n_way=n_way,
        k_shot=k_shot,
        n_query=n_query,
        min_features=d.n_features_min,
        latent_dim=d.prior_latent_dim or None,
        classes=d.prior,
        irrelevant=d.prior_irrelevant,
        warp=d.prior_warp,
        tasks_per_batch=d.tasks_per_batch,
        generator=generator,
    )


def train_batches(config: RunConfig, generator: torch.Generator) -> Iterable[TaskBatch]:
    """Endless meta-training batches drawn from ``generator`` only (lazily, one per step)."""
    d = config.data
    if d.dataset in IMAGE_COMPLETION:  # context k_shot..k_shot_max pixels, targets every pixel
        return _completion_tasks(
            config, d.train_split, generator, d.tasks_per_batch, d.k_shot, d.k_shot_max or d.k_shot
        )
    if d.dataset.startswith("gp-"):
        from metafit.data.gp import GPTasks

        return GPTasks(d.dataset[3:], tasks_per_batch=d.tasks_per_batch, generator=generator)
    if d.dataset == "tabular-prior":
        if d.n_way_min is not None:
            return VariableShot(
                {n: tabular_prior(config, n, d.k_shot, d.n_query, generator) for n in range(d.n_way_min, d.n_way + 1)},
                generator,
            )
        return tabular_prior(config, d.n_way, d.k_shot, d.n_query, generator)
    if d.dataset == "sinusoid":
        if d.k_shot_max is not None:
            return VariableShot(
                {
                    k: SinusoidTasks(
                        k_shot=k, n_query=d.n_query, tasks_per_batch=d.tasks_per_batch, generator=generator
                    )
                    for k in range(d.k_shot, d.k_shot_max + 1)
                },
                generator,
            )
        return SinusoidTasks(k_shot=d.k_shot, n_query=d.n_query, tasks_per_batch=d.tasks_per_batch, generator=generator)
    if d.sources or d.episodes == "metadataset":
        return _metadataset_batches(config, generator)
    dataset = _dataset(config, d.train_split)
    from metafit.data.sampling import EpisodeSampler

    augment = _augment(config, dataset)
    if _entry(config).batches == "classes":
        from metafit.data.batches import ClassBatchSampler

        return ClassBatchSampler(dataset, d.batch_size, generator=generator, augment=augment)

    def episodes(n_way: int, k_shot: int) -> EpisodeSampler:
        return EpisodeSampler(
            dataset, n_way, k_shot, d.n_query, tasks_per_batch=d.tasks_per_batch, generator=generator, augment=augment
        )

    if d.k_shot_max is not None:
        return VariableShot({k: episodes(d.n_way, k) for k in range(d.k_shot, d.k_shot_max + 1)}, generator)
    if d.n_way_min is not None:
        return VariableShot({n: episodes(n, d.k_shot) for n in range(d.n_way_min, d.n_way + 1)}, generator)
    return episodes(d.n_way, d.k_shot)


def _augment_error(config: RunConfig, shape: tuple[int, ...]) -> str:
    return (
        f"data.augment_shift needs images shaped (C, H, W), got examples of shape {shape} "
        f"in data.dataset={config.data.dataset!r}; set data.augment_shift=0"
    )


def _augment(config: RunConfig, dataset: Any) -> Any:
    """The training augmentation of ``data.augment_shift`` (``None``: off); images only."""
    shift = config.data.augment_shift
    if not shift:
        return None
    shape = tuple(dataset.x.shape[1:])
    if len(shape) != 3:
        raise ValueError(_augment_error(config, shape))
    from metafit.data.augment import RandomShift

    return RandomShift(shift)


def _metadataset_batches(config: RunConfig, generator: torch.Generator) -> Iterator[list[Task]]:
    """Meta-batches of ``tasks_per_batch`` episodes across the sources (Meta-Dataset rules or fixed
    n_way/k_shot); episodes of different shapes come as lists of tasks (the engine's loop path)."""
    from metafit.data.metadataset import EpisodeConfig, episodes_for_split
    from metafit.data.sources import SplitDataset

    d = config.data
    if d.sources:
        sources = _sources(config)
    else:
        sources = {d.dataset: SplitDataset(d.dataset, {"train": _dataset(config, d.train_split)}, {})}
    split = "train"
    if d.train_split == "trainval":
        sources = {
            k: SplitDataset(
                v.name, {"train": _concat([v.splits[s] for s in ("train", "val") if s in v.splits])}, v.preprocessing
            )
            for k, v in sources.items()
        }
    ep = EpisodeConfig() if d.episodes == "metadataset" else EpisodeConfig.fixed(d.n_way, d.k_shot, d.n_query)
    weights = None if d.source_weights is None else dict(zip(d.sources, d.source_weights))
    stream = episodes_for_split(sources, split, generator=generator, weights=weights, config=ep).tasks()
    while True:
        yield [next(stream) for _ in range(d.tasks_per_batch)]


class VariableShot:
    """Meta-batches whose shot (or way) is drawn per batch uniformly from the samplers' keys (one generator).

    A CNP is trained this way for variable context sizes (Garnelo et al. 2018), and a learner
    that takes any number of classes for variable ways (``data.n_way_min``); every sampler draws
    from the same generator, so the stream is a function of its state alone.
    """

    def __init__(self, samplers: dict[int, Any], generator: torch.Generator) -> None:
        self.samplers, self.generator = samplers, generator
        self.shots = sorted(samplers)

    def __iter__(self) -> Iterator[TaskBatch]:
        while True:
            k = self.shots[int(torch.randint(len(self.shots), (1,), generator=self.generator))]
            yield self.samplers[k].sample_batch()


def eval_tasks(
    config: RunConfig,
    *,
    n_tasks: int | None = None,
    n_way: int | None = None,
    k_shot: int | None = None,
    n_query: int | None = None,
    seed: int | None = None,
    split: str = "test",
    dataset: Any = None,
) -> TaskBatch | list[Task]:
    """The fixed, seeded held-out tasks of ``config`` (same seed: same tasks for every learner).

    ``dataset`` (a :class:`LabelledDataset`) replaces the config's split, e.g. the converted test
    classes of another dataset (cross-domain evaluation).
    """
    d = config.data
    n_tasks = n_tasks or d.eval_tasks
    seed = d.eval_seed if seed is None else seed
    if d.dataset.startswith("gp-"):  # per-task context sizes, padded with a mask column (the GP protocol)
        for name, value in (("k_shot", k_shot), ("n_query", n_query), ("n_way", n_way)):
            if value is not None:
                raise ValueError(
                    f"{d.dataset} tasks draw their own context sizes (the GP protocol): give no {name}, got {value}"
                )
        from metafit.data.gp import gp_eval_tasks

        return gp_eval_tasks(d.dataset[3:], n_tasks, seed=seed)
    k_shot = k_shot or d.eval_k_shot or d.k_shot
    if d.dataset == "sinusoid":
        return sinusoid_eval_tasks(n_tasks, k_shot, n_query or d.eval_n_query or 100, seed=seed)
    if d.dataset in IMAGE_COMPLETION:  # held-out images, k_shot context pixels, every pixel a target
        return _completion_tasks(config, split, seeding.generator(seed), n_tasks, k_shot, k_shot).sample_batch()
    n_way = n_way or d.eval_n_way or d.n_way
    spec = _spec(config)
    if spec.head == "fixed" and n_way != d.n_way:
        raise ValueError(
            f"n_way={n_way} at evaluation, but algo.name={config.algo.name!r} has a {d.n_way}-way head "
            "(learners with a fixed head cannot change n_way after training; metric learners such as protonet can)"
        )
    if spec.head == "max" and n_way > _max_way(config):
        raise ValueError(
            f"n_way={n_way} at evaluation exceeds the {_max_way(config)} classes this run's CNP was built for "
            "(set data.eval_n_way before training)"
        )
    if d.dataset == "tabular-prior":
        from metafit.data.gp import standardise_tasks

        if dataset is not None:  # a real table (zero-padded to n_features): standardised as the prior's tasks
            from metafit.data.sampling import fixed_episodes

            tasks = fixed_episodes(dataset, n_way, k_shot, n_query or d.eval_n_query or d.n_query, n_tasks, seed=seed)
            return standardise_tasks(tasks)  # type: ignore[arg-type]
        prior = tabular_prior(config, n_way, k_shot, n_query or d.eval_n_query or d.n_query, seeding.generator(seed))
        return prior.sample_batch(n_tasks)
    if dataset is None:
        dataset = _dataset(config, split)
    from metafit.data.sampling import fixed_episodes

    return fixed_episodes(dataset, n_way, k_shot, n_query or d.eval_n_query or d.n_query, n_tasks, seed=seed)


def preprocessing_info(config: RunConfig) -> dict[str, Any]:
    """How raw inputs must be turned into model inputs (recorded in every checkpoint)."""
    d = config.data
    if d.dataset in IMAGE_COMPLETION:
        return {
            "kind": "image-completion",
            "input_shape": [2],
            "images": d.dataset.removeprefix("completion-"),
            "image_size": d.image_size,
            "x": "a pixel's (row, column) scaled to [-1, 1]^2 (metafit.data.gp.pixel_coordinates)",
            "y": "the pixel's intensity as stored (0..1)",
            "split": "Omniglot: the data.protocol class split; other sources: their images split 80/10/10 "
            "(train/val/test) by one permutation of seed 0",
        }
    if d.dataset in REGRESSION_FAMILIES:
        return {"kind": "scalar", "input_shape": [1]}
    if d.dataset == "tabular-prior":
        return {
            "kind": "tabular-prior",
            "input_shape": [d.n_features],
            "n_features": d.n_features,
            "prior": f"metafit.data.gp.TabularPriorTasks (classes={d.prior!r}, latent_dim={d.prior_latent_dim}, "
            f"irrelevant={d.prior_irrelevant}, warp={d.prior_warp})",
            "standardisation": "per task, each feature by the support rows' mean and sd (standardise_tasks)",
            "padding": "a table with fewer features is zero-padded to n_features",
        }
    if d.sources:
        shape = list(input_shape(config))
        return {
            "kind": "image",
            "image_size": d.image_size,
            "channels": shape[0],
            "input_shape": shape,
            "sources": {k: v.preprocessing for k, v in _sources(config).items()},
            "conversion": "metafit.data.sources.convert_images to the run's image_size and channels",
        }
    if config.data.dataset != "omniglot":
        src = data_source(config)
        return {**src.preprocessing, "dataset": src.name, "input_shape": list(src.example_shape)}
    info: dict[str, Any] = {
        "kind": "image",
        "image_size": config.data.image_size,
        "channels": 1,
        "input_shape": [1, config.data.image_size, config.data.image_size],
    }
    try:
        from metafit.data import omniglot as om

        extra = getattr(om, "PREPROCESSING", None)
        if isinstance(extra, dict):
            info.update(extra)
    except ImportError:
        pass
    return info


def scored_learner(algorithm: Algorithm) -> Algorithm:
    """The learner a run is scored with: a training-objective composition
    (:class:`~metafit.algorithms.AllPointsLoss`) scores as the learner it wraps (target points only)."""
    from metafit.algorithms.neural_process import AllPointsLoss

    return algorithm.learner if isinstance(algorithm, AllPointsLoss) else algorithm  # type: ignore[return-value]


def eval_algorithm(config: RunConfig, algorithm: Algorithm) -> Algorithm:
    """The learner as it scores the run's held-out tasks (:func:`scored_learner`): GP tasks come
    padded (per-task context sizes), so a neural process scores them through
    :class:`~metafit.algorithms.Padded`; a gradient-based learner scores them unpadded
    (:func:`score_tasks`)."""
    algorithm = scored_learner(algorithm)
    if not config.data.dataset.startswith("gp-") or algorithm.spec.inner_loop:
        return algorithm
    if _entry(config).network != "np":
        raise ValueError(
            f"data.dataset={config.data.dataset!r} has held-out tasks of per-task context sizes (padded with a mask); "
            "evaluate them with a masked neural process (anp, tnp, npcnp) or a gradient-based learner, "
            f"not algo.name={config.algo.name!r}"
        )
    from metafit.algorithms.neural_process import Padded

    return Padded(algorithm)  # type: ignore[arg-type]


def cross_domain_dataset(
    config: RunConfig, other: str, preprocessing: dict[str, Any], *, label_column: str | None = None
) -> tuple[Any, dict[str, Any]]:
    """The test classes of another dataset, converted to a checkpoint's input format.

    Args:
        config: The trained run's config (data root, cache).
        other: A built-in name or a path (``metafit eval RUN --dataset OTHER``).
        preprocessing: The checkpoint's preprocessing record (its ``input_shape``).
        label_column: Tables: the class column.

    Returns:
        ``(LabelledDataset, conversion)``; ``conversion`` states the source split, the source
        example shape and the checkpoint's.
    """
    from metafit.data.datasets import LabelledDataset
    from metafit.data.sources import convert_images, resolve_dataset

    d = config.data
    src = resolve_dataset(
        other, root=d.data_root or os.environ.get("METAFIT_DATA"), cache_dir=d.cache_dir, label_column=label_column
    )
    split = "test" if "test" in src.splits else list(src.splits)[-1]
    ds = src.splits[split]
    target = tuple(preprocessing.get("input_shape") or ())
    conversion = {
        "dataset": src.name,
        "split": split,
        "classes": ds.num_classes,
        "source_shape": list(ds.example_shape),
        "checkpoint_shape": list(target),
    }
    if ds.example_shape == target:
        conversion["converted"] = "none (same format)"
        return ds, conversion
    padded_prior = preprocessing.get("kind") == "tabular-prior"  # zero padding is the prior's own layout
    if padded_prior and len(ds.example_shape) == 1 and ds.example_shape[0] < target[0]:
        width = int(target[0])
        xf = ds.x if ds.x.is_floating_point() else ds.x.float()
        x = torch.cat([xf, xf.new_zeros(xf.shape[0], width - xf.shape[1])], 1)
        conversion["converted"] = f"{ds.example_shape[0]} features zero-padded to {width}"
        return LabelledDataset(x, ds.y, ds.class_names, ds.groups), conversion
    if len(target) != 3 or len(ds.example_shape) != 3:
        raise ValueError(
            f"dataset {other!r} has examples of shape {ds.example_shape}, the checkpoint expects {target}: only images "
            "(resize, grey/RGB) can be converted, and tables with fewer features for a run trained on tabular-prior "
            "tasks (zero-padded)"
        )
    x = convert_images(ds.x, image_size=int(target[1]), channels=int(target[0]))
    conversion["converted"] = (
        f"{ds.example_shape[0]}x{ds.example_shape[1]}x{ds.example_shape[2]} -> "
        f"{target[0]}x{target[1]}x{target[2]} (metafit.data.sources.convert_images)"
    )
    return LabelledDataset(x, ds.y, ds.class_names, ds.groups), conversion


def _metric(config: RunConfig) -> tuple[str, bool]:
    """(validation metric, higher is better)."""
    return ("mse", False) if config.data.dataset in REGRESSION_FAMILIES else ("accuracy", True)


# -- loading ---------------------------------------------------------------------------------------


def _restore_meta_params(meta_params: MetaParams, ck: Checkpoint) -> None:
    expected = fingerprint(flat_meta_params(meta_params))
    check_fingerprint(expected, ck.meta.get("fingerprint", []), where=str(ck.path))
    saved = ck.group("meta")
    with torch.no_grad():
        for g, d in meta_params.items():
            for k, v in d.items():
                v.copy_(saved[f"{g}/{k}"])


@dataclass
class Trained:
    """A trained learner loaded from a checkpoint."""

    config: RunConfig
    model: nn.Module
    algorithm: Algorithm
    meta_params: MetaParams
    buffers: Buffers
    checkpoint: Checkpoint


def checkpoint_config(recorded: Any) -> RunConfig:
    """The :class:`RunConfig` a checkpoint or a run folder's ``config.json`` records, read with
    the defaults of the release that wrote it: a ``caml`` checkpoint from before ``model.norm_first`` existed holds the post-norm,
    untied, summed-label network (``norm_first = false``, ``tied_qk = false``, ``label_dim = 0``).

    Raises:
        ValueError, TypeError, KeyError: not a valid run config.
    """
    if not isinstance(recorded, dict):
        raise TypeError(f"expected the run config as a mapping, got {type(recorded).__name__}")
    model = dict(recorded.get("model") or {})
    if (recorded.get("algo") or {}).get("name") == "caml" and "norm_first" not in model:
        model.update(norm_first=False, tied_qk=False, label_dim=0)
        recorded = {**recorded, "model": model}
    return RunConfig.from_dict(recorded)


def load_trained(path: str | Path) -> Trained:
    """Loads a checkpoint (run folder, checkpoints folder or file) into a fresh model/learner.

    Raises:
        FileNotFoundError, ValueError: missing/damaged checkpoint or different architecture.
    """
    ck = load_checkpoint(path)
    try:
        config = checkpoint_config(ck.meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {ck.path} holds no valid config: {e}") from None
    recorded = ck.meta.get("preprocessing", {}).get("input_shape")
    model = build_model(config, recorded)
    algorithm = build_algorithm(config)
    meta_params = algorithm.init(model)
    _restore_meta_params(meta_params, ck)
    buffers = buffers_of(model)
    saved_buffers = ck.group("buffers")
    buffers.update({k: v for k, v in saved_buffers.items() if k in buffers})
    for d in meta_params.values():
        for v in d.values():
            v.requires_grad_(False)
    return Trained(config, model, algorithm, meta_params, buffers, ck)


def load_predictor(path: str | Path) -> Predictor:
    """A :class:`metafit.predict.Predictor` of a trained run folder or checkpoint (verified, never unpickled)."""
    tr = load_trained(path)
    return Predictor(
        tr.algorithm, tr.model, tr.meta_params, tr.buffers, dict(tr.checkpoint.meta.get("preprocessing", {}))
    )


# -- metrics file -------------------------------------------------------------------------------------


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl`` (a torn last line from a crash is skipped)."""
    return cbk.read_jsonl(Path(run_dir) / "metrics.jsonl")


def _truncate_metrics(run_dir: Path, step: int) -> None:
    rows = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    atomic_write_bytes(run_dir / "metrics.jsonl", data)


# -- train ---------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    run_dir: Path
    step: int
    last_checkpoint: Path | None
    best_step: int | None
    eval: dict[str, Any] | None = None
    resumed_from: int | None = None
    path: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None
    train_seconds: float = 0.0


def _prepare_run_dir(config: RunConfig, run_dir: Path, *, resume: bool, force: bool) -> bool:
    """Checks/creates the run folder; returns True if an existing run is being resumed."""
    cfg_path = run_dir / "config.json"
    if cfg_path.exists():
        try:
            saved = checkpoint_config(json.loads(cfg_path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            if not force:
                raise ValueError(
                    f"run folder {run_dir} holds an unreadable config.json ({e}); pass --force to start over"
                ) from None
            saved = None
        if resume and saved is not None:
            diff = [k for k in config_diff(saved, config) if k not in RESUMABLE_FIELDS]
            if (
                "train.steps" in config_diff(saved, config)
                and config.train.scheduler == "cosine"
                and "T_max" not in config.train.scheduler_kwargs
            ):
                diff.append(
                    "train.steps (the cosine schedule spans train.steps; set train.scheduler_kwargs.T_max to change steps)"
                )
            if diff:
                raise ValueError(
                    f"cannot resume {run_dir}: its run was started with a different config "
                    f"(differs in {diff}); resume with the same config or use another --run-dir"
                )
            return True
        if not force:
            diff = config_diff(saved, config) if saved is not None else []
            what = f"a different run (config differs in {diff})" if diff else "a run with this config"
            raise ValueError(
                f"run folder {run_dir} already holds {what}; pass --resume to continue it "
                "or --force to delete its outputs and start over"
            )
        for name in _OUTPUTS:
            p = run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    elif run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise ValueError(
            f"run folder {run_dir} exists, is not empty and holds no metafit run (no config.json); "
            "choose an empty or new folder, or pass --force to write into it"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cfg_path, (json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    return False


def apply_process_settings(config: RunConfig) -> None:
    """Applies the run's process-wide settings: torch threads, glibc malloc, deterministic algorithms.

    For the program that owns the process (``metafit train``, a benchmark script); a library
    caller decides for itself.
    """
    from metafit.runtime import keep_freed_memory

    t = config.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    if t.keep_freed_memory:
        keep_freed_memory()
    if t.deterministic:
        seeding.deterministic(True)


def _world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Meta-trains ``config`` into ``run_dir`` (see the module docstring for the files).

    Under ``torch.distributed`` (started by ``torchrun`` or ``metafit train --nproc N``) every
    rank calls this with the same config: each meta-batch is sharded across the ranks and the
    meta-gradients are all-reduced, so the result equals one process with the same seed (up to
    float round-off); rank 0 alone writes files.

    Args:
        config: The run.
        run_dir: Output folder.
        resume: Continue the run in ``run_dir`` from its newest valid checkpoint.
        force: Delete the outputs of a run already in ``run_dir`` and start over.
        progress: Show a tqdm progress bar on stderr.
        callbacks: Extra :class:`~metafit.engine.Callback` s (e.g. a benchmark's timer), run
            after the run's own.

    Raises:
        ValueError: the folder holds a different run (without ``resume``/``force``) or bad data.
        TrainingDiverged: non-finite loss/gradient; the last good checkpoint is left intact.
    """
    rank, world = _world()
    main_rank = rank == 0
    config = resolve_data_options(config)
    if world > 1 and config.train.path == "auto":
        raise ValueError(
            "train.path='auto' lets each rank pick its own engine path; set train.path to 'loop' or 'vmap' "
            "for a multi-process run"
        )
    t, d = config.train, config.data
    check_data(config)

    model = build_model(config)
    algorithm = build_algorithm(config)
    if t.distill_from is not None:  # RFS-distill: the run is a pretrain run; only its training loss changes
        from metafit.algorithms.distill import SelfDistill

        teacher = load_trained(t.distill_from)
        try:
            algorithm = SelfDistill(
                algorithm,  # type: ignore[arg-type]
                teacher.meta_params,
                teacher_learner=teacher.algorithm,  # type: ignore[arg-type]
                ce_weight=1.0 - t.distill_weight,
                kd_weight=t.distill_weight,
                temperature=t.distill_temperature,
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"train.distill_from={t.distill_from}: {e}") from None
    try:
        meta_params = algorithm.init(model, generator=seeding.generator(t.seed))
    except ValueError as e:
        if t.distill_from is None:
            raise
        raise ValueError(f"train.distill_from={t.distill_from}: {e}") from None
    if t.init_from is not None:
        from metafit.algorithms.warm_start import init_from

        source = load_trained(t.init_from)
        try:
            if t.init_prefix:
                meta_params = init_from(
                    meta_params, source.meta_params["model"], prefix_map={"": t.init_prefix}, only=t.init_prefix
                )
            else:
                meta_params = init_from(meta_params, source.meta_params["model"])
        except ValueError as e:
            raise ValueError(f"train.init_from={t.init_from}: {e}") from None
    for prefix in t.freeze:  # not meta-trained: left out of the optimiser (engine.parameters_of)
        hit = [k for k in meta_params["model"] if k.startswith(prefix)]
        if not hit:
            raise ValueError(
                f"train.freeze entry {prefix!r} matches no model parameter; names include "
                f"{sorted(meta_params['model'])[:6]}"
            )
        for k in hit:
            meta_params["model"][k].requires_grad_(False)
    if t.freeze and not parameters_of(meta_params):
        raise ValueError(f"train.freeze={list(t.freeze)} freezes every meta-parameter: nothing would be trained")
    run_dir = Path(run_dir)
    resuming = _prepare_run_dir(config, run_dir, resume=resume, force=force) if main_rank else False
    if world > 1:
        flag = torch.tensor([1 if resuming else 0])
        torch.distributed.broadcast(flag, 0)
        resuming = bool(flag.item())
    if resuming and main_rank:  # keep resumable changes (e.g. more steps) in config.json
        atomic_write_bytes(
            run_dir / "config.json", (json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n").encode()
        )
    optimizer = make_optimizer(t.optimizer, parameters_of(meta_params), t.outer_lr, **t.optimizer_kwargs)
    scheduler = build_scheduler(config, optimizer)
    gen = seeding.generator(t.seed)
    metric, higher = _metric(config)
    if world > 1:
        from metafit.distributed import distributed_callbacks

        own: list[Callback] = distributed_callbacks()
    else:
        own = [DivergenceGuard()]
    trainer = Trainer(
        algorithm,
        model,
        optimizer=optimizer,
        meta_params=meta_params,
        path=t.path,  # type: ignore[arg-type]
        scheduler=scheduler,
        grad_clip=t.grad_clip,
        buffers=buffers_of(model),
        callbacks=own,
    )

    log = cbk.JsonlLog(run_dir / "metrics.jsonl", every=t.log_every, total_steps=t.steps)
    sinks: list[Any] = [log.write]
    run_cbs: list[Callback] = [log]
    if t.tensorboard:
        tb = cbk.TensorBoard(run_dir / "tensorboard", every=t.log_every)
        sinks.append(tb.write)
        run_cbs.append(tb)

    def sink(row: dict[str, Any]) -> None:
        for fn in sinks:
            fn(row)

    def score(tr: Trainer, tasks: Any) -> EvalResult:
        return evaluate(eval_algorithm(config, tr.algorithm), tr.model, tr.meta_params, tasks, buffers=tr.buffers)

    val = None
    if (t.eval_every or t.eval_every_seconds) and d.train_split == "train":
        val_tasks = eval_tasks(config, n_tasks=d.val_tasks, seed=d.eval_seed + 7919, split="val") if main_rank else []
        val = cbk.Validation(
            val_tasks,
            metric=metric,
            higher_is_better=higher,
            every_steps=t.eval_every,
            every_seconds=t.eval_every_seconds,
            sink=sink,
            evaluate_fn=score,
        )
        run_cbs.append(val)
    if t.monitor_every_seconds:
        mon_tasks = eval_tasks(config, n_tasks=d.monitor_tasks) if main_rank else []
        run_cbs.append(
            cbk.Validation(
                mon_tasks,
                metric=metric,
                higher_is_better=higher,
                every_seconds=t.monitor_every_seconds,
                kind="monitor",
                select=False,
                sink=sink,
                evaluate_fn=score,
            )
        )
    ckpt = cbk.Checkpointing(
        run_dir / "checkpoints",
        every=t.checkpoint_every,
        keep_last=t.keep_last,
        generator=gen,
        best=val,
        meta=lambda: {"config": config.to_dict(), "metric": metric, "preprocessing": preprocessing_info(config)},
    )
    run_cbs.append(ckpt)
    if t.max_minutes is not None:
        run_cbs.append(cbk.TimeBudget(60.0 * t.max_minutes))
    if _entry(config).scheduled:
        run_cbs.append(cbk.LearnerSchedule())
    if progress and main_rank:
        run_cbs.append(cbk.ProgressBar(t.steps, desc=f"{config.algo.name} {d.dataset}"))
    run_cbs.extend(callbacks)

    resumed_from = None
    last_ckpt = latest_checkpoint(run_dir / "checkpoints") if resuming else None
    if last_ckpt is not None:
        ck = load_checkpoint(last_ckpt)
        restore_trainer(ck, trainer, generator=gen, callbacks=run_cbs)
        resumed_from = trainer.step_count
        if main_rank:
            _truncate_metrics(run_dir, trainer.step_count)
        log_module.info("resuming %s from %s (step %d)", run_dir, last_ckpt, trainer.step_count)
    elif resuming and main_rank:
        _truncate_metrics(run_dir, 0)

    try:
        trainer.fit(_checked(train_batches(config, gen), trainer), t.steps, callbacks=run_cbs)
    except DivergenceError as e:
        log.write({"step": e.step, "kind": "diverged", "what": e.what})
        log.close()
        raise TrainingDiverged(e.step, e.what, latest_checkpoint(run_dir / "checkpoints")) from None
    finally:
        log.close()
    result = TrainResult(
        run_dir,
        trainer.step_count,
        ckpt.last,
        val.best_step if val else None,
        resumed_from=resumed_from,
        path=trainer.resolved_path,
        history=[r for r in log.rows if r.get("kind") == "train"],
        stop_reason=trainer.stop_reason,
        train_seconds=trainer.train_seconds,
    )
    if d.eval_tasks and main_rank:
        out = _evaluate_trained(
            config,
            trainer.algorithm,  # as scheduled at the last step (MAML++'s LearnerSchedule)
            model,
            trainer.meta_params,
            trainer.buffers,  # type: ignore[arg-type]
            checkpoint=ckpt.last,
            step=trainer.step_count,
        )
        atomic_write_bytes(run_dir / "eval.json", (json.dumps(out, indent=1) + "\n").encode())
        result.eval = out
    return result


def _checked(batches: Iterable[TaskBatch], trainer: Trainer) -> Iterator[TaskBatch]:
    """The training batches; a bad batch's error names the step it was drawn for."""
    it = iter(batches)
    while True:
        step = trainer.step_count + 1
        try:
            batch = next(it)
            for part in batch if isinstance(batch, list) else [batch]:
                part.check_finite()
        except StopIteration:
            return
        except ValueError as e:
            raise ValueError(f"task batch for step {step}: {e}") from None
        yield batch


def _context_as_targets(task: Task) -> Task:
    """The task whose targets are its own context points (for the context log-likelihood)."""
    return Task(task.support_x, task.support_y, task.support_x, task.support_y, n_way=task.n_way)


def score_tasks(
    config: RunConfig,
    algorithm: Algorithm,
    model: nn.Module,
    meta_params: MetaParams,
    buffers: Buffers,
    tasks: Any,
    *,
    steps: int | None = None,
    lr: float | None = None,
) -> EvalResult:
    """:func:`metafit.evaluation.evaluate` of a run's learner (as :func:`eval_algorithm` gives it)
    on held-out tasks, plus, for a Gaussian predictive, the context NLL (``context_nll``: each
    task's context points as its targets) and the coverage of the central predictive intervals per task
    (``coverage_50``, ...; not on padded GP tasks). A gradient-based learner scores padded GP
    tasks at their own sizes (so with coverage) (:func:`metafit.data.gp.unpad_tasks`): the same tasks and points.
    ``metafit eval`` and ``metafit compare`` score with it."""
    from metafit.algorithms.cnp import COVERAGE_LEVELS, calibration
    from metafit.evaluation import summarize

    if config.data.dataset.startswith("gp-") and algorithm.spec.inner_loop and isinstance(tasks, TaskBatch):
        from metafit.data.gp import unpad_tasks

        tasks = unpad_tasks(tasks)  # no padding mask in an inner loop: each task at its own size
    chunk = 250 if config.data.dataset == "sinusoid" and algorithm.spec.inner_loop else 0  # vmap: same numbers
    res: EvalResult = evaluate(algorithm, model, meta_params, tasks, buffers=buffers, steps=steps, lr=lr, chunk=chunk)
    if algorithm.spec.distribution:
        # the NP literature's context log-likelihood: each task's context points as its targets
        # (a gradient-based learner adapts on them, then predicts them)
        ctx = evaluate(
            algorithm, model, meta_params, [_context_as_targets(t) for t in tasks], buffers=buffers, steps=steps, lr=lr
        )
        res.metrics["context_nll"] = ctx.metrics["nll"]
        res.per_task["context_nll"] = ctx.per_task["nll"]
    unpadded = algorithm.spec.inner_loop or not config.data.dataset.startswith("gp-")
    if algorithm.spec.distribution and unpadded:  # interval coverage per task (not on padded GP tasks)
        scored = algorithm.with_eval(steps=steps, lr=lr) if algorithm.spec.inner_loop else algorithm  # type: ignore[attr-defined]
        cov = calibration(scored, model, meta_params, tasks, buffers=buffers, levels=COVERAGE_LEVELS)  # type: ignore[arg-type]
        for level, values in cov.items():
            res.metrics[f"coverage_{round(100 * level)}"] = summarize(values)
            res.per_task[f"coverage_{round(100 * level)}"] = values
    return res


def _evaluate_trained(
    config: RunConfig,
    algorithm: Algorithm,
    model: nn.Module,
    meta_params: MetaParams,
    buffers: Buffers,
    *,
    checkpoint: Path | None,
    step: int,
    shots: Sequence[int | None] = (None,),
    n_way: int | None = None,
    n_query: int | None = None,
    episodes: int | None = None,
    inner_steps: int | None = None,
    inner_lr: float | None = None,
    seed: int | None = None,
    recalibrate: str | None = None,
    dataset: Any = None,
    conversion: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from metafit.algorithms.cnp import recalibrate as fit_variance_scale

    d = config.data
    results = []
    scale_info = None
    algorithm = scored_learner(algorithm)
    if recalibrate is not None:
        if not algorithm.spec.distribution or not hasattr(algorithm, "variance_scale"):
            raise ValueError(
                "recalibrate needs a learner with a Gaussian predictive and a variance scale "
                f"(cnp, npcnp, anp, tnp), got algo.name={config.algo.name!r}"
            )
        # validation tasks of every evaluated context size, from their own seeds: never the test tasks
        val = [
            t
            for k in shots
            for t in eval_tasks(
                config, n_tasks=d.val_tasks * 10, k_shot=k, seed=d.eval_seed + 7919 + (k or 0), split="val"
            )
        ]
        algorithm = fit_variance_scale(algorithm, model, meta_params, val, buffers=buffers, method=recalibrate)  # type: ignore[arg-type]
        scale_info = {"method": recalibrate, "variance_scale": algorithm.variance_scale, "val_tasks": len(val)}  # type: ignore[attr-defined]
    algorithm = eval_algorithm(config, algorithm)
    for k in shots:
        tasks = eval_tasks(config, n_tasks=episodes, n_way=n_way, k_shot=k, n_query=n_query, seed=seed, dataset=dataset)
        res = score_tasks(config, algorithm, model, meta_params, buffers, tasks, steps=inner_steps, lr=inner_lr)
        first = tasks[0]
        fixed_sizes = not d.dataset.startswith("gp-")  # the GP protocol draws sizes per task
        queries = first.n_query if first.n_way is None else first.n_query // first.n_way
        results.append(
            {
                "dataset": d.dataset if conversion is None else conversion["dataset"],
                **({"cross_domain": conversion} if conversion is not None else {}),
                "algo": config.algo.name,
                "n_way": first.n_way,
                "k_shot": (k or d.eval_k_shot or d.k_shot) if fixed_sizes else None,
                "n_query": queries if fixed_sizes else None,
                "episodes": len(tasks),
                "seed": d.eval_seed if seed is None else seed,
                **res.to_dict(),
            }
        )
    out = {"checkpoint": str(checkpoint) if checkpoint else None, "step": step, "name": config.name, "results": results}
    if scale_info is not None:
        out["recalibration"] = scale_info
    return out


def evaluate_checkpoint(
    path: str | Path,
    *,
    shots: Sequence[int] | None = None,
    n_way: int | None = None,
    n_query: int | None = None,
    episodes: int | None = None,
    inner_steps: int | None = None,
    inner_lr: float | None = None,
    seed: int | None = None,
    data_root: str | None = None,
    recalibrate: str | None = None,
    dataset: str | None = None,
    label_column: str | None = None,
    test_rotations: bool | None = None,
) -> dict[str, Any]:
    """Evaluates a trained checkpoint on fixed seeded episodes.

    Args:
        path: Run folder, checkpoints folder or checkpoint file.
        shots: k_shot values to evaluate (default: the config's evaluation shots).
        n_way, n_query, episodes, seed: Episode overrides (default: from the config).
        inner_steps, inner_lr: Adaptation overrides for gradient-based learners.
        dataset: Evaluate on the test classes of another dataset (a built-in name or a path),
            converted to the checkpoint's input format (cross-domain evaluation; stated in the
            output under ``cross_domain``).
        label_column: With a table ``dataset``: its class column.
        test_rotations: Omniglot: test on the rotated copies of the test characters too (``True``)
            or on the unrotated characters only (``False``); ``None``: as the run was configured.
        recalibrate: ``"nll"`` or ``"quantile"``: fit a Gaussian learner's variance scale on
            validation tasks (never the test tasks) before scoring
            (:func:`metafit.algorithms.cnp.recalibrate`).
        data_root: Where the dataset lives, if not where it was at training time.

    Returns:
        ``{"checkpoint", "step", "results": [per-shot EvalResult dicts with settings]}``.
    """
    tr = load_trained(path)
    config = tr.config
    if data_root is not None:
        config = config.replace(data={"data_root": str(data_root)})
    if test_rotations is not None:
        config = config.replace(data={"test_rotations": test_rotations})
    other = conversion = None
    if dataset is not None:
        other, conversion = cross_domain_dataset(
            config, dataset, tr.checkpoint.meta.get("preprocessing", {}), label_column=label_column
        )
    return _evaluate_trained(
        config,
        tr.algorithm,
        tr.model,
        tr.meta_params,
        tr.buffers,
        checkpoint=tr.checkpoint.path,
        step=tr.checkpoint.step,
        shots=list(shots) if shots else [None],
        n_way=n_way,
        n_query=n_query,
        episodes=episodes,
        inner_steps=inner_steps,
        inner_lr=inner_lr,
        seed=seed,
        recalibrate=recalibrate,
        dataset=other,
        conversion=conversion,
    )


def eval_markdown(out: dict[str, Any]) -> str:
    """A Markdown table of an evaluation (one row per setting, mean ± 95% CI, the paper's figure)."""
    from metafit.app.papers import paper_reference

    lines = [
        "| algo | n_way | k_shot | episodes | inner steps | metric | mean | ± 95% CI | paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["results"]:
        for m, s in r["metrics"].items():
            if m == "loss" and len(r["metrics"]) > 1:
                continue
            scale = 100.0 if m == "accuracy" else 1.0
            paper = paper_reference(r.get("dataset", ""), r["algo"], r["n_way"], r["k_shot"], m) or "-"
            lines.append(
                f"| {r['algo']} | {r['n_way'] or '-'} | {r['k_shot'] or 'per task'} | {r['episodes']} | "
                f"{r['steps'] if r['steps'] is not None else '-'} | {m}{' (%)' if scale != 1 else ''} | "
                f"{_fmt(scale * s['mean'])} | {_fmt(scale * s['ci95'])} | {paper} |"
            )
    return "\n".join(lines) + "\n"


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.4g}"
