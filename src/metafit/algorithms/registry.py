"""The one read-only registry of learners: a name maps to a builder, its paper and its options.

The application (config files, the CLI, the fusion pipeline) reads this registry; nothing keeps
another list of learner names. Each builder takes the task criterion (decided by the data:
``"cross_entropy"`` for classification, ``"mse"`` or ``"gaussian_nll"`` for regression) and the
learner's own keyword options, whose names and defaults are the builder's signature
(:func:`learner_options`). Unknown options are errors that name the valid ones.

Example:
    >>> build_learner("fomaml", "cross_entropy", inner_lr=0.4).spec.second_order
    False
    >>> sorted(learner_options("protonet"))
    ['distance', 'distance_scale', 'joint_embedding']
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from metafit.algorithms.anil import ANIL
from metafit.algorithms.base import Algorithm
from metafit.algorithms.cnp import CNP
from metafit.algorithms.maml import MAML
from metafit.algorithms.meta_sgd import MetaSGD
from metafit.algorithms.protonet import ProtoNet
from metafit.algorithms.reptile import Reptile

__all__ = ["LearnerEntry", "LEARNERS", "build_learner", "learner_options"]


@dataclass(frozen=True)
class LearnerEntry:
    """One registered learner.

    Attributes:
        name: The registry key (``algo.name`` in a config, ``--algo`` on the command line).
        paper: The paper it comes from.
        summary: One line for tables and ``--help``.
        build: ``build(criterion, **options) -> Algorithm``.
    """

    name: str
    paper: str
    summary: str
    build: Callable[..., Algorithm]


def _gradient(cls: Callable[..., Algorithm], **fixed: Any) -> Callable[..., Algorithm]:
    def build(
        criterion: str,
        *,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        eval_inner_lr: float | None = None,
        eval_inner_steps: int | None = None,
    ) -> Algorithm:
        return cls(
            criterion=criterion, inner_lr=inner_lr, inner_steps=inner_steps,
            eval_inner_lr=eval_inner_lr, eval_inner_steps=eval_inner_steps, **fixed,
        )

    return build


def _metasgd(
    criterion: str,
    *,
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    eval_inner_lr: float | None = None,
    eval_inner_steps: int | None = None,
    init_inner_lr: float | None = None,
) -> Algorithm:
    return MetaSGD(
        criterion=criterion, inner_lr=inner_lr, inner_steps=inner_steps, eval_inner_lr=eval_inner_lr,
        eval_inner_steps=eval_inner_steps, init_inner_lr=init_inner_lr,
    )


def _protonet(
    criterion: str, *, distance_scale: float = 1.0, distance: str = "squared_euclidean", joint_embedding: bool = True
) -> Algorithm:
    return ProtoNet(criterion=criterion, distance_scale=distance_scale, distance=distance, joint_embedding=joint_embedding)


def _cnp(criterion: str) -> Algorithm:
    return CNP(criterion="gaussian_nll" if criterion in ("mse", "gaussian_nll") else criterion)


_ENTRIES = (
    LearnerEntry("maml", "Finn, Abbeel & Levine, ICML 2017 (arXiv 1703.03400)",
                 "MAML, second order", _gradient(MAML)),
    LearnerEntry("fomaml", "Finn, Abbeel & Levine, ICML 2017, section 5.2",
                 "first-order MAML", _gradient(MAML, first_order=True)),
    LearnerEntry("metasgd", "Li, Zhou, Chen & Li 2017 (arXiv 1707.09835)",
                 "MAML with learned per-parameter step sizes", _metasgd),
    LearnerEntry("anil", "Raghu, Raghu, Bengio & Vinyals, ICLR 2020 (arXiv 1909.09157)",
                 "MAML adapting only the head", _gradient(ANIL)),
    LearnerEntry("reptile", "Nichol, Achiam & Schulman 2018 (arXiv 1803.02999)",
                 "first-order: move the initialisation towards adapted weights", _gradient(Reptile)),
    LearnerEntry("protonet", "Snell, Swersky & Zemel, NeurIPS 2017 (arXiv 1703.05175)",
                 "Prototypical Networks: nearest class mean in an embedding", _protonet),
    LearnerEntry("cnp", "Garnelo et al., ICML 2018 (arXiv 1807.01613)",
                 "Conditional Neural Process: context encoding, no inner loop", _cnp),
)

LEARNERS: Mapping[str, LearnerEntry] = MappingProxyType({e.name: e for e in _ENTRIES})


def learner_options(name: str) -> dict[str, Any]:
    """``{option: default}`` of a registered learner (the keyword options of its builder)."""
    entry = _entry(name)
    sig = inspect.signature(entry.build)
    return {k: p.default for k, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def build_learner(name: str, criterion: str, **options: Any) -> Algorithm:
    """Builds the learner ``name`` for tasks scored by ``criterion``.

    Raises:
        ValueError: an unknown name or option (the message lists the valid ones), or a bad value.
    """
    entry = _entry(name)
    valid = learner_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"learner {name!r} has no option {unknown[0]!r}; its options are {sorted(valid)}")
    return entry.build(criterion, **options)


def _entry(name: str) -> LearnerEntry:
    try:
        return LEARNERS[name]
    except KeyError:
        raise ValueError(f"learner name must be one of {sorted(LEARNERS)}, got {name!r}") from None
