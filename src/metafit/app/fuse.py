"""The ``metafit fuse`` pipeline: trained runs as frozen base models of a meta-learned fusion.

:func:`run_fusion` loads trained runs (:func:`load_base_run`), meta-trains the core
:class:`metafit.fusion.FusionLearner` on episodes of the ``val`` split
(:func:`metafit.fusion.meta_train_fusion`, the one training loop), compares it with every base
model and the baselines on fixed ``test`` episodes (:func:`metafit.fusion.compare_fusion`) and
writes ``fusion.json``, ``fusion.md`` and the head's checkpoint (:func:`load_fusion`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from metafit.algorithms.base import MetaParams
from metafit.functional import params_of
from metafit.fusion import (
    FusionHead,
    FusionLearner,
    compare_fusion,
    embed_task,
    meta_train_fusion,
)

__all__ = ["BaseRun", "load_base_run", "FusionRun", "run_fusion", "FusionCheckpoint", "load_fusion", "fusion_markdown"]


# -- trained metafit runs as base models (``metafit fuse``) -----------------------------------------

FUSION_FORMAT = "metafit-fusion-1"


@dataclass
class BaseRun:
    """A trained metafit run loaded as a frozen base model (:func:`load_base_run`).

    Calling it maps images ``(B, 1, S, S)`` to embeddings ``(B, D)``: the network's output for
    a ProtoNet, the features before the classifier head for the other learners (the head's
    classes are those of the training episodes, meaningless for a new task, and the fusion
    builds prototypes itself).

    Attributes:
        path: The checkpoint's JSON file.
        name: A short label (the run folder's name).
        config: The run's :class:`~metafit.app.config.RunConfig`.
        model: The run's Conv-4 with its trained parameters, frozen, in eval mode.
        step: The training step of the checkpoint.
    """

    path: Path
    name: str
    config: Any
    model: nn.Module
    step: int

    def __call__(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.model.embed(x)  # type: ignore[operator]


def load_base_run(path: str | Path) -> BaseRun:
    """Loads a trained Omniglot run (run folder, checkpoints folder or checkpoint file) as a base model.

    The architecture is rebuilt from the run's saved config by :func:`metafit.app.runs.load_trained`
    (the same loader as ``metafit eval`` / ``predict``).

    Args:
        path: Where the run or checkpoint is.

    Returns:
        :class:`BaseRun`.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: a damaged checkpoint, or a model that is not an image classifier or embedding
            network trained on Omniglot (the message names the run, the expected and the
            actual value).
    """
    from metafit.app.runs import checkpoint_config, load_trained
    from metafit.checkpoint import load_checkpoint

    where = f"base run {path}"
    try:
        ck = load_checkpoint(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{where}: expected a trained metafit run folder or checkpoint (step_*.json); {e}"
        ) from None
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    try:
        config = checkpoint_config(ck.meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{where}: expected a checkpoint written by `metafit train` (holding its run config), "
            f"got {ck.path} without a valid config ({type(e).__name__}: {e})"
        ) from None
    if config.data.dataset != "omniglot":
        raise ValueError(
            f"{where}: expected a model trained on Omniglot (data.dataset='omniglot'), got data.dataset={config.data.dataset!r}"
        )
    from metafit.algorithms.registry import LEARNERS

    embedding_learners = sorted(n for n in LEARNERS if config_learner_embeds(n))
    if config.algo.name not in embedding_learners:
        raise ValueError(
            f"{where}: expected an image classifier or embedding network (algo.name one of "
            f"{embedding_learners}), got algo.name={config.algo.name!r}"
        )
    try:
        tr = load_trained(ck.path)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"{where}: {e}") from None
    model = tr.model
    if not callable(getattr(model, "embed", None)):
        raise ValueError(f"{where}: expected a Conv-4 image network with an embed() method, got {type(model).__name__}")
    model.load_state_dict({**tr.meta_params["model"], **tr.buffers}, strict=False)
    model.eval()
    for p_ in model.parameters():
        p_.requires_grad_(False)
    folder = ck.path.parent
    name = folder.parent.name if folder.name == "checkpoints" else ck.path.stem
    return BaseRun(ck.path, name, config, model, ck.step)


def config_learner_embeds(name: str) -> bool:
    """Whether the registered learner ``name`` trains a network that embeds its inputs."""
    from metafit.algorithms.registry import build_learner, learner_entry

    placeholders = {k: 2 for k in learner_entry(name).data_options}
    try:
        return build_learner(name, "cross_entropy", **placeholders).spec.embeds
    except ValueError:  # a regression-only learner
        return False


def _check_arg(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


@dataclass
class FusionRun:
    """What :func:`run_fusion` produced.

    Attributes:
        results: The JSON-able results (settings, base models, mean ± 95% CI per method, paired
            differences, per-task accuracies, learned weights, timings).
        head: The trained :class:`FusionHead`.
        learner: The :class:`FusionLearner`.
        meta_params: The head's trained meta-parameters.
        bases: The base models.
        json_path: ``fusion.json`` if written.
        checkpoint: The head's checkpoint (JSON handle) if written.
    """

    results: dict[str, Any]
    head: FusionHead
    learner: FusionLearner
    meta_params: MetaParams
    bases: list[BaseRun]
    json_path: Path | None = None
    checkpoint: Path | None = None

    def markdown(self) -> str:
        """The comparison as a Markdown table (:func:`fusion_markdown`)."""
        return fusion_markdown(self.results["accuracy"])


def run_fusion(
    bases: Sequence[str | Path],
    *,
    data_root: str | Path | None = None,
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 5,
    steps: int = 300,
    episodes: int = 300,
    train_tasks: int = 300,
    tasks_per_batch: int = 16,
    lr: float = 1e-2,
    inner_steps: int = 1,
    seed: int = 0,
    out_dir: str | Path | None = None,
    force: bool = False,
) -> FusionRun:
    """Meta-learns a fusion of trained metafit Omniglot runs and compares it with the baselines.

    What ``metafit fuse`` runs. Steps:

    1. Each entry of ``bases`` (run folder, checkpoints folder or checkpoint file of ``metafit
       train`` on Omniglot) is loaded as a frozen base model (:func:`load_base_run`). They must
       share ``data.protocol`` and ``data.image_size``; rotated classes are used only if every
       base run was trained with them.
    2. Data: :func:`metafit.data.omniglot.omniglot_split` of that protocol (split seed 0, as
       ``metafit train`` uses). The base models were trained on its ``"train"`` split; the fusion
       is meta-trained on ``"val"`` (which ``metafit train`` uses only to pick checkpoints) and
       everything is tested on ``"test"``, classes no base model and not the fusion was trained on.
    3. Fusion: a pool of ``train_tasks`` ``n_way``-way ``k_shot``-shot tasks (``n_query`` queries
       per class) drawn from ``"val"`` with ``generator(seed)`` and embedded once by the base
       models; :func:`meta_train_fusion` for ``steps`` steps (meta-batches of ``tasks_per_batch``
       drawn with ``generator(seed + 1)``, Adam ``lr``, :class:`FusionLearner` with
       ``inner_steps``).
    4. Test: ``episodes`` fixed episodes of ``"test"`` (:func:`metafit.data.sampling.fixed_episodes`,
       seed ``seed``, same shape as the training tasks), the same for every method:
       :func:`compare_fusion` and :func:`summarize_comparison` (mean ± 95% CI per method and the
       paired difference to the fusion).
    5. With ``out_dir``: ``fusion.json`` (the results), ``fusion.md`` (the table) and the head's
       checkpoint ``checkpoints/step_<steps>.{json,safetensors}`` (:func:`load_fusion`), all
       written atomically.

    Args:
        bases: The trained runs, at least one (``--base``).
        data_root: Folder containing ``omniglot/`` (default ``$METAFIT_DATA``, then the first base
            run's ``data.data_root``).
        n_way, k_shot, n_query: Episode shape of the fusion's training tasks and of the test
            episodes (``n_query`` per class).
        steps: Fusion meta-training steps.
        episodes: Test episodes.
        train_tasks: Size of the pool of fusion training tasks.
        tasks_per_batch: Tasks per fusion meta-batch.
        lr: Adam learning rate of the fusion.
        inner_steps: Fusion adaptation steps (:class:`FusionLearner`).
        seed: Seed of the task pool, the meta-batches, the head's initialisation and the test
            episodes.
        out_dir: Where to write the results (``None``: nothing is written).
        force: Overwrite the results of an earlier fusion in ``out_dir``.

    Returns:
        :class:`FusionRun`.

    Raises:
        FileNotFoundError: a missing checkpoint or data set.
        ValueError: bad settings or base models (one line naming the argument, the expected and
            the actual value).
    """
    import json
    import os
    import time

    from metafit import seeding
    from metafit.data import omniglot as om
    from metafit.data.sampling import EpisodeSampler, fixed_episodes

    t_all = time.perf_counter()
    if isinstance(bases, (str, Path)) or not isinstance(bases, Sequence) or not bases:
        raise ValueError(
            "bases must name at least one trained Omniglot run folder or checkpoint, "
            f"got {list(bases) if isinstance(bases, Sequence) and not isinstance(bases, str) else bases!r}"
        )
    _check_arg("n_way", n_way, 2)
    _check_arg("k_shot", k_shot, 1)
    _check_arg("n_query", n_query, 1)
    _check_arg("steps", steps, 0)
    _check_arg("episodes", episodes, 1)
    _check_arg("train_tasks", train_tasks, 1)
    _check_arg("tasks_per_batch", tasks_per_batch, 1)
    _check_arg("inner_steps", inner_steps, 0)
    _check_arg("seed", seed, 0)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if k_shot + n_query > 20:
        raise ValueError(
            f"k_shot + n_query must be <= 20 (drawings per Omniglot character), "
            f"got {k_shot} + {n_query} = {k_shot + n_query}"
        )
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and (out / "fusion.json").exists() and not force:
        raise ValueError(
            f"out_dir {out} already holds a fusion result (fusion.json); choose another "
            "folder or pass force=True to overwrite it"
        )

    loaded = [load_base_run(p) for p in bases]
    first = loaded[0].config.data
    for b in loaded[1:]:
        d = b.config.data
        if (d.protocol, d.image_size) != (first.protocol, first.image_size):
            raise ValueError(
                f"base run {b.path}: expected the Omniglot settings of the first base model "
                f"(data.protocol={first.protocol!r}, data.image_size={first.image_size}), got "
                f"data.protocol={d.protocol!r}, data.image_size={d.image_size}"
            )
    root = data_root or os.environ.get("METAFIT_DATA") or first.data_root
    if not root:
        raise ValueError("data_root is not set: pass data_root or set METAFIT_DATA")
    rotations = all(b.config.data.rotations for b in loaded)

    t0 = time.perf_counter()
    data = om.load_omniglot(root, image_size=first.image_size, cache_dir=first.cache_dir)
    train_ds = om.omniglot_split(data, "val", protocol=first.protocol, rotations=rotations)
    test_ds = om.omniglot_split(data, "test", protocol=first.protocol, rotations=rotations)
    load_s = time.perf_counter() - t0
    n_classes = min(train_ds.num_classes, test_ds.num_classes)
    if n_way > n_classes:
        raise ValueError(
            f"n_way must be <= {n_classes} (classes of the Omniglot '{first.protocol}' val/test "
            f"splits{' with rotations' if rotations else ''}), got {n_way}"
        )

    t0 = time.perf_counter()
    pool_batch = EpisodeSampler(
        train_ds, n_way, k_shot, n_query, tasks_per_batch=train_tasks, generator=seeding.generator(seed)
    ).sample_batch()
    pool = [embed_task(loaded, t) for t in pool_batch]
    learner = FusionLearner(inner_steps=inner_steps)
    head, mp, losses = meta_train_fusion(
        pool,
        len(loaded),
        steps=steps,
        generator=seeding.generator(seed + 1),
        tasks_per_batch=min(tasks_per_batch, train_tasks),
        lr=lr,
        learner=learner,
        seed=seed,
    )
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    test = [embed_task(loaded, t) for t in fixed_episodes(test_ds, n_way, k_shot, n_query, episodes, seed=seed)]
    cmp = compare_fusion(learner, head, mp, test)
    eval_s = time.perf_counter() - t0

    from metafit.evaluation import summarize

    nll = summarize(cmp.fusion_nll)
    results: dict[str, Any] = {
        "format": FUSION_FORMAT,
        "bases": [
            {
                "index": i,
                "name": b.name,
                "checkpoint": str(b.path),
                "step": b.step,
                "algo": b.config.algo.name,
                "width": b.config.model.width,
                "train_n_way": b.config.data.n_way,
                "train_k_shot": b.config.data.k_shot,
            }
            for i, b in enumerate(loaded)
        ],
        "settings": {
            "n_way": n_way,
            "k_shot": k_shot,
            "n_query": n_query,
            "steps": steps,
            "episodes": episodes,
            "train_tasks": train_tasks,
            "tasks_per_batch": min(tasks_per_batch, train_tasks),
            "lr": lr,
            "inner_steps": inner_steps,
            "seed": seed,
        },
        "data": {
            "data_root": str(root),
            "protocol": first.protocol,
            "image_size": first.image_size,
            "rotations": rotations,
            "fusion_split": "val",
            "test_split": "test",
            "fusion_classes": train_ds.num_classes,
            "test_classes": test_ds.num_classes,
        },
        "accuracy": cmp.summary(),
        "fusion_nll": {"mean": nll.mean, "ci95": nll.ci95},
        "best_single_choice_counts": torch.bincount(
            torch.tensor(cmp.best_single_choice), minlength=len(loaded)
        ).tolist(),
        "learned_log_scale": mp["model"]["log_scale"].detach().tolist(),
        "learned_inner_lr": float(mp["model"]["log_inner_lr"].detach().exp()),
        "train_loss_first_last": [losses[0], losses[-1]] if losses else None,
        "per_task_accuracy": cmp.per_task,
        "seconds": {"data": load_s, "fusion_train": train_s, "eval": eval_s, "total": time.perf_counter() - t_all},
    }
    run = FusionRun(results, head, learner, mp, loaded)
    if out is not None:
        from metafit.algorithms.base import flat_meta_params
        from metafit.checkpoint import atomic_write_bytes, fingerprint, save_checkpoint

        out.mkdir(parents=True, exist_ok=True)
        if (out / "checkpoints").is_dir():  # an earlier fusion's head (force): never load a stale one
            import shutil

            shutil.rmtree(out / "checkpoints")
        flat = flat_meta_params(mp)
        meta = {
            "kind": FUSION_FORMAT,
            "n_models": len(loaded),
            "hidden": int(head.attention[0].out_features),
            "learner": {
                "inner_steps": learner.inner_steps,
                "first_order": learner.first_order,
                "use_attention": learner.use_attention,
                "normalize": learner.normalize,
            },
            "bases": [str(b.path) for b in loaded],
            "settings": results["settings"],
            "data": results["data"],
            "fingerprint": fingerprint(flat),
            "torch": torch.__version__,
        }
        run.checkpoint = save_checkpoint(out / "checkpoints", steps, {f"meta/{k}": v for k, v in flat.items()}, meta)
        results["checkpoint"] = str(run.checkpoint)
        run.json_path = out / "fusion.json"
        (out / "fusion.md").write_text(run.markdown(), encoding="utf-8")
        atomic_write_bytes(run.json_path, (json.dumps(results, indent=1) + "\n").encode())
    return run


class FusionCheckpoint(NamedTuple):
    """A fusion head loaded by :func:`load_fusion`.

    Attributes:
        head: The :class:`FusionHead` (its own tensors hold the trained values too).
        learner: The :class:`FusionLearner` it was trained with.
        meta_params: ``{"model": params}``, trained, ``requires_grad`` off.
        bases: The base models' checkpoint paths, in model order (:func:`load_base_run`).
        meta: The checkpoint's JSON document.
    """

    head: FusionHead
    learner: FusionLearner
    meta_params: MetaParams
    bases: list[str]
    meta: dict[str, Any]


def load_fusion(path: str | Path) -> FusionCheckpoint:
    """Loads a fusion head written by :func:`run_fusion` / ``metafit fuse``.

    Args:
        path: The ``--out-dir`` folder, its ``checkpoints`` folder or the checkpoint file.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: not a fusion checkpoint, or a damaged one.

    Example:
        >>> ck = load_fusion("runs/fusion")  # doctest: +SKIP
        >>> bases = [load_base_run(p) for p in ck.bases]  # doctest: +SKIP
        >>> logits = fuse(bases, ck.head, ck.meta_params, sx, sy, qx, learner=ck.learner)  # doctest: +SKIP
    """
    from metafit.algorithms.base import flat_meta_params
    from metafit.checkpoint import check_fingerprint, fingerprint, load_checkpoint
    from metafit.seeding import seeded

    ck = load_checkpoint(path)
    if ck.meta.get("kind") != FUSION_FORMAT:
        raise ValueError(
            f"{ck.path} is not a fusion checkpoint: expected kind {FUSION_FORMAT!r} (written by metafit fuse), "
            f"got {ck.meta.get('kind')!r}"
        )
    try:
        n_models, hidden = int(ck.meta["n_models"]), int(ck.meta["hidden"])
        learner = FusionLearner(**ck.meta["learner"])
        bases = [str(b) for b in ck.meta["bases"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"fusion checkpoint {ck.path} is incomplete ({type(e).__name__}: {e})") from None
    head = seeded(0, lambda: FusionHead(n_models, hidden=hidden))
    expected = fingerprint(flat_meta_params({"model": dict(head.named_parameters())}))
    check_fingerprint(expected, ck.meta.get("fingerprint", []), where=str(ck.path))
    saved = ck.group("meta/model")
    head.load_state_dict({k: saved[k] for k, _ in head.named_parameters()}, strict=False)
    for p_ in head.parameters():
        p_.requires_grad_(False)
    mp = {"model": params_of(head, requires_grad=False)}
    return FusionCheckpoint(head, learner, mp, bases, ck.meta)


def fusion_markdown(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`summarize_comparison` (accuracies in %)."""
    lines = ["| method | accuracy (%) ± 95% CI | fusion − method (paired) ± 95% CI |", "|---|---|---|"]
    for name, s in summary.items():
        d = s.get("diff_vs_fusion")
        diff = "—" if d is None else f"{round(100 * d['mean'], 2) + 0.0:+.2f} ± {100 * d['ci95']:.2f}"
        lines.append(f"| {name} | {100 * s['mean']:.2f} ± {100 * s['ci95']:.2f} | {diff} |")
    return "\n".join(lines) + "\n"
