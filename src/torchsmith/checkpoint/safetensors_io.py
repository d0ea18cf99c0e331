"""safetensors files read and written by hand: the header is JSON, the rest is raw bytes.

Layout: 8 bytes little-endian header length ``N``, ``N`` bytes of JSON
(``{"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}``),
then the tensors' bytes. Reading the header needs no torch, so ``inspect`` is instant; tensors are
memory-mapped views of the file. Writing streams each tensor's bytes straight from its memory (no
intermediate copy of the whole state dict, unlike ``safetensors.torch.save``), hashing them as it goes
(one pass over memory: each piece is hashed and written while it is still in the CPU cache).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from torchsmith._io import pwrite_all, start_writeback
from torchsmith.checkpoint._raw import RawCheckpoint, register_reader
from torchsmith.checkpoint._refs import DTYPE_TO_ST, ITEMSIZE, ST_TO_DTYPE, StorageRef, TensorRef
from torchsmith.errors import CheckpointError

__all__ = ["read_header", "read_safetensors", "validate_header", "write_safetensors"]

_MAX_HEADER = 100 * 1024 * 1024
# write_safetensors: threads that each hash and write their own batches of tensors (every core works).
_WRITE_THREADS = min(4, os.cpu_count() or 1)
_BATCH = 8 << 20  # bytes of consecutive tensors per task
_CHUNK = 1 << 20  # hashed, then written while still in cache


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The parsed JSON header of a safetensors file and the offset where tensor data begins."""
    text, _ = _header_text(path)
    return _parse_header(path, text), 8 + len(text)


def _header_text(path: Path) -> tuple[bytes, int]:
    """The header's JSON bytes and the file's size (header length checked against the size)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(
                f"{path}: damaged or truncated safetensors file: header length {n} does not fit in "
                f"{size} bytes"
            )
        text = f.read(n)
    if len(text) < n:
        raise CheckpointError(f"{path}: truncated safetensors file: the header ends after {len(text)} bytes")
    return text, size


def _parse_header(path: Path, text: bytes) -> dict[str, Any]:
    try:
        header = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # nesting deeper than Python's stack
        raise CheckpointError(f"{path}: damaged safetensors header (not valid JSON: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{path}: damaged safetensors header (a JSON {type(header).__name__}, not an object)"
        )
    return header


def validate_header(header: dict[str, Any], data_size: int, where: str | os.PathLike = "safetensors") -> None:
    """Check a parsed safetensors header against the format's rules; ``CheckpointError`` if broken.

    ``data_size`` is the number of bytes after the header. Every entry needs a known ``dtype``, a
    ``shape`` of non-negative ints and ``data_offsets`` [begin, end] whose span is exactly the bytes
    that shape needs; sorted by offset the tensors must tile the data with no overlap and no gap, and
    end exactly at ``data_size`` (the format forbids holes). ``__metadata__`` must map strings to
    strings. Needs no torch; cheap enough to sniff a file before trusting anything in it.
    """
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(k, str) for k in meta)):
        raise CheckpointError(
            f"{where}: damaged safetensors header: __metadata__ is not an object of strings"
        )
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise CheckpointError(f"{where}: damaged safetensors header entry for tensor {name!r:.80}")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in ST_TO_DTYPE:
            raise CheckpointError(
                f"{where}: damaged safetensors header entry for tensor {name!r:.80} (dtype {dtype!r:.40}); "
                f"expected dtype in {sorted(ST_TO_DTYPE)}, a shape and data_offsets"
            )
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise CheckpointError(f"{where}: tensor {name!r:.80}: shape {shape!r:.60} is not a list of sizes")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(x) is int and x >= 0 for x in offsets)
        ):
            raise CheckpointError(
                f"{where}: tensor {name!r:.80}: data_offsets {offsets!r:.60} are not [begin, end]"
            )
        begin, end = offsets
        need = math.prod(shape) * ITEMSIZE[ST_TO_DTYPE[dtype]]
        if end < begin or end - begin != need:
            raise CheckpointError(
                f"{where}: tensor {name!r:.80}: shape {shape} of {ST_TO_DTYPE[dtype]} needs {need} bytes "
                f"but its data_offsets [{begin}, {end}] span {end - begin}"
            )
        if end > data_size:
            raise CheckpointError(
                f"{where}: truncated safetensors file: tensor {name!r:.80} ends at data byte {end} "
                f"of {data_size}"
            )
        spans.append((begin, end, name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            what = "overlaps the tensor before it" if begin < pos else f"leaves a gap of {begin - pos} bytes"
            raise CheckpointError(f"{where}: damaged safetensors file: tensor {name!r:.80} {what}")
        pos = end
    if pos != data_size:
        raise CheckpointError(
            f"{where}: damaged safetensors file: {data_size - pos} bytes after the last tensor (the format "
            "forbids holes)"
        )


# The last header described: opening a file sniffs its format by describing it whole
# (formats._sniff), then describes it again; the second time, the same path, size and header bytes
# take the first result instead of parsing and checking the JSON again (TensorRefs are frozen).
_LAST: dict[tuple, tuple[dict[str, TensorRef], dict[str, str]]] = {}


def _described(path: Path) -> tuple[dict[str, TensorRef], dict[str, str]]:
    """``(name -> TensorRef, metadata)`` of a safetensors file, its header checked whole."""
    text, size = _header_text(path)
    key = (str(path), size, text)
    hit = _LAST.get(key)
    if hit is not None:
        return hit
    header, start = _parse_header(path, text), 8 + len(text)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: damaged safetensors header: __metadata__ is not an object")
    validate_header(header, size - start, path)
    tensors: dict[str, TensorRef] = {}
    end_max = 0
    for name, info in header.items():
        try:
            dtype = ST_TO_DTYPE[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            found = info.get("dtype") if isinstance(info, dict) else info
            raise CheckpointError(
                f"{path}: damaged safetensors header entry for tensor {name!r} (dtype {found!r:.40}); "
                f"expected dtype in {sorted(ST_TO_DTYPE)}, a shape and data_offsets"
            ) from None
        ref = TensorRef(StorageRef(str(path), start + begin, end - begin, dtype, "cpu", name), dtype, shape)
        if any(d < 0 for d in shape) or begin < 0 or end < begin or ref.nbytes != end - begin:
            raise CheckpointError(
                f"{path}: tensor {name!r}: shape {list(shape)} of {dtype} needs {ref.nbytes} bytes but its "
                f"data_offsets [{begin}, {end}] span {end - begin}"
            )
        if start + end > size:
            raise CheckpointError(
                f"{path}: truncated safetensors file: tensor {name!r} ends at byte {start + end} of {size}"
            )
        end_max = max(end_max, end)
        tensors[name] = ref
    result = (tensors, {str(k): str(v) for k, v in meta.items()})
    _LAST.clear()
    _LAST[key] = result
    return result


def read_safetensors(path: Path) -> RawCheckpoint:
    """Describe a safetensors file: ``TensorRef`` per tensor, plus its ``__metadata__``."""
    described, meta = _described(path)
    tensors = dict(described)
    raw = RawCheckpoint(path, "safetensors", tensors, metadata=dict(meta))
    tied = raw.metadata.get("torchsmith.tied")
    if tied:
        # Tied tensors written under each name (so plain readers get every key): torchsmith reads one
        # copy for all of them, so they stay one tensor (shared memory) after a load.
        try:
            for alias, target in json.loads(tied).items():
                a, t = tensors.get(alias), tensors.get(target)
                if a is not None and t is not None and (a.dtype, a.shape) == (t.dtype, t.shape):
                    # One tensor for both names (shared memory); the copy's own bytes are kept
                    # for the checksum check, so every byte of the file is still verified.
                    tensors[alias] = dataclasses.replace(t, extra={**t.extra, "own_bytes": a})
        except (ValueError, AttributeError, TypeError, RecursionError):
            raw.notes.append("ignored an unreadable torchsmith.tied entry in the metadata")
    aliases = raw.metadata.get("torchsmith.aliases")
    if aliases:
        # Tied tensors are stored once; the aliases point at the stored name.
        try:
            for alias, target in json.loads(aliases).items():
                if target in tensors and alias not in tensors:
                    tensors[alias] = tensors[target]
        except (ValueError, AttributeError, TypeError, RecursionError):
            raw.notes.append("ignored an unreadable torchsmith.aliases entry in the metadata")
    attach_module_versions(raw)
    return raw


_VERSIONS_KEY = "torchsmith.module_versions"  # saving.MODULE_VERSIONS (saving imports this module)
_MAX_VERSION_ENTRIES = 1_000_000


def attach_module_versions(raw: RawCheckpoint) -> None:
    """Turn a ``torchsmith.module_versions`` metadata entry into the state dict's ``_metadata``.

    ``raw.obj`` becomes an ``OrderedDict`` carrying ``_metadata`` as ``Module.state_dict()`` makes
    it, so readers hand ``load_state_dict`` the module versions a torch file would hold. The entry
    is file data: anything but an object of module prefix -> object of plain values is ignored
    with a note, never an error or a crash.
    """
    text = raw.metadata.pop(_VERSIONS_KEY, None)
    if text is None or not isinstance(raw.obj, dict):
        return
    from collections import OrderedDict

    try:
        table = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        table = None
    ok = (
        isinstance(table, dict)
        and len(table) <= _MAX_VERSION_ENTRIES
        and all(isinstance(v, dict) for v in table.values())
    )
    if not ok:
        raw.notes.append(f"ignored an unreadable {_VERSIONS_KEY} entry in the metadata")
        return
    scalar = int | float | str | bool | type(None)
    obj = OrderedDict(raw.obj)
    obj._metadata = OrderedDict(  # type: ignore[attr-defined]
        (k, {str(a): b for a, b in v.items() if isinstance(b, scalar)}) for k, v in table.items()
    )
    raw.obj = obj


def _tensor_bytes(t) -> memoryview:
    """A zero-copy view of a contiguous CPU tensor's bytes."""
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    flat = t.reshape(-1).view(torch.uint8)
    return memoryview(flat.numpy()).cast("B")


def write_safetensors(
    path: Path,
    tensors: dict[str, Any],
    metadata: dict[str, str],
    *,
    aliases: dict[str, str] | None = None,
    hashes: dict[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
    algorithm: str | None = None,
) -> dict[str, str]:
    """Write ``tensors`` (name -> CPU tensor) to ``path``; return each tensor's checksum.

    Checksums are made with ``algorithm`` (default: xxh3-128, see ``_hashing.writing_algorithm``)
    while writing and recorded in the header with the algorithm's name (the header is rewritten in
    place at the end: hex digests have a fixed length, so its size does not change). ``hashes``,
    when given, are used as is (already computed with ``algorithm``).

    >>> write_safetensors(Path("w.safetensors"), {"w": torch.ones(2)}, {})  # doctest: +SKIP
    {'w': '...'}
    """
    from torchsmith.checkpoint._hashing import (
        ALGORITHM_KEY,
        ALGORITHMS,
        LEGACY_KEY,
        TABLE_KEY,
        checksum_metadata,
        hasher,
        writing_algorithm,
    )

    algorithm = algorithm or writing_algorithm()
    if algorithm not in ALGORITHMS:
        raise CheckpointError(
            f"{path}: unknown checksum algorithm {algorithm!r}; expected one of {sorted(ALGORITHMS)}"
        )

    # safetensors allows no gaps between tensors, so alignment comes from the order: data starts
    # 64-byte aligned (the header is padded with spaces), tensors whose size is a multiple of 64
    # bytes come first (each one then starts aligned), the rest after, largest element size first
    # (each still aligned to its element size). Readers copy the few unaligned ones (_refs.py).
    def order(k: str) -> tuple:
        t = tensors[k]
        return (t.numel() * t.element_size() % 64 != 0, -ITEMSIZE.get(str(t.dtype)[6:], 1), k)

    names = sorted(tensors, key=order)
    header: dict[str, Any] = {}
    offset = 0
    for name in names:
        t = tensors[name]
        dt = str(t.dtype).replace("torch.", "")
        if dt not in DTYPE_TO_ST:
            raise CheckpointError(
                f"{path}: tensor {name!r} has dtype {t.dtype}, which safetensors cannot store"
            )
        nbytes = t.numel() * t.element_size()
        header[name] = {
            "dtype": DTYPE_TO_ST[dt],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    placeholder = hashes is None
    sha = dict(hashes) if hashes is not None else {n: "0" * ALGORITHMS[algorithm] for n in names}
    # Checksum entries come only from this write (a stale table copied along would fail every load).
    meta = {k: v for k, v in metadata.items() if k not in (LEGACY_KEY, ALGORITHM_KEY, TABLE_KEY)}
    if aliases:
        meta["torchsmith.aliases"] = json.dumps(aliases, sort_keys=True)

    def encode() -> bytes:
        m = dict(meta)
        m.update(checksum_metadata(algorithm, sha))
        # Entries in the state dict's own order (what inspect shows); the bytes are laid out by size.
        ordered = {n: header[n] for n in tensors}
        text = json.dumps({"__metadata__": m, **ordered}, separators=(",", ":")).encode()
        return text + b" " * (-(len(text) + 8) % 64)  # data starts 64-byte aligned, like torch zips

    head = encode()
    start = 8 + len(head)
    # Consecutive tensors in file order, in batches of about _BATCH bytes; each batch is one task.
    batches: list[list[str]] = []
    size = _BATCH
    for name in names:
        if size >= _BATCH:
            batches.append([])
            size = 0
        batches[-1].append(name)
        size += header[name]["data_offsets"][1] - header[name]["data_offsets"][0]

    def write_batch(batch: list[str]) -> tuple[dict[str, str], int]:
        # One pass over memory: each chunk is hashed and then written while it is still in the CPU
        # cache, straight from the tensor's storage (no bytes() copy); several batches run at once
        # (xxhash, hashlib and pwritev release the GIL), each at its own offset in the file.
        begin = start + header[batch[0]]["data_offsets"][0]
        offset, pending, pending_bytes, digests = begin, [], 0, {}
        for name in batch:
            data = _tensor_bytes(tensors[name])
            h = hasher(algorithm, str(path)) if placeholder else None
            for i in range(0, len(data), _CHUNK):
                piece = data[i : i + _CHUNK]
                if h is not None:
                    h.update(piece)
                pending.append(piece)
                pending_bytes += len(piece)
                if pending_bytes >= _CHUNK or len(pending) >= 512:
                    pwrite_all(fd, pending, offset)
                    offset, pending, pending_bytes = offset + pending_bytes, [], 0
            if h is not None:
                digests[name] = h.hexdigest()
        pwrite_all(fd, pending, offset)
        offset += pending_bytes
        if offset > begin:
            start_writeback(fd, begin, offset - begin)  # the final fsync then has less left to wait for
        return digests, offset - begin

    with open(path, "wb") as f:
        fd = f.fileno()
        pwrite_all(fd, [memoryview(struct.pack("<Q", len(head))), memoryview(head)], 0)
        pool = ThreadPoolExecutor(max_workers=_WRITE_THREADS)
        try:
            for digests, nbytes in pool.map(write_batch, batches):
                sha.update(digests)
                if progress is not None:
                    progress(nbytes)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on an error, stop before writing more
        if placeholder:
            new = encode()
            if len(new) != len(head):  # cannot happen: hex digests have a fixed length
                raise CheckpointError(f"{path}: internal error: header size changed while writing")
            pwrite_all(fd, [memoryview(new)], 8)
    return sha


register_reader("safetensors", read_safetensors)
