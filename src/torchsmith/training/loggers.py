"""``logging: [jsonl, csv, tensorboard]``: where a run's metrics go.

* ``jsonl`` (the default): ``metrics.jsonl``, one JSON object per epoch (``"kind": "epoch"``) and
  one per ``train.val_every_steps`` validation (``"kind": "val_step"``), in step order.
* ``csv``: ``metrics.csv``, the same rows with one column per metric (a union of every row's keys).
* ``tensorboard``: one event file per run in ``tensorboard/`` (the ``tensorboard`` package's
  protos and ``torch.utils.tensorboard``'s summaries; the name ends in ``.torchsmith``): per
  step (every ``train.log_every`` steps) ``step/train_loss`` and ``step/lr``; per validation
  ``step/val_*``; per epoch ``epoch/<metric>`` for every number in the epoch's record; the recipe
  as text (``recipe``). Every scalar is at the global optimizer step.

``metrics.jsonl`` and ``metrics.csv`` are rewritten whole (atomically) with each checkpoint from the
checkpoint's own history, so after a kill and a resume they hold no row twice and lose none.
TensorBoard events go to one file per run, written unbuffered; each checkpoint records its length,
and a resumed run cuts the file back to that length and appends (:class:`EventFile`), so the events
a killed process logged after its checkpoint are gone from disk, not hidden by a purge marker that
only some readers honour and that only works when the resumed file sorts after the killed one.

>>> rows = [{"epoch": 1, "step": 5, "val_acc": 0.5},
...         {"epoch": 1, "step": 9, "train_loss": 0.25, "val_acc": 0.75}]
>>> print(csv_text(rows), end="")
epoch,step,val_acc,train_loss
1,5,0.5,
1,9,0.75,0.25
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

from torchsmith.errors import TorchsmithError
from torchsmith.training.hooks import Callback

__all__ = ["LOGGERS", "EventFile", "TensorBoardLogger", "csv_text", "jsonl_text", "metric_rows"]

LOGGERS = ("jsonl", "csv", "tensorboard")
_OURS = ".torchsmith"  # the name ending of the event files torchsmith writes (and may remove)
_TAIL = 8  # bytes of the file's end a checkpoint records, to know the file is still the one it saw


def metric_rows(history: list[dict], val_steps: list[dict]) -> list[dict]:
    """Epoch records and mid-epoch validations merged in step order (an epoch after its last step's
    validation)."""
    rows = [(r["step"], 0, i, r) for i, r in enumerate(val_steps)]
    rows += [(r["step"], 1, i, {"kind": "epoch", **r}) for i, r in enumerate(history)]
    return [r for *_, r in sorted(rows, key=lambda t: t[:3])]


def jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def csv_text(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


class TensorBoardLogger(Callback):
    """Scalars per step, per validation and per epoch, and the recipe as text (rank 0 only).

    A run writes one event file; its checkpoints record the file and its length
    (:meth:`state_dict`), and a resumed run cuts the file back to that length and appends to it, so
    the stream on disk is event for event the one an uninterrupted run writes. The file of a run
    that no checkpoint of this run names (one killed before its first checkpoint, or the run this
    one replaced) is removed after this run's first checkpoint.
    """

    state_key = "tensorboard"

    def __init__(self, every_n_steps: int = 50, folder: str = "tensorboard"):
        self.every_n_steps, self.folder = every_n_steps, folder
        self.writer: EventFile | None = None
        self._record: dict | None = None  # the resumed checkpoint's record of the file
        self._prune = False  # remove other runs' files once this run's checkpoint is on disk

    def state_dict(self) -> dict | None:
        if self.writer is None:  # not rank 0: rank 0's record is the one written
            return None
        return {"file": self.writer.path.name, "bytes": self.writer.tell(), "tail": self.writer.tail.hex()}

    def load_state_dict(self, state: dict) -> None:
        self._record = state

    def on_train_start(self, trainer: Any) -> None:
        if not trainer.ctx.is_main:
            return
        folder = trainer.out_dir / self.folder
        resumed = trainer.resumed_from is not None
        if resumed and self._record:
            rec = self._record
            try:
                self.writer = EventFile.resume(folder / rec["file"], rec["bytes"], bytes.fromhex(rec["tail"]))
                self._prune = True
                return
            except TorchsmithError as e:
                trainer.log(
                    f"warning: tensorboard: cannot continue the run's event file: {e}; starting a new one"
                )
        self.writer = EventFile.create(folder)
        if resumed:
            # No file to continue (a checkpoint of an older torchsmith, or the file is gone or was
            # rewritten): TensorBoard's own purge hides steps after the checkpoint, for readers that
            # honour it and read this file after the old ones; the old files are left as they are.
            from tensorboard.compat.proto.event_pb2 import SessionLog

            self.writer.add_event(
                _event(step=trainer.step + 1, session_log=SessionLog(status=SessionLog.START))
            )
            return
        self._prune = True
        text = trainer.recipe.to_yaml() if hasattr(trainer.recipe, "to_yaml") else json.dumps(trainer.recipe)
        self.writer.add_text("recipe", "```\n" + text + "\n```", 0)

    def on_step_end(self, trainer: Any, loss: Any) -> None:
        if self.writer is not None and trainer.step % self.every_n_steps == 0:
            self.writer.add_scalar("step/train_loss", loss.item(), trainer.step)
            self.writer.add_scalar("step/lr", trainer.optimizer.param_groups[0]["lr"], trainer.step)

    def on_validation_end(self, trainer: Any, metrics: dict) -> None:
        if self.writer is not None:
            for k, v in metrics.items():
                if k.startswith("val_") and isinstance(v, float):
                    self.writer.add_scalar(f"step/{k}", v, trainer.step)

    def on_epoch_end(self, trainer: Any, record: dict) -> None:
        if self.writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step",):
                    self.writer.add_scalar(f"epoch/{k}", v, trainer.step)

    def on_checkpoint(self, trainer: Any, info: Any) -> None:
        if self.writer is not None and self._prune:
            mine = self.writer.path
            info.after_write(lambda out_dir: self._remove_other_runs(mine))

    def _remove_other_runs(self, mine: Path) -> None:
        """This run's checkpoint is on disk: an event file of another run (ours by its name ending)
        that no checkpoint here names would mix its steps into this run's (in the writer thread)."""
        for path in mine.parent.glob(f"*tfevents*{_OURS}"):
            if path != mine:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        self._prune = False

    def on_train_end(self, trainer: Any) -> None:
        self.teardown(trainer)

    def teardown(self, trainer: Any) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class EventFile:
    """One TensorBoard event file, written unbuffered from the training thread.

    Every record is handed to the OS when ``add_*`` returns, so :meth:`tell` at a checkpoint is the
    length that holds exactly the events logged up to it; :meth:`resume` cuts the file back to that
    length and appends from there. A kill loses nothing before a checkpoint, and what it left after
    one (a partial record included) is cut off: no purge events, no second file, no reliance on
    how readers order files.
    """

    def __init__(self, path: Path, mode: str):
        self.path = path
        self._f = open(path, mode, buffering=0)  # noqa: SIM115 (closed by close())
        self._tail = b""  # the last bytes written: a resume checks the file still ends this way

    @classmethod
    def create(cls, folder: Path) -> EventFile:
        """A new file named as TensorBoard names them, ending in ``.torchsmith`` (``_OURS``)."""
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        for n in itertools.count():
            try:
                out = cls(folder / f"{stem}.{n}{_OURS}", "xb")
                break
            except FileExistsError:  # two runs in one process within a second
                continue
        out.add_event(_event(file_version="brain.Event:2"))
        return out

    @classmethod
    def resume(cls, path: Path, length: int, tail: bytes) -> EventFile:
        """Reopen ``path`` cut back to ``length`` bytes; TorchsmithError when it no longer holds them."""
        size = path.stat().st_size if path.is_file() else None
        if size is None or size < length:
            found = "it is missing" if size is None else f"it holds only {size} bytes"
            raise TorchsmithError(f"{path}: the checkpoint recorded {length} bytes and {found}")
        with open(path, "rb") as f:
            f.seek(length - len(tail))
            if f.read(len(tail)) != tail:
                raise TorchsmithError(
                    f"{path}: its first {length} bytes are not the ones the checkpoint recorded "
                    "(another run wrote the file since)"
                )
        out = cls(path, "r+b")
        out._f.truncate(length)
        out._f.seek(length)
        out._tail = tail
        return out

    def add_event(self, event: Any) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        # TFRecord framing: length, its masked CRC-32C, the bytes, their masked CRC-32C.
        record = header + _crc(header) + data + _crc(data)
        view = memoryview(record)
        while view:
            view = view[self._f.write(view) :]
        self._tail = record[-_TAIL:]

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        self.add_event(_event(step=step, summary=Summary(value=[Summary.Value(tag=tag, simple_value=value)])))

    def add_text(self, tag: str, text: str, step: int) -> None:
        from torch.utils.tensorboard.summary import text as text_summary

        self.add_event(_event(step=step, summary=text_summary(tag, text)))

    def tell(self) -> int:
        return self._f.tell()

    @property
    def tail(self) -> bytes:
        return self._tail

    def close(self) -> None:
        self._f.close()


def _event(**fields: Any) -> Any:
    from tensorboard.compat.proto.event_pb2 import Event

    return Event(wall_time=time.time(), **fields)


def _crc(data: bytes) -> bytes:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    return struct.pack("<I", masked_crc32c(data))
