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
import json
import pickle
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

from torchsmith.checkpoint._raw import RawCheckpoint, register_reader
from torchsmith.checkpoint._refs import ITEMSIZE, StorageRef
from torchsmith.checkpoint.pickle_reader import read_pickle, storage_from_pid
from torchsmith.errors import CheckpointError

__all__ = ["METADATA_RECORD", "read_torch_legacy", "read_torch_zip", "zip_crc_errors"]

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
    ) as e:
        raise _bad(path, "damaged or truncated zip (torch.save) file", e) from None


# A zip member is read only up to this many bytes, and a compressed one may inflate to at most
# _MAX_RATIO times the archive: a 1.5 MB zip must not cost 3 GiB of memory.
_MAX_MEMBER = 1 << 30
_MAX_RATIO = 20


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


def _read_torch_zip(path: Path) -> RawCheckpoint:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise _bad(path, "damaged or truncated zip (torch.save) file", e) from None
    with zf:
        infos = {i.filename: i for i in zf.infolist()}
        pkls = [n for n in infos if n == "data.pkl" or n.endswith("/data.pkl")]
        if not pkls:
            if any(n.endswith("constants.pkl") for n in infos):
                raise CheckpointError(
                    f"{path}: a TorchScript archive (torch.jit.save), not a torch.save checkpoint; "
                    "load it with torch.jit.load, then save model.state_dict() with torchsmith.save"
                )
            raise CheckpointError(f"{path}: a zip file without data.pkl: not a torch.save checkpoint")
        pkl = min(pkls, key=len)
        prefix = pkl[: -len("data.pkl")]
        order = infos.get(prefix + "byteorder")
        size = path.stat().st_size
        if order is not None and _read_member(zf, order, size, path).strip() not in (b"little", b""):
            raise CheckpointError(f"{path}: saved on a big-endian machine; only little-endian is supported")
        storages: dict[str, StorageRef] = {}
        with open(path, "rb") as f:

            def persistent_load(pid: Any) -> StorageRef:
                key, dtype, location, numel = storage_from_pid(pid)
                ref = storages.get(key)
                if ref is not None:
                    return ref
                info = infos.get(f"{prefix}data/{key}")
                if info is None:
                    raise pickle.UnpicklingError(f"storage record 'data/{key}' is missing from the zip")
                if info.compress_type != zipfile.ZIP_STORED:
                    raise pickle.UnpicklingError(f"storage record 'data/{key}' is compressed")
                nbytes = numel * ITEMSIZE.get(dtype, 1)
                if nbytes != info.file_size:
                    raise pickle.UnpicklingError(
                        f"storage 'data/{key}' should hold {nbytes} bytes but its record has {info.file_size}"
                    )
                start = _data_offset(f, info)
                if start + nbytes > size:
                    raise pickle.UnpicklingError(f"storage 'data/{key}' runs past the end of the file")
                ref = storages[key] = StorageRef(str(path), start, nbytes, dtype, location, key)
                return ref

            try:
                result = read_pickle(io.BytesIO(_read_member(zf, infos[pkl], size, path)), persistent_load)
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
        meta = infos.get(prefix + METADATA_RECORD)
        if meta is not None:
            try:
                data = json.loads(_read_member(zf, meta, size, path))
            except (ValueError, zipfile.BadZipFile, zlib.error) as e:
                raise _bad(path, f"damaged metadata record {METADATA_RECORD}", e) from None
            raw.metadata = {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        _note_locations(raw, storages.values())
        return raw


def zip_crc_errors(path: Path) -> list[str]:
    """Names of zip records whose bytes no longer match their CRC-32 (bit flips, partial writes)."""
    bad = []
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
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
    size = path.stat().st_size
    storages: dict[str, StorageRef] = {}

    def persistent_load(pid: Any) -> StorageRef:
        if isinstance(pid, tuple) and len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (PyTorch < 0.4 files) are not supported")
        key, dtype, location, numel = storage_from_pid(pid)
        ref = storages.get(key)
        if ref is None:
            ref = storages[key] = StorageRef(
                str(path), -1, numel * ITEMSIZE.get(dtype, 1), dtype, location, key
            )
        return ref

    with open(path, "rb") as f:
        try:
            if plain:
                result = read_pickle(f, None)
                return RawCheckpoint(
                    path,
                    "pickle",
                    result.obj,
                    stand_ins=result.stand_ins,
                    calls=result.calls,
                    globals_named=result.globals_named,
                )
            magic = read_pickle(f).obj
            if magic != _LEGACY_MAGIC:
                raise pickle.UnpicklingError("wrong magic number")
            read_pickle(f)  # protocol version
            read_pickle(f)  # system info (endianness, type sizes)
            result = read_pickle(f, persistent_load)
            keys = read_pickle(f).obj
        except CheckpointError:
            raise
        except Exception as e:
            raise _bad(path, "damaged or truncated torch pickle", e) from None
        if not isinstance(keys, list):
            raise _bad(path, "damaged torch pickle: the storage key list is missing")
        offset = f.tell()
        for key in keys:
            ref = storages.get(str(key))
            f.seek(offset)
            head = f.read(8)
            if len(head) < 8 or ref is None:
                raise _bad(path, f"truncated torch pickle: storage {key!r} is missing")
            (numel,) = struct.unpack("<q", head)
            ref.offset = offset + 8
            if numel * ITEMSIZE.get(ref.dtype, 1) != ref.nbytes or ref.offset + ref.nbytes > size:
                raise _bad(path, f"truncated or damaged torch pickle: storage {key!r} does not fit")
            offset = ref.offset + ref.nbytes
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
    _note_locations(raw, storages.values())
    return raw


register_reader("torch-zip", read_torch_zip)
register_reader("torch-legacy", read_torch_legacy)
register_reader("pickle", lambda path: read_torch_legacy(path, plain=True))
