"""Train in this process and SIGKILL it at one chosen moment (for the kill-and-resume tests).

    python _kill.py RECIPE OUT HOOK STEP [RANK [MARKER]]

kills rank RANK (default 0) in the callback hook HOOK at optimizer step STEP (its built-in peers,
e.g. TensorBoard, have run that hook already); with MARKER, only while that file does not exist (it
is created just before the kill), so a restarted process trains on. Resumes with ``--resume auto``.
Works alone and as torchrun's worker script.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _tiny  # noqa: F401  (registers the test models)

import torchsmith
from torchsmith.training import train


class _KillAt(torchsmith.Callback):
    def __init__(self, step: int, rank: int, marker: str | None):
        self.step, self.rank, self.marker = step, rank, marker

    def _maybe_kill(self, trainer, *args) -> None:
        if trainer.step != self.step or trainer.ctx.rank != self.rank:
            return
        if self.marker is not None:
            if os.path.exists(self.marker):
                return
            Path(self.marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)


def kill_at(hook: str, step: int, rank: int = 0, marker: str | None = None) -> torchsmith.Callback:
    # A class that overrides just that hook: the loop calls only the hooks a class overrides.
    return type(f"KillAt_{hook}", (_KillAt,), {hook: _KillAt._maybe_kill})(step, rank, marker)


if __name__ == "__main__":
    recipe, out, hook, step, *rest = sys.argv[1:]
    rank = int(rest[0]) if rest else 0
    marker = rest[1] if len(rest) > 1 else None
    train(recipe, out=out, resume="auto", callbacks=[kill_at(hook, int(step), rank, marker)])
