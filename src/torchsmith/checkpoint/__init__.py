"""Checkpoints: read any checkpoint safely, explain it, save atomically, load fast.

Importing this package does not import torch (``torchsmith inspect`` must start in well under a
second); the names below are loaded from their modules on first use.

>>> import torchsmith
>>> torchsmith.save(model, "model.safetensors")              # doctest: +SKIP
>>> model = torchsmith.load_model("model.safetensors")       # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES: dict[str, str] = {
    **dict.fromkeys(["KeyMapping", "fit_keys", "strip_wrappers"], "keys"),
    **dict.fromkeys(["Checkpoint", "read_checkpoint", "read_state_dict"], "read"),
    "save": "saving",
    "load_model": "load",
    "inspect_checkpoint": "inspect",
    "diff_checkpoints": "diff",
    "verify_checkpoint": "verify",
    "convert_checkpoint": "convert",
    "sniff": "formats",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'torchsmith.checkpoint' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"torchsmith.checkpoint.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
