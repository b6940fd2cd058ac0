"""Data-parallel meta-training on ``torch.distributed``: every rank takes a slice of the meta-batch.

The scheme (see docs/distributed.md):

* Every rank runs the SAME seeded task sampler and draws the FULL meta-batch of ``T`` tasks
  each step, then keeps its contiguous :func:`shard` (sizes differ by at most one task, so ``T``
  need not divide by the world size). The union of the shards is exactly the meta-batch a
  single process would draw. Sampling is duplicated on every rank (cheap for sinusoid and
  Omniglot episodes, whose cost is a few index draws and tensor copies, against a meta-gradient
  through an inner loop); in exchange no sampler state ever has to be split, communicated or
  reassembled, and the sampler's generator state is the same on every rank.
* Each rank computes ``d(sum over its tasks of loss_t / T)`` (``Trainer.step(...,
  denominator=T)``) and an all-reduce SUM of the gradients (:func:`allreduce_sum`, the
  ``reduce_grads`` hook) gives every rank the single-process meta-gradient ``d mean_t loss_t``,
  up to floating-point summation order. All ranks hold bit-identical reduced gradients, start
  from meta-parameters broadcast from rank 0 and step identical optimisers, so they stay
  bit-identical.
* Metrics are all-reduced (task-weighted means); rank 0 alone should log and checkpoint.
* The training state (meta-parameters, optimiser state, sampler generator state, step) does not
  depend on the world size: :func:`save_training_state` / :func:`load_training_state` write and
  read it as one safetensors file with JSON metadata, and a run may resume with any number of
  processes.

Processes are started either by ``torchrun`` (read with :func:`init_from_env`) or by
:func:`launch`, which spawns ``nproc`` local processes with a hard timeout and reports how each
rank ended.
"""

from __future__ import annotations

import datetime
import json
import os
import pickle
import queue as queue_mod
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from metafit.algorithms.base import flat_meta_params
from metafit.data.task import Task, TaskBatch
from metafit.engine import StepResult, Trainer, parameters_of

__all__ = [
    "DistInfo",
    "default_backend",
    "init_from_env",
    "init_process_group",
    "cleanup",
    "shard_sizes",
    "shard_bounds",
    "shard",
    "allreduce_sum",
    "broadcast_",
    "allreduce_metrics",
    "check_in_sync",
    "distributed_step",
    "DistributedTrainer",
    "save_training_state",
    "load_training_state",
    "launch",
    "LaunchError",
    "LaunchTimeout",
    "RankOutcome",
]

R = TypeVar("R")

DEFAULT_TIMEOUT_S = 120.0
STATE_FORMAT = "metafit.training_state/1"


# ---------------------------------------------------------------------------------------------
# Process group
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job.

    Attributes:
        rank: Global rank ``0..world_size-1``.
        world_size: Number of processes.
        local_rank: Rank on this node (selects the GPU with NCCL).
        backend: ``"gloo"``, ``"nccl"`` or ``None`` when no process group was created
            (a plain single-process run).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group is initialised."""
        return self.backend is not None


def default_backend(device: torch.device | str | None = None) -> str:
    """``"nccl"`` for CUDA devices (when NCCL is available), ``"gloo"`` otherwise.

    Args:
        device: The device the meta-parameters live on (default: CUDA if available, else CPU).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def _timeout(timeout: float | datetime.timedelta) -> datetime.timedelta:
    if isinstance(timeout, datetime.timedelta):
        return timeout
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    return datetime.timedelta(seconds=float(timeout))


def _env_int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except KeyError:
        raise RuntimeError(f"environment variable {name} is not set (start the job with torchrun or metafit.distributed.launch)") from None
    except ValueError:
        raise RuntimeError(f"environment variable {name} must be an integer, got {environ[name]!r}") from None


def init_process_group(
    rank: int,
    world_size: int,
    *,
    local_rank: int | None = None,
    backend: str | None = None,
    timeout: float | datetime.timedelta = DEFAULT_TIMEOUT_S,
    init_method: str | None = None,
) -> DistInfo:
    """Initialises the default process group (rendezvous through ``MASTER_ADDR``/``MASTER_PORT``).

    The ``timeout`` bounds the rendezvous and every collective: if a rank dies or stops
    responding, the others raise within ``timeout`` instead of waiting forever (gloo usually
    notices a dead peer at once, from the closed connection).

    Args:
        rank: This process's global rank.
        world_size: Number of processes.
        local_rank: Rank on this node (default ``rank``); with NCCL it selects ``cuda:local_rank``.
        backend: ``"gloo"`` or ``"nccl"`` (default :func:`default_backend`).
        timeout: Seconds (or a timedelta) before a collective or the rendezvous fails.
        init_method: A torch init URL (default ``"env://"``).

    Returns:
        The :class:`DistInfo` of this process.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    local_rank = rank if local_rank is None else local_rank
    backend = backend or default_backend()
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if dist.is_initialized():
        if dist.get_rank() != rank or dist.get_world_size() != world_size:
            raise RuntimeError(
                f"a process group is already initialised with rank {dist.get_rank()}/{dist.get_world_size()}, "
                f"asked for {rank}/{world_size}"
            )
        return DistInfo(rank, world_size, local_rank, dist.get_backend())
    dist.init_process_group(
        backend=backend,
        init_method=init_method or "env://",
        rank=rank,
        world_size=world_size,
        timeout=_timeout(timeout),
    )
    return DistInfo(rank, world_size, local_rank, backend)


def init_from_env(
    *,
    backend: str | None = None,
    timeout: float | datetime.timedelta = DEFAULT_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
) -> DistInfo:
    """Initialises the process group from torchrun's variables, or does nothing without them.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and, through ``env://``, ``MASTER_ADDR`` and
    ``MASTER_PORT``). Without ``WORLD_SIZE`` in the environment this is a plain single-process
    run: no process group is created and ``DistInfo()`` (rank 0 of 1) is returned, so the same
    training script works with and without torchrun.

    Args:
        backend: As :func:`init_process_group`.
        timeout: As :func:`init_process_group`.
        environ: The environment to read (default ``os.environ``).
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return DistInfo()
    world = _env_int(env, "WORLD_SIZE")
    rank = _env_int(env, "RANK")
    local = int(env.get("LOCAL_RANK", rank))
    if world == 1 and not dist.is_initialized():
        return DistInfo(rank, 1, local, None)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in env:
            raise RuntimeError(f"WORLD_SIZE={world} but {name} is not set (start the job with torchrun)")
    if environ is not None:  # env:// reads os.environ
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = env["MASTER_ADDR"], env["MASTER_PORT"]
    return init_process_group(rank, world, local_rank=local, backend=backend, timeout=timeout)


def cleanup() -> None:
    """Destroys the default process group if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ---------------------------------------------------------------------------------------------
# Sharding
# ---------------------------------------------------------------------------------------------
def shard_sizes(n_tasks: int, world_size: int) -> list[int]:
    """Contiguous shard sizes: the first ``n_tasks % world_size`` ranks get one task more."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if n_tasks < 0:
        raise ValueError(f"n_tasks must be >= 0, got {n_tasks}")
    q, r = divmod(n_tasks, world_size)
    return [q + (1 if i < r else 0) for i in range(world_size)]


def shard_bounds(n_tasks: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, stop)`` of ``rank``'s slice of ``n_tasks`` tasks."""
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    sizes = shard_sizes(n_tasks, world_size)
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def shard(batch: TaskBatch | Sequence[Task], rank: int, world_size: int) -> TaskBatch | list[Task]:
    """This rank's contiguous slice of a meta-batch.

    Args:
        batch: The full meta-batch (a :class:`TaskBatch`, or a list of tasks of varying shapes).
        rank: This rank.
        world_size: Number of ranks.

    Returns:
        A :class:`TaskBatch` (for a batch) or a list of tasks, possibly empty when the batch has
        fewer tasks than there are ranks. Concatenating the shards of ranks ``0..world_size-1``
        gives back ``batch``.
    """
    start, stop = shard_bounds(len(batch), rank, world_size)
    if isinstance(batch, TaskBatch):
        return batch.split([start, stop - start, len(batch) - stop])[1]
    return list(batch[start:stop])


# ---------------------------------------------------------------------------------------------
# Collectives
# ---------------------------------------------------------------------------------------------
def _buckets(tensors: Sequence[Tensor]) -> dict[tuple[torch.dtype, torch.device], list[int]]:
    out: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, t in enumerate(tensors):
        out.setdefault((t.dtype, t.device), []).append(i)
    return out


def allreduce_sum(tensors: Sequence[Tensor], group: Any = None) -> None:
    """All-reduces (SUM) ``tensors`` in place, one flat buffer per dtype/device.

    A no-op without a process group or with one rank. This is the ``reduce_grads`` hook of
    :meth:`metafit.engine.Trainer.step`.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return
    with torch.no_grad():
        for idx in _buckets(tensors).values():
            parts = [tensors[i] for i in idx]
            flat = torch.cat([p.reshape(-1) for p in parts])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
            offset = 0
            for p in parts:
                n = p.numel()
                p.copy_(flat[offset : offset + n].view_as(p))
                offset += n


def broadcast_(tensors: Sequence[Tensor], src: int = 0, group: Any = None) -> None:
    """Overwrites ``tensors`` on every rank with rank ``src``'s values (in place)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return
    with torch.no_grad():
        for idx in _buckets(tensors).values():
            parts = [tensors[i] for i in idx]
            flat = torch.cat([p.detach().reshape(-1) for p in parts])
            dist.broadcast(flat, src=src, group=group)
            offset = 0
            for p in parts:
                n = p.numel()
                p.copy_(flat[offset : offset + n].view_as(p))
                offset += n


def allreduce_metrics(
    metrics: Mapping[str, float],
    n_local: int,
    *,
    device: torch.device | str = "cpu",
    group: Any = None,
    same_on_all: Iterable[str] = ("grad_norm",),
) -> dict[str, float]:
    """Global task-weighted means of per-rank metric means.

    Args:
        metrics: This rank's means over its ``n_local`` tasks (every rank must have the same keys).
        n_local: Number of tasks behind those means.
        device: Where to build the buffer (the model's device with NCCL).
        group: Process group (default: the default group).
        same_on_all: Keys already identical on every rank (copied, not averaged).

    Returns:
        ``{key: mean over all tasks of all ranks}``, with ``n_tasks`` the global task count.
    """
    fixed = set(same_on_all) | {"n_tasks"}
    keys = sorted(k for k in metrics if k not in fixed)
    out = {k: float(v) for k, v in metrics.items() if k in fixed and k != "n_tasks"}
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        out.update({k: float(metrics[k]) for k in keys})
        out["n_tasks"] = float(n_local)
        return out
    buf = torch.tensor([float(metrics[k]) * n_local for k in keys] + [float(n_local)], dtype=torch.float64, device=device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    total = float(buf[-1])
    out.update({k: float(buf[i]) / total for i, k in enumerate(keys)})
    out["n_tasks"] = total
    return out


def check_in_sync(tensors: Sequence[Tensor], group: Any = None) -> float:
    """Max abs difference of ``tensors`` between this rank and rank 0, maximised over ranks.

    0.0 when every rank holds identical values (a debugging check; it costs a broadcast and
    an all-reduce).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return 0.0
    ref = [t.detach().clone() for t in tensors]
    broadcast_(ref, src=0, group=group)
    diff = max((float((a.detach() - b).abs().max()) for a, b in zip(tensors, ref) if a.numel()), default=0.0)
    dev = tensors[0].device if tensors else torch.device("cpu")
    buf = torch.tensor([diff], dtype=torch.float64, device=dev)
    dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=group)
    return float(buf[0])


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def distributed_step(
    trainer: Trainer,
    batch: TaskBatch | Sequence[Task],
    *,
    rank: int | None = None,
    world_size: int | None = None,
    group: Any = None,
) -> StepResult:
    """One data-parallel meta-step on the FULL meta-batch ``batch`` (every rank passes the same).

    Each rank keeps its :func:`shard`, backpropagates ``sum(loss over its tasks) / len(batch)``,
    all-reduces the gradients (SUM) and steps its optimiser: the update equals the single-process
    ``trainer.step(batch)`` up to summation order.

    Args:
        trainer: This rank's trainer (meta-parameters identical on every rank).
        batch: The full meta-batch of this step, identical on every rank.
        rank: This rank (default: from the process group, 0 without one).
        world_size: Number of ranks (default: from the process group, 1 without one).
        group: Process group of the collectives.

    Returns:
        The step result with metrics averaged over ALL tasks of the meta-batch.

    Raises:
        ValueError: if the meta-batch has fewer tasks than there are ranks.
    """
    r0, w0 = _world()
    rank = r0 if rank is None else rank
    world_size = w0 if world_size is None else world_size
    n = len(batch)
    if n < world_size:
        raise ValueError(
            f"the meta-batch has {n} task(s) for {world_size} ranks: every rank needs at least one task "
            "(use fewer processes or a larger meta-batch)"
        )
    local = shard(batch, rank, world_size)
    result = trainer.step(local, denominator=n, reduce_grads=lambda gs: allreduce_sum(gs, group))
    device = parameters_of(trainer.meta_params)[0].device  # type: ignore[arg-type]
    result.metrics = allreduce_metrics(result.metrics, len(local), device=device, group=group)
    return result


@dataclass
class DistributedTrainer:
    """A :class:`~metafit.engine.Trainer` whose every step is split across the ranks of a group.

    On construction the meta-parameters are broadcast from rank 0, so every rank starts from
    the same point whatever its own initialisation. With no process group (or one rank) it
    behaves exactly like the wrapped trainer.

    Args:
        trainer: This rank's trainer. Use an explicit ``path`` (``"loop"`` or ``"vmap"``):
            with ``"auto"`` each rank times the two paths on its own shard and ranks may choose
            differently (still correct, but not bit-identical to one process).
        group: Process group of the collectives (default: the default group).

    Example:
        >>> info = init_from_env()                        # torchrun sets RANK/WORLD_SIZE/...
        >>> sampler = SinusoidTasks(k_shot=5, tasks_per_batch=25, generator=generator(0))
        >>> dt = DistributedTrainer(Trainer(MAML(criterion="mse"), MLP(), path="loop"))
        >>> for batch in itertools.islice(sampler, 1000):   # same seed on every rank
        ...     r = dt.step(batch)
        ...     if dt.is_main: log(r)
    """

    trainer: Trainer
    group: Any = None
    rank: int = field(init=False, default=0)
    world_size: int = field(init=False, default=1)

    def __post_init__(self) -> None:
        self.rank, self.world_size = _world()
        if self.group is not None:
            self.rank, self.world_size = dist.get_rank(self.group), dist.get_world_size(self.group)
        self.broadcast_parameters()

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the rank that should log and checkpoint)."""
        return self.rank == 0

    @property
    def meta_params(self) -> Any:
        """The wrapped trainer's meta-parameters."""
        return self.trainer.meta_params

    @property
    def step_count(self) -> int:
        """Completed meta-steps."""
        return self.trainer.step_count

    def broadcast_parameters(self, src: int = 0) -> None:
        """Overwrites every rank's meta-parameters with rank ``src``'s."""
        broadcast_(parameters_of(self.trainer.meta_params), src=src, group=self.group)  # type: ignore[arg-type]

    def in_sync(self) -> float:
        """Max abs difference of the meta-parameters across ranks (0.0 when in sync)."""
        return check_in_sync(parameters_of(self.trainer.meta_params), group=self.group)  # type: ignore[arg-type]

    def step(self, batch: TaskBatch | Sequence[Task]) -> StepResult:
        """One meta-step on the full meta-batch (see :func:`distributed_step`)."""
        return distributed_step(self.trainer, batch, rank=self.rank, world_size=self.world_size, group=self.group)

    def fit(
        self,
        batches: Iterable[TaskBatch | Sequence[Task]],
        steps: int,
        *,
        callback: Callable[[StepResult], None] | None = None,
        callback_on_all_ranks: bool = False,
    ) -> list[StepResult]:
        """Runs ``steps`` meta-steps on successive FULL meta-batches from ``batches``.

        Args:
            batches: The task sampler, seeded identically on every rank.
            steps: Number of steps.
            callback: Called after each step with globally averaged metrics (logging,
                checkpoints), on rank 0 only unless ``callback_on_all_ranks``.
            callback_on_all_ranks: Call ``callback`` on every rank.

        Returns:
            The step results.
        """
        results = []
        it = iter(batches)
        for _ in range(steps):
            r = self.step(next(it))
            results.append(r)
            if callback is not None and (self.is_main or callback_on_all_ranks):
                callback(r)
        return results


# ---------------------------------------------------------------------------------------------
# World-size independent training state (safetensors + JSON, no pickle)
# ---------------------------------------------------------------------------------------------
def _jsonable(x: Any) -> Any:
    json.dumps(x)
    return x


def save_training_state(
    path: str | Path,
    trainer: Trainer,
    *,
    generator: torch.Generator | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Writes meta-parameters, optimiser state, sampler generator state and step to one file.

    The file is a safetensors file (tensors) whose metadata holds JSON (step, path, optimiser
    hyperparameters, ``extra``); nothing is pickled. It is written to a temporary name and
    renamed, so a crash mid-write leaves the previous file intact. Nothing in it depends on the
    number of processes that produced it. Call it on rank 0 only.

    Args:
        path: Destination (``.safetensors``).
        trainer: The trainer whose state to save.
        generator: The task sampler's generator (all ranks share its state).
        extra: JSON-serialisable metadata (config, metrics...).

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    assert trainer.meta_params is not None and isinstance(trainer.optimizer, torch.optim.Optimizer)
    tensors: dict[str, Tensor] = {
        f"meta/{k}": v.detach().cpu().contiguous().clone() for k, v in flat_meta_params(trainer.meta_params).items()
    }
    osd = trainer.optimizer.state_dict()
    scalar_state: dict[str, dict[str, Any]] = {}
    for pid, st in osd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim/{pid}/{key}"] = val.detach().cpu().contiguous().clone()
            else:
                scalar_state.setdefault(str(pid), {})[key] = _jsonable(val)
    if generator is not None:
        tensors["rng/sampler"] = generator.get_state().clone()
    meta: dict[str, Any] = {
        "format": STATE_FORMAT,
        "step": trainer.step_count,
        "path": trainer.path,
        "optimizer_class": type(trainer.optimizer).__name__,
        "param_groups": _jsonable(osd["param_groups"]),
        "optim_scalar_state": scalar_state,
        "scheduler": _jsonable(trainer.scheduler.state_dict()) if trainer.scheduler is not None else None,
        "extra": _jsonable(dict(extra or {})),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"metafit": json.dumps(meta)})
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_training_state(
    path: str | Path,
    trainer: Trainer,
    *,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Restores what :func:`save_training_state` wrote, in place, with any number of processes.

    Every rank loads the same file, so every rank ends up with identical state.

    Args:
        path: The file.
        trainer: A trainer built like the saved one (same model, algorithm, optimiser class).
        generator: The sampler's generator, whose state is restored if the file has one.

    Returns:
        The JSON metadata (``step``, ``extra``, ...).

    Raises:
        ValueError: on a file of another format or parameters that do not match.
    """
    from safetensors import safe_open

    assert trainer.meta_params is not None and isinstance(trainer.optimizer, torch.optim.Optimizer)
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("metafit")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if raw is None:
        raise ValueError(f"{path} is not a metafit training state (no 'metafit' metadata)")
    meta = json.loads(raw)
    if meta.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: unsupported state format {meta.get('format')!r} (expected {STATE_FORMAT})")
    flat = flat_meta_params(trainer.meta_params)
    saved = {k[len("meta/"):]: v for k, v in tensors.items() if k.startswith("meta/")}
    if saved.keys() != flat.keys():
        raise ValueError(f"{path}: meta-parameter names differ: {sorted(set(saved) ^ set(flat))[:5]}")
    with torch.no_grad():
        for k, v in flat.items():
            if saved[k].shape != v.shape:
                raise ValueError(f"{path}: {k} has shape {tuple(saved[k].shape)}, expected {tuple(v.shape)}")
            v.copy_(saved[k])
    if meta["optimizer_class"] != type(trainer.optimizer).__name__:
        raise ValueError(f"{path}: saved optimiser {meta['optimizer_class']}, trainer has {type(trainer.optimizer).__name__}")
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, pid, key = k.split("/", 2)
            state.setdefault(int(pid), {})[key] = v
    for pid, st in meta["optim_scalar_state"].items():
        state.setdefault(int(pid), {}).update(st)
    trainer.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if meta.get("scheduler") is not None and trainer.scheduler is not None:
        trainer.scheduler.load_state_dict(meta["scheduler"])
    if generator is not None and "rng/sampler" in tensors:
        generator.set_state(tensors["rng/sampler"])
    trainer.step_count = int(meta["step"])
    if meta.get("path") in ("vmap", "loop") and trainer.path == "auto":
        trainer.path = meta["path"]
    return meta


# ---------------------------------------------------------------------------------------------
# Local launcher
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RankOutcome:
    """How one rank of a :func:`launch` ended.

    Attributes:
        rank: The rank.
        exitcode: Process exit code (negative: killed by that signal; ``None``: still running
            when the launcher gave up).
        error: The traceback of an exception raised by the rank's function, if any.
        killed_by_launcher: The launcher terminated it (timeout, or it outlived a failed peer
            by more than the grace period).
    """

    rank: int
    exitcode: int | None
    error: str | None = None
    killed_by_launcher: bool = False

    def __str__(self) -> str:
        how = "killed by the launcher" if self.killed_by_launcher else f"exit code {self.exitcode}"
        head = f"rank {self.rank}: {how}"
        if self.error:
            last = self.error.strip().splitlines()[-1]
            head += f" ({last})"
        return head


class LaunchError(RuntimeError):
    """A rank of a :func:`launch` failed; ``outcomes`` says how each rank ended."""

    def __init__(self, message: str, outcomes: list[RankOutcome]) -> None:
        detail = "; ".join(str(o) for o in outcomes)
        super().__init__(f"{message}: {detail}")
        self.outcomes = outcomes


class LaunchTimeout(LaunchError, TimeoutError):
    """The job did not finish within the launcher's timeout; every rank was killed."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _worker(
    rank: int,
    nproc: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    env: dict[str, str],
    threads: int,
    backend: str | None,
    pg_timeout: float,
    results: Any,
) -> None:
    os.environ.update(env)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc)})
    torch.set_num_threads(threads)
    try:
        init_process_group(rank, nproc, local_rank=rank, backend=backend, timeout=pg_timeout)
        out = fn(*args)
        payload = pickle.dumps(out)  # by value (IPC only; never written to disk)
        results.put(("ok", rank, payload))
    except BaseException:
        results.put(("error", rank, traceback.format_exc()))
        results.close()
        results.join_thread()
        os._exit(1)  # skip process-group teardown, which may block on a dead peer
    try:
        cleanup()
    finally:
        results.close()
        results.join_thread()
    # The result is delivered and the group destroyed. Leave without the interpreter's teardown:
    # C++ static destructors of torch's communication threads once aborted a finished rank here
    # ("terminate called without an active exception", exit -6; seen once in CI).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch(
    fn: Callable[..., R],
    nproc: int,
    *args: Any,
    timeout: float = 600.0,
    pg_timeout: float = DEFAULT_TIMEOUT_S,
    backend: str | None = None,
    threads: int | None = None,
    grace: float = 10.0,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
) -> list[R]:
    """Runs ``fn(*args)`` in ``nproc`` fresh local processes that form one process group.

    Each process is started with the ``spawn`` method, gets ``RANK``/``LOCAL_RANK``/
    ``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` in its environment and ``threads`` torch
    threads, initialises the process group (gloo on CPU, nccl on CUDA unless ``backend`` says
    otherwise) and calls ``fn(*args)``, which reads its rank from ``torch.distributed`` or
    :func:`init_from_env`.

    If a rank fails (exception, non-zero exit, killed), the launcher waits up to ``grace``
    seconds for the others to fail on their own (their collectives error out when a peer is
    gone, at the latest after ``pg_timeout``), then kills any that remain and raises
    :class:`LaunchError`. After ``timeout`` seconds in all, it kills every rank and raises
    :class:`LaunchTimeout`: the launcher never hangs.

    Args:
        fn: A picklable (module-level) function; its return value must be picklable.
        nproc: Number of processes.
        *args: Arguments of ``fn`` (picklable).
        timeout: Hard wall-clock limit for the whole job, in seconds.
        pg_timeout: Process-group timeout (collectives and rendezvous), in seconds.
        backend: ``"gloo"``/``"nccl"`` (default :func:`default_backend`).
        threads: Torch threads per process (default ``max(1, cpu_count // nproc)``).
        grace: Seconds the surviving ranks get to exit after a peer failed.
        master_addr: Rendezvous address.
        master_port: Rendezvous port (default: a free port).

    Returns:
        ``[fn's return value on rank 0, on rank 1, ...]``.

    Raises:
        LaunchError: if any rank failed (``.outcomes`` describes every rank).
        LaunchTimeout: if the job ran past ``timeout``.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    env = {
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port or free_port(master_addr)),
        "OMP_NUM_THREADS": str(threads),
    }
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(r, nproc, fn, args, env, threads, backend, pg_timeout, results),
            name=f"metafit-rank{r}",
        )
        for r in range(nproc)
    ]
    payloads: dict[int, bytes] = {}
    errors: dict[int, str] = {}
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    failed_at: float | None = None
    timed_out = False

    def drain(block_s: float) -> None:
        try:
            kind, rank, data = results.get(timeout=block_s)
        except queue_mod.Empty:
            return
        (payloads if kind == "ok" else errors)[rank] = data
        while True:
            try:
                kind, rank, data = results.get_nowait()
            except queue_mod.Empty:
                return
            (payloads if kind == "ok" else errors)[rank] = data

    try:
        for p in procs:
            p.start()
        while True:
            drain(0.05)
            codes = [p.exitcode for p in procs]
            if all(c == 0 for c in codes) and len(payloads) == nproc:
                break
            if failed_at is None and (errors or any(c not in (None, 0) for c in codes)):
                failed_at = time.monotonic()
            if failed_at is not None and (all(c is not None for c in codes) or time.monotonic() > failed_at + grace):
                break
            if all(c == 0 for c in codes):  # exited cleanly; results may still be in flight
                drain(1.0)
                if len(payloads) == nproc or time.monotonic() > deadline:
                    break
                continue
            if time.monotonic() > deadline:
                timed_out = True
                break
    finally:
        for r, p in enumerate(procs):
            if p.is_alive():
                killed.add(r)
                p.terminate()
        for r, p in enumerate(procs):
            if r in killed:
                p.join(2.0)
                if p.is_alive():
                    p.kill()
            p.join(2.0)
        drain(0.0)
        results.close()
    outcomes = [
        RankOutcome(r, p.exitcode if r not in killed else None, errors.get(r), r in killed) for r, p in enumerate(procs)
    ]
    if timed_out:
        raise LaunchTimeout(f"the job did not finish within {timeout:g} s", outcomes)
    if failed_at is not None or len(payloads) < nproc:
        raise LaunchError("a rank failed", outcomes)
    return [pickle.loads(payloads[r]) for r in range(nproc)]  # noqa: S301 - our own children's bytes
