"""Meta-train a Keras 3 MLP (torch backend) on sinusoid regression with MAML.

KERAS_BACKEND=torch python examples/keras_sinusoid_maml.py --steps 2000
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import torch  # noqa: E402

from metafit import MAML, SinusoidTasks, Trainer, evaluate, generator, sinusoid_eval_tasks  # noqa: E402
from metafit.keras_adapter import KerasModule  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    args = p.parse_args()
    keras.utils.set_random_seed(0)
    net = keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(40, activation="relu"),
            keras.layers.Dense(40, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model = KerasModule(net)
    algo = MAML(inner_lr=0.01, inner_steps=1, eval_inner_steps=10, criterion="mse")
    trainer = Trainer(algo, model, optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-3), path="auto")
    trainer.fit(SinusoidTasks(k_shot=10, tasks_per_batch=25, generator=generator(1)), args.steps)
    res = evaluate(algo, model, trainer.meta_params, sinusoid_eval_tasks(500, k_shot=5), curve_steps=10)
    sys.stdout.write(
        f"Keras MLP + MAML ({args.steps} steps, path {trainer.path}): 5-shot MSE after 10 steps "
        f"{res.metrics['mse']}, before adaptation {res.curve['mse'][0]}\n"
    )


if __name__ == "__main__":
    main()
