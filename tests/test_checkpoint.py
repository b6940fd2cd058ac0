"""Checkpoints: exact round trips, integrity checks, crash-safe writes, retention."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import metafit.atomic as atomic
import metafit.checkpoint as ckpt
from metafit.checkpoint import (
    check_fingerprint,
    fingerprint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    pack_state,
    prune_checkpoints,
    save_checkpoint,
    unpack_state,
)


def _tensors(v: float = 1.0) -> dict[str, torch.Tensor]:
    return {"meta/model/w": torch.full((3, 2), v), "rng/tasks": torch.Generator().manual_seed(1).get_state()}


def test_checkpoint_round_trip_restores_optimizer_and_generator_exactly(tmp_path: Path) -> None:
    p = torch.randn(4, requires_grad=True)
    opt = torch.optim.Adam([p], lr=0.1, betas=(0.8, 0.9))
    p.grad = torch.ones(4)
    opt.step()
    g = torch.Generator().manual_seed(7)
    torch.rand(3, generator=g)
    tensors = {"meta/model/p": p.detach(), "rng/tasks": g.get_state()}
    meta = {"optimizer": pack_state(opt.state_dict(), "optim", tensors)}
    save_checkpoint(tmp_path, 1, tensors, meta)
    ck = load_checkpoint(tmp_path)
    assert ck.step == 1 and torch.equal(ck.tensors["meta/model/p"], p.detach())
    restored = unpack_state(ck.meta["optimizer"], ck.tensors)
    assert restored["param_groups"][0]["betas"] == (0.8, 0.9)
    assert torch.equal(restored["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    g2 = torch.Generator()
    g2.set_state(ck.tensors["rng/tasks"])
    assert torch.equal(torch.rand(5, generator=g2), torch.rand(5, generator=g))
    assert b"pickle" not in (tmp_path / "step_000001.json").read_bytes()


def test_checkpoint_missing_truncated_and_tampered_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="step_000009.json"):
        load_checkpoint(tmp_path / "step_000009.json")
    with pytest.raises(FileNotFoundError, match=f"no valid checkpoint .*{tmp_path.name}"):
        load_checkpoint(tmp_path)
    jp = save_checkpoint(tmp_path, 1, _tensors(), {})
    st = jp.with_suffix(".safetensors")
    data = st.read_bytes()
    st.write_bytes(data[:-10])
    with pytest.raises(ValueError, match=r"truncated or damaged: expected \d+ bytes, found \d+"):
        load_checkpoint(jp)
    st.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ValueError, match="modified or damaged: expected sha256"):
        load_checkpoint(jp)
    st.write_bytes(data)
    assert load_checkpoint(jp).step == 1
    jp.write_text(jp.read_text()[:40])
    with pytest.raises(ValueError, match="damaged or truncated"):
        load_checkpoint(jp)
    st.unlink()
    jp.write_text(
        json.dumps(
            {"format": ckpt.FORMAT, "step": 1, "tensors_file": st.name, "tensors_bytes": 1, "tensors_sha256": "x"}
        )
    )
    with pytest.raises(FileNotFoundError, match="tensor file missing"):
        load_checkpoint(jp)


def test_checkpoint_crash_during_write_keeps_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path, 100, _tensors(1.0), {"k": 1})
    calls = {"n": 0}
    real = os.replace

    def crash_on(n: int):  # noqa: ANN202
        def replace(a, b):  # noqa: ANN001, ANN202
            calls["n"] += 1
            if calls["n"] == n:
                raise OSError("simulated crash")
            return real(a, b)

        return replace

    for n in (1, 2):  # crash while renaming the tensors file, then while renaming the JSON
        calls["n"] = 0
        monkeypatch.setattr(atomic.os, "replace", crash_on(n))
        with pytest.raises(OSError, match="simulated crash"):
            save_checkpoint(tmp_path, 200, _tensors(2.0), {"k": 2})
        monkeypatch.setattr(atomic.os, "replace", real)
        latest = latest_checkpoint(tmp_path)
        assert latest is not None and latest.name == "step_000100.json"
        ck = load_checkpoint(tmp_path)
        assert ck.step == 100 and torch.equal(ck.tensors["meta/model/w"], torch.full((3, 2), 1.0))
        assert not [p for p in tmp_path.iterdir() if atomic.is_temporary(p)]


def test_checkpoint_stale_json_with_new_tensors_is_ignored(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, _tensors(1.0), {})
    save_checkpoint(tmp_path, 2, _tensors(2.0), {})
    # A crash after the tensors of step 2 were rewritten but before its JSON: sha mismatch.
    (tmp_path / "step_000002.safetensors").write_bytes(
        (tmp_path / "step_000001.safetensors").read_bytes()[:-3] + b"abc"
    )
    assert latest_checkpoint(tmp_path).name == "step_000001.json"  # type: ignore[union-attr]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]


def test_checkpoint_prune_keeps_last_and_best(tmp_path: Path) -> None:
    for s in range(1, 7):
        save_checkpoint(tmp_path, s, _tensors(float(s)), {})
    (tmp_path / "step_000099.safetensors").write_bytes(b"orphan")
    assert prune_checkpoints(tmp_path, 2, {2}) == [1, 3, 4]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 5, 6]
    assert not (tmp_path / "step_000099.safetensors").exists()


def test_checkpoint_fingerprint_mismatch_names_parameters() -> None:
    a = fingerprint({"model/head.weight": torch.zeros(5, 8), "model/head.bias": torch.zeros(5)})
    b = fingerprint({"model/head.weight": torch.zeros(20, 8), "model/head.bias": torch.zeros(20)})
    check_fingerprint(a, a, where="x")
    with pytest.raises(
        ValueError,
        match=r"different architecture: .*head.weight: expected shape \[5, 8\] float32, checkpoint has \[20, 8\]",
    ):
        check_fingerprint(a, b, where="x")
