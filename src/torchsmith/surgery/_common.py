"""Helpers shared by the surgery operations: recording replayable ops, device/dtype, patterns."""

from __future__ import annotations

import fnmatch
import json
import re
from typing import Any

import torch
import torch.nn as nn

from torchsmith._patterns import compile_regex
from torchsmith.errors import SurgeryError

__all__ = ["carry_hooks", "compile_pattern", "match_path", "place_like", "record"]


def record(model: nn.Module, report: Any, op: dict) -> None:
    """Append ``op`` to the model's provenance (and the report) when it is JSON-able."""
    from torchsmith._provenance import add_surgery

    try:
        json.dumps(op)
    except (TypeError, ValueError):
        bad = [k for k, v in op.items() if not _jsonable(v)]
        report.notes.append(
            f"{op.get('op')}: cannot be replayed ({', '.join(bad)} not describable as JSON; pass names, "
            "numbers or modules from torch.nn/torchvision.ops/torchsmith.blocks to make it replayable)"
        )
        # A marker, so that a replay stops with this explanation instead of a key mismatch later.
        op = {"op": "unreplayable", "original_op": op.get("op"), "arguments": bad}
    add_surgery(model, op)
    report.ops.append(op)


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


def place_like(new: nn.Module, old: nn.Module | None) -> nn.Module:
    """Move ``new`` to the device and floating dtype of ``old``'s first parameter or buffer."""
    if old is None:
        return new
    ref = next(iter(list(old.parameters()) + list(old.buffers())), None)
    if ref is None:
        return new
    kwargs: dict[str, Any] = {"device": ref.device}
    if ref.is_floating_point():
        kwargs["dtype"] = ref.dtype
    return new.to(**kwargs)


def compile_pattern(pattern: str | type | tuple, what: str = "pattern"):
    """A predicate ``(path, module) -> bool`` for a glob, ``re:REGEX``, ``type:Name`` or a class.

    Globs match a module path (``layer*.0.conv?``); a glob also matches everything under a matched
    path when used through :func:`match_path`.
    """
    if isinstance(pattern, type) or (
        isinstance(pattern, tuple) and pattern and all(isinstance(p, type) for p in pattern)
    ):
        return lambda path, m: isinstance(m, pattern)
    if not isinstance(pattern, str) or not pattern:
        raise SurgeryError(
            f"{what}: expected a glob, 're:REGEX', 'type:ClassName' or a class, got {pattern!r}"
        )
    if pattern.startswith("re:"):
        try:
            rx = compile_regex(pattern[3:])  # linear time: patterns come from data too
        except re.error as e:
            raise SurgeryError(f"{what}: bad regular expression {pattern[3:]!r}: {e}") from None
        return lambda path, m: rx.fullmatch(path) is not None
    if pattern.startswith("type:"):
        names = {n.strip() for n in pattern[5:].split(",")}
        return lambda path, m: any(c.__name__ in names for c in type(m).__mro__)
    return lambda path, m: fnmatch.fnmatchcase(path, pattern)


def match_path(name: str, pattern: str) -> bool:
    """True when parameter/module ``name`` matches glob/regex ``pattern`` or lies under a match."""
    if pattern.startswith("re:"):
        try:
            whole, under = compile_regex(pattern[3:]), compile_regex(pattern[3:] + r"\.")
        except re.error as e:
            raise SurgeryError(f"bad regular expression {pattern[3:]!r}: {e}") from None
        return whole.fullmatch(name) is not None or under.match(name) is not None
    if fnmatch.fnmatchcase(name, pattern):
        return True
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts)))


def first_param(m: nn.Module) -> torch.Tensor | None:
    return next(iter(m.parameters()), None)


def carry_hooks(old: nn.Module, new: nn.Module) -> None:
    """Move torchsmith's own hooks (extra inputs, recorded features) from ``old`` to ``new``.

    So that replacing a layer after ``add_inputs``/``return_features`` keeps them working. Hooks
    of other origins are left alone: torchsmith cannot know whether they suit the new module.
    """
    if old is new:
        return
    for key, hook in list(old._forward_pre_hooks.items()):
        if getattr(hook, "torchsmith_hook", False):
            del old._forward_pre_hooks[key]
            new.register_forward_pre_hook(hook)
    for key, hook in list(old._forward_hooks.items()):
        if getattr(hook, "torchsmith_hook", False):
            del old._forward_hooks[key]
            new.register_forward_hook(hook)
