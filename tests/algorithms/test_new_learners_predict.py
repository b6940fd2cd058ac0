"""The new learners through metafit.predict: same scores as adapt + predict by hand."""

from __future__ import annotations

import pytest
import torch

from metafit import seeded
from metafit.algorithms.heads import RidgeHead
from metafit.algorithms.mamlpp import MAMLPlusPlus
from metafit.algorithms.metric import MetricLearner
from metafit.algorithms.pretrain import FineTune, LogisticRegressionHead, Pretrain
from metafit.predict import adapt_and_predict
from tests.conftest import TinyConv, image_tasks

CASES = {
    "ridge": (lambda: MetricLearner(RidgeHead()), lambda: TinyConv(n_way=6)),
    "mamlpp": (lambda: MAMLPlusPlus(inner_lr=0.2, inner_steps=2), lambda: TinyConv(n_way=3)),
    "pretrain_lr": (
        lambda: Pretrain(n_classes=4, head=LogisticRegressionHead(), feature_dim=6),
        lambda: TinyConv(n_way=6),
    ),
    "pretrain_finetune": (
        lambda: Pretrain(n_classes=4, head=FineTune(steps=2), feature_dim=6),
        lambda: TinyConv(n_way=6),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_adapt_and_predict_matches_the_learner(name: str) -> None:
    make_algo, make_model = CASES[name]
    algo, model = make_algo(), seeded(0, make_model).double()
    mp = algo.init(model)
    t = image_tasks(1)[0]
    got = adapt_and_predict(algo, model, mp, t.support_x, t.support_y, t.query_x, n_way=3)
    state = algo.adapt(model, mp, {}, t.support_x, t.support_y, n_way=3)
    want = algo.predict(model, mp, {}, state, t.query_x).detach()
    assert got.shape == (t.query_x.shape[0], 3)
    torch.testing.assert_close(got, want.softmax(-1))  # the predictor returns probabilities
