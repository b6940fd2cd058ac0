"""init_from: warm starts with names and shapes checked."""

from __future__ import annotations

import pytest
import torch

from metafit import seeded
from metafit.algorithms.heads import CosineHead
from metafit.algorithms.metric import MetricLearner
from metafit.algorithms.warm_start import init_from
from metafit.models import MLP, Conv4


def test_init_from_copies_every_matching_tensor_and_keeps_other_groups() -> None:
    target_model = seeded(0, lambda: Conv4(1, None, width=4, image_size=16))
    source_model = seeded(1, lambda: Conv4(1, None, width=4, image_size=16))
    algo = MetricLearner(CosineHead(scale=7.0))
    mp = algo.init(target_model)
    src = {k: v.detach() for k, v in source_model.named_parameters()}
    src["classifier.weight"] = torch.zeros(3, 3)  # unused source names are ignored
    out = init_from(mp, src)
    for k, v in source_model.named_parameters():
        assert torch.equal(out["model"][k], v.detach())
        assert out["model"][k].requires_grad and out["model"][k].is_leaf
        assert out["model"][k].data_ptr() != v.data_ptr()
    assert float(out["head"]["scale"].detach()) == 7.0
    assert not torch.equal(mp["model"]["features.0.0.weight"], out["model"]["features.0.0.weight"])  # input untouched


def test_init_from_prefix_map_renames_source_names() -> None:
    target = {"model": {"head.weight": torch.zeros(2, 3), "head.bias": torch.zeros(2)}}
    src = {"net.head.weight": torch.ones(2, 3), "net.head.bias": torch.full((2,), 2.0)}
    out = init_from(target, src, prefix_map={"net.": ""})
    assert (
        float(out["model"]["head.bias"][0].detach()) == 2.0 and float(out["model"]["head.weight"].detach().sum()) == 6.0
    )


def test_init_from_casts_to_target_dtype() -> None:
    target = {"model": {"w": torch.zeros(2, dtype=torch.float64)}}
    out = init_from(target, {"w": torch.ones(2, dtype=torch.float32)})
    assert out["model"]["w"].dtype == torch.float64


def test_init_from_refuses_a_mismatched_shape_naming_parameter_and_shapes() -> None:
    target = MetricLearner().init(seeded(0, lambda: MLP(2, (4,), 3)))
    src = {k: v.detach() for k, v in seeded(0, lambda: MLP(2, (5,), 3)).named_parameters()}
    with pytest.raises(ValueError, match=r"parameter body\.0\.weight: expected shape \(4, 2\), got \(5, 2\)"):
        init_from(target, src)


def test_init_from_refuses_a_missing_name() -> None:
    target = MetricLearner().init(seeded(0, lambda: MLP(2, (4,), 3)))
    src = {k: v.detach() for k, v in seeded(0, lambda: MLP(2, (4,), 3)).named_parameters() if k != "head.bias"}
    with pytest.raises(ValueError, match=r"source_params has no parameter 'head\.bias' \(expected shape \(3,\)\)"):
        init_from(target, src)


def test_init_from_refuses_groups_and_unknown_target_group() -> None:
    target = MetricLearner().init(seeded(0, lambda: MLP(2, (4,), 3)))
    with pytest.raises(TypeError, match=r"pass one group, e\.g\. source\['model'\]"):
        init_from(target, target)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"group must be one of the target's groups \['model'\], got 'head'"):
        init_from(target, target["model"], group="head")
    with pytest.raises(ValueError, match="renames both"):
        init_from(
            {"model": {"a": torch.zeros(1)}},
            {"x.a": torch.zeros(1), "y.a": torch.zeros(1)},
            prefix_map={"x.": "", "y.": ""},
        )


def test_init_from_only_fills_the_names_under_a_prefix() -> None:
    target = {"model": {"backbone.w": torch.zeros(2, 3), "backbone.b": torch.zeros(2), "attn.w": torch.full((4,), 5.0)}}
    src = {"w": torch.ones(2, 3), "b": torch.full((2,), 2.0)}  # a pretraining network, no transformer
    out = init_from(target, src, prefix_map={"": "backbone."}, only="backbone.")
    assert float(out["model"]["backbone.w"].detach().sum()) == 6.0 and float(out["model"]["backbone.b"][0]) == 2.0
    assert torch.equal(out["model"]["attn.w"].detach(), torch.full((4,), 5.0)) and out["model"]["attn.w"].requires_grad
    with pytest.raises(ValueError, match=r"no parameter of group 'model' starts with only='head.'"):
        init_from(target, src, only="head.")
    with pytest.raises(ValueError, match=r"source_params has no parameter 'backbone.w'"):
        init_from(target, {"b": torch.zeros(2)}, prefix_map={"": "backbone."}, only="backbone.")
