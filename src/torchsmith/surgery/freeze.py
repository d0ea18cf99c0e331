"""Freeze and unfreeze parameters by pattern or position, with batch-norm statistics frozen too (S18).

``requires_grad_(False)`` alone leaves batch norms updating their running statistics in training
mode, and calling ``model.eval()`` on them is undone by the next ``model.train()`` (pytorch#86590).
With ``bn_stats=True`` the selected batch norms stay in eval mode through later ``model.train()``
calls, until :func:`unfreeze` releases them.

>>> import torchvision
>>> from torchsmith.surgery import freeze
>>> net = torchvision.models.resnet18(weights=None)
>>> r = freeze(net, exclude=["layer2", "layer3", "layer4"])   # seed S18: train layer2-4 only
>>> net.conv1.weight.requires_grad, net.layer2[0].conv1.weight.requires_grad
(False, True)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch.nn as nn

from torchsmith.errors import SurgeryError
from torchsmith.surgery._common import match_path, on_plain_model, record
from torchsmith.surgery.paths import get_module
from torchsmith.surgery.report import SurgeryReport, snapshot

__all__ = ["freeze", "frozen_bn_paths", "unfreeze"]


def _stay_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    """Replacement ``train`` for a frozen batch norm: it and its children stay in eval mode."""
    module.training = False
    for child in module.children():
        child.train(False)
    return module


def _as_list(patterns: str | Sequence[str] | None) -> list[str]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        return [patterns]
    out = list(patterns)
    if not all(isinstance(p, str) and p for p in out):
        raise SurgeryError(f"patterns must be strings (globs or 're:REGEX'), got {patterns!r}")
    return out


def _select(model: nn.Module, patterns, before, exclude, op: str) -> tuple[set[str], set[str]]:
    """Names of selected parameters, and paths of selected batch-norm modules."""
    pats, excl = _as_list(patterns), _as_list(exclude)
    names = [n for n, _ in model.named_parameters()]
    if before is not None:
        target = get_module(model, before)
        first = next(iter(target.parameters()), None)
        if first is None:
            raise SurgeryError(f"{op}: before={before!r} names a module without parameters")
        ids = [id(p) for _, p in model.named_parameters()]
        cut = ids.index(id(first))
        chosen = set(names[:cut])
    elif pats:
        chosen = {n for n in names if any(match_path(n, p) for p in pats)}
        unmatched = [p for p in pats if not any(match_path(n, p) for n in names)]
        if unmatched:
            from torchsmith.errors import close_matches

            paths = [p for p, _ in model.named_modules() if p]
            raise SurgeryError(
                f"{op}: pattern {unmatched[0]!r} matches no parameter of {type(model).__name__}"
                f"{close_matches(unmatched[0], paths)}"
            )
    else:
        chosen = set(names)
    chosen = {n for n in chosen if not any(match_path(n, p) for p in excl)}
    bns = set()
    for path, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            own = [f"{path}.{k}" for k, p in m.named_parameters() if p is not None]
            if (own and all(n in chosen for n in own)) or (
                not own
                and (any(match_path(path, p) for p in pats) or (not pats and before is None))
                and not any(match_path(path, p) for p in excl)
            ):
                bns.add(path)
    return chosen, bns


@on_plain_model
def frozen_bn_paths(model: nn.Module) -> list[str]:
    """Paths of batch norms whose statistics are frozen by :func:`freeze` (``bn_stats=True``)."""
    return [p for p, m in model.named_modules() if isinstance(vars(m).get("train"), functools.partial)]


@on_plain_model
def freeze(
    model: nn.Module,
    patterns: str | Sequence[str] | None = None,
    *,
    before: str | None = None,
    exclude: str | Sequence[str] | None = None,
    bn_stats: bool = False,
) -> SurgeryReport:
    """Stop gradients for the selected parameters (all of them when nothing is given).

    ``patterns``: globs or ``re:REGEX`` on parameter names; a pattern naming a module
    (``"layer1"``, ``"layer*.0"``) selects everything under it. ``before="layer2"``: every parameter
    registered before ``layer2``'s first one. ``exclude``: patterns kept trainable. ``bn_stats=True``
    also freezes the running statistics of the selected batch norms, which then stay in eval mode
    through later ``model.train()`` calls. The report has trainable counts before and after.
    """
    chosen, bns = _select(model, patterns, before, exclude, "freeze")
    before_snap = snapshot(model)
    for name, p in model.named_parameters():
        if name in chosen:
            p.requires_grad_(False)
    if bn_stats:
        for path in bns:
            bn = get_module(model, path)
            bn.train = functools.partial(_stay_eval, bn)
            bn.training = False
    report = SurgeryReport.diff("freeze", before_snap, model)
    report.notes.append(
        f"{len(chosen)} parameter tensors frozen"
        + (f"; running statistics of {len(bns)} batch norms frozen" if bn_stats else "")
    )
    op = {
        "op": "freeze",
        "patterns": _as_list(patterns) or None,
        "before": before,
        "exclude": _as_list(exclude) or None,
        "bn_stats": bn_stats,
    }
    record(model, report, op)
    return report


@on_plain_model
def unfreeze(
    model: nn.Module,
    patterns: str | Sequence[str] | None = None,
    *,
    before: str | None = None,
    exclude: str | Sequence[str] | None = None,
) -> SurgeryReport:
    """Make the selected parameters trainable again and release their batch norms' statistics.

    Selection works as in :func:`freeze`. Released batch norms follow the model's mode again
    (they switch to training mode at the next ``model.train()``).
    """
    chosen, bns = _select(model, patterns, before, exclude, "unfreeze")
    before_snap = snapshot(model)
    for name, p in model.named_parameters():
        if name in chosen:
            p.requires_grad_(True)
    released = 0
    for path in bns:
        bn = get_module(model, path)
        if isinstance(vars(bn).get("train"), functools.partial):
            del bn.__dict__["train"]
            released += 1
    report = SurgeryReport.diff("unfreeze", before_snap, model)
    report.notes.append(f"{len(chosen)} parameter tensors trainable; {released} batch norms released")
    op = {
        "op": "unfreeze",
        "patterns": _as_list(patterns) or None,
        "before": before,
        "exclude": _as_list(exclude) or None,
    }
    record(model, report, op)
    return report
