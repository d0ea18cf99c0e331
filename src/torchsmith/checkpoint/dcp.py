"""``torch.distributed.checkpoint`` directories: a ``.metadata`` pickle plus ``*.distcp`` data files.

The ``.metadata`` file is a pickle that torch unpickles with no restriction, so torchsmith reads it
first with its own restricted reader: that gives every tensor's name, dtype and shape (``inspect``
without torch) and proves it names only DCP's own classes before torch is allowed to read it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from torchsmith.checkpoint._refs import TensorRef
from torchsmith.checkpoint.formats import RawCheckpoint
from torchsmith.checkpoint.pickle_reader import DTypeRef, StandIn, read_pickle
from torchsmith.errors import CheckpointError

__all__ = ["load_dcp_tensors", "read_dcp"]

# What a DCP .metadata pickle may name; anything else needs trust_pickle=True.
_ALLOWED_PREFIXES = (
    "torch.distributed.checkpoint.",
    "torch.",
    "collections.",
    "builtins.",
    "copyreg.",
    "pathlib.",
)


def _fields(obj: Any) -> dict:
    return obj.state_dict_like if isinstance(obj, StandIn) else {}


def read_dcp(path: Path) -> RawCheckpoint:
    """Describe a DCP directory: ``TensorRef`` (no storage) per tensor, from ``.metadata``."""
    meta_path = path / ".metadata"
    try:
        with open(meta_path, "rb") as f:
            result = read_pickle(f)
    except Exception as e:
        raise CheckpointError(
            f"{meta_path}: damaged torch.distributed.checkpoint metadata: {e}"[:500]
        ) from None
    foreign = sorted(q for q in result.stand_ins if not q.startswith(_ALLOWED_PREFIXES))
    md = _fields(result.obj).get("state_dict_metadata")
    if not isinstance(md, dict):
        raise CheckpointError(
            f"{meta_path}: not torch.distributed.checkpoint metadata (no state_dict_metadata)"
        )
    tensors: dict[str, TensorRef] = {}
    others: list[str] = []
    for fqn, item in md.items():
        f = _fields(item)
        size, props = f.get("size"), f.get("properties")
        # TensorProperties pickles a tuple (dtype, layout, requires_grad, memory_format, pin_memory).
        state = props._state if isinstance(props, StandIn) else None
        dtype = state[0] if isinstance(state, tuple) and state else _fields(props).get("dtype")
        if isinstance(size, tuple) and isinstance(dtype, DTypeRef):
            tensors[str(fqn)] = TensorRef(None, dtype.name, tuple(int(s) for s in size), extra={"dcp": True})
        else:
            others.append(str(fqn))
    raw = RawCheckpoint(path, "dcp", tensors, stand_ins=result.stand_ins, calls=result.calls)
    raw.files = sorted(path.glob("*.distcp"))
    if not raw.files:
        raise CheckpointError(
            f"{path}: torch.distributed.checkpoint directory without any *.distcp data file"
        )
    if others:
        raw.notes.append(f"{len(others)} non-tensor entries (e.g. {others[0]!r}) are not read")
    if foreign:
        raw.notes.append(f"metadata names foreign classes {', '.join(foreign[:4])}")
        raw.metadata["torchsmith.dcp_foreign"] = ",".join(foreign)
    return raw


def load_dcp_tensors(raw: RawCheckpoint, *, trust_pickle: bool = False) -> dict[str, Any]:
    """Read every tensor of a DCP directory on one process (no process group needed)."""
    foreign = raw.metadata.get("torchsmith.dcp_foreign")
    if foreign and not trust_pickle:
        raise CheckpointError(
            f"{raw.path}: its .metadata names classes outside torch.distributed.checkpoint ({foreign}); "
            "refusing to let torch unpickle it; pass trust_pickle=True if you trust the file"
        )
    import torch
    import torch.distributed.checkpoint as dcp

    state = {k: torch.empty(r.shape, dtype=getattr(torch, r.dtype)) for k, r in raw.obj.items()}
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, checkpoint_id=str(raw.path), no_dist=True)
    except Exception as e:
        raise CheckpointError(
            f"{raw.path}: cannot read this torch.distributed.checkpoint: {e}"[:500]
        ) from None
    return state
