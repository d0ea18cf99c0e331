"""Atomic file writes: a crash at any moment leaves either the old file or the new one, never half.

The new content goes to a temporary file in the same folder (same filesystem, so the rename is
atomic), is flushed and fsynced, renamed over the target, and the folder is fsynced so the rename
itself survives a power cut. Writing over a file that is memory-mapped elsewhere is safe: the old
inode stays alive for whoever maps it.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

__all__ = ["atomic_path", "atomic_write", "fsync_dir", "pwrite_all", "start_writeback"]


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


_SYNC_FILE_RANGE_WRITE = 2
_PAGE = 1 << 16  # a multiple of every page size in use
_sync_file_range = None  # libc's sync_file_range, looked up on first use (Linux only)


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``nbytes`` at ``offset`` to disk now, without waiting.

    Data written in large pieces otherwise sits dirty in the page cache until the final fsync,
    which then waits for all of it; starting writeback as each piece lands overlaps the disk with
    the rest of the writing, so the fsync (still done, still required) has little left to do.
    A no-op where ``sync_file_range`` does not exist.
    """
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        with contextlib.suppress(OSError, AttributeError, ImportError):
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).sync_file_range
            fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            _sync_file_range = fn
    # Whole pages only: a page still being filled (by this writer or a neighbour) that is under
    # writeback would make its next write wait for the disk.
    begin, end = -(-offset // _PAGE) * _PAGE, (offset + nbytes) // _PAGE * _PAGE
    if _sync_file_range and end > begin:
        _sync_file_range(fd, begin, end - begin, _SYNC_FILE_RANGE_WRITE)  # errors only mean "not started"


_seek_lock = threading.Lock()


def pwrite_all(fd: int, pieces: Sequence[memoryview], offset: int) -> None:
    """Write ``pieces`` back to back at ``offset`` of ``fd``; safe to call from several threads at once.

    One ``pwritev`` system call for many buffers, straight from their memory (no joined copy); the
    loop covers short writes. Where ``pwritev``/``pwrite`` are missing (Windows), seek + write under
    a lock.
    """
    todo = [p for p in pieces if len(p)]
    i = 0
    while i < len(todo):
        if hasattr(os, "pwritev"):
            n = os.pwritev(fd, todo[i : i + 1024], offset)  # IOV_MAX is 1024 on Linux
        elif hasattr(os, "pwrite"):  # pragma: no cover - platforms without pwritev
            n = os.pwrite(fd, todo[i], offset)
        else:  # pragma: no cover - Windows
            with _seek_lock:
                os.lseek(fd, offset, os.SEEK_SET)
                n = os.write(fd, todo[i])
        offset += n
        while i < len(todo) and n >= len(todo[i]):
            n -= len(todo[i])
            i += 1
        if n:
            todo[i] = todo[i][n:]


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def stale_tmp_files(path: str | os.PathLike) -> list[Path]:
    """The temporary files that :func:`atomic_path` left next to ``path`` in processes that died.

    Only names of :func:`_tmp_name`'s exact form (``.<name>.<pid>.<8 hex>.tmp``) whose process is
    gone: a kill -9 during a write leaves one; a write in progress in a live process is left alone.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]{{8}}\.tmp")
    found = []
    if not path.parent.is_dir():
        return found
    for entry in path.parent.iterdir():
        m = pattern.fullmatch(entry.name)
        if m is None or not entry.is_file() or entry.is_symlink():
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _process_alive(pid):
            continue
        found.append(entry)
    return sorted(found)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process (or an unknowable one): leave its files alone
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, sync_folder: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it atomically replaces ``path``.

    For writers that want a file name (``safetensors.torch.save_file``, ``torch.save``). The
    temporary file is fsynced before the rename and removed if the block raises.
    ``sync_folder=False`` leaves the folder's fsync to the caller, who writes several files in a
    row and fsyncs the folder once after the last rename (until then a power cut may undo a rename,
    never leave half a file).

    >>> with atomic_path("weights.pt") as tmp:          # doctest: +SKIP
    ...     torch.save(state_dict, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    old = None
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        old = _hold_large_file(path)
        os.replace(tmp, path)
        if sync_folder:
            fsync_dir(path.parent)
        if old is not None:
            threading.Thread(target=os.close, args=(old,), name="torchsmith-release-replaced").start()
            old = None
    finally:
        if old is not None:
            os.close(old)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


_RELEASE_IN_BACKGROUND = 64 << 20


def _hold_large_file(path: Path) -> int | None:
    """An open descriptor on ``path`` when it is a large regular file about to be replaced (POSIX).

    Replacing the last name of a file frees its blocks and drops its cached pages inside the
    rename (tens of ms per 100 MB). Holding it open moves that work to the final close, which
    runs in a background thread: the new file is already durable and in place by then.
    """
    if os.name != "posix":
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_size >= _RELEASE_IN_BACKGROUND:
        return fd
    os.close(fd)
    return None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, sync_folder: bool = True) -> Iterator[IO]:
    """Open a temporary file for writing; on success it atomically replaces ``path``.

    >>> with atomic_write("metrics.json", "w") as f:     # doctest: +SKIP
    ...     f.write("{}")
    """
    with atomic_path(path, sync_folder=sync_folder) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
