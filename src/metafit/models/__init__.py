"""Backbones and model-based learners (plain ``nn.Module`` s)."""

from metafit.models.backbones import MLP, Conv4, TaskBatchNorm
from metafit.models.cnp import CNPClassifier, CNPRegressor

__all__ = ["MLP", "Conv4", "TaskBatchNorm", "CNPRegressor", "CNPClassifier"]
