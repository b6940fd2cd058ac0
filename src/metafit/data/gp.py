"""Task families for model-based meta-learners: GP regression, image completion, tabular classification.

* 1-D Gaussian-process regression (:class:`GPTasks`, :func:`gp_eval_tasks`) with RBF, Matérn-5/2
  and periodic kernels, following the GP protocol of the Bootstrapping-NP / TNP reference code
  (Lee et al. 2020; Nguyen & Grover, ICML 2022, arXiv 2207.04179): inputs ``x ~ U[-2, 2]``;
  ``n_context ~ U{3, ..., max_points - 4}`` (``torch.randint(3, max_points - 3)``: 3..46 for the
  default ``max_points = 50``), ``n_target ~ U{3, ..., max_points - n_context - 1}``
  (``torch.randint(3, max_points - n_context)``); per task ``lengthscale ~ U[0.1, 0.6]``, output
  scale ``s ~ U[0.1, 1.0]`` (kernel ``s^2 k(.)``), period ``p ~ U[0.1, 0.5]`` (periodic kernel);
  observation noise ``noise_std = 0.02`` added to the covariance's diagonal. The targets are
  disjoint from the context (the TNP objective scores the targets only).
  :meth:`GPTasks.sample_batch` draws one context and target size per batch (as the reference
  code does); :meth:`GPTasks.sample_padded_batch` draws them per task and pads (see below).
* 2-D image completion (:class:`ImageCompletionTasks`) on the images of any
  :class:`~metafit.data.datasets.LabelledDataset` (Omniglot, Fashion-MNIST, ...): a pixel is a
  point, ``x`` its (row, column) scaled to ``[-1, 1]^2``, ``y`` its intensities.
* Few-shot tabular classification: :class:`TabularPriorTasks` (a synthetic prior in the spirit of
  TabPFN, Hollmann, Müller, Eggensperger & Hutter, ICLR 2023, arXiv 2207.01848: random features
  through a random MLP, ranked into balanced classes), :func:`sklearn_table_tasks` (tasks from the
  iris, wine, breast_cancer and digits tables shipped with scikit-learn) and
  :func:`support_baselines` (logistic regression, gradient boosting and shrinkage LDA fitted on the
  same support rows).

Padding: a padded task appends one column to ``support_x`` and ``query_x`` that is 1 for a real
point and 0 for padding (padded rows are zeros). :func:`pad_tasks` builds such a batch from tasks
of different sizes, :func:`split_mask` splits the column off again, and
:class:`metafit.algorithms.neural_process.Padded` trains and evaluates on them. Every sampler takes
an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metafit.data.datasets import LabelledDataset
from metafit.data.task import Task, TaskBatch

__all__ = [
    "BASELINES",
    "KERNELS",
    "TABLES",
    "GPTasks",
    "ImageCompletionTasks",
    "TabularPriorTasks",
    "gp_eval_tasks",
    "gp_eval_truth",
    "gp_predictive",
    "kernel_matrix",
    "pad_tasks",
    "pixel_coordinates",
    "sample_gp",
    "sample_hyperparameters",
    "sklearn_table_tasks",
    "split_mask",
    "unpad_tasks",
    "standardise_tasks",
    "baseline_applies",
    "support_baseline_logits",
    "support_baselines",
]

KERNELS = ("rbf", "matern52", "periodic")
TABLES = ("iris", "wine", "breast_cancer", "digits")
LENGTHSCALE = (0.1, 0.6)
SCALE = (0.1, 1.0)
PERIOD = (0.1, 0.5)
X_RANGE = (-2.0, 2.0)


def _check_generator(generator: object, who: str) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{who} needs an explicit generator=torch.Generator().manual_seed(seed), got {type(generator).__name__}"
        )
    if generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
    return generator


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


# -- padding -------------------------------------------------------------------------------------


def split_mask(x: Tensor, name: str = "x") -> tuple[Tensor, Tensor]:
    """Splits a padded input into ``(x (N, d), mask (N,) bool)`` (the last column is the 0/1 flag)."""
    if x.dim() != 2 or x.shape[-1] < 2:
        raise ValueError(
            f"{name} must be a padded input of shape (N, d + 1) whose last column flags real points, "
            f"got shape {tuple(x.shape)}"
        )
    return x[..., :-1], x[..., -1] > 0.5


def unpad_tasks(batch: TaskBatch) -> list[Task]:
    """The tasks of a padded batch (:func:`pad_tasks`) at their own sizes, the flag column dropped.

    The inverse of :func:`pad_tasks` for tasks whose real points come first (as it writes them):
    what a learner that cannot read a padding mask (a gradient-based learner's inner loop) scores,
    one task at a time, on the same held-out tasks as a masked neural process.

    Args:
        batch: ``support_x (T, C_max, d + 1)``, ``support_y (T, C_max, ...)``, ``query_x (T,
            T_max, d + 1)``, ``query_y (T, T_max, ...)``.

    Returns:
        ``T`` tasks with ``support_x (C_i, d)``, ``support_y (C_i, ...)``, ``query_x (T_i, d)``,
        ``query_y (T_i, ...)``.

    Raises:
        ValueError: inputs without a flag column, or a padded point before a real one.
    """
    out: list[Task] = []
    for i in range(batch.support_x.shape[0]):
        parts = []
        for name, x, y in (
            ("support_x", batch.support_x[i], batch.support_y[i]),
            ("query_x", batch.query_x[i], batch.query_y[i]),
        ):
            xs, mask = split_mask(x, name)
            n = int(mask.sum())
            if not bool(mask[:n].all()):
                raise ValueError(f"{name} of task {i} has padding before its real points; pad_tasks puts them first")
            parts += [xs[:n], y[:n]]
        out.append(Task(*parts))
    return out


def _pad(t: Tensor, n: int) -> Tensor:
    return torch.cat([t, t.new_zeros(n - t.shape[0], *t.shape[1:])], 0)


def pad_tasks(tasks: Sequence[Task], *, n_support: int | None = None, n_query: int | None = None) -> TaskBatch:
    """Stacks regression tasks of different sizes into one padded :class:`TaskBatch`.

    Args:
        tasks: Tasks with ``support_x (C_i, d)``, ``support_y (C_i, y_dim)`` or ``(C_i,)``, and
            likewise for the query; ``d`` and ``y_dim`` shared.
        n_support: Padded support size (default the largest ``C_i``).
        n_query: Padded query size (default the largest ``T_i``).

    Returns:
        ``support_x (T, n_support, d + 1)``, ``support_y (T, n_support, ...)``, ``query_x (T,
        n_query, d + 1)``, ``query_y (T, n_query, ...)``; the last input column is 1 for a real
        point, 0 for padding (padded rows are zeros).
    """
    if len(tasks) == 0:
        raise ValueError("pad_tasks needs at least one task, got an empty sequence")
    for t in tasks:
        if t.support_x.dim() != 2 or t.query_x.dim() != 2:
            raise ValueError(
                f"pad_tasks needs (N, d) inputs, got support_x {tuple(t.support_x.shape)} and "
                f"query_x {tuple(t.query_x.shape)}"
            )
    ns = max(t.n_support for t in tasks) if n_support is None else n_support
    nq = max(t.n_query for t in tasks) if n_query is None else n_query
    if any(t.n_support > ns for t in tasks) or any(t.n_query > nq for t in tasks):
        raise ValueError(f"n_support={ns} / n_query={nq} is smaller than a task's support or query size")

    def flagged(x: Tensor, n: int) -> Tensor:
        return _pad(torch.cat([x, torch.ones_like(x[:, :1])], -1), n)

    return TaskBatch(
        torch.stack([flagged(t.support_x, ns) for t in tasks]),
        torch.stack([_pad(t.support_y, ns) for t in tasks]),
        torch.stack([flagged(t.query_x, nq) for t in tasks]),
        torch.stack([_pad(t.query_y, nq) for t in tasks]),
    )


# -- Gaussian processes ----------------------------------------------------------------------------


def _as_param(v: Tensor | float, ref: Tensor) -> Tensor:
    t = torch.as_tensor(v, dtype=ref.dtype, device=ref.device)
    return t.reshape(*t.shape, 1, 1)


def kernel_matrix(
    kernel: str,
    x1: Tensor,
    x2: Tensor,
    *,
    lengthscale: Tensor | float,
    scale: Tensor | float,
    period: Tensor | float | None = None,
) -> Tensor:
    """The covariance ``k(x1, x2)`` of one of :data:`KERNELS` (no noise term).

    * ``"rbf"``: ``s^2 exp(-|d|^2 / (2 l^2))``;
    * ``"matern52"``: ``s^2 (1 + sqrt5 r + 5 r^2 / 3) exp(-sqrt5 r)``, ``r = |d| / l``;
    * ``"periodic"``: ``s^2 exp(-2 sin^2(pi |d|_1 / p) / l^2)``.

    Args:
        kernel: The kernel's name.
        x1: ``(..., N, d)``.
        x2: ``(..., M, d)``.
        lengthscale: ``l``, a float or a tensor of the batch shape ``(...)``.
        scale: ``s``, likewise.
        period: ``p`` (periodic kernel only), likewise.

    Returns:
        ``(..., N, M)``.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    ls, s2 = _as_param(lengthscale, x1), _as_param(scale, x1).pow(2)
    d = x1.unsqueeze(-2) - x2.unsqueeze(-3)  # (..., N, M, d)
    if kernel == "rbf":
        return s2 * torch.exp(-0.5 * d.pow(2).sum(-1) / ls.pow(2))
    if kernel == "matern52":
        r = d.pow(2).sum(-1).clamp_min(0).sqrt() / ls
        return s2 * (1 + math.sqrt(5.0) * r + 5.0 * r.pow(2) / 3.0) * torch.exp(-math.sqrt(5.0) * r)
    if period is None:
        raise ValueError("kernel='periodic' needs a period")
    p = _as_param(period, x1)
    return s2 * torch.exp(-2.0 * torch.sin(math.pi * d.abs().sum(-1) / p).pow(2) / ls.pow(2))


def sample_hyperparameters(
    kernel: str, n: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> dict[str, Tensor]:
    """Per-task kernel hyperparameters of the TNP protocol.

    ``lengthscale ~ U[0.1, 0.6]``, ``scale ~ U[0.1, 1.0]`` and, for ``"periodic"``,
    ``period ~ U[0.1, 0.5]``; each ``(n,)``.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    out = {}
    if kernel == "periodic":
        out["period"] = PERIOD[0] + (PERIOD[1] - PERIOD[0]) * torch.rand(n, generator=generator, dtype=dtype)
    out["lengthscale"] = LENGTHSCALE[0] + (LENGTHSCALE[1] - LENGTHSCALE[0]) * torch.rand(
        n, generator=generator, dtype=dtype
    )
    out["scale"] = SCALE[0] + (SCALE[1] - SCALE[0]) * torch.rand(n, generator=generator, dtype=dtype)
    return out


def sample_gp(
    x: Tensor,
    kernel: str,
    *,
    generator: torch.Generator,
    lengthscale: Tensor | float,
    scale: Tensor | float,
    period: Tensor | float | None = None,
    noise_std: float = 0.02,
) -> Tensor:
    """Draws noisy GP function values at ``x``: ``y ~ N(0, K(x, x) + noise_std^2 I)``.

    Args:
        x: ``(T, N, d)`` inputs.
        kernel: One of :data:`KERNELS`.
        generator: Source of the normal draws.
        lengthscale, scale, period: As :func:`kernel_matrix` (floats or ``(T,)``).
        noise_std: Observation noise (its variance goes on the diagonal).

    Returns:
        ``(T, N, 1)`` in ``x``'s dtype (the Cholesky factor is computed in float64).
    """
    x64 = x.to(torch.float64)
    cov = kernel_matrix(kernel, x64, x64, lengthscale=lengthscale, scale=scale, period=period)
    n = x.shape[-2]
    cov = cov + (noise_std**2 + 1e-9) * torch.eye(n, dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    z = torch.randn(*x.shape[:-1], 1, generator=generator, dtype=torch.float64)
    return (chol @ z).to(x.dtype)


@dataclass
class GPTasks:
    """An infinite stream of 1-D GP regression task batches (the TNP protocol; see the module docstring).

    Args:
        kernel: ``"rbf"``, ``"matern52"`` or ``"periodic"``.
        tasks_per_batch: Tasks per batch (16 in the TNP code).
        max_points: ``n_context + n_target < max_points`` (50).
        min_context: Smallest context (3).
        min_target: Smallest target set (3).
        x_range: Input range (``(-2, 2)``).
        noise_std: Observation noise (0.02).
        generator: Source of all randomness (required).
        dtype: Floating dtype of the tasks.
    """

    kernel: str = "rbf"
    tasks_per_batch: int = 16
    max_points: int = 50
    min_context: int = 3
    min_target: int = 3
    x_range: tuple[float, float] = X_RANGE
    noise_std: float = 0.02
    generator: torch.Generator | None = None
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        _check_generator(self.generator, "GPTasks")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        _check_int("tasks_per_batch", self.tasks_per_batch, 1)
        _check_int("min_context", self.min_context, 1)
        _check_int("min_target", self.min_target, 1)
        _check_int("max_points", self.max_points, self.min_context + self.min_target + 1)
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std!r}")

    @property
    def max_context(self) -> int:
        """Largest context size, ``max_points - min_target - 1``."""
        return self.max_points - self.min_target - 1

    @property
    def max_target(self) -> int:
        """Largest target set, ``max_points - min_context - 1``."""
        return self.max_points - self.min_context - 1

    def _draw(self, t: int, n: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        g = self.generator
        assert g is not None
        lo, hi = self.x_range
        x = lo + (hi - lo) * torch.rand(t, n, 1, generator=g, dtype=torch.float64)
        hyp = sample_hyperparameters(self.kernel, t, generator=g)
        y = sample_gp(x, self.kernel, generator=g, noise_std=self.noise_std, **hyp)
        return x.to(self.dtype), y.to(self.dtype), hyp

    def _sizes(self, t: int) -> tuple[Tensor, Tensor]:
        g = self.generator
        ctx = torch.randint(self.min_context, self.max_points - self.min_target, (t,), generator=g)
        u = torch.rand(t, generator=g, dtype=torch.float64)
        n_tar_choices = self.max_points - ctx - self.min_target  # U{min_target .. max_points - ctx - 1}
        tar = self.min_target + (u * n_tar_choices).floor().long()
        return ctx, tar

    def sample_batch(self, n_tasks: int | None = None) -> TaskBatch:
        """``n_tasks`` tasks (default ``tasks_per_batch``) sharing one context and one target size.

        Returns:
            ``support_x (T, C, 1)``, ``support_y (T, C, 1)``, ``query_x (T, Tq, 1)``, ``query_y (T, Tq, 1)``.
        """
        t = self.tasks_per_batch if n_tasks is None else _check_int("n_tasks", n_tasks, 1)
        ctx, tar = (int(v[0]) for v in self._sizes(1))
        x, y, _ = self._draw(t, ctx + tar)
        return TaskBatch(x[:, :ctx], y[:, :ctx], x[:, ctx:], y[:, ctx:])

    def sample_padded_batch(self, n_tasks: int | None = None) -> TaskBatch:
        """``n_tasks`` tasks, each with its own context and target size, padded to fixed widths.

        Returns:
            A padded batch (see :func:`pad_tasks`): ``support_x (T, max_context, 2)``,
            ``support_y (T, max_context, 1)``, ``query_x (T, max_target, 2)``, ``query_y (T,
            max_target, 1)``, always the same shapes.
        """
        return self.sample_padded(n_tasks)[0]

    def sample_padded(self, n_tasks: int | None = None) -> tuple[TaskBatch, dict[str, Tensor]]:
        """As :meth:`sample_padded_batch` (same draws), plus each task's true kernel hyperparameters.

        Returns:
            ``(batch, {"lengthscale": (T,), "scale": (T,)[, "period": (T,)]})`` (float64), e.g. for
            the exact GP predictive (:func:`gp_predictive`), the oracle a neural process approximates.
        """
        t = self.tasks_per_batch if n_tasks is None else _check_int("n_tasks", n_tasks, 1)
        ctx, tar = self._sizes(t)
        x, y, hyp = self._draw(t, self.max_points - 1)
        cw, tw = self.max_context, self.max_target
        cmask = torch.arange(cw).unsqueeze(0) < ctx.unsqueeze(1)  # (T, cw)
        tidx = (ctx.unsqueeze(1) + torch.arange(tw).unsqueeze(0)).clamp_max(x.shape[1] - 1)
        tmask = torch.arange(tw).unsqueeze(0) < tar.unsqueeze(1)
        cm, tm = cmask.to(self.dtype).unsqueeze(-1), tmask.to(self.dtype).unsqueeze(-1)
        qx = torch.gather(x, 1, tidx.unsqueeze(-1)) * tm
        qy = torch.gather(y, 1, tidx.unsqueeze(-1)) * tm
        batch = TaskBatch(torch.cat([x[:, :cw] * cm, cm], -1), y[:, :cw] * cm, torch.cat([qx, tm], -1), qy)
        return batch, hyp

    def __iter__(self) -> Iterator[TaskBatch]:
        while True:
            yield self.sample_batch()


def gp_eval_tasks(
    kernel: str = "rbf",
    n_tasks: int = 1000,
    *,
    seed: int = 12345,
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> TaskBatch:
    """A fixed, seeded padded batch of held-out GP tasks (per-task sizes), the same for every learner.

    Args:
        kernel: One of :data:`KERNELS`.
        n_tasks: Number of tasks.
        seed: Seeds the task stream (use a seed never used for training).
        dtype: Floating dtype.
        **options: Other :class:`GPTasks` fields (``max_points``, ``noise_std``, ...).

    Returns:
        A padded :class:`TaskBatch` (train and score with
        :class:`metafit.algorithms.neural_process.Padded`).
    """
    gen = torch.Generator().manual_seed(seed)
    return GPTasks(kernel, generator=gen, dtype=dtype, **options).sample_padded_batch(n_tasks)


def gp_eval_truth(kernel: str = "rbf", n_tasks: int = 1000, *, seed: int = 12345, **options: Any) -> dict[str, Tensor]:
    """The true hyperparameters of the tasks of :func:`gp_eval_tasks` with the same arguments (a replay)."""
    gen = torch.Generator().manual_seed(seed)
    return GPTasks(kernel, generator=gen, **options).sample_padded(n_tasks)[1]


def gp_predictive(
    kernel: str,
    context_x: Tensor,
    context_y: Tensor,
    target_x: Tensor,
    *,
    lengthscale: Tensor | float,
    scale: Tensor | float,
    period: Tensor | float | None = None,
    noise_std: float = 0.02,
) -> tuple[Tensor, Tensor]:
    """Exact GP predictive marginals of NOISY targets (zero prior mean), computed in float64.

    ``mean = K_tc (K_cc + s_n^2 I)^-1 y_c``, ``var = diag(K_tt) + s_n^2 - diag(K_tc (K_cc + s_n^2 I)^-1 K_ct)``.

    Args:
        kernel: One of :data:`KERNELS`.
        context_x: ``(C, d)``.
        context_y: ``(C, 1)`` or ``(C,)``.
        target_x: ``(T, d)``.
        lengthscale, scale, period: The kernel's hyperparameters (floats or 0-d tensors).
        noise_std: Observation noise sd.

    Returns:
        ``(mean (T, 1), var (T, 1))`` in ``context_x``'s dtype.
    """
    cx, tx = context_x.to(torch.float64), target_x.to(torch.float64)
    cy = context_y.to(torch.float64).reshape(-1, 1)
    hyp = {"lengthscale": lengthscale, "scale": scale, "period": period}
    kcc = kernel_matrix(kernel, cx, cx, **hyp) + (noise_std**2 + 1e-9) * torch.eye(cx.shape[0], dtype=torch.float64)
    ktc = kernel_matrix(kernel, tx, cx, **hyp)
    chol = torch.linalg.cholesky(kcc)
    alpha = torch.cholesky_solve(cy, chol)
    v = torch.linalg.solve_triangular(chol, ktc.T, upper=False)  # (C, T)
    prior = torch.as_tensor(scale, dtype=torch.float64).pow(2)  # k(x, x) = s^2 for every kernel here
    var = prior + noise_std**2 - v.pow(2).sum(0)
    return (ktc @ alpha).to(context_x.dtype), var.clamp_min(1e-12).unsqueeze(-1).to(context_x.dtype)


# -- image completion -------------------------------------------------------------------------------


def pixel_coordinates(height: int, width: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(height * width, 2)`` (row, column) coordinates scaled to ``[-1, 1]``, in raster order."""
    rows = torch.linspace(-1.0, 1.0, height, dtype=dtype) if height > 1 else torch.zeros(1, dtype=dtype)
    cols = torch.linspace(-1.0, 1.0, width, dtype=dtype) if width > 1 else torch.zeros(1, dtype=dtype)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)


@dataclass
class ImageCompletionTasks:
    """Image completion tasks: predict an image's pixel intensities from a few observed pixels.

    The CNP/ANP image-completion set-up (Garnelo et al. 2018, §4.2; Kim et al. 2019): each task is
    one image; ``x`` = pixel (row, column) in ``[-1, 1]^2``, ``y`` = the pixel's ``channels``
    intensities (as stored in the dataset). The context is a random subset of pixels whose size
    ``~ U{min_context, ..., max_context}`` is drawn once per batch (so batches stack without
    padding). The targets are every pixel (``n_target=None``; they include the context pixels,
    as in the papers) or ``n_target`` random pixels disjoint from the context.

    Args:
        dataset: Images ``(N, H, W)`` or ``(N, channels, H, W)`` (any class).
        generator: Source of all randomness (required).
        tasks_per_batch: Images per batch.
        min_context: Smallest context.
        max_context: Largest context.
        n_target: Target pixels per task (``None`` = all ``H * W``).
    """

    dataset: LabelledDataset
    generator: torch.Generator | None = None
    tasks_per_batch: int = 16
    min_context: int = 3
    max_context: int = 200
    n_target: int | None = None

    def __post_init__(self) -> None:
        _check_generator(self.generator, "ImageCompletionTasks")
        if not isinstance(self.dataset, LabelledDataset):
            raise TypeError(f"dataset must be a LabelledDataset, got {type(self.dataset).__name__}")
        if self.dataset.x.dim() not in (3, 4) or not self.dataset.x.is_floating_point():
            raise ValueError(
                f"dataset.x must be floating images (N, H, W) or (N, C, H, W), got {tuple(self.dataset.x.shape)} "
                f"{self.dataset.x.dtype}"
            )
        _check_int("tasks_per_batch", self.tasks_per_batch, 1)
        _check_int("min_context", self.min_context, 1)
        _check_int("max_context", self.max_context, self.min_context)
        pixels = self.n_pixels
        extra = 0 if self.n_target is None else _check_int("n_target", self.n_target, 1)
        if self.max_context + extra > pixels:
            raise ValueError(f"max_context + n_target must be <= {pixels} pixels, got {self.max_context} + {extra}")

    @property
    def n_pixels(self) -> int:
        """``H * W``."""
        return int(self.dataset.x.shape[-1] * self.dataset.x.shape[-2])

    def sample_batch(self, n_tasks: int | None = None) -> TaskBatch:
        """``support_x (T, C, 2)``, ``support_y (T, C, channels)``, ``query_x (T, Q, 2)``, ``query_y (T, Q, channels)``."""
        g = self.generator
        t = self.tasks_per_batch if n_tasks is None else _check_int("n_tasks", n_tasks, 1)
        imgs = self.dataset.x
        idx = torch.randint(0, imgs.shape[0], (t,), generator=g)
        img = imgs[idx]
        if img.dim() == 3:
            img = img.unsqueeze(1)
        ch, h, w = img.shape[1:]
        y = img.reshape(t, ch, h * w).transpose(1, 2)  # (T, HW, ch)
        coords = pixel_coordinates(h, w, dtype=img.dtype).expand(t, -1, -1)
        c = int(torch.randint(self.min_context, self.max_context + 1, (1,), generator=g))
        order = torch.rand(t, h * w, generator=g).argsort(-1)

        def take(i: Tensor) -> tuple[Tensor, Tensor]:
            return (
                torch.gather(coords, 1, i.unsqueeze(-1).expand(-1, -1, 2)),
                torch.gather(y, 1, i.unsqueeze(-1).expand(-1, -1, ch)),
            )

        sx, sy = take(order[:, :c])
        if self.n_target is None:
            qx, qy = coords.clone(), y
        else:
            qx, qy = take(order[:, c : c + self.n_target])
        return TaskBatch(sx, sy, qx, qy)

    def __iter__(self) -> Iterator[TaskBatch]:
        while True:
            yield self.sample_batch()


# -- tabular classification --------------------------------------------------------------------------


def _standardise(sx: Tensor, qx: Tensor, dim: int = 0) -> tuple[Tensor, Tensor]:
    """Standardises both with the SUPPORT rows' mean and sd along ``dim``. A feature constant on
    the support rows (sd <= 1e-8, zero padding included) tells the support classes nothing: it is
    0 in the support and in the queries (never a raw query value divided by a dummy sd of 1)."""
    mu = sx.mean(dim, keepdim=True)
    sd = sx.std(dim, unbiased=False, keepdim=True)
    keep = sd > 1e-8
    sd = torch.where(keep, sd, torch.ones_like(sd))
    zero = sx.new_zeros(())
    return torch.where(keep, (sx - mu) / sd, zero), torch.where(keep, (qx - mu) / sd, zero)


def standardise_tasks(tasks: TaskBatch) -> TaskBatch:
    """Each task's features standardised with its SUPPORT rows' mean and sd (inductive: the
    queries never inform the statistics; a feature constant on the support rows, e.g. zero
    padding or a pixel blank in every support image, is 0 in support and queries).

    The preprocessing of :class:`TabularPriorTasks` and :func:`sklearn_table_tasks`, for episodes
    drawn elsewhere (e.g. from a table loaded as a dataset).

    Args:
        tasks: ``support_x (T, S, F)``, ``query_x (T, Q, F)``.

    Returns:
        The same batch with standardised ``support_x`` and ``query_x``.
    """
    if tasks.support_x.dim() != 3:
        raise ValueError(
            f"standardise_tasks needs (T, N, features) inputs, got support_x {tuple(tasks.support_x.shape)}"
        )
    sx, qx = _standardise(tasks.support_x, tasks.query_x, dim=1)
    return TaskBatch(sx, tasks.support_y, qx, tasks.query_y, n_way=tasks.n_way)


def _split_classes(pools: Sequence[Tensor], k_shot: int, n_query: int, g: torch.Generator) -> tuple[Tensor, ...]:
    """Support/query rows from per-class pools (class c = pools[c]); support shuffled."""
    sx, sy, qx, qy = [], [], [], []
    for c, pool in enumerate(pools):
        perm = torch.randperm(pool.shape[0], generator=g)
        sx.append(pool[perm[:k_shot]])
        qx.append(pool[perm[k_shot : k_shot + n_query]])
        sy.append(torch.full((k_shot,), c, dtype=torch.int64))
        qy.append(torch.full((n_query,), c, dtype=torch.int64))
    s_perm = torch.randperm(len(pools) * k_shot, generator=g)
    return torch.cat(sx)[s_perm], torch.cat(sy)[s_perm], torch.cat(qx), torch.cat(qy)


@dataclass
class TabularPriorTasks:
    """Few-shot tabular classification tasks from a random-MLP prior (after TabPFN's prior).

    Each task draws ``pool = n_way * (k_shot + n_query) * pool_factor`` rows of features
    ``x ~ N(0, I_{n_features})``, a random MLP (``depth`` tanh layers of ``hidden`` units,
    weights ``N(0, 1 / fan_in)``, biases ``N(0, 1)``, Gaussian noise ``noise_std`` added to every
    hidden activation) mapping each row to a scalar, and ranks the scalars into ``n_way``
    equally sized classes (bins between quantiles), whose ids are shuffled. ``k_shot`` support and
    ``n_query`` query rows per class come from each class's bin; the features are standardised
    with the support rows' statistics only. TabPFN's prior also samples the architecture, feature
    counts, causal structure and class thresholds; this keeps the core "random features -> random
    MLP -> thresholds into classes" only, and, with ``min_features``, a per-task feature count:
    the task uses its first ``d ~ U{min_features, ..., n_features}`` features and the rest are
    zero, the layout of a table with ``d`` columns zero-padded to ``n_features``
    (:func:`sklearn_table_tasks`, ``metafit compare --dataset iris``).

    Args:
        n_features: Feature count (width of every task).
        n_way: Classes per task.
        k_shot: Support rows per class.
        n_query: Query rows per class.
        min_features: Smallest per-task count of real features (``None``: every task uses all
            ``n_features``).
        latent_dim: With it, each task draws ``r ~ U{1, ..., latent_dim}`` latent causes
            ``u ~ N(0, I_r)``; its features are noisy mixtures ``u A + feature_noise * eps``
            (``A ~ N(0, 1)``, so the columns are correlated, as in real tables) and the random MLP
            reads ``u``. ``None``: independent features read directly (the classes then depend
            on every feature, which few shots cannot identify).
        feature_noise: Noise on each feature with ``latent_dim``.
        irrelevant: Each task replaces a fraction ``f ~ U[0, irrelevant]`` of its ``d`` columns
            (at random positions) by the same column with its rows shuffled across the classes:
            the marginal distribution of a real feature, no information about the class, as the
            uninformative columns of real tables (``0``: every column informative).
        warp: Probability that a column passes through a random monotone warp before the
            support standardisation, one of three with equal chance: quantised into 2..16 levels
            between its quantiles (a discrete or ordinal feature), rectified at a random quantile
            in [0.3, 0.9] (a sparse feature, mostly zero, as a blank pixel or a count), or
            exponentiated with a rate in [0.5, 2] (a heavy right tail, as an area or a price).
        classes: ``"ranked"`` (the random MLP's scalar ranked into ``n_way`` equal bins) or
            ``"clusters"`` (needs ``latent_dim``: each class a Gaussian cluster of latent causes,
            centres ``N(0, s^2 I_r)`` with ``s ~ U[1, 3]``, unit spread; the features are the
            random MLP of the causes mixed into ``d`` columns, plus ``feature_noise``).
        hidden: Hidden width of the random MLP.
        depth: Hidden layers of the random MLP.
        noise_std: Noise on every hidden activation.
        pool_factor: Rows drawn per needed row (>= 1).
        tasks_per_batch: Tasks per :meth:`sample_batch`.
        generator: Source of all randomness (required).
        dtype: Floating dtype of the features.
    """

    n_features: int = 8
    n_way: int = 3
    k_shot: int = 5
    n_query: int = 15
    min_features: int | None = None
    latent_dim: int | None = None
    feature_noise: float = 0.3
    irrelevant: float = 0.0
    warp: float = 0.0
    classes: str = "ranked"
    hidden: int = 16
    depth: int = 2
    noise_std: float = 0.1
    pool_factor: int = 4
    tasks_per_batch: int = 8
    generator: torch.Generator | None = None
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        _check_generator(self.generator, "TabularPriorTasks")
        for name, minimum in (
            ("n_features", 1),
            ("n_way", 2),
            ("k_shot", 1),
            ("n_query", 1),
            ("hidden", 1),
            ("depth", 1),
            ("pool_factor", 1),
            ("tasks_per_batch", 1),
        ):
            _check_int(name, getattr(self, name), minimum)
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std!r}")
        if self.classes not in ("ranked", "clusters"):
            raise ValueError(f"classes must be 'ranked' or 'clusters', got {self.classes!r}")
        if self.classes == "clusters" and self.latent_dim is None:
            raise ValueError("classes='clusters' needs latent_dim (the clusters live in the latent space)")
        if self.latent_dim is not None:
            _check_int("latent_dim", self.latent_dim, 1)
        if not self.feature_noise >= 0:
            raise ValueError(f"feature_noise must be >= 0, got {self.feature_noise!r}")
        if not 0 <= self.irrelevant < 1:
            raise ValueError(f"irrelevant must be a fraction in [0, 1), got {self.irrelevant!r}")
        if not 0 <= self.warp <= 1:
            raise ValueError(f"warp must be a probability in [0, 1], got {self.warp!r}")
        if self.min_features is not None:
            _check_int("min_features", self.min_features, 1)
            if self.min_features > self.n_features:
                raise ValueError(f"min_features must be <= n_features={self.n_features}, got {self.min_features}")

    def sample_task(self) -> Task:
        """One task: ``support_x (n_way * k_shot, n_features)``, ``query_x (n_way * n_query, n_features)``."""
        g = self.generator
        assert g is not None
        per = self.k_shot + self.n_query
        n = self.n_way * per * self.pool_factor
        d = self.n_features
        if self.min_features is not None:
            d = int(torch.randint(self.min_features, self.n_features + 1, (1,), generator=g))
        if self.classes == "clusters":
            return self._cluster_task(d)
        if self.latent_dim is None:
            x = torch.randn(n, d, generator=g, dtype=torch.float64)
            h = x
        else:
            r = int(torch.randint(1, self.latent_dim + 1, (1,), generator=g))
            h = torch.randn(n, r, generator=g, dtype=torch.float64)  # the causes the MLP reads
            mix = torch.randn(r, d, generator=g, dtype=torch.float64)
            x = h @ mix + self.feature_noise * torch.randn(n, d, generator=g, dtype=torch.float64)
        h = self._random_mlp(h, noisy=True)
        z = h @ torch.randn(self.hidden, generator=g, dtype=torch.float64)
        x = self._corrupt(x)
        order = z.argsort()
        m = n // self.n_way
        classes = torch.randperm(self.n_way, generator=g)  # bin b -> class classes[b]
        pools: list[Tensor] = [x[:0]] * self.n_way
        for b in range(self.n_way):
            pools[int(classes[b])] = x[order[b * m : (b + 1) * m]]
        return self._task(pools, d)

    def _random_mlp(self, h: Tensor, *, noisy: bool) -> Tensor:
        """``depth`` tanh layers of ``hidden`` units, weights ``N(0, 1 / fan_in)``, biases ``N(0, 1)``
        (plus ``noise_std`` Gaussian noise on every activation when ``noisy``)."""
        g = self.generator
        for _ in range(self.depth):
            w = torch.randn(h.shape[1], self.hidden, generator=g, dtype=torch.float64) / math.sqrt(h.shape[1])
            b = torch.randn(self.hidden, generator=g, dtype=torch.float64)
            h = torch.tanh(h @ w + b)
            if noisy:
                h = h + self.noise_std * torch.randn(h.shape[0], self.hidden, generator=g, dtype=torch.float64)
        return h

    def _task(self, pools: Sequence[Tensor], d: int) -> Task:
        """Support and query rows from the per-class pools, standardised, zero-padded to ``n_features``."""
        assert self.generator is not None
        sx, sy, qx, qy = _split_classes(pools, self.k_shot, self.n_query, self.generator)
        sx, qx = _standardise(sx, qx)
        if d < self.n_features:
            sx = torch.cat([sx, sx.new_zeros(sx.shape[0], self.n_features - d)], 1)
            qx = torch.cat([qx, qx.new_zeros(qx.shape[0], self.n_features - d)], 1)
        return Task(sx.to(self.dtype), sy, qx.to(self.dtype), qy, n_way=self.n_way)

    def _cluster_task(self, d: int) -> Task:
        g = self.generator
        assert g is not None and self.latent_dim is not None
        per = self.k_shot + self.n_query
        r = int(torch.randint(1, self.latent_dim + 1, (1,), generator=g))
        spread = 1.0 + 2.0 * float(torch.rand((), generator=g, dtype=torch.float64))
        centres = spread * torch.randn(self.n_way, r, generator=g, dtype=torch.float64)
        u = centres.repeat_interleave(per, 0) + torch.randn(self.n_way * per, r, generator=g, dtype=torch.float64)
        h = self._random_mlp(u, noisy=False)  # the causes through a random MLP, then mixed into d columns
        mix = torch.randn(h.shape[1], d, generator=g, dtype=torch.float64) / math.sqrt(h.shape[1])
        x = h @ mix + self.feature_noise * torch.randn(h.shape[0], d, generator=g, dtype=torch.float64)
        x = self._corrupt(x)
        return self._task([x[c * per : (c + 1) * per] for c in range(self.n_way)], d)

    def _corrupt(self, x: Tensor) -> Tensor:
        """The task's rows ``(n, d)`` with ``irrelevant`` columns shuffled across rows and
        ``warp`` columns warped (see the class docstring); unchanged when both are 0."""
        g = self.generator
        n, d = x.shape
        if self.irrelevant > 0:
            frac = self.irrelevant * float(torch.rand((), generator=g, dtype=torch.float64))
            cols = torch.randperm(d, generator=g)[: int(frac * d)]
            if cols.numel():
                rows = torch.rand(n, cols.numel(), generator=g).argsort(0)  # one row shuffle per column
                x = x.clone()
                x[:, cols] = x[:, cols].gather(0, rows)
        if self.warp > 0:
            chosen = torch.rand(d, generator=g, dtype=torch.float64) < self.warp
            kinds = torch.randint(0, 3, (d,), generator=g)
            t = torch.rand(d, generator=g, dtype=torch.float64)  # each column's warp parameter in [0, 1)
            if bool(chosen.any()):
                rank = x.argsort(0).argsort(0).to(x.dtype)  # 0..n-1 within each column
                # quantised: 2..16 levels of equal frequency (the level index of each value)
                levels = (2 + (t * 15).floor()).clamp_max(16)
                quantised = (rank * levels / n).floor()
                # rectified at the column's (0.3 + 0.6 t)-quantile (nearest rank): mostly zero
                cut = x.sort(0).values.gather(0, ((0.3 + 0.6 * t) * (n - 1)).round().long()[None])
                rectified = (x - cut).clamp_min(0)
                # exponentiated at a rate 0.5..2 per standardised unit: a heavy right tail
                z = (x - x.mean(0)) / x.std(0).clamp_min(1e-12)
                exponentiated = torch.exp((0.5 + 1.5 * t) * z)
                warped = torch.where(kinds == 0, quantised, torch.where(kinds == 1, rectified, exponentiated))
                x = torch.where(chosen, warped, x)
        return x

    def sample_batch(self, n_tasks: int | None = None) -> TaskBatch:
        """``n_tasks`` (default ``tasks_per_batch``) tasks stacked."""
        t = self.tasks_per_batch if n_tasks is None else _check_int("n_tasks", n_tasks, 1)
        tasks = [self.sample_task() for _ in range(t)]
        return TaskBatch(
            *(torch.stack([getattr(k, f) for k in tasks]) for f in ("support_x", "support_y", "query_x", "query_y")),
            n_way=self.n_way,
        )

    def __iter__(self) -> Iterator[TaskBatch]:
        while True:
            yield self.sample_batch()


def _load_table(name: str) -> tuple[Tensor, Tensor]:
    from sklearn import datasets

    loaders = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "digits": datasets.load_digits,
    }
    if name not in loaders:
        raise ValueError(f"name must be one of {TABLES}, got {name!r}")
    bunch = loaders[name]()
    return torch.as_tensor(bunch.data, dtype=torch.float64), torch.as_tensor(bunch.target, dtype=torch.int64)


def sklearn_table_tasks(
    name: str,
    n_tasks: int,
    *,
    k_shot: int,
    n_query: int,
    generator: torch.Generator,
    n_way: int | None = None,
    n_features: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> TaskBatch:
    """Few-shot tasks from a real table shipped with scikit-learn (no download).

    Each task picks ``n_way`` of the table's classes (in random order: the task's labels
    ``0..n_way-1``), ``k_shot`` support and ``n_query`` query rows per class without replacement,
    and standardises every feature with the support rows' mean and sd only.

    Args:
        name: ``"iris"``, ``"wine"``, ``"breast_cancer"`` or ``"digits"``.
        n_tasks: Number of tasks.
        k_shot: Support rows per class.
        n_query: Query rows per class.
        generator: Source of all randomness.
        n_way: Classes per task (default: all the table's classes).
        n_features: Zero-pad the features to this width (a model with a fixed input size; default:
            the table's own feature count).
        dtype: Floating dtype of the features.

    Returns:
        A :class:`TaskBatch` with ``n_way`` set.
    """
    g = _check_generator(generator, "sklearn_table_tasks")
    _check_int("n_tasks", n_tasks, 1)
    _check_int("k_shot", k_shot, 1)
    _check_int("n_query", n_query, 1)
    x, y = _load_table(name)
    n_classes = int(y.max()) + 1
    way = n_classes if n_way is None else _check_int("n_way", n_way, 2)
    if way > n_classes:
        raise ValueError(f"n_way must be <= {n_classes} (classes of {name!r}), got {way}")
    by_class = [x[y == c] for c in range(n_classes)]
    smallest = min(p.shape[0] for p in by_class)
    if k_shot + n_query > smallest:
        raise ValueError(
            f"k_shot + n_query must be <= {smallest} (rows of the smallest class of {name!r}), got {k_shot + n_query}"
        )
    width = x.shape[1] if n_features is None else _check_int("n_features", n_features, x.shape[1])
    tasks = []
    for _ in range(n_tasks):
        chosen = torch.randperm(n_classes, generator=g)[:way]
        sx, sy, qx, qy = _split_classes([by_class[int(c)] for c in chosen], k_shot, n_query, g)
        sx, qx = _standardise(sx, qx)
        if width > x.shape[1]:
            sx = torch.cat([sx, sx.new_zeros(sx.shape[0], width - x.shape[1])], 1)
            qx = torch.cat([qx, qx.new_zeros(qx.shape[0], width - x.shape[1])], 1)
        tasks.append((sx.to(dtype), sy, qx.to(dtype), qy))
    return TaskBatch(*(torch.stack([t[i] for t in tasks]) for i in range(4)), n_way=way)


BASELINES = ("logistic_regression", "gradient_boosting", "shrinkage_lda")


def _baseline(method: str, seed: int) -> Any:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    if method == "logistic_regression":
        return LogisticRegression(max_iter=1000)
    if method == "gradient_boosting":
        return HistGradientBoostingClassifier(min_samples_leaf=2, random_state=seed)
    if method == "shrinkage_lda":
        return LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    raise ValueError(f"method must be one of {BASELINES}, got {method!r}")


def baseline_applies(method: str, support_rows: int, n_way: int) -> bool:
    """Whether baseline ``method`` can be fitted on ``support_rows`` rows of ``n_way`` classes:
    shrinkage LDA needs more rows than classes (a within-class covariance); the others fit any."""
    return method != "shrinkage_lda" or support_rows > n_way


def support_baseline_logits(task: Task, method: str, *, seed: int = 0) -> Tensor:
    """Log-probabilities of the query rows under a classical classifier fitted on the support rows.

    Args:
        task: A classification task with ``(N, features)`` inputs whose support holds every class
            ``0..n_way-1``.
        method: One of :data:`BASELINES` (see :func:`support_baselines`).
        seed: Seed of the boosting model.

    Returns:
        ``(Q, n_way)`` float64 log-probabilities (``log`` of ``predict_proba``, floored at 1e-12).
    """
    if task.support_x.dim() != 2 or task.support_y.is_floating_point():
        raise ValueError(
            f"support baselines need a classification task with (N, features) inputs, got support_x "
            f"{tuple(task.support_x.shape)} and support_y {task.support_y.dtype}"
        )
    n_way = task.n_way or int(task.support_y.max()) + 1
    sx, qx = task.support_x.double(), task.query_x.double()
    if not baseline_applies(method, task.support_x.shape[0], n_way):
        raise ValueError(
            f"shrinkage_lda needs more support rows than classes (a within-class covariance), got "
            f"{task.support_x.shape[0]} rows for {n_way} classes"
        )
    if method == "shrinkage_lda":  # columns constant on the support (zero padding) carry nothing, and would
        keep = (sx != sx[:1]).any(0)  # move Ledoit-Wolf's shrinkage target (the mean variance)
        sx, qx = sx[:, keep], qx[:, keep]
    model = _baseline(method, seed).fit(sx.numpy(), task.support_y.numpy())
    probs = torch.zeros(task.query_x.shape[0], n_way, dtype=torch.float64)
    columns = torch.as_tensor(model.classes_, dtype=torch.int64)
    probs[:, columns] = torch.as_tensor(model.predict_proba(qx.numpy()), dtype=torch.float64)
    return probs.clamp_min(1e-12).log()


def support_baselines(task: Task, *, methods: Sequence[str] = BASELINES, seed: int = 0) -> dict[str, float]:
    """Query accuracy of classical classifiers fitted on the task's support rows only.

    ``"logistic_regression"``: ``sklearn.linear_model.LogisticRegression(max_iter=1000)``;
    ``"gradient_boosting"``: ``sklearn.ensemble.HistGradientBoostingClassifier`` with
    ``min_samples_leaf=2`` (the default 20 exceeds a few-shot support set, whose trees would then
    never split) and ``random_state=seed``; ``"shrinkage_lda"``:
    ``sklearn.discriminant_analysis.LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")``
    (one pooled class covariance, Ledoit-Wolf shrinkage) on the columns that vary over the support
    rows.

    Args:
        task: A classification task with 2-D features.
        methods: Which of :data:`BASELINES` to fit.
        seed: Seed of the boosting model.

    Returns:
        ``{name: accuracy}``.
    """
    unknown = [m for m in methods if m not in BASELINES]
    if unknown:
        raise ValueError(f"methods must be among {BASELINES}, got {unknown}")
    qy = task.query_y
    return {k: float((support_baseline_logits(task, k, seed=seed).argmax(-1) == qy).double().mean()) for k in methods}
