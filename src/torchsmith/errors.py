"""The exceptions torchsmith raises.

Every user-facing failure is a :class:`TorchsmithError` with a message that names the file, key or
field at fault and what was expected. The CLI turns them into a one-line message and an exit code
(``exit_code``): 2 for bad input, 1 for a failure while doing valid work.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "CheckpointError",
    "DistributedError",
    "InputError",
    "RecipeError",
    "SpecError",
    "SurgeryError",
    "TorchsmithError",
    "TransferError",
    "close_matches",
]


class TorchsmithError(Exception):
    """Base class of every error torchsmith raises on purpose."""

    exit_code = 1


class InputError(TorchsmithError, ValueError):
    """The caller's input is wrong: a name, a shape, a file, a field. Exit code 2 at the CLI."""

    exit_code = 2


class CheckpointError(InputError):
    """A checkpoint file cannot be read, is damaged, or is not what it claims to be."""


class SpecError(InputError):
    """A model spec is malformed; the message names the spec path (and line, when known)."""


class RecipeError(InputError):
    """A training recipe is malformed; the message names the field."""


class SurgeryError(InputError):
    """A model surgery cannot be done as asked (bad path, shape, or no candidate found)."""


class TransferError(InputError):
    """Weights could not be moved into a model as asked (nothing loaded, another architecture,
    ambiguous match...): the source and the model do not fit, which is bad input (exit code 2)."""


class DistributedError(TorchsmithError):
    """The process group could not form or lost a member (rendezvous, gloo/NCCL, a timeout). Exit 1."""


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" (did you mean 'a' or 'b'?)"`` for the nearest choices, or ``""`` when none is close.

    Matching ignores case, as users type names (``Relu`` for ``ReLU``, ``adamw`` for ``AdamW``): a
    choice equal to ``word`` but for case is the answer on its own; otherwise the nearest by spelling.

    >>> close_matches("relu", ["ReLU", "ReLU6", "GELU"])
    " (did you mean 'ReLU'?)"
    >>> close_matches("adam_w", ["AdamW", "Adam", "SGD"])
    " (did you mean 'AdamW' or 'Adam'?)"
    """
    options = [c for c in dict.fromkeys(choices) if isinstance(c, str)]
    if not isinstance(word, str) or not options:
        return ""
    folded: dict[str, list[str]] = {}
    for choice in options:
        folded.setdefault(choice.casefold(), []).append(choice)
    key = word.casefold()
    found = [c for c in folded.get(key, []) if c != word]
    if not found:
        for near in difflib.get_close_matches(key, list(folded), n=n, cutoff=0.6):
            found.extend(c for c in folded[near] if c != word and c not in found)
    found = found[:n]
    if not found:
        return ""
    return " (did you mean " + " or ".join(repr(f) for f in found) + "?)"
