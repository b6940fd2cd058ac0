"""LabelledDataset and from_tensors."""

from __future__ import annotations

import pytest
import torch

from metafit.data.datasets import LabelledDataset, from_tensors


def _ds(sizes: list[int]) -> LabelledDataset:
    y = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    x = torch.arange(len(y), dtype=torch.float32).view(-1, 1, 1, 1)
    return LabelledDataset(
        x, y, tuple(f"c{i}" for i in range(len(sizes))), tuple("ab"[i % 2] for i in range(len(sizes)))
    )


def test_labelled_dataset_class_indices_and_sizes() -> None:
    ds = _ds([3, 1, 2])
    idx = ds.class_indices()
    assert [i.tolist() for i in idx] == [[0, 1, 2], [3], [4, 5]]
    assert ds.class_indices() is idx  # cached
    assert ds.class_sizes().tolist() == [3, 1, 2]
    assert ds.num_classes == 3 and len(ds) == 6 and ds.example_shape == (1, 1, 1)
    assert ds.index_table().tolist() == [[0, 1, 2], [3, -1, -1], [4, 5, -1]]


def test_labelled_dataset_shuffled_labels() -> None:
    y = torch.tensor([1, 0, 1, 0, 2])
    ds = LabelledDataset(torch.zeros(5, 2), y, ("a", "b", "c"))
    assert [i.tolist() for i in ds.class_indices()] == [[1, 3], [0, 2], [4]]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"y": torch.tensor([0, 1], dtype=torch.int32)}, ValueError, "int64"),
        ({"y": torch.tensor([0, 1, 1])}, ValueError, "same number of examples"),
        ({"y": torch.tensor([0, 5])}, ValueError, r"0\.\.1"),
        ({"y": torch.tensor([0, 0])}, ValueError, "class 1 .'b'. has none"),
        ({"groups": ("g",)}, ValueError, "expected 2 entries, got 1"),
        ({"x": [1, 2]}, TypeError, "x must be a torch.Tensor"),
        ({"class_names": "ab"}, TypeError, "class_names"),
    ],
)
def test_labelled_dataset_validation_errors(kwargs: dict, exc: type, match: str) -> None:
    args = {"x": torch.zeros(2, 3), "y": torch.tensor([0, 1]), "class_names": ("a", "b"), **kwargs}
    with pytest.raises(exc, match=match):
        LabelledDataset(**args)


def test_labelled_dataset_subset_classes_remaps() -> None:
    ds = _ds([3, 1, 2])
    sub = ds.subset_classes([2, 0])
    assert sub.class_names == ("c2", "c0") and sub.groups == ("a", "a")
    assert sub.y.tolist() == [0, 0, 1, 1, 1]
    assert sub.x.flatten().tolist() == [4, 5, 0, 1, 2]
    with pytest.raises(ValueError, match="distinct"):
        ds.subset_classes([0, 0])
    with pytest.raises(ValueError, match="out-of-range"):
        ds.subset_classes([3])


def test_labelled_dataset_check_finite() -> None:
    ds = _ds([2, 2])
    ds.check_finite()
    x = ds.x.clone()
    x[1] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite"):
        LabelledDataset(x, ds.y, ds.class_names).check_finite()


def test_from_tensors_remaps_arbitrary_labels() -> None:
    ds = from_tensors(torch.zeros(4, 2), torch.tensor([10, 3, 10, 7]))
    assert ds.y.tolist() == [2, 0, 2, 1] and ds.class_names == ("3", "7", "10")
    with pytest.raises(TypeError, match="integer"):
        from_tensors(torch.zeros(2, 2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="3 distinct labels, got 1"):
        from_tensors(torch.zeros(3, 2), [0, 1, 2], class_names=["a"])
