"""Read ``torch.save`` files (zip and legacy) without torch, with the restricted unpickler.

A torch zip holds ``<archive>/data.pkl`` (the pickled object, tensors replaced by persistent ids)
and one uncompressed record ``<archive>/data/<key>`` per storage. We parse the zip directory with
:mod:`zipfile`, find where each record's bytes start, and describe every tensor as a
:class:`~torchsmith.checkpoint._refs.TensorRef` pointing there. The legacy format is a sequence of
pickles (magic number, protocol, system info, the object, storage keys) followed by each storage's
element count and bytes.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import pickle
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchsmith.checkpoint._budget import ReadBudget
from torchsmith.checkpoint._raw import RawCheckpoint, register_reader
from torchsmith.checkpoint._refs import ITEMSIZE, StorageRef, file_identity, open_regular
from torchsmith.checkpoint._values import short_repr
from torchsmith.checkpoint.pickle_reader import read_pickle, storage_from_pid
from torchsmith.errors import CheckpointError

__all__ = ["METADATA_RECORD", "read_torch_legacy", "read_torch_zip", "zip_crc_errors", "zip_members"]

# torchsmith.save adds this record to a torch zip; torch.load ignores records it does not know.
METADATA_RECORD = "torchsmith_metadata.json"


def _bad(path: Path, what: str, err: BaseException | None = None) -> CheckpointError:
    detail = f": {type(err).__name__}: {err}" if err is not None else ""
    return CheckpointError(f"{path}: {what}{detail}"[:600])


def _data_offset(f, info: zipfile.ZipInfo) -> int:
    f.seek(info.header_offset)
    head = f.read(30)
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {info.filename}")
    n, e = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + n + e


def read_torch_zip(path: Path) -> RawCheckpoint:
    """Describe a torch zip checkpoint: the unpickled object with ``TensorRef`` leaves, and notes."""
    try:
        return _read_torch_zip(path)
    except CheckpointError:
        raise
    except (
        zipfile.BadZipFile,
        zlib.error,
        OSError,
        EOFError,
        ValueError,
        struct.error,
        NotImplementedError,
        KeyError,
        IndexError,
        OverflowError,
    ) as e:
        raise _bad(path, "damaged or truncated zip (torch.save) file", e) from None


# A zip member is read only up to this many bytes, and a compressed one may inflate to at most
# _MAX_RATIO times the archive: a 1.5 MB zip must not cost 3 GiB of memory.
_MAX_MEMBER = 1 << 30
_MAX_RATIO = 20
_MAX_MEMBERS = 1_000_000


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive_size: int, path: Path) -> bytes:
    cap = min(_MAX_MEMBER, max(16 << 20, _MAX_RATIO * archive_size))
    if info.compress_type == zipfile.ZIP_STORED:
        cap = min(cap, archive_size)
    if info.file_size > cap:
        raise CheckpointError(
            f"{path}: zip member {info.filename[:80]!r} declares {info.file_size} bytes, more than the "
            f"{cap} a {archive_size}-byte archive may hold (a zip bomb?)"
        )
    with zf.open(info) as member:  # zipfile stops at the declared size and checks the CRC
        data = member.read(info.file_size + 1)
    if len(data) > info.file_size:
        raise CheckpointError(f"{path}: zip member {info.filename[:80]!r} is longer than it declares")
    return data


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    start: int  # first byte of the member's data in the archive
    end: int  # one past its last byte (compressed size)


def zip_members(f, zf: zipfile.ZipFile, size: int, path: Path) -> dict[str, _Member]:
    """The archive's member table, checked: unique names, the same name in the central directory and
    the local header, data inside the file, no two members sharing bytes. Only bytes of a member
    listed here are ever read as a tensor."""
    infos = zf.infolist()
    if len(infos) > _MAX_MEMBERS:
        raise CheckpointError(f"{path}: a zip with {len(infos)} members (limit {_MAX_MEMBERS})")
    members: dict[str, _Member] = {}
    for info in infos:
        if info.filename in members:
            raise CheckpointError(
                f"{path}: zip member {info.filename[:80]!r} appears twice: readers would disagree on which "
                "one is the record (a crafted or damaged file); refused"
            )
        if info.flag_bits & 0x1:
            raise CheckpointError(f"{path}: zip member {info.filename[:80]!r} is encrypted")
        mode = info.external_attr >> 16
        if info.external_attr & 0x10 or stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            # torch's reader extracts nothing from a member marked as a directory or a link and
            # hands back uninitialised memory; only regular members are records.
            raise CheckpointError(
                f"{path}: zip member {info.filename[:80]!r} is marked as a directory or link, not a file"
            )
        f.seek(info.header_offset)
        head = f.read(30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"bad local header for {info.filename}")
        n, e = struct.unpack("<HH", head[26:30])
        start = info.header_offset + 30 + n + e
        local = f.read(n)
        if local.decode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace") != info.filename:
            raise CheckpointError(
                f"{path}: zip member {info.filename[:80]!r} has another name in its local header: refused"
            )
        end = start + info.compress_size
        if end > size or info.header_offset < 0:
            raise CheckpointError(f"{path}: zip member {info.filename[:80]!r} runs past the end of the file")
        members[info.filename] = _Member(info, start, end)
    spans = sorted((m.info.header_offset, m.end, name) for name, m in members.items())
    for (_, end_a, a), (start_b, _, b) in itertools.pairwise(spans):
        if start_b < end_a:
            raise CheckpointError(
                f"{path}: zip members {a[:60]!r} and {b[:60]!r} overlap (share bytes): refused"
            )
    return members


def _archive_kind(names: list[str]) -> str | None:
    if any(n.endswith("/archive_format") or n == "archive_format" for n in names) or any(
        "/models/" in n and n.endswith(".json") for n in names
    ):
        return "export"
    if any(n.endswith("constants.pkl") or "/code/" in n or n.startswith("code/") for n in names):
        return "script"
    return None


def _read_torch_zip(path: Path) -> RawCheckpoint:
    fd = open_regular(path)
    with open(fd, "rb") as f:
        ident = file_identity(fd)
        size = os.fstat(fd).st_size
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as e:
            raise _bad(path, "damaged or truncated zip (torch.save) file", e) from None
        with zf:
            return _read_zip_archive(path, f, zf, size, ident)


def _read_zip_archive(path: Path, f, zf: zipfile.ZipFile, size: int, ident: tuple[int, int]) -> RawCheckpoint:
    members = zip_members(f, zf, size, path)
    names = list(members)
    kind = _archive_kind(names)
    if kind == "export":
        raise CheckpointError(
            f"{path}: a torch.export archive (.pt2, torch.export.save), not a torch.save checkpoint; load it "
            "with torch.export.load (it holds a program, not only weights), then save "
            "exported.state_dict with torchsmith.save"
        )
    if kind == "script":
        raise CheckpointError(
            f"{path}: a TorchScript archive (torch.jit.save), not a torch.save checkpoint; "
            "load it with torch.jit.load (it runs its own code), then save model.state_dict() with "
            "torchsmith.save"
        )
    pkls = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if not pkls:
        raise CheckpointError(f"{path}: a zip file without data.pkl: not a torch.save checkpoint")
    if len(pkls) > 1:
        raise CheckpointError(
            f"{path}: a zip with {len(pkls)} data.pkl records ({', '.join(p[:40] for p in pkls[:3])}): "
            "readers would disagree on which one is the checkpoint; refused"
        )
    pkl = pkls[0]
    prefix = pkl[: -len("data.pkl")]
    if not names[0].startswith(prefix):
        # torch takes the archive's folder from its first record; any other layout it reads differently.
        raise CheckpointError(f"{path}: the zip's first record {names[0][:60]!r} is outside {prefix!r}")
    order = members.get(prefix + "byteorder")
    if order is not None and _read_member(zf, order.info, size, path).strip() not in (b"little", b""):
        raise CheckpointError(f"{path}: saved on a big-endian machine; only little-endian is supported")
    budget = ReadBudget(where=str(path))
    storages: dict[str, StorageRef] = {}

    def persistent_load(pid: Any) -> StorageRef:
        key, dtype, location, numel = storage_from_pid(pid)
        ref = storages.get(key)
        if ref is not None:
            return ref  # torch keeps the first record made for a key, whatever dtype a later id names
        member = members.get(f"{prefix}data/{key}")
        if member is None:
            raise pickle.UnpicklingError(f"storage record 'data/{key[:60]}' is missing from the zip")
        info = member.info
        if info.compress_type != zipfile.ZIP_STORED:
            raise pickle.UnpicklingError(f"storage record 'data/{key[:60]}' is compressed")
        nbytes = numel * ITEMSIZE[dtype]
        if nbytes != info.file_size or info.compress_size != info.file_size:
            raise pickle.UnpicklingError(
                f"storage 'data/{key[:60]}' should hold {nbytes} bytes but its record has {info.file_size}"
            )
        ref = storages[key] = StorageRef(str(path), member.start, nbytes, dtype, location, key, ident)
        return ref

    data = _read_member(zf, members[pkl].info, size, path)
    try:
        result = read_pickle(io.BytesIO(data), persistent_load, budget=budget, where=str(path))
    except CheckpointError:
        raise
    except Exception as e:
        raise _bad(path, "cannot read the pickled object in this torch zip", e) from None
    raw = RawCheckpoint(
        path,
        "torch-zip",
        result.obj,
        stand_ins=result.stand_ins,
        calls=result.calls,
        globals_named=result.globals_named,
    )
    raw.budget = budget
    meta = members.get(prefix + METADATA_RECORD)
    if meta is not None:
        try:
            data = json.loads(_read_member(zf, meta.info, size, path))
        except (ValueError, zipfile.BadZipFile, zlib.error, RecursionError) as e:
            raise _bad(path, f"damaged metadata record {METADATA_RECORD}", e) from None
        raw.metadata = {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    _note_locations(raw, storages.values())
    return raw


def zip_crc_errors(path: Path) -> list[str]:
    """Names of zip records whose bytes no longer match their CRC-32 (bit flips, partial writes)."""
    bad = []
    with open(open_regular(path), "rb") as f, zipfile.ZipFile(f) as zf:
        for info in zf.infolist():
            try:
                f.seek(_data_offset(f, info))
            except zipfile.BadZipFile:
                bad.append(info.filename)  # its local header is damaged: the record cannot be read
                continue
            crc, left = 0, info.file_size
            while left > 0:
                chunk = f.read(min(left, 1 << 24))
                if not chunk:
                    break
                crc = zlib.crc32(chunk, crc)
                left -= len(chunk)
            if left or crc != info.CRC:
                bad.append(info.filename)
    return bad


def _note_locations(raw: RawCheckpoint, storages) -> None:
    places = sorted({s.location for s in storages if s.location and s.location != "cpu"})
    if places:
        raw.notes.append(f"tensors were saved on {', '.join(places)}; they are read onto the CPU")


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def read_torch_legacy(path: Path, *, plain: bool = False) -> RawCheckpoint:
    """Describe a legacy (pre-zip) torch file, or a plain pickle when ``plain``."""
    fd = open_regular(path)
    with open(fd, "rb") as f:
        ident = file_identity(fd)
        size = os.fstat(fd).st_size
        try:
            return _read_legacy(path, f, size, ident, plain)
        except CheckpointError:
            raise
        except Exception as e:
            raise _bad(path, "damaged or truncated torch pickle", e) from None


def _read_legacy(path: Path, f, size: int, ident: tuple[int, int], plain: bool) -> RawCheckpoint:
    budget = ReadBudget(where=str(path))
    storages: dict[str, StorageRef] = {}

    def persistent_load(pid: Any) -> StorageRef:
        if type(pid) is tuple and len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (PyTorch < 0.4 files) are not supported")
        key, dtype, location, numel = storage_from_pid(pid)
        ref = storages.get(key)
        if ref is None:
            ref = storages[key] = StorageRef(
                str(path), -1, numel * ITEMSIZE[dtype], dtype, location, key, ident
            )
        return ref

    def one(load=None):
        return read_pickle(f, load, budget=budget, where=str(path), limit=size - f.tell())

    if plain:
        result = one()
        if type(result.obj) is not int or result.obj != _LEGACY_MAGIC:
            raw = RawCheckpoint(
                path, "pickle", result.obj, stand_ins=result.stand_ins, calls=result.calls,
                globals_named=result.globals_named,
            )  # fmt: skip
            raw.budget = budget
            return raw
        # torch compares the magic number's value, not its bytes (another pickle protocol byte, another
        # int opcode): a file whose first pickle is that number is a legacy file, read as torch reads it
        f.seek(0)
    magic = one().obj
    if type(magic) is not int or magic != _LEGACY_MAGIC:
        raise pickle.UnpicklingError("wrong magic number")
    version = one().obj
    if type(version) is not int or version != 1001:
        raise pickle.UnpicklingError(f"protocol version {short_repr(version)}, expected 1001")
    one()  # system info (endianness, type sizes)
    result = one(persistent_load)
    keys = one().obj
    if type(keys) is not list or not all(type(k) is str for k in keys) or len(set(keys)) != len(keys):
        raise _bad(path, "damaged torch pickle: the storage key list is missing or repeats keys")
    offset = f.tell()
    for key in keys:
        ref = storages.get(key)
        f.seek(offset)
        head = f.read(8)
        if len(head) < 8 or ref is None:
            raise _bad(path, f"truncated torch pickle: storage {key[:60]!r} is missing")
        (numel,) = struct.unpack("<q", head)
        start = offset + 8
        if numel * ITEMSIZE[ref.dtype] != ref.nbytes or start + ref.nbytes > size:
            raise _bad(path, f"truncated or damaged torch pickle: storage {key[:60]!r} does not fit")
        # The reader's own record, completed before anything else can see it (frozen to all others).
        object.__setattr__(ref, "offset", start)
        offset = start + ref.nbytes
    missing = [k for k, s in storages.items() if s.offset < 0]
    if missing:
        raise _bad(path, f"damaged torch pickle: storages {missing[:3]} have no data")
    raw = RawCheckpoint(
        path,
        "torch-legacy",
        result.obj,
        stand_ins=result.stand_ins,
        calls=result.calls,
        globals_named=result.globals_named,
    )
    raw.budget = budget
    _note_locations(raw, storages.values())
    return raw


register_reader("torch-zip", read_torch_zip)
register_reader("torch-legacy", read_torch_legacy)
register_reader("pickle", lambda path: read_torch_legacy(path, plain=True))
