"""Keras 3 (torch backend) models through the same core: identical meta-gradient to torch."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", reason="Keras 3 is an optional extra (pip install metafit[keras])")

from metafit import MAML, SinusoidTasks, Trainer, generator, meta_gradients  # noqa: E402
from metafit.keras_adapter import KerasModule  # noqa: E402
from metafit.models import MLP  # noqa: E402

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch", reason="Keras is not on the torch backend")


def _pair() -> tuple[KerasModule, MLP]:
    keras.utils.set_random_seed(0)
    net = keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    km = KerasModule(net)
    tm = MLP(1, (16, 16), 1)
    kv = [p.detach() for p in km.parameters()]  # kernel (in, out), bias, ...
    with torch.no_grad():
        for lin, (w, b) in zip([tm.body[0], tm.body[2], tm.head], zip(kv[0::2], kv[1::2])):
            lin.weight.copy_(w.T)
            lin.bias.copy_(b)
    return km, tm


@pytest.mark.parametrize("first_order", [False, True])
def test_keras_model_meta_gradient_equals_torch_mlp(first_order: bool) -> None:
    km, tm = _pair()
    algo = MAML(inner_lr=0.05, inner_steps=2, first_order=first_order, criterion="mse")
    batch = SinusoidTasks(k_shot=5, generator=generator(0)).sample_batch(3)
    gk, mk = meta_gradients(algo, km, algo.init(km), {}, batch, path="loop")
    gt, mt = meta_gradients(algo, tm, algo.init(tm), {}, batch, path="loop")
    assert mk["loss"] == pytest.approx(mt["loss"], rel=1e-5)
    names_k = list(gk["model"])
    grads_t = [
        gt["model"][n]
        for n in ("body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias", "head.weight", "head.bias")
    ]
    for nk, g_t in zip(names_k, grads_t):
        g_k = gk["model"][nk]
        torch.testing.assert_close(g_k.T if g_k.dim() == 2 else g_k, g_t, rtol=1e-4, atol=1e-6)


def test_keras_model_trains_with_the_engine() -> None:
    km, _ = _pair()
    tr = Trainer(MAML(inner_lr=0.01, criterion="mse"), km, path="loop")
    before = {k: v.detach().clone() for k, v in tr.meta_params["model"].items()}
    tr.fit(SinusoidTasks(k_shot=5, tasks_per_batch=4, generator=generator(1)), 3)
    assert any(not torch.equal(before[k], v.detach()) for k, v in tr.meta_params["model"].items())


def test_keras_adapter_rejects_unbuilt_model() -> None:
    with pytest.raises(ValueError, match="not built"):
        KerasModule(keras.Sequential([keras.layers.Dense(2)]))
