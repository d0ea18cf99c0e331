"""``checkpoint: {keep_last, keep_best, metric}``: older checkpoints kept beside ``last.pt``, as a callback.

Every checkpoint the run takes is also given a name of its own in ``checkpoints/``:
``epoch-EEEE-step-SSSSSSSS.pt``, a hard link to the ``last.pt`` just written (a copy where the file
system has no links), made atomically after ``last.pt`` is on disk. The folder keeps the
``keep_last`` most recent ones and the ``keep_best`` best ones by ``metric`` (any key of a
validation's metrics or an epoch's record; lower is better for a ``*loss``, higher otherwise);
a checkpoint has a score when a validation ran at its step (every epoch end, and the
``train.val_every_steps`` steps that are also checkpoint steps). Anything else in ``checkpoints/``
with that name pattern (left by a run killed between the two writes) is removed, and a resume
removes a killed link's temporary file, makes the link of the checkpoint it resumed from when the
kill came first, and prunes what the checkpoint no longer keeps when the kill came before the pruning.
Which files are kept, with their scores, is part of the checkpoint, so a resumed
run keeps the same set.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from torchsmith._io import atomic_path, fsync_dir
from torchsmith.training.hooks import Callback, CheckpointInfo

__all__ = ["CheckpointRetention"]

_NAME = re.compile(r"epoch-\d{4,}-step-(\d{8,})\.pt")


class CheckpointRetention(Callback):
    """Keep the last ``keep_last`` and the best ``keep_best`` checkpoints in ``out_dir/checkpoints``."""

    state_key = "checkpoints"

    def __init__(self, keep_last: int | None = None, keep_best: int | None = None, metric: str = "val_acc"):
        self.keep_last, self.keep_best, self.metric = keep_last, keep_best, metric
        self.lower_is_better = metric.endswith("loss")
        self.entries: list[dict] = []  # {"file", "step", "score"} of every checkpoint kept, oldest first
        self._scored: tuple[int, float] | None = None  # (step, value) of the last validation

    def on_validation_end(self, trainer: Any, metrics: dict) -> None:
        if self.metric in metrics:
            self._scored = (trainer.step, metrics[self.metric])

    def on_epoch_end(self, trainer: Any, record: dict) -> None:
        if self.metric in record:
            self._scored = (trainer.step, record[self.metric])
        elif self.keep_best:
            from torchsmith.errors import RecipeError

            keys = ", ".join(k for k, v in record.items() if isinstance(v, float))
            raise RecipeError(
                f"recipe field 'checkpoint.metric': {self.metric!r} is not among this run's metrics: {keys}"
            )

    def on_train_start(self, trainer: Any) -> None:
        if not trainer.ctx.is_main:
            return
        folder = trainer.out_dir / "checkpoints"
        _remove_stale_tmp_files(folder)
        # A kill between last.pt's rename and the link of its name here leaves a kept entry with no
        # file, and no later checkpoint makes it: give the resumed checkpoint its name now.
        resumed = trainer.resumed_from
        if not resumed:
            return
        if self.entries and self.entries[-1]["step"] == trainer.step:
            name = self.entries[-1]["file"]
            if not (folder / name).exists() and Path(resumed["checkpoint"]).is_file():
                _link(Path(resumed["checkpoint"]), folder / name)
                fsync_dir(folder)
        # A kill between that link and the pruning after it leaves a file the checkpoint no longer
        # keeps, and after the run's last checkpoint no later one prunes it: prune now. Files of
        # steps after the resumed one are left (resuming an older checkpoint deletes nothing newer).
        _prune(folder, {e["file"] for e in self.entries}, up_to_step=trainer.step)

    def on_checkpoint(self, trainer: Any, info: CheckpointInfo) -> None:
        score = None
        if self._scored is not None and self._scored[0] == info.step and math.isfinite(self._scored[1]):
            score = self._scored[1]
        name = f"epoch-{info.epoch:04d}-step-{info.step:08d}.pt"
        self.entries = [e for e in self.entries if e["file"] != name]
        self.entries.append({"file": name, "step": info.step, "score": score})
        keep = self._kept()
        self.entries = [e for e in self.entries if e["file"] in keep]
        info.after_write(lambda out_dir: _link_and_prune(out_dir, name, keep))

    def _kept(self) -> set[str]:
        keep: set[str] = set()
        if self.keep_last:
            keep |= {e["file"] for e in self.entries[-self.keep_last :]}
        if self.keep_best:
            scored = [e for e in self.entries if e["score"] is not None]
            sign = 1.0 if self.lower_is_better else -1.0
            # Best first; an equal score keeps the earlier checkpoint.
            scored.sort(key=lambda e: (sign * e["score"], e["step"]))
            keep |= {e["file"] for e in scored[: self.keep_best]}
        return keep

    def best_files(self) -> list[str]:
        """The kept checkpoints that have a score, best first."""
        sign = 1.0 if self.lower_is_better else -1.0
        scored = [e for e in self.entries if e["score"] is not None]
        return [e["file"] for e in sorted(scored, key=lambda e: (sign * e["score"], e["step"]))]

    def state_dict(self) -> dict:
        return {"entries": [dict(e) for e in self.entries], "metric": self.metric}

    def load_state_dict(self, state: dict) -> None:
        self.entries = [dict(e) for e in state["entries"]]


def _link_and_prune(out_dir: Path, name: str, keep: set[str]) -> None:
    folder = Path(out_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    if name in keep:
        _link(Path(out_dir) / "last.pt", folder / name)
    _prune(folder, keep)


def _prune(folder: Path, keep: set[str], up_to_step: int | None = None) -> None:
    """Remove the checkpoint files of ``folder`` that ``keep`` does not name (up to a step)."""
    removed = False
    for p in sorted(folder.iterdir()) if folder.is_dir() else ():
        m = _NAME.fullmatch(p.name)
        if m is None or p.name in keep or (up_to_step is not None and int(m.group(1)) > up_to_step):
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed = True
    if removed or up_to_step is None:
        fsync_dir(folder)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst, sync_folder=False) as tmp:
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here
            shutil.copyfile(src, tmp)


_TMP = re.compile(r"\.(epoch-\d{4,}-step-\d{8,}\.pt)\.\d+\.[0-9a-f]{8}\.tmp")


def _remove_stale_tmp_files(folder: Path) -> None:
    """What a kill during a link left (``atomic_path``'s temporary names, of processes now gone)."""
    from torchsmith._io import stale_tmp_files

    names = {m.group(1) for p in folder.iterdir() if (m := _TMP.fullmatch(p.name))} if folder.is_dir() else ()
    for name in names:
        for tmp in stale_tmp_files(folder / name):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
