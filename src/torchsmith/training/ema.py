"""``train.ema``: an exponential moving average of the model's weights, as a callback.

Every ``every_n_steps`` optimizer steps each floating-point parameter and buffer of the EMA copy
moves towards the trained model's: ``ema = ema + (1 - decay) * (model - ema)`` (one fused
``_foreach_lerp_``); integer buffers (BatchNorm's ``num_batches_tracked``) are copied. With
``eval: true`` (the default) validation, ``best.pt``'s score, ``evaluate``/``predict`` on a
checkpoint and the final ``model.safetensors`` use the EMA weights; the trained weights keep
training. The EMA tensors and the update count are saved in every checkpoint, so a resumed run
continues the average bit for bit.

>>> ema = EMA(decay=0.99)                     # what ``train.ema: {decay: 0.99}`` builds
>>> ema.decay, ema.every_n_steps, ema.eval
(0.99, 1, True)
"""

from __future__ import annotations

import copy
from typing import Any

from torchsmith.training.hooks import Callback

__all__ = ["EMA"]


class EMA(Callback):
    """Keeps ``module``, an averaged copy of the trained model (see the module docstring)."""

    state_key = "ema"

    def __init__(self, decay: float = 0.999, every_n_steps: int = 1, eval: bool = True):
        self.decay, self.every_n_steps, self.eval = float(decay), int(every_n_steps), bool(eval)
        self.module: Any = None
        self.updates = 0
        self._pending: dict | None = None
        self._pairs: tuple[list, list, list, list] | None = None

    def on_train_start(self, trainer: Any) -> None:
        if self.module is None:
            self.module = copy.deepcopy(trainer.raw_model).eval()
            for p in self.module.parameters():
                p.requires_grad_(False)
        if self._pending is not None:
            self.module.load_state_dict(self._pending["model"])
            self.updates = int(self._pending["updates"])
            self._pending = None
        self._pairs = self._tensor_pairs(trainer.raw_model)
        if self.eval:
            trainer.eval_model = self.module

    def _tensor_pairs(self, model: Any) -> tuple[list, list, list, list]:
        ema_sd = self.module.state_dict(keep_vars=True)
        floats_e, floats_m, other_e, other_m = [], [], [], []
        for name, t in model.state_dict(keep_vars=True).items():
            e = ema_sd[name]
            if t.is_floating_point():
                floats_e.append(e.data)
                floats_m.append(t.data)
            else:
                other_e.append(e.data)
                other_m.append(t.data)
        return floats_e, floats_m, other_e, other_m

    def on_step_end(self, trainer: Any, loss: Any) -> None:
        if trainer.step % self.every_n_steps == 0:
            self.update()

    def update(self) -> None:
        """One averaging step of the EMA copy towards the model."""
        import torch

        floats_e, floats_m, other_e, other_m = self._pairs
        with torch.no_grad():
            if floats_e:
                torch._foreach_lerp_(floats_e, floats_m, 1.0 - self.decay)
            for e, m in zip(other_e, other_m):
                e.copy_(m)
        self.updates += 1

    def state_dict(self) -> dict | None:
        if self.module is None:
            return None
        return {
            "model": self.module.state_dict(),
            "updates": self.updates,
            "decay": self.decay,
            "eval": self.eval,
        }

    def load_state_dict(self, state: dict) -> None:
        self._pending = state
