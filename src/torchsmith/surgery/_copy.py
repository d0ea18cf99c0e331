"""Structural copies of a model for dry runs: the user's modules are never run by an analysis.

A forward pass run for analysis on the user's own modules leaves traces: a ``functional_call`` on a
module registered under two names restores the wrong tensors (the real weights ended on the meta
device), and caches filled during the pass (torchvision's anchors, timm's attention masks) keep
tensors made from the sample. So every analysis pass runs on a deep copy: the copy shares no module,
buffer, hook dictionary or cache with the model, while modules shared inside the model stay shared
inside the copy (``copy.deepcopy`` keeps one copy per object).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import torch
import torch.nn as nn

__all__ = ["meta_copy", "real_copy"]


def _tensor_attrs(model: nn.Module) -> list[torch.Tensor]:
    """Tensors a module keeps as plain attributes (caches, index tables), not registered."""
    found = []
    for m in model.modules():
        for v in vars(m).values():
            if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter):
                found.append(v)
    return found


def _memo_keep(memo: dict[int, Any], *objs: Any) -> None:
    # deepcopy's convention: objects put in the memo are kept alive under id(memo), so that their
    # ids cannot be reused by new objects during the copy.
    memo.setdefault(id(memo), []).extend(objs)


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters, buffers and tensor attributes are on the meta device.

    Each real tensor maps to one meta tensor of the same shape, dtype and ``requires_grad`` (so a
    parameter shared by two modules, or a module registered twice, stays shared in the copy). No
    real tensor data is copied: the copy costs memory only for the module objects.
    """
    memo: dict[int, Any] = {}
    tensors = itertools.chain(
        (t for _, t in model.named_parameters(remove_duplicate=False)),
        (t for _, t in model.named_buffers(remove_duplicate=False)),
        _tensor_attrs(model),
    )
    for t in tensors:
        if id(t) in memo:
            continue
        fake = torch.empty_like(t, device="meta")
        if isinstance(t, nn.Parameter):
            fake = nn.Parameter(fake, requires_grad=t.requires_grad)
        memo[id(t)] = fake
        _memo_keep(memo, t)
    return copy.deepcopy(model, memo)


def real_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that shares its parameters (read only, under ``no_grad``) and copies
    everything else: buffers and caches that a forward pass may change are the copy's own."""
    memo: dict[int, Any] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        memo[id(p)] = p
        _memo_keep(memo, p)
    return copy.deepcopy(model, memo)
