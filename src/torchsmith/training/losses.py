"""Loss functions by name, with an adapter that feeds each one from a classifier's logits.

Seed 004 (§3.6) lists fifteen losses; every one of them is here by its ``torch.nn`` name, as is every
other ``torch.nn`` loss class. A classification recipe gives the loop logits ``(N, C)`` and integer
labels ``(N,)``; most of the fifteen want something else (probabilities, one-hot targets, ±1 targets,
pairs, triplets, sequences). The ``classification`` adapter turns logits and labels into what each
loss expects, so any of them can train a classifier; ``adapter: none`` passes ``(output, target)``
through untouched for datasets that already yield the right targets.

>>> import torch
>>> crit = build_loss("MultiMarginLoss", {"margin": 0.5})
>>> float(crit(torch.zeros(2, 3), torch.tensor([0, 2]))) > 0
True

What the adapter feeds each seed loss (``p = softmax(logits)``, ``t = one_hot(labels)``):

=======================  ====================================================================
BCELoss                  ``sigmoid(logits)`` vs ``t``
CrossEntropyLoss         ``logits`` vs ``labels``
L1Loss / MSELoss         ``p`` vs ``t``
SmoothL1Loss             ``p`` vs ``t``
PoissonNLLLoss           ``logits`` as log-rates vs ``t``
KLDivLoss                ``log_softmax(logits)`` vs ``t`` (``reduction: batchmean`` by default)
MarginRankingLoss        true-class logit vs best other logit, ``y = 1``
MultiLabelMarginLoss     ``logits`` vs ``[label, -1, ...]``
SoftMarginLoss           ``logits`` vs ``2t - 1``
MultiMarginLoss          ``logits`` vs ``labels``
TripletMarginLoss        in-batch triplets of output rows: same label positive, other label negative
HingeEmbeddingLoss       ``1 - p`` as distances vs ``2t - 1``
CosineEmbeddingLoss      ``logits`` vs ``t``, ``y = 1``
CTCLoss                  logits as a length-1 sequence; the model needs ``num_classes + 1`` outputs,
                         output 0 is the blank, class ``k`` is output ``k + 1``
=======================  ====================================================================
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torchsmith.errors import RecipeError, close_matches
from torchsmith.training.names import canonical_name

__all__ = ["SEED_LOSSES", "LossAdapter", "build_loss", "check_loss", "list_losses", "loss_name"]

# The fifteen losses seed 004 §3.6 lists, in its order.
SEED_LOSSES = (
    "BCELoss",
    "CrossEntropyLoss",
    "L1Loss",
    "MSELoss",
    "SmoothL1Loss",
    "PoissonNLLLoss",
    "KLDivLoss",
    "MarginRankingLoss",
    "MultiLabelMarginLoss",
    "SoftMarginLoss",
    "MultiMarginLoss",
    "TripletMarginLoss",
    "HingeEmbeddingLoss",
    "CosineEmbeddingLoss",
    "CTCLoss",
)


def _loss_classes() -> dict[str, type]:
    import torch.nn as nn
    import torch.nn.modules.loss as L

    found = {}
    for name in dir(L):
        obj = getattr(L, name)
        if isinstance(obj, type) and issubclass(obj, nn.Module) and name.endswith("Loss") and name[0] != "_":
            found[name] = obj
    return found


def list_losses() -> list[str]:
    """Every loss name a recipe may use: the seed's fifteen and the other ``torch.nn`` losses."""
    return sorted(_loss_classes())


def _check_args(kind: str, field: str, name: str, cls: Any, args: dict, skip: tuple[str, ...] = ()) -> None:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return
    valid = [p for p in params if p not in skip and params[p].kind is not inspect.Parameter.VAR_POSITIONAL]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in args:
        if key not in valid:
            raise RecipeError(
                f"recipe field '{field}.args.{key}': {kind} {name} has no argument {key!r}"
                f"{close_matches(str(key), valid)}; its arguments are: {', '.join(valid) or '(none)'}"
            )


def loss_name(name: str) -> str:
    """The loss class name ``name`` means (case ignored: ``crossentropyloss`` is ``CrossEntropyLoss``)."""
    classes = _loss_classes()
    valid = f"the seed's losses: {', '.join(SEED_LOSSES)}; all: {', '.join(sorted(classes))}"
    return canonical_name(name, classes, "loss.name", "loss", valid)


def check_loss(name: str, args: dict) -> type:
    """Return the loss class for ``name``; :class:`RecipeError` naming ``loss.name``/``loss.args`` if bad."""
    classes = _loss_classes()
    name = loss_name(name)
    _check_args("loss", "loss", name, classes[name], args)
    if "reduction" in args:
        valid = ("mean", "sum", "none", "batchmean") if name == "KLDivLoss" else ("mean", "sum", "none")
        if args["reduction"] not in valid:
            raise RecipeError(
                f"recipe field 'loss.args.reduction': {args['reduction']!r} is not a valid choice; "
                f"valid choices: {', '.join(valid)}"
            )
    return classes[name]


class LossAdapter:
    """A loss plus the glue that feeds it from model outputs and labels.

    ``loss(output, target)`` returns a scalar; ``predictions(output)`` returns the class scores used
    for accuracy (None when the output is not class scores).
    """

    def __init__(self, name: str, module: Any, adapt: Callable[[Any, Any], tuple] | None, scores: Callable):
        self.name = name
        self.module = module
        self._adapt = adapt
        self._scores = scores

    def __call__(self, output: Any, target: Any) -> Any:
        if self._adapt is None:
            return self.module(output, target)
        return self.module(*self._adapt(output, target))

    def scores(self, output: Any) -> Any:
        return self._scores(output)

    def to(self, device: Any) -> LossAdapter:
        self.module.to(device)
        return self

    def __repr__(self) -> str:
        return f"LossAdapter({self.module!r})"


def _classification_adapter(name: str) -> tuple[Callable | None, Callable]:
    import torch
    import torch.nn.functional as F

    def one_hot(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, out.shape[-1]).to(out.dtype)

    def ident(out: torch.Tensor) -> torch.Tensor:
        return out

    if name in ("CrossEntropyLoss", "MultiMarginLoss", "NLLLoss"):
        adapt = None
        if name == "NLLLoss":

            def adapt(o, y):
                return F.log_softmax(o, -1), y

        return adapt, ident
    if name == "BCELoss":
        return (lambda o, y: (torch.sigmoid(o), one_hot(o, y))), ident
    if name in ("BCEWithLogitsLoss", "SoftMarginLoss", "MultiLabelSoftMarginLoss"):
        if name == "SoftMarginLoss":
            return (lambda o, y: (o, 2 * one_hot(o, y) - 1)), ident
        return (lambda o, y: (o, one_hot(o, y))), ident
    if name in ("L1Loss", "MSELoss", "SmoothL1Loss", "HuberLoss"):
        return (lambda o, y: (F.softmax(o, -1), one_hot(o, y))), ident
    if name == "PoissonNLLLoss":
        return (lambda o, y: (o, one_hot(o, y))), ident
    if name == "GaussianNLLLoss":
        return (lambda o, y: (F.softmax(o, -1), one_hot(o, y), torch.ones_like(o))), ident
    if name == "KLDivLoss":
        return (lambda o, y: (F.log_softmax(o, -1), one_hot(o, y))), ident
    if name == "MarginRankingLoss":

        def ranking(o, y):
            true = o.gather(1, y[:, None]).squeeze(1)
            others = o.masked_fill(F.one_hot(y, o.shape[-1]).bool(), float("-inf")).amax(1)
            return true, others, torch.ones_like(true)

        return ranking, ident
    if name == "MultiLabelMarginLoss":

        def multilabel(o, y):
            t = torch.full_like(o, -1, dtype=torch.long)
            t[:, 0] = y
            return o, t

        return multilabel, ident
    if name in ("TripletMarginLoss", "TripletMarginWithDistanceLoss"):

        def triplets(o, y):
            # positive: another row with the same label (itself when it is alone); negative: the
            # first row with a different label (itself when none). All on-device, no host sync.
            n = o.shape[0]
            same = y[:, None] == y[None, :]
            eye = torch.eye(n, dtype=torch.bool, device=o.device)
            pos_mask = same & ~eye
            pos = torch.where(pos_mask.any(1), pos_mask.float().argmax(1), torch.arange(n, device=o.device))
            neg_mask = ~same
            neg = torch.where(neg_mask.any(1), neg_mask.float().argmax(1), torch.arange(n, device=o.device))
            return o, o[pos], o[neg]

        return triplets, ident
    if name == "HingeEmbeddingLoss":
        return (lambda o, y: (1 - F.softmax(o, -1), 2 * one_hot(o, y) - 1)), ident
    if name == "CosineEmbeddingLoss":
        return (lambda o, y: (o, one_hot(o, y), torch.ones(o.shape[0], device=o.device))), ident
    if name == "CTCLoss":

        def ctc(o, y):
            log_probs = F.log_softmax(o.float(), -1).unsqueeze(0)  # (T=1, N, C)
            n = o.shape[0]
            lengths = torch.ones(n, dtype=torch.long, device=o.device)
            return log_probs, (y + 1)[:, None], lengths, lengths

        return ctc, lambda o: o[:, 1:]
    if name == "MultiLabelSoftMarginLoss":  # pragma: no cover - handled above
        return (lambda o, y: (o, one_hot(o, y))), ident
    return (lambda o, y: (o, one_hot(o, y))), ident


def build_loss(name: str, args: dict | None = None, adapter: str = "classification") -> LossAdapter:
    """Build loss ``name`` with ``args`` and the ``adapter`` that feeds it ("classification" or "none")."""
    args = dict(args or {})
    name = loss_name(name)
    cls = check_loss(name, args)
    if name == "KLDivLoss":
        args.setdefault("reduction", "batchmean")
    if name == "CTCLoss":
        args.setdefault("zero_infinity", True)
    try:
        module = cls(**args)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"recipe field 'loss.args': {name}({args}) failed: {e}") from None
    if adapter == "none":
        return LossAdapter(name, module, None, lambda o: o)
    adapt, scores = _classification_adapter(name)
    return LossAdapter(name, module, adapt, scores)
