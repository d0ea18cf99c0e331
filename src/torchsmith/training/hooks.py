"""The training loop's hooks: add behaviour to a run without forking the loop.

A :class:`Callback` overrides the hooks it needs; the :class:`~torchsmith.training.loop.Trainer`
calls them, on every process of a distributed run, at these moments:

=====================  ============================================================================
``on_train_start``     after set-up (and after a resume restored the position), before the 1st step
``on_step_end``        after each optimizer step; ``loss`` is the step's last micro-batch loss, a 0-dim
                       tensor on the device (reading it with ``.item()`` is a host sync on a GPU)
``on_validation_end``  after each validation pass (``train.val_every_steps`` and epoch ends);
                       ``metrics``: ``epoch`` (1-based, in progress), ``step`` and the ``val_*`` values
``on_epoch_end``       with the epoch's record (train and val metrics, lr, time) before its checkpoint
``on_checkpoint``      when a checkpoint is taken, before it is written: ``info.state`` is the dict
                       about to be saved; ``info.after_write(fn)`` runs ``fn`` once the files are on
                       disk (in the writer's thread under ``checkpoint.async``)
``on_train_end``       after the last checkpoint is on disk
``teardown``           always last, also when the run failed: release files and threads
=====================  ============================================================================

What a hook may read and set on the trainer: ``recipe``, ``out_dir``, ``ctx`` (``rank``,
``world_size``, ``is_main``, ``device``), ``epoch`` (0-based, in progress), ``step`` (optimizer steps
done), ``batches_done``, ``batches_per_epoch``, ``at_epoch_end``, ``history``, ``model`` (as wrapped
for DDP/FSDP/compile), ``raw_model``, ``optimizer``, ``scheduler``, ``log(line)``;
``trainer.stop(reason)`` ends the run cleanly (mid-epoch: with a checkpoint a ``--resume`` continues
from), and ``trainer.eval_model`` (None: the trained model) is the module validation runs on. Under
torchrun every rank must make the same call to ``stop`` at the same step (decide from values all
ranks share, such as the reduced metrics a hook receives), or the ranks part ways.

A callback's :meth:`~Callback.state_dict` (tensors and plain types) is saved in every checkpoint
under its ``state_key`` and given back to :meth:`~Callback.load_state_dict` on resume, so a
resumed run continues the callback exactly. The built-in features (EMA, early stopping, checkpoint
retention, CSV/TensorBoard logs, ``max_time``, the profiler) are callbacks made from the recipe,
run before the user's.

>>> import torchsmith
>>> class PrintLoss(torchsmith.Callback):
...     def on_step_end(self, trainer, loss):
...         if trainer.ctx.is_main and trainer.step % 100 == 0:
...             trainer.log(f"step {trainer.step}: loss {loss.item():.4f}")
>>> torchsmith.train("recipe.yaml", callbacks=[PrintLoss()])           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["HOOKS", "Callback", "CheckpointInfo", "Dispatcher"]

HOOKS = (
    "on_train_start",
    "on_step_end",
    "on_validation_end",
    "on_epoch_end",
    "on_checkpoint",
    "on_train_end",
    "teardown",
)


class Callback:
    """Base class of training callbacks: every hook does nothing until overridden."""

    #: the key of this callback's state in a checkpoint (default: the class name)
    state_key: str | None = None

    def on_train_start(self, trainer: Any) -> None:
        """After set-up and any resume, before the first step."""

    def on_step_end(self, trainer: Any, loss: Any) -> None:
        """After each optimizer step (``trainer.step`` counts it already)."""

    def on_validation_end(self, trainer: Any, metrics: dict) -> None:
        """After a validation pass; ``metrics`` holds ``epoch``, ``step`` and ``val_*``."""

    def on_epoch_end(self, trainer: Any, record: dict) -> None:
        """With the finished epoch's record, before its checkpoint is taken."""

    def on_checkpoint(self, trainer: Any, info: CheckpointInfo) -> None:
        """When a checkpoint is taken, before it is written."""

    def on_train_end(self, trainer: Any) -> None:
        """After the run's last checkpoint is on disk."""

    def teardown(self, trainer: Any) -> None:
        """Always called last, also after a failure."""

    def state_dict(self) -> dict | None:
        """What a resume needs to continue this callback (tensors and plain types), or None."""
        return None

    def load_state_dict(self, state: dict) -> None:
        """Take back what :meth:`state_dict` returned (called during set-up, before on_train_start)."""

    @property
    def key(self) -> str:
        return self.state_key or type(self).__name__


@dataclass
class CheckpointInfo:
    """A checkpoint being taken: ``state`` (the dict to be written; add your keys), where it goes,
    whether it ends an epoch and is the best so far, and :meth:`after_write` for work on the files."""

    state: dict
    out_dir: Path
    step: int
    epoch: int  # epochs completed
    epoch_done: bool
    best: bool
    _after: list = field(default_factory=list, repr=False)

    def after_write(self, fn: Callable[[Path], None]) -> None:
        """Run ``fn(out_dir)`` on the main process once ``last.pt`` (and ``best.pt``) are on disk."""
        self._after.append(fn)


class Dispatcher:
    """Calls one hook on every callback that overrides it, in order; knows which hooks are empty,
    so the loop pays nothing per step for a hook no callback has."""

    def __init__(self, callbacks: Iterable[Callback]):
        self.callbacks = list(callbacks)
        keys = [cb.key for cb in self.callbacks]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            from torchsmith.errors import InputError

            raise InputError(
                f"callbacks: two callbacks share the state key {dupes[0]!r}; give one a distinct "
                "state_key so their checkpoint states do not overwrite each other"
            )
        self.hooks = {
            name: [getattr(cb, name) for cb in self.callbacks if _overrides(cb, name)] for name in HOOKS
        }

    def has(self, name: str) -> bool:
        return bool(self.hooks[name])

    def __call__(self, name: str, *args: Any) -> None:
        for fn in self.hooks[name]:
            fn(*args)

    def states(self) -> dict:
        out = {}
        for cb in self.callbacks:
            s = cb.state_dict()
            if s is not None:
                out[cb.key] = s
        return out

    def load_states(self, states: dict | None) -> None:
        for cb in self.callbacks:
            if states and cb.key in states:
                cb.load_state_dict(states[cb.key])


def _overrides(cb: Callback, name: str) -> bool:
    return getattr(type(cb), name, None) is not getattr(Callback, name)
