"""How model names are read wherever a user types one: natural order and ``fnmatch`` patterns, case ignored.

A leaf module (standard library only), so the zoo, the hub and the CLI share one reading of a name
without importing each other.
"""

from __future__ import annotations

import fnmatch
import re

__all__ = ["name_matches", "natural_key"]


def natural_key(name: str) -> tuple:
    """Sort key that orders numbers by value: ``resnet18`` before ``resnet101``, case ignored.

    >>> sorted(["resnet101", "resnet18", "ResNet34", "resnet152"], key=natural_key)
    ['resnet18', 'ResNet34', 'resnet101', 'resnet152']
    """
    parts = re.split(r"(\d+)", name.casefold())
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in parts), name


def name_matches(name: str, pattern: str) -> bool:
    """Whether model ``name`` matches the ``fnmatch`` ``pattern`` (``resnet*``), case ignored.

    A pattern without wildcards matches that name exactly (case ignored), the way ``zoo``,
    ``list_models`` and ``weights list`` read a model name.
    """
    return fnmatch.fnmatchcase(name.casefold(), pattern.casefold())
