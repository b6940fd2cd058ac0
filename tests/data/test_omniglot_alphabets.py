"""Omniglot split by alphabet (`omniglot_alphabets`, `alphabet_names`) on a tiny synthetic OmniglotData."""

from __future__ import annotations

import pytest
import torch

from metafit.data import omniglot as om


def _fake() -> om.OmniglotData:
    """7 characters: background alphabets B (2 chars) and A (2), evaluation alphabets D (2) and C (1)."""
    alphabets = ("A", "A", "B", "B", "C", "D", "D")
    names = tuple(f"{a}/character{i:02d}" for i, a in enumerate(alphabets))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (7, om.IMAGES_PER_CHARACTER, 8, 8), generator=g, dtype=torch.uint8)
    background = torch.tensor([True, True, True, True, False, False, False])
    return om.OmniglotData(images, names, alphabets, background, tuple(range(1, 8)))


def test_alphabet_names_by_subset() -> None:
    data = _fake()
    assert om.alphabet_names(data) == ("A", "B", "C", "D")
    assert om.alphabet_names(data, "background") == ("A", "B")
    assert om.alphabet_names(data, "evaluation") == ("C", "D")
    with pytest.raises(ValueError, match="subset must be 'background', 'evaluation' or 'all', got 'bg'"):
        om.alphabet_names(data, "bg")


def test_omniglot_alphabets_selects_those_characters_in_data_order() -> None:
    data = _fake()
    ds = om.omniglot_alphabets(data, ["D", "A"])  # order of the request does not matter
    assert ds.class_names == ("A/character00", "A/character01", "D/character05", "D/character06")
    assert ds.groups == ("A", "A", "D", "D")
    assert ds.x.shape == (4 * 20, 1, 8, 8) and ds.x.dtype == torch.float32
    assert torch.equal(ds.x[20:40, 0], data.images[1].float() / 255)  # class 1 = character 1, drawer order
    assert ds.y.tolist() == torch.arange(4).repeat_interleave(20).tolist()
    rot = om.omniglot_alphabets(data, ["C"], rotations=True)
    assert rot.class_names == tuple(f"C/character04/rot{r}" for r in (0, 90, 180, 270))
    assert torch.equal(rot.x[20:40], torch.rot90(rot.x[:20], 1, dims=(-2, -1)))


def test_omniglot_alphabets_is_what_omniglot_split_gives_for_the_same_characters() -> None:
    data = _fake()
    test = om.omniglot_split(data, "test", protocol="lake", rotations=False)  # the evaluation alphabets
    same = om.omniglot_alphabets(data, om.alphabet_names(data, "evaluation"))
    assert same.class_names == test.class_names and torch.equal(same.x, test.x) and torch.equal(same.y, test.y)


def test_omniglot_alphabets_bad_input() -> None:
    data = _fake()
    with pytest.raises(ValueError, match="unknown Omniglot alphabet 'Latin'"):
        om.omniglot_alphabets(data, ["A", "Latin"])
    with pytest.raises(ValueError, match="at least one"):
        om.omniglot_alphabets(data, [])
    with pytest.raises(TypeError, match="sequence of alphabet names"):
        om.omniglot_alphabets(data, "A")
