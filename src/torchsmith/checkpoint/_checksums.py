"""The recorded checksums of a checkpoint checked against the tensors' bytes where they lie in the file.

Its own module because it joins the hashing (``_hashing``), the tensor references (``_refs``) and the
safetensors byte layout (``safetensors_io``), which ``read`` and ``load`` both use; kept apart, none
of those imports another back.
"""

from __future__ import annotations

from typing import Any

from torchsmith.checkpoint._hashing import check_tensors, damaged_message
from torchsmith.checkpoint._refs import materialize
from torchsmith.checkpoint.safetensors_io import _tensor_bytes

__all__ = ["check_checksums", "damaged_message"]


def check_checksums(
    refs: dict[str, Any], metadata: dict[str, str], maps: Any, where: Any = "checkpoint"
) -> tuple[list[str], list[str]]:
    """``(algorithms checked, names of tensors that fail)`` against the checksums ``metadata`` records.

    Every recorded tensor's bytes are hashed where they lie in the (memory-mapped) file, in threads.
    Raises :class:`~torchsmith.errors.CheckpointError` for an unknown, empty or ``none`` algorithm.

    >>> check_checksums(refs, raw.metadata, FileMaps(), raw.path)     # doctest: +SKIP
    (['xxh3-128'], [])
    """
    return check_tensors(
        refs,
        metadata,
        lambda st: maps.buffer(st.file, st.ident),
        lambda ref: _tensor_bytes(materialize(ref, maps)),
        where=where,
    )
