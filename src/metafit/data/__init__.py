"""Tasks, task samplers and datasets."""

from metafit.data.datasets import LabelledDataset, from_tensors, load_image_folder, load_support_folder
from metafit.data.omniglot import (
    OmniglotData,
    alphabet_names,
    download_omniglot,
    load_omniglot,
    omniglot_alphabets,
    omniglot_split,
    preprocess_image,
    verify_omniglot,
)
from metafit.data.sampling import EpisodeSampler, VariableEpisodeSampler, fixed_episodes
from metafit.data.sinusoid import SinusoidTasks, sinusoid_eval_tasks
from metafit.data.task import Task, TaskBatch, stack_tasks

__all__ = [
    "Task",
    "TaskBatch",
    "stack_tasks",
    "SinusoidTasks",
    "sinusoid_eval_tasks",
    "LabelledDataset",
    "from_tensors",
    "load_image_folder",
    "load_support_folder",
    "EpisodeSampler",
    "VariableEpisodeSampler",
    "fixed_episodes",
    "OmniglotData",
    "load_omniglot",
    "omniglot_split",
    "omniglot_alphabets",
    "alphabet_names",
    "download_omniglot",
    "verify_omniglot",
    "preprocess_image",
]
