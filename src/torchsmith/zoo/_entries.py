"""The zoo's table of models: what ``@register_model`` writes and :mod:`torchsmith.zoo.registry` reads.

A leaf module (it imports nothing from the zoo), so model modules register themselves here without
importing the registry that builds models, and the registry finds the built-in models by importing
``torchsmith.zoo.models`` lazily, on the first lookup: no import circle between the two.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torchsmith.errors import InputError

__all__ = ["ModelEntry", "register_model"]

_REGISTRY: dict[str, ModelEntry] = {}


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its factory, a one-line description and a sample input shape."""

    name: str
    factory: Callable[..., Any]
    description: str = ""
    input_shape: tuple[int, ...] = (1, 3, 224, 224)
    tags: tuple[str, ...] = field(default_factory=tuple)


def register_model(
    name: str | None = None,
    *,
    input_shape: tuple[int, ...] = (1, 3, 224, 224),
    description: str | None = None,
    tags: tuple[str, ...] = (),
    overwrite: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a model factory (a function or an ``nn.Module`` class) under ``name``.

    ``input_shape`` is a sample input (batch first) used by ``summary`` and shape checks.
    """

    def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
        key = name or factory.__name__
        if ":" in key:
            raise InputError(f"model name {key!r} may not contain ':' (reserved for library prefixes)")
        if key in _REGISTRY and not overwrite:
            raise InputError(f"model {key!r} is already registered; pass overwrite=True to replace it")
        doc = description if description is not None else (inspect.getdoc(factory) or "").split("\n")[0]
        _REGISTRY[key] = ModelEntry(key, factory, doc, tuple(input_shape), tuple(tags))
        return factory

    return decorate
