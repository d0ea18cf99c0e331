"""Names in recipes (optimizer, scheduler, loss) matched as people type them: case-insensitively.

``adamw``, ``sgd`` and ``crossentropyloss`` are the torch classes ``AdamW``, ``SGD`` and
``CrossEntropyLoss``: a name that matches exactly one class when case is ignored is that class. A
name that matches none gets suggestions found among the case-folded names, so ``adamm`` suggests
``Adam`` and ``AdamW`` rather than nothing.

>>> canonical_name("adamw", ["Adam", "AdamW", "SGD"], "optimizer.name", "optimizer")
'AdamW'
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from torchsmith.errors import RecipeError

__all__ = ["canonical_name", "folded_matches"]


def folded_matches(word: str, choices: Iterable[str], n: int = 3) -> str:
    """``" (did you mean 'A' or 'B'?)"`` from the choices closest to ``word`` with case ignored."""
    choices = list(choices)
    by_fold: dict[str, str] = {}
    for c in choices:
        by_fold.setdefault(c.casefold(), c)
    found = difflib.get_close_matches(word.casefold(), list(by_fold), n=n, cutoff=0.6)
    if not found:
        return ""
    return " (did you mean " + " or ".join(repr(by_fold[f]) for f in found) + "?)"


def canonical_name(name: str, choices: Iterable[str], field: str, what: str, valid: str | None = None) -> str:
    """The choice ``name`` means: itself, or the one choice equal to it ignoring case.

    Otherwise a :class:`RecipeError` naming ``recipe field 'FIELD'`` with case-folded suggestions
    and the valid choices (``valid`` replaces the plain list).
    """
    choices = list(choices)
    if name in choices:
        return name
    if isinstance(name, str):
        same = [c for c in choices if c.casefold() == name.casefold()]
        if len(same) == 1:
            return same[0]
        hint = folded_matches(name, choices)
    else:
        hint = ""
    raise RecipeError(
        f"recipe field {field!r}: unknown {what} {name!r}{hint}; "
        + (valid if valid is not None else f"valid choices: {', '.join(sorted(choices))}")
    )
