"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020, arXiv 1909.09157).

ANIL is MAML whose inner loop adapts only the head; the body is meta-learned but frozen during
adaptation. In metafit it is a composition, not a new class: MAML with a name filter.
"""

from __future__ import annotations

from typing import Any

from metafit.algorithms.maml import MAML

__all__ = ["ANIL"]


def ANIL(head: str | tuple[str, ...] = "head.", **maml_kwargs: Any) -> MAML:
    """Returns ``MAML(adapt_only=head, ...)``.

    Args:
        head: Name prefix (or prefixes) of the parameters adapted in the inner loop; metafit's
            backbones name their classifier ``head``.
        **maml_kwargs: Any :class:`~metafit.algorithms.maml.MAML` argument.

    Example:
        >>> ANIL(inner_lr=0.1, inner_steps=5).adapt_only
        ('head.',)
    """
    prefixes = (head,) if isinstance(head, str) else tuple(head)
    return MAML(adapt_only=prefixes, **maml_kwargs)
