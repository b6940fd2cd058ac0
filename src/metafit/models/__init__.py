"""Backbones and model-based learners (plain ``nn.Module`` s)."""

from metafit.models.backbones import MLP, Conv4, TaskBatchNorm

__all__ = ["MLP", "Conv4", "TaskBatchNorm"]
