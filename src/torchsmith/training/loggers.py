"""``logging: [jsonl, csv, tensorboard]``: where a run's metrics go.

* ``jsonl`` (the default): ``metrics.jsonl``, one JSON object per epoch (``"kind": "epoch"``) and
  one per ``train.val_every_steps`` validation (``"kind": "val_step"``), in step order.
* ``csv``: ``metrics.csv``, the same rows with one column per metric (a union of every row's keys).
* ``tensorboard``: event files in ``tensorboard/`` through ``torch.utils.tensorboard`` (the
  ``tensorboard`` package): per step (every ``train.log_every`` steps) ``step/train_loss`` and
  ``step/lr``; per validation ``step/val_*``; per epoch ``epoch/<metric>`` for every number in the
  epoch's record; the recipe as text (``recipe``). Every scalar is at the global optimizer step.

``metrics.jsonl`` and ``metrics.csv`` are rewritten whole (atomically) with each checkpoint from the
checkpoint's own history, so after a kill and a resume they hold no row twice. TensorBoard files are
appended to; a resumed run opens its writer with ``purge_step`` = the checkpoint's step + 1, so
TensorBoard drops what the killed process logged after its last checkpoint, and flushes with every
checkpoint.

>>> rows = [{"epoch": 1, "step": 5, "val_acc": 0.5},
...         {"epoch": 1, "step": 9, "train_loss": 0.25, "val_acc": 0.75}]
>>> print(csv_text(rows), end="")
epoch,step,val_acc,train_loss
1,5,0.5,
1,9,0.75,0.25
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from torchsmith.training.callbacks import Callback

__all__ = ["LOGGERS", "TensorBoardLogger", "csv_text", "jsonl_text", "metric_rows"]

LOGGERS = ("jsonl", "csv", "tensorboard")


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
    """Scalars per step, per validation and per epoch, and the recipe as text (rank 0 only)."""

    def __init__(self, every_n_steps: int = 50, folder: str = "tensorboard"):
        self.every_n_steps, self.folder = every_n_steps, folder
        self.writer: Any = None

    def on_train_start(self, trainer: Any) -> None:
        if not trainer.ctx.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        resumed = trainer.resumed_from is not None
        # A resumed run hides what the killed one logged after its checkpoint (steps > trainer.step).
        self.writer = SummaryWriter(
            str(trainer.out_dir / self.folder), purge_step=trainer.step + 1 if resumed else None
        )
        if not resumed:
            text = (
                trainer.recipe.to_yaml() if hasattr(trainer.recipe, "to_yaml") else json.dumps(trainer.recipe)
            )
            self.writer.add_text("recipe", "```\n" + text + "\n```", global_step=0)

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
        if self.writer is not None:
            self.writer.flush()

    def on_train_end(self, trainer: Any) -> None:
        self.teardown(trainer)

    def teardown(self, trainer: Any) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
