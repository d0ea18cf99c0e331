"""Learning-rate schedules as people write them: a warmup in front of any scheduler.

A recipe's ``scheduler`` section names a ``torch.optim.lr_scheduler`` class (or a short name:
``cosine``, ``step``, ``multistep``, ``exponential``, ``plateau``, ...) and may put a warmup in
front of it::

    scheduler: {name: cosine, interval: step, warmup_epochs: 2, warmup_lr: 1.0e-5, min_lr: 1.0e-6}

* ``warmup_epochs`` or ``warmup_steps`` (optimizer steps) long; ``warmup_mode`` ``linear`` (from
  ``warmup_lr`` up to the group's LR, timm's ``warmup_lr_init``) or ``constant`` (``warmup_lr`` held,
  then the group's LR). With several parameter groups each starts from the same fraction
  ``warmup_lr / optimizer.lr`` of its own LR (one group: exactly ``warmup_lr``).
* The scheduler runs *after* the warmup (timm's ``warmup_prefix=True``): its lengths that default
  to the run (``CosineAnnealingLR.T_max``, ``LinearLR``/``PolynomialLR.total_iters``,
  ``OneCycleLR.total_steps``) are the run minus the warmup, so a cosine reaches ``min_lr`` at the
  last step. ``min_lr`` is the cosine's ``eta_min`` (and ``ReduceLROnPlateau``'s ``min_lr``).
* Composition is torch's own: ``SequentialLR([WarmupLR, main], milestones=[W])``, every part a
  closed form of its step count, so ``state_dict``/``load_state_dict`` resume it exactly.
  ``ReduceLROnPlateau`` cannot sit in a ``SequentialLR`` (it needs a metric); it gets
  :class:`WarmupPlateau`, a ``ReduceLROnPlateau`` that sets the warmup LRs itself and hands over
  to the plateau logic when the warmup is done (metrics seen during the warmup are ignored, as timm
  does).
* ``warmup_steps`` under ``interval: epoch``: the warmup still advances per optimizer step (the
  loop calls :meth:`WarmupSchedule.step_update` after each step), the main scheduler per epoch.

>>> import torch
>>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
>>> s = build_schedule({"name": "StepLR", "args": {"step_size": 2}, "warmup_epochs": 2, "warmup_lr": 0.0},
...                    opt, epochs=6, steps_per_epoch=1)
>>> lrs = []
>>> for _ in range(6):
...     lrs.append(round(opt.param_groups[0]["lr"], 4)); opt.step(); s.step()
>>> lrs
[0.0, 0.5, 1.0, 1.0, 0.1, 0.1]
"""

from __future__ import annotations

from typing import Any

from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau, SequentialLR

from torchsmith.errors import RecipeError

__all__ = ["WarmupLR", "WarmupPlateau", "build_schedule", "check_schedule", "warmup_length"]

# Arguments whose default is "the run's length" (in the scheduler's interval).
_LENGTH_ARGS = {
    "CosineAnnealingLR": "T_max",
    "LinearLR": "total_iters",
    "PolynomialLR": "total_iters",
    "OneCycleLR": "total_steps",
}
# What ``min_lr`` means for each scheduler that has a floor.
_MIN_LR_ARGS = {
    "CosineAnnealingLR": "eta_min",
    "CosineAnnealingWarmRestarts": "eta_min",
    "ReduceLROnPlateau": "min_lr",
}


def _warmup_factor(t: int, total: int, start: float, mode: str) -> float:
    """The LR factor after ``t`` warmup steps of ``total`` (1.0 once done)."""
    if t >= total:
        return 1.0
    if mode == "constant":
        return start
    return start + (1.0 - start) * t / total


class WarmupLR(LRScheduler):
    """Linear (or constant) warmup, a closed form of the step count: exact after a resume.

    After ``t`` steps group ``g`` has ``base_g * (s + (1 - s) * t / total)`` (linear) or
    ``base_g * s`` (constant), ``s = start_factor``; from ``total`` on, ``base_g``. Unlike
    ``LinearLR``, ``start_factor`` may be 0 (timm's ``warmup_lr_init: 0``).
    """

    def __init__(
        self, optimizer: Any, total: int, start_factor: float, mode: str = "linear", last_epoch: int = -1
    ) -> None:
        self.total = int(total)
        self.start_factor = float(start_factor)
        self.mode = mode
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return self._get_closed_form_lr()

    def _get_closed_form_lr(self) -> list[float]:
        f = _warmup_factor(max(self.last_epoch, 0), self.total, self.start_factor, self.mode)
        return [base * f for base in self.base_lrs]


class WarmupPlateau(ReduceLROnPlateau):
    """``ReduceLROnPlateau`` with a warmup in front (``SequentialLR`` refuses plateaus).

    During the warmup the group LRs are set from the warmup's closed form and ``step(metric)``
    only counts epochs (a warmup in epochs) or does nothing (a warmup in steps, counted by
    :meth:`step_update`); afterwards ``step(metric)`` is the plateau's own. Every attribute is
    plain data, so ``state_dict()`` (all of ``__dict__`` but the optimizer) resumes it exactly.
    """

    def __init__(
        self,
        optimizer: Any,
        *,
        warmup_total: int,
        warmup_start: float,
        warmup_mode: str = "linear",
        warmup_unit: str = "epoch",
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer, **kwargs)
        self.warmup_total = int(warmup_total)
        self.warmup_start = float(warmup_start)
        self.warmup_mode = warmup_mode
        self.warmup_unit = warmup_unit
        self.warmup_t = 0
        self.warmup_base = [float(g["lr"]) for g in optimizer.param_groups]
        self._set_warmup_lr()

    def _set_warmup_lr(self) -> None:
        f = _warmup_factor(self.warmup_t, self.warmup_total, self.warmup_start, self.warmup_mode)
        for g, base in zip(self.optimizer.param_groups, self.warmup_base, strict=True):
            g["lr"] = base * f
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    @property
    def warming_up(self) -> bool:
        """True until the warmup's last step or epoch is done."""
        return self.warmup_t < self.warmup_total

    def step_update(self) -> None:
        """One optimizer step done: advance a warmup counted in steps (the loop calls this)."""
        if self.warmup_unit == "step" and self.warming_up:
            self.warmup_t += 1
            self._set_warmup_lr()

    def step(self, metrics: Any = None, epoch: Any = None) -> None:  # type: ignore[override]
        """An epoch done: advance a warmup counted in epochs, or the plateau logic after it."""
        if self.warming_up:
            if self.warmup_unit == "epoch":
                self.warmup_t += 1
                self._set_warmup_lr()
            return
        if metrics is None:
            raise RecipeError(
                "recipe field 'scheduler.name': ReduceLROnPlateau needs a metric each epoch "
                "(val_loss, or train_loss without validation data)"
            )
        super().step(metrics)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_schedule(s: dict) -> None:
    """Check the warmup fields of a recipe's ``scheduler`` section (no torch needed).

    Raises :class:`RecipeError` naming the field: ``warmup_epochs`` and ``warmup_steps`` together,
    negative lengths, ``min_lr`` for a scheduler without a floor or next to its own ``eta_min``,
    ``ReduceLROnPlateau`` stepped per step.
    """
    we, ws = s.get("warmup_epochs"), s.get("warmup_steps")
    if we is not None and ws is not None:
        raise RecipeError(
            "recipe field 'scheduler.warmup_steps': give either scheduler.warmup_epochs or "
            "scheduler.warmup_steps, not both"
        )
    if we is not None and (not _number(we) or we < 0):
        raise RecipeError(f"recipe field 'scheduler.warmup_epochs': expected a number >= 0, got {we!r}")
    if we is not None and s["interval"] == "epoch" and float(we) != int(we):
        raise RecipeError(
            f"recipe field 'scheduler.warmup_epochs': {we} is not a whole number of epochs, and "
            "scheduler.interval is epoch; use interval: step (the warmup is then counted in steps)"
        )
    if ws is not None and (not isinstance(ws, int) or isinstance(ws, bool) or ws < 0):
        raise RecipeError(f"recipe field 'scheduler.warmup_steps': expected an integer >= 0, got {ws!r}")
    if s.get("warmup_lr") is not None and (not _number(s["warmup_lr"]) or s["warmup_lr"] < 0):
        raise RecipeError(
            f"recipe field 'scheduler.warmup_lr': expected a number >= 0, got {s['warmup_lr']!r}"
        )
    name = s.get("name")
    if ws and s["interval"] == "epoch" and name != "ReduceLROnPlateau":
        raise RecipeError(
            f"recipe field 'scheduler.warmup_steps': a warmup counted in optimizer steps needs "
            f"scheduler.interval: step in front of {name or 'no scheduler'} (only ReduceLROnPlateau, "
            "which steps per epoch, mixes the two); or give scheduler.warmup_epochs"
        )
    if name == "ReduceLROnPlateau" and s["interval"] == "step":
        raise RecipeError(
            "recipe field 'scheduler.interval': ReduceLROnPlateau steps on a metric at each epoch's "
            "end; use interval: epoch (a warmup_steps warmup still advances per step)"
        )
    if s.get("min_lr") is not None:
        arg = _MIN_LR_ARGS.get(name)
        if arg is None:
            raise RecipeError(
                f"recipe field 'scheduler.min_lr': {name or 'no scheduler'} has no LR floor; min_lr is "
                f"for {', '.join(_MIN_LR_ARGS)}"
            )
        if arg in s["args"]:
            raise RecipeError(
                f"recipe field 'scheduler.min_lr': scheduler.args.{arg} says the same; set one of them"
            )


def warmup_length(s: dict, *, interval: str, steps_per_epoch: int) -> tuple[int, str]:
    """The warmup's length and unit (``"step"`` or ``"epoch"``); ``(0, interval)`` without one."""
    we, ws = s.get("warmup_epochs"), s.get("warmup_steps")
    if ws:
        return int(ws), "step"
    if we:
        if interval == "step":
            return round(float(we) * steps_per_epoch), "step"
        return int(we), "epoch"
    return 0, interval


def build_schedule(
    s: dict,
    optimizer: Any,
    *,
    epochs: int,
    steps_per_epoch: int,
    optimizer_lr: float | None = None,
) -> Any:
    """The LR scheduler a recipe's ``scheduler`` section describes, warmup included (or None).

    ``s`` holds ``name``, ``args``, ``interval`` and the optional ``warmup_epochs``/``warmup_steps``,
    ``warmup_lr``, ``warmup_mode``, ``min_lr``. ``optimizer_lr`` is the recipe's ``optimizer.lr``
    (default: the first group's LR), the LR that ``warmup_lr`` is a fraction of.

    Returns a plain torch scheduler when there is no warmup, ``SequentialLR([WarmupLR, main])`` (or
    :class:`WarmupLR` alone without a name) with one, and :class:`WarmupPlateau` for a plateau.
    """
    from torchsmith.training.optimizers import build_scheduler, scheduler_name

    s = {"args": {}, "interval": "epoch", **s}
    name = scheduler_name(s["name"]) if s.get("name") else None
    s["name"] = name
    check_schedule(s)
    interval = s["interval"]
    args = dict(s["args"])
    if s.get("min_lr") is not None:
        args[_MIN_LR_ARGS[name]] = s["min_lr"]
    run_length = epochs * steps_per_epoch if interval == "step" else epochs
    total, unit = warmup_length(s, interval=interval, steps_per_epoch=steps_per_epoch)
    if total == 0:
        if name is None:
            return None
        return build_scheduler(
            name, optimizer, args, interval=interval, epochs=epochs, steps_per_epoch=steps_per_epoch
        )
    base = optimizer_lr if optimizer_lr is not None else optimizer.param_groups[0]["lr"]
    start = float(s.get("warmup_lr") or 0.0) / base if base > 0 else 1.0
    mode = s.get("warmup_mode") or "linear"
    if name == "ReduceLROnPlateau":
        from torchsmith.training.optimizers import check_scheduler

        check_scheduler(name, args)
        return WarmupPlateau(
            optimizer, warmup_total=total, warmup_start=start, warmup_mode=mode, warmup_unit=unit, **args
        )
    if unit != interval:  # warmup_steps under interval: epoch
        raise RecipeError(
            f"recipe field 'scheduler.warmup_steps': a warmup counted in steps needs scheduler.interval: "
            f"step in front of {name or 'no scheduler'} (only ReduceLROnPlateau mixes the two); or give "
            "scheduler.warmup_epochs"
        )
    warmup = WarmupLR(optimizer, total, start, mode)
    if name is None:
        return warmup
    key = _LENGTH_ARGS.get(name)
    if key is not None and key not in args and not (name == "OneCycleLR" and "epochs" in args):
        # A warmup as long as the run (a --set train.epochs=1 smoke test) leaves the scheduler
        # one step it never reaches, rather than refusing the run.
        args[key] = max(1, run_length - total)
    main = build_scheduler(
        name, optimizer, args, interval=interval, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    return SequentialLR(optimizer, [warmup, main], milestones=[total])
