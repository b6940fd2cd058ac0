"""Test-time ensembling over relabellings: the feature and class permutations of TabPFN.

An in-context learner reads the support set once; its predictions depend (slightly) on the order
of the input columns and on which label vector each class was given, though neither carries any
information about the task. TabPFN (Hollmann et al., ICLR 2023, arXiv 2207.01848, section 4)
averages its predictive distribution over random permutations of both.
:class:`PermutationEnsemble` does that for any learner without an inner loop, by composition:
training is untouched, only ``adapt``/``predict`` change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit.algorithms.base import Algorithm, LearnerSpec, MetaParams, Metrics, support_way
from metafit.data.task import Task
from metafit.functional import Buffers

__all__ = ["PermutationEnsemble", "used_columns"]


class _Member(NamedTuple):
    adapted: Any
    classes: Tensor  # (n_way,): the member's label of each true class
    columns: Tensor | None  # (F,) column order of the member's inputs (None: inputs as given)


class EnsembleContext(NamedTuple):
    """The members' adapted states and permutations, and ``n_way``."""

    members: tuple[_Member, ...]
    n_way: int


def used_columns(support_x: Tensor) -> int:
    """Width of a zero-padded feature table: one past the last column with a non-zero support value.

    Args:
        support_x: ``(S, F)`` feature vectors.
    """
    nonzero = (support_x != 0).any(0).nonzero()
    return int(nonzero.max()) + 1 if len(nonzero) else 0


@dataclass(frozen=True)
class PermutationEnsemble:
    """Average a learner's predictive distribution over permuted classes and columns (TabPFN).

    Member ``m`` relabels the task's classes by a random permutation ``pi_m`` (the support labels
    become ``pi_m[y]``) and, for feature vectors ``(S, F)``, reorders the used columns (those up
    to the last non-zero support column: zero padding stays at the end) by a random permutation
    ``sigma_m``, in support and queries alike. The prediction is the log of the mean of the
    members' class probabilities, read back in the task's own class order. Member 0 is the
    identity, so ``members=1`` is the inner learner. The permutations come from a generator
    seeded with ``seed`` at every ``adapt``: the same task gives the same predictions.

    Args:
        inner: A classifier without an inner loop (``adapt``/``predict``; e.g. the in-context
            classifier ``caml``, a ProtoNet).
        members: Ensemble size ``M >= 1``.
        seed: Seed of the permutations.

    Shapes:
        ``predict(..., x (B, *input_shape))`` -> log-probabilities ``(B, n_way)``.
    """

    inner: Algorithm
    members: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.members, bool) or not isinstance(self.members, int) or self.members < 1:
            raise ValueError(f"members must be an int >= 1, got {self.members!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        spec = self.inner.spec
        if spec.inner_loop or spec.tasks == "regression" or spec.distribution:
            raise ValueError(
                f"PermutationEnsemble needs a classifier without an inner loop, got {type(self.inner).__name__} "
                f"(inner_loop={spec.inner_loop}, tasks={spec.tasks!r})"
            )

    @property
    def spec(self) -> LearnerSpec:
        """The inner learner's spec."""
        return self.inner.spec

    @property
    def criterion(self) -> str:
        """Cross-entropy (a classifier)."""
        return "cross_entropy"

    @property
    def classification(self) -> bool:
        """Always True."""
        return True

    def init(self, model: nn.Module, *, generator: torch.Generator | None = None) -> MetaParams:
        """The inner learner's meta-parameters."""
        return self.inner.init(model, generator=generator)

    def adapt(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        support_x: Tensor,
        support_y: Tensor,
        *,
        n_way: int | None = None,
    ) -> EnsembleContext:
        """Each member's adaptation to its relabelled, column-permuted support set."""
        if support_x.shape[0] == 0:
            raise ValueError("support_x must hold at least one example, got 0 rows")
        n_way = support_way(support_y, n_way)
        g = torch.Generator().manual_seed(self.seed)
        width = used_columns(support_x) if support_x.dim() == 2 else 0
        members = []
        for m in range(self.members):
            if m == 0:
                classes, columns = torch.arange(n_way), None
            else:
                classes = torch.randperm(n_way, generator=g)
                columns = None
                if width > 1:
                    perm = torch.randperm(width, generator=g)
                    columns = torch.cat([perm, torch.arange(width, support_x.shape[1])]).to(support_x.device)
            classes = classes.to(support_y.device)
            sx = support_x if columns is None else support_x[:, columns]
            adapted = self.inner.adapt(model, meta_params, buffers, sx, classes[support_y], n_way=n_way)
            members.append(_Member(adapted, classes, columns))
        return EnsembleContext(tuple(members), n_way)

    def predict(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: EnsembleContext, x: Tensor
    ) -> Tensor:
        """Log of the members' mean class probabilities ``(B, n_way)`` for ``x (B, *input_shape)``."""
        logps = []
        for member in adapted.members:
            xm = x if member.columns is None else x[:, member.columns]
            logits = self.inner.predict(model, meta_params, buffers, member.adapted, xm)
            logps.append(F.log_softmax(logits, -1)[:, member.classes])  # column c: true class c
        return torch.logsumexp(torch.stack(logps), 0) - math.log(len(logps))

    def loss(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, task: Task) -> tuple[Tensor, Metrics]:
        """Query cross-entropy of the ensemble's predictions."""
        state = self.adapt(model, meta_params, buffers, task.support_x, task.support_y, n_way=task.n_way)
        logp = self.predict(model, meta_params, buffers, state, task.query_x)
        loss = F.nll_loss(logp, task.query_y)
        acc = (logp.detach().argmax(-1) == task.query_y).to(loss.dtype).mean()
        return loss, {"loss": loss.detach(), "nll": loss.detach(), "accuracy": acc}
