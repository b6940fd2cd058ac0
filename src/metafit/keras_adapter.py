"""Keras 3 models (torch backend) as metafit mapping functions.

``torch.func.functional_call`` swaps the tensors of ``nn.Parameter`` attributes, which does not
reach Keras variables. :class:`KerasModule` is a plain ``nn.Module`` that owns one parameter per
Keras variable (trainable ones as parameters, non-trainable ones as buffers) and whose
``forward`` calls Keras's own ``model.stateless_call(trainable, non_trainable, x)`` with its
current tensors. Every metafit learner therefore works on it unchanged, second order included
(``stateless_call`` is differentiable through the torch backend).

Needs ``keras>=3`` with ``KERAS_BACKEND=torch`` set before Keras is imported
(``pip install metafit[keras]``).

Example:
    >>> import os; os.environ.setdefault("KERAS_BACKEND", "torch")  # doctest: +SKIP
    >>> import keras                                                 # doctest: +SKIP
    >>> net = keras.Sequential([keras.Input((1,)), keras.layers.Dense(40, activation="relu"),
    ...                         keras.layers.Dense(1)])              # doctest: +SKIP
    >>> model = KerasModule(net)                                     # doctest: +SKIP
    >>> MAML(criterion="mse").init(model)["model"].keys()            # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["KerasModule"]


def _name(path: str) -> str:
    return path.replace("/", "__").replace(".", "_")


class KerasModule(nn.Module):
    """Wraps a built Keras 3 model (torch backend) as an ``nn.Module``.

    Args:
        keras_model: A built ``keras.Model`` / ``keras.Sequential`` (its variables exist).
        training: Passed to ``stateless_call`` (dropout etc.); non-trainable state updates
            returned by Keras are discarded, so buffers are never mutated.

    Parameter names are the Keras variable paths with ``/`` replaced by ``__`` (e.g.
    ``sequential__dense__kernel``), so name filters such as ANIL's work on them.

    Raises:
        ValueError: if Keras does not use the torch backend or the model is not built.
    """

    def __init__(self, keras_model: Any, *, training: bool = False) -> None:
        super().__init__()
        import keras

        if keras.backend.backend() != "torch":
            raise ValueError(
                f"KerasModule needs the torch backend of Keras 3 (set KERAS_BACKEND=torch before importing keras); "
                f"got backend {keras.backend.backend()!r}"
            )
        if not getattr(keras_model, "built", False):
            raise ValueError("the Keras model is not built: call it once or give it a keras.Input first")
        # Keep the Keras model out of this module's registry (its own torch-backend Parameters
        # must not appear as our parameters).
        object.__setattr__(self, "_keras_model", keras_model)
        self.training_mode = training
        self._trainable: list[str] = []
        self._non_trainable: list[str] = []
        for v in keras_model.trainable_variables:
            n = _name(v.path)
            self.register_parameter(n, nn.Parameter(torch.as_tensor(v.value).detach().clone()))
            self._trainable.append(n)
        for v in keras_model.non_trainable_variables:
            n = _name(v.path)
            self.register_buffer(n, torch.as_tensor(v.value).detach().clone())
            self._non_trainable.append(n)

    @property
    def keras_model(self) -> Any:
        """The wrapped Keras model (its own variables are not used by ``forward``)."""
        return self._keras_model

    def forward(self, x: Tensor) -> Tensor:
        trainable = [getattr(self, n) for n in self._trainable]
        non_trainable = [getattr(self, n) for n in self._non_trainable]
        y, _ = self._keras_model.stateless_call(trainable, non_trainable, x, training=self.training_mode)
        return y
