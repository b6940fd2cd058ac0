"""Self-distillation of a pretrained classifier: RFS-distill / born-again networks.

Tian, Wang, Krishnan, Tenenbaum & Isola, "Rethinking Few-Shot Image Classification: a Good
Embedding Is All You Need?", ECCV 2020 (arXiv 2003.11539), section 3.3, after Furlanello et al.,
"Born-Again Neural Networks", ICML 2018: a new network of the same architecture (the student) is
pretrained on the same class batches with a mix of the cross-entropy and the distillation loss of
Hinton, Vinyals & Dean (2015) towards a trained copy (the teacher)::

    loss = ce_weight * CE(student_logits, y)
         + kd_weight * T^2 * KL(softmax(teacher_logits / T) || softmax(student_logits / T))

The RFS reference runs use ``ce_weight = kd_weight = 0.5`` and ``T = 4``. At test time the student
is an ordinary :class:`~metafit.algorithms.pretrain.Pretrain` run (its head fitted on the support
set); the teacher plays no part.

:class:`SelfDistill` composes a :class:`~metafit.algorithms.pretrain.Pretrain` student with the
teacher's meta-parameters (a fixed, detached copy); only pretraining batches (empty support set)
are distilled, episodes are scored as by the student.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit.algorithms.base import LearnerSpec, MetaParams, Metrics, check_labels, task_metrics
from metafit.algorithms.pretrain import Pretrain
from metafit.data.task import Task
from metafit.functional import Buffers

__all__ = ["SelfDistill", "distillation_loss"]


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch.

    Args:
        student_logits: ``(B, C)``.
        teacher_logits: ``(B, C)`` (no gradient flows into them).
        temperature: ``T > 0``.

    Returns:
        A scalar.
    """
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)  # written out: vmap has no kl_div rule
    return kl.mean() * (t * t)


@dataclass(frozen=True, eq=False)
class SelfDistill:
    """A :class:`Pretrain` student distilled from a teacher of the same architecture (RFS-distill).

    Args:
        student: The student learner (its classifier must match the teacher's classes).
        teacher: The teacher's meta-parameters ``{"model": ..., "classifier": ...}`` (e.g. a
            pretraining run's); detached copies are kept.
        teacher_learner: The teacher's own :class:`Pretrain` (its classifier kind and scale give
            the teacher's logits); ``None``: the student's.
        ce_weight: Weight of the cross-entropy on the labels.
        kd_weight: Weight of the distillation term.
        temperature: Distillation temperature ``T``.
    """

    student: Pretrain
    teacher: MetaParams = field(repr=False)
    teacher_learner: Pretrain | None = None
    ce_weight: float = 0.5
    kd_weight: float = 0.5
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not isinstance(self.student, Pretrain):
            raise TypeError(f"student must be a Pretrain learner, got {type(self.student).__name__}")
        if not isinstance(self.teacher, dict) or not {"model", "classifier"} <= set(self.teacher):
            got = sorted(self.teacher) if isinstance(self.teacher, dict) else type(self.teacher).__name__
            raise ValueError(f"teacher must hold the groups 'model' and 'classifier' of a pretraining run, got {got}")
        if self.teacher_learner is not None and not isinstance(self.teacher_learner, Pretrain):
            raise TypeError(
                f"teacher_learner must be a Pretrain learner (a pretraining run), got {type(self.teacher_learner).__name__}"
            )
        for name in ("ce_weight", "kd_weight"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if self.ce_weight + self.kd_weight <= 0:
            raise ValueError(f"ce_weight + kd_weight must be > 0, got {self.ce_weight} + {self.kd_weight}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"temperature must be a number > 0, got {self.temperature!r}")
        frozen = {g: {k: v.detach().clone() for k, v in d.items()} for g, d in self.teacher.items()}
        object.__setattr__(self, "teacher", frozen)
        t_classes = frozen["classifier"]["weight"].shape[0]
        if self.student.n_classes is not None and t_classes != self.student.n_classes:
            raise ValueError(
                f"the teacher's classifier has {t_classes} classes, the student's n_classes={self.student.n_classes}"
            )

    @property
    def spec(self) -> LearnerSpec:
        """The student's."""
        return self.student.spec

    def init(self, model: nn.Module, *, generator: torch.Generator | None = None) -> MetaParams:
        """A fresh student (born-again networks start from a new initialisation)."""
        mp = self.student.init(model, generator=generator)
        for name, v in self.teacher["model"].items():
            if name not in mp["model"] or mp["model"][name].shape != v.shape:
                have = None if name not in mp["model"] else tuple(mp["model"][name].shape)
                raise ValueError(
                    f"the teacher's parameter {name!r} has shape {tuple(v.shape)}, the student's model gives {have}: "
                    "the teacher must have the student's architecture"
                )
        return mp

    def adapt(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        support_x: Tensor,
        support_y: Tensor,
        *,
        n_way: int | None = None,
    ) -> Any:
        """The student's test-time head."""
        return self.student.adapt(model, meta_params, buffers, support_x, support_y, n_way=n_way)

    def predict(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: Any, x: Tensor) -> Tensor:
        """The student's predictions."""
        return self.student.predict(model, meta_params, buffers, adapted, x)

    def loss(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, task: Task) -> tuple[Tensor, Metrics]:
        """Pretraining batches (empty support): the mixed loss above; episodes: the student's loss.

        Metrics: the student's ``loss``/``accuracy`` plus ``ce`` and ``kd`` on pretraining batches.
        """
        if task.support_x.shape[0] != 0:
            return self.student.loss(model, meta_params, buffers, task)
        if task.n_way is None or task.n_way != self.student.n_classes:
            raise ValueError(
                f"a pretraining batch (empty support set) must have n_way = n_classes = {self.student.n_classes}, "
                f"got n_way={task.n_way}"
            )
        check_labels("query_y", task.query_y, task.n_way, what="the pretraining classifier")
        logits = self.student.classifier_logits(model, meta_params, buffers, task.query_x)
        with torch.no_grad():
            teacher = self.teacher_learner if self.teacher_learner is not None else self.student
            teacher_logits = teacher.classifier_logits(model, self.teacher, buffers, task.query_x)
        ce = F.cross_entropy(logits, task.query_y)
        kd = distillation_loss(logits, teacher_logits, self.temperature)
        loss = self.ce_weight * ce + self.kd_weight * kd
        metrics = task_metrics("cross_entropy", logits, task.query_y, loss)
        return loss, {**metrics, "ce": ce.detach(), "kd": kd.detach()}
