"""Explain a checkpoint without loading it: format, container, tensors, parameters, prefixes, metadata.

Works from headers and the restricted pickle reader only, so it never imports torch (``torchsmith
inspect`` answers in a fraction of a second even for large files) and never runs a pickle.

>>> info = inspect_checkpoint("resnet152.safetensors")          # doctest: +SKIP
>>> info["format"], info["tensors"], info["parameters"]         # doctest: +SKIP
('safetensors', 932, 60192808)
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from torchsmith.checkpoint.formats import SeveralModelFiles, open_raw, sniff
from torchsmith.checkpoint.keys import wrapper_prefix
from torchsmith.checkpoint.pickle_reader import DangerousPickle
from torchsmith.checkpoint.read import NoTensors, safety_verdict, select_tensors
from torchsmith.errors import CheckpointError

__all__ = ["BUFFER_NAMES", "inspect_checkpoint"]

# Buffers that torch modules save in state dicts; they are not parameters.
BUFFER_NAMES = ("running_mean", "running_var", "num_batches_tracked")


def inspect_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, Any]:
    """A JSON-able description of the checkpoint at ``path``.

    Keys: ``path``, ``format``, ``files``, ``container_key``, ``other_keys``, ``tensors`` (count),
    ``parameters`` (elements of all tensors except BatchNorm statistics), ``elements``, ``bytes``,
    ``dtypes`` (dtype -> count), ``prefixes`` (wrapper prefix -> count, e.g. ``{"module.": 122}``),
    ``keys`` (names), ``entries`` (name, dtype, shape per tensor), ``metadata``, ``notes``,
    ``classes`` (classes a pickle named, none of them imported) and ``safety``: ``{verdict, calls}``
    with every global the pickles name classified ``known-safe`` (on the reader's allowlist),
    ``unknown`` (not run by torchsmith, but ``torch.load`` would run it) or ``dangerous``.
    """
    try:
        raw = open_raw(path)
    except DangerousPickle as e:
        if trust_pickle:
            from torchsmith.checkpoint._raw import RawCheckpoint
            from torchsmith.checkpoint.read import read_checkpoint

            ckpt = read_checkpoint(path, trust_pickle=True)
            raw = RawCheckpoint(Path(path), sniff(path), None, globals_named=set(e.globals_named))
            return {**_from_tensors(raw, ckpt), "safety": safety_verdict(e.globals_named)}
        # Refused, and still explained: the verdict comes from the same table the reader obeyed.
        e.safety = safety_verdict(e.globals_named)  # type: ignore[attr-defined]
        e.details = {"path": str(path), "format": _format_or_none(path), "safety": e.safety}  # type: ignore[attr-defined]
        raise
    except SeveralModelFiles as e:
        return _folder(Path(path), e.files, trust_pickle)
    try:
        refs, container, others, notes = select_tensors(raw)
    except NoTensors as e:
        return _tensorless(raw, e)
    except CheckpointError as e:
        if isinstance(e, DangerousPickle) or not trust_pickle:
            # A refused file is still explained: the error names the dangerous calls, and its
            # details carry the full verdict (printed by the CLI, and under "details" by --json).
            e.safety = safety_verdict(raw)  # type: ignore[attr-defined]
            e.details = {"path": str(raw.path), "format": raw.format, "safety": e.safety}  # type: ignore[attr-defined]
            raise
        from torchsmith.checkpoint.read import read_checkpoint

        ckpt = read_checkpoint(path, trust_pickle=True)
        return {**_from_tensors(raw, ckpt), "safety": safety_verdict(raw)}
    except Exception:
        if not trust_pickle:
            raise
        from torchsmith.checkpoint.read import read_checkpoint

        ckpt = read_checkpoint(path, trust_pickle=True)
        return _from_tensors(raw, ckpt)
    storages: dict[int, int] = {}
    for r in refs.values():
        key = id(r.storage) if r.storage is not None else id(r)
        storages[key] = max(storages.get(key, 0), r.storage.nbytes if r.storage is not None else r.nbytes)
    metadata = dict(raw.metadata)
    for key, algorithm in (("torchsmith.sha256", "SHA-256"), ("torchsmith.checksums", None)):
        if key in metadata:  # the table itself is long and says nothing to a reader: counted
            try:
                n = len(json.loads(metadata[key]))
            except (ValueError, TypeError, RecursionError):
                n = 0
            name = algorithm or str(metadata.get("torchsmith.checksum_algorithm", "?"))[:40]
            metadata[key] = f"<{name} of {n} tensors>"
    prefixes = Counter(p for p in (wrapper_prefix(k) for k in refs) if p)
    return {
        "path": str(raw.path),
        "format": raw.format,
        "files": [str(f) for f in raw.files] or [str(raw.path)],
        "container_key": container,
        "other_keys": others,
        "tensors": len(refs),
        "parameters": sum(r.numel for k, r in refs.items() if not k.endswith(BUFFER_NAMES)),
        "elements": sum(r.numel for r in refs.values()),
        "bytes": sum(storages.values()),
        "dtypes": dict(Counter(r.dtype for r in refs.values())),
        "prefixes": dict(prefixes),
        "keys": list(refs),
        "entries": [{"name": k, "dtype": r.dtype, "shape": list(r.shape)} for k, r in refs.items()],
        "metadata": metadata,
        "notes": raw.notes + notes,
        "classes": sorted(raw.stand_ins),
        "safety": safety_verdict(raw),
    }


def _format_or_none(path: Any) -> str | None:
    try:
        return sniff(path)
    except CheckpointError:
        return None


def _empty(raw: Any) -> dict[str, Any]:
    return {
        "path": str(raw.path), "format": raw.format, "files": [str(raw.path)], "container_key": None,
        "other_keys": {}, "tensors": 0, "parameters": 0, "elements": 0, "bytes": 0, "dtypes": {},
        "prefixes": {}, "keys": [], "entries": [], "metadata": dict(raw.metadata), "notes": list(raw.notes),
        "classes": sorted(raw.stand_ins), "safety": safety_verdict(raw),
    }  # fmt: skip


def _tensorless(raw: Any, e: NoTensors) -> dict[str, Any]:
    """A checkpoint without tensors (a scheduler state, a training state): described, not refused."""
    info = _empty(raw)
    info["other_keys"] = dict(e.keys)
    info["notes"].append(f"no tensors: a checkpoint of {len(e.keys)} entries ({', '.join(list(e.keys)[:6])})")
    return info


def _folder(path: Path, files: list[Path], trust_pickle: bool) -> dict[str, Any]:
    """A folder with several model files (accelerate save_state): every file described, all listed."""
    parts = []
    for f in files:
        try:
            parts.append(inspect_checkpoint(f, trust_pickle=trust_pickle))
        except CheckpointError as e:
            parts.append({"path": str(f), "error": str(e)})
    ok = [p for p in parts if "error" not in p]
    entries = [{**e, "name": f"{Path(p['path']).name}:{e['name']}"} for p in ok for e in p["entries"]]
    dtypes: Counter = Counter()
    for p in ok:
        dtypes.update(p["dtypes"])
    others = sorted({q.name for q in path.iterdir() if q.is_file()} - {f.name for f in files})
    worst = [p["safety"]["verdict"] for p in ok]
    verdict = "dangerous" if "dangerous" in worst else "unknown" if "unknown" in worst else "known-safe"
    notes = [f"{len(files)} model files, each read on its own; pass one file to read its weights"]
    notes += [f"{Path(p['path']).name}: {p['error']}" for p in parts if "error" in p]
    if others:
        notes.append(f"also in the folder: {', '.join(others[:10])}")
    return {
        "path": str(path), "format": "folder", "files": [str(f) for f in files], "container_key": None,
        "other_keys": {}, "tensors": sum(p["tensors"] for p in ok),
        "parameters": sum(p["parameters"] for p in ok), "elements": sum(p["elements"] for p in ok),
        "bytes": sum(p["bytes"] for p in ok), "dtypes": dict(dtypes), "prefixes": {},
        "keys": [e["name"] for e in entries], "entries": entries, "metadata": {}, "notes": notes,
        "classes": sorted({c for p in ok for c in p["classes"]}),
        "safety": {"verdict": verdict, "calls": [c for p in ok for c in p["safety"]["calls"]]},
        "parts": parts,
    }  # fmt: skip


def _from_tensors(raw: Any, ckpt: Any) -> dict[str, Any]:
    sd = ckpt.state_dict
    dt = {k: str(v.dtype).replace("torch.", "") for k, v in sd.items()}
    return {
        "path": str(raw.path),
        "format": raw.format,
        "files": [str(raw.path)],
        "container_key": ckpt.container_key,
        "other_keys": ckpt.other_keys,
        "tensors": len(sd),
        "parameters": sum(v.numel() for k, v in sd.items() if not k.endswith(BUFFER_NAMES)),
        "elements": sum(v.numel() for v in sd.values()),
        "bytes": sum(v.numel() * v.element_size() for v in sd.values()),
        "dtypes": dict(Counter(dt.values())),
        "prefixes": dict(Counter(p for p in (wrapper_prefix(k) for k in sd) if p)),
        "keys": list(sd),
        "entries": [{"name": k, "dtype": dt[k], "shape": list(v.shape)} for k, v in sd.items()],
        "metadata": dict(raw.metadata),
        "notes": ckpt.notes,
        "classes": sorted(raw.stand_ins),
    }
