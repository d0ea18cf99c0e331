"""Get, replace, insert and remove submodules by dotted path, or many at once by pattern.

Paths are those of ``model.named_modules()``: ``layer3.5.conv2``, ``features.0``,
``blocks.heads.cls`` (Sequential, ModuleList and ModuleDict included). A wrong path raises a
:class:`~torchsmith.errors.SurgeryError` naming the nearest valid paths.

>>> import torch.nn as nn
>>> from torchsmith.surgery import replace_modules
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU())
>>> replace_modules(net, "type:ReLU", "SiLU").replaced
['1', '3']
"""

from __future__ import annotations

import difflib
import inspect
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from torchsmith.errors import SurgeryError
from torchsmith.surgery._common import carry_hooks, compile_pattern, on_plain_model, place_like, record
from torchsmith.surgery._spec import module_from_spec, module_to_spec
from torchsmith.surgery.report import SurgeryReport, snapshot

__all__ = [
    "get_module",
    "insert_module",
    "remove_module",
    "replace_module",
    "replace_modules",
]


def _path_error(model: nn.Module, path: str, what: str = "path") -> SurgeryError:
    paths = [p for p, _ in model.named_modules() if p]
    parts = path.split(".")
    prefix, node = "", model
    for part in parts:
        child = node._modules.get(part)
        if child is None:
            break
        prefix = f"{prefix}.{part}" if prefix else part
        node = child
    near = difflib.get_close_matches(path, paths, n=3, cutoff=0.5)
    children = [f"{prefix}.{k}" if prefix else k for k in node._modules]
    msg = f"{type(model).__name__} has no submodule at {what} {path!r}"
    if near:
        msg += "; nearest valid paths: " + ", ".join(repr(p) for p in near)
    if children:
        where = f"under {prefix!r}" if prefix else "at the top level"
        shown = ", ".join(repr(c) for c in children[:12]) + (" ..." if len(children) > 12 else "")
        msg += f"; children {where}: {shown}"
    elif prefix:
        msg += f"; {prefix!r} ({type(node).__name__}) has no children"
    return SurgeryError(msg)


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path`` (``""`` is the model itself).

    >>> import torch.nn as nn
    >>> get_module(nn.Sequential(nn.Linear(2, 2)), "0")
    Linear(in_features=2, out_features=2, bias=True)
    """
    if not isinstance(path, str):
        raise SurgeryError(f"module path must be a string like 'layer3.5.conv2', got {path!r}")
    if path == "":
        return model
    node = model
    for part in path.split("."):
        child = node._modules.get(part) if isinstance(node, nn.Module) else None
        if child is None:
            raise _path_error(model, path)
        node = child
    return node


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    if not path:
        raise SurgeryError("this operation needs a submodule path; '' is the model itself")
    get_module(model, path)  # raises with nearest paths
    parent_path, _, name = path.rpartition(".")
    return get_module(model, parent_path), name


def _as_module(new: Any, where: str) -> tuple[nn.Module, dict | None]:
    """Accept a module or a module spec dict; return the module and its spec (None if not describable)."""
    if isinstance(new, dict):
        return module_from_spec(new, where), new
    if isinstance(new, nn.Module):
        return new, module_to_spec(new)
    raise SurgeryError(f"{where}: expected an nn.Module or a module spec dict, got {type(new).__name__}")


@on_plain_model
def replace_module(model: nn.Module, path: str, new: nn.Module | dict) -> SurgeryReport:
    """Put ``new`` at ``path`` in place of the module there; every other weight is untouched.

    ``new`` is moved to the old module's device and dtype. ``new`` may be a module spec dict
    (see ``torchsmith.surgery.module_to_spec``), which is how the operation is replayed.

    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    >>> replace_module(net, "1", nn.GELU()).replaced
    ['1']
    """
    parent, name = _parent(model, path)
    new, spec = _as_module(new, f"replace_module({path!r})")
    before = snapshot(model)
    old = parent._modules[name]
    new = place_like(new, old)
    carry_hooks(old, new)
    setattr(parent, name, new)
    report = SurgeryReport.diff("replace_module", before, model)
    record(model, report, {"op": "replace_module", "path": path, "module": spec if spec else _opaque(new)})
    return report


class _Opaque:
    """Marks a module argument that cannot be recorded (json.dumps fails on it on purpose)."""

    def __init__(self, m: nn.Module) -> None:
        self.name = type(m).__name__


def _opaque(m: nn.Module) -> Any:
    return _Opaque(m)


def _renumber(container: nn.Module, items: list[tuple[str, nn.Module]]) -> None:
    container._modules = OrderedDict(items)


@on_plain_model
def insert_module(
    model: nn.Module,
    path: str,
    new: nn.Module | dict,
    *,
    after: bool = True,
    name: str | None = None,
) -> SurgeryReport:
    """Insert ``new`` right after (or before, ``after=False``) the module at ``path``.

    Inside an ``nn.Sequential`` or ``nn.ModuleList`` the new module joins the sequence (numbered
    containers are renumbered; named ones get ``name``). Anywhere else the module at ``path`` is
    wrapped: ``Sequential(OrderedDict([(old_name, old), (name, new)]))``, so the old module's
    weights move under ``path.old_name`` (the report lists every renamed key).

    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    >>> insert_module(net, "0", nn.ReLU()).added
    ['1']
    """
    parent, old_name = _parent(model, path)
    new, spec = _as_module(new, f"insert_module({path!r})")
    old = parent._modules[old_name]
    new = place_like(new, old)
    before = snapshot(model)
    label = name or type(new).__name__.lower()
    if isinstance(parent, nn.Sequential | nn.ModuleList):
        items = list(parent._modules.items())
        idx = [k for k, _ in items].index(old_name) + (1 if after else 0)
        numbered = all(k.isdigit() for k, _ in items)
        if numbered:
            mods = [m for _, m in items]
            mods.insert(idx, new)
            _renumber(parent, [(str(i), m) for i, m in enumerate(mods)])
        else:
            if label in parent._modules:
                raise SurgeryError(
                    f"insert_module: {parent.__class__.__name__} at {path.rpartition('.')[0]!r} already has "
                    f"a child named {label!r}; pass another name="
                )
            items.insert(idx, (label, new))
            _renumber(parent, items)
    else:
        if label == old_name:
            raise SurgeryError(
                f"insert_module: name {label!r} is the name of the module at {path!r}; pick another"
            )
        pair = [(old_name, old), (label, new)] if after else [(label, new), (old_name, old)]
        setattr(parent, old_name, nn.Sequential(OrderedDict(pair)))
    report = SurgeryReport.diff("insert_module", before, model)
    if report.moved:
        report.notes.append(
            f"{len(report.moved)} module(s) moved with their weights, so their state_dict keys changed "
            "(replay this operation before loading a checkpoint saved after it)"
        )
    record(
        model,
        report,
        {
            "op": "insert_module",
            "path": path,
            "module": spec if spec else _opaque(new),
            "after": after,
            "name": name,
        },
    )
    return report


@on_plain_model
def remove_module(model: nn.Module, path: str) -> SurgeryReport:
    """Remove the module at ``path``.

    From a Sequential/ModuleList/ModuleDict it is deleted (numbered containers renumbered);
    anywhere else the parent's ``forward`` still calls it, so it becomes ``nn.Identity()``.
    """
    parent, name = _parent(model, path)
    before = snapshot(model)
    if isinstance(parent, nn.Sequential | nn.ModuleList):
        items = [(k, m) for k, m in parent._modules.items() if k != name]
        if all(k.isdigit() for k, _ in items):
            items = [(str(i), m) for i, (_, m) in enumerate(items)]
        _renumber(parent, items)
    elif isinstance(parent, nn.ModuleDict):
        del parent[name]
    else:
        setattr(parent, name, nn.Identity())
    report = SurgeryReport.diff("remove_module", before, model)
    if not isinstance(parent, nn.Sequential | nn.ModuleList | nn.ModuleDict):
        report.notes.append(f"{path!r} is called by its parent's forward; it was replaced by nn.Identity()")
    record(model, report, {"op": "remove_module", "path": path})
    return report


# --- replacing many modules by pattern -------------------------------------------------------


def _frozen_bn(old: nn.Module, **kwargs: Any) -> nn.Module:
    from torchvision.ops.misc import FrozenBatchNorm2d

    if not isinstance(old, nn.modules.batchnorm._BatchNorm):
        raise SurgeryError(f"FrozenBatchNorm2d replaces batch norms, not {type(old).__name__}")
    new = place_like(FrozenBatchNorm2d(old.num_features, eps=kwargs.get("eps", old.eps)), old)
    with torch.no_grad():
        if old.affine:
            new.weight.copy_(old.weight)
            new.bias.copy_(old.bias)
        if old.track_running_stats and old.running_mean is not None:
            new.running_mean.copy_(old.running_mean)
            new.running_var.copy_(old.running_var)
    return new


def _group_norm(old: nn.Module, num_groups: int = 32, **kwargs: Any) -> nn.Module:
    weight = getattr(old, "weight", None)
    channels = getattr(old, "num_features", None) or getattr(old, "num_channels", None)
    if channels is None and isinstance(weight, torch.Tensor) and weight.dim() == 1:
        channels = weight.shape[0]  # FrozenBatchNorm2d keeps no channel attribute
    if channels is None:
        raise SurgeryError(
            f"GroupNorm replaces a normalisation layer with channels, not {type(old).__name__}"
        )
    groups = num_groups
    while channels % groups:  # largest divisor of channels not above num_groups
        groups -= 1
    affine = bool(getattr(old, "affine", isinstance(weight, torch.Tensor)))
    new = nn.GroupNorm(groups, channels, eps=kwargs.get("eps", getattr(old, "eps", 1e-5)), affine=affine)
    new = place_like(new, old)
    if affine and getattr(old, "weight", None) is not None:
        with torch.no_grad():
            new.weight.copy_(old.weight)
            new.bias.copy_(old.bias)
    return new


_CONVERTERS: dict[str, Callable[..., nn.Module]] = {
    "FrozenBatchNorm2d": _frozen_bn,
    "GroupNorm": _group_norm,
}


def _factory(new: Any, kwargs: dict) -> Callable[[nn.Module], nn.Module]:
    if isinstance(new, str):
        if new in _CONVERTERS:
            conv = _CONVERTERS[new]
            return lambda old: conv(old, **kwargs)
        cls = getattr(nn, new, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            from torchsmith.errors import close_matches

            choices = list(_CONVERTERS) + [n for n in dir(nn) if n[:1].isupper()]
            raise SurgeryError(
                f"replace_modules: unknown replacement {new!r}{close_matches(new, choices)}; use a "
                f"torch.nn class name (SiLU, GELU, Identity...) or one of {', '.join(_CONVERTERS)}"
            )
        new = cls
    if isinstance(new, type) and issubclass(new, nn.Module):
        cls = new
        params = inspect.signature(cls.__init__).parameters

        def build(old: nn.Module) -> nn.Module:
            kw = dict(kwargs)
            if "inplace" in params and hasattr(old, "inplace") and "inplace" not in kw:
                kw["inplace"] = old.inplace
            return cls(**kw)

        return build
    if isinstance(new, nn.Module):
        raise SurgeryError(
            "replace_modules: pass a class, a name or a function old_module -> new_module, not a module "
            "instance (one instance at several paths would share its weights)"
        )
    if callable(new):
        return new
    raise SurgeryError(f"replace_modules: cannot make modules from {new!r}")


@on_plain_model
def replace_modules(
    model: nn.Module,
    match: str | type | tuple,
    new: str | type | Callable[..., nn.Module],
    **kwargs: Any,
) -> SurgeryReport:
    """Replace every module that ``match`` selects by one made by ``new``.

    ``match``: a glob on paths (``"layer*.*.relu"``), ``"re:REGEX"``, ``"type:ReLU"`` or a class.
    ``new``: a torch.nn class or its name (built with ``kwargs``; ``inplace`` carried over),
    ``"FrozenBatchNorm2d"`` (weights and running statistics carried), ``"GroupNorm"``
    (``num_groups=32``; affine weights carried, running statistics have no counterpart), or a function
    ``old_module -> new_module``. A module registered at several paths is replaced once, everywhere.

    >>> import torchvision
    >>> net = torchvision.models.resnet18(weights=None)
    >>> len(replace_modules(net, "type:BatchNorm2d", "FrozenBatchNorm2d").replaced)
    20
    """
    pred = compile_pattern(match, "replace_modules match")
    make = _factory(new, kwargs)
    before = snapshot(model)
    targets = [(p, m) for p, m in model.named_modules(remove_duplicate=False) if p and pred(p, m)]
    # Skip modules inside a matched module (it is replaced as a whole).
    top = [(p, m) for p, m in targets if not any(p.startswith(q + ".") for q, _ in targets)]
    if not top:
        kinds = sorted({type(m).__name__ for _, m in model.named_modules()})
        raise SurgeryError(
            f"replace_modules: {match!r} matches no module of {type(model).__name__}; module types "
            f"present: {', '.join(kinds)}"
        )
    made: dict[int, nn.Module] = {}
    for path, old in top:
        if id(old) not in made:
            made[id(old)] = place_like(make(old), old)
            carry_hooks(old, made[id(old)])
        parent_path, _, name = path.rpartition(".")
        setattr(get_module(model, parent_path), name, made[id(old)])
    report = SurgeryReport.diff("replace_modules", before, model)
    if new == "GroupNorm" or new is nn.GroupNorm:
        report.notes.append(
            "GroupNorm keeps the affine weights; batch-norm running statistics have no counterpart"
        )
    op = {
        "op": "replace_modules",
        "match": match if isinstance(match, str) else _type_match(match),
        "new": new if isinstance(new, str) else _type_name(new),
    }
    if kwargs:
        op["kwargs"] = kwargs
    record(model, report, op)
    return report


def _type_match(match: Any) -> Any:
    if isinstance(match, type):
        return f"type:{match.__name__}"
    if isinstance(match, tuple):
        return "type:" + ",".join(t.__name__ for t in match)
    return _Opaque(nn.Module())


def _type_name(new: Any) -> Any:
    if isinstance(new, type) and getattr(nn, new.__name__, None) is new:
        return new.__name__
    return _Opaque(nn.Module())
