"""Initialisation and weight transfer: rule-based init, partial loads with a report, structural ports.

>>> import torchsmith
>>> report = torchsmith.load_weights(model, "resnet50.safetensors")        # doctest: +SKIP
>>> print(report)                                                          # doctest: +SKIP
>>> torchsmith.init_weights(model, [torchsmith.InitRule("normal", type="Linear", std=0.01)],
...                         skip=report)                                   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES: dict[str, str] = {
    **dict.fromkeys(
        ["INIT_FUNCTIONS", "InitReport", "InitRule", "init_weights", "load_init_rules", "rules_from_config"],
        "init_rules",
    ),
    "load_weights": "load",
    "TransferReport": "report",
    "match_structure": "structure",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'torchsmith.transfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"torchsmith.transfer.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
