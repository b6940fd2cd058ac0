"""Meta-SGD (Li, Zhou, Chen & Li 2017, arXiv 1707.09835): MAML with learned step sizes.

The inner update is ``theta - alpha ∘ grad`` where ``alpha`` has one learned rate per
parameter entry (same shapes as the parameters), meta-learned jointly with the
initialisation. Implemented as MAML plus a second meta-parameter group ``"inner_lr"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metafit.algorithms.base import MetaParams
from metafit.algorithms.maml import MAML

__all__ = ["MetaSGD"]


@dataclass(frozen=True)
class MetaSGD(MAML):
    """Meta-SGD: MAML whose inner step sizes are meta-parameters.

    Args:
        init_inner_lr: Initial value of every learned rate (the paper samples them; a constant
            start equal to a good MAML step size is the common choice).
        Other args: as :class:`~metafit.algorithms.maml.MAML` (``inner_lr`` is unused during
            adaptation except as the default of ``init_inner_lr``; evaluation uses the learned
            rates too, scaled by ``eval_inner_lr / inner_lr`` if ``eval_inner_lr`` is set).
    """

    init_inner_lr: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_inner_lr is not None and not self.init_inner_lr > 0:
            raise ValueError(f"init_inner_lr must be > 0, got {self.init_inner_lr}")

    def init(self, model: nn.Module, *, generator: torch.Generator | None = None) -> MetaParams:
        """``{"model": params, "inner_lr": per-parameter rates}``."""
        mp = super().init(model, generator=generator)
        start = self.inner_lr if self.init_inner_lr is None else self.init_inner_lr
        mp["inner_lr"] = {k: torch.full_like(v, start).detach().requires_grad_(True) for k, v in mp["model"].items()}
        return mp

    def step_sizes(self, meta_params: MetaParams, lr: float) -> Mapping[str, Tensor | float]:
        """The learned rates, scaled by ``lr / inner_lr`` (1 unless overridden)."""
        if "inner_lr" not in meta_params:
            raise ValueError(
                "MetaSGD needs meta_params['inner_lr'] (create meta-parameters with MetaSGD.init), "
                f"got groups {sorted(meta_params)}"
            )
        rates = meta_params["inner_lr"]
        scale = lr / self.inner_lr
        return rates if scale == 1.0 else {k: v * scale for k, v in rates.items()}
