"""Learners: small frozen dataclasses with pure ``init``/``adapt``/``predict``/``loss`` and a ``spec``.

:data:`metafit.algorithms.registry.LEARNERS` maps each learner's name to its builder.
"""

from metafit.algorithms.anil import ANIL
from metafit.algorithms.base import (
    Algorithm,
    EvalSettings,
    GradientLearner,
    LearnerSpec,
    MetaParams,
    Metrics,
    clone_meta_params,
    flat_meta_params,
)
from metafit.algorithms.baselines import RawNearestCentroid
from metafit.algorithms.cnp import CNP, CNPState, calibration, gaussian_nll, interval_coverage, recalibrate
from metafit.algorithms.ensemble import PermutationEnsemble
from metafit.algorithms.film import FiLMAdapted
from metafit.algorithms.heads import CosineHead, EuclideanHead, LDAHead, MahalanobisHead, RidgeHead
from metafit.algorithms.maml import MAML, inner_gradients
from metafit.algorithms.mamlpp import MAMLPlusPlus
from metafit.algorithms.meta_sgd import MetaSGD
from metafit.algorithms.metric import MetricLearner
from metafit.algorithms.neural_process import AllPointsLoss, InContextLearner, NeuralProcess, Padded
from metafit.algorithms.pretrain import (
    CosineClassifierHead,
    FineTune,
    LogisticRegressionHead,
    NearestCentroidHead,
    Pretrain,
)
from metafit.algorithms.protonet import ProtoNet
from metafit.algorithms.registry import LEARNERS, LearnerEntry, build_learner, learner_options
from metafit.algorithms.reptile import Reptile
from metafit.algorithms.warm_start import init_from

__all__ = [
    "AllPointsLoss",
    "FiLMAdapted",
    "PermutationEnsemble",
    "Algorithm",
    "GradientLearner",
    "LearnerSpec",
    "EvalSettings",
    "MetaParams",
    "Metrics",
    "MAML",
    "MetaSGD",
    "ANIL",
    "Reptile",
    "ProtoNet",
    "inner_gradients",
    "clone_meta_params",
    "flat_meta_params",
    "CNP",
    "CNPState",
    "gaussian_nll",
    "interval_coverage",
    "calibration",
    "recalibrate",
    "RawNearestCentroid",
    "MetricLearner",
    "EuclideanHead",
    "CosineHead",
    "LDAHead",
    "MahalanobisHead",
    "RidgeHead",
    "MAMLPlusPlus",
    "Pretrain",
    "LogisticRegressionHead",
    "CosineClassifierHead",
    "NearestCentroidHead",
    "FineTune",
    "NeuralProcess",
    "Padded",
    "InContextLearner",
    "init_from",
    "LEARNERS",
    "LearnerEntry",
    "build_learner",
    "learner_options",
]
