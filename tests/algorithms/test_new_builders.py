"""The registry builders of the new learners: keyword-only options with defaults, protocol-conforming learners."""

from __future__ import annotations

import inspect

import pytest

from metafit.algorithms.base import Algorithm, GradientLearner
from metafit.algorithms.mamlpp import build_mamlpp
from metafit.algorithms.metric import (
    build_meta_baseline,
    build_metric,
    build_r2d2,
    build_simple_cnaps,
)
from metafit.algorithms.pretrain import build_pretrain

BUILDERS = {
    "metric": (build_metric, {}),
    "metabaseline": (build_meta_baseline, {}),
    "r2d2": (build_r2d2, {}),
    "simple_cnaps": (build_simple_cnaps, {}),
    "pretrain": (build_pretrain, {"n_classes": 64}),
    "mamlpp": (build_mamlpp, {}),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_builder_options_are_keyword_only_with_defaults(name: str) -> None:
    build, required = BUILDERS[name]
    params = list(inspect.signature(build).parameters.values())
    assert params[0].name == "criterion" and params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    for p in params[1:]:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, p.name
        assert p.default is not inspect.Parameter.empty, p.name
    algo = build("cross_entropy", **required)
    assert isinstance(algo, Algorithm)
    assert algo.spec.tasks == "classification"
    assert isinstance(algo, GradientLearner) == algo.spec.inner_loop


def test_mamlpp_builder_passes_every_option() -> None:
    algo = build_mamlpp(
        "mse",
        inner_lr=0.2,
        inner_steps=3,
        msl_iterations=7,
        first_order_iterations=4,
        learn_inner_lr=False,
        per_step_norm=False,
        eval_inner_lr=0.1,
        eval_inner_steps=6,
    )
    assert (algo.inner_lr, algo.inner_steps, algo.msl_iterations, algo.first_order_iterations) == (0.2, 3, 7, 4)
    assert (algo.learn_inner_lr, algo.per_step_norm, algo.criterion) == (False, False, "mse")
    assert algo.eval_settings().steps == 6 and algo.eval_settings().lr == 0.1
    assert algo.spec.tasks == "regression"
