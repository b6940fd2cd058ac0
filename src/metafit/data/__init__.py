"""Tasks, task samplers and datasets."""

from metafit.data.sinusoid import SinusoidTasks, sinusoid_eval_tasks
from metafit.data.task import Task, TaskBatch, stack_tasks

__all__ = ["Task", "TaskBatch", "stack_tasks", "SinusoidTasks", "sinusoid_eval_tasks"]
