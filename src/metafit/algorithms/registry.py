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
from metafit.algorithms.base import Algorithm, regression_criterion
from metafit.algorithms.cnp import CNP
from metafit.algorithms.film import build_film
from metafit.algorithms.maml import MAML
from metafit.algorithms.mamlpp import build_mamlpp
from metafit.algorithms.meta_sgd import MetaSGD
from metafit.algorithms.metric import build_lda, build_meta_baseline, build_metric, build_r2d2, build_simple_cnaps
from metafit.algorithms.neural_process import build_in_context, build_neural_process
from metafit.algorithms.pretrain import build_pretrain
from metafit.algorithms.protonet import ProtoNet
from metafit.algorithms.reptile import Reptile

__all__ = ["LearnerEntry", "LEARNERS", "build_learner", "learner_options", "learner_entry"]


@dataclass(frozen=True)
class LearnerEntry:
    """One registered learner.

    Attributes:
        name: The registry key (``algo.name`` in a config, ``--algo`` on the command line).
        paper: The paper it comes from.
        summary: One line for tables and ``--help``.
        build: ``build(criterion, **options) -> Algorithm``.
        network: The kind of network the learner runs: ``"backbone"`` (any model; an embedding
            network or a classifier, as ``spec.head`` says), ``"cnp"`` (a CNP encoder/decoder),
            ``"np"`` (an attentive or transformer neural process, named by the entry) or
            ``"in_context"`` (a backbone inside an in-context transformer).
        batches: What it trains on: ``"episodes"`` (tasks with a support and a query set) or
            ``"classes"`` (ordinary class mini-batches over all training classes: pretraining).
        data_options: Options the application fills from the data (pretraining's ``n_classes``,
            the number of training classes) when the config leaves them out.
        scheduled: The learner's settings follow the meta-iteration (``at_iteration(i)``); the
            training loop runs :class:`metafit.callbacks.LearnerSchedule`.
        np_kind: For ``network="np"``: which network (``"cnp"``, ``"anp"``, ``"tnp"`` of
            :func:`metafit.models.attentive.build_np_network`; default: the entry's name).
    """

    name: str
    paper: str
    summary: str
    build: Callable[..., Algorithm]
    network: str = "backbone"
    batches: str = "episodes"
    data_options: tuple[str, ...] = ()
    scheduled: bool = False
    np_kind: str | None = None


def _gradient(cls: Callable[..., Algorithm], **fixed: Any) -> Callable[..., Algorithm]:
    def build(
        criterion: str,
        *,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        eval_inner_lr: float | None = None,
        eval_inner_steps: int | None = None,
        regression_loss: str = "mse",
        inner_beta: float | None = None,
    ) -> Algorithm:
        return cls(
            criterion=regression_criterion(criterion, regression_loss),
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            eval_inner_lr=eval_inner_lr,
            eval_inner_steps=eval_inner_steps,
            inner_beta=inner_beta,
            **fixed,
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
    regression_loss: str = "mse",
    inner_beta: float | None = None,
) -> Algorithm:
    return MetaSGD(
        criterion=regression_criterion(criterion, regression_loss),
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        eval_inner_lr=eval_inner_lr,
        eval_inner_steps=eval_inner_steps,
        init_inner_lr=init_inner_lr,
        inner_beta=inner_beta,
    )


def _protonet(
    criterion: str, *, distance_scale: float = 1.0, distance: str = "squared_euclidean", joint_embedding: bool = True
) -> Algorithm:
    return ProtoNet(
        criterion=criterion, distance_scale=distance_scale, distance=distance, joint_embedding=joint_embedding
    )


def _cnp(criterion: str) -> Algorithm:
    return CNP(criterion="gaussian_nll" if criterion in ("mse", "gaussian_nll") else criterion)


_ENTRIES = (
    LearnerEntry("maml", "Finn, Abbeel & Levine, ICML 2017 (arXiv 1703.03400)", "MAML, second order", _gradient(MAML)),
    LearnerEntry(
        "fomaml", "Finn, Abbeel & Levine, ICML 2017, section 5.2", "first-order MAML", _gradient(MAML, first_order=True)
    ),
    LearnerEntry(
        "metasgd", "Li, Zhou, Chen & Li 2017 (arXiv 1707.09835)", "MAML with learned per-parameter step sizes", _metasgd
    ),
    LearnerEntry(
        "anil",
        "Raghu, Raghu, Bengio & Vinyals, ICLR 2020 (arXiv 1909.09157)",
        "MAML adapting only the head",
        _gradient(ANIL),
    ),
    LearnerEntry(
        "reptile",
        "Nichol, Achiam & Schulman 2018 (arXiv 1803.02999)",
        "first-order: move the initialisation towards adapted weights",
        _gradient(Reptile),
    ),
    LearnerEntry(
        "protonet",
        "Snell, Swersky & Zemel, NeurIPS 2017 (arXiv 1703.05175)",
        "Prototypical Networks: nearest class mean in an embedding",
        _protonet,
    ),
    LearnerEntry(
        "cnp",
        "Garnelo et al., ICML 2018 (arXiv 1807.01613)",
        "Conditional Neural Process: context encoding, no inner loop",
        _cnp,
        network="cnp",
    ),
    LearnerEntry(
        "mamlpp",
        "Antoniou, Edwards & Storkey, ICLR 2019 (arXiv 1810.09502)",
        "MAML++: multi-step loss, per-layer per-step rates, per-step norm weights, order annealing",
        build_mamlpp,
        scheduled=True,
    ),
    LearnerEntry(
        "metric",
        "Snell, Swersky & Zemel, NeurIPS 2017 (arXiv 1703.05175)",
        "ProtoNet family with a chosen metric head (euclidean, cosine, mahalanobis, ridge, lda)",
        build_metric,
    ),
    LearnerEntry(
        "metabaseline",
        "Chen, Liu, Xu, Darrell & Wang, ICCV 2021 (arXiv 2003.04390)",
        "cosine ProtoNet with a learned temperature (start it from a pretrain run)",
        build_meta_baseline,
    ),
    LearnerEntry(
        "r2d2",
        "Bertinetto, Henriques, Torr & Vedaldi, ICLR 2019 (arXiv 1805.08136)",
        "differentiable closed-form ridge-regression head (Woodbury form)",
        build_r2d2,
    ),
    LearnerEntry(
        "simple_cnaps",
        "Bateni, Goyal, Masrani, Wood & Sigal, CVPR 2020 (arXiv 1912.03432)",
        "Mahalanobis head with shrunk class covariances (no FiLM adaptation network)",
        build_simple_cnaps,
    ),
    LearnerEntry(
        "lda",
        "Fisher, Annals of Eugenics 1936; Ledoit & Wolf, J. Multivariate Analysis 2004",
        "linear discriminant head: one pooled class covariance, Ledoit-Wolf shrinkage per task",
        build_lda,
    ),
    LearnerEntry(
        "film",
        "Requeima et al., NeurIPS 2019 (arXiv 1906.07697); Bateni et al., CVPR 2020 (arXiv 1912.03432)",
        "FiLM-adapted backbone (task embedding: mean prototype) under a metric head (Simple CNAPS by default)",
        build_film,
    ),
    LearnerEntry(
        "pretrain",
        "Chen et al., ICLR 2019 (arXiv 1904.04232); Tian et al., ECCV 2020 (arXiv 2003.11539)",
        "supervised pretraining on all training classes, a head fitted on the support set",
        build_pretrain,
        batches="classes",
        data_options=("n_classes",),
    ),
    LearnerEntry(
        "anp",
        "Kim et al., ICLR 2019 (arXiv 1901.05761)",
        "Attentive Neural Process (deterministic path)",
        build_neural_process,
        network="np",
    ),
    LearnerEntry(
        "tnp",
        "Nguyen & Grover, ICML 2022 (arXiv 2207.04179)",
        "Transformer Neural Process (TNP-D)",
        build_neural_process,
        network="np",
    ),
    LearnerEntry(
        "npcnp",
        "Garnelo et al., ICML 2018 (arXiv 1807.01613)",
        "the CNP as a masked neural process (variable context sizes, e.g. GP tasks)",
        build_neural_process,
        network="np",
        np_kind="cnp",
    ),
    LearnerEntry(
        "caml",
        "Fifty et al., ICLR 2024 (arXiv 2310.10971)",
        "in-context transformer classifier over (embedding, label) tokens",
        build_in_context,
        network="in_context",
    ),
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


def learner_entry(name: str) -> LearnerEntry:
    """The registry entry of ``name`` (a ValueError listing the valid names otherwise)."""
    return _entry(name)


def _entry(name: str) -> LearnerEntry:
    try:
        return LEARNERS[name]
    except KeyError:
        raise ValueError(f"learner name must be one of {sorted(LEARNERS)}, got {name!r}") from None
