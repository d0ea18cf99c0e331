"""Pause Python's cyclic garbage collector around checkpoint work that makes many objects but no cycles."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while the block runs (reference counting goes on).

    Saving or loading creates thousands of short-lived tensors, dicts and lists. In a process that
    has just imported torch, the collections they set off tend to promote them and then trigger a
    full collection over every object the imports made (0.1-0.4 s with torch + torchvision) that
    finds nothing to free. Paused, the short-lived objects die by reference counting before any
    collection sees them; collections resume afterwards with their usual thresholds.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
