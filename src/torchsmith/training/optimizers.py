"""Optimizers and learning-rate schedulers by name, checked before training starts.

The eleven optimizers seed 004 (§3.9) lists are all here by their ``torch.optim`` names, with their
arguments; so is every ``torch.optim.lr_scheduler`` scheduler that can be described in a file.
Two of the eleven need care, and get it:

* ``LBFGS`` re-evaluates the loss several times per step, so the loop passes it a closure.
* ``SparseAdam`` only takes sparse gradients (``nn.Embedding(sparse=True)``): a model with dense
  parameters is refused up front, naming them, instead of failing at the first step.

>>> import torch
>>> opt = build_optimizer("SGD", [torch.nn.Parameter(torch.zeros(2))], lr=0.1, args={"momentum": 0.9})
>>> type(opt).__name__, opt.defaults["momentum"]
('SGD', 0.9)
"""

from __future__ import annotations

import inspect
from typing import Any

from torchsmith.errors import RecipeError
from torchsmith.training.losses import _check_args
from torchsmith.training.names import canonical_name

__all__ = [
    "SCHEDULER_ALIASES",
    "SEED_OPTIMIZERS",
    "build_optimizer",
    "build_scheduler",
    "check_optimizer",
    "check_scheduler",
    "list_optimizers",
    "list_schedulers",
    "optimizer_name",
    "scheduler_name",
]

# The eleven optimizers seed 004 §3.9 lists, in its order.
SEED_OPTIMIZERS = (
    "ASGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "LBFGS",
    "RMSprop",
    "Rprop",
    "SGD",
    "SparseAdam",
)

# Schedulers that take other schedulers or Python callables cannot be written in a recipe.
_UNSUPPORTED_SCHEDULERS = ("LRScheduler", "LambdaLR", "MultiplicativeLR", "SequentialLR", "ChainedScheduler")


def _optimizer_classes() -> dict[str, type]:
    import torch.optim as optim

    return {
        n: c
        for n in dir(optim)
        if isinstance(c := getattr(optim, n), type) and issubclass(c, optim.Optimizer) and n != "Optimizer"
    }


def _scheduler_classes() -> dict[str, type]:
    import torch.optim.lr_scheduler as S

    out = {}
    for n in dir(S):
        c = getattr(S, n)
        if not isinstance(c, type) or n.startswith("_") or n in _UNSUPPORTED_SCHEDULERS:
            continue
        if issubclass(c, S.LRScheduler) or n == "ReduceLROnPlateau":
            out[n] = c
    return out


def list_optimizers() -> list[str]:
    """Every optimizer name a recipe may use (the seed's eleven and the rest of ``torch.optim``)."""
    return sorted(_optimizer_classes())


def list_schedulers() -> list[str]:
    """Every scheduler name a recipe may use (``torch.optim.lr_scheduler``)."""
    return sorted(_scheduler_classes())


def optimizer_name(name: str) -> str:
    """The ``torch.optim`` class name ``name`` means (case ignored: ``adamw`` is ``AdamW``)."""
    return canonical_name(name, _optimizer_classes(), "optimizer.name", "optimizer")


# Short names as timm and Lightning users write them (case ignored), for the torch classes.
SCHEDULER_ALIASES = {
    "cosine": "CosineAnnealingLR",
    "cosine_restarts": "CosineAnnealingWarmRestarts",
    "step": "StepLR",
    "multistep": "MultiStepLR",
    "exponential": "ExponentialLR",
    "plateau": "ReduceLROnPlateau",
    "onecycle": "OneCycleLR",
    "linear": "LinearLR",
    "poly": "PolynomialLR",
    "polynomial": "PolynomialLR",
    "constant": "ConstantLR",
    "cyclic": "CyclicLR",
}


def scheduler_name(name: str) -> str:
    """The ``torch.optim.lr_scheduler`` class name ``name`` means (case ignored; short names such as
    ``cosine``, ``step``, ``multistep``, ``exponential``, ``plateau`` in :data:`SCHEDULER_ALIASES`).

    >>> scheduler_name("cosine"), scheduler_name("steplr")
    ('CosineAnnealingLR', 'StepLR')
    """
    classes = _scheduler_classes()
    if isinstance(name, str) and name.casefold() in SCHEDULER_ALIASES:
        return SCHEDULER_ALIASES[name.casefold()]
    unsupported = {n.casefold(): n for n in _UNSUPPORTED_SCHEDULERS}
    if isinstance(name, str) and name not in classes and name.casefold() in unsupported:
        raise RecipeError(
            f"recipe field 'scheduler.name': unknown scheduler {name!r}; {unsupported[name.casefold()]} "
            "needs Python callables or other schedulers and cannot be described in a recipe; valid choices: "
            + ", ".join(sorted(classes))
        )
    return canonical_name(name, classes, "scheduler.name", "scheduler")


def check_optimizer(name: str, args: dict) -> type:
    """Return the optimizer class; :class:`RecipeError` naming ``optimizer.name``/``.args`` if bad."""
    classes = _optimizer_classes()
    name = optimizer_name(name)
    if "lr" in args:
        raise RecipeError("recipe field 'optimizer.args.lr': give the learning rate as 'optimizer.lr'")
    _check_args("optimizer", "optimizer", name, classes[name], args, skip=("params", "lr"))
    return classes[name]


def check_scheduler(name: str, args: dict) -> type:
    """Return the scheduler class; :class:`RecipeError` naming ``scheduler.name``/``.args`` if bad."""
    classes = _scheduler_classes()
    name = scheduler_name(name)
    _check_args("scheduler", "scheduler", name, classes[name], args, skip=("optimizer",))
    return classes[name]


def _sparse_parameter_ids(model: Any) -> set[int]:
    import torch.nn as nn

    ids = set()
    for m in model.modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse:
            ids.add(id(m.weight))
    return ids


def build_optimizer(name: str, params: Any, *, lr: float, args: dict | None = None, model: Any = None) -> Any:
    """Build optimizer ``name`` over ``params`` (tensors or param-group dicts).

    ``model`` (optional) lets ``SparseAdam`` check up front that every parameter gets sparse gradients.
    """
    args = dict(args or {})
    name = optimizer_name(name)
    cls = check_optimizer(name, args)
    params = list(params)
    if not params:
        raise RecipeError(
            "recipe field 'freeze': no trainable parameters are left for the optimizer "
            "(every parameter is frozen); unfreeze some"
        )
    if name == "SparseAdam" and model is not None:
        sparse = _sparse_parameter_ids(model)
        flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
        names = {id(p): n for n, p in model.named_parameters()}
        dense = [names.get(id(p), "?") for p in flat if id(p) not in sparse]
        if dense:
            raise RecipeError(
                "recipe field 'optimizer.name': SparseAdam only handles sparse gradients "
                "(nn.Embedding(sparse=True)); these trainable parameters are dense: "
                + ", ".join(dense[:8])
                + (" ..." if len(dense) > 8 else "")
                + "; use Adam/AdamW, or freeze them"
            )
    try:
        return cls(params, lr=lr, **args)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"recipe field 'optimizer.args': {name}(lr={lr}, {args}) failed: {e}") from None


def build_scheduler(
    name: str,
    optimizer: Any,
    args: dict | None = None,
    *,
    interval: str = "epoch",
    epochs: int = 1,
    steps_per_epoch: int = 1,
) -> Any:
    """Build scheduler ``name``; fills the length arguments a recipe usually leaves out.

    ``OneCycleLR.total_steps``, ``CosineAnnealingLR.T_max``, ``LinearLR.total_iters`` and
    ``PolynomialLR.total_iters`` default to the run's length in ``interval`` units.
    """
    args = dict(args or {})
    name = scheduler_name(name)
    cls = check_scheduler(name, args)
    length = epochs * steps_per_epoch if interval == "step" else epochs
    if name == "OneCycleLR":
        args.setdefault("max_lr", [g["lr"] for g in optimizer.param_groups])
        if "epochs" not in args and "steps_per_epoch" not in args:
            args.setdefault("total_steps", length)
    elif name == "CosineAnnealingLR":
        args.setdefault("T_max", length)
    elif name in ("LinearLR", "PolynomialLR"):
        args.setdefault("total_iters", length)
    params = inspect.signature(cls).parameters
    missing = [
        p
        for p, v in params.items()
        if v.default is inspect.Parameter.empty
        and p != "optimizer"
        and p not in args
        and v.kind == v.POSITIONAL_OR_KEYWORD
    ]
    if missing:
        raise RecipeError(f"recipe field 'scheduler.args': {name} needs {', '.join(missing)}")
    try:
        return cls(optimizer, **args)
    except (TypeError, ValueError, KeyError) as e:
        raise RecipeError(f"recipe field 'scheduler.args': {name}({args}) failed: {e}") from None
