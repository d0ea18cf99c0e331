"""Turn ``norm_layer`` / ``act_layer`` arguments into modules.

Every block takes its normalisation and activation as parameters. Each may be given as

* a callable: ``nn.BatchNorm2d`` (called with the channel count) or ``nn.ReLU`` (called with no
  arguments, plus ``inplace=`` when the class accepts it), or ``functools.partial(nn.GroupNorm, 8)``;
* a name, so that specs written in YAML can say ``norm_layer: groupnorm`` (see :data:`NORM_LAYERS`
  and :data:`ACT_LAYERS`);
* ``None`` (or ``"none"``) for no layer at all.

>>> make_norm("batchnorm", 8)
BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
>>> make_act("leaky_relu")
LeakyReLU(negative_slope=0.01)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Union

import torch.nn as nn

from torchsmith.errors import InputError, close_matches

__all__ = [
    "ACT_LAYERS",
    "NORM_LAYERS",
    "LayerArg",
    "get_act_layer",
    "get_norm_layer",
    "make_act",
    "make_norm",
]

#: A norm/activation argument: a module factory, a registered name, or None for "no layer".
LayerArg = Union[Callable[..., nn.Module], str, None]  # noqa: UP007 - a runtime alias on py3.10


def _group_norm(num_channels: int) -> nn.Module:
    # 32 groups as in the GroupNorm paper, fewer when the channel count does not divide.
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if num_channels % g == 0)
    return nn.GroupNorm(groups, num_channels)


def _frozen_bn(num_channels: int) -> nn.Module:
    from torchvision.ops import FrozenBatchNorm2d

    return FrozenBatchNorm2d(num_channels)


NORM_LAYERS: dict[str, Callable[[int], nn.Module]] = {
    "batchnorm": nn.BatchNorm2d,
    "bn": nn.BatchNorm2d,
    "frozen_batchnorm": _frozen_bn,
    "instancenorm": nn.InstanceNorm2d,
    "groupnorm": _group_norm,
    "layernorm": functools.partial(nn.GroupNorm, 1),  # LayerNorm over (C, H, W) of an NCHW map
}

ACT_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "hardswish": nn.Hardswish,
    "prelu": nn.PReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def _lookup(kind: str, value: str, table: dict[str, Any]) -> Any:
    key = value.lower().replace("-", "_")
    if key == "none":
        return None
    if key not in table:
        raise InputError(
            f"unknown {kind} {value!r}{close_matches(key, table)}; "
            f"valid names: {', '.join(sorted(table))}, none"
        )
    return table[key]


def get_norm_layer(norm_layer: LayerArg) -> Callable[[int], nn.Module] | None:
    """Resolve a ``norm_layer`` argument to a factory taking the channel count (or None)."""
    if isinstance(norm_layer, str):
        return _lookup("norm_layer", norm_layer, NORM_LAYERS)
    if norm_layer is not None and not callable(norm_layer):
        raise InputError(f"norm_layer must be a callable, a name or None, got {norm_layer!r}")
    return norm_layer


def get_act_layer(act_layer: LayerArg) -> Callable[..., nn.Module] | None:
    """Resolve an ``act_layer`` argument to a factory taking no arguments (or None)."""
    if isinstance(act_layer, str):
        return _lookup("act_layer", act_layer, ACT_LAYERS)
    if act_layer is not None and not callable(act_layer):
        raise InputError(f"act_layer must be a callable, a name or None, got {act_layer!r}")
    return act_layer


def make_norm(norm_layer: LayerArg, num_channels: int) -> nn.Module | None:
    """A normalisation module for ``num_channels`` channels, or None when ``norm_layer`` is None."""
    factory = get_norm_layer(norm_layer)
    return None if factory is None else factory(num_channels)


def make_act(act_layer: LayerArg, inplace: bool = False) -> nn.Module | None:
    """An activation module, or None. ``inplace`` is passed only to classes that accept it."""
    factory = get_act_layer(act_layer)
    if factory is None:
        return None
    if inplace and _accepts_inplace(factory):
        return factory(inplace=True)
    return factory()


@functools.lru_cache(maxsize=64)
def _accepts_inplace_cached(factory: Any) -> bool:
    try:
        return "inplace" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def _accepts_inplace(factory: Any) -> bool:
    try:
        return _accepts_inplace_cached(factory)
    except TypeError:  # unhashable factory
        return _accepts_inplace_cached.__wrapped__(factory)
