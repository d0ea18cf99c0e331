"""Shape inference on the meta device: the arguments a spec may omit, and how shapes are described.

Every module is first built on ``torch.device("meta")`` (no memory) and run on meta tensors of the
sample input's shape, so ``in_features`` of a ``Linear`` after a flatten is read off the tensor
instead of computed by hand (the seeds' ``64*54*54``, trap 10), and a mismatch is reported with both
shapes before a single real weight is allocated.

Inferred when omitted and the layer's signature has them:

=====================  =========================================
``in_features``        last dim          (Linear)
``in_channels``        dim 1             (Conv*, ConvTranspose*, most blocks)
``in_chans``           dim 1             (timm models)
``num_features``       dim 1             (BatchNorm*, InstanceNorm*)
``num_channels``       dim 1             (GroupNorm)
``input_size``         last dim          (RNN, LSTM, GRU with batch_first)
``normalized_shape``   last dim          (LayerNorm)
``d_model``            last dim          (TransformerEncoderLayer/DecoderLayer, batch_first)
``embed_dim``          last dim          (MultiheadAttention, batch_first)
=====================  =========================================
"""

from __future__ import annotations

from typing import Any

__all__ = ["INFER", "describe", "infer_value", "meta_input"]

INFER: dict[str, int] = {
    "in_features": -1,
    "in_channels": 1,
    "in_chans": 1,
    "num_features": 1,
    "num_channels": 1,
    "input_size": -1,
    "normalized_shape": -1,
    "d_model": -1,
    "embed_dim": -1,
}


def infer_value(name: str, x: Any) -> int | None:
    """The value of argument ``name`` read off the input ``x``, or None when ``x`` cannot tell."""
    import torch

    if not isinstance(x, torch.Tensor):
        return None
    dim = INFER[name]
    if x.dim() < (2 if dim == 1 else 1):
        return None
    return int(x.shape[dim])


def meta_input(shape: tuple, dtype: str = "float32") -> Any:
    """A meta tensor of ``shape`` (no memory)."""
    import torch

    return torch.empty(shape, dtype=getattr(torch, dtype), device="meta")


def describe(value: Any) -> Any:
    """Shapes of a (nested) output: a tensor -> ``[1, 10]``, a tuple -> a list of those, a dict -> a dict."""
    import torch

    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in value.items()}
    return None if value is None else type(value).__name__


def shape_str(values: Any) -> str:
    """``(1, 64, 16, 16)`` for a tensor; several joined by ' and '."""
    import torch

    if isinstance(values, torch.Tensor):
        return "(" + ", ".join(str(d) for d in values.shape) + ")"
    if isinstance(values, (list, tuple)):
        return " and ".join(shape_str(v) for v in values)
    if isinstance(values, dict):
        return "{" + ", ".join(f"{k}: {shape_str(v)}" for k, v in values.items()) + "}"
    return type(values).__name__
