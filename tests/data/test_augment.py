"""RandomShift: a pure, generator-driven translation of image batches, wired to training only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metafit.app.cli import main
from metafit.app.config import RunConfig
from metafit.data import RandomShift
from metafit.data.batches import ClassBatchSampler
from metafit.data.datasets import from_tensors


def _reference_shift(img: torch.Tensor, dy: int, dx: int, s: int) -> torch.Tensor:
    """Shift one (C, H, W) image by hand: out[i, j] = img[clamp(i + dy - s), clamp(j + dx - s)]."""
    c, h, w = img.shape
    out = torch.empty_like(img)
    for i in range(h):
        for j in range(w):
            out[:, i, j] = img[:, min(max(i + dy - s, 0), h - 1), min(max(j + dx - s, 0), w - 1)]
    return out


def test_each_image_is_a_translated_copy_with_replicated_edges() -> None:
    x = torch.rand(2, 3, 2, 7, 9)  # (T, N, C, H, W)
    s = 2
    g = torch.Generator().manual_seed(3)
    out = RandomShift(s)(x, g)
    assert out.shape == x.shape and out.dtype == x.dtype
    g = torch.Generator().manual_seed(3)  # the same draws, in the same order
    dy = torch.randint(0, 2 * s + 1, (6,), generator=g)
    dx = torch.randint(0, 2 * s + 1, (6,), generator=g)
    flat_x, flat_out = x.reshape(6, 2, 7, 9), out.reshape(6, 2, 7, 9)
    for m in range(6):
        torch.testing.assert_close(flat_out[m], _reference_shift(flat_x[m], int(dy[m]), int(dx[m]), s))
    assert not torch.equal(out, x)  # 6 images, 25 shifts each: some moved


def test_same_generator_state_same_output_and_zero_is_identity() -> None:
    x = torch.rand(4, 1, 6, 6)
    a = RandomShift(1)(x, torch.Generator().manual_seed(0))
    b = RandomShift(1)(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert RandomShift(0)(x, torch.Generator()) is x


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_max_shift_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="max_shift must be an int >= 0"):
        RandomShift(bad)  # type: ignore[arg-type]


def test_vectors_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(\.\.\., C, H, W\)"):
        RandomShift(1)(torch.rand(4, 6), torch.Generator())


def test_class_batches_are_augmented_and_labels_kept() -> None:
    ds = from_tensors(torch.rand(40, 1, 8, 8), torch.arange(40) % 4)
    plain = ClassBatchSampler(ds, 10, generator=torch.Generator().manual_seed(1)).sample_batch()
    aug = ClassBatchSampler(ds, 10, generator=torch.Generator().manual_seed(1), augment=RandomShift(2)).sample_batch()
    assert torch.equal(plain.query_y, aug.query_y) and not torch.equal(plain.query_x, aug.query_x)


def test_config_refuses_a_shift_for_non_images() -> None:
    for dataset in ("sinusoid", "tabular-prior", "table.csv"):
        with pytest.raises(ValueError, match="data.augment_shift"):
            RunConfig.from_dict({"data": {"dataset": dataset, "augment_shift": 2}})
    with pytest.raises(ValueError, match="data.augment_shift"):
        RunConfig.from_dict({"data": {"dataset": "omniglot", "augment_shift": -1}})


def test_training_refuses_a_shift_on_vector_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = np.random.default_rng(0)
    y = np.repeat(np.arange(15), 8)
    np.savez(tmp_path / "v.npz", x=g.normal(size=(len(y), 6)).astype(np.float32), y=y)
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--dataset",
            str(tmp_path / "v.npz"),
            "--algo",
            "protonet",
            "--run-dir",
            str(run),
            "--steps",
            "2",
            "--quiet",
            "--set",
            "data.n_way=3",
            "--set",
            "data.k_shot=1",
            "--set",
            "data.n_query=2",
            "--set",
            "data.augment_shift=1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "data.augment_shift needs images" in err and not run.exists()
