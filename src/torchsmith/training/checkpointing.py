"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model, optimizer, scheduler and grad-scaler states, the random-number states
(Python, NumPy, torch, CUDA) of *every* rank, the position in the epoch (optimizer step and batches
done, so a resume skips them by index without loading them), the running metric sums of the epoch,
the metrics history, the best score so far, and the recipe. With the data order and augmentation
seeded per epoch and per sample (see :mod:`torchsmith.training.data`) this makes a resumed CPU run
end with bit-identical weights to one that was never interrupted.

Files are written with :func:`torchsmith._io.atomic_path` (temp file, fsync, rename), so a run killed
at any moment leaves the previous checkpoint intact, and read with ``torch.load(weights_only=True)``:
every value here is a tensor or a plain Python type, so nothing is unpickled.

With ``checkpoint: {async: true}`` the loop hands each checkpoint to a :class:`CheckpointWriter`:
the state is copied to CPU memory (:func:`snapshot`, pinned buffers on a GPU) at the step boundary,
and written, atomically as ever, by one background thread while training goes on. At most one write
is in flight: the next snapshot and the end of the run wait for it, and a write that failed raises
there, in the training thread. A kill during the write leaves the previous checkpoint whole.

>>> state = {"epoch": 1, "model": {"w": torch.zeros(2)}}            # doctest: +SKIP
>>> save_checkpoint("runs/x/last.pt", state)                        # doctest: +SKIP
>>> load_checkpoint("runs/x/last.pt")["epoch"]                      # doctest: +SKIP
1
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchsmith._io import atomic_path
from torchsmith.errors import CheckpointError

__all__ = [
    "FORMAT",
    "CheckpointWriter",
    "capture_rng",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
    "snapshot",
]

FORMAT = "torchsmith.training/1"


def capture_rng(device: Any = None) -> dict:
    """The current RNG states as tensors and plain types (safe for ``weights_only`` loading)."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        # Through NumPy: torch.tensor() of the 625 Python ints takes 4x as long (at every checkpoint).
        "python": {
            "version": version,
            "state": torch.from_numpy(np.array(internal, dtype=np.int64)),
            "gauss": gauss,
        },
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: Any = None) -> None:
    """Put back the RNG states that :func:`capture_rng` recorded."""
    import numpy as np
    import torch

    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and device is not None and str(device).startswith("cuda"):
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def save_checkpoint(path: str | os.PathLike, state: dict, *, sync_folder: bool = True) -> Path:
    """Write ``state`` atomically to ``path`` (the old file survives any crash during the write)."""
    path = Path(path)
    with atomic_path(path, sync_folder=sync_folder) as tmp:
        _torch_save(state, tmp)
    return path


def _torch_save(state: dict, path: Any) -> None:
    import torch

    torch.save({"format": FORMAT, **state}, path)


def serialize(state: dict) -> memoryview:
    """The bytes of ``state`` as a checkpoint file holds them, made in memory (no file)."""
    import io

    buf = io.BytesIO()
    _torch_save(state, buf)
    return buf.getbuffer()  # no copy; the buffer lives as long as the view


# States up to this many bytes of tensors are serialised by the training thread at the step boundary
# (bench_train's models: 40 kB and 330 kB, 0.3-0.6 ms); larger ones are snapshotted there and
# serialised by the writer thread. Why not always in the writer: torch.save to a file holds the GIL
# through its own open() and write() calls (a writer thread blocked on a FIFO froze the training
# thread), so a write that waits for a busy disk's journal stalls training; os.write and os.fsync
# of ready bytes release it. Why not always here: in memory it costs 1.2 ms per MB, a snapshot 0.66.
SERIALIZE_INLINE_BYTES = 4 << 20


def _tensor_bytes(state: Any) -> int:
    import torch

    if isinstance(state, torch.Tensor):
        return state.nelement() * state.element_size()
    if isinstance(state, dict):
        return sum(_tensor_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_tensor_bytes(v) for v in state)
    return 0


def freeze(state: dict, *, pin: bool = False, cache: dict | None = None) -> dict | memoryview:
    """What the writer thread gets: a copy of ``state`` that training can no longer change.

    A small state on the CPU becomes its file's bytes (:func:`serialize`): the writer then only
    makes system calls, which release the GIL. Otherwise a :func:`snapshot` (pinned buffers from
    ``cache`` on a GPU), which the writer serialises.
    """
    if not pin and _tensor_bytes(state) <= SERIALIZE_INLINE_BYTES:
        return serialize(state)
    return snapshot(state, pin=pin, _cache=cache)


FileContent = bytes | memoryview | str | Callable[[Path], None]
_fsync_pool: Any = None  # threads that fsync a checkpoint's files side by side (made on first use)
_fsync_pool_lock = threading.Lock()


def _fsync_all(fds: list[int]) -> None:
    """fsync every descriptor, all at once: the first here, the others in pool threads.

    Each fsync of a new file waits for a journal commit (0.3 ms on a quiet disk, 5-10 ms on a
    busy one); fsyncs in flight together share one commit on ext4, XFS and btrfs, so three files
    cost about one. fsync releases the GIL, so the threads cost the training thread nothing.
    """
    global _fsync_pool
    if len(fds) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with _fsync_pool_lock:
            if _fsync_pool is None:
                _fsync_pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="torchsmith-fsync")
        others = [_fsync_pool.submit(os.fsync, fd) for fd in fds[1:]]
    else:
        others = []
    try:
        if fds:
            os.fsync(fds[0])
    finally:
        for f in others:  # every one waited for, even when one failed; the first error raises
            f.result()


def write_files(
    folder: str | os.PathLike, files: dict[str, FileContent], *, links: dict[str, str] | None = None
) -> None:
    """Write ``files`` into ``folder``, each one atomically, with two waits for the disk in all.

    A value is the file's bytes, its text (UTF-8), or a function that writes the file at the path
    it is given (``torch.save``). Every file goes to a temporary name first; the temporary files
    are fsynced together (see :func:`_fsync_all`), renamed over their names in the order given,
    and the folder is fsynced once after the last rename. ``links`` (``{"best.pt": "last.pt"}``)
    gives a file of ``files`` a second name: a hard link to the same fsynced bytes (a copy on a
    file system without hard links), renamed in right after it, so a later write of the first
    name cannot change it.

    A crash at any moment leaves every name with its old or its new content, whole; the renames
    are durable when this returns. The temporary files of one call share a name token
    (``.NAME.PID.TOKEN.ckpt.tmp``) and are all fsynced before the first rename: a kill between
    renames leaves finished temp files that :func:`finish_interrupted_writes` renames on resume.

    That is :func:`torchsmith._io.atomic_path` for several files,
    with one fsync of the folder and the files' own fsyncs side by side rather than one by one.
    """
    import shutil

    from torchsmith._io import _hold_large_file, fsync_dir

    folder = Path(folder)
    token = uuid.uuid4().hex[:8]

    def _tmp_name(path: Path) -> Path:
        return path.with_name(f".{path.name}.{os.getpid()}.{token}.ckpt.tmp")

    folder.mkdir(parents=True, exist_ok=True)
    links = links or {}
    tmps: dict[str, Path] = {}
    fds: list[int] = []
    held: list[int] = []
    try:
        for name, content in files.items():
            tmp = tmps[name] = _tmp_name(folder / name)
            if callable(content):
                content(tmp)
                fds.append(os.open(tmp, os.O_RDWR))
            else:
                data = content.encode() if isinstance(content, str) else content
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
                fds.append(fd)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
        _fsync_all(fds)
        for fd in fds:
            os.close(fd)
        fds.clear()
        for name, target in links.items():
            # The link adds a folder entry only; the bytes behind it were fsynced above, and
            # the folder's fsync below makes the entry durable.
            tmp = tmps[name] = _tmp_name(folder / name)
            try:
                os.link(tmps[target], tmp)
            except OSError:  # a file system without hard links: a copy, fsynced on its own
                shutil.copyfile(tmps[target], tmp)
                _fsync_all([fd := os.open(tmp, os.O_RDWR)])
                os.close(fd)
        order = [n for name in files for n in (name, *(k for k, v in links.items() if v == name))]
        for name in order:
            content = files[links.get(name, name)]
            if callable(content) or len(content) >= _HOLD_FROM:
                # A large file being replaced: its blocks are freed later, off this thread (three
                # system calls, skipped for the small files: an old file is about the new one's size).
                fd = _hold_large_file(folder / name)
                if fd is not None:
                    held.append(fd)
            os.replace(tmps.pop(name), folder / name)
        fsync_dir(folder)
    finally:
        for fd in fds:
            os.close(fd)
        for tmp in tmps.values():  # what a failure left behind
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if held:
            threading.Thread(target=_close_all, args=(held,), name="torchsmith-release-replaced").start()


_HOLD_FROM = 16 << 20

_BATCH_TMP = re.compile(r"\.(.+)\.(\d+)\.([0-9a-f]{8})\.ckpt\.tmp")


def finish_interrupted_writes(folder: str | os.PathLike, first: str = "last.pt") -> list[str]:
    """Complete what a kill left of :func:`write_files` calls in ``folder``; returns what was done.

    One call's temp files share a token and are all whole (fsynced) before its first rename, and
    ``first`` (``last.pt``) is renamed first. So when ``first``'s temp file is gone, the kill came
    between renames: each temp file left is finished, newer than its name, and is renamed over it
    now (``best.pt``, ``recipe.yaml``, the metrics files), in the order :func:`write_files` used.
    When ``first``'s temp file is still there the renames never started: the old names are the
    consistent set and the temp files (possibly half-written) are removed. Temp files of live
    processes are left alone.
    """
    from torchsmith._io import _process_alive, fsync_dir

    folder = Path(folder)
    groups: dict[tuple[int, str], list[tuple[str, Path]]] = {}
    for p in sorted(folder.iterdir()) if folder.is_dir() else ():
        m = _BATCH_TMP.fullmatch(p.name)
        if m is None or p.is_symlink() or not p.is_file():
            continue
        pid = int(m.group(2))
        if pid == os.getpid() or _process_alive(pid):
            continue
        groups.setdefault((pid, m.group(3)), []).append((m.group(1), p))
    done: list[str] = []
    for items in groups.values():
        names = {name for name, _ in items}
        if first in names:
            for _, tmp in items:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                done.append(f"removed {tmp}, left by an interrupted write")
            continue
        items.sort(key=lambda it: _RENAME_ORDER.get(it[0], len(_RENAME_ORDER)))
        for name, tmp in items:
            os.replace(tmp, folder / name)
            done.append(f"completed the interrupted write of {folder / name}")
    if groups:
        fsync_dir(folder)
    return done


# write_files' rename order as RunState uses it: last.pt, its link best.pt, then the text files.
_RENAME_ORDER = {"last.pt": 0, "best.pt": 1, "recipe.yaml": 2, "metrics.jsonl": 3, "metrics.csv": 4}


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a training checkpoint safely (``weights_only=True``) onto ``map_location``."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
        first = next((ln for ln in lines if "Unpickler error" in ln), lines[0])
        raise CheckpointError(
            f"checkpoint {path}: cannot be read as a training checkpoint: {first}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path}: not a torchsmith training checkpoint (format "
            f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}, "
            f"expected {FORMAT!r})"
        )
    return state


def snapshot(state: Any, *, pin: bool = False, _cache: dict | None = None, _key: tuple = ()) -> Any:
    """A copy of ``state`` that training can no longer change: every tensor copied to CPU memory.

    Dicts, lists and tuples are rebuilt, tensors cloned (``pin=True``: into pinned host buffers, copied
    without blocking and synchronised once at the end, which is what makes a GPU snapshot fast);
    other values (numbers, strings, None) are immutable and shared. ``_cache`` (a dict the caller
    keeps) lets pinned buffers be reused from one snapshot to the next when shapes match.
    """
    import torch

    top = not _key
    if isinstance(state, torch.Tensor):
        t = state.detach()
        if not pin:
            return t.to("cpu", copy=True)
        buf = None if _cache is None else _cache.get(_key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
            if _cache is not None:
                _cache[_key] = buf
        return buf.copy_(t, non_blocking=True)
    if isinstance(state, dict):
        out: Any = {k: snapshot(v, pin=pin, _cache=_cache, _key=(*_key, k)) for k, v in state.items()}
    elif isinstance(state, (list, tuple)):
        items = [snapshot(v, pin=pin, _cache=_cache, _key=(*_key, i)) for i, v in enumerate(state)]
        out = items if isinstance(state, list) else tuple(items)
    else:
        return state
    if top and pin and torch.cuda.is_available():
        torch.cuda.synchronize()  # the non-blocking copies have landed before anyone reads them
    return out


class CheckpointWriter:
    """Runs checkpoint writes one at a time: inline, or (``asynchronous=True``) in a background thread.

    :meth:`submit` first waits for the write in flight (never two at once, and the caller's next
    snapshot may reuse its buffers), then starts the new one. :meth:`wait` blocks until it is done and
    re-raises its error, if any, in the caller's thread; call it before reading the files and before
    the process exits. The thread is not a daemon: an interpreter that exits still finishes the write.

    The thread is started with the writer and kept: handing it a write is a queue put. Starting a
    thread per write made the training thread wait for the new thread to run, and the new thread
    goes straight into the write holding the GIL, so that wait lasted up to the interpreter's 5 ms
    switch interval (3.4 ms median per checkpoint on a busy 2-core machine, measured).

    >>> w = CheckpointWriter(asynchronous=True)
    >>> w.submit(lambda: None); w.wait(); w.close()
    """

    def __init__(self, asynchronous: bool = False):
        self.asynchronous = asynchronous
        self._pool: Any = None
        self._job: Any = None  # the Future of the write in flight
        if asynchronous:
            self._start()

    def _start(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        # One worker: writes run in order, one at a time. Its threads are not daemons and the
        # interpreter joins them at exit (concurrent.futures' own hook), so a write in flight ends.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torchsmith-checkpoint")
        self._pool.submit(int).result()  # the thread runs now, while nothing else wants the GIL

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        if not self.asynchronous:
            job()
            return
        if self._pool is None:
            self._start()
        self._job = self._pool.submit(job)

    @property
    def busy(self) -> bool:
        return self._job is not None and not self._job.done()

    def wait(self) -> None:
        if self._job is not None:
            job, self._job = self._job, None
            job.result()  # re-raises the write's error here, once

    def close(self) -> None:
        """Wait for the write in flight and end the thread (a later :meth:`submit` starts another)."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None


# --------------------------------------------------------------------------------------- DCP
# checkpoint.format: dcp (auto under FSDP). last.pt keeps everything but the model and optimizer,
# which torch.distributed.checkpoint writes sharded (each rank its own shard) to
# dcp/step-NNNNNNNN/{model,optimizer}/; last.pt names that folder ("dcp") and is written last, so
# a run killed during the DCP write still has the previous last.pt and the folder it names.
# DCP reshards on load, so the run can resume with another number of processes.


def dcp_folder(out_dir: str | os.PathLike, step: int) -> Path:
    return Path(out_dir) / "dcp" / f"step-{step:08d}"


def dcp_state_dicts(model: Any, optimizer: Any) -> tuple[dict, dict]:
    """The model's and optimizer's state dicts as DCP saves them: sharded DTensors under FSDP,
    keyed by parameter name (not index), so another world size can load them."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return get_model_state_dict(model), get_optimizer_state_dict(model, optimizer)


def save_dcp(folder: Path, model_sd: dict, optim_sd: dict, *, process_group: Any = None) -> None:
    """Write both state dicts with ``torch.distributed.checkpoint`` (every rank calls this).

    Asynchronous saving is the caller's: :class:`CheckpointWriter` runs this in its thread on a
    :func:`snapshot` and a process group of its own (``dcp.async_save`` twice in a row deadlocked
    on gloo in torch 2.14: the second save's planning collective met the first one's in flight).
    """
    import warnings

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    # Each part flat, as its own state dict: `convert FOLDER/model x.safetensors` gives the model's keys.
    parts = ((model_sd, folder / "model"), (optim_sd, folder / "optimizer"))
    if not dist.is_initialized():
        with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
            warnings.simplefilter("ignore", UserWarning)
            for sd, where in parts:
                dcp.save(sd, checkpoint_id=str(where), no_dist=True)
        return
    for sd, where in parts:
        dcp.save(sd, checkpoint_id=str(where), process_group=process_group)


def _read_dcp_part(state_dict: dict, folder: Path, **kwargs: Any) -> None:
    """THE one place training hands a DCP folder to torch (resume, and reading a DCP run's model):
    through :func:`torchsmith.checkpoint.dcp.load_dcp`, which checks ``.metadata`` with the
    restricted reader and gives torch a Metadata object built from the checked values."""
    from torchsmith.checkpoint.dcp import load_dcp

    load_dcp(state_dict, folder, **kwargs)


def restore_dcp(folder: Path, model: Any, optimizer: Any, *, process_group: Any = None) -> None:
    """Load a :func:`save_dcp` folder into ``model`` and ``optimizer``, resharded to this world size."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    folder = Path(folder)
    for part in ("model", "optimizer"):
        if not (folder / part / ".metadata").is_file():
            raise CheckpointError(f"checkpoint {folder / part}: DCP folder missing or incomplete")
    kw: dict = {"process_group": process_group} if dist.is_initialized() else {"no_dist": True}
    model_sd, optim_sd = dcp_state_dicts(model, optimizer)  # templates: this run's shapes and shards
    _read_dcp_part(model_sd, folder / "model", **kw)
    _read_dcp_part(optim_sd, folder / "optimizer", **kw)
    set_model_state_dict(model, model_sd)
    set_optimizer_state_dict(model, optimizer, optim_sd)


def read_dcp_model(folder: Path) -> dict:
    """The whole (unsharded) model state dict of a :func:`save_dcp` folder, on one process."""
    import torch

    from torchsmith.checkpoint.dcp import read_dcp

    part = Path(folder) / "model"
    refs = read_dcp(part).obj  # checked metadata: names, dtypes, shapes
    state = {k: torch.empty(r.shape, dtype=getattr(torch, r.dtype)) for k, r in refs.items()}
    _read_dcp_part(state, part, no_dist=True)
    return state


def checkpoint_model_state(path: str | os.PathLike, state: dict) -> dict:
    """The model state dict a training checkpoint holds, in ``last.pt`` itself or in its DCP folder;
    the EMA weights when the run validated on them (``train.ema.eval``)."""
    ema = (state.get("callbacks") or {}).get("ema")
    if ema and ema.get("eval"):
        return ema["model"]
    if "model" in state:
        return state["model"]
    if "dcp" not in state:
        raise CheckpointError(f"checkpoint {path}: holds no model state")
    return read_dcp_model(dcp_path(path, state))


def dcp_path(path: str | os.PathLike, state: dict) -> Path:
    """The DCP folder a checkpoint names: relative to the run folder, which is the checkpoint's own
    folder for ``last.pt``/``best.pt`` and its parent for a kept ``checkpoints/*.pt``."""
    path = Path(path)
    here = path.parent / state["dcp"]
    if not here.exists() and path.parent.name == "checkpoints":
        return path.parent.parent / state["dcp"]
    return here
