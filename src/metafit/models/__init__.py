"""Backbones and model-based learners' networks (plain ``nn.Module`` s)."""

from metafit.models.attentive import (
    AttentiveNP,
    CNPAdapter,
    Detached,
    InContextClassifier,
    TransformerNP,
    build_np_network,
)
from metafit.models.backbones import MLP, Conv4, TaskBatchNorm, task_batch_norm
from metafit.models.cnp import CNPClassifier, CNPRegressor
from metafit.models.fused import fuse_norm_relu_pool
from metafit.models.ops import batch_norm_relu_max_pool

__all__ = [
    "MLP",
    "Conv4",
    "TaskBatchNorm",
    "task_batch_norm",
    "CNPRegressor",
    "CNPClassifier",
    "batch_norm_relu_max_pool",
    "fuse_norm_relu_pool",
    "AttentiveNP",
    "TransformerNP",
    "InContextClassifier",
    "CNPAdapter",
    "Detached",
    "build_np_network",
]
