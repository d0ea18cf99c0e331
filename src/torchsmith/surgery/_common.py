"""Helpers shared by the surgery operations: recording replayable ops, device/dtype, patterns."""

from __future__ import annotations

import fnmatch
import functools
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn as nn

from torchsmith._patterns import compile_regex
from torchsmith.errors import SurgeryError

__all__ = [
    "carry_hooks",
    "compile_pattern",
    "match_path",
    "on_plain_model",
    "place_like",
    "plain_model",
    "record",
]

_DISTRIBUTED = ("DistributedDataParallel", "FullyShardedDataParallel", "FSDPModule")


def plain_model(model: Any, what: str = "surgery") -> nn.Module:
    """The model surgery works on: ``torch.compile``/``DataParallel`` unwrapped; DDP/FSDP refused.

    A compiled model's paths carry ``_orig_mod.``; working on the module inside records paths that
    replay on a fresh model (the compiled wrapper recompiles on the changed module). DDP and FSDP
    register the parameters they synchronise (or shard) when they are built, so a layer changed
    afterwards is not among them and training fails, or silently diverges, a step later.
    """
    if not isinstance(model, nn.Module):
        raise SurgeryError(f"{what}: expected an nn.Module, got {type(model).__name__}")
    while True:
        name = type(model).__name__
        if name == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif name == "DataParallel" and isinstance(getattr(model, "module", None), nn.Module):
            model = model.module  # replicated from .module at every call: changes there are seen
        else:
            break
    for path, m in model.named_modules():
        wrapper = next((c.__name__ for c in type(m).__mro__ if c.__name__ in _DISTRIBUTED), None)
        if wrapper is not None:
            where = f"its submodule {path!r} is" if path else "it is"
            raise SurgeryError(
                f"{what}: {where} wrapped in {wrapper}: do surgery before wrapping. The wrapper "
                "registered the parameters it synchronises when it was built, so a changed layer would "
                "not be trained in step; change the plain model first, then wrap it"
            )
    return model


F = TypeVar("F", bound=Callable[..., Any])


def on_plain_model(fn: F) -> F:
    """Decorator: the first argument goes through :func:`plain_model` (named after ``fn``)."""

    @functools.wraps(fn)
    def wrapper(model: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(plain_model(model, fn.__name__), *args, **kwargs)

    return wrapper  # type: ignore[return-value]


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
