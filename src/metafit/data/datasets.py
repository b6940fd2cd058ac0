"""Class-indexed labelled datasets: what the episode samplers draw few-shot tasks from.

A :class:`LabelledDataset` holds every example of every class in memory as one tensor ``x`` with
integer class ids ``y``; samplers (:mod:`metafit.data.sampling`) gather episodes from it with a
single indexing operation per batch. Omniglot (:mod:`metafit.data.omniglot`) builds its splits as
``LabelledDataset`` objects; :func:`from_tensors` wraps any labelled tensors.

The image-folder helpers :func:`load_image_folder` and :func:`load_support_folder` (used by
``metafit predict``) live in :mod:`metafit.data.omniglot` next to the Omniglot preprocessing they
share, and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["LabelledDataset", "from_tensors", "load_image_folder", "load_support_folder"]


@dataclass(frozen=True, eq=False)
class LabelledDataset:
    """An in-memory classification dataset indexed by class.

    Attributes:
        x: Inputs, shape ``(N, *example_shape)``, e.g. ``(N, C, H, W)`` float32 images.
        y: Class ids, shape ``(N,)``, int64 in ``0..num_classes-1``; every class has at least one
            example.
        class_names: One name per class id, ``len == num_classes``.
        groups: Optional group name per class id (e.g. the Omniglot alphabet), used for
            group-level sampling (``VariableEpisodeSampler(by_group=True)``); ``None`` if absent.

    The tensors are not copied; treat them as read-only (the per-class index cache assumes ``y``
    does not change).
    """

    x: Tensor
    y: Tensor
    class_names: tuple[str, ...]
    groups: tuple[str, ...] | None = None
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(self.x).__name__}")
        if not isinstance(self.y, Tensor):
            raise TypeError(f"y must be a torch.Tensor, got {type(self.y).__name__}")
        if self.x.dim() < 1:
            raise ValueError("x must have shape (N, *example_shape), got a 0-d tensor")
        if self.y.dim() != 1:
            raise ValueError(f"y must have shape (N,), got shape {tuple(self.y.shape)}")
        if self.y.dtype != torch.int64:
            raise ValueError(f"y must be int64 class ids, got dtype {self.y.dtype}")
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"x and y must hold the same number of examples; got x.shape[0]={self.x.shape[0]} "
                f"and y.shape[0]={self.y.shape[0]}"
            )
        if isinstance(self.class_names, str) or not isinstance(self.class_names, Sequence):
            raise TypeError(f"class_names must be a sequence of str, got {type(self.class_names).__name__}")
        names = tuple(self.class_names)
        if not all(isinstance(n, str) for n in names):
            raise TypeError("class_names must contain only str")
        object.__setattr__(self, "class_names", names)
        n_classes = len(names)
        if n_classes < 1:
            raise ValueError("class_names must name at least one class, got an empty sequence")
        if self.groups is not None:
            if isinstance(self.groups, str) or not isinstance(self.groups, Sequence):
                raise TypeError(f"groups must be a sequence of str or None, got {type(self.groups).__name__}")
            groups = tuple(self.groups)
            if len(groups) != n_classes or not all(isinstance(g, str) for g in groups):
                raise ValueError(f"groups must hold one str per class: expected {n_classes} entries, got {len(groups)}")
            object.__setattr__(self, "groups", groups)
        if self.y.numel() == 0:
            raise ValueError("the dataset is empty: y has no examples")
        lo, hi = int(self.y.min()), int(self.y.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(
                f"y must hold class ids in 0..{n_classes - 1} (len(class_names)={n_classes}), got values in {lo}..{hi}"
            )
        counts = torch.bincount(self.y.cpu(), minlength=n_classes)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():
            c = int(empty[0])
            raise ValueError(
                f"every class needs at least one example, but class {c} ({names[c]!r}) has none "
                f"({empty.numel()} empty class(es) in total)"
            )
        self._cache["sizes"] = counts
        self.check_finite()

    # -- basic facts -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return len(self.class_names)

    @property
    def example_shape(self) -> tuple[int, ...]:
        """Shape of one example, ``x.shape[1:]``."""
        return tuple(self.x.shape[1:])

    def class_sizes(self) -> Tensor:
        """Examples per class, int64 tensor of shape ``(C,)`` (on the CPU)."""
        return self._cache["sizes"]

    def class_indices(self) -> list[Tensor]:
        """Indices into ``x``/``y`` of each class.

        Returns:
            ``C`` int64 CPU tensors; entry ``c`` holds the (ascending) indices of class ``c``.
            Computed once and cached.
        """
        idx = self._cache.get("indices")
        if idx is None:
            order = torch.argsort(self.y.cpu(), stable=True)
            idx = list(torch.split(order, self.class_sizes().tolist()))
            self._cache["indices"] = idx
        return idx

    def index_table(self) -> Tensor:
        """Class indices padded into one table (cached), used by the vectorised samplers.

        Returns:
            int64 CPU tensor ``(C, max_class_size)``; row ``c`` starts with the indices of class
            ``c`` and is padded with ``-1``.
        """
        table = self._cache.get("table")
        if table is None:
            sizes = self.class_sizes()
            table = torch.full((self.num_classes, int(sizes.max())), -1, dtype=torch.int64)
            for c, ix in enumerate(self.class_indices()):
                table[c, : ix.numel()] = ix
            self._cache["table"] = table
        return table

    # -- derived datasets --------------------------------------------------------------------------

    def subset_classes(self, class_ids: Sequence[int] | Tensor) -> LabelledDataset:
        """A new dataset holding only the given classes, renumbered in the given order.

        Args:
            class_ids: Distinct class ids of this dataset; class ``class_ids[j]`` becomes class ``j``.

        Returns:
            A :class:`LabelledDataset` with copies of the selected examples (grouped by new class).

        Raises:
            ValueError: empty, repeated or out-of-range ``class_ids``.
        """
        ids = torch.as_tensor(class_ids, dtype=torch.int64).flatten().tolist()
        if not ids:
            raise ValueError("class_ids must select at least one class, got an empty sequence")
        if len(set(ids)) != len(ids):
            raise ValueError(f"class_ids must be distinct, got repeated ids in {ids[:20]}")
        bad = [c for c in ids if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"class_ids must lie in 0..{self.num_classes - 1}, got out-of-range ids {bad[:10]}")
        per_class = self.class_indices()
        parts = [per_class[c] for c in ids]
        sel = torch.cat(parts)
        new_y = torch.repeat_interleave(torch.arange(len(ids)), torch.tensor([p.numel() for p in parts])).to(
            self.y.device
        )
        return LabelledDataset(
            x=self.x[sel.to(self.x.device)],
            y=new_y,
            class_names=tuple(self.class_names[c] for c in ids),
            groups=None if self.groups is None else tuple(self.groups[c] for c in ids),
        )

    def check_finite(self, chunk_elements: int = 1 << 24) -> None:
        """Raises ValueError if ``x`` contains NaN or inf (naming how many values and the first row).

        Integer data (e.g. uint8 images) is never checked. Floating data is read in blocks of
        rows of about ``chunk_elements`` values, so a memory-mapped array costs a bounded extra
        buffer (not a boolean copy of the whole array).
        """
        if not (self.x.is_floating_point() or self.x.is_complex()) or self.x.shape[0] == 0:
            return
        per_row = max(1, self.x[0].numel())
        rows = max(1, chunk_elements // per_row)
        bad, first = 0, None
        for start in range(0, self.x.shape[0], rows):
            block = self.x[start : start + rows]
            ok = torch.isfinite(block).reshape(block.shape[0], -1).all(1)
            if not bool(ok.all()):
                bad += int((~torch.isfinite(block)).sum())
                first = start + int((~ok).nonzero()[0]) if first is None else first
        if bad:
            raise ValueError(
                f"x contains {bad} non-finite value(s) (NaN or inf; the first in row {first}); expected none"
            )


def from_tensors(
    x: Tensor,
    y: Tensor | Sequence[int],
    *,
    class_names: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
) -> LabelledDataset:
    """Wraps any labelled tensors as a :class:`LabelledDataset`.

    Args:
        x: Inputs ``(N, *example_shape)``.
        y: Integer labels ``(N,)`` with arbitrary values (e.g. ``[3, 7, 7, 10]``); the distinct
            values, sorted, become class ids ``0..C-1``.
        class_names: Names of the ``C`` classes in sorted-label order (default: ``str(label)``).
        groups: Optional per-class group names (``C`` entries).

    Returns:
        The dataset (``x`` is not copied).

    Raises:
        TypeError: non-tensor ``x`` or non-integer ``y``.
        ValueError: shape mismatches, wrong number of names/groups.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    y_t = torch.as_tensor(y)
    if y_t.is_floating_point() or y_t.is_complex() or y_t.dtype == torch.bool:
        raise TypeError(f"y must hold integer labels, got dtype {y_t.dtype}")
    if y_t.dim() != 1:
        raise ValueError(f"y must have shape (N,), got shape {tuple(y_t.shape)}")
    values, new_y = torch.unique(y_t.cpu().to(torch.int64), sorted=True, return_inverse=True)
    names = tuple(str(int(v)) for v in values) if class_names is None else tuple(class_names)
    if len(names) != values.numel():
        raise ValueError(f"class_names must name each of the {values.numel()} distinct labels, got {len(names)} names")
    return LabelledDataset(
        x=x,
        y=new_y.to(y_t.device),
        class_names=names,
        groups=None if groups is None else tuple(groups),
    )


def load_image_folder(
    folder: str | Path, image_size: int = 28, invert: bool | str = "auto"
) -> tuple[Tensor, list[Path]]:
    """See :func:`metafit.data.omniglot.load_image_folder` (re-exported; imports Pillow lazily)."""
    from metafit.data.omniglot import load_image_folder as _impl

    return _impl(folder, image_size=image_size, invert=invert)


def load_support_folder(
    folder: str | Path, image_size: int = 28, invert: bool | str = "auto"
) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """See :func:`metafit.data.omniglot.load_support_folder` (re-exported; imports Pillow lazily)."""
    from metafit.data.omniglot import load_support_folder as _impl

    return _impl(folder, image_size=image_size, invert=invert)
