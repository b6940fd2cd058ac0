"""Meta-learning algorithms: small frozen dataclasses with pure ``init``/``adapt``/``loss``."""

from metafit.algorithms.anil import ANIL
from metafit.algorithms.base import (
    Algorithm,
    MetaParams,
    Metrics,
    clone_meta_params,
    flat_meta_params,
    unflat_meta_params,
)
from metafit.algorithms.maml import MAML, inner_gradients
from metafit.algorithms.meta_sgd import MetaSGD
from metafit.algorithms.protonet import ProtoNet
from metafit.algorithms.reptile import Reptile
from metafit.algorithms.cnp import CNP, CNPState, calibration, gaussian_nll, interval_coverage, recalibrate

__all__ = [
    "Algorithm",
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
    "unflat_meta_params",
    "CNP",
    "CNPState",
    "gaussian_nll",
    "interval_coverage",
    "calibration",
    "recalibrate",
]
