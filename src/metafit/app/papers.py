"""Published numbers that ``metafit eval`` prints beside its own, with their sources.

Keys are ``(dataset, learner, n_way, k_shot, metric)`` (``n_way`` is ``None`` for regression,
``k_shot`` is ``None`` for the Gaussian-process families, whose tasks draw their own sizes);
values are the published figure as printed in the paper (with its 95% interval where the paper
gives one) and the source. Omniglot figures use the papers' Vinyals-style splits; sinusoid
figures use MAML section 5.1's task family (the papers' evaluation sets differ from metafit's
fixed 1,000 tasks). Sources are listed in ``../shared/docs/FIELD.md`` section 1. The GP figures
are target log-likelihoods of models trained with the TNP code (Nguyen & Grover 2022) on the same
task family, reported by Li et al. (NeurIPS 2025, "Learning to Generalize: An Information
Perspective on Neural Processes", Table 4; mean ± std over 5 training seeds, 48,000 held-out
functions); ``eval`` reports the NLL, the negated log-likelihood. Their ANP has a latent and a
deterministic path (metafit's ``anp`` is deterministic); their TNP is TNP-A, which scores targets
jointly, so it is not listed against metafit's diagonal TNP-D (``docs/results.md``, "Against the
published figures").
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = ["PAPERS", "paper_reference"]

_MAML = "Finn et al. 2017, Table 1"
_MAML_FO = "Finn et al. 2017, Table 1 (first order)"
_PROTO = "Snell et al. 2017, Table 1"
_REPTILE = "Nichol et al. 2018, Table 2 (transduction)"
_ANIL = "Raghu et al. 2020"
_METASGD = "Li et al. 2017"
_GP = "Li et al. 2025, Table 4, TNP code"

_ROWS: dict[tuple[str, str, int | None, int | None, str], tuple[str, str]] = {
    ("omniglot", "maml", 5, 1, "accuracy"): ("98.7 ± 0.4", _MAML),
    ("omniglot", "maml", 5, 5, "accuracy"): ("99.9 ± 0.1", _MAML),
    ("omniglot", "maml", 20, 1, "accuracy"): ("95.8 ± 0.3", _MAML),
    ("omniglot", "maml", 20, 5, "accuracy"): ("98.9 ± 0.2", _MAML),
    ("omniglot", "fomaml", 5, 1, "accuracy"): ("98.3 ± 0.5", _MAML_FO),
    ("omniglot", "fomaml", 5, 5, "accuracy"): ("99.2 ± 0.2", _MAML_FO),
    ("omniglot", "fomaml", 20, 1, "accuracy"): ("89.4 ± 0.5", _MAML_FO),
    ("omniglot", "fomaml", 20, 5, "accuracy"): ("97.9 ± 0.1", _MAML_FO),
    ("omniglot", "metasgd", 5, 1, "accuracy"): ("99.53 ± 0.26", _METASGD),
    ("omniglot", "metasgd", 5, 5, "accuracy"): ("99.93 ± 0.09", _METASGD),
    ("omniglot", "protonet", 5, 1, "accuracy"): ("98.8", _PROTO),
    ("omniglot", "protonet", 5, 5, "accuracy"): ("99.7", _PROTO),
    ("omniglot", "protonet", 20, 1, "accuracy"): ("96.0", _PROTO),
    ("omniglot", "protonet", 20, 5, "accuracy"): ("98.9", _PROTO),
    ("omniglot", "reptile", 5, 1, "accuracy"): ("97.68 ± 0.04", _REPTILE),
    ("omniglot", "reptile", 5, 5, "accuracy"): ("99.48 ± 0.06", _REPTILE),
    ("omniglot", "reptile", 20, 1, "accuracy"): ("89.43 ± 0.14", _REPTILE),
    ("omniglot", "reptile", 20, 5, "accuracy"): ("97.12 ± 0.32", _REPTILE),
    ("omniglot", "anil", 20, 1, "accuracy"): ("96.2 ± 0.5", _ANIL),
    ("omniglot", "anil", 20, 5, "accuracy"): ("98.0 ± 0.3", _ANIL),
    # MAML App. C Table 2 (5-shot, after 10 steps); Meta-SGD Table 1 (train 5, test 5)
    ("sinusoid", "maml", None, 5, "mse"): ("0.35 (10 steps)", "Finn et al. 2017, App. C Table 2"),
    ("sinusoid", "metasgd", None, 5, "mse"): ("0.90 ± 0.16", "Li et al. 2017, Table 1"),
    # target log-likelihood 0.265 and 0.805 nats per point: the NLL is its negation
    ("gp-rbf", "npcnp", None, None, "nll"): ("-0.265 (std 0.015, 5 seeds)", f"CNP, {_GP}"),
    ("gp-rbf", "anp", None, None, "nll"): ("-0.805 (std 0.005, 5 seeds)", f"latent + deterministic ANP, {_GP}"),
}

PAPERS = MappingProxyType(_ROWS)


def paper_reference(dataset: str, learner: str, n_way: int | None, k_shot: int | None, metric: str) -> str | None:
    """``"figure (source)"`` of the published number for this setting, or ``None``.

    Accuracies are in percent; the MSE is per query point.
    """
    hit = _ROWS.get((dataset, learner, n_way, k_shot, metric))
    return None if hit is None else f"{hit[0]} ({hit[1]})"
