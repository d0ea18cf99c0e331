"""Convert a checkpoint between formats (any readable format -> safetensors or a torch zip, sharded or not).

The weights are read safely (restricted pickle reader, containers unwrapped, whole-model pickles
rescued) and written by :func:`torchsmith.save`: atomically, with checksums, keeping the source's
recorded provenance so ``load_model`` still rebuilds the model.

>>> convert_checkpoint("model.pth", "model.safetensors")        # doctest: +SKIP
PosixPath('model.safetensors')
"""

from __future__ import annotations

import os
from pathlib import Path

from torchsmith.checkpoint.read import read_checkpoint

__all__ = ["convert_checkpoint"]

_CARRIED = ("torchsmith.arch", "torchsmith.spec", "torchsmith.surgery")


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    max_shard_size: int | str | None = None,
) -> Path:
    """Read ``src`` and write its weights to ``dst`` (format from ``dst``'s extension); return the path."""
    ckpt = read_checkpoint(src, trust_pickle=trust_pickle)
    from torchsmith.checkpoint.saving import (
        TORCH_EXTENSIONS,
        _dedupe,
        _user_metadata,
        _versions,
        _write_one,
        _write_sharded,
    )
    from torchsmith.errors import InputError

    dst = Path(dst)
    if dst.suffix != ".safetensors" and dst.suffix not in TORCH_EXTENSIONS:
        raise InputError(
            f"convert: unknown destination extension {dst.suffix!r}; use .safetensors or one of "
            f"{', '.join(TORCH_EXTENSIONS)}"
        )
    user = {
        k: v for k, v in ckpt.metadata.items() if not k.startswith(("torchsmith.", "torch.", "total_size"))
    }
    meta = {**_user_metadata(user), **_versions()}
    meta.update({k: ckpt.metadata[k] for k in _CARRIED if k in ckpt.metadata})
    meta["torchsmith.converted_from"] = f"{ckpt.format}:{Path(src).name}"
    tensors, aliases = _dedupe(ckpt.state_dict)
    if max_shard_size is None:
        _write_one(dst, tensors, aliases, meta)
        return dst
    return _write_sharded(dst, tensors, aliases, meta, max_shard_size)
