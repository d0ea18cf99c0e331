"""Ending a run early and cleanly: ``train.early_stopping`` and ``train.max_time``, as callbacks.

Early stopping looks at the epoch's record (``metric`` is any of its keys: ``val_loss``,
``val_acc``, ``train_loss``, ...): an epoch improves when the value beats the best so far by more
than ``min_delta`` (lower for ``mode: min``, higher for ``max``; ``auto`` means min for a ``*loss``
metric, max otherwise); after ``patience`` epochs without improvement the run stops after that
epoch's checkpoint. Its count is in the checkpoint: a resumed run that had stopped stays stopped.

``max_time`` (seconds, or ``"HH:MM:SS"`` / ``"DD:HH:MM:SS"``) stops after the first optimizer step
past that much training time in this process, with a checkpoint at that step, so ``--resume``
continues from there. Under torchrun the ranks agree on it (a 1-element all-reduce per step, only
when ``max_time`` is set), so no rank stops alone.

>>> parse_duration("01:30:00"), parse_duration(90), parse_duration("1:00:00:00")
(5400.0, 90.0, 86400.0)
"""

from __future__ import annotations

import math
import time
from typing import Any

from torchsmith.errors import RecipeError
from torchsmith.training.hooks import Callback

__all__ = ["EarlyStopping", "MaxTime", "parse_duration"]


def parse_duration(value: Any, field: str = "train.max_time") -> float:
    """Seconds from a number or ``[[DD:]HH:]MM:SS``; a :class:`RecipeError` naming ``field`` otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        parts = value.strip().split(":")
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            nums = []
        if not 1 <= len(nums) <= 4 or any(n < 0 for n in nums):
            raise RecipeError(
                f"recipe field {field!r}: expected seconds or 'HH:MM:SS' / 'DD:HH:MM:SS', got {value!r}"
            )
        seconds = sum(n * u for n, u in zip(reversed(nums), (1, 60, 3600, 86400)))
    else:
        raise RecipeError(f"recipe field {field!r}: expected seconds or 'HH:MM:SS', got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise RecipeError(f"recipe field {field!r}: must be a positive duration, got {value!r}")
    return seconds


class EarlyStopping(Callback):
    """Stop when ``metric`` has not improved by ``min_delta`` for ``patience`` epochs."""

    state_key = "early_stopping"

    def __init__(
        self, metric: str = "val_loss", mode: str = "auto", patience: int = 3, min_delta: float = 0.0
    ):
        self.metric, self.patience, self.min_delta = metric, int(patience), float(min_delta)
        self.mode = ("min" if metric.endswith("loss") else "max") if mode == "auto" else mode
        self.best: float | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_train_start(self, trainer: Any) -> None:
        if self.metric.startswith("val_") and trainer.val_loader is None:
            raise RecipeError(
                f"recipe field 'train.early_stopping.metric': {self.metric!r} needs validation data, and "
                "this recipe has none (set data.val_fraction or data.val_root, or use a train_* metric)"
            )
        if self.stopped_epoch is not None:  # resumed after it had stopped: stay stopped
            trainer.stop(self._reason())

    def _reason(self) -> str:
        return (
            f"early stopping: {self.metric} did not improve by more than {self.min_delta} for "
            f"{self.patience} epoch(s) (best {self.best:.6g}); stopped after epoch {self.stopped_epoch}"
        )

    def on_epoch_end(self, trainer: Any, record: dict) -> None:
        if self.metric not in record:
            keys = ", ".join(k for k, v in record.items() if isinstance(v, float))
            raise RecipeError(
                f"recipe field 'train.early_stopping.metric': {self.metric!r} is not among this run's "
                f"metrics: {keys}"
            )
        value = record[self.metric]
        if not math.isfinite(value):
            improved = False
        elif self.best is None:
            improved = True
        elif self.mode == "min":
            improved = value < self.best - self.min_delta
        else:
            improved = value > self.best + self.min_delta
        if improved:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = record["epoch"]
            trainer.stop(self._reason())

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait, self.stopped_epoch = state["best"], state["wait"], state["stopped_epoch"]


class MaxTime(Callback):
    """Stop after ``seconds`` of training in this process, at a step boundary, with a checkpoint."""

    state_key = "max_time"

    def __init__(self, seconds: Any):
        self.seconds = parse_duration(seconds)
        self._start = 0.0

    def on_train_start(self, trainer: Any) -> None:
        self._start = time.monotonic()

    def on_step_end(self, trainer: Any, loss: Any) -> None:
        over = time.monotonic() - self._start >= self.seconds
        if trainer.ctx.enabled:  # every rank stops at the same step, or none does
            import torch

            from torchsmith.training import distributed as dist_

            flag = torch.tensor([1.0 if over else 0.0], device=trainer.ctx.device)
            over = dist_.all_reduce_sum(flag, trainer.ctx).item() > 0
        if over:
            trainer.stop(
                f"max_time: {self.seconds:g} s of training reached at step {trainer.step} "
                "(its checkpoint is written; --resume continues from it)"
            )
