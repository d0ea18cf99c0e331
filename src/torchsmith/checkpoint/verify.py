"""Check a checkpoint's integrity: structure, zip CRCs and the checksum recorded per tensor.

Files written by ``torchsmith.save`` record one checksum per tensor with the algorithm's name
(xxh3-128; files written before hold SHA-256): the result's ``checks`` names the algorithm that was
checked, and ``checksum`` says it on its own.

A folder holding several model files (``accelerate``'s ``save_state``: ``model.safetensors`` and
``model_1.safetensors``, ``optimizer.bin``...; a Trainer checkpoint) is checked file by file: a
damaged second file fails the folder, not only a damaged first one.

>>> verify_checkpoint("model.safetensors")["ok"]                # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from torchsmith.checkpoint._hashing import ALGORITHMS
from torchsmith.checkpoint._raw import RawCheckpoint
from torchsmith.checkpoint._refs import FileMaps, TensorRef
from torchsmith.checkpoint.formats import open_raw, sniff
from torchsmith.checkpoint.load import check_checksums, damaged_message
from torchsmith.checkpoint.read import select_tensors
from torchsmith.errors import CheckpointError

__all__ = ["check_integrity", "folder_model_files", "verify_checkpoint"]

# Files in a folder that are checked as checkpoints of their own (``.pkl``, accelerate's random
# states, holds NumPy objects rather than tensors and is left out).
_MODEL_EXTENSIONS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Verify ``path``; return ``{"path", "format", "tensors", "checks", "checksum", "ok"}`` or raise.

    ``checks`` lists what was verified: ``structure`` (every tensor lies inside the file),
    ``crc32`` (torch zips: every record's CRC), the checksum algorithm of files saved by
    torchsmith (``xxh3-128``, or ``sha256`` for files written before: every tensor's bytes),
    ``tied`` (copies of tied tensors written under each name hold equal bytes). ``checksum`` names
    that algorithm (``None`` when the file records no checksums).
    Raises :class:`~torchsmith.errors.CheckpointError` naming the damaged file and tensors, or an
    unknown/empty recorded algorithm. A file without recorded checksums passes with a note.

    A folder with several model files (see :func:`folder_model_files`) is verified file by file;
    the result then has format ``folder`` and a ``files`` list with each file's own result.
    """
    path = Path(path)
    files = folder_model_files(path) if path.is_dir() else None
    if not files:
        return _verify_one(path)
    results = []
    for f in files:
        try:
            results.append(_verify_one(f))
        except CheckpointError as e:
            text = str(e)
            where = "" if str(f) in text else f"{f}: "
            raise CheckpointError(f"{path}: file {f.name!r} of {len(files)} fails: {where}{text}") from None
    checks = sorted({c for r in results for c in r["checks"]})
    algorithms = sorted({r["checksum"] for r in results if r.get("checksum")})
    return {
        "path": str(path),
        "format": "folder",
        "tensors": sum(r["tensors"] for r in results),
        "checks": checks,
        "checksum": "+".join(algorithms) or None,
        "ok": True,
        "files": results,
    }


def folder_model_files(folder: str | os.PathLike) -> list[Path]:
    """The checkpoint files of ``folder`` when it holds more than one, else ``[]``.

    Every ``*.index.json`` (its shards are checked through it) and every ``.safetensors .bin .pt
    .pth .ckpt`` file that no index names. A torch.distributed.checkpoint folder is one checkpoint.
    """
    folder = Path(folder)
    if (folder / ".metadata").is_file():
        return []
    indexes = sorted(p for p in folder.glob("*.index.json") if p.is_file())
    sharded: set[str] = set()
    for index in indexes:
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
            sharded |= {str(v) for v in weight_map.values()} if isinstance(weight_map, dict) else set()
        except (ValueError, OSError, UnicodeDecodeError, AttributeError):
            pass  # an unreadable index fails when it is verified itself
    singles = sorted(
        p for p in folder.iterdir() if p.suffix in _MODEL_EXTENSIONS and p.is_file() and p.name not in sharded
    )
    files = [*indexes, *singles]
    return files if len(files) > 1 else []


def _verify_one(path: Path) -> dict[str, Any]:
    raw = open_raw(path)
    refs = _tensors_or_none(raw)
    checks = check_integrity(raw, refs or {})
    algorithms = [c for c in checks if c in ALGORITHMS]
    result = {
        "path": str(raw.path),
        "format": raw.format,
        "tensors": len(refs or {}),
        "checks": checks,
        "checksum": "+".join(algorithms) or None,
        "ok": True,
    }
    if refs is None:
        result["note"] = (
            "holds no tensors (a scheduler or training state?): not weights; its structure was checked"
        )
    elif not algorithms:
        result["note"] = (
            "no per-tensor checksums recorded (not saved by torchsmith.save); re-save to add them"
        )
    return result


def _tensors_or_none(raw: RawCheckpoint) -> dict[str, TensorRef] | None:
    """The file's tensors; None for a file that holds no tensor at all (a scheduler's state)."""
    try:
        return select_tensors(raw)[0]
    except CheckpointError as e:
        # Refusals stand for hostile files and for files with tensors the reader will not describe;
        # a file without any tensor (a scheduler's state, a Trainer's pickled arguments) is not
        # weights, and verify checks its structure and CRCs only.
        if raw.format == "dcp" or type(e).__name__ == "DangerousPickle" or _holds_tensor(raw.obj):
            raise
        return None


def _holds_tensor(obj: Any, depth: int = 0) -> bool:
    """Whether a tensor appears anywhere in ``obj``'s plain containers (bounded walk)."""
    if isinstance(obj, TensorRef) or isinstance(getattr(obj, "kind", None), str):  # incl. refused tensors
        return True
    if depth > 8:
        return True  # too deep to tell: treat as holding tensors, so the refusal stands
    if isinstance(obj, dict):
        return any(_holds_tensor(v, depth + 1) for v in list(obj.values())[:10_000])
    if isinstance(obj, list | tuple):
        return any(_holds_tensor(v, depth + 1) for v in obj[:10_000])
    return False


def check_integrity(raw: RawCheckpoint, refs: dict[str, TensorRef]) -> list[str]:
    """Check ``raw``'s structure, CRCs, recorded checksums and tied copies; return the checks made.

    Raises :class:`~torchsmith.errors.CheckpointError` naming the damaged file and tensor. Used by
    ``verify`` and by ``convert`` (which refuses to copy a damaged file unless asked).
    """
    checks = ["structure"]
    for name, ref in refs.items():
        problem = ref.check_bounds()
        if problem:
            raise CheckpointError(f"{raw.path}: damaged: tensor {name!r} {problem}")
    files = raw.files or ([raw.path] if raw.path.is_file() else [])
    zips = [f for f in files if sniff(f) == "torch-zip"]
    if zips:
        from torchsmith.checkpoint.torch_files import zip_crc_errors

        for f in zips:
            try:
                bad_records = zip_crc_errors(f)
            except (OSError, ValueError, zipfile.BadZipFile) as e:
                raise CheckpointError(f"{f}: damaged zip directory: {type(e).__name__}: {e}") from None
            if bad_records:
                keys = {r.split("/")[-1] for r in bad_records}
                hit = [
                    n
                    for n, r in refs.items()
                    if r.storage is not None and r.storage.key in keys and r.storage.file == str(f)
                ]
                what = ", ".join(repr(h) for h in hit[:5]) if hit else ", ".join(bad_records[:3])
                raise CheckpointError(
                    f"{f}: damaged: record {what} is unreadable or fails its CRC-32 (bit flips or a bad copy)"
                )
        checks.append("crc32")
    if raw.format == "dcp":
        from torchsmith.checkpoint.dcp import load_dcp_tensors

        load_dcp_tensors(raw)
        checks.append("readable")
    maps = FileMaps(use_mmap=True)
    # Tied copies first: their message names the shard and the copy, more than a checksum's would.
    tied = _check_tied_copies(raw, maps)
    algorithms, bad = check_checksums(refs, raw.metadata, maps, raw.path)
    if bad:
        raise CheckpointError(damaged_message(raw.path, bad, algorithms))
    checks.extend(dict.fromkeys(algorithms))  # the algorithm(s) checked: xxh3-128, sha256
    if tied:
        checks.append("tied")
    return checks


def _check_tied_copies(raw: RawCheckpoint, maps: FileMaps) -> bool:
    """Refuse a safetensors file or shard whose tied copies (``torchsmith.tied``) hold different bytes.

    Returns whether there were tied copies to check.
    Why: torchsmith reads one copy for every tied name while plain ``safetensors`` reads each
    name's own bytes; if the copies differ, the two readers return different weights from one file.
    """
    if raw.format not in ("safetensors", "sharded"):
        return False
    from torchsmith.checkpoint.safetensors_io import read_header

    checked = False
    for f in raw.files or [raw.path]:
        if f.suffix != ".safetensors" and sniff(f) != "safetensors":
            continue
        header, data_start = read_header(f)
        meta = header.get("__metadata__")
        text = meta.get("torchsmith.tied") if isinstance(meta, dict) else None
        if text is None:
            continue
        checked = True
        _check_tied_file(f, header, data_start, text, maps)
    return checked


def _check_tied_file(f: Path, header: dict, data_start: int, text: Any, maps: FileMaps) -> None:
    try:
        tied = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        tied = None
    if not isinstance(tied, dict) or not all(isinstance(v, str) for v in tied.values()):
        raise CheckpointError(
            f"{f}: damaged: its torchsmith.tied metadata is not a JSON object of name -> name strings"
        )
    buf = maps.buffer(str(f))
    for alias, target in tied.items():
        a, t = header.get(alias), header.get(target)
        if not (isinstance(a, dict) and isinstance(t, dict)):
            continue  # the reader ties only names that exist with one dtype and shape (read_safetensors)
        if (a.get("dtype"), a.get("shape")) != (t.get("dtype"), t.get("shape")):
            continue
        (a0, a1), (t0, t1) = a["data_offsets"], t["data_offsets"]
        if buf[data_start + a0 : data_start + a1] != buf[data_start + t0 : data_start + t1]:
            raise CheckpointError(
                f"{f}: damaged: tied tensor {alias!r} holds other bytes than {target!r}, the copy it is "
                "recorded as tied to (torchsmith and plain safetensors would read different weights)"
            )
