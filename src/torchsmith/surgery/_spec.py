"""Describe a module built from library layers as a JSON-able dict, and build it back.

Surgery operations that take a module (``replace_module``, ``replace_head``, ``insert_module``)
record it in this form so that :func:`torchsmith.surgery.apply_surgery` can replay them on a fresh
model without pickling. A module is describable when its class lives in ``torch.nn``,
``torchvision.ops`` or ``torchsmith.blocks`` (containers included) and its constructor arguments can
be read back from attributes of the same name; the description is accepted only when rebuilding it
gives the same ``repr`` and state_dict shapes.

>>> import torch.nn as nn
>>> spec = module_to_spec(nn.Sequential(nn.Linear(4, 2), nn.ReLU()))
>>> module_from_spec(spec)
Sequential(
  (0): Linear(in_features=4, out_features=2, bias=True)
  (1): ReLU()
)
"""

from __future__ import annotations

import importlib
import inspect
from collections import OrderedDict
from typing import Any

import torch.nn as nn

from torchsmith.errors import SurgeryError

__all__ = ["module_from_spec", "module_to_spec"]

_ALLOWED = ("torch.nn.", "torchvision.ops.", "torchsmith.blocks.")
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _type_name(cls: type) -> str:
    for mod in ("torch.nn", "torchvision.ops", "torchsmith.blocks"):
        try:
            if getattr(importlib.import_module(mod), cls.__name__, None) is cls:
                return f"{mod}.{cls.__name__}"
        except ImportError:
            continue
    return f"{cls.__module__}.{cls.__qualname__}"


def _json_value(v: Any) -> Any:
    if isinstance(v, bool | int | float | str) or v is None:
        return v
    if isinstance(v, tuple | list):
        items = [_json_value(x) for x in v]
        return None if any(x is _NO for x in items) else items
    return _NO


_NO = object()


def _describe(m: nn.Module) -> dict | None:
    cls = type(m)
    name = _type_name(cls)
    if not name.startswith(_ALLOWED):
        return None
    if isinstance(m, _CONTAINERS):
        children = []
        for key, child in m._modules.items():
            d = _describe(child)
            if d is None:
                return None
            children.append([key, d])
        return {"type": name, "children": children}
    args: dict[str, Any] = {}
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return None
    for pname, p in list(sig.parameters.items())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or pname in ("device", "dtype"):
            continue
        if pname == "bias" and "bias" in m._parameters:
            args["bias"] = m.bias is not None
            continue
        if hasattr(m, pname):
            v = _json_value(getattr(m, pname))
            if v is _NO:
                return None
            args[pname] = v
        elif p.default is p.empty:
            return None
    return {"type": name, "args": args}


def module_to_spec(module: nn.Module) -> dict | None:
    """A JSON-able description of ``module``, or ``None`` when it cannot be described faithfully."""
    spec = _describe(module)
    if spec is None:
        return None
    try:
        rebuilt = module_from_spec(spec)
    except Exception:
        return None
    if repr(rebuilt) != repr(module) or _shapes(rebuilt) != _shapes(module):
        return None
    return spec


def _shapes(m: nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def module_from_spec(spec: dict, where: str = "module") -> nn.Module:
    """Build the module that :func:`module_to_spec` described. Only library classes are allowed."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise SurgeryError(f"{where}: expected a dict with a 'type' key, got {spec!r}")
    tname = spec["type"]
    if not isinstance(tname, str) or not tname.startswith(_ALLOWED) or "." not in tname:
        raise SurgeryError(
            f"{where}: type {tname!r} is not allowed; module specs may name classes in "
            f"{', '.join(a.rstrip('.') for a in _ALLOWED)}"
        )
    mod_name, _, cls_name = tname.rpartition(".")
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError):
        raise SurgeryError(f"{where}: unknown module type {tname!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise SurgeryError(f"{where}: {tname!r} is not an nn.Module class")
    if "children" in spec:
        items = OrderedDict((str(k), module_from_spec(v, f"{where}.{k}")) for k, v in spec["children"])
        if issubclass(cls, nn.ModuleList):
            return cls(list(items.values()))
        return cls(items)
    args = dict(spec.get("args") or {})
    try:
        return cls(**args)
    except TypeError as e:
        raise SurgeryError(f"{where}: cannot build {tname} with {args}: {e}") from None
