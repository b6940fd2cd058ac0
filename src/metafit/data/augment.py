"""Training-time augmentation of image episodes and mini-batches.

An augmentation is a pure ``augment(x, generator) -> x`` (the ``Augment`` hook of
:class:`~metafit.data.sampling.EpisodeSampler` and :class:`~metafit.data.batches.ClassBatchSampler`):
it draws its randomness from the explicit ``torch.Generator`` only and never touches the
dataset. Evaluation episodes are never augmented.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RandomShift"]


@dataclass(frozen=True)
class RandomShift:
    """Translate each image by a random whole number of pixels, edges replicated.

    Each image (independently) moves by ``dy, dx ~ U{-max_shift..max_shift}`` pixels; the pixels
    that enter at a border copy the nearest edge pixel (the background, for character and
    product images), so no artificial frame appears. This is the random-crop-after-padding of the
    supervised-pretraining baselines (Tian et al. 2020, RFS; Chen et al. 2019), for images of any
    size and channel count.

    Attributes:
        max_shift: Largest shift in pixels along each axis (``0``: the identity).
    """

    max_shift: int

    def __post_init__(self) -> None:
        if isinstance(self.max_shift, bool) or not isinstance(self.max_shift, int) or self.max_shift < 0:
            raise ValueError(f"max_shift must be an int >= 0, got {self.max_shift!r}")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Shifted copies of ``x (..., C, H, W)`` (same shape, dtype and device)."""
        if x.dim() < 3:
            raise ValueError(f"RandomShift needs images shaped (..., C, H, W), got shape {tuple(x.shape)}")
        s = self.max_shift
        if s == 0 or x.numel() == 0:
            return x
        *lead, c, h, w = x.shape
        flat = x.reshape(-1, c, h, w)
        m = flat.shape[0]
        padded = F.pad(flat, (s, s, s, s), mode="replicate")
        dy = torch.randint(0, 2 * s + 1, (m,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * s + 1, (m,), generator=generator).to(x.device)
        rows = dy[:, None] + torch.arange(h, device=x.device)  # (M, H)
        cols = dx[:, None] + torch.arange(w, device=x.device)  # (M, W)
        out = padded[
            torch.arange(m, device=x.device)[:, None, None, None],
            torch.arange(c, device=x.device)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
        return out.reshape(x.shape)
