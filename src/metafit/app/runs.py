"""Run folders and the drivers behind the CLI: config -> data -> algorithm -> Trainer -> checkpoints.

A run folder holds::

    config.json              the full resolved RunConfig
    metrics.jsonl            one JSON row per logged step (kind "train") and validation (kind "val")
    checkpoints/step_*.{safetensors,json}
    eval.json                final evaluation (mean ± 95% CI, adaptation curve, per-task values)

Training resumes EXACTLY: the meta-parameters, optimiser and scheduler states, the step, the
engine path and the task sampler's ``torch.Generator`` state are restored from the newest valid
checkpoint, and task sampling depends only on that generator, so a run killed at any moment and
resumed ends with the same parameters, bit for bit on CPU, as an uninterrupted one.

Only :class:`metafit.engine.Trainer` steps the optimiser; this module builds things and writes
files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metafit import seeding
from metafit.algorithms import ANIL, CNP, MAML, MetaSGD, ProtoNet, Reptile
from metafit.algorithms.base import Algorithm, MetaParams, flat_meta_params
from metafit.checkpoint import (
    Checkpoint,
    atomic_write_bytes,
    check_fingerprint,
    fingerprint,
    latest_checkpoint,
    load_checkpoint,
    pack_state,
    prune_checkpoints,
    save_checkpoint,
    unpack_state,
)
from metafit.app.config import RunConfig, config_diff
from metafit.data.sinusoid import SinusoidTasks, sinusoid_eval_tasks
from metafit.data.task import Task, TaskBatch
from metafit.engine import DivergenceError, Trainer, make_optimizer, parameters_of
from metafit.evaluation import EvalResult, evaluate
from metafit.functional import Buffers, buffers_of
from metafit.models import MLP, CNPClassifier, CNPRegressor, Conv4
from metafit.runtime import keep_freed_memory

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
    "load_trained",
    "evaluate_checkpoint",
    "read_metrics",
    "eval_markdown",
    "RESUMABLE_FIELDS",
]

log = logging.getLogger(__name__)

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
        "data.data_root",
        "data.cache_dir",
        "data.eval_tasks",
        "name",
    }
)
_OUTPUTS = ("config.json", "metrics.jsonl", "checkpoints", "eval.json", "plots")


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
    if config.data.dataset == "sinusoid":
        return "gaussian_nll" if config.algo.name == "cnp" else "mse"
    return "cross_entropy"


def _max_way(config: RunConfig) -> int:
    """Largest ``n_way`` a CNP classifier of this run must handle (training and evaluation)."""
    return max(20, config.data.n_way, config.data.eval_n_way or 0)


def build_model(config: RunConfig) -> nn.Module:
    """The backbone named by ``config.model``, initialised from ``train.seed`` (no global state)."""
    m = config.model
    if config.algo.name == "cnp":
        return seeding.seeded(config.train.seed, lambda: _build_cnp(config))
    if config.resolved_arch == "mlp":
        return seeding.seeded(config.train.seed, lambda: MLP(1, m.hidden, 1))
    out = None if config.algo.name == "protonet" else config.data.n_way
    return seeding.seeded(
        config.train.seed,
        lambda: Conv4(
            1, out, width=m.width, image_size=config.data.image_size, downsample=m.downsample, norm=m.norm  # type: ignore[arg-type]
        ),
    )


def _build_cnp(config: RunConfig) -> nn.Module:
    """The CNP network of the dataset: MLP encoder/decoder (sinusoid) or Conv4 features (images)."""
    m = config.model
    if config.resolved_arch == "mlp":
        return CNPRegressor(
            1, 1, r_dim=m.r_dim, encoder_hidden=(m.r_dim,) * 3, decoder_hidden=(m.r_dim,) * 2,
            min_variance=m.min_variance, bound=m.variance_bound,
        )
    conv = Conv4(1, None, width=m.width, image_size=config.data.image_size, downsample=m.downsample, norm=m.norm)  # type: ignore[arg-type]
    return CNPClassifier(conv, conv.feature_dim, max_way=_max_way(config), r_dim=m.r_dim, hidden=m.r_dim)


def build_algorithm(config: RunConfig) -> Algorithm:
    """The learner named by ``config.algo`` with the dataset's criterion."""
    a = config.algo
    if a.name == "protonet":
        return ProtoNet(distance_scale=a.distance_scale)
    if a.name == "cnp":
        return CNP(criterion=_criterion(config))
    common: dict[str, Any] = dict(
        inner_lr=a.inner_lr,
        inner_steps=a.inner_steps,
        criterion=_criterion(config),
        eval_inner_lr=a.eval_inner_lr,
        eval_inner_steps=a.eval_inner_steps,
    )
    if a.name == "maml":
        return MAML(**common)
    if a.name == "fomaml":
        return MAML(first_order=True, **common)
    if a.name == "metasgd":
        return MetaSGD(init_inner_lr=a.init_inner_lr, **common)
    if a.name == "anil":
        return ANIL(**common)
    if a.name == "reptile":
        return Reptile(**common)
    raise ValueError(f"algo.name {a.name!r} has no builder")  # pragma: no cover - config validates


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
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=kw.pop("gamma", 0.999), **kw)
    except TypeError as e:
        raise ValueError(f"train.scheduler_kwargs {t.scheduler_kwargs} do not fit train.scheduler={t.scheduler!r}: {e}") from None


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

    return om.omniglot_split(
        root,
        split,
        protocol=config.data.protocol,
        rotations=config.data.rotations,
        image_size=config.data.image_size,
        cache_dir=config.data.cache_dir,
    )


def train_batches(config: RunConfig, generator: torch.Generator) -> Iterable[TaskBatch]:
    """Endless meta-training batches drawn from ``generator`` only (lazily, one per step)."""
    d = config.data
    if d.dataset == "sinusoid":
        return SinusoidTasks(k_shot=d.k_shot, n_query=d.n_query, tasks_per_batch=d.tasks_per_batch, generator=generator)
    dataset = _omniglot(config, "train")
    from metafit.data.sampling import EpisodeSampler

    return EpisodeSampler(
        dataset, d.n_way, d.k_shot, d.n_query, tasks_per_batch=d.tasks_per_batch, generator=generator
    )


def eval_tasks(
    config: RunConfig,
    *,
    n_tasks: int | None = None,
    n_way: int | None = None,
    k_shot: int | None = None,
    n_query: int | None = None,
    seed: int | None = None,
    split: str = "test",
) -> TaskBatch | list[Task]:
    """The fixed, seeded held-out tasks of ``config`` (same seed: same tasks for every learner)."""
    d = config.data
    n_tasks = n_tasks or d.eval_tasks
    k_shot = k_shot or d.eval_k_shot or d.k_shot
    seed = d.eval_seed if seed is None else seed
    if d.dataset == "sinusoid":
        return sinusoid_eval_tasks(n_tasks, k_shot, n_query or d.eval_n_query or 100, seed=seed)
    n_way = n_way or d.eval_n_way or d.n_way
    if config.algo.name not in ("protonet", "cnp") and n_way != d.n_way:
        raise ValueError(
            f"n_way={n_way} at evaluation, but algo.name={config.algo.name!r} has a {d.n_way}-way head "
            "(only protonet and cnp can change n_way after training)"
        )
    if config.algo.name == "cnp" and n_way > _max_way(config):
        raise ValueError(
            f"n_way={n_way} at evaluation exceeds the {_max_way(config)} classes this run's CNP was built for "
            "(set data.eval_n_way before training)"
        )
    dataset = _omniglot(config, split)
    from metafit.data.sampling import fixed_episodes

    return fixed_episodes(dataset, n_way, k_shot, n_query or d.eval_n_query or d.n_query, n_tasks, seed=seed)


def preprocessing_info(config: RunConfig) -> dict[str, Any]:
    """How raw inputs must be turned into model inputs (recorded in every checkpoint)."""
    if config.data.dataset == "sinusoid":
        return {"kind": "scalar", "input_shape": [1]}
    info: dict[str, Any] = {"kind": "image", "image_size": config.data.image_size, "channels": 1}
    try:
        from metafit.data import omniglot as om

        extra = getattr(om, "PREPROCESSING", None)
        if isinstance(extra, dict):
            info.update(extra)
    except ImportError:
        pass
    return info


def _metric(config: RunConfig) -> tuple[str, bool]:
    """(validation metric, higher is better)."""
    return ("mse", False) if config.data.dataset == "sinusoid" else ("accuracy", True)


# -- loading ---------------------------------------------------------------------------------------


def _meta_tensors(meta_params: MetaParams) -> dict[str, Tensor]:
    return {f"meta/{k}": v for k, v in flat_meta_params(meta_params).items()}


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


def load_trained(path: str | Path) -> Trained:
    """Loads a checkpoint (run folder, checkpoints folder or file) into a fresh model/learner.

    Raises:
        FileNotFoundError, ValueError: missing/damaged checkpoint or different architecture.
    """
    ck = load_checkpoint(path)
    try:
        config = RunConfig.from_dict(ck.meta["config"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"checkpoint {ck.path} holds no valid config: {e}") from None
    model = build_model(config)
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


# -- metrics file -------------------------------------------------------------------------------------


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl`` (a torn last line from a crash is skipped)."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _truncate_metrics(run_dir: Path, step: int) -> None:
    rows = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    atomic_write_bytes(run_dir / "metrics.jsonl", data)


class _MetricsWriter:
    def __init__(self, path: Path) -> None:
        self.f = open(path, "a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


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


def _prepare_run_dir(config: RunConfig, run_dir: Path, *, resume: bool, force: bool) -> bool:
    """Checks/creates the run folder; returns True if an existing run is being resumed."""
    cfg_path = run_dir / "config.json"
    if cfg_path.exists():
        try:
            saved = RunConfig.from_dict(json.loads(cfg_path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, ValueError) as e:
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
                diff.append("train.steps (the cosine schedule spans train.steps; set train.scheduler_kwargs.T_max to change steps)")
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


def _train_rank(config_dict: dict[str, Any], run_dir: str, resume: bool, force: bool, progress: bool) -> TrainResult:
    """Entry point of one rank under :func:`metafit.distributed.launch` (module level: picklable)."""
    return train(RunConfig.from_dict(config_dict), run_dir, resume=resume, force=force, progress=progress)


class _NullWriter:
    """Metrics writer of non-zero ranks: rank 0 alone logs."""

    def write(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def train(
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    nproc: int = 1,
    timeout: float = 7 * 24 * 3600.0,
) -> TrainResult:
    """Meta-trains ``config`` into ``run_dir`` (see the module docstring for the files).

    Args:
        config: The run.
        run_dir: Output folder.
        resume: Continue the run in ``run_dir`` from its newest valid checkpoint.
        force: Delete the outputs of a run already in ``run_dir`` and start over.
        progress: Show a tqdm progress bar on stderr.
        nproc: Processes on this machine (``torch.distributed``, gloo on CPU / nccl on GPU).
            Each meta-batch is sharded across them and the meta-gradients are all-reduced,
            so the result equals one process with the same seed (up to float round-off). Rank 0
            alone logs and checkpoints. Under ``torchrun`` (process group already initialised)
            leave it at 1: the run joins the existing group.
        timeout: Hard wall-clock limit of a multi-process run (seconds).

    Raises:
        ValueError: the folder holds a different run (without ``resume``/``force``) or bad data.
        TrainingDiverged: non-finite loss/gradient; the last good checkpoint is left intact.
    """
    from metafit import distributed as mdist

    if nproc > 1:
        if config.train.path == "auto":
            raise ValueError("train.path='auto' lets each rank pick its own path; set train.path to 'loop' or 'vmap' with nproc > 1")
        results = mdist.launch(_train_rank, nproc, config.to_dict(), str(run_dir), resume, force, progress, timeout=timeout)
        return results[0]
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if torch.distributed.is_initialized() else (0, 1)
    main_rank = rank == 0
    run_dir = Path(run_dir)
    resuming = _prepare_run_dir(config, run_dir, resume=resume, force=force) if main_rank else False
    if world > 1:
        flag = torch.tensor([1 if resuming else 0])
        torch.distributed.broadcast(flag, 0)
        resuming = bool(flag.item())
        progress = progress and main_rank
    if resuming and main_rank:  # keep resumable changes (e.g. more steps) in config.json
        atomic_write_bytes(run_dir / "config.json", (json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    t = config.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    if t.keep_freed_memory:
        keep_freed_memory()
    if t.deterministic:
        seeding.deterministic(True)

    model = build_model(config)
    algorithm = build_algorithm(config)
    meta_params = algorithm.init(model, generator=seeding.generator(t.seed))
    optimizer = make_optimizer(t.optimizer, parameters_of(meta_params), t.outer_lr, **t.optimizer_kwargs)
    scheduler = build_scheduler(config, optimizer)
    gen = seeding.generator(t.seed)
    buffers = buffers_of(model)
    metric, higher = _metric(config)
    step, best_step, best_value, path = 0, None, None, t.path
    wall_offset = 0.0
    resumed_from = None
    ckpt_dir = run_dir / "checkpoints"
    last_ckpt = latest_checkpoint(ckpt_dir) if resuming else None
    if last_ckpt is not None:
        ck = load_checkpoint(last_ckpt)
        _restore_meta_params(meta_params, ck)
        optimizer.load_state_dict(unpack_state(ck.meta["optimizer"], ck.tensors))
        if scheduler is not None and ck.meta.get("scheduler") is not None:
            scheduler.load_state_dict(unpack_state(ck.meta["scheduler"], ck.tensors))
        gen.set_state(ck.tensors["rng/tasks"])
        step = ck.step
        best_step, best_value = ck.meta.get("best_step"), ck.meta.get("best_value")
        path = ck.meta.get("path", path)
        wall_offset = float(ck.meta.get("wall_time", 0.0))
        resumed_from = step
        _truncate_metrics(run_dir, step)
        log.info("resuming %s from %s (step %d)", run_dir, last_ckpt, step)
    elif resuming:
        _truncate_metrics(run_dir, 0)

    trainer = Trainer(
        algorithm, model, optimizer=optimizer, meta_params=meta_params, path=path,  # type: ignore[arg-type]
        scheduler=scheduler, grad_clip=t.grad_clip, buffers=buffers, step_count=step,
    )
    if world > 1:
        mdist.broadcast_(parameters_of(meta_params))
    val = eval_tasks(config, n_tasks=config.data.val_tasks, seed=config.data.eval_seed + 7919, split="val") if (t.eval_every and main_rank) else None
    writer = _MetricsWriter(run_dir / "metrics.jsonl") if main_rank else _NullWriter()
    t_start = time.perf_counter()
    history: list[dict[str, Any]] = []

    def save(s: int, last_metrics: dict[str, Any]) -> Path | None:
        if not main_rank:
            return None
        tensors = _meta_tensors(meta_params)
        tensors.update({f"buffers/{k}": v for k, v in buffers.items()})
        tensors["rng/tasks"] = gen.get_state()
        meta = {
            "config": config.to_dict(),
            "path": trainer.resolved_path,
            "path_report": {k: v for k, v in trainer.path_report.items() if isinstance(v, (str, int, float, bool))},
            "optimizer": pack_state(optimizer.state_dict(), "optim", tensors),
            "scheduler": pack_state(scheduler.state_dict(), "sched", tensors) if scheduler is not None else None,
            "best_step": best_step,
            "best_value": best_value,
            "metric": metric,
            "metrics": last_metrics,
            "fingerprint": fingerprint(flat_meta_params(meta_params)),
            "preprocessing": preprocessing_info(config),
            "wall_time": wall_offset + time.perf_counter() - t_start,
            "torch": torch.__version__,
        }
        p = save_checkpoint(ckpt_dir, s, tensors, meta)
        prune_checkpoints(ckpt_dir, t.keep_last, {best_step} if best_step is not None else set())
        return p

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=t.steps, initial=step, desc=f"{config.algo.name} {config.data.dataset}", unit="step", dynamic_ncols=True)
    batches: Iterator[TaskBatch] = iter(train_batches(config, gen))
    last: dict[str, Any] = {}
    try:
        while trainer.step_count < t.steps:
            batch = next(batches)
            try:
                batch.check_finite()
            except ValueError as e:
                raise ValueError(f"task batch for step {trainer.step_count + 1}: {e}") from None
            try:
                r = mdist.distributed_step(trainer, batch) if world > 1 else trainer.step(batch)
            except DivergenceError as e:
                writer.write({"step": e.step, "kind": "diverged", "what": e.what})
                raise TrainingDiverged(e.step, e.what, latest_checkpoint(ckpt_dir)) from None
            s = r.step
            last = {k: v for k, v in r.metrics.items() if k != "n_tasks"}
            if s % t.log_every == 0 or s == t.steps:
                row = {"kind": "train", "step": s, **last, "lr": r.lr, "seconds": r.seconds,
                       "wall_time": wall_offset + time.perf_counter() - t_start, "path": trainer.resolved_path}
                writer.write(row)
                history.append(row)
                if bar is not None:
                    bar.set_postfix({k: f"{last[k]:.4g}" for k in ("loss", "accuracy", "mse") if k in last})
            if val is not None and (s % t.eval_every == 0 or s == t.steps):
                res = evaluate(algorithm, model, meta_params, val, buffers=buffers)
                v = res.metrics[metric].mean
                writer.write({"kind": "val", "step": s, metric: v, f"{metric}_ci95": res.metrics[metric].ci95})
                if best_value is None or (v > best_value if higher else v < best_value):
                    best_step, best_value = s, v
            if s % t.checkpoint_every == 0 or s == t.steps:
                last_ckpt = save(s, last)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        writer.close()
    if last_ckpt is None and trainer.step_count == t.steps:  # steps == 0 or nothing to do
        last_ckpt = save(trainer.step_count, last)
    result = TrainResult(run_dir, trainer.step_count, last_ckpt, best_step, resumed_from=resumed_from,
                         path=trainer.resolved_path, history=history)
    if config.data.eval_tasks and main_rank:
        out = _evaluate_trained(config, algorithm, model, meta_params, buffers, checkpoint=last_ckpt, step=trainer.step_count)
        atomic_write_bytes(run_dir / "eval.json", (json.dumps(out, indent=1) + "\n").encode())
        result.eval = out
    return result


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
) -> dict[str, Any]:
    d = config.data
    results = []
    for k in shots:
        tasks = eval_tasks(config, n_tasks=episodes, n_way=n_way, k_shot=k, n_query=n_query, seed=seed)
        res: EvalResult = evaluate(algorithm, model, meta_params, tasks, buffers=buffers, steps=inner_steps, lr=inner_lr)
        first = tasks[0]
        results.append({
            "dataset": d.dataset,
            "algo": config.algo.name,
            "n_way": first.n_way,
            "k_shot": k or d.eval_k_shot or d.k_shot,
            "n_query": first.n_query if first.n_way is None else first.n_query // first.n_way,
            "episodes": len(tasks),
            "seed": d.eval_seed if seed is None else seed,
            **res.to_dict(),
        })
    return {"checkpoint": str(checkpoint) if checkpoint else None, "step": step, "name": config.name, "results": results}


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
) -> dict[str, Any]:
    """Evaluates a trained checkpoint on fixed seeded episodes.

    Args:
        path: Run folder, checkpoints folder or checkpoint file.
        shots: k_shot values to evaluate (default: the config's evaluation shots).
        n_way, n_query, episodes, seed: Episode overrides (default: from the config).
        inner_steps, inner_lr: Adaptation overrides for gradient-based learners.
        data_root: Where the dataset lives, if not where it was at training time.

    Returns:
        ``{"checkpoint", "step", "results": [per-shot EvalResult dicts with settings]}``.
    """
    tr = load_trained(path)
    config = tr.config
    if data_root is not None:
        config = config.replace(data={"data_root": str(data_root)})
    return _evaluate_trained(
        config, tr.algorithm, tr.model, tr.meta_params, tr.buffers, checkpoint=tr.checkpoint.path,
        step=tr.checkpoint.step, shots=list(shots) if shots else [None], n_way=n_way, n_query=n_query,
        episodes=episodes, inner_steps=inner_steps, inner_lr=inner_lr, seed=seed,
    )


def eval_markdown(out: dict[str, Any]) -> str:
    """A Markdown table of an evaluation (one row per setting, mean ± 95% CI)."""
    lines = ["| algo | n_way | k_shot | episodes | inner steps | metric | mean | ± 95% CI |", "|---|---|---|---|---|---|---|---|"]
    for r in out["results"]:
        for m, s in r["metrics"].items():
            if m == "loss" and len(r["metrics"]) > 1:
                continue
            lines.append(
                f"| {r['algo']} | {r['n_way'] or '-'} | {r['k_shot']} | {r['episodes']} | "
                f"{r['steps'] if r['steps'] is not None else '-'} | {m} | {_fmt(s['mean'])} | {_fmt(s['ci95'])} |"
            )
    return "\n".join(lines) + "\n"


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.4g}"
