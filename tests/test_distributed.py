"""Distributed meta-training: sharding maths, equality with one process, failures, resume.

Multi-process tests run 2 ranks on loopback (gloo, spawn) through ``metafit.distributed.launch``;
each launch costs a few seconds of process start-up, so several checks share one launch.
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
from metafit.data.task import TaskBatch
from metafit.distributed import (
    DistInfo,
    DistributedTrainer,
    LaunchError,
    LaunchTimeout,
    distributed_step,
    init_from_env,
    launch,
    load_training_state,
    save_training_state,
    shard,
    shard_sizes,
)
from metafit.engine import meta_backward, parameters_of
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


def make(kind: str, seed: int = 0) -> tuple[Trainer, Any, torch.Generator]:
    """(trainer, sampler, sampler generator) of one test set-up, float64, 5 tasks per batch."""
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
    trainer = Trainer(algo, model, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), path="loop")
    return trainer, sampler, g


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
        trainer, sampler, _ = make(kind)
        if torch.distributed.get_rank() == 1:  # a different start: the broadcast must fix it
            with torch.no_grad():
                for p in parameters_of(trainer.meta_params):
                    p.add_(1.0)
        dt = DistributedTrainer(trainer)
        results = dt.fit(sampler, steps, callback_on_all_ranks=True)
        out[kind] = {"params": flat(trainer), "losses": [r.metrics["loss"] for r in results],
                     "n_tasks": [r.metrics["n_tasks"] for r in results], "sync": dt.in_sync()}
    return out


def _crash_run(ckpt: str, crash_step: int, steps: int) -> int:
    trainer, sampler, g = make("maml_sinusoid")
    dt = DistributedTrainer(trainer)
    it = iter(sampler)
    for s in range(1, steps + 1):
        batch = next(it)
        if dt.rank == 1 and s == crash_step:
            os.kill(os.getpid(), signal.SIGKILL)  # a hard crash: no exception, no cleanup
        dt.step(batch)
        if dt.is_main:
            save_training_state(ckpt, trainer, generator=g, extra={"note": "last good step"})
    return dt.step_count


def _stall_run(stall_step: int, steps: int) -> int:
    trainer, sampler, _ = make("maml_sinusoid")
    dt = DistributedTrainer(trainer)
    it = iter(sampler)
    for s in range(1, steps + 1):
        batch = next(it)
        if dt.rank == 1 and s == stall_step:
            time.sleep(600)  # alive but unresponsive (a hung rank): only the timeout can tell
        dt.step(batch)
    return dt.step_count


def _resume_both_ways(state_from_1proc: str, state_out: str, steps: int) -> dict[str, Any]:
    # (i) a state written by ONE process, resumed by two ranks
    trainer, sampler, g = make("maml_sinusoid")
    load_training_state(state_from_1proc, trainer, generator=g)
    dt = DistributedTrainer(trainer)
    dt.fit(sampler, steps)
    resumed = flat(trainer)
    # (ii) two ranks train from scratch and rank 0 writes the state for a 1-process resume
    trainer, sampler, g = make("maml_sinusoid")
    dt = DistributedTrainer(trainer)
    dt.fit(sampler, steps, callback=lambda r: save_training_state(state_out, trainer, generator=g))
    return {"resumed": resumed, "step": dt.step_count}


def _sleep_forever() -> None:
    time.sleep(600)


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
    trainer, sampler, _ = make("maml_sinusoid")
    dt = DistributedTrainer(trainer)
    assert (dt.rank, dt.world_size, dt.is_main) == (0, 1, True)
    losses = [r.metrics["loss"] for r in dt.fit(sampler, 2)]
    assert max_diff(flat(trainer), ref) == 0.0
    assert losses == ref_losses


def test_fewer_tasks_than_ranks_is_a_clear_error() -> None:
    trainer, _, _ = make("maml_sinusoid")
    batch = SinusoidTasks(k_shot=5, generator=generator(0), dtype=D).sample_batch(1)
    with pytest.raises(ValueError, match="at least one task"):
        distributed_step(trainer, batch, rank=0, world_size=2)


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
    path = save_training_state(tmp_path / "s.safetensors", trainer, generator=g, extra={"lr": 1e-2})
    assert path.read_bytes()[8:9] == b"{"  # safetensors: 8-byte header length, then JSON
    expected_next = next(it)
    trainer.step(expected_next)
    want = flat(trainer)

    t2, s2, g2 = make("maml_conv")
    meta = load_training_state(path, t2, generator=g2)
    assert meta["step"] == 1 and meta["extra"] == {"lr": 1e-2} and t2.step_count == 1
    batch = next(iter(s2))
    assert torch.equal(batch.support_x, expected_next.support_x)  # sampler generator restored
    t2.step(batch)
    assert max_diff(flat(t2), want) == 0.0
    assert t2.step_count == 2

    other = Trainer(MAML(), MLP(1, (3,), 1), path="loop")
    with pytest.raises(ValueError, match="names differ"):
        load_training_state(path, other)


# ---------------------------------------------------------------------------------------------
# Multi-process tests (2 ranks, gloo on loopback)
# ---------------------------------------------------------------------------------------------
def test_two_ranks_equal_one_process_second_order_maml_and_protonet() -> None:
    """(a) 3 steps, 5 tasks per meta-batch (uneven shards 3 + 2), float64, max |diff| <= 1e-6."""
    steps = 3
    out = launch(_train_kinds, 2, KINDS, steps, timeout=120, pg_timeout=30, threads=1)
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
    """(b) rank 1 is SIGKILLed before step 3: rank 0 errors out by itself (no hang), the launcher
    raises, the checkpoint of step 2 is intact, and resuming from it reproduces the full run."""
    ckpt = tmp_path / "last.safetensors"
    steps, crash = 5, 3
    t0 = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch(_crash_run, 2, str(ckpt), crash, steps, timeout=90, pg_timeout=15, grace=30, threads=1)
    elapsed = time.monotonic() - t0
    assert not isinstance(info.value, LaunchTimeout)
    o0, o1 = info.value.outcomes
    assert o1.exitcode == -signal.SIGKILL
    assert not o0.killed_by_launcher and o0.exitcode == 1 and o0.error  # failed on its own
    assert elapsed < 60, elapsed

    trainer, sampler, g = make("maml_sinusoid")
    meta = load_training_state(ckpt, trainer, generator=g)
    assert meta["step"] == crash - 1 and meta["extra"] == {"note": "last good step"}
    assert not list(tmp_path.glob("*.tmp*"))
    it = iter(sampler)
    for _ in range(steps - trainer.step_count):
        trainer.step(next(it))
    ref, _ = reference("maml_sinusoid", steps)
    assert max_diff(flat(trainer), ref) <= TOL


def test_a_hung_rank_makes_the_others_fail_within_the_process_group_timeout() -> None:
    """A rank that stops answering (no closed connection) is caught by the process-group timeout:
    rank 0 raises by itself after ~pg_timeout s, then the launcher kills the hung rank."""
    pg_timeout = 4.0
    t0 = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch(_stall_run, 2, 2, 4, timeout=90, pg_timeout=pg_timeout, grace=1, threads=1)
    elapsed = time.monotonic() - t0
    o0, o1 = info.value.outcomes
    assert not isinstance(info.value, LaunchTimeout)
    assert not o0.killed_by_launcher and o0.exitcode == 1 and "Timed out" in (o0.error or ""), o0
    assert o1.killed_by_launcher
    assert elapsed < 45, elapsed


def test_resume_with_a_different_world_size(tmp_path: Path) -> None:
    """(c) 2 steps on 1 process -> 2 more on 2 ranks, and 2 steps on 2 ranks -> 2 more on 1
    process, both equal 4 single-process steps."""
    ref4, _ = reference("maml_sinusoid", 4)
    trainer, sampler, g = make("maml_sinusoid")
    DistributedTrainer(trainer).fit(sampler, 2)
    one = save_training_state(tmp_path / "one.safetensors", trainer, generator=g)
    two = tmp_path / "two.safetensors"

    out = launch(_resume_both_ways, 2, str(one), str(two), 2, timeout=120, pg_timeout=30, threads=1)
    assert max_diff(out[0]["resumed"], ref4) <= TOL  # 1 process -> 2 ranks

    trainer, sampler, g = make("maml_sinusoid")
    assert load_training_state(two, trainer, generator=g)["step"] == 2
    DistributedTrainer(trainer).fit(sampler, 2)  # 2 ranks -> 1 process
    assert trainer.step_count == 4
    assert max_diff(flat(trainer), ref4) <= TOL


def test_launch_propagates_a_rank_exception() -> None:
    with pytest.raises(LaunchError, match="boom on rank 1") as info:
        launch(_raise_on_rank1, 2, timeout=60, pg_timeout=20, threads=1)
    assert "ValueError" in (info.value.outcomes[1].error or "")


def test_launch_hard_timeout_kills_every_rank() -> None:
    t0 = time.monotonic()
    with pytest.raises(LaunchTimeout) as info:
        launch(_sleep_forever, 2, timeout=8, pg_timeout=20, threads=1)
    assert time.monotonic() - t0 < 20
    assert all(o.killed_by_launcher for o in info.value.outcomes)


def test_cli_train_nproc_2_matches_one_process(tmp_path) -> None:
    """`metafit train --nproc 2` ends at the single-process parameters (float32 round-off)."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    def run(d, *extra):
        cmd = [sys.executable, "-m", "metafit", "train", "--dataset", "sinusoid", "--algo", "maml", "--steps", "6",
               "--path", "loop", "--run-dir", str(d), "--quiet", "--set", "train.checkpoint_every=6",
               "--set", "data.eval_tasks=5", *extra]
        subprocess.run(cmd, check=True, timeout=240, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        return load_file(str(d / "checkpoints" / "step_000006.safetensors"))

    a = run(tmp_path / "one")
    b = run(tmp_path / "two", "--nproc", "2")
    keys = [k for k in a if k.startswith("meta/")]
    assert keys
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in keys) < 1e-5
