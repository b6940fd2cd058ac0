"""Tasks, task samplers and datasets."""

from metafit.data.augment import RandomShift
from metafit.data.batches import ClassBatchSampler
from metafit.data.datasets import LabelledDataset, from_tensors, load_image_folder, load_support_folder
from metafit.data.gp import GPTasks, ImageCompletionTasks, TabularPriorTasks, gp_eval_tasks, sklearn_table_tasks
from metafit.data.metadataset import (
    EpisodeConfig,
    MultiSourceEpisodes,
    episodes_for_split,
    fixed_multisource_episodes,
    load_metadataset_source,
    write_metadataset_source,
)
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
from metafit.data.protocols import (
    fixed_episodes_with_classes,
    imbalanced_query_episodes,
    inductive,
    within_alphabet_episodes,
)
from metafit.data.sampling import EpisodeSampler, VariableEpisodeSampler, fixed_episodes
from metafit.data.sinusoid import SinusoidTasks, sinusoid_eval_tasks
from metafit.data.sources import (
    SplitDataset,
    check_split_dataset,
    convert_images,
    load_array_dataset,
    load_fashion_mnist,
    load_image_folder_dataset,
    load_kuzushiji_kanji,
    load_sklearn_digits,
    load_table_dataset,
    resolve_dataset,
)
from metafit.data.task import Task, TaskBatch, stack_tasks

__all__ = [
    "RandomShift",
    "ClassBatchSampler",
    "GPTasks",
    "ImageCompletionTasks",
    "TabularPriorTasks",
    "gp_eval_tasks",
    "sklearn_table_tasks",
    "EpisodeConfig",
    "MultiSourceEpisodes",
    "episodes_for_split",
    "fixed_multisource_episodes",
    "load_metadataset_source",
    "write_metadataset_source",
    "fixed_episodes_with_classes",
    "imbalanced_query_episodes",
    "inductive",
    "within_alphabet_episodes",
    "SplitDataset",
    "check_split_dataset",
    "convert_images",
    "load_array_dataset",
    "load_fashion_mnist",
    "load_image_folder_dataset",
    "load_kuzushiji_kanji",
    "load_sklearn_digits",
    "load_table_dataset",
    "resolve_dataset",
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
