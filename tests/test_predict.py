"""adapt_and_predict / Predictor agree with the library evaluator on the same episodes."""

from __future__ import annotations

import pytest
import torch

from metafit import MAML, ProtoNet, evaluate
from metafit.models import Conv4
from metafit.predict import Predictor, adapt_and_predict
from tests.conftest import image_tasks


@pytest.mark.parametrize("algo", [MAML(inner_lr=0.2, inner_steps=2), ProtoNet()])
def test_predictor_accuracy_matches_evaluator(algo) -> None:  # noqa: ANN001
    tasks = image_tasks(n_tasks=3, n_way=3, k_shot=2, n_query=3, side=16, dtype=torch.float32)
    model = torch.manual_seed(0) and Conv4(1, None if isinstance(algo, ProtoNet) else 3, width=8, image_size=16)
    mp = algo.init(model)
    res = evaluate(algo, model, mp, tasks)
    pred = Predictor(algo, model, mp, preprocessing={"kind": "image", "image_size": 16, "channels": 1})
    accs = []
    for t in tasks:
        scores = pred.adapt(t.support_x, t.support_y, n_way=3)(t.query_x)
        assert scores.shape == (t.n_query, 3) and torch.allclose(scores.sum(-1), torch.ones(t.n_query))
        accs.append(float((scores.argmax(-1) == t.query_y).float().mean()))
    assert accs == pytest.approx(res.per_task["accuracy"], abs=0)


def test_adapt_and_predict_regression_returns_outputs() -> None:
    from metafit.data import sinusoid_eval_tasks
    from metafit.models import MLP

    t = sinusoid_eval_tasks(1, 5, 7)[0]
    model = MLP(1, (8,), 1)
    algo = MAML(inner_lr=0.01, inner_steps=3, criterion="mse")
    out = adapt_and_predict(algo, model, algo.init(model), t.support_x, t.support_y, t.query_x)
    res = evaluate(algo, model, algo.init(model), [t])
    assert out.shape == (7, 1)
    assert float(((out - t.query_y) ** 2).mean()) == pytest.approx(res.per_task["mse"][0], rel=1e-6)


def test_predictor_rejects_bad_inputs() -> None:
    algo = MAML(inner_lr=0.2, inner_steps=1)
    model = Conv4(1, 3, width=4, image_size=16)
    pred = Predictor(algo, model, algo.init(model), preprocessing={"kind": "image", "image_size": 16, "channels": 1})
    x, y = torch.randn(6, 1, 16, 16), torch.arange(3).repeat(2)
    with pytest.raises(ValueError, match=r"per-example shape \(1, 16, 16\).*got \(1, 28, 28\)"):
        pred.adapt(torch.randn(6, 1, 28, 28), y)
    with pytest.raises(ValueError, match=r"per-example shape \(1, 16, 16\).*got \(3, 16, 16\)"):
        pred.adapt(torch.randn(6, 3, 16, 16), y)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="support_x contains NaN or inf"):
        pred.adapt(bad, y)
    with pytest.raises(ValueError, match="4 classes but the model was trained with a 3-way head"):
        pred.adapt(torch.randn(8, 1, 16, 16), torch.arange(4).repeat(2))
    adapted = pred.adapt(x, y)
    q = torch.randn(2, 1, 16, 16)
    q[1] = float("inf")
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        adapted(q)
