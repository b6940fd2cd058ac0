"""Meta-learned fusion of frozen base models for few-shot classification.

Given ``M`` frozen base models (any callables ``x -> (B, D_m)`` embeddings or class-score
vectors, e.g. ProtoNet embedding networks trained on different alphabets or seeds), the
:class:`FusionLearner` meta-learns, across tasks, how to turn their ``M`` outputs into one
prediction and how to adapt that mapping to a new task from its support set.

Design
------
1. **Base outputs, computed once per task.** The base models are frozen, so
   :func:`embed_task` runs each of them once on the task (support and query in ONE batch, as
   ProtoNets are trained with batch-statistics normalisation) and returns an *embedded task*:
   ``support_x (S, M, D)``, ``query_x (Q, M, D)`` (``D = max D_m``, zero padding, which leaves
   squared distances unchanged). Everything below works on embedded tasks, so meta-training the
   fusion never runs a base model again and the engine (vmap or loop path) can train it.
2. **Per-model ProtoNet logits** (Snell et al., NeurIPS 2017): model ``m`` scores query ``q``
   against class ``c`` by ``L_m[q, c] = -||e_m(q) - p_{m,c}||^2`` with prototypes ``p_{m,c}``
   the class means of the support embeddings. The fusion divides them by the model's mean
   squared distance between the task's prototypes (:func:`prototype_spread`), so that the
   logits of models with different embedding scales are in comparable units.
3. **Support statistics without query labels.** Leave-one-out (LOO) support logits: support point
   ``i`` is scored against prototypes from which it is removed. With ``K = 1`` the point's own
   class would have no prototype left, so LOO is impossible: there we use the in-sample support
   logits (own-class distance 0), whose cross-entropy measures how well model ``m`` separates the
   task's classes at its current scale (a "margin" statistic; its accuracy is always 1).
4. **Fusion.** The fused logits are a product of experts with per-task, per-model log-weights
   ``w_m``: ``L[q, c] = sum_m exp(w_m) * L_m[q, c]``. The weights start from meta-learned
   per-model log-scales ``beta_m`` plus an attention term ``a(stats_m)``: a small MLP shared by
   all models (so it is independent of the order of the models) on each model's LOO support
   cross-entropy and accuracy, absolute and relative to the other models (initialised to 0).
5. **Adaptation** (MAML, Finn et al. ICML 2017, on the fusion weights only): ``inner_steps``
   gradient steps on the LOO support cross-entropy of the fused logits w.r.t. ``w``, with a
   meta-learned step size (Meta-SGD style, Li et al. 2017). The meta-objective is the query
   cross-entropy after adaptation; second order by default (the weights are tiny).

With ``M = 1`` the fused logits are a positive multiple of the single model's logits, so the
predictions (and accuracy) are exactly the single model's.

Baselines (:func:`uniform_average`, :func:`best_single`, :func:`stacking`), all on embedded
tasks: uniform averaging of the ``M`` models' probabilities; the single model with the best LOO
support accuracy (ties, and every ``K = 1`` case where LOO accuracy is undefined, broken by the
lowest LOO / in-sample support cross-entropy); and stacking in the scikit-learn
``StackingClassifier`` sense (final estimator = L2-regularised multinomial logistic regression,
C = 1 as scikit-learn's default, fitted with L-BFGS on the base models' *held-out* support
probabilities; the held-out predictions are the LOO ones, i.e. K-fold cross-validation with one
fold per shot; with ``K = 1`` cross-validation is impossible and the in-sample probabilities are
used, which over-trusts every model). :func:`stacking` with ``symmetric=True`` is a
class-symmetric variant (one weight per model shared by all classes, a conditional logit),
better suited to few-shot tasks whose label order is arbitrary.

Base models from checkpoints: :func:`load_base_model` (metafit checkpoints,
:mod:`metafit.checkpoint`, into a module you build). The pipeline on trained runs (what
``metafit fuse`` runs: load the runs, meta-train the fusion with :func:`meta_train_fusion`,
compare with :func:`compare_fusion`, write results) is application code:
:mod:`metafit.app.fuse`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit.algorithms.base import LearnerSpec, MetaParams, Metrics
from metafit.algorithms.maml import inner_gradients
from metafit.algorithms.protonet import prototypes, squared_distances
from metafit.data.task import Task, TaskBatch, stack_tasks
from metafit.functional import Buffers, apply, params_of

__all__ = [
    "BaseModel",
    "embed_task",
    "embed_tasks",
    "model_logits",
    "loo_logits",
    "support_stats",
    "prototype_spread",
    "FusionHead",
    "FusionLearner",
    "FusionState",
    "fuse",
    "uniform_average",
    "best_single",
    "stacking",
    "load_base_model",
    "N_STATS",
    "FUSION_METHOD",
    "meta_train_fusion",
    "PoolBatches",
    "FusionComparison",
    "compare_fusion",
    "summarize_comparison",
]

BaseModel = Callable[[Tensor], Tensor]
N_STATS = 4


# -- base outputs -----------------------------------------------------------------------------


def embed_task(models: Sequence[BaseModel], task: Task) -> Task:
    """Runs every frozen base model once on a task and returns the embedded task.

    Support and query are embedded in one batch per model (transductive, as ProtoNets are
    trained in metafit). Outputs are flattened and zero-padded to the largest size.

    Args:
        models: ``M`` callables ``(B, *input_shape) -> (B, D_m)`` (or ``(B, ...)``, flattened).
        task: A classification :class:`Task` with ``n_way`` set.

    Returns:
        :class:`Task` with ``support_x (S, M, D)``, ``query_x (Q, M, D)``, the same labels and
        ``n_way``.
    """
    if not models:
        raise ValueError("embed_task needs at least one base model")
    s = task.n_support
    outs = []
    with torch.no_grad():
        x = torch.cat([task.support_x, task.query_x])
        for m in models:
            outs.append(m(x).flatten(1).detach())
    d = max(o.shape[1] for o in outs)
    e = torch.stack([F.pad(o, (0, d - o.shape[1])) for o in outs], 1)  # (S+Q, M, D)
    return Task(e[:s], task.support_y, e[s:], task.query_y, n_way=task.n_way)


def embed_tasks(models: Sequence[BaseModel], tasks: TaskBatch | Sequence[Task]) -> TaskBatch | list[Task]:
    """:func:`embed_task` for each task; a :class:`TaskBatch` if the shapes allow stacking."""
    out = [embed_task(models, t) for t in tasks]
    try:
        return stack_tasks(out)
    except ValueError:
        return out


def model_logits(support_e: Tensor, support_y: Tensor, x_e: Tensor, n_way: int) -> Tensor:
    """Per-model ProtoNet logits ``-||e_m(x) - p_{m,c}||^2``.

    Args:
        support_e: ``(S, M, D)`` support embeddings.
        support_y: ``(S,)`` labels.
        x_e: ``(B, M, D)`` embeddings to score.
        n_way: Classes.

    Returns:
        ``(M, B, n_way)``.
    """
    m = support_e.shape[1]
    rows = []
    for i in range(m):
        p = prototypes(support_e[:, i], support_y, n_way)
        rows.append(-squared_distances(x_e[:, i], p))
    return torch.stack(rows)


def loo_logits(support_e: Tensor, support_y: Tensor, n_way: int) -> Tensor:
    """Leave-one-out support logits per model (in-sample for classes with one shot).

    Support point ``i`` of class ``c`` with ``n_c > 1`` shots is scored against
    ``p_c^{-i} = (n_c p_c - e_i) / (n_c - 1)`` and the other classes' full prototypes. With
    ``n_c = 1`` (``K = 1``) the point keeps its own prototype (in-sample; distance 0).

    Args:
        support_e: ``(S, M, D)``.
        support_y: ``(S,)``.
        n_way: Classes.

    Returns:
        ``(M, S, n_way)``.
    """
    onehot = F.one_hot(support_y, n_way).to(support_e.dtype)  # (S, N)
    counts = onehot.sum(0)  # (N,)
    own = onehot @ counts  # (S,) shots of each point's class
    rows = []
    for i in range(support_e.shape[1]):
        e = support_e[:, i]  # (S, D)
        p = prototypes(e, support_y, n_way)  # (N, D)
        d = squared_distances(e, p)  # (S, N)
        p_own = onehot @ p  # (S, D) own-class prototype
        n = own[:, None]
        p_loo = torch.where(n > 1, (n * p_own - e) / (n - 1).clamp_min(1.0), p_own)
        d_own = (e - p_loo).pow(2).sum(-1)  # (S,)
        rows.append(-(d * (1 - onehot) + d_own[:, None] * onehot))
    return torch.stack(rows)


def prototype_spread(support_e: Tensor, support_y: Tensor, n_way: int) -> Tensor:
    """Per-model mean squared distance between distinct class prototypes, ``(M,)``.

    The natural unit of a model's ProtoNet logits on this task (it needs only the support set,
    also with ``K = 1``). Dividing by it makes the logits of differently scaled models comparable.
    """
    off = 1.0 - torch.eye(n_way, dtype=support_e.dtype)
    rows = []
    for i in range(support_e.shape[1]):
        p = prototypes(support_e[:, i], support_y, n_way)
        rows.append((squared_distances(p, p) * off).sum() / max(n_way * (n_way - 1), 1))
    return torch.stack(rows).clamp_min(1e-12)


def support_stats(loo: Tensor, support_y: Tensor, log_scale: Tensor) -> Tensor:
    """Per-model support statistics fed to the fusion attention.

    Args:
        loo: ``(M, S, N)`` LOO support logits (unit scale).
        support_y: ``(S,)``.
        log_scale: ``(M,)`` per-model log-scales applied before the cross-entropy.

    Returns:
        ``(M, N_STATS)``: LOO cross-entropy, LOO accuracy, and both minus their mean over models.
    """
    m, s, n = loo.shape
    scaled = loo * log_scale.exp()[:, None, None]
    logp = scaled.log_softmax(-1)  # (M, S, N)
    onehot = F.one_hot(support_y, n).to(loo.dtype)  # (S, N)
    ce = -(logp * onehot).sum(-1).mean(-1)  # (M,)
    acc = (F.one_hot(loo.argmax(-1), n).to(loo.dtype) * onehot).sum(-1).mean(-1)  # (M,)
    ce, acc = ce.detach(), acc.detach()
    return torch.stack([ce, acc, ce - ce.mean(), acc - acc.mean()], -1)


# -- the learner ------------------------------------------------------------------------------


class FusionHead(nn.Module):
    """The fusion's meta-parameters (a plain ``nn.Module`` so that the engine can train it).

    Args:
        n_models: ``M``.
        hidden: Hidden size of the attention MLP over support statistics.
        init_scale: Initial per-model scale ``exp(beta_m)`` (default ``10 / M``: with normalised
            logits (unit = mean squared distance between prototypes) a scale of about 10 gives
            confident but not saturated distributions; dividing by ``M`` averages the models).
        init_inner_lr: Initial inner-loop step size (meta-learned in log space).

    Attributes:
        log_scale: ``(M,)`` per-model log-scales ``beta_m``.
        attention: MLP ``(N_STATS,) -> (1,)`` shared by all models; last layer zero-initialised.
        log_inner_lr: ``()`` log of the inner step size.
    """

    def __init__(
        self, n_models: int, *, hidden: int = 16, init_scale: float | None = None, init_inner_lr: float = 0.5
    ) -> None:
        super().__init__()
        if n_models < 1:
            raise ValueError(f"n_models must be >= 1, got {n_models}")
        self.n_models = n_models
        scale = 10.0 / n_models if init_scale is None else init_scale
        self.log_scale = nn.Parameter(torch.full((n_models,), float(torch.tensor(scale).log())))
        self.attention = nn.Sequential(nn.Linear(N_STATS, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.attention[2].weight)
        nn.init.zeros_(self.attention[2].bias)
        self.log_inner_lr = nn.Parameter(torch.tensor(float(torch.tensor(init_inner_lr).log())))

    def forward(self, stats: Tensor) -> Tensor:
        """Initial per-task log-weights ``(M,)`` from support statistics ``(M, N_STATS)``."""
        return self.log_scale + self.attention(stats).squeeze(-1)


class FusionState(NamedTuple):
    """A fusion adapted to one task.

    Attributes:
        support_e: ``(S, M, D)`` support embeddings.
        support_y: ``(S,)`` labels.
        n_way: Classes.
        log_weights: ``(M,)`` adapted per-model log-weights ``w``.
        unit: ``(M,)`` per-model logit unit (:func:`prototype_spread`, or ones).
    """

    support_e: Tensor
    support_y: Tensor
    n_way: int
    log_weights: Tensor
    unit: Tensor


def _fused(logits: Tensor, log_weights: Tensor) -> Tensor:
    # (M, B, N), (M,) -> (B, N)
    return (logits * log_weights.exp()[:, None, None]).sum(0)


@dataclass(frozen=True)
class FusionLearner:
    """Meta-learned fusion of ``M`` frozen base models (see the module docstring).

    The model is a :class:`FusionHead`; tasks are *embedded* tasks (:func:`embed_task`).

    Args:
        inner_steps: Gradient steps on the fusion log-weights per task (0: no adaptation, the
            weights come from the meta-learned scales and the attention only).
        first_order: Treat the inner gradients as constants.
        use_attention: Condition the initial weights on support statistics.
        normalize: Express each model's logits in units of its :func:`prototype_spread` on the
            task, so that models with different embedding scales are comparable (a positive
            per-task factor: the single-model predictions are unchanged).

    Example:
        >>> import torch
        >>> head, algo = FusionHead(2), FusionLearner()
        >>> mp = algo.init(head)
        >>> g = torch.Generator().manual_seed(0)
        >>> task = Task(torch.randn(6, 2, 4, generator=g), torch.arange(3).repeat(2),
        ...             torch.randn(3, 2, 4, generator=g), torch.arange(3), n_way=3)
        >>> algo.loss(head, mp, {}, task)[1]["accuracy"].shape
        torch.Size([])
    """

    inner_steps: int = 1
    first_order: bool = False
    use_attention: bool = True
    normalize: bool = True
    criterion: str = "cross_entropy"

    def __post_init__(self) -> None:
        if not isinstance(self.inner_steps, int) or self.inner_steps < 0:
            raise ValueError(f"inner_steps must be an int >= 0, got {self.inner_steps!r}")
        if self.criterion != "cross_entropy":
            raise ValueError("FusionLearner is a classifier: criterion must be 'cross_entropy'")

    @property
    def spec(self) -> LearnerSpec:
        """A classifier of embedded tasks; its few inner steps are not a model inner loop."""
        return LearnerSpec(
            tasks="classification",
            inner_loop=False,
            second_order=not self.first_order and self.inner_steps > 0,
            head="none",
            embeds=False,
        )

    def init(self, model: nn.Module, *, generator: torch.Generator | None = None) -> MetaParams:
        """``{"model": params}`` of the :class:`FusionHead`."""
        return {"model": params_of(model)}

    def adapt(
        self,
        model: nn.Module,
        meta_params: MetaParams,
        buffers: Buffers,
        support_x: Tensor,
        support_y: Tensor,
        *,
        n_way: int | None = None,
        create_graph: bool | None = None,
    ) -> FusionState:
        """Per-task fusion weights from the embedded support set.

        Args:
            support_x: ``(S, M, D)`` base-model embeddings of the support set.
            support_y: ``(S,)`` labels.
            n_way: Classes (default ``max(support_y) + 1``, not vmappable).
            create_graph: Differentiate through the inner steps (default ``not first_order``).
        """
        if n_way is None:
            n_way = int(support_y.max()) + 1
        p = meta_params["model"]
        if support_x.dim() != 3 or support_x.shape[1] != p["log_scale"].shape[0]:
            raise ValueError(
                f"support_x must be embedded (S, M={p['log_scale'].shape[0]}, D) (see embed_task), "
                f"got {tuple(support_x.shape)}"
            )
        if self.normalize:
            unit = prototype_spread(support_x, support_y, n_way)
        else:
            unit = torch.ones(support_x.shape[1], dtype=support_x.dtype)
        loo = loo_logits(support_x, support_y, n_way) / unit[:, None, None]  # (M, S, N)
        if self.use_attention:
            stats = support_stats(loo, support_y, p["log_scale"].detach())
            w = apply(model, p, buffers, stats)
        else:
            w = p["log_scale"]
        lr = p["log_inner_lr"].exp()
        create_graph = (not self.first_order) if create_graph is None else create_graph

        def support_loss(d: dict[str, Tensor]) -> Tensor:
            return F.cross_entropy(_fused(loo, d["w"]), support_y)

        for _ in range(self.inner_steps):
            g = inner_gradients(support_loss, {"w": w}, create_graph=create_graph, data=support_x)["w"]
            w = w - lr * g
        return FusionState(support_x, support_y, n_way, w, unit)

    def predict(
        self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, adapted: FusionState, x: Tensor
    ) -> Tensor:
        """Fused logits ``(B, n_way)`` for embedded inputs ``x (B, M, D)``."""
        logits = model_logits(adapted.support_e, adapted.support_y, x, adapted.n_way)
        return _fused(logits / adapted.unit[:, None, None], adapted.log_weights)

    def loss(self, model: nn.Module, meta_params: MetaParams, buffers: Buffers, task: Task) -> tuple[Tensor, Metrics]:
        """Query cross-entropy of the adapted fusion; metrics ``loss``, ``nll``, ``accuracy``."""
        if task.n_way is None:
            raise ValueError("FusionLearner needs classification tasks with n_way set")
        state = self.adapt(model, meta_params, buffers, task.support_x, task.support_y, n_way=task.n_way)
        out = self.predict(model, meta_params, buffers, state, task.query_x)
        loss = F.cross_entropy(out, task.query_y)
        acc = (out.detach().argmax(-1) == task.query_y).to(loss.dtype).mean()
        return loss, {"loss": loss.detach(), "nll": loss.detach(), "accuracy": acc}


def fuse(
    base_models: Sequence[BaseModel],
    head: FusionHead,
    meta_params: MetaParams | None,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    *,
    n_way: int | None = None,
    learner: FusionLearner | None = None,
) -> Tensor:
    """Fused logits for raw inputs: embeds with the base models, adapts, predicts.

    Args:
        base_models: The ``M`` frozen base models.
        head: The :class:`FusionHead`.
        meta_params: Trained meta-parameters (default: the head's own parameters).
        support_x: ``(S, *input_shape)``.
        support_y: ``(S,)``.
        query_x: ``(Q, *input_shape)``.
        n_way: Classes (default ``max(support_y) + 1``).
        learner: The learner (default ``FusionLearner()``).

    Returns:
        ``(Q, n_way)`` logits.
    """
    learner = learner or FusionLearner()
    mp = meta_params if meta_params is not None else learner.init(head)
    n_way = int(support_y.max()) + 1 if n_way is None else n_way
    dummy_q = torch.zeros(query_x.shape[0], dtype=support_y.dtype)
    t = embed_task(base_models, Task(support_x, support_y, query_x, dummy_q, n_way=n_way))
    state = learner.adapt(head, mp, {}, t.support_x, t.support_y, n_way=n_way, create_graph=False)
    with torch.no_grad():
        return learner.predict(head, mp, {}, state, t.query_x)


# -- baselines --------------------------------------------------------------------------------


def uniform_average(task: Task) -> Tensor:
    """Log of the mean of the ``M`` models' ProtoNet probabilities, ``(Q, N)``."""
    assert task.n_way is not None
    probs = model_logits(task.support_x, task.support_y, task.query_x, task.n_way).softmax(-1)
    return probs.mean(0).clamp_min(1e-30).log()


def best_single(task: Task) -> tuple[Tensor, int]:
    """The logits ``(Q, N)`` of the model with the best LOO support accuracy, and its index.

    Ties (and ``K = 1``, where every model's in-sample accuracy is 1) are broken by the lowest
    LOO (``K = 1``: in-sample) support cross-entropy at unit scale.
    """
    assert task.n_way is not None
    loo = loo_logits(task.support_x, task.support_y, task.n_way)
    m = loo.shape[0]
    stats = support_stats(loo, task.support_y, torch.zeros(m, dtype=loo.dtype))
    ce, acc = stats[:, 0], stats[:, 1]
    best = int(torch.argmax(acc * 1e6 - ce))  # accuracy first, then cross-entropy
    logits = model_logits(
        task.support_x[:, best : best + 1], task.support_y, task.query_x[:, best : best + 1], task.n_way
    )
    return logits[0], best


def _fit_logreg(x: Tensor, y: Tensor, n_classes: int, c: float, steps: int) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression, scikit-learn objective ``C * sum CE + ||W||^2 / 2``."""
    w = torch.zeros(x.shape[1], n_classes, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(n_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=steps, tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        opt.zero_grad()
        obj = c * F.cross_entropy(x @ w + b, y, reduction="sum") + 0.5 * w.pow(2).sum()
        obj.backward()
        return obj

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def stacking(task: Task, *, c: float = 1.0, steps: int = 100, symmetric: bool = False) -> Tensor:
    """Stacking: logistic regression on the base models' support outputs, ``(Q, N)`` logits.

    The scikit-learn ``StackingClassifier`` contract: the final estimator (multinomial logistic
    regression, L2 with inverse strength ``c``, L-BFGS) is fitted on cross-validated base
    outputs (``stack_method="predict_proba"``: the models' probabilities, concatenated). Here the
    cross-validated outputs are the LOO support probabilities; with ``K = 1`` they are in-sample
    (no cross-validation is possible with one example per class).

    Args:
        task: An embedded task.
        c: Inverse regularisation strength (scikit-learn's default 1.0).
        steps: L-BFGS iterations.
        symmetric: Class-symmetric final estimator: ``logit_c = sum_m v_m log p_m(c)``, one weight
            per model shared by all classes (fitted with the same objective).
    """
    assert task.n_way is not None
    n = task.n_way
    loo = loo_logits(task.support_x, task.support_y, n)  # (M, S, N)
    q = model_logits(task.support_x, task.support_y, task.query_x, n)  # (M, Q, N)
    if symmetric:
        feats_s, feats_q = loo.log_softmax(-1), q.log_softmax(-1)  # (M, S, N)
        v = torch.zeros(loo.shape[0], dtype=loo.dtype, requires_grad=True)
        opt = torch.optim.LBFGS([v], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
        y = task.support_y

        def closure() -> Tensor:
            opt.zero_grad()
            logits = (feats_s * v[:, None, None]).sum(0)
            obj = c * F.cross_entropy(logits, y, reduction="sum") + 0.5 * v.pow(2).sum()
            obj.backward()
            return obj

        with torch.enable_grad():
            opt.step(closure)
        return (feats_q * v.detach()[:, None, None]).sum(0)
    xs = loo.softmax(-1).permute(1, 0, 2).flatten(1)  # (S, M*N)
    xq = q.softmax(-1).permute(1, 0, 2).flatten(1)
    w, b = _fit_logreg(xs, task.support_y, n, c, steps)
    return xq @ w + b


# -- checkpoints ------------------------------------------------------------------------------


def load_base_model(path: str | Path, model: nn.Module, *, group: str = "model") -> nn.Module:
    """Loads a metafit checkpoint's meta-parameters into ``model`` and freezes it.

    The checkpoint (:func:`metafit.checkpoint.load_checkpoint`: a ``step_*.json`` file, its
    ``.safetensors``, a checkpoints folder or a run folder) must hold the model's parameters as
    ``<prefix>/<group>/<name>`` or ``<group>/<name>`` tensors (``group`` is the meta-parameter
    group, ``"model"`` for every metafit learner).

    Args:
        path: Where the checkpoint is.
        model: A module of the checkpoint's architecture (its tensors are overwritten).
        group: Meta-parameter group holding the model's parameters.

    Returns:
        ``model`` in eval mode with ``requires_grad`` off, ready to use as a base model.

    Raises:
        ValueError: if no prefix of the checkpoint's tensors matches the model's parameters
            (names and shapes).
    """
    from metafit.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    shapes = {k: tuple(v.shape) for k, v in model.named_parameters()}
    wanted = set(shapes)
    suffix = f"{group}/"
    candidates: dict[str, dict[str, Tensor]] = {}
    for key, t in ck.tensors.items():
        i = key.find(suffix)
        while i != -1:
            if i == 0 or key[i - 1] == "/":
                candidates.setdefault(key[: i + len(suffix)], {})[key[i + len(suffix) :]] = t
            i = key.find(suffix, i + 1)
    for _prefix, tensors in sorted(candidates.items(), key=lambda kv: len(kv[0])):
        if wanted <= set(tensors) and all(tuple(tensors[k].shape) == shapes[k] for k in wanted):
            state = {k: v for k, v in tensors.items() if k in wanted}
            model.load_state_dict(state, strict=False)
            model.eval()
            for p_ in model.parameters():
                p_.requires_grad_(False)
            return model
    raise ValueError(
        f"checkpoint {ck.path} holds no '{group}/<name>' tensors matching the model's parameters "
        f"{sorted(wanted)[:5]}...; its keys start with {sorted(ck.tensors)[:5]}"
    )


# -- meta-training and comparison on embedded tasks ---------------------------------------------

#: Name of the fused method in comparisons (the reference of the paired differences).
FUSION_METHOD = "fusion (meta-learned)"


def meta_train_fusion(
    tasks: TaskBatch | Sequence[Task],
    n_models: int,
    *,
    steps: int,
    generator: torch.Generator,
    tasks_per_batch: int = 16,
    lr: float = 1e-2,
    learner: FusionLearner | None = None,
    head: FusionHead | None = None,
    seed: int = 0,
    path: str = "vmap",
) -> tuple[FusionHead, MetaParams, list[float]]:
    """Meta-trains a fusion on a fixed pool of embedded tasks.

    Each step draws ``tasks_per_batch`` tasks of the pool without replacement
    (``torch.randperm(len(pool), generator=generator)[:tasks_per_batch]``) and takes one Adam step
    on their mean query loss (:class:`metafit.engine.Trainer`).

    Args:
        tasks: Embedded tasks (:func:`embed_task`) of one shape.
        n_models: ``M``, the number of base models the tasks were embedded with.
        steps: Meta-training steps (0: the initial fusion).
        generator: CPU generator choosing the meta-batches (the only randomness besides ``seed``).
        tasks_per_batch: Tasks per meta-batch (at most the pool size).
        lr: Adam learning rate.
        learner: The learner (default ``FusionLearner()``).
        head: The head to train (default ``FusionHead(n_models)`` initialised under ``seed``).
        seed: Seed of the default head's initialisation (global RNG untouched).
        path: Engine path (``"vmap"``, ``"loop"`` or ``"auto"``).

    Returns:
        ``(head, meta_params, losses)``: the head (its own parameters set to the trained values),
        the trained meta-parameters and the meta-batch loss of every step.
    """
    from metafit.engine import Trainer
    from metafit.seeding import seeded

    pool = list(tasks)
    if not pool:
        raise ValueError("meta_train_fusion needs at least one embedded task")
    learner = learner or FusionLearner()
    head = head if head is not None else seeded(seed, lambda: FusionHead(n_models))
    trainer = Trainer(learner, head, optimizer=lambda p: torch.optim.Adam(p, lr=lr), path=path)  # type: ignore[arg-type]
    results = trainer.fit(PoolBatches(pool, tasks_per_batch, generator=generator), steps)
    losses = [float(r.metrics["loss"]) for r in results]
    assert trainer.meta_params is not None
    with torch.no_grad():
        head.load_state_dict(trainer.meta_params["model"], strict=False)
    return head, trainer.meta_params, losses


class PoolBatches:
    """Endless meta-batches drawn without replacement from a fixed pool of same-shape tasks.

    Each batch is ``stack_tasks([pool[j] for j in torch.randperm(len(pool), generator=g)[:size]])``.
    """

    def __init__(self, pool: Sequence[Task], size: int, *, generator: torch.Generator) -> None:
        if not pool:
            raise ValueError("pool must hold at least one task")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        self.pool, self.size, self.generator = list(pool), size, generator

    def __iter__(self) -> Iterator[TaskBatch]:
        while True:
            idx = torch.randperm(len(self.pool), generator=self.generator)[: self.size]
            yield stack_tasks([self.pool[int(j)] for j in idx])


def _accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(-1) == y).double().mean())


@dataclass
class FusionComparison:
    """Per-task results of the fusion and its baselines on the same embedded tasks.

    Attributes:
        per_task: ``{method: [query accuracy per task]}``; methods are :data:`FUSION_METHOD`,
            ``"base model m"`` for each model, ``"uniform average"``, ``"best single (support)"``,
            ``"stacking (LR, sklearn contract)"`` and ``"stacking (class-symmetric LR)"``.
        fusion_nll: Query cross-entropy (nats per query) of the fusion per task.
        best_single_choice: The model :func:`best_single` picked on each task.
    """

    per_task: dict[str, list[float]]
    fusion_nll: list[float]
    best_single_choice: list[int]

    def summary(self) -> dict[str, dict[str, Any]]:
        """:func:`summarize_comparison` of the accuracies (paired against the fusion)."""
        return summarize_comparison(self.per_task)


def compare_fusion(
    learner: FusionLearner, head: FusionHead, meta_params: MetaParams, tasks: TaskBatch | Sequence[Task]
) -> FusionComparison:
    """Scores the fusion, each base model and the baselines on the same embedded tasks.

    Args:
        learner: The fusion learner.
        head: Its head.
        meta_params: Trained meta-parameters.
        tasks: Embedded held-out tasks (:func:`embed_task`).

    Returns:
        :class:`FusionComparison`.
    """
    from metafit.evaluation import evaluate

    tasks = list(tasks)
    r = evaluate(learner, head, meta_params, tasks)
    per: dict[str, list[float]] = {FUSION_METHOD: list(r.per_task["accuracy"])}
    chosen: list[int] = []
    for t in tasks:
        assert t.n_way is not None
        logits = model_logits(t.support_x, t.support_y, t.query_x, t.n_way)
        for m in range(logits.shape[0]):
            per.setdefault(f"base model {m}", []).append(_accuracy(logits[m], t.query_y))
        per.setdefault("uniform average", []).append(_accuracy(uniform_average(t), t.query_y))
        bl, b = best_single(t)
        chosen.append(b)
        per.setdefault("best single (support)", []).append(_accuracy(bl, t.query_y))
        per.setdefault("stacking (LR, sklearn contract)", []).append(_accuracy(stacking(t), t.query_y))
        per.setdefault("stacking (class-symmetric LR)", []).append(_accuracy(stacking(t, symmetric=True), t.query_y))
    return FusionComparison(per, list(r.per_task["nll"]), chosen)


def summarize_comparison(
    per_task: Mapping[str, Sequence[float]], reference: str = FUSION_METHOD
) -> dict[str, dict[str, Any]]:
    """Mean ± 95% CI of each method and its paired difference to ``reference``.

    Args:
        per_task: ``{method: per-task values}``, all over the same tasks in the same order.
        reference: The method the others are compared to (``reference - method`` per task).

    Returns:
        ``{method: {"mean", "ci95", "n", "diff_vs_fusion": {"mean", "ci95"} or None}}``
        (:func:`metafit.evaluation.summarize`).
    """
    from metafit.evaluation import summarize

    ref = torch.tensor(list(per_task[reference]), dtype=torch.float64)
    out: dict[str, dict[str, Any]] = {}
    for name, values in per_task.items():
        s = summarize(list(values))
        d = None if name == reference else summarize(ref - torch.tensor(list(values), dtype=torch.float64))
        out[name] = {
            "mean": s.mean,
            "ci95": s.ci95,
            "n": s.n,
            "diff_vs_fusion": None if d is None else {"mean": d.mean, "ci95": d.ci95},
        }
    return out
