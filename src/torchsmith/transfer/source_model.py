"""A structure port from a plain file: rebuild the source's own architecture, then port model to model.

A ``.safetensors`` file stores its keys sorted, so the order its layers run in is lost, and a file
says nothing of the code that made it. Naming the source architecture (``--source-model``) gives
both back: the file is loaded into that architecture *by name*, every key required, and the
resulting model is the source of the structure port, traced and checked numerically like any other.

>>> import torch, torchsmith
>>> path = __import__("tempfile").mkdtemp() + "/w.safetensors"
>>> torchsmith.save(torchsmith.create_model("torchvision:resnet18"), path)  # doctest: +ELLIPSIS
PosixPath(...)
>>> src, report = load_source_model("torchvision:resnet18", path)
>>> report.fraction
1.0
"""

from __future__ import annotations

from typing import Any

from torchsmith.errors import TransferError
from torchsmith.transfer.fingerprint import build_source_model

__all__ = ["build_source_model", "load_source_model"]


def load_source_model(
    source_model: Any, checkpoint: Any, *, trust_pickle: bool = False, kwargs: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """Build ``source_model`` and load ``checkpoint`` into it by name; every model key must come from it.

    Returns ``(model, report)``. Raises :class:`~torchsmith.errors.TransferError` naming the keys
    when the checkpoint is not of that architecture.
    """
    from torchsmith.transfer.load import load_weights

    model = build_source_model(source_model, kwargs)
    try:
        report = load_weights(model, checkpoint, match="name", strict="target", trust_pickle=trust_pickle)
    except TransferError as e:
        raise TransferError(
            f"source model {source_model if isinstance(source_model, str) else type(model).__name__!r}: "
            f"the checkpoint is not of this architecture ({e})"
        ) from None
    return model, report
