"""Check a checkpoint's integrity: structure, zip CRCs and the SHA-256 recorded per tensor.

>>> verify_checkpoint("model.safetensors")["ok"]                # doctest: +SKIP
True
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

from torchsmith.checkpoint._refs import FileMaps
from torchsmith.checkpoint.formats import open_raw, sniff
from torchsmith.checkpoint.load import checksum_mismatches, damaged_message
from torchsmith.checkpoint.read import select_tensors
from torchsmith.errors import CheckpointError

__all__ = ["verify_checkpoint"]


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Verify ``path``; return ``{"path", "format", "tensors", "checks", "ok"}`` or raise.

    ``checks`` lists what was verified: ``structure`` (every tensor lies inside the file),
    ``crc32`` (torch zips: every record's CRC), ``sha256`` (files saved by torchsmith: every
    tensor's bytes). Raises :class:`~torchsmith.errors.CheckpointError` naming the damaged tensors.
    A file without recorded checksums passes with ``sha256`` absent from ``checks``.
    """
    raw = open_raw(path)
    refs, _, _, _ = select_tensors(raw)
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
    if "torchsmith.sha256" in raw.metadata:
        bad = checksum_mismatches(refs, raw.metadata, FileMaps(use_mmap=True))
        if bad:
            raise CheckpointError(damaged_message(raw.path, bad))
        checks.append("sha256")
    result = {"path": str(raw.path), "format": raw.format, "tensors": len(refs), "checks": checks, "ok": True}
    if "sha256" not in checks:
        result["note"] = (
            "no per-tensor checksums recorded (not saved by torchsmith.save); re-save to add them"
        )
    return result
