"""Calibration metrics (known answers), reliability diagrams and temperature scaling."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from metafit.algorithms.maml import MAML
from metafit.algorithms.protonet import ProtoNet
from metafit.calibration import (
    apply_temperature,
    calibrate_with_temperature,
    calibration_metrics,
    fit_temperature,
    query_logits,
    reliability_diagram,
)
from metafit.evaluation import evaluate
from metafit.seeding import seeded
from tests.conftest import TinyConv, image_tasks

# Hand-made predictions (2 classes). Confidences .9 (correct), .55 (wrong), .7 (correct), .75 (wrong).
PROBS = torch.tensor([[0.9, 0.1], [0.55, 0.45], [0.3, 0.7], [0.25, 0.75]], dtype=torch.float64)
LABELS = torch.tensor([0, 1, 1, 0])
# NLL = -(ln .9 + ln .45 + ln .7 + ln .25) / 4
NLL = (0.10536051565782628 + 0.7985076962177716 + 0.35667494393873245 + 1.3862943611198906) / 4
# Brier = ((.1^2 + .1^2) + (.55^2 + .55^2) + (.3^2 + .3^2) + (.75^2 + .75^2)) / 4 = (.02 + .605 + .18 + 1.125) / 4
BRIER = 0.4825
# 5 equal-width bins: (.4,.6] {.55 wrong} -> |0 - .55|; (.6,.8] {.7 right, .75 wrong} -> 2 * |.5 - .725|;
# (.8,1] {.9 right} -> |1 - .9|.  ECE = (.55 + .45 + .1) / 4
ECE = 0.275


def test_calibration_metrics_known_answer_pooled() -> None:
    r = calibration_metrics(PROBS, LABELS, n_bins=5, from_logits=False)
    assert r.nll == pytest.approx(NLL, abs=1e-12)
    assert r.brier == pytest.approx(BRIER, abs=1e-12)
    assert r.ece == pytest.approx(ECE, abs=1e-12)
    assert r.accuracy == 0.5 and r.pooling == "pooled" and r.binning == "equal-width" and r.n_bins == 5
    same = calibration_metrics(PROBS.log() + 3.0, LABELS, n_bins=5)  # logits: log p + const
    assert (same.nll, same.brier, same.ece) == pytest.approx((NLL, BRIER, ECE), abs=1e-12)


def test_calibration_metrics_known_answer_per_episode() -> None:
    # episode 0 = queries 0, 2 (both right: ECE (.1 + .3) / 2 = .2); episode 1 = queries 1, 3
    # (both wrong, bins 3 and 4: ECE (.55 + .75) / 2 = .65); per-episode mean .425 != pooled .275
    probs = PROBS[[0, 2, 1, 3]].reshape(2, 2, 2)
    labels = LABELS[[0, 2, 1, 3]].reshape(2, 2)
    per = calibration_metrics(probs, labels, n_bins=5, from_logits=False, per_episode=True)
    assert per.ece == pytest.approx(0.425, abs=1e-12) and per.pooling == "per-episode" and per.n_episodes == 2
    assert per.nll == pytest.approx(NLL, abs=1e-12) and per.brier == pytest.approx(BRIER, abs=1e-12)  # equal sizes
    pooled = calibration_metrics(probs, labels, n_bins=5, from_logits=False)
    assert pooled.ece == pytest.approx(ECE, abs=1e-12)


def test_reliability_diagram_known_answer_and_json() -> None:
    d = reliability_diagram(PROBS, LABELS, n_bins=5, from_logits=False)
    assert d.edges == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert d.count == [0, 0, 1, 2, 1]
    assert d.confidence[:2] == [None, None] and d.confidence[2:] == pytest.approx([0.55, 0.725, 0.9])
    assert d.accuracy[2:] == pytest.approx([0.0, 0.5, 1.0])
    json.dumps(calibration_metrics(PROBS, LABELS, n_bins=5, from_logits=False).to_dict())


def test_calibration_metrics_bad_input() -> None:
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        calibration_metrics(PROBS, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="sum to 1"):
        calibration_metrics(PROBS * 2, LABELS, from_logits=False)
    with pytest.raises(ValueError, match="per_episode=True needs"):
        calibration_metrics(PROBS, LABELS, per_episode=True)
    with pytest.raises(ValueError, match="n_bins must be an int >= 1"):
        calibration_metrics(PROBS, LABELS, n_bins=0)


def _overconfident(n: int, c: int, factor: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z); the model reports logits factor * z (over-confident for factor > 1)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * 1.5
    y = torch.multinomial(F.softmax(z, -1), 1, generator=g).squeeze(1)
    return factor * z, y


def test_fit_temperature_recovers_the_overconfidence_factor_and_minimises_nll() -> None:
    logits, y = _overconfident(20000, 5, 3.0, 0)
    fit = fit_temperature(logits, y)
    assert fit.temperature == pytest.approx(3.0, rel=0.05) and not fit.at_bound
    assert fit.nll_after < fit.nll_before
    for t in (fit.temperature * 0.98, fit.temperature * 1.02):  # a minimum
        assert F.cross_entropy(logits / t, y).item() > fit.nll_after
    assert fit_temperature(logits, y) == fit  # deterministic
    assert torch.equal(apply_temperature(logits, fit), logits / fit.temperature)


def test_temperature_fitted_on_validation_improves_test_calibration_without_changing_accuracy() -> None:
    val, val_y = _overconfident(5000, 5, 2.5, 1)
    test, test_y = _overconfident(5000, 5, 2.5, 2)
    fit, before, after = calibrate_with_temperature(
        val.reshape(50, 100, 5), val_y.reshape(50, 100), test.reshape(50, 100, 5), test_y.reshape(50, 100)
    )
    assert after.ece < before.ece / 2 and after.nll < before.nll and after.brier < before.brier
    assert after.accuracy == before.accuracy
    assert fit.n_queries == 5000


def test_query_logits_agree_with_evaluate() -> None:
    tasks = image_tasks(n_tasks=3, n_way=3, k_shot=2, n_query=2, seed=3)
    model = seeded(0, lambda: TinyConv(norm="task", n_way=3).double())
    for algo in (ProtoNet(), MAML(inner_lr=0.1, inner_steps=2)):
        mp = algo.init(model)
        logits, labels = query_logits(algo, model, mp, tasks)
        assert logits.shape == (3, 6, 3) and torch.equal(labels, tasks.query_y)
        acc = (logits.argmax(-1) == labels).double().mean(1)
        res = evaluate(algo, model, mp, tasks)
        assert acc.tolist() == pytest.approx(res.per_task["accuracy"], abs=1e-12)
        loss = F.cross_entropy(logits.reshape(-1, 3), labels.reshape(-1), reduction="none").reshape(3, 6).mean(1)
        assert loss.tolist() == pytest.approx(res.per_task["loss"], abs=1e-9)
    assert math.isfinite(calibration_metrics(logits, labels).nll)
