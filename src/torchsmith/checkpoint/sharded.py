"""Sharded checkpoints: an ``*.index.json`` whose ``weight_map`` names the shard holding each tensor.

The Hugging Face layout: ``model.safetensors.index.json`` next to ``model-00001-of-00003.safetensors``
and so on (or ``pytorch_model.bin.index.json`` with torch shards). ``torchsmith.save(...,
max_shard_size="2GB")`` writes it; the index is written last, so a crash never leaves an index that
names shards which are not there yet.
"""

from __future__ import annotations

import json
from pathlib import Path

from torchsmith.checkpoint._hashing import (
    ALGORITHM_KEY,
    LEGACY_KEY,
    TABLE_KEY,
    checksum_metadata,
    recorded_checksums,
)
from torchsmith.checkpoint._raw import RawCheckpoint, register_reader
from torchsmith.errors import CheckpointError, close_matches

__all__ = ["parse_size", "read_sharded", "shard_names"]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_size(size: int | str) -> int:
    """``"2GB"`` -> 2_000_000_000, ``"500MiB"`` -> 524_288_000, ``1000`` -> 1000.

    >>> parse_size("1.5KB")
    1500
    """
    from torchsmith.errors import InputError

    if isinstance(size, int) and size > 0:
        return size
    text = str(size).strip().upper().replace(" ", "")
    num = text.rstrip("KMGTIB")
    unit = text[len(num) :]
    try:
        value = float(num)
    except ValueError:
        value = -1
    if unit not in _UNITS or value <= 0:
        raise InputError(f"max_shard_size: expected a positive size like 2GB, 500MB or 1000000; got {size!r}")
    return int(value * _UNITS[unit])


def shard_names(path: Path, count: int) -> tuple[list[Path], Path]:
    """Shard and index paths for ``path``: ``m.safetensors`` -> ``m-00001-of-00002.safetensors``."""
    stem, suffix = path.stem, path.suffix
    shards = [path.with_name(f"{stem}-{i:05d}-of-{count:05d}{suffix}") for i in range(1, count + 1)]
    return shards, path.with_name(path.name + ".index.json")


def read_sharded(path: Path) -> RawCheckpoint:
    """Read every shard an index names into one ``RawCheckpoint`` (tensors still unread)."""
    from torchsmith.checkpoint.formats import open_raw, sniff
    from torchsmith.checkpoint.read import select_tensors

    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable sharded index: {e}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path}: sharded index without a 'weight_map' naming tensors and shard files")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise CheckpointError(f"{path}: sharded index 'weight_map' must map tensor names to shard file names")
    files = sorted(set(weight_map.values()))
    present = [p.name for p in path.parent.iterdir()]
    root = path.parent.resolve()
    for name in files:
        # Shards live in the index's folder: no absolute paths, no '..', no symlink leading out.
        parts = Path(name).parts
        if not name or Path(name).is_absolute() or ".." in parts or "\\" in name or ":" in name:
            raise CheckpointError(
                f"{path}: the index names shard {name[:120]!r}, which is not a file inside the index's folder"
            )
        shard = path.parent / name
        resolved = shard.resolve()
        if root not in resolved.parents:
            raise CheckpointError(
                f"{path}: shard {name[:120]!r} leads outside the index's folder (a symlink?); "
                "refusing to read it"
            )
        if not shard.is_file():
            raise CheckpointError(
                f"{path}: the index names shard {name!r}, which is missing{close_matches(str(name), present)}"
            )
    tensors: dict = {}
    raw = RawCheckpoint(path, "sharded", tensors)
    meta = index.get("metadata")
    if isinstance(meta, dict):
        raw.metadata.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    hashes: dict[str, dict[str, str]] = {}  # algorithm -> name -> digest, over every shard
    refused: dict[str, str] = {}  # a shard's entries that name no known algorithm: kept, so checks refuse
    for name in files:
        shard_path = path.parent / name
        try:
            if sniff(shard_path) in ("sharded", "dcp"):
                raise CheckpointError(f"{path}: shard {name!r} is itself an index or directory")
            shard = open_raw(shard_path)
        except CheckpointError as e:
            # Say what is wrong without echoing the bytes of a file the user did not name.
            why = str(e).removeprefix(str(shard_path) + ": ")
            why = why.split(": starts with bytes")[0] if "starts with bytes" in why else why
            raise CheckpointError(f"{path}: shard {name!r}: {why[:200]}") from None

        found, _, _, _ = select_tensors(shard)
        expected = [k for k, v in weight_map.items() if v == name]
        lost = [k for k in expected if k not in found]
        if lost:
            raise CheckpointError(
                f"{path}: shard {name!r} lacks {len(lost)} tensors the index puts there, e.g. {lost[0]!r}"
            )
        tensors.update({k: found[k] for k in expected})
        _merge_checksums(shard, name, hashes, refused, raw.notes)
        for k, v in shard.metadata.items():
            raw.metadata.setdefault(k, v)
        raw.notes.extend(n for n in shard.notes if n not in raw.notes)
        raw.files.append(shard_path)
        raw.stand_ins |= shard.stand_ins
        raw.globals_named |= shard.globals_named
        raw.calls.extend(shard.calls)
    for algorithm, table in hashes.items():
        raw.metadata.update(checksum_metadata(algorithm, table))
    raw.metadata.update(refused)
    raw.metadata["torchsmith.shard_format"] = sniff(raw.files[0])
    from torchsmith.checkpoint.safetensors_io import attach_module_versions

    attach_module_versions(raw)  # the index's copy of the module versions, whatever the shards' format
    return raw


def _merge_checksums(
    shard: RawCheckpoint,
    name: str,
    hashes: dict[str, dict[str, str]],
    refused: dict[str, str],
    notes: list[str],
) -> None:
    """Move ``shard``'s checksum tables into ``hashes`` (per algorithm), out of its metadata."""
    entries = {
        k: shard.metadata.pop(k) for k in (LEGACY_KEY, ALGORITHM_KEY, TABLE_KEY) if k in shard.metadata
    }
    try:
        tables = recorded_checksums(entries, name)
    except CheckpointError:
        # An unknown or empty algorithm: the shard's entries are kept as they are, so that verify
        # and load_model refuse the checkpoint as they refuse such a single file.
        refused.setdefault(ALGORITHM_KEY, str(entries.get(ALGORITHM_KEY, "")))
        refused.setdefault(TABLE_KEY, str(entries.get(TABLE_KEY, "{}")))
        return
    for t in tables:
        if t.problem is not None:
            # Kept as an entry that is no digest, so verify and load_model call the file damaged
            # instead of passing it as one without checksums.
            hashes.setdefault(t.algorithm, {})[f"(checksum table of shard {name})"] = "unreadable"
            notes.append(f"shard {name!r} has unreadable checksums")
        else:
            hashes.setdefault(t.algorithm, {}).update(t.table)


register_reader("sharded", read_sharded)
