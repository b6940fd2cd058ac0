"""The input contract: each bad input gets a ValueError naming the argument, the expected and the
actual value (and, through the CLI, exit status 2 with one line and nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metafit import MAML, ProtoNet, Reptile, SinusoidTasks, evaluate, generator, seeded
from metafit.data.datasets import LabelledDataset
from metafit.data.task import Task, TaskBatch
from metafit.engine import meta_gradients
from metafit.models import MLP, Conv4
from metafit.predict import Predictor


@pytest.fixture
def sine() -> tuple[MAML, MLP, dict, TaskBatch]:
    model = seeded(0, lambda: MLP(1, (8,), 1))
    algo = MAML(inner_lr=0.01, criterion="mse")
    tasks = SinusoidTasks(k_shot=5, generator=generator(0)).sample_batch(3)
    return algo, model, algo.init(model), tasks


def test_evaluate_refuses_negative_steps(sine) -> None:
    algo, model, mp, tasks = sine
    with pytest.raises(ValueError, match=r"^steps must be an int >= 0, got -1$"):
        evaluate(algo, model, mp, tasks, steps=-1)


@pytest.mark.parametrize("lr", [0.0, -0.5, float("nan"), float("inf")])
def test_evaluate_refuses_a_non_positive_or_non_finite_lr(sine, lr: float) -> None:
    algo, model, mp, tasks = sine
    with pytest.raises(ValueError, match=r"^lr must be a finite number > 0, got "):
        evaluate(algo, model, mp, tasks, lr=lr)


def test_adapt_refuses_a_non_positive_lr(sine) -> None:
    algo, model, mp, tasks = sine
    t = tasks[0]
    with pytest.raises(ValueError, match=r"^lr must be a finite number > 0, got 0$"):
        algo.adapt(model, mp, {}, t.support_x, t.support_y, lr=0)
    with pytest.raises(ValueError, match=r"^lr must be a finite number > 0, got -1.0$"):
        Predictor(algo, model, mp).adapt(t.support_x, t.support_y, lr=-1.0)
    with pytest.raises(ValueError, match=r"^steps must be an int >= 0, got -2$"):
        Predictor(algo, model, mp).adapt(t.support_x, t.support_y, steps=-2)


def test_inner_loop_settings_for_a_learner_without_one_are_refused() -> None:
    model = seeded(0, lambda: Conv4(1, None, width=4, image_size=16))
    algo = ProtoNet()
    t = TaskBatch(
        torch.rand(2, 3, 1, 16, 16),
        torch.arange(3).expand(2, 3),
        torch.rand(2, 3, 1, 16, 16),
        torch.arange(3).expand(2, 3),
        n_way=3,
    )
    with pytest.raises(
        ValueError, match="steps, lr and curve_steps are inner-loop settings, but ProtoNet has no inner loop"
    ):
        evaluate(algo, model, algo.init(model), t, steps=3)


@pytest.mark.parametrize("where", ["support_x", "support_y", "query_x", "query_y"])
def test_non_finite_values_are_refused_when_a_task_is_built(where: str) -> None:
    parts = {
        "support_x": torch.zeros(4, 1),
        "support_y": torch.zeros(4, 1),
        "query_x": torch.zeros(3, 1),
        "query_y": torch.zeros(3, 1),
    }
    parts[where][1, 0] = float("nan")
    with pytest.raises(ValueError, match=rf"^{where} contains 1 non-finite value\(s\) \(NaN or inf\); expected finite"):
        Task(**parts)
    batch = {k: v[None] for k, v in parts.items()}
    with pytest.raises(ValueError, match=rf"^{where} contains 1 non-finite value"):
        TaskBatch(**batch)


def test_non_finite_values_are_refused_when_a_dataset_is_built() -> None:
    x = torch.zeros(4, 2)
    x[2, 1] = float("inf")
    with pytest.raises(
        ValueError, match=r"^x contains 1 non-finite value\(s\) \(NaN or inf; the first in row 2\); expected none$"
    ):
        LabelledDataset(x, torch.tensor([0, 0, 1, 1]), ("a", "b"))
    # checked block by block (a bounded buffer for memory-mapped data): the count spans blocks
    y = torch.arange(10) % 2
    big = torch.zeros(10, 3)
    big[1, 0] = big[7, 2] = float("nan")
    ds = LabelledDataset(torch.zeros(10, 3), y, ("a", "b"))
    object.__setattr__(ds, "x", big)
    with pytest.raises(ValueError, match=r"^x contains 2 non-finite value\(s\) \(NaN or inf; the first in row 1\)"):
        ds.check_finite(chunk_elements=6)  # two rows per block


def test_evaluate_refuses_tasks_changed_in_place_to_hold_nan(sine) -> None:
    algo, model, mp, tasks = sine
    tasks.query_y[1, 2, 0] = float("nan")  # after construction: evaluate checks again
    with pytest.raises(ValueError, match=r"^evaluate: tasks: query_y contains 1 non-finite value"):
        evaluate(algo, model, mp, tasks)


def test_an_input_that_does_not_fit_a_metafit_backbone_names_both_shapes() -> None:
    model = seeded(0, lambda: MLP(1, (8,), 1))
    algo = MAML(inner_lr=0.01, criterion="mse")
    task = Task(torch.zeros(5, 3), torch.zeros(5, 1), torch.zeros(4, 3), torch.zeros(4, 1))
    with pytest.raises(
        ValueError,
        match=r"input of per-example shape \(3,\) does not fit MLP, which expects per-example "
        r"shape \(1,\) \(full input shape \(5, 3\)\)",
    ):
        meta_gradients(algo, model, algo.init(model), {}, [task])


def test_an_input_that_does_not_fit_any_plain_module_names_the_shape() -> None:
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x)

    model = Net()
    algo = MAML(inner_lr=0.01, criterion="mse")
    task = Task(torch.zeros(5, 7), torch.zeros(5, 1), torch.zeros(4, 7), torch.zeros(4, 1))
    with pytest.raises(
        ValueError,
        match=r"input of per-example shape \(7,\) does not fit Net \(full input shape \(5, 7\)\): "
        r"mat1 and mat2 shapes cannot be multiplied",
    ):
        meta_gradients(algo, model, algo.init(model), {}, [task])


def test_regression_targets_that_do_not_match_the_output_are_refused() -> None:
    model = seeded(0, lambda: MLP(1, (8,), 1))
    algo = MAML(inner_lr=0.01, criterion="mse")
    task = Task(torch.zeros(5, 1), torch.zeros(5, 2), torch.zeros(4, 1), torch.zeros(4, 2))
    with pytest.raises(
        ValueError,
        match=r"targets must match the model's output shape \(5, 1\) \(one target per output\), "
        r"got shape \(5, 2\)",
    ):
        meta_gradients(algo, model, algo.init(model), {}, [task])


def test_class_labels_outside_the_head_are_refused() -> None:
    model = seeded(0, lambda: MLP(2, (8,), 5))
    algo = MAML(inner_lr=0.1)
    task = Task(torch.zeros(6, 2), torch.tensor([0, 1, 2, 3, 4, 7]), torch.zeros(2, 2), torch.tensor([0, 1]))
    with pytest.raises(
        ValueError,
        match=r"labels must hold class labels in 0..4 \(the model's output has 5 classes\), "
        r"got labels in 0..7",
    ):
        meta_gradients(algo, model, algo.init(model), {}, [task])


def test_protonet_labels_outside_the_task_are_refused() -> None:
    model = seeded(0, lambda: Conv4(1, None, width=4, image_size=16))
    task = Task(
        torch.rand(3, 1, 16, 16), torch.tensor([0, 1, 5]), torch.rand(3, 1, 16, 16), torch.tensor([0, 1, 2]), n_way=3
    )
    with pytest.raises(
        ValueError, match=r"support_y must hold class labels in 0..2 \(the task has 3 classes\), got labels in 0..5"
    ):
        ProtoNet().loss(model, ProtoNet().init(model), {}, task)


def test_reptile_refuses_zero_inner_steps() -> None:
    with pytest.raises(
        ValueError,
        match=r"inner_steps must be >= 1 for Reptile, got 0: with no inner step phi = theta and "
        r"the meta-gradient theta - phi is exactly zero forever",
    ):
        Reptile(inner_steps=0)


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "metafit", *argv], capture_output=True, text=True, timeout=300)


def test_cli_bad_inputs_exit_2_with_one_line_and_write_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ok = _cli(
        "train",
        "--dataset",
        "sinusoid",
        "--algo",
        "maml",
        "--steps",
        "2",
        "--run-dir",
        str(run),
        "--quiet",
        "--set",
        "data.eval_tasks=3",
        "--path",
        "loop",
    )
    assert ok.returncode == 0, ok.stderr
    before = sorted(p.name for p in run.rglob("*"))
    cases = [
        (("eval", str(run), "--inner-steps", "-1"), "metafit: error: --inner-steps must be an int >= 0, got -1"),
        (("eval", str(run), "--inner-lr", "0"), "metafit: error: --inner-lr must be a finite number > 0, got 0.0"),
        (("eval", str(run), "--episodes", "0"), "metafit: error: --episodes must be an int >= 1, got 0"),
    ]
    for argv, message in cases:
        r = _cli(*argv)
        assert r.returncode == 2, (argv, r.stderr)
        assert r.stderr.strip() == message, r.stderr
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written, nothing overwritten
    fresh = tmp_path / "fresh"
    r = _cli("train", "--algo", "reptile", "--set", "algo.inner_steps=0", "--run-dir", str(fresh), "--steps", "2")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "inner_steps must be >= 1 for Reptile, got 0" in r.stderr
    assert not fresh.exists()
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 2
