"""Atomic file writes: a crash at any moment leaves either the old file or the new one, never half.

The new content goes to a temporary file in the same folder (same filesystem, so the rename is
atomic), is flushed and fsynced, renamed over the target, and the folder is fsynced so the rename
itself survives a power cut. Writing over a file that is memory-mapped elsewhere is safe: the old
inode stays alive for whoever maps it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_path", "atomic_write", "fsync_dir"]


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it is durable (a no-op where the OS does not allow it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it atomically replaces ``path``.

    For writers that want a file name (``safetensors.torch.save_file``, ``torch.save``). The
    temporary file is fsynced before the rename and removed if the block raises.

    >>> with atomic_path("weights.pt") as tmp:          # doctest: +SKIP
    ...     torch.save(state_dict, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing; on success it atomically replaces ``path``.

    >>> with atomic_write("metrics.json", "w") as f:     # doctest: +SKIP
    ...     f.write("{}")
    """
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
