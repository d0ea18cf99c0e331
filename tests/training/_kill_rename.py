"""Train in this process and SIGKILL it just before one file operation (the rename-kill tests).

    python _kill_rename.py RECIPE OUT OP NAME NTH

OP is ``replace`` (a rename onto a name) or ``unlink``; NAME is the target's file name, or a prefix
ending in ``*`` (``epoch-*``); the kill comes before the NTH such operation (1-based), so a file
operation that :func:`torchsmith.training.checkpointing.write_files` or checkpoint retention does in
a row is interrupted exactly between two of its steps, as a kill -9 or a power cut would.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _tiny  # noqa: F401  (registers the test models)

from torchsmith.training import train


def _matches(pattern: str, path: object) -> bool:
    name = os.path.basename(os.fspath(path))
    return name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern


def kill_before(op: str, pattern: str, nth: int) -> None:
    real = getattr(os, op)
    seen = [0]

    def patched(*args, **kwargs):
        target = args[1] if op == "replace" else args[0]
        if _matches(pattern, target):
            seen[0] += 1
            if seen[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(os, op, patched)


if __name__ == "__main__":
    recipe, out, op, pattern, nth = sys.argv[1:]
    kill_before(op, pattern, int(nth))
    train(recipe, out=out, log=None)
