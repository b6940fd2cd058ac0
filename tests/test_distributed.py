"""Distributed meta-training: sharding maths, equality with one process, failures, resume.

Multi-process tests run 2 ranks on loopback (gloo, spawn) through ``metafit.distributed.launch``
(torch's ``elastic_launch``); each launch costs a few seconds of process start-up, so several
checks share one launch. Checkpoints are the ordinary ``metafit.checkpoint`` ones.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from metafit import MAML, ProtoNet, SinusoidTasks, Trainer, generator, seeded
from metafit.checkpoint import load_checkpoint, restore_trainer, save_checkpoint, trainer_state
from metafit.data.task import TaskBatch
from metafit.distributed import (
    DistInfo,
    DistributedReduce,
    LaunchError,
    distributed_callbacks,
    init_from_env,
    launch,
    shard,
    shard_sizes,
)
from metafit.engine import Callback, meta_backward, parameters_of
from metafit.models import MLP, Conv4
from tests.conftest import TinyConv

D = torch.float64
TOL = 1e-6
KINDS = ("maml_sinusoid", "maml_conv", "protonet_conv")


# ---------------------------------------------------------------------------------------------
# Set-ups shared by the parent (reference) and the ranks (module level: picklable for spawn)
# ---------------------------------------------------------------------------------------------
class ImageTasks:
    """Seeded stream of synthetic image classification meta-batches (balanced labels)."""

    def __init__(self, g: torch.Generator, tasks: int, n_way: int = 3, k: int = 1, q: int = 2, side: int = 16) -> None:
        self.g, self.tasks, self.n_way, self.k, self.q, self.side = g, tasks, n_way, k, q, side

    def __iter__(self) -> Iterator[TaskBatch]:
        t, n, k, q, s = self.tasks, self.n_way, self.k, self.q, self.side
        while True:
            sx = torch.randn(t, n * k, 1, s, s, generator=self.g, dtype=D)
            qx = torch.randn(t, n * q, 1, s, s, generator=self.g, dtype=D)
            # a class-dependent offset makes the tasks learnable (non-trivial gradients)
            sy = torch.arange(n).repeat_interleave(k).expand(t, -1).contiguous()
            qy = torch.arange(n).repeat_interleave(q).expand(t, -1).contiguous()
            sx = sx + sy[:, :, None, None, None].to(D)
            qx = qx + qy[:, :, None, None, None].to(D)
            yield TaskBatch(sx, sy, qx, qy, n_way=n)


def make(kind: str, seed: int = 0, *, ranks: bool = False) -> tuple[Trainer, Any, torch.Generator]:
    """(trainer, sampler, sampler generator) of one test set-up, float64, 5 tasks per batch.

    With ``ranks`` the trainer carries the distributed callbacks (shard + all-reduce + guard).
    """
    g = generator(seed + 1)
    if kind == "maml_sinusoid":
        model = seeded(seed, lambda: MLP(1, (16, 16), 1)).to(D)
        algo: Any = MAML(inner_lr=0.01, inner_steps=1, first_order=False, criterion="mse")
        sampler: Any = SinusoidTasks(k_shot=5, tasks_per_batch=5, generator=g, dtype=D)
    elif kind == "maml_conv":
        model = seeded(seed, lambda: TinyConv(norm="task", n_way=3)).to(D)
        algo = MAML(inner_lr=0.1, inner_steps=1, first_order=False)
        sampler = ImageTasks(g, tasks=5, side=8)
    elif kind == "protonet_conv":
        model = seeded(seed, lambda: Conv4(1, None, width=4, image_size=16)).to(D)
        algo = ProtoNet()
        sampler = ImageTasks(g, tasks=5, side=16)
    else:
        raise ValueError(kind)
    trainer = Trainer(
        algo,
        model,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
        path="loop",
        callbacks=distributed_callbacks() if ranks else None,
    )
    return trainer, sampler, g


def save_state(path: Path, trainer: Trainer, g: torch.Generator, **extra: Any) -> Path:
    tensors, meta = trainer_state(trainer, generator=g)
    return save_checkpoint(path, trainer.step_count, tensors, {**meta, **extra})


def load_state(path: Path, trainer: Trainer, g: torch.Generator) -> dict[str, Any]:
    ck = load_checkpoint(path)
    restore_trainer(ck, trainer, generator=g)
    return ck.meta


def in_sync(trainer: Trainer) -> float:
    from metafit.distributed import check_in_sync

    return check_in_sync(trainer.parameters)


def flat(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {f"{g}/{k}": v.detach().clone() for g, d in trainer.meta_params.items() for k, v in d.items()}


def reference(kind: str, steps: int) -> tuple[dict[str, torch.Tensor], list[float]]:
    trainer, sampler, _ = make(kind)
    it = iter(sampler)
    losses = [trainer.step(next(it)).metrics["loss"] for _ in range(steps)]
    return flat(trainer), losses


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ---------------------------------------------------------------------------------------------
# Rank functions
# ---------------------------------------------------------------------------------------------
def _train_kinds(kinds: tuple[str, ...], steps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in kinds:
        trainer, sampler, _ = make(kind, ranks=True)
        if torch.distributed.get_rank() == 1:  # a different start: the broadcast must fix it
            with torch.no_grad():
                for p in parameters_of(trainer.meta_params):
                    p.add_(1.0)
        results = trainer.fit(sampler, steps)
        out[kind] = {
            "params": flat(trainer),
            "losses": [r.metrics["loss"] for r in results],
            "n_tasks": [r.metrics["n_tasks"] for r in results],
            "sync": in_sync(trainer),
        }
    return out


class _Crash(Callback):
    """Rank 1 kills itself (SIGKILL: no exception, no clean-up) before step ``at``; rank 0 saves
    a checkpoint after every step."""

    def __init__(self, folder: str, at: int, g: torch.Generator, how: str) -> None:
        self.folder, self.at, self.g, self.how = Path(folder), at, g, how

    def on_batch(self, trainer: Trainer, batch: Any) -> Any:
        if torch.distributed.get_rank() == 1 and trainer.step_count + 1 == self.at:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            (self.folder / "hang_started").write_text(repr(time.time()))
            time.sleep(600)  # alive but unresponsive (a hung rank): only the timeout can tell
        return batch

    def on_step_end(self, trainer: Trainer, result: Any) -> None:
        if torch.distributed.get_rank() == 0:
            save_state(self.folder, trainer, self.g, note="last good step")


def _failing_run(folder: str, at: int, steps: int, how: str) -> int:
    trainer, sampler, g = make("maml_sinusoid", ranks=True)
    trainer.fit(sampler, steps, callbacks=[_Crash(folder, at, g, how)])
    return trainer.step_count


def _resume_both_ways(state_from_1proc: str, state_out: str, steps: int) -> dict[str, Any]:
    # (i) a state written by ONE process, resumed by two ranks
    trainer, sampler, g = make("maml_sinusoid", ranks=True)
    load_state(Path(state_from_1proc), trainer, g)
    trainer.fit(sampler, trainer.step_count + steps)
    resumed = flat(trainer)
    # (ii) two ranks train from scratch and rank 0 writes the state for a 1-process resume
    trainer, sampler, g = make("maml_sinusoid", ranks=True)
    trainer.fit(sampler, steps)
    if torch.distributed.get_rank() == 0:
        save_state(Path(state_out), trainer, g)
    return {"resumed": resumed, "step": trainer.step_count}


def _raise_on_rank1() -> int:
    if torch.distributed.get_rank() == 1:
        raise ValueError("boom on rank 1")
    return torch.distributed.get_rank()


# ---------------------------------------------------------------------------------------------
# Single-process tests
# ---------------------------------------------------------------------------------------------
def test_shard_sizes_uneven_and_contiguous() -> None:
    assert shard_sizes(5, 2) == [3, 2]
    assert shard_sizes(7, 3) == [3, 2, 2]
    assert shard_sizes(4, 4) == [1, 1, 1, 1]
    assert shard_sizes(2, 3) == [1, 1, 0]
    batch = SinusoidTasks(k_shot=3, generator=generator(0)).sample_batch(7)
    parts = [shard(batch, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [3, 2, 2]
    assert torch.equal(torch.cat([p.query_y for p in parts]), batch.query_y)
    as_list = list(batch)
    lparts = [shard(as_list, r, 3) for r in range(3)]
    assert [t for p in lparts for t in p] == as_list
    with pytest.raises(ValueError):
        shard(batch, 3, 3)


@pytest.mark.parametrize("world", [2, 3, 5])
def test_shard_gradients_sum_to_the_full_meta_gradient(world: int) -> None:
    """The all-reduce emulated in one process: sum over shards of d(sum_t loss_t / T) = d(mean)."""
    trainer, sampler, _ = make("maml_sinusoid")
    batch = next(iter(sampler))
    algo, model, mp = trainer.algorithm, trainer.model, trainer.meta_params
    params = parameters_of(mp)
    meta_backward(algo, model, mp, {}, batch)
    full = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    for r in range(world):
        meta_backward(algo, model, mp, {}, shard(batch, r, world), denominator=len(batch))
    for a, b in zip(full, params):
        assert torch.allclose(a, b.grad, atol=1e-12, rtol=1e-10)


def test_without_process_group_it_is_the_plain_trainer() -> None:
    ref, ref_losses = reference("maml_sinusoid", 2)
    trainer, sampler, _ = make("maml_sinusoid", ranks=True)
    reduce = trainer.callbacks[0]
    assert isinstance(reduce, DistributedReduce) and (reduce.rank, reduce.world_size) == (0, 1)
    losses = [r.metrics["loss"] for r in trainer.fit(sampler, 2)]
    assert max_diff(flat(trainer), ref) == 0.0
    assert losses == ref_losses


def test_fewer_tasks_than_ranks_is_a_clear_error() -> None:
    trainer, _, _ = make("maml_sinusoid")
    reduce = DistributedReduce()
    reduce.world_size = 2  # as on one of two ranks
    batch = SinusoidTasks(k_shot=5, generator=generator(0), dtype=D).sample_batch(1)
    with pytest.raises(ValueError, match="1 task\\(s\\) for 2 ranks: every rank needs at least one task"):
        reduce.on_batch(trainer, batch)


def test_init_from_env_without_torchrun_is_single_process() -> None:
    assert init_from_env(environ={}) == DistInfo()
    info = init_from_env(environ={"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"})
    assert (info.world_size, info.distributed, info.is_main) == (1, False, True)
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        init_from_env(environ={"WORLD_SIZE": "2", "RANK": "0"})
    with pytest.raises(RuntimeError, match="RANK"):
        init_from_env(environ={"WORLD_SIZE": "2"})


def test_training_state_roundtrip_is_exact_and_pickle_free(tmp_path: Path) -> None:
    trainer, sampler, g = make("maml_conv")
    it = iter(sampler)
    trainer.step(next(it))
    path = save_state(tmp_path, trainer, g, lr=1e-2)
    st = path.with_suffix(".safetensors").read_bytes()
    assert st[8:9] == b"{"  # safetensors: 8-byte header length, then JSON (no pickle anywhere)
    expected_next = next(it)
    trainer.step(expected_next)
    want = flat(trainer)

    t2, s2, g2 = make("maml_conv")
    meta = load_state(path, t2, g2)
    assert meta["step"] == 1 and meta["lr"] == 1e-2 and t2.step_count == 1
    batch = next(iter(s2))
    assert torch.equal(batch.support_x, expected_next.support_x)  # sampler generator restored
    t2.step(batch)
    assert max_diff(flat(t2), want) == 0.0
    assert t2.step_count == 2

    other = Trainer(MAML(), MLP(1, (3,), 1), path="loop")
    with pytest.raises(ValueError, match="different architecture: missing model/"):
        load_state(path, other, generator(0))


# ---------------------------------------------------------------------------------------------
# Multi-process tests (2 ranks, gloo on loopback)
# ---------------------------------------------------------------------------------------------
def test_two_ranks_equal_one_process_second_order_maml_and_protonet() -> None:
    """3 steps, 5 tasks per meta-batch (uneven shards 3 + 2), float64, max |diff| <= 1e-6."""
    steps = 3
    out = launch(_train_kinds, 2, KINDS, steps, pg_timeout=30, threads=1)
    for kind in KINDS:
        ref, ref_losses = reference(kind, steps)
        r0, r1 = out[0][kind], out[1][kind]
        assert r0["sync"] == 0.0 and max_diff(r0["params"], r1["params"]) == 0.0, kind  # bit-identical ranks
        diff = max_diff(r0["params"], ref)
        assert diff <= TOL, (kind, diff)
        assert max_diff(r0["params"], flat(make(kind)[0])) > 1e-3, kind  # it did train
        assert r0["n_tasks"] == [5.0] * steps
        assert r0["losses"] == pytest.approx(ref_losses, rel=1e-9, abs=1e-12), kind  # all-reduced metrics


def test_a_killed_rank_fails_the_job_quickly_and_the_last_checkpoint_resumes(tmp_path: Path) -> None:
    """Rank 1 is SIGKILLed before step 3: the job fails at once (the elastic agent stops rank 0),
    the checkpoint of step 2 is intact, and resuming from it reproduces the full run."""
    steps, crash = 5, 3
    t0 = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch(_failing_run, 2, str(tmp_path), crash, steps, "kill", pg_timeout=15, threads=1)
    elapsed = time.monotonic() - t0
    assert any(f.rank == 1 and f.exitcode == -signal.SIGKILL for f in info.value.failures), info.value
    assert elapsed < 60, elapsed

    trainer, sampler, g = make("maml_sinusoid")
    meta = load_state(tmp_path, trainer, g)
    assert meta["step"] == crash - 1 and meta["note"] == "last good step"
    assert not list(tmp_path.glob(".*tmp*"))
    trainer.fit(sampler, steps)
    ref, _ = reference("maml_sinusoid", steps)
    assert max_diff(flat(trainer), ref) <= TOL


def test_a_hung_rank_makes_the_job_fail_within_the_process_group_timeout(tmp_path: Path) -> None:
    """A rank that stops answering (no closed connection) is caught by the process-group timeout:
    rank 0's collective raises ~pg_timeout s after the hang began and the agent stops the hung rank.

    The timeout also bounds the start-up skew of the two ranks (rendezvous and the first step's
    collective), so it is not set so short that a loaded machine trips it before the hang; the
    bound is measured from the moment rank 1 starts hanging."""
    pg_timeout = 10.0
    t0 = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch(_failing_run, 2, str(tmp_path), 2, 4, "hang", pg_timeout=pg_timeout, threads=1)
    ended, elapsed = time.time(), time.monotonic() - t0
    assert any(f.rank == 0 and f.exitcode == 1 for f in info.value.failures), info.value
    started = tmp_path / "hang_started"
    assert started.exists(), f"rank 1 never reached the hang; the job failed earlier: {info.value}"
    after_hang = ended - float(started.read_text())
    assert pg_timeout - 1.0 < after_hang < pg_timeout + 30.0, (after_hang, info.value)
    assert elapsed < 120, elapsed
    assert load_checkpoint(tmp_path).step == 1  # the last good step survives


def test_resume_with_a_different_world_size(tmp_path: Path) -> None:
    """2 steps on 1 process -> 2 more on 2 ranks, and 2 steps on 2 ranks -> 2 more on 1
    process, both equal 4 single-process steps."""
    ref4, _ = reference("maml_sinusoid", 4)
    trainer, sampler, g = make("maml_sinusoid")
    trainer.fit(sampler, 2)
    one = save_state(tmp_path / "one", trainer, g)
    two = tmp_path / "two"

    out = launch(_resume_both_ways, 2, str(one), str(two), 2, pg_timeout=30, threads=1)
    assert max_diff(out[0]["resumed"], ref4) <= TOL  # 1 process -> 2 ranks

    trainer, sampler, g = make("maml_sinusoid")
    assert load_state(two, trainer, g)["step"] == 2
    trainer.fit(sampler, 4)  # 2 ranks -> 1 process
    assert trainer.step_count == 4
    assert max_diff(flat(trainer), ref4) <= TOL


def test_launch_propagates_a_rank_exception() -> None:
    with pytest.raises(LaunchError, match="rank 1") as info:
        launch(_raise_on_rank1, 2, pg_timeout=20, threads=1)
    assert "boom on rank 1" in str(info.value.failures[0].message) or "boom on rank 1" in str(info.value)


def test_cli_train_nproc_2_matches_one_process(tmp_path) -> None:
    """`metafit train --nproc 2` ends at the single-process parameters (float32 round-off)."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    def run(d, *extra):
        cmd = [
            sys.executable,
            "-m",
            "metafit",
            "train",
            "--dataset",
            "sinusoid",
            "--algo",
            "maml",
            "--steps",
            "6",
            "--path",
            "loop",
            "--run-dir",
            str(d),
            "--quiet",
            "--set",
            "train.checkpoint_every=6",
            "--set",
            "data.eval_tasks=5",
            *extra,
        ]
        subprocess.run(cmd, check=True, timeout=240, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        return load_file(str(d / "checkpoints" / "step_000006.safetensors"))

    a = run(tmp_path / "one")
    b = run(tmp_path / "two", "--nproc", "2")
    keys = [k for k in a if k.startswith("meta/")]
    assert keys
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in keys) < 1e-5
