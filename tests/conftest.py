"""Shared fixtures: tiny CPU models and tasks; the real-data root for Omniglot tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metafit.data.task import TaskBatch
from metafit.models import TaskBatchNorm

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("METAFIT_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def data_root() -> Path:
    if not (DATA_ROOT / "omniglot").exists():
        pytest.skip(f"Omniglot not found under {DATA_ROOT} (set METAFIT_DATA)")
    return DATA_ROOT


class TinyConv(nn.Module):
    """Smooth (tanh, avg-pool) conv net with optional normalisation, for gradient oracles."""

    def __init__(self, norm: str = "task", n_way: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        if norm == "task":
            self.norm1: nn.Module = TaskBatchNorm(4)
        elif norm == "batchnorm":
            self.norm1 = nn.BatchNorm2d(4, track_running_stats=False)
        else:
            self.norm1 = nn.Identity()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 2 * 2, n_way)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(torch.tanh(self.norm1(self.conv1(x))), 2)
        h = F.avg_pool2d(torch.tanh(self.conv2(h)), 2)
        return self.head(h.flatten(1))


def image_tasks(
    n_tasks: int = 3,
    n_way: int = 3,
    k_shot: int = 2,
    n_query: int = 2,
    side: int = 8,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> TaskBatch:
    """Random image classification tasks ``(T, n_way*k, 1, side, side)`` with balanced labels."""
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(n_tasks, n_way * k_shot, 1, side, side, generator=g, dtype=dtype)
    qx = torch.randn(n_tasks, n_way * n_query, 1, side, side, generator=g, dtype=dtype)
    sy = torch.arange(n_way).repeat_interleave(k_shot).expand(n_tasks, -1).contiguous()
    qy = torch.arange(n_way).repeat_interleave(n_query).expand(n_tasks, -1).contiguous()
    return TaskBatch(sx, sy, qx, qy, n_way=n_way)


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The single stderr line of a CLI error (no traceback), for asserting on its wording."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]
