"""Process-level CPU settings that change speed, never results.

:func:`keep_freed_memory` tunes glibc's ``malloc``. PyTorch's CPU tensors come straight from
``malloc``; glibc serves large blocks with fresh ``mmap`` calls and gives freed memory back to the
operating system, so every meta-training step pays again for page faults on its activations
(tens of MB per Conv-4 episode). On this project's 2-core VM a ProtoNet training step (30-way
1-shot 2-query episodes, fused Conv4) took 67 ms with glibc's defaults against 45 ms with freed
memory kept (docs/results.md, "Page faults, fused blocks and the thin first convolution"). The
allocator change is process-wide, so the library never makes it on its own: the CLI applies it
(``train.keep_freed_memory``, on by default) and so do the benchmarks; a user script calls it once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["keep_freed_memory"]

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (absent in musl and other C libraries)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Makes glibc's ``malloc`` keep freed memory for reuse instead of returning it to the OS.

    Sets ``M_MMAP_MAX = 0`` (every block comes from the heap, none from a fresh ``mmap``) and
    ``M_TRIM_THRESHOLD`` to its maximum (freed heap memory is not trimmed). The process's resident
    memory then stays near its peak instead of shrinking between steps, which is what a training
    process wants; the values computed do not change. Same effect as starting Python with
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment.

    Returns:
        True if applied; False where the C library is not glibc (macOS, Windows, musl), where it
        is a no-op.
    """
    libc = _glibc()
    if libc is None:
        log.debug("keep_freed_memory: not glibc; nothing changed")
        return False
    ok = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    if not ok:
        log.warning("keep_freed_memory: glibc mallopt refused the settings; malloc left as it was")
    return ok
