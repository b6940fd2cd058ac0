"""PermutationEnsemble (TabPFN's test-time ensemble): oracle, invariances, padding and refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from metafit.algorithms import MAML, InContextLearner, PermutationEnsemble, ProtoNet
from metafit.algorithms.ensemble import used_columns
from metafit.app.cli import main
from metafit.functional import buffers_of, params_of
from metafit.models import MLP, InContextClassifier
from metafit.seeding import seeded


def _icl() -> InContextClassifier:
    return seeded(
        0, lambda: InContextClassifier(MLP(8, (16,), 16), 16, max_way=5, d_model=16, n_heads=2, n_layers=2, d_ff=32)
    ).double()


def _task(n_way: int = 4, k: int = 3, q: int = 5, used: int = 6, width: int = 8) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    sy = torch.arange(n_way).repeat_interleave(k)
    sx = torch.randn(len(sy), width, generator=g, dtype=torch.float64)
    qx = torch.randn(n_way * q, width, generator=g, dtype=torch.float64)
    sx[:, used:], qx[:, used:] = 0, 0  # a zero-padded table
    return sx, sy, qx


def _logp(learner, model, x_s, y_s, x_q, n_way):  # noqa: ANN001, ANN202
    mp, bufs = learner.init(model), buffers_of(model)
    with torch.no_grad():
        state = learner.adapt(model, mp, bufs, x_s, y_s, n_way=n_way)
        return learner.predict(model, mp, bufs, state, x_q)


def test_one_member_is_the_inner_learner() -> None:
    model, sx, sy, qx = _icl(), *_task()
    inner = _logp(InContextLearner(), model, sx, sy, qx, 4)
    ens = _logp(PermutationEnsemble(InContextLearner(), members=1), model, sx, sy, qx, 4)
    torch.testing.assert_close(ens, F.log_softmax(inner, -1))


def test_members_average_the_probabilities_of_hand_permuted_tasks() -> None:
    model, (sx, sy, qx) = _icl(), _task()
    ens = _logp(PermutationEnsemble(InContextLearner(), members=3, seed=5), model, sx, sy, qx, 4)
    g = torch.Generator().manual_seed(5)  # the same draws: member 0 is the identity
    probs = [F.softmax(_logp(InContextLearner(), model, sx, sy, qx, 4), -1)]
    for _ in range(2):
        pi = torch.randperm(4, generator=g)
        cols = torch.cat([torch.randperm(6, generator=g), torch.arange(6, 8)])
        logits = _logp(InContextLearner(), model, sx[:, cols], pi[sy], qx[:, cols], 4)
        p = F.softmax(logits, -1)
        probs.append(torch.stack([p[:, int(pi[c])] for c in range(4)], 1))  # back to the true classes
    torch.testing.assert_close(ens, torch.log(torch.stack(probs).mean(0)))
    assert not torch.allclose(ens, torch.log(probs[0]))  # the members differ


def test_a_learner_invariant_to_both_permutations_is_unchanged() -> None:
    # Euclidean ProtoNet on raw vectors: relabelling the classes permutes its logits, and
    # reordering the columns leaves every distance as it was
    model, (sx, sy, qx) = torch.nn.Identity(), _task()
    plain = _logp(ProtoNet(), model, sx, sy, qx, 4)
    ens = _logp(PermutationEnsemble(ProtoNet(), members=6), model, sx, sy, qx, 4)
    torch.testing.assert_close(ens, F.log_softmax(plain, -1))


def test_padding_columns_stay_at_the_end_and_same_seed_same_predictions() -> None:
    sx, _, _ = _task(used=5)
    assert used_columns(sx) == 5 and used_columns(torch.zeros(3, 4)) == 0
    model, (sx, sy, qx) = _icl(), _task()
    state = PermutationEnsemble(InContextLearner(), members=4).adapt(
        model, {"model": params_of(model)}, buffers_of(model), sx, sy
    )
    for m in state.members[1:]:
        assert sorted(m.columns[:6].tolist()) == list(range(6)) and m.columns[6:].tolist() == [6, 7]
    a = _logp(PermutationEnsemble(InContextLearner(), members=4), model, sx, sy, qx, 4)
    b = _logp(PermutationEnsemble(InContextLearner(), members=4), model, sx, sy, qx, 4)
    assert torch.equal(a, b) and math.isclose(float(a.exp().sum(-1).mean()), 1.0, rel_tol=1e-9)


def test_refusals() -> None:
    with pytest.raises(ValueError, match="members must be an int >= 1"):
        PermutationEnsemble(InContextLearner(), members=0)
    with pytest.raises(ValueError, match="without an inner loop"):
        PermutationEnsemble(MAML(inner_lr=0.1, inner_steps=1))


TINY = {
    "data": {
        "dataset": "tabular-prior",
        "n_features": 16,
        "n_way": 3,
        "k_shot": 5,
        "n_query": 5,
        "tasks_per_batch": 2,
        "eval_tasks": 4,
    },
    "model": {"arch": "mlp", "hidden": [16], "d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32},
    "algo": {"name": "caml"},
    "train": {"steps": 3},
}


def test_compare_scores_a_run_as_an_ensemble(tmp_path: Path) -> None:
    cfg = tmp_path / "tab.json"
    cfg.write_text(json.dumps(TINY))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--run-dir", str(run), "--quiet"]) == 0
    outs = {}
    for m in (1, 4):
        out = tmp_path / f"e{m}.json"
        argv = ["compare", str(run), "--dataset", "iris", "--setting", "3:5", "--n-query", "5", "--episodes", "6"]
        assert main([*argv, "--ensemble", str(m), "--out", str(out)]) == 0
        outs[m] = json.loads(out.read_text())["settings"][0]
    assert "ensemble" not in outs[1] and outs[4]["ensemble"].startswith("4 members")
    assert outs[1]["scores"]["run"]["calibration"] != outs[4]["scores"]["run"]["calibration"]
    # the classical baselines are the same in both
    lr = "logistic regression (support rows)"
    assert outs[1]["scores"][lr]["per_episode"] == outs[4]["scores"][lr]["per_episode"]
    assert (tmp_path / "e4.md").read_text().count("ensemble of 4 members") == 1
