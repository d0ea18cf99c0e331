"""Save a model or state dict: clean keys, checksums, provenance, atomic, optionally sharded.

``torchsmith.save`` picks the format from the extension (``.safetensors`` recommended; ``.pt``,
``.pth``, ``.bin``, ``.ckpt``, ``.pkl``, ``.tar`` write a ``torch.save`` zip), strips wrappers
(``DataParallel``/DDP/``torch.compile``) so keys are plain, refuses the seeds' traps 1 and 2 with an
explanation, keeps tied tensors tied, and records metadata: torchsmith and torch versions, a checksum
per tensor (xxh3-128, with the algorithm's name; hashed while the bytes are written and verified by
every later load, see ``_hashing``) and how the model was built, so ``load_model`` can rebuild it
without pickle. The file appears atomically: a crash leaves the previous file intact.

>>> import torchsmith
>>> model = torchsmith.create_model("torchvision:resnet18")              # doctest: +SKIP
>>> torchsmith.save(model, "resnet18.safetensors")                      # doctest: +SKIP
PosixPath('resnet18.safetensors')
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torchsmith._io import atomic_path, atomic_write, pwrite_all, start_writeback
from torchsmith.checkpoint._gc import gc_paused
from torchsmith.checkpoint.keys import strip_wrappers
from torchsmith.errors import CheckpointError, InputError

__all__ = ["TORCH_EXTENSIONS", "save", "tensor_checksum", "tensor_sha256"]

TORCH_EXTENSIONS = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".tar")


def tensor_sha256(t: Any) -> str:
    """SHA-256 of a tensor's bytes in C order (what ``save`` recorded before xxh3-128)."""
    from torchsmith.checkpoint.safetensors_io import _tensor_bytes

    return hashlib.sha256(_tensor_bytes(t)).hexdigest()


def tensor_checksum(t: Any, algorithm: str | None = None) -> str:
    """The checksum ``save`` records for tensor ``t``: its C-order bytes hashed with ``algorithm``.

    ``algorithm`` is ``"xxh3-128"`` (the default where ``xxhash`` is installed) or ``"sha256"``.
    Why: lets a test or a tool compare a file's recorded table with tensors it holds.

    >>> import torch
    >>> len(tensor_checksum(torch.zeros(3), "xxh3-128"))
    32
    """
    from torchsmith.checkpoint._hashing import hexdigest, writing_algorithm
    from torchsmith.checkpoint.safetensors_io import _tensor_bytes

    return hexdigest(_tensor_bytes(t), algorithm or writing_algorithm())


def _versions() -> dict[str, str]:
    import torch

    import torchsmith

    return {"torchsmith.version": torchsmith.__version__, "torch.version": torch.__version__,
            "torchsmith.format_version": "1"}  # fmt: skip


def _json_safe(value: Any, where: str, notes: list[str]) -> Any:
    """``value`` with entries that JSON cannot hold dropped (and noted), so metadata never crashes a save."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            try:
                json.dumps(v)
                out[str(k)] = v
            except (TypeError, ValueError):
                if isinstance(v, dict | list | tuple):
                    out[str(k)] = _json_safe(v, f"{where}.{k}", notes)
                else:
                    notes.append(f"{where}.{k} ({type(v).__name__}) is not JSON-able and was not recorded")
        return out
    if isinstance(value, list | tuple):
        return [_json_safe(v, f"{where}[{i}]", notes) for i, v in enumerate(value)]
    return value


def _provenance_metadata(model: Any) -> tuple[dict[str, str], list[str]]:
    from torchsmith._modules import unwrap_model
    from torchsmith._provenance import get_provenance

    record = get_provenance(unwrap_model(model))
    if not record.get("arch") and not record.get("spec"):
        record = get_provenance(model) if record == {"surgery": []} else record
    meta: dict[str, str] = {}
    notes: list[str] = []
    for key in ("arch", "spec", "weights"):
        if record.get(key):
            meta[f"torchsmith.{key}"] = json.dumps(_json_safe(record[key], key, notes), sort_keys=True)
    if record.get("surgery"):
        meta["torchsmith.surgery"] = json.dumps(_json_safe(record["surgery"], "surgery", notes))
    if notes:
        meta["torchsmith.provenance_notes"] = "; ".join(notes)
        warnings.warn("torchsmith.save: " + "; ".join(notes), stacklevel=3)
    return meta, notes


def _state_dict_of(obj: Any, path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The state dict to write and the provenance metadata, refusing traps 1 and 2."""
    import torch
    import torch.nn as nn

    if inspect.ismethod(obj) and isinstance(getattr(obj, "__self__", None), nn.Module):
        owner = type(obj.__self__).__name__
        raise InputError(
            f"save({path}): got the bound method {owner}.{obj.__name__}, not weights: "
            f"'torch.save(model.{obj.__name__}, path)' without the call (seed trap 2) pickles the whole "
            f"model and its code references. Pass the model itself, or model.{obj.__name__}()"
        )
    if isinstance(obj, nn.Module):
        from torchsmith._modules import check_state_dict_intact, unwrap_model

        check_state_dict_intact(obj)
        meta, _ = _provenance_metadata(obj)
        return unwrap_model(obj).state_dict(), meta
    if isinstance(obj, dict):
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise InputError(
                f"save({path}): entry {bad[0]!r} is a {type(obj[bad[0]]).__name__}, not a tensor; "
                "save a model or a state dict (name -> tensor); put numbers and strings in metadata="
            )
        keys = [str(k) for k in obj]
        plain = [strip_wrappers(k) for k in keys]
        if plain != keys and len(set(plain)) == len(plain):
            # A state dict taken from a wrapped model: store the model's own names.
            return _keep_versions(dict(zip(plain, obj.values())), obj, dict(zip(keys, plain))), {}
        return _keep_versions({str(k): v for k, v in obj.items()}, obj, None), {}
    raise InputError(
        f"save({path}): expected an nn.Module or a state dict (dict of tensors), got {type(obj).__name__}"
    )


# Module versions (``state_dict()._metadata``) in a file's metadata, as compact JSON: safetensors has
# no other place for them, and load_state_dict hands each module its entry (torchvision's MNASNet
# refuses to load without its root version; BatchNorm reads its layout version).
MODULE_VERSIONS = "torchsmith.module_versions"


def _keep_versions(out: dict[str, Any], source: Any, renamed: dict[str, str] | None) -> dict[str, Any]:
    """``out`` with ``source``'s ``_metadata`` attached (module prefixes renamed like the keys)."""
    versions = getattr(source, "_metadata", None)
    if not isinstance(versions, dict):
        return out
    from torchsmith.checkpoint.keys import rename_module_metadata

    result = OrderedDict(out)
    kept = rename_module_metadata(versions, renamed) if renamed else OrderedDict(versions)
    result._metadata = kept  # type: ignore[attr-defined]
    return result


def versions_metadata(state_dict: Any) -> dict[str, str]:
    """``{MODULE_VERSIONS: json}`` for a state dict that carries ``_metadata``, else ``{}``."""
    versions = getattr(state_dict, "_metadata", None)
    if not isinstance(versions, dict) or not versions:
        return {}
    table = {str(k): {str(a): b for a, b in v.items() if isinstance(b, int | float | str | bool | type(None))}
             for k, v in versions.items() if isinstance(v, dict)}  # fmt: skip
    return {MODULE_VERSIONS: json.dumps(table, separators=(",", ":"))}


def _user_metadata(metadata: dict | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InputError(f"metadata: expected a dict of str -> str, got {type(metadata).__name__}")
    out = {}
    for k, v in metadata.items():
        if str(k).startswith("torchsmith."):
            raise InputError(f"metadata key {k!r}: the 'torchsmith.' namespace is reserved")
        out[str(k)] = v if isinstance(v, str) else json.dumps(v, default=str)
    return out


def _dedupe(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Split tied tensors: store each shared tensor once and map its other names to it (aliases)."""
    seen: dict[tuple, str] = {}
    tensors: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    storages: dict[int, str] = {}
    for k, t in state_dict.items():
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.numel() == 0:
            tensors[k] = t
            continue
        sig = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if sig in seen:
            aliases[k] = seen[sig]
            continue
        seen[sig] = k
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages:
            t = t.clone()  # a different view of a shared storage: store its own bytes
        storages.setdefault(ptr, k)
        tensors[k] = t
    return tensors, aliases


def _write_one(
    path: Path,
    tensors: dict[str, Any],
    aliases: dict[str, str],
    meta: dict[str, str],
    *,
    dedupe_tied: bool = False,
) -> None:
    if path.suffix == ".safetensors":
        from torchsmith.checkpoint.safetensors_io import write_safetensors

        if aliases and not dedupe_tied:
            # Tied tensors are written under every name (their bytes repeated): plain
            # safetensors.torch.load_file then returns every key. dedupe_tied stores them once
            # plus a torchsmith.aliases entry that only torchsmith resolves.
            tensors = {**tensors, **{a: tensors[t] for a, t in aliases.items()}}
            meta = {**meta, "torchsmith.tied": json.dumps(aliases, sort_keys=True)}
            aliases = {}
        with atomic_path(path) as tmp:
            write_safetensors(tmp, tensors, meta, aliases=aliases)
        return
    import torch

    from torchsmith.checkpoint.torch_files import METADATA_RECORD

    full = OrderedDict(tensors)
    full.update({a: full[t] for a, t in aliases.items()})
    meta = dict(meta)
    versions = meta.pop(MODULE_VERSIONS, None)
    if versions is not None:  # a torch file holds them where torch does: the state dict's _metadata
        full._metadata = OrderedDict(json.loads(versions))  # type: ignore[attr-defined]
    from torchsmith.checkpoint._hashing import checksum_metadata, writing_algorithm

    algorithm = writing_algorithm()
    with atomic_path(path) as tmp:
        plan = _HashPlan(tensors, algorithm, str(path))
        with open(tmp, "wb") as f:
            torch.save(full, _WritebackFile(f.fileno(), plan))
        table = plan.finish()
        table.update({a: table[t] for a, t in aliases.items()})
        _append_zip_record(tmp, METADATA_RECORD, json.dumps({**meta, **checksum_metadata(algorithm, table)}))


class _HashPlan:
    """Which storage bytes ``torch.save`` writes belong to which tensor, and their running hashes.

    ``torch.save`` writes each CPU storage in one ``write`` straight from the storage's memory, so a
    write is recognised by its address and length and hashed piece by piece while it is written
    (one pass over memory). A tensor whose bytes never pass that way (not contiguous) is hashed
    by :meth:`finish`.
    """

    def __init__(self, tensors: dict[str, Any], algorithm: str, where: str) -> None:
        from torchsmith.checkpoint._hashing import hasher

        self.tensors, self.algorithm, self.where = tensors, algorithm, where
        self.by_storage: dict[tuple[int, int], list[tuple[str, int, int, Any]]] = {}
        self.digests: dict[str, str] = {}
        for name, t in tensors.items():
            if t.numel() == 0 or not t.is_contiguous():
                continue
            storage = t.untyped_storage()
            begin = t.storage_offset() * t.element_size()
            key = (storage.data_ptr(), storage.nbytes())
            entry = (name, begin, begin + t.numel() * t.element_size(), hasher(algorithm, where))
            self.by_storage.setdefault(key, []).append(entry)
        self.sizes = {n for _, n in self.by_storage}

    def entries(self, view: memoryview) -> list[tuple[str, int, int, Any]]:
        """The tensors whose bytes ``view`` holds (a storage being written), else ``[]``."""
        if len(view) not in self.sizes:
            return []
        import numpy as np

        address = int(np.frombuffer(view, dtype=np.uint8).ctypes.data)
        return self.by_storage.pop((address, len(view)), [])

    def finish(self) -> dict[str, str]:
        """name -> digest of every tensor (those not seen while writing hashed now)."""
        left = [n for n in self.tensors if n not in self.digests]
        self.digests.update({n: tensor_checksum(self.tensors[n], self.algorithm) for n in left})
        return self.digests


class _WritebackFile:
    """The file object ``torch.save`` writes to: plain writes, plus disk writeback started every few MB.

    Without it the whole file is still dirty in the page cache when ``atomic_path`` fsyncs it, and
    that fsync waits for all of it; with it the disk works while torch is still writing. (Also gives
    the zip's records the standard ``archive/`` prefix instead of the temporary file's name.) A
    storage's bytes are hashed in 1 MiB pieces, each just before it is written (``_HashPlan``).
    """

    def __init__(self, fd: int, plan: _HashPlan | None = None) -> None:
        self.fd, self.pos, self.started, self.plan = fd, 0, 0, plan

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        entries = self.plan.entries(view) if self.plan is not None and len(view) else []
        if not entries:
            pwrite_all(self.fd, [view], self.pos)
        for i in range(0, len(view), _PIECE) if entries else ():
            end = min(len(view), i + _PIECE)
            for _, begin, stop, h in entries:
                if begin < end and stop > i:
                    h.update(view[max(begin, i) : min(stop, end)])
            pwrite_all(self.fd, [view[i:end]], self.pos + i)
        for name, *_, h in entries:
            self.plan.digests[name] = h.hexdigest()
        self.pos += len(view)
        if self.pos - self.started >= 8 << 20:
            start_writeback(self.fd, self.started, self.pos - self.started)
            self.started = self.pos
        return len(view)

    def flush(self) -> None:
        pass


_PIECE = 1 << 20  # bytes hashed and then written while still in the CPU cache


def _append_zip_record(path: Path, name: str, text: str) -> None:
    import zipfile

    with zipfile.ZipFile(path, "a") as zf:
        prefix = next((n[: -len("data.pkl")] for n in zf.namelist() if n.endswith("data.pkl")), "archive/")
        zf.writestr(zipfile.ZipInfo(prefix + name), text.encode(), compress_type=zipfile.ZIP_STORED)


def save(
    model_or_state_dict: Any,
    path: str | os.PathLike,
    *,
    metadata: dict | None = None,
    max_shard_size: int | str | None = None,
) -> Path:
    """Save weights to ``path`` atomically, with checksums and provenance; return the written path.

    ``path`` ending in ``.safetensors`` writes safetensors (recommended: no pickle, instant header
    reads, memory-mapped loads); ``.pt .pth .bin .ckpt .pkl .tar`` write a ``torch.save`` zip that
    plain ``torch.load`` reads. ``metadata`` adds your own string entries. ``max_shard_size``
    (``"2GB"`` or bytes) splits the weights into shards plus an ``*.index.json`` (written last),
    whose path is returned; weights that fit in one shard are written as one file at ``path``, as
    transformers does. Whichever of the two layouts an earlier save left under this name is
    removed, so a later read of the file or of its folder returns what this call wrote.

    Raises :class:`~torchsmith.errors.InputError` for a bound method (``model.state_dict`` without
    the call), a model whose ``state_dict`` was overwritten by a dict, or a non-tensor entry.
    """
    path = Path(path)
    if path.suffix != ".safetensors" and path.suffix not in TORCH_EXTENSIONS:
        raise InputError(
            f"save({path}): unknown extension {path.suffix!r}; use .safetensors (recommended) or one of "
            f"{', '.join(TORCH_EXTENSIONS)}"
        )
    if path.is_dir():
        raise InputError(f"save({path}): is a directory; give a file name such as model.safetensors")
    # The temporaries (state dict, header, futures) die in _save, before collections resume.
    with gc_paused():
        return _save(model_or_state_dict, path, metadata, max_shard_size)


def _save(model_or_state_dict: Any, path: Path, metadata: dict | None, max_shard_size: Any) -> Path:
    state_dict, prov = _state_dict_of(model_or_state_dict, path)
    if not state_dict:
        raise InputError(f"save({path}): nothing to save: the state dict is empty")
    meta = {**_user_metadata(metadata), **_versions(), **prov, **versions_metadata(state_dict)}
    tensors, aliases = _dedupe(state_dict)
    if max_shard_size is None:
        _write_single(path, tensors, aliases, meta)
        return path
    return _write_sharded(path, tensors, aliases, meta, max_shard_size)


def _stale_shards(path: Path, keep: Sequence[Path] = ()) -> list[Path]:
    """Shards of an earlier sharded save under ``path``'s name (``NAME-00001-of-00003.EXT``)."""
    return [p for p in path.parent.glob(f"{path.stem}-*-of-*{path.suffix}") if p not in keep]


@contextlib.contextmanager
def _moved_aside(paths: Sequence[Path]) -> Iterator[None]:
    """Move ``paths`` out of the way while the block writes their replacement; delete them after.

    Why: a folder read prefers ``NAME.index.json`` to ``NAME.safetensors``, and a direct read of
    ``NAME.safetensors`` ignores an index beside it, so whichever of the two an earlier save left
    would be returned by a later read instead of what this save wrote. Moving the old one aside
    (an atomic rename to a name no reader picks, ``...replaced~``) before writing means a read never
    finds it under the asked name, a failed write puts it back, and a kill leaves it recoverable.
    """
    moved: list[tuple[Path, Path]] = []
    try:
        for p in paths:
            if p.is_file() or p.is_symlink():
                aside = p.with_name(f"{p.name}.{os.getpid()}.replaced~")
                os.replace(p, aside)
                moved.append((p, aside))
        yield
    except BaseException:
        for p, aside in moved:
            if not p.exists():
                with contextlib.suppress(OSError):
                    os.replace(aside, p)
        raise
    for _, aside in moved:
        aside.unlink(missing_ok=True)


def _write_single(path: Path, tensors: dict, aliases: dict, meta: dict, *, dedupe_tied: bool = False) -> Path:
    """One file at ``path``; an index (and its shards) of an earlier sharded save there removed."""
    from torchsmith.checkpoint.sharded import shard_names

    _, index_path = shard_names(path, 1)
    with _moved_aside([index_path]):
        _write_one(path, tensors, aliases, meta, dedupe_tied=dedupe_tied)
    if not index_path.exists():
        for old in _stale_shards(path):
            old.unlink(missing_ok=True)
    return path


def _write_sharded(
    path: Path, tensors: dict, aliases: dict, meta: dict, max_shard_size: Any, *, dedupe_tied: bool = False
) -> Path:
    """Shards plus an index (written last), or one file at ``path`` when everything fits in one shard.

    One file when it fits, as transformers' ``save_pretrained`` does: a ``-00001-of-00001`` shard
    and an index for a small model would sit beside an older ``NAME`` file that reads still return.
    Returns the index's path, or ``path`` for one file.
    """
    from torchsmith.checkpoint.sharded import parse_size

    limit = parse_size(max_shard_size)
    if sum(t.numel() * t.element_size() for t in tensors.values()) <= limit:
        return _write_single(path, tensors, aliases, meta, dedupe_tied=dedupe_tied)
    with _moved_aside([path]):  # an older single file under the asked name: never read instead
        return _write_shards(path, tensors, aliases, meta, limit, dedupe_tied=dedupe_tied)


def _write_shards(
    path: Path, tensors: dict, aliases: dict, meta: dict, limit: int, *, dedupe_tied: bool = False
) -> Path:
    from torchsmith.checkpoint.sharded import shard_names

    groups: list[list[str]] = [[]]
    size = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if groups[-1] and size + n > limit:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += n
    shards, index_path = shard_names(path, len(groups))
    weight_map: dict[str, str] = {}
    for shard, names in zip(shards, groups):
        part = {n: tensors[n] for n in names}
        part_aliases = {a: t for a, t in aliases.items() if t in part}
        _write_one(
            shard, part, part_aliases, {**meta, "torchsmith.shard": shard.name}, dedupe_tied=dedupe_tied
        )
        weight_map.update({n: shard.name for n in [*names, *part_aliases]})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total, **meta}, "weight_map": dict(sorted(weight_map.items()))}
    with atomic_write(index_path, "w") as f:
        json.dump(index, f, indent=2)
    # Shards of an earlier save with a different count would confuse a reader browsing the folder.
    for old in _stale_shards(path, keep=shards):
        old.unlink(missing_ok=True)
    if not all(s.exists() for s in shards):  # pragma: no cover - defensive
        raise CheckpointError(f"{index_path}: a shard vanished while saving")
    return index_path
