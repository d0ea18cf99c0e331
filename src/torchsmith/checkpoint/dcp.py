"""``torch.distributed.checkpoint`` directories: a ``.metadata`` pickle plus ``*.distcp`` data files.

torch's own ``FileSystemReader.read_metadata`` unpickles ``.metadata`` with a plain ``pickle.load``,
so a crafted folder runs code the moment torch opens it. torchsmith never lets it: ``.metadata`` is
read with the restricted reader, every global it names must be on an *exact* list of DCP's own
classes (:data:`DCP_METADATA_CLASSES`), every field is type-checked, and the ``Metadata`` object
torch gets is one torchsmith built from the checked values (:func:`read_dcp_metadata`). Non-tensor
entries (saved by DCP as pickles inside ``*.distcp``) are read with ``torch.load(weights_only=True)``
instead of torch's default ``weights_only=False``. Data files must lie inside the folder.

Resuming from a DCP checkpoint through the safe path (what ``training/checkpointing.py`` does)::

    from torchsmith.checkpoint.dcp import load_dcp
    load_dcp(state_dict, "ckpt/step_100")               # like dcp.load(state_dict, checkpoint_id=...)

or, to keep calling torch yourself, pass ``storage_reader=safe_storage_reader(path)`` and
``planner=safe_load_planner()`` to ``torch.distributed.checkpoint.load``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchsmith.checkpoint._raw import RawCheckpoint, register_reader
from torchsmith.checkpoint._refs import ITEMSIZE, TensorRef, open_regular
from torchsmith.checkpoint.pickle_reader import DTypeRef, StandIn, StandInCall, read_pickle
from torchsmith.errors import CheckpointError

__all__ = [
    "DCP_METADATA_CLASSES",
    "load_dcp",
    "load_dcp_tensors",
    "read_dcp",
    "read_dcp_metadata",
    "safe_load_planner",
    "safe_storage_reader",
]

_MD = "torch.distributed.checkpoint.metadata."
# Every global a DCP .metadata pickle may name, exactly (checked against torch 2.0 - 2.14 writers).
# Version of this list: bump it when a torch release adds a class, after checking what it does.
DCP_METADATA_CLASSES_VERSION = "2"
DCP_METADATA_CLASSES = frozenset(
    {
        _MD + "Metadata",
        _MD + "TensorStorageMetadata",
        _MD + "BytesStorageMetadata",
        _MD + "ChunkStorageMetadata",
        _MD + "TensorProperties",
        _MD + "_MEM_FORMAT_ENCODING",
        _MD + "MetadataIndex",
        _MD + "StorageMeta",
        # torch 2.0-2.1 pickled TensorProperties under its old home.
        "torch.distributed._shard.sharded_tensor.metadata.TensorProperties",
        "torch.distributed._shard.sharded_tensor.metadata.MEM_FORMAT_ENCODING",
        "torch.distributed.checkpoint.filesystem._StorageInfo",
        "torch.serialization._get_layout",
        "torch.Size",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "pathlib.PurePosixPath",
        "pathlib.PureWindowsPath",
        "collections.OrderedDict",
    }
    | {f"torch.{d}" for d in ITEMSIZE}
)
_LAYOUTS = ("torch.strided", "torch.sparse_coo", "torch.sparse_csr", "torch.sparse_csc", "torch.jagged")
_MAX_METADATA_BYTES = 512 << 20


@dataclass
class _Tensor:
    dtype: str
    size: tuple[int, ...]
    chunks: list[tuple[tuple[int, ...], tuple[int, ...]]]
    layout: str = "torch.strided"
    requires_grad: bool = False
    memory_format: int = 0
    pin_memory: bool = False


@dataclass
class _Storage:
    fqn: str
    offset: tuple[int, ...] | None
    index: int | None
    relative_path: str
    file_offset: int
    length: int


@dataclass
class _Parsed:
    """The checked content of a ``.metadata`` file, as plain Python values (no torch)."""

    tensors: dict[str, _Tensor] = field(default_factory=dict)
    byte_entries: list[str] = field(default_factory=list)
    storage: list[_Storage] = field(default_factory=list)
    planner_data: Any = None
    storage_meta: dict | None = None
    version: str | None = None


def _read(meta_path: Path):
    try:
        size = meta_path.stat().st_size
        if size > _MAX_METADATA_BYTES:
            raise CheckpointError(
                f"{meta_path}: {size} bytes of DCP metadata, more than the {_MAX_METADATA_BYTES >> 20} MiB "
                "torchsmith reads"
            )
        with open(open_regular(meta_path), "rb") as f:  # a FIFO or device is refused, never read
            return read_pickle(f, where=str(meta_path))
    except CheckpointError:
        raise
    except Exception as e:  # malformed pickle: any exception type from the unpickler
        raise CheckpointError(
            f"{meta_path}: damaged torch.distributed.checkpoint metadata: {type(e).__name__}: {e}"[:300]
        ) from None


def _foreign(result) -> list[str]:
    return sorted(q for q in result.globals_named if q not in DCP_METADATA_CLASSES)


class _Bad(Exception):
    pass


def _state(obj: Any, cls: str) -> dict:
    if not (isinstance(obj, StandIn) and obj._qualname.endswith("." + cls)):
        raise _Bad(f"expected a {cls}, found {_what(obj)}")
    if obj._args or obj._kwargs or obj._items or obj._dict_items:
        raise _Bad(f"a {cls} built with arguments")
    s = obj._state
    if s is None:
        return {}
    if not isinstance(s, dict) or not all(isinstance(k, str) for k in s):
        raise _Bad(f"{cls} state is a {type(s).__name__}, not a dict of fields")
    return s


def _what(obj: Any) -> str:
    if isinstance(obj, StandIn):
        return obj._qualname
    if isinstance(obj, StandInCall):
        return f"a call to {obj.qualname}"
    return type(obj).__name__


def _ints(v: Any, name: str) -> tuple[int, ...]:
    if not (isinstance(v, (tuple, list)) and all(type(x) is int and x >= 0 for x in v)):
        raise _Bad(f"{name} must be a tuple of non-negative ints, found {_what(v)}")
    return tuple(v)


def _opt_str(v: Any, name: str) -> str | None:
    if isinstance(v, StandInCall) and v.qualname.startswith("pathlib.") and not v.kwargs:
        if not all(isinstance(a, str) for a in v.args):
            raise _Bad(f"{name} is a path of non-strings")
        v = str(Path(*v.args)) if v.args else "."
    if v is not None and not isinstance(v, str):
        raise _Bad(f"{name} must be a string or None, found {_what(v)}")
    return v


def _plain(v: Any, name: str, depth: int = 0) -> Any:
    """planner_data: only plain values (the default planner stores tuples of key paths)."""
    if depth > 32:
        raise _Bad(f"{name} is nested too deeply")
    if v is None or type(v) in (str, int, float, bool):
        return v
    if type(v) in (tuple, list):
        return type(v)(_plain(x, name, depth + 1) for x in v)
    if isinstance(v, dict):
        return {_plain(k, name, depth + 1): _plain(x, name, depth + 1) for k, x in v.items()}
    raise _Bad(f"{name} holds {_what(v)}; only plain values are allowed")


def _properties(obj: Any, fqn: str) -> dict:
    if not (isinstance(obj, StandIn) and obj._qualname.endswith(".TensorProperties")):
        raise _Bad(f"{fqn}: properties must be a TensorProperties, found {_what(obj)}")
    s = obj._state
    if isinstance(s, tuple) and len(s) == 5:
        dtype, layout, rg, mem, pin = s
    elif isinstance(s, dict):  # very old writers: a plain __dict__
        dtype, layout, rg = s.get("dtype"), s.get("layout"), s.get("requires_grad", False)
        mem, pin = s.get("memory_format"), s.get("pin_memory", False)
    else:
        raise _Bad(f"{fqn}: TensorProperties state is {_what(s)}")
    if not isinstance(dtype, DTypeRef):
        raise _Bad(f"{fqn}: dtype is {_what(dtype)}, not a torch dtype")
    lay = "torch.strided"
    if layout is not None:
        if not (
            isinstance(layout, StandInCall)
            and layout.qualname == "torch.serialization._get_layout"
            and len(layout.args) == 1
            and layout.args[0] in _LAYOUTS
        ):
            raise _Bad(f"{fqn}: layout is {_what(layout)}, not one of {', '.join(_LAYOUTS)}")
        lay = layout.args[0]
    code = 0
    if mem is not None:
        if not (
            isinstance(mem, StandInCall)
            and mem.qualname.endswith("MEM_FORMAT_ENCODING")
            and len(mem.args) == 1
            and mem.args[0] in (0, 1, 2)
        ):
            raise _Bad(f"{fqn}: memory format is {_what(mem)}, not a _MEM_FORMAT_ENCODING(0|1|2)")
        code = mem.args[0]
    if type(rg) is not bool or type(pin) is not bool:
        raise _Bad(f"{fqn}: requires_grad and pin_memory must be bools")
    return {"dtype": dtype.name, "layout": lay, "requires_grad": rg, "memory_format": code, "pin_memory": pin}


def _parse(obj: Any) -> _Parsed:
    """Check every field of a ``Metadata`` stand-in; raise ``_Bad`` naming the first wrong one."""
    top = _state(obj, "Metadata")
    unknown = set(top) - {"state_dict_metadata", "planner_data", "storage_data", "storage_meta", "version"}
    if unknown:
        raise _Bad(f"Metadata has unknown fields {sorted(unknown)[:4]}")
    out = _Parsed()
    md = top.get("state_dict_metadata")
    if not isinstance(md, dict):
        raise _Bad("no state_dict_metadata dict")
    for fqn, item in md.items():
        if not isinstance(fqn, str):
            raise _Bad(f"state_dict_metadata key {_what(fqn)} is not a string")
        if isinstance(item, StandIn) and item._qualname == _MD + "BytesStorageMetadata":
            _state(item, "BytesStorageMetadata")
            out.byte_entries.append(fqn)
            continue
        s = _state(item, "TensorStorageMetadata")
        chunks = s.get("chunks")
        if not isinstance(chunks, list):
            raise _Bad(f"{fqn}: chunks must be a list")
        size = _ints(s.get("size"), f"{fqn}: size")
        parsed_chunks = []
        for c in chunks:
            cs = _state(c, "ChunkStorageMetadata")
            offsets, sizes = (
                _ints(cs.get("offsets"), f"{fqn}: offsets"),
                _ints(cs.get("sizes"), f"{fqn}: sizes"),
            )
            if (
                len(offsets) != len(size)
                or len(sizes) != len(size)
                or any(o + n > d for o, n, d in zip(offsets, sizes, size))
            ):
                raise _Bad(f"{fqn}: chunk {offsets}+{sizes} does not fit in a tensor of size {size}")
            parsed_chunks.append((offsets, sizes))
        out.tensors[fqn] = _Tensor(size=size, chunks=parsed_chunks, **_properties(s.get("properties"), fqn))
    storage = top.get("storage_data")
    if storage is not None:
        if not isinstance(storage, dict):
            raise _Bad("storage_data must be a dict")
        for key, info in storage.items():
            k = _state(key, "MetadataIndex")
            i = _state(info, "_StorageInfo")
            if set(k) - {"fqn", "offset", "index"} or set(i) - {"relative_path", "offset", "length"}:
                raise _Bad("storage_data holds unknown fields (transforms are not supported)")
            fqn, index = k.get("fqn"), k.get("index")
            offset = k.get("offset")
            rel, off, length = i.get("relative_path"), i.get("offset"), i.get("length")
            if not isinstance(fqn, str) or not (index is None or type(index) is int):
                raise _Bad("storage_data: a MetadataIndex without a string fqn")
            if (
                not isinstance(rel, str)
                or type(off) is not int
                or type(length) is not int
                or off < 0
                or length < 0
            ):
                raise _Bad(f"storage_data[{fqn!r}]: relative_path/offset/length are malformed")
            out.storage.append(
                _Storage(
                    fqn, None if offset is None else _ints(offset, f"{fqn}: offset"), index, rel, off, length
                )
            )
    out.planner_data = _plain(top.get("planner_data"), "planner_data")
    sm = top.get("storage_meta")
    if sm is not None:
        s = _state(sm, "StorageMeta")
        if set(s) - {"checkpoint_id", "save_id", "load_id", "modules"}:
            raise _Bad("StorageMeta has unknown fields")
        mods = s.get("modules") or []
        if not (isinstance(mods, list) and all(isinstance(m, str) for m in mods)):
            raise _Bad("StorageMeta.modules must be a list of strings")
        out.storage_meta = {
            "checkpoint_id": _opt_str(s.get("checkpoint_id"), "checkpoint_id"),
            "save_id": _opt_str(s.get("save_id"), "save_id"),
            "load_id": _opt_str(s.get("load_id"), "load_id"),
            "modules": list(mods),
        }
    out.version = _opt_str(top.get("version"), "version")
    return out


def _check_files(folder: Path, parsed: _Parsed) -> None:
    """Every data file must be a plain name inside ``folder`` and hold the bytes it is said to."""
    root = folder.resolve()
    sizes: dict[str, int] = {}
    for s in parsed.storage:
        rel = s.relative_path
        if rel not in sizes:
            p = Path(rel)
            if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or p.name != rel:
                raise CheckpointError(
                    f"{folder}/.metadata: data file {rel!r:.80} is not a file name inside the folder"
                )
            target = (folder / rel).resolve()
            if target.parent != root or not target.is_file():
                raise CheckpointError(
                    f"{folder}/.metadata: data file {rel!r:.80} is missing or leaves the folder"
                )
            sizes[rel] = target.stat().st_size
        if s.file_offset + s.length > sizes[rel]:
            raise CheckpointError(f"{folder}/{rel}: {s.fqn!r} lies past the end of the file (truncated?)")


def _parse_folder(folder: Path, meta_path: Path | None = None) -> _Parsed:
    meta_path = meta_path or folder / ".metadata"
    result = _read(meta_path)
    foreign = _foreign(result)
    if foreign:
        raise CheckpointError(
            f"{meta_path}: names {', '.join(foreign[:4])}, which is not one of "
            "torch.distributed.checkpoint's own metadata classes; refusing to let torch unpickle it "
            "(pass trust_pickle=True only if you trust where the folder came from)"
        )
    try:
        parsed = _parse(result.obj)
    except _Bad as e:
        raise CheckpointError(
            f"{meta_path}: not valid torch.distributed.checkpoint metadata: {e}"[:400]
        ) from None
    _check_files(folder, parsed)
    return parsed


def read_dcp(path: Path) -> RawCheckpoint:
    """Describe a DCP directory: ``TensorRef`` (no storage) per tensor, from ``.metadata`` (no torch)."""
    path = Path(path)
    meta_path = path / ".metadata"
    result = _read(meta_path)
    foreign = _foreign(result)
    tensors: dict[str, TensorRef] = {}
    notes: list[str] = []
    if foreign:
        # Described loosely so inspect can say what it names; nothing will load it without trust.
        md = (
            result.obj.state_dict_like.get("state_dict_metadata") if isinstance(result.obj, StandIn) else None
        )
        notes.append(f"metadata names foreign classes {', '.join(foreign[:4])}")
        if not isinstance(md, dict):
            md = {}
        for fqn, item in md.items():
            s = item.state_dict_like if isinstance(item, StandIn) else {}
            props = s.get("properties")
            st = props._state if isinstance(props, StandIn) else None
            size = s.get("size")
            if isinstance(st, tuple) and st and isinstance(st[0], DTypeRef) and isinstance(size, tuple):
                tensors[str(fqn)] = TensorRef(
                    None, st[0].name, tuple(int(x) for x in size), extra={"dcp": True}
                )
    else:
        try:
            parsed = _parse(result.obj)
        except _Bad as e:
            raise CheckpointError(
                f"{meta_path}: not valid torch.distributed.checkpoint metadata: {e}"[:400]
            ) from None
        for fqn, t in parsed.tensors.items():
            tensors[fqn] = TensorRef(None, t.dtype, t.size, extra={"dcp": True})
        if parsed.byte_entries:
            notes.append(
                f"{len(parsed.byte_entries)} non-tensor entries "
                f"(e.g. {parsed.byte_entries[0]!r}) are not read"
            )
    raw = RawCheckpoint(
        path,
        "dcp",
        tensors,
        stand_ins=result.stand_ins,
        calls=result.calls,
        globals_named=result.globals_named,
    )
    raw.files = sorted(path.glob("*.distcp"))
    if not raw.files:
        raise CheckpointError(
            f"{path}: torch.distributed.checkpoint directory without any *.distcp data file"
        )
    raw.notes.extend(notes)
    if foreign:
        raw.metadata["torchsmith.dcp_foreign"] = ",".join(foreign)
    return raw


def _build(parsed: _Parsed):
    import dataclasses

    import torch
    from torch.distributed.checkpoint import metadata as m
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    # The writer's classes must still have the fields filled in here (a torch upgrade may change them).
    for cls, names in (
        (m.Metadata, {"state_dict_metadata", "planner_data", "storage_data", "storage_meta", "version"}),
        (m.StorageMeta, {"checkpoint_id", "save_id", "load_id", "modules"}),
        (_StorageInfo, {"relative_path", "offset", "length"}),
    ):
        missing = names - {f.name for f in dataclasses.fields(cls)}
        if missing:
            raise CheckpointError(
                f"this torch ({torch.__version__}) has a {cls.__name__} without {sorted(missing)}; "
                f"torchsmith's DCP reader (list v{DCP_METADATA_CLASSES_VERSION}) needs updating"
            )
    mem = (torch.contiguous_format, torch.channels_last, torch.preserve_format)
    sdm: dict[str, Any] = {}
    for fqn, t in parsed.tensors.items():
        props = m.TensorProperties(
            dtype=getattr(torch, t.dtype),
            layout=getattr(torch, t.layout.split(".", 1)[1]),
            requires_grad=t.requires_grad,
            memory_format=mem[t.memory_format],
            pin_memory=t.pin_memory,
        )
        chunks = [m.ChunkStorageMetadata(torch.Size(o), torch.Size(s)) for o, s in t.chunks]
        sdm[fqn] = m.TensorStorageMetadata(props, torch.Size(t.size), chunks)
    for fqn in parsed.byte_entries:
        sdm[fqn] = m.BytesStorageMetadata()
    storage = {
        m.MetadataIndex(s.fqn, None if s.offset is None else torch.Size(s.offset), s.index): _StorageInfo(
            s.relative_path, s.file_offset, s.length
        )
        for s in parsed.storage
    }
    meta = m.Metadata(sdm, planner_data=parsed.planner_data, storage_data=storage, version=parsed.version)
    if parsed.storage_meta is not None:
        meta.storage_meta = m.StorageMeta(**parsed.storage_meta)
    return meta


def read_dcp_metadata(path: str | os.PathLike):
    """The ``Metadata`` of DCP folder ``path``, built by torchsmith from a checked ``.metadata``.

    Raises :class:`~torchsmith.errors.CheckpointError` when the pickle names anything outside
    :data:`DCP_METADATA_CLASSES`, when a field has the wrong type, or when a data file is not a
    plain file name inside the folder. torch never unpickles the file.
    """
    folder = Path(path)
    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"{folder}: not a torch.distributed.checkpoint folder (no .metadata file)")
    return _build(_parse_folder(folder))


_CLASSES: dict[str, type] = {}


def _classes() -> dict[str, type]:
    if not _CLASSES:
        import torch
        from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
        from torch.distributed.checkpoint.metadata import StorageMeta

        class SafeFileSystemReader(FileSystemReader):
            """A ``FileSystemReader`` whose ``read_metadata`` returns :func:`read_dcp_metadata`'s object."""

            def read_metadata(self, *args: Any, **kwargs: Any):
                meta_path = Path(self._get_metadata_path(kwargs.get("rank")))
                meta = _build(_parse_folder(Path(self.path), meta_path))
                if meta.storage_meta is None:
                    meta.storage_meta = StorageMeta()
                meta.storage_meta.load_id = self.load_id
                return meta

        class SafeLoadPlanner(DefaultLoadPlanner):
            """A ``DefaultLoadPlanner`` that reads non-tensor entries with ``weights_only=True``."""

            def load_bytes(self, read_item, value) -> None:
                try:
                    obj = torch.load(value, weights_only=True)
                except Exception as e:
                    why = [ln for ln in str(e).splitlines() if "Unsupported global" in ln] or [
                        "not plain data"
                    ]
                    raise CheckpointError(
                        f"non-tensor entry {read_item.dest_index.fqn!r} is not plain data; "
                        f"torch.load(weights_only=True) refused it ({why[0].strip()[:160]})"
                    ) from None
                if self.flatten_state_dict:
                    from torch.distributed.checkpoint._traverse import set_element

                    set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
                else:
                    self.state_dict[read_item.dest_index.fqn] = obj

        _CLASSES["reader"], _CLASSES["planner"] = SafeFileSystemReader, SafeLoadPlanner
    return _CLASSES


def safe_storage_reader(path: str | os.PathLike):
    """A ``torch.distributed.checkpoint`` storage reader for ``path`` that never unpickles unchecked data."""
    return _classes()["reader"](str(path))


def safe_load_planner(**kwargs: Any):
    """A ``DefaultLoadPlanner`` (same ``kwargs``) whose non-tensor entries load with ``weights_only=True``."""
    return _classes()["planner"](**kwargs)


def load_dcp(state_dict: dict, path: str | os.PathLike, **kwargs: Any) -> None:
    """``torch.distributed.checkpoint.load(state_dict, ...)`` through torchsmith's checked reader.

    ``kwargs`` go to ``dcp.load`` (``process_group``, ``no_dist``...); ``planner`` defaults to
    :func:`safe_load_planner`. Fills ``state_dict`` in place, like torch.
    """
    import torch.distributed.checkpoint as dcp

    read_dcp_metadata(path)  # a clean CheckpointError here, before torch wraps it in its own
    kwargs.setdefault("planner", safe_load_planner())
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with warnings.catch_warnings():
            if kwargs.get("no_dist"):  # "assuming the intent is to load in a single process": it is
                warnings.simplefilter("ignore", UserWarning)
            dcp.load(state_dict, storage_reader=safe_storage_reader(path), **kwargs)
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
        if isinstance(e, CheckpointError):
            raise
        # torch wraps each rank's failure (our CheckpointError among them) in a CheckpointException.
        pairs = getattr(e, "failures", {}).values()
        inner = [p[0] for p in pairs if isinstance(p, tuple) and p and isinstance(p[0], CheckpointError)]
        msg = str(inner[0]) if inner else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise CheckpointError(f"{path}: cannot load this torch.distributed.checkpoint: {msg}"[:500]) from None


def load_dcp_tensors(raw: RawCheckpoint, *, trust_pickle: bool = False) -> dict[str, Any]:
    """Read every tensor of a DCP directory on one process (no process group needed)."""
    import torch
    import torch.distributed.checkpoint as dcp

    foreign = raw.metadata.get("torchsmith.dcp_foreign")
    if foreign and not trust_pickle:
        raise CheckpointError(
            f"{raw.path}: its .metadata names {foreign[:200]}, outside torch.distributed.checkpoint's own "
            "metadata classes; refusing to let torch unpickle it; pass trust_pickle=True only if you "
            "trust where the folder came from"
        )
    state = {k: torch.empty(r.shape, dtype=getattr(torch, r.dtype)) for k, r in raw.obj.items()}
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
            warnings.simplefilter("ignore", UserWarning)
            if foreign:  # trust_pickle=True: the user asked torch to read it as it is
                dcp.load(state, checkpoint_id=str(raw.path), no_dist=True)
            else:
                load_dcp(state, raw.path, no_dist=True)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"{raw.path}: cannot read this torch.distributed.checkpoint: {e}"[:500]
        ) from None
    except BaseException as e:  # torch's CheckpointException (trust_pickle path)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise CheckpointError(
            f"{raw.path}: cannot read this torch.distributed.checkpoint: {e}"[:500]
        ) from None
    return state


register_reader("dcp", read_dcp)
