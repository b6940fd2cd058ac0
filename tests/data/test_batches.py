"""ClassBatchSampler: epoch-wise shuffled mini-batches with global labels and an empty support set."""

from __future__ import annotations

import pytest
import torch

from metafit.data.batches import ClassBatchSampler
from metafit.data.datasets import from_tensors


def _dataset(n_classes: int = 6, per_class: int = 5):  # type: ignore[no-untyped-def]
    y = torch.arange(n_classes).repeat_interleave(per_class)
    x = torch.stack([y.double(), torch.arange(y.numel()).double()], dim=1)  # x[:, 1] = example id
    return from_tensors(x, y)


def test_class_batch_sampler_each_epoch_visits_every_example_once() -> None:
    ds = _dataset()
    s = ClassBatchSampler(ds, 10, generator=torch.Generator().manual_seed(0))
    assert s.batches_per_epoch() == 3
    for epoch in range(2):
        ids = []
        for _ in range(3):
            b = s.sample_batch()
            assert b.query_x.shape == (1, 10, 2) and b.support_x.shape == (1, 0, 2) and b.support_y.shape == (1, 0)
            assert b.n_way == 6 and b.query_y.dtype == torch.int64
            assert torch.equal(b.query_y[0], b.query_x[0, :, 0].long())  # global labels
            ids += b.query_x[0, :, 1].long().tolist()
        assert sorted(ids) == list(range(30)), epoch
        assert s.epoch == epoch
    s.sample_batch()
    assert s.epoch == 2


def test_class_batch_sampler_drops_the_incomplete_trailing_batch() -> None:
    s = ClassBatchSampler(_dataset(), 8, generator=torch.Generator().manual_seed(1))
    first = [s.sample_batch().query_x[0, :, 1].long() for _ in range(3)]
    assert len(set(torch.cat(first).tolist())) == 24 and s.epoch == 0
    s.sample_batch()  # 6 examples left < 8: a new epoch starts
    assert s.epoch == 1


def test_class_batch_sampler_is_a_function_of_its_generator_and_resumes() -> None:
    a = ClassBatchSampler(_dataset(), 7, generator=torch.Generator().manual_seed(3))
    b = ClassBatchSampler(_dataset(), 7, generator=torch.Generator().manual_seed(3))
    for _ in range(5):
        assert torch.equal(a.sample_batch().query_x, b.sample_batch().query_x)
    state = a.state_dict()
    want = [a.sample_batch().query_x for _ in range(4)]
    c = ClassBatchSampler(_dataset(), 7, generator=torch.Generator().manual_seed(99))
    c.load_state_dict(state)
    for w in want:
        assert torch.equal(c.sample_batch().query_x, w)


def test_class_batch_sampler_applies_augment_with_its_generator() -> None:
    def shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        assert x.shape == (1, 5, 2)
        return x + 1000.0

    b = ClassBatchSampler(_dataset(), 5, generator=torch.Generator().manual_seed(0), augment=shift).sample_batch()
    assert float(b.query_x[..., 0].min()) >= 1000.0
    assert torch.equal(b.query_y[0], (b.query_x[0, :, 0] - 1000.0).long())


def test_class_batch_sampler_refuses_bad_arguments() -> None:
    g = torch.Generator()
    with pytest.raises(ValueError, match=r"batch_size=31 exceeds the number of examples in the dataset \(30\)"):
        ClassBatchSampler(_dataset(), 31, generator=g)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        ClassBatchSampler(_dataset(), 0, generator=g)
    with pytest.raises(TypeError, match="generator must be a CPU torch.Generator"):
        ClassBatchSampler(_dataset(), 4, generator=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dataset must be a LabelledDataset"):
        ClassBatchSampler([1, 2], 1, generator=g)  # type: ignore[arg-type]
