"""Warm starts: meta-parameters initialised from another run's weights.

Meta-Baseline (Chen, Liu, Xu, Darrell & Wang, ICCV 2021, arXiv 2003.04390) pretrains a classifier
(:mod:`metafit.algorithms.pretrain`) and then meta-trains a cosine ProtoNet
(``MetricLearner(CosineHead())``) starting from the pretrained backbone::

    mp = MetricLearner(CosineHead()).init(model)
    mp = init_from(mp, pretrained_meta_params["model"])

Every name of the target group must be found in the source with the same shape; a missing name
or a mismatched shape is a ValueError naming the parameter and both shapes. Source names not used
by the target (a pretraining classifier, another head) are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from metafit.algorithms.base import MetaParams
from metafit.functional import Params

__all__ = ["init_from"]


def _rename(name: str, prefix_map: Mapping[str, str]) -> str:
    # longest matching source prefix wins
    for src in sorted(prefix_map, key=len, reverse=True):
        if name.startswith(src):
            return prefix_map[src] + name[len(src) :]
    return name


def init_from(
    meta_params: MetaParams,
    source_params: Params,
    *,
    prefix_map: Mapping[str, str] | None = None,
    group: str = "model",
    only: str | None = None,
) -> MetaParams:
    """A copy of ``meta_params`` whose group ``group`` holds the tensors of ``source_params``.

    Args:
        meta_params: The target meta-parameters (e.g. a fresh ``learner.init(model)``); not modified.
        source_params: ``{name: tensor}`` of another run, e.g. ``pretrained["model"]``.
        prefix_map: Renames source names before matching: ``{source_prefix: target_prefix}``
            (the longest matching prefix applies), e.g. ``{"backbone.": ""}``.
        group: The target group to fill (``"model"``).
        only: Fill only the target names starting with this prefix (e.g. ``"backbone."``: the
            encoder of an in-context classifier from a pretraining run's network, with
            ``prefix_map={"": "backbone."}``); the other names keep the target's values.

    Returns:
        New meta-parameters: leaf tensors requiring grad, in the target's dtype and device; the
        other groups are detached copies of the target's.

    Raises:
        TypeError: ``source_params`` is a dict of groups (pass one group, e.g. ``source["model"]``).
        ValueError: ``group`` not in ``meta_params``; a target name missing from the (renamed)
            source; a shape mismatch (the message names the parameter, the expected and the
            actual shape); two source names renamed onto one.
    """
    if group not in meta_params:
        raise ValueError(f"group must be one of the target's groups {sorted(meta_params)}, got {group!r}")
    if not isinstance(source_params, Mapping):
        raise TypeError(f"source_params must be a dict of tensors, got {type(source_params).__name__}")
    nested = [k for k, v in source_params.items() if not isinstance(v, Tensor)]
    if nested:
        raise TypeError(
            f"source_params must map parameter names to tensors; {nested[0]!r} holds a "
            f"{type(source_params[nested[0]]).__name__} (pass one group, e.g. source['model'])"
        )
    pm = dict(prefix_map or {})
    renamed: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for name, t in source_params.items():
        new = _rename(name, pm)
        if new in renamed:
            raise ValueError(f"prefix_map renames both {origin[new]!r} and {name!r} to {new!r}")
        renamed[new], origin[new] = t, name
    target = {k: v for k, v in meta_params[group].items() if only is None or k.startswith(only)}
    if not target:
        raise ValueError(f"no parameter of group {group!r} starts with only={only!r}")
    missing = [k for k in target if k not in renamed]
    if missing:
        raise ValueError(
            f"source_params has no parameter {missing[0]!r} (expected shape {tuple(target[missing[0]].shape)}); "
            f"{len(missing)} of {len(target)} target parameters missing; source names "
            f"(after prefix_map) include {sorted(renamed)[:6]}"
        )
    for k, v in target.items():
        src = renamed[k]
        if tuple(src.shape) != tuple(v.shape):
            where = k if origin[k] == k else f"{k} (source {origin[k]!r})"
            raise ValueError(
                f"parameter {where}: expected shape {tuple(v.shape)}, got {tuple(src.shape)} in source_params"
            )
    out: MetaParams = {
        g: {k: v.detach().clone().requires_grad_(True) for k, v in d.items()} for g, d in meta_params.items()
    }
    out[group] = {
        k: (renamed[k].detach().to(dtype=v.dtype, device=v.device) if k in target else v.detach())
        .clone()
        .requires_grad_(True)
        for k, v in meta_params[group].items()
    }
    return out
