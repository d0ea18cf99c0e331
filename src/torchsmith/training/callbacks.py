"""The recipe's built-in callbacks, and the callback API's public home.

The hook API itself (:class:`Callback`, :class:`CheckpointInfo`, the hooks and when they run) lives
in :mod:`torchsmith.training.hooks`, which the features built on it (EMA, early stopping,
retention, loggers, profiler) import; this module imports those features and makes them from a
recipe (:func:`builtin_callbacks`). The split keeps the imports one way: hooks <- features <-
callbacks, no circle.

>>> import torchsmith
>>> class PrintLoss(torchsmith.Callback):
...     def on_step_end(self, trainer, loss):
...         if trainer.ctx.is_main and trainer.step % 100 == 0:
...             trainer.log(f"step {trainer.step}: loss {loss.item():.4f}")
>>> torchsmith.train("recipe.yaml", callbacks=[PrintLoss()])           # doctest: +SKIP
"""

from __future__ import annotations

from torchsmith.training.ema import EMA
from torchsmith.training.hooks import HOOKS, Callback, CheckpointInfo, Dispatcher
from torchsmith.training.loggers import TensorBoardLogger
from torchsmith.training.profiling import Profiler
from torchsmith.training.retention import CheckpointRetention
from torchsmith.training.stopping import EarlyStopping, MaxTime

__all__ = ["HOOKS", "Callback", "CheckpointInfo", "Dispatcher", "builtin_callbacks"]


def builtin_callbacks(recipe: dict) -> list[Callback]:
    """The callbacks a recipe turns on, in the order they run (EMA first: validation uses it)."""
    t, c = recipe["train"], recipe["checkpoint"]
    out: list[Callback] = []
    if t["ema"] is not None:
        out.append(EMA(**t["ema"]))
    if t["early_stopping"] is not None:
        out.append(EarlyStopping(**t["early_stopping"]))
    if t["max_time"] is not None:
        out.append(MaxTime(t["max_time"]))
    if c["keep_last"] is not None or c["keep_best"] is not None:
        metric = c["metric"] or t["best_metric"]
        out.append(CheckpointRetention(keep_last=c["keep_last"], keep_best=c["keep_best"], metric=metric))
    if "tensorboard" in recipe["logging"]:
        out.append(TensorBoardLogger(every_n_steps=t["log_every"]))
    if t["profile"] is not None:
        out.append(Profiler(**t["profile"]))
    return out
