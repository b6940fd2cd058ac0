"""metafit: functional meta-learning on plain PyTorch modules.

The public API is re-exported here; implementation lives in the submodules.
"""

from metafit.algorithms import ANIL, MAML, Algorithm, MetaParams, MetaSGD, ProtoNet, Reptile
from metafit.data import SinusoidTasks, Task, TaskBatch, sinusoid_eval_tasks, stack_tasks
from metafit.engine import (
    Callback,
    DivergenceError,
    DivergenceGuard,
    Trainer,
    choose_path,
    meta_backward,
    meta_gradients,
)
from metafit.evaluation import EvalResult, Summary, evaluate, summarize
from metafit.functional import apply, buffers_of, params_of
from metafit.seeding import generator, seeded

__version__ = "0.1.0"

__all__ = [
    "Algorithm",
    "MetaParams",
    "MAML",
    "MetaSGD",
    "ANIL",
    "Reptile",
    "ProtoNet",
    "Task",
    "TaskBatch",
    "stack_tasks",
    "SinusoidTasks",
    "sinusoid_eval_tasks",
    "Trainer",
    "Callback",
    "DivergenceGuard",
    "DivergenceError",
    "meta_backward",
    "meta_gradients",
    "choose_path",
    "evaluate",
    "summarize",
    "EvalResult",
    "Summary",
    "apply",
    "params_of",
    "buffers_of",
    "generator",
    "seeded",
    "__version__",
]
