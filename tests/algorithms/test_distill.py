"""RFS-distill (self-distillation of a pretrained classifier): the loss by hand, its gradients,
the checks on the teacher, and the run path (``train.distill_from``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metafit import meta_gradients, seeded
from metafit.algorithms.distill import SelfDistill, distillation_loss
from metafit.algorithms.pretrain import Pretrain
from metafit.app.cli import main
from metafit.app.config import RunConfig
from metafit.data.batches import ClassBatchSampler
from metafit.data.datasets import from_tensors
from metafit.models import MLP


def _batch(n_classes: int = 6, per_class: int = 10, dim: int = 5):  # noqa: ANN202
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    x = torch.randn(n_classes, dim, generator=g)[y] + 0.5 * torch.randn(y.numel(), dim, generator=g)
    ds = from_tensors(x.double(), y)
    return ClassBatchSampler(ds, 24, generator=torch.Generator().manual_seed(1)).sample_batch().to(torch.float64)


def test_distillation_loss_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(7, 4, generator=g, dtype=torch.float64)
    p_t = torch.softmax(t / 4, -1)
    want = 16 * (p_t * (p_t.log() - torch.log_softmax(s / 4, -1))).sum(-1).mean()
    torch.testing.assert_close(distillation_loss(s, t, 4.0), want)
    assert float(distillation_loss(t, t, 2.0)) == pytest.approx(0.0, abs=1e-12)
    s.requires_grad_(True)
    t.requires_grad_(True)
    distillation_loss(s, t, 4.0).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0 and t.grad is None  # the teacher is a constant


def test_self_distill_loss_mixes_cross_entropy_and_the_teacher_term() -> None:
    batch = _batch()
    model = seeded(0, lambda: MLP(5, (8,), 4)).double()
    student = Pretrain(n_classes=6, feature_dim=4)
    teacher = student.init(seeded(1, lambda: MLP(5, (8,), 4)).double(), generator=torch.Generator().manual_seed(3))
    algo = SelfDistill(student, teacher, ce_weight=0.3, kd_weight=0.7, temperature=2.0)
    mp = algo.init(model, generator=torch.Generator().manual_seed(0))
    task = batch[0]
    loss, metrics = algo.loss(model, mp, {}, task)
    s_logits = student.classifier_logits(model, mp, {}, task.query_x)
    t_logits = student.classifier_logits(model, teacher, {}, task.query_x)
    ce = F.cross_entropy(s_logits, task.query_y)
    torch.testing.assert_close(loss, 0.3 * ce + 0.7 * distillation_loss(s_logits, t_logits, 2.0))
    torch.testing.assert_close(metrics["ce"], ce.detach())
    # only the student's meta-parameters get gradients, on the loop and vmap paths alike
    gl, _ = meta_gradients(algo, model, mp, {}, batch, path="loop")
    gv, _ = meta_gradients(algo, model, mp, {}, batch, path="vmap")
    for grp in gl:
        for k in gl[grp]:
            torch.testing.assert_close(gv[grp][k], gl[grp][k], rtol=1e-10, atol=1e-12)
    # no distillation weight: exactly the student's pretraining loss
    plain = SelfDistill(student, teacher, ce_weight=1.0, kd_weight=0.0)
    torch.testing.assert_close(plain.loss(model, mp, {}, task)[0], student.loss(model, mp, {}, task)[0])


def test_self_distill_checks_its_teacher() -> None:
    model = MLP(5, (8,), 4)
    student = Pretrain(n_classes=6, feature_dim=4)
    teacher = Pretrain(n_classes=7, feature_dim=4).init(model)
    with pytest.raises(ValueError, match=r"the teacher's classifier has 7 classes, the student's n_classes=6"):
        SelfDistill(student, teacher)
    wide = Pretrain(n_classes=6, feature_dim=4).init(MLP(5, (9,), 4))
    with pytest.raises(ValueError, match=r"the teacher's parameter 'body.0.weight' has shape \(9, 5\)"):
        SelfDistill(student, wide).init(model)
    with pytest.raises(ValueError, match=r"teacher must hold the groups 'model' and 'classifier'"):
        SelfDistill(student, {"model": {}})
    with pytest.raises(ValueError, match=r"temperature must be a number > 0, got 0"):
        SelfDistill(student, Pretrain(n_classes=6, feature_dim=4).init(model), temperature=0)
    source = Pretrain(n_classes=6, feature_dim=4).init(model)
    algo = SelfDistill(student, source)
    with torch.no_grad():
        source["classifier"]["bias"].add_(1.0)
    assert float(algo.teacher["classifier"]["bias"].abs().sum()) == 0  # a frozen copy


def test_distill_from_a_pretrain_run_on_the_product_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = np.random.default_rng(0)
    y = np.repeat(np.arange(30), 10)
    x = (g.normal(size=(30, 6))[y] * 3 + g.normal(size=(300, 6))).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    common = ["--dataset", str(tmp_path / "d.npz"), "--algo", "pretrain", "--quiet", "--set", "data.batch_size=32"]
    common += [
        "--set",
        "data.n_way=3",
        "--set",
        "data.k_shot=2",
        "--set",
        "data.n_query=3",
        "--set",
        "data.eval_tasks=5",
    ]
    assert main(["train", *common, "--run-dir", str(tmp_path / "teacher"), "--steps", "20"]) == 0
    student = tmp_path / "student"
    code = main(
        [
            "train",
            *common,
            "--run-dir",
            str(student),
            "--steps",
            "20",
            "--set",
            f"train.distill_from={tmp_path / 'teacher'}",
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    assert any("kd" in r and "ce" in r for r in rows if r.get("kind") == "train")
    assert main(["eval", str(student), "--episodes", "4"]) == 0  # an ordinary pretrain run at test time
    with pytest.raises(ValueError, match=r"algo.name must be 'pretrain' when train.distill_from is set"):
        RunConfig.from_dict(
            {"data": {"dataset": "omniglot"}, "algo": {"name": "protonet"}, "train": {"distill_from": "runs/x"}}
        )
    with pytest.raises(ValueError, match=r"train.distill_weight must be a number in \[0, 1\], got 1.5"):
        RunConfig.from_dict({"algo": {"name": "pretrain"}, "train": {"distill_weight": 1.5}})


def test_an_in_context_classifier_starts_from_a_frozen_pretrained_backbone(tmp_path: Path) -> None:
    """``train.init_from`` + ``init_prefix = "backbone."`` + ``freeze = ["backbone."]``: the encoder
    is the pretraining run's network and stays exactly so; the transformer is meta-trained."""
    from safetensors.torch import load_file

    g = np.random.default_rng(0)
    y = np.repeat(np.arange(30), 10)
    x = (g.normal(size=(30, 6))[y] * 3 + g.normal(size=(300, 6))).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    common = ["--dataset", str(tmp_path / "d.npz"), "--quiet", "--set", "data.n_way=3", "--set", "data.k_shot=2"]
    common += ["--set", "data.n_query=3", "--set", "data.eval_tasks=5", "--set", "model.hidden=[16, 8]"]
    pre = tmp_path / "pre"
    assert main(["train", *common, "--algo", "pretrain", "--run-dir", str(pre), "--steps", "10"]) == 0
    icl = tmp_path / "icl"
    extra = ["--set", f"train.init_from={pre}", "--set", "train.init_prefix=backbone."]
    extra += ["--set", 'train.freeze=["backbone."]', "--set", "model.d_model=16", "--set", "model.n_heads=2"]
    assert main(["train", *common, "--algo", "caml", "--run-dir", str(icl), "--steps", "10", *extra]) == 0

    def tensors(run: Path) -> dict[str, torch.Tensor]:
        (ck,) = sorted((run / "checkpoints").glob("*.safetensors"))[-1:]
        return load_file(str(ck))

    a, b = tensors(pre), tensors(icl)
    backbone = {k: v for k, v in b.items() if "backbone." in k}
    assert backbone, sorted(b)[:5]
    for k, v in backbone.items():
        src = k.replace("backbone.", "", 1)
        assert src in a and torch.equal(v, a[src]), k  # identical after 10 meta-training steps
    fresh = tmp_path / "fresh"
    assert main(["train", *common, "--algo", "caml", "--run-dir", str(fresh), "--steps", "0"]) == 0
    others = [k for k in b if "backbone." not in k and k.startswith("meta") and "adam" not in k.lower()]
    assert any(not torch.equal(b[k], tensors(fresh)[k]) for k in others), others[:5]  # the rest trained
    with pytest.raises(ValueError, match=r"train.freeze entry 'nope.' matches no model parameter"):
        from metafit.app.runs import train as run_train

        cfg = RunConfig.from_dict(
            {
                "data": {"dataset": str(tmp_path / "d.npz"), "n_way": 3, "k_shot": 2, "n_query": 3},
                "algo": {"name": "protonet"},
                "train": {"steps": 1, "freeze": ["nope."]},
            }
        )
        run_train(cfg, tmp_path / "bad")


def test_the_teacher_keeps_its_own_classifier_kind() -> None:
    from metafit.algorithms.pretrain import CosineClassifier

    batch = _batch()
    model = seeded(0, lambda: MLP(5, (8,), 4)).double()
    student = Pretrain(n_classes=6, feature_dim=4)  # a linear classifier
    cosine = Pretrain(n_classes=6, feature_dim=4, classifier=CosineClassifier(scale=5.0))
    teacher = cosine.init(seeded(1, lambda: MLP(5, (8,), 4)).double())
    assert "bias" not in teacher["classifier"]
    algo = SelfDistill(student, teacher, teacher_learner=cosine, ce_weight=0.0, kd_weight=1.0)
    mp = algo.init(model)
    task = batch[0]
    s_logits = student.classifier_logits(model, mp, {}, task.query_x)
    t_logits = cosine.classifier_logits(model, teacher, {}, task.query_x)
    torch.testing.assert_close(algo.loss(model, mp, {}, task)[0], distillation_loss(s_logits, t_logits, 4.0))
    with pytest.raises(TypeError, match=r"teacher_learner must be a Pretrain learner"):
        SelfDistill(student, teacher, teacher_learner=object())  # type: ignore[arg-type]
