"""Checkpoints: tensors in safetensors, everything else in JSON, written crash-safely.

A checkpoint named ``step_000100`` is a pair of files in one folder:

* ``step_000100.safetensors``: every tensor (meta-parameters, optimiser state tensors such as
  Adam's ``exp_avg``, the ``torch.Generator`` states as uint8 tensors);
* ``step_000100.json``: everything else (config, step, the non-tensor parts of the optimiser and
  scheduler states, metrics, preprocessing, the architecture fingerprint) plus the size and
  sha256 of the safetensors file.

Both files are written atomically (temporary file in the same folder, flush + ``os.fsync``,
``os.replace``, fsync of the folder) and the JSON is written LAST. A checkpoint whose JSON is
missing, unreadable or whose sha256 does not match its safetensors file is not a checkpoint:
:func:`latest_checkpoint` skips it, so a crash at any moment leaves the previous complete
checkpoint as the one a resumed run starts from. Nothing here ever unpickles.

Nested Python state (optimiser ``state_dict``) is stored with :func:`pack_state`: tensors are
moved into the flat tensor dict under a key and replaced in the JSON by ``{"__tensor__": key}``;
int dict keys and tuples are tagged so :func:`unpack_state` restores the exact structure.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metafit.atomic import atomic_write_bytes, is_temporary

__all__ = [
    "FORMAT",
    "Checkpoint",
    "fingerprint",
    "check_fingerprint",
    "pack_state",
    "unpack_state",
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "latest_checkpoint",
    "prune_checkpoints",
    "atomic_write_bytes",
    "resolve_checkpoint",
]

FORMAT = "metafit-checkpoint-1"
_NAME = re.compile(r"^step_(\d+)\.json$")
log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        tensors: ``{key: tensor}`` from the safetensors file.
        meta: The JSON document (without the integrity fields' bookkeeping).
        path: Path of the JSON file.
    """

    tensors: dict[str, Tensor]
    meta: dict[str, Any]
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        """The training step the checkpoint was written after."""
        return int(self.meta["step"])

    def group(self, prefix: str) -> dict[str, Tensor]:
        """Tensors whose key starts with ``prefix + "/"``, with the prefix stripped."""
        p = prefix + "/"
        return {k[len(p) :]: v for k, v in self.tensors.items() if k.startswith(p)}


# -- fingerprints --------------------------------------------------------------------------


def fingerprint(flat: Mapping[str, Tensor]) -> list[list[Any]]:
    """Architecture fingerprint: ``[[name, shape, dtype], ...]`` sorted by name."""
    return [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in sorted(flat.items())]


def check_fingerprint(expected: list[list[Any]], actual: list[list[Any]], *, where: str) -> None:
    """Raises ValueError describing the first differences between two fingerprints.

    Args:
        expected: Fingerprint of the model being loaded into.
        actual: Fingerprint recorded in the checkpoint.
        where: Path named in the message.
    """
    e = {r[0]: (tuple(r[1]), r[2]) for r in expected}
    a = {r[0]: (tuple(r[1]), r[2]) for r in actual}
    if e == a:
        return
    problems = []
    for k in sorted(e.keys() - a.keys())[:3]:
        problems.append(f"missing {k}")
    for k in sorted(a.keys() - e.keys())[:3]:
        problems.append(f"unexpected {k}")
    for k in sorted(e.keys() & a.keys()):
        if e[k] != a[k] and len(problems) < 6:
            problems.append(f"{k}: expected shape {list(e[k][0])} {e[k][1]}, checkpoint has {list(a[k][0])} {a[k][1]}")
    raise ValueError(f"checkpoint {where} was written for a different architecture: " + "; ".join(problems))


# -- packing nested state ----------------------------------------------------------------------


def pack_state(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """JSON-able copy of ``obj`` with tensors moved into ``tensors`` under ``prefix/...`` keys."""
    if isinstance(obj, Tensor):
        tensors[prefix] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) for k in obj):
            return {k: pack_state(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
        if all(isinstance(k, int) and not isinstance(k, bool) for k in obj):
            return {"__intkeys__": {str(k): pack_state(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}}
        raise ValueError(f"cannot store a dict with keys {list(obj)[:3]} at {prefix}")
    if isinstance(obj, tuple):
        return {"__tuple__": [pack_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [pack_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ValueError(f"cannot store a {type(obj).__name__} at {prefix} in a checkpoint (JSON + tensors only)")


def unpack_state(obj: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Inverse of :func:`pack_state`."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            key = obj["__tensor__"]
            if key not in tensors:
                raise ValueError(f"checkpoint JSON refers to tensor {key!r} missing from the safetensors file")
            return tensors[key]
        if set(obj) == {"__intkeys__"}:
            return {int(k): unpack_state(v, tensors) for k, v in obj["__intkeys__"].items()}
        if set(obj) == {"__tuple__"}:
            return tuple(unpack_state(v, tensors) for v in obj["__tuple__"])
        return {k: unpack_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack_state(v, tensors) for v in obj]
    return obj


# -- atomic files ---------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- save / load ---------------------------------------------------------------------------------


def save_checkpoint(folder: str | Path, step: int, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Path:
    """Writes checkpoint ``step_{step:06d}`` into ``folder`` (tensors first, JSON last).

    Args:
        folder: Checkpoint folder (created if needed).
        step: Training step; names the files.
        tensors: Flat ``{key: tensor}`` (CPU copies are stored).
        meta: JSON-able metadata (config, metrics, packed optimiser state, ...).

    Returns:
        Path of the JSON file (the checkpoint's handle).
    """
    from safetensors.torch import save as st_save

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    stem = f"step_{step:06d}"
    data = st_save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})
    atomic_write_bytes(d / f"{stem}.safetensors", data)
    doc = {
        "format": FORMAT,
        "step": step,
        "tensors_file": f"{stem}.safetensors",
        "tensors_sha256": _sha256(data),
        "tensors_bytes": len(data),
        **meta,
    }
    atomic_write_bytes(d / f"{stem}.json", (json.dumps(doc, indent=1, sort_keys=True, allow_nan=True) + "\n").encode())
    return d / f"{stem}.json"


def resolve_checkpoint(path: str | Path) -> Path:
    """Maps a run folder, a checkpoints folder, a ``.json`` or ``.safetensors`` path to a JSON path.

    A folder resolves to its newest valid checkpoint.

    Raises:
        FileNotFoundError: nothing there, or a folder without a valid checkpoint.
    """
    p = Path(path)
    if p.is_dir():
        folder = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        latest = latest_checkpoint(folder)
        if latest is None:
            raise FileNotFoundError(f"no valid checkpoint (step_*.json + .safetensors) in {folder}")
        return latest
    if p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    return p


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Loads and verifies a checkpoint (never unpickles).

    Args:
        path: The JSON file, the safetensors file, a checkpoints folder or a run folder.

    Raises:
        FileNotFoundError: the checkpoint or its tensor file does not exist.
        ValueError: unreadable/truncated JSON, wrong format, size or sha256 mismatch (damaged or
            tampered file), unreadable tensors.
    """
    from safetensors.torch import load as st_load

    jp = resolve_checkpoint(path)
    try:
        meta = json.loads(jp.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint {jp} is damaged or truncated (invalid JSON: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{jp} is not a metafit checkpoint: expected format {FORMAT!r}, got {got!r}")
    tp = jp.with_name(meta["tensors_file"])
    if not tp.exists():
        raise FileNotFoundError(f"checkpoint tensor file missing: {tp} (referenced by {jp})")
    data = tp.read_bytes()
    if len(data) != meta["tensors_bytes"]:
        raise ValueError(
            f"checkpoint tensor file {tp} is truncated or damaged: expected {meta['tensors_bytes']} bytes, "
            f"found {len(data)}"
        )
    sha = _sha256(data)
    if sha != meta["tensors_sha256"]:
        raise ValueError(
            f"checkpoint tensor file {tp} was modified or damaged: expected sha256 {meta['tensors_sha256']}, got {sha}"
        )
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error type
        raise ValueError(f"checkpoint tensor file {tp} cannot be read: {e}") from None
    return Checkpoint(tensors=dict(tensors), meta=meta, path=jp)


def _is_valid(jp: Path) -> bool:
    try:
        meta = json.loads(jp.read_text(encoding="utf-8"))
        tp = jp.with_name(meta["tensors_file"])
        data = tp.read_bytes()
        return (
            meta.get("format") == FORMAT
            and len(data) == meta["tensors_bytes"]
            and _sha256(data) == meta["tensors_sha256"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def list_checkpoints(folder: str | Path, *, validate: bool = True) -> list[tuple[int, Path]]:
    """``[(step, json_path)]`` of the checkpoints in ``folder``, oldest first.

    With ``validate`` (default) incomplete or damaged checkpoints are skipped (and logged).
    """
    d = Path(folder)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if not m:
            continue
        if validate and not _is_valid(p):
            log.warning("ignoring incomplete or damaged checkpoint %s", p)
            continue
        out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """JSON path of the newest valid checkpoint in ``folder`` (``None`` if there is none)."""
    d = Path(folder)
    if not d.is_dir():
        return None
    candidates = sorted(((int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))), reverse=True)
    for _, p in candidates:
        if _is_valid(p):
            return p
        log.warning("ignoring incomplete or damaged checkpoint %s", p)
    return None


def prune_checkpoints(folder: str | Path, keep_last: int, keep: set[int] | None = None) -> list[int]:
    """Deletes all but the newest ``keep_last`` checkpoints and the steps in ``keep``.

    The JSON is deleted before the tensors, so an interrupted deletion leaves an orphan
    tensor file (ignored and cleaned up later), never a JSON pointing at nothing valid.
    Orphan tensor files and stale temporary files are removed too.

    Returns:
        The deleted steps.
    """
    d = Path(folder)
    keep = keep or set()
    found = list_checkpoints(d, validate=False)
    steps = [s for s, _ in found]
    survivors = set(steps[-keep_last:]) | keep
    removed = []
    for s, jp in found:
        if s in survivors:
            continue
        jp.unlink(missing_ok=True)
        jp.with_suffix(".safetensors").unlink(missing_ok=True)
        removed.append(s)
    live = {f"step_{s:06d}.safetensors" for s in survivors}
    for p in d.iterdir():
        if (p.suffix == ".safetensors" and p.name not in live and not p.with_suffix(".json").exists()) or (
            is_temporary(p)
        ):
            p.unlink(missing_ok=True)
    return removed


# -- trainer state ---------------------------------------------------------------------------------


def trainer_state(
    trainer: Any, *, generator: torch.Generator | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and JSON of everything needed to resume a :class:`metafit.engine.Trainer` exactly.

    The state does not depend on the number of processes that produced it: meta-parameters
    (``meta/group/name``), optimiser and scheduler states, the step, the engine path, the training
    seconds, the task sampler's generator state (``rng/tasks``) and each callback's state.

    Returns:
        ``(tensors, meta)`` for :func:`save_checkpoint`.
    """
    from metafit.algorithms.base import flat_meta_params

    flat = flat_meta_params(trainer.meta_params)
    tensors: dict[str, Tensor] = {f"meta/{k}": v for k, v in flat.items()}
    tensors.update({f"buffers/{k}": v for k, v in trainer.buffers.items()})
    if generator is not None:
        tensors["rng/tasks"] = generator.get_state()
    meta: dict[str, Any] = {
        "path": trainer.resolved_path,
        "path_report": {k: v for k, v in trainer.path_report.items() if isinstance(v, (str, int, float, bool))},
        "optimizer": pack_state(trainer.optimizer.state_dict(), "optim", tensors),
        "scheduler": pack_state(trainer.scheduler.state_dict(), "sched", tensors)
        if trainer.scheduler is not None
        else None,
        "train_seconds": trainer.train_seconds,
        "fingerprint": fingerprint(flat),
        "callbacks": {type(cb).__name__: cb.state_dict() for cb in trainer.callbacks if cb.state_dict()},
        "torch": torch.__version__,
    }
    return tensors, meta


def restore_trainer(
    ck: Checkpoint, trainer: Any, *, generator: torch.Generator | None = None, callbacks: Any = ()
) -> None:
    """Restores what :func:`trainer_state` saved into ``trainer`` (and ``generator``, ``callbacks``).

    Raises:
        ValueError: the checkpoint was written for a different architecture (names the
            parameters and shapes), or lacks a generator state that ``generator`` needs.
    """
    from metafit.algorithms.base import flat_meta_params

    flat = flat_meta_params(trainer.meta_params)
    check_fingerprint(fingerprint(flat), ck.meta.get("fingerprint", []), where=str(ck.path))
    saved = ck.group("meta")
    with torch.no_grad():
        for k, v in flat.items():
            v.copy_(saved[k])
        for k, v in ck.group("buffers").items():
            if k in trainer.buffers:
                trainer.buffers[k].copy_(v)
    trainer.optimizer.load_state_dict(unpack_state(ck.meta["optimizer"], ck.tensors))
    if trainer.scheduler is not None and ck.meta.get("scheduler") is not None:
        trainer.scheduler.load_state_dict(unpack_state(ck.meta["scheduler"], ck.tensors))
    if generator is not None:
        if "rng/tasks" not in ck.tensors:
            raise ValueError(f"checkpoint {ck.path} holds no task-sampler generator state (rng/tasks)")
        generator.set_state(ck.tensors["rng/tasks"])
    trainer.step_count = ck.step
    trainer.train_seconds = float(ck.meta.get("train_seconds", ck.meta.get("wall_time", 0.0)))
    if ck.meta.get("path") is not None:
        trainer.path = ck.meta["path"]
    states = ck.meta.get("callbacks", {})
    for cb in [*trainer.callbacks, *callbacks]:
        if type(cb).__name__ in states:
            cb.load_state_dict(states[type(cb).__name__])
