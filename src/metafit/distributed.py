"""Data-parallel meta-training on ``torch.distributed``: every rank takes a slice of the meta-batch.

The scheme (see docs/distributed.md):

* Every rank runs the SAME seeded task sampler and draws the FULL meta-batch of ``T`` tasks
  each step, then keeps its contiguous :func:`shard` (sizes differ by at most one task, so ``T``
  need not divide by the world size). The union of the shards is exactly the meta-batch a
  single process would draw; no sampler state is ever split or communicated.
* Each rank computes ``d(sum over its tasks of loss_t / T)`` and an all-reduce SUM of the
  gradients gives every rank the single-process meta-gradient ``d mean_t loss_t``, up to
  floating-point summation order. All ranks start from meta-parameters broadcast from rank 0
  and step identical optimisers, so they stay bit-identical.
* This is :class:`DistributedReduce`, a :class:`~metafit.engine.Callback` of the one training
  loop (:meth:`metafit.engine.Trainer.fit`): it shards each batch (``on_batch``) and all-reduces
  gradients and metrics (``on_gradients``) before the divergence guard, so every rank sees the
  same values and all stop together.
* Checkpoints are the ordinary ones (:mod:`metafit.checkpoint`), written by rank 0; nothing in
  them depends on the world size, so a run may resume with any number of processes.

Processes are started by torch's own launcher: ``torchrun`` / ``python -m torch.distributed.run``
(``metafit train --nproc N`` runs exactly that), or :func:`launch` (``elastic_launch``) from
Python. A killed rank fails the job at once (the elastic agent sees it exit and stops the
others); a hung rank makes the others' collectives raise after the process-group timeout.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from metafit.data.task import Task, TaskBatch
from metafit.engine import Callback, DivergenceGuard, Trainer

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
    "DistributedReduce",
    "distributed_callbacks",
    "launch",
    "LaunchError",
]

R = TypeVar("R")

DEFAULT_TIMEOUT_S = 300.0


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
        raise RuntimeError(
            f"environment variable {name} is not set (start the job with torchrun or metafit.distributed.launch)"
        ) from None
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
    buf = torch.tensor(
        [float(metrics[k]) * n_local for k in keys] + [float(n_local)], dtype=torch.float64, device=device
    )
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
# Training: a callback of the one loop
# ---------------------------------------------------------------------------------------------
class DistributedReduce(Callback):
    """Shards each meta-batch across the ranks and all-reduces gradients and metrics.

    Put it BEFORE :class:`~metafit.engine.DivergenceGuard` in ``Trainer(callbacks=...)`` (see
    :func:`distributed_callbacks`). Without a process group, or with one rank, it changes nothing.

    Args:
        group: Process group of the collectives (default: the default group).

    Raises:
        ValueError: from ``on_batch`` if a meta-batch has fewer tasks than there are ranks.
    """

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.rank, self.world_size = _world()
        if group is not None:
            self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self._n_local = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        broadcast_(trainer.parameters, src=0, group=self.group)

    def on_batch(self, trainer: Trainer, batch: Any) -> Any:
        n = len(batch)
        if n < self.world_size:
            raise ValueError(
                f"the meta-batch has {n} task(s) for {self.world_size} ranks: every rank needs at least one task "
                "(use fewer processes or more tasks per batch)"
            )
        local = shard(batch, self.rank, self.world_size)
        self._n_local = len(local)
        return local

    def on_gradients(self, trainer: Trainer, grads: list[Tensor], metrics: dict[str, float]) -> None:
        allreduce_sum(grads, self.group)
        device = grads[0].device if grads else torch.device("cpu")
        reduced = allreduce_metrics(
            metrics, self._n_local or int(metrics.get("n_tasks", 0)), device=device, group=self.group
        )
        metrics.clear()
        metrics.update(reduced)


def distributed_callbacks(group: Any = None) -> list[Callback]:
    """``[DistributedReduce(group), DivergenceGuard()]``: the trainer callbacks of a rank."""
    return [DistributedReduce(group), DivergenceGuard()]


# ---------------------------------------------------------------------------------------------
# Launching from Python: torch's elastic launcher
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RankFailure:
    """How one rank of a :func:`launch` failed: its exit code (negative: killed by that signal)
    and the error message it reported (empty when it died without one)."""

    rank: int
    exitcode: int
    message: str

    def __str__(self) -> str:
        return f"rank {self.rank}: exit code {self.exitcode}" + (f" ({self.message})" if self.message else "")


class LaunchError(RuntimeError):
    """A rank of a :func:`launch` failed; ``failures`` says which and how."""

    def __init__(self, failures: list[RankFailure]) -> None:
        super().__init__("a rank failed: " + "; ".join(str(f) for f in failures))
        self.failures = failures


def _entry(fn: Callable[..., R], threads: int, backend: str | None, pg_timeout: float, args: tuple[Any, ...]) -> R:
    torch.set_num_threads(threads)
    init_from_env(backend=backend, timeout=pg_timeout)
    try:
        return fn(*args)
    finally:
        cleanup()


def launch(
    fn: Callable[..., R],
    nproc: int,
    *args: Any,
    pg_timeout: float = DEFAULT_TIMEOUT_S,
    backend: str | None = None,
    threads: int | None = None,
) -> list[R]:
    """Runs ``fn(*args)`` in ``nproc`` local processes forming one process group (``elastic_launch``).

    Each process gets torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``), ``threads`` torch threads and an initialised process group
    (gloo on CPU, nccl on CUDA unless ``backend`` says otherwise) whose collectives time out after
    ``pg_timeout`` seconds. The job is not restarted: if a rank fails, the others are stopped.

    Args:
        fn: A picklable (module-level) function; its return value must be picklable.
        nproc: Number of processes.
        *args: Arguments of ``fn`` (picklable).
        pg_timeout: Seconds before a collective (or the rendezvous) fails: how long a hung rank
            can block the others.
        backend: ``"gloo"``/``"nccl"`` (default :func:`default_backend`).
        threads: Torch threads per process (default ``max(1, cpu_count // nproc)``).

    Returns:
        ``[fn's return value on rank 0, on rank 1, ...]``.

    Raises:
        LaunchError: if any rank failed (``.failures`` names them, with exit codes and messages).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be an int >= 1, got {nproc!r}")
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
        rdzv_configs={"timeout": int(pg_timeout) + 30},
    )
    try:
        out = elastic_launch(config, _entry)(fn, threads, backend, pg_timeout, args)
    except ChildFailedError as e:
        failures = [
            RankFailure(rank, f.exitcode, (f.message or "").strip() if isinstance(f.message, str) else str(f.message))
            for rank, f in sorted(e.failures.items())
        ]
        raise LaunchError(failures) from None
    return [out[r] for r in range(nproc)]
