"""metafit.runtime.keep_freed_memory: freed memory stays with the process (glibc), no-op elsewhere."""

from __future__ import annotations

import subprocess
import sys

import pytest

import metafit.runtime as runtime

_PROBE = """
import sys, torch
import metafit.runtime as rt
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
applied = rt.keep_freed_memory() if sys.argv[1] == "keep" else None
before = rss_mb()
t = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
del t
print(applied, round(rss_mb() - before))
"""


def _freed_mb_kept(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(runtime._glibc() is None, reason="glibc only")
def test_keep_freed_memory_keeps_a_freed_block_resident_where_glibc_returns_it() -> None:
    applied, kept = _freed_mb_kept("keep")
    assert applied == "True" and kept >= 60  # the 64 MiB block stays for reuse
    _, kept_default = _freed_mb_kept("default")
    assert kept_default < 16  # glibc's default hands a freed 64 MiB mmap back at once


def test_keep_freed_memory_is_a_no_op_without_glibc(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "_glibc", lambda: None)
    assert runtime.keep_freed_memory() is False
