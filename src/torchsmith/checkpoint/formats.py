"""Which kind of checkpoint a path holds, decided from its bytes (never from its extension).

==================  ============================================================================
format              what it is
==================  ============================================================================
``torch-zip``       ``torch.save`` since PyTorch 1.6 (a zip with ``data.pkl``), any extension
``torch-legacy``    ``torch.save(..., _use_new_zipfile_serialization=False)`` and PyTorch < 1.6
``pickle``          a plain pickle (``pickle.dump``); read with the same restricted reader
``safetensors``     an 8-byte header length, a JSON header, then raw tensor bytes
``sharded``         an ``*.index.json`` whose ``weight_map`` names shard files (either format)
``dcp``             a ``torch.distributed.checkpoint`` directory (``.metadata`` + ``*.distcp``)
==================  ============================================================================

>>> sniff("model.safetensors")          # doctest: +SKIP
'safetensors'
"""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path

from torchsmith.checkpoint._raw import READERS, RawCheckpoint
from torchsmith.checkpoint._refs import open_regular
from torchsmith.errors import CheckpointError

__all__ = ["FORMATS", "RawCheckpoint", "SeveralModelFiles", "model_files", "open_raw", "resolve_dir", "sniff"]

FORMATS = ("torch-zip", "torch-legacy", "pickle", "safetensors", "sharded", "dcp")

# The modules that register a reader for each format (checkpoint/_raw.py), imported on first use.
_READER_MODULES = {
    "torch-zip": "torch_files",
    "torch-legacy": "torch_files",
    "pickle": "torch_files",
    "safetensors": "safetensors_io",
    "sharded": "sharded",
    "dcp": "dcp",
}

# torch's legacy format starts with the pickled magic number 0x1950a86a20f9469cfc6c (protocol 2).
_LEGACY_HEAD = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

# A directory holding one of these is read as that checkpoint (Hugging Face style folders).
_DIR_FILES = (
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "model.safetensors",
    "pytorch_model.bin",
)

_FOREIGN = {
    b"\x89HDF": "an HDF5 file (Keras?)",
    b"GGUF": "a GGUF file (llama.cpp)",
    b"\x93NUMPY": "a NumPy .npy array",
    b"\x1f\x8b": "a gzip archive",
    b"ustar": "a tar archive",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
}


def _reader(fmt: str):
    if fmt not in READERS:
        importlib.import_module(f"torchsmith.checkpoint.{_READER_MODULES[fmt]}")
    return READERS[fmt]


class SeveralModelFiles(CheckpointError):
    """A folder holding several model files and no index (accelerate ``save_state``): ``files`` lists them."""

    def __init__(self, message: str, files: list[Path]) -> None:
        super().__init__(message)
        self.files = files


# Files a training folder holds beside its weights (accelerate save_state, HF Trainer): not models.
_NOT_MODELS = ("optimizer", "scheduler", "sampler", "scaler", "random_states", "custom_checkpoint",
               "rng_state", "training_args", "trainer_state")  # fmt: skip
_NUMBERED_MODEL = re.compile(r"(model|pytorch_model)_\d+\.(safetensors|bin)")


def model_files(path: Path) -> list[Path]:
    """The weight files directly in folder ``path`` (optimizer, scheduler, RNG files left out), sorted."""
    found = {
        p
        for ext in ("*.safetensors", "*.pt", "*.pth", "*.bin", "*.ckpt")
        for p in path.glob(ext)
        if p.is_file() and not p.name.startswith(_NOT_MODELS)
    }
    return sorted(found)


def _several(path: Path, files: list[Path]) -> SeveralModelFiles:
    names = ", ".join(p.name for p in files[:8]) + (" ..." if len(files) > 8 else "")
    return SeveralModelFiles(
        f"{path}: a folder with {len(files)} model files ({names}) and no index: say which one to read "
        f"(e.g. {path / files[0].name}); 'torchsmith inspect {path}' lists them all",
        files,
    )


def resolve_dir(path: Path) -> tuple[Path, str]:
    """For a directory: the file or folder to read and its format; CheckpointError if it is none.

    A folder with several model files and no index (accelerate ``save_state`` writes
    ``model.safetensors`` and ``model_1.safetensors``) raises :class:`SeveralModelFiles`: which
    one is meant cannot be guessed.
    """
    if (path / ".metadata").is_file():
        return path, "dcp"
    for name in _DIR_FILES[:2]:
        if (path / name).is_file():
            return path / name, "sharded"
    singles = model_files(path)
    if any(_NUMBERED_MODEL.fullmatch(p.name) for p in singles):
        raise _several(path, singles)
    for name in _DIR_FILES[2:]:
        if (path / name).is_file():
            return path / name, ""
    indexes = sorted(path.glob("*.index.json"))
    if len(indexes) == 1:
        return indexes[0], "sharded"
    if len(singles) == 1:
        return singles[0], ""
    if len(singles) > 1:
        raise _several(path, singles)
    found = ", ".join(sorted(p.name for p in path.iterdir())[:6]) or "nothing"
    raise CheckpointError(
        f"{path}: directory is not a checkpoint: expected an *.index.json (sharded), a .metadata file "
        f"(torch.distributed.checkpoint) or a single model file; it holds {found}"
    )


def sniff(path: str | os.PathLike) -> str:
    """The format of ``path`` (one of :data:`FORMATS`), read from its first bytes."""
    return _sniff(Path(path))[0]


def _sniff(path: Path) -> tuple[str, CheckpointError | None]:
    """The format, and why the file is not valid safetensors when it started like one."""
    if path.is_dir():
        target, fmt = resolve_dir(path)
        return (fmt, None) if fmt else _sniff(target)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    # Only a regular file is opened (a FIFO or device would block or never end): checked on the
    # open descriptor, so a path swapped after a check cannot slip through.
    with open(open_regular(path), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CheckpointError(f"{path}: the file is empty (0 bytes); expected a checkpoint")
        head = f.read(512)
    # Strongest evidence first: a safetensors header is checked whole (its length fits the file, it
    # is a JSON object, every tensor's offsets lie inside the file), so a header length such as
    # 0x280 (bytes 80 02 ..., a pickle's opening) cannot be mistaken for a pickle.
    st_error = None
    if len(head) >= 10 and head[8:9] == b"{":
        try:
            _reader("safetensors")(path)
            return "safetensors", None
        except CheckpointError as e:
            st_error = e
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "torch-zip", st_error
    if head.startswith(_LEGACY_HEAD):
        return "torch-legacy", st_error
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle", st_error
    if st_error is not None:
        raise st_error
    stripped = head.lstrip()
    if stripped.startswith(b"{"):
        if size > 64 << 20:
            raise CheckpointError(f"{path}: a {size}-byte JSON file; an index.json is far smaller")
        try:
            with open(open_regular(path), encoding="utf-8") as f:
                index = json.load(f)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise CheckpointError(f"{path}: starts like JSON but is not valid JSON: {e}"[:300]) from None
        if isinstance(index, dict) and isinstance(index.get("weight_map"), dict):
            return "sharded", None
        raise CheckpointError(f"{path}: a JSON file without a 'weight_map'; expected a sharded index.json")
    for magic, what in _FOREIGN.items():
        if head.startswith(magic) or head[257:262] == magic:
            raise CheckpointError(f"{path}: this is {what}, not a PyTorch or safetensors checkpoint")
    raise CheckpointError(
        f"{path}: not a checkpoint: starts with bytes {head[:8].hex(' ')}; expected a torch zip, a torch "
        "pickle, safetensors or a sharded index.json"
    )


def open_raw(path: str | os.PathLike) -> RawCheckpoint:
    """Read ``path`` without torch: headers, pickles (restricted) and tensor locations."""
    path = Path(path)
    fmt, st_error = _sniff(path)
    if path.is_dir() and fmt != "dcp":
        path = resolve_dir(path)[0]
    try:
        return _reader(fmt)(path)
    except CheckpointError as e:
        if st_error is None:
            raise
        # It began like safetensors and like a pickle and is neither: say both, safetensors first.
        raise CheckpointError(f"{st_error} (nor is it a readable {fmt} file: {e})"[:800]) from None
