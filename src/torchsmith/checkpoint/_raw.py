"""What every checkpoint reader produces (:class:`RawCheckpoint`) and the registry readers join.

Each format's reader module (``torch_files``, ``safetensors_io``, ``sharded``, ``dcp``) imports
this module, never :mod:`~torchsmith.checkpoint.formats`, and adds itself with
:func:`register_reader`; ``formats`` looks readers up here. So the readers do not import the module
that dispatches to them, and a new format is one module plus one ``register_reader`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["READERS", "RawCheckpoint", "register_reader"]


@dataclass
class RawCheckpoint:
    """A checkpoint read without torch: its top-level object with tensors as ``TensorRef``."""

    path: Path
    format: str
    obj: Any
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    stand_ins: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    globals_named: set[str] = field(default_factory=set)  # every global a pickle names (safety verdict)
    budget: Any = None  # the read's ReadBudget (pickle readers); materialising charges the same one


# format name -> reader(path) -> RawCheckpoint
READERS: dict[str, Callable[[Path], RawCheckpoint]] = {}


def register_reader(fmt: str, reader: Callable[[Path], RawCheckpoint]) -> None:
    """Make ``reader`` the function that reads files of format ``fmt`` (called at module import)."""
    READERS[fmt] = reader
