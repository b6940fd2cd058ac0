"""Crash-safe files: the one way metafit writes a file that readers may open at any moment.

Checkpoints, run folders, decoded-data caches, downloads and Meta-Dataset records all go
through :func:`atomic_file`: the content is written to a temporary file in the same folder,
flushed to disk, then renamed over the target with ``os.replace`` (atomic on POSIX and
Windows), and the folder is synced; on any error the temporary file is removed and the target
is untouched. A reader sees the old file or the complete new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_file", "atomic_write_bytes", "is_temporary", "download"]

_SUFFIX = ".tmp"


def is_temporary(path: str | Path) -> bool:
    """True for a temporary file left by an interrupted :func:`atomic_file` (safe to delete)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(_SUFFIX)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on a clean exit it atomically becomes ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_file(d / "x.txt") as tmp:
        ...     _ = tmp.write_text("hello")
        >>> (d / "x.txt").read_text()
        'hello'
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=_SUFFIX, dir=p.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(p.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` crash-safely (:func:`atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def download(url: str, target: str | Path, *, check: Callable[[Path], str | None], timeout: float = 60.0) -> Path:
    """Downloads ``url`` to ``target`` crash-safely, keeping it only if ``check`` passes.

    Args:
        url: What to fetch.
        target: Where the verified file goes.
        check: ``check(downloaded_path)`` returns ``None`` if the file is right, else what is wrong
            (e.g. a checksum mismatch); the target is then left untouched.
        timeout: Seconds of the connection.

    Raises:
        RuntimeError: a network error (naming the URL). ValueError: ``check`` refused the file.
    """
    import urllib.error
    import urllib.request

    with atomic_file(target) as tmp:
        try:
            with open(tmp, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as resp:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    f.write(block)
        except (urllib.error.URLError, OSError) as e:
            raise RuntimeError(f"could not download {url} to {target}: {e}") from e
        problem = check(tmp)
        if problem is not None:
            raise ValueError(f"downloaded {url} failed verification: {problem}")
    return Path(target)
