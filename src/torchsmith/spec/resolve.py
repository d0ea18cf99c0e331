"""Type names in a spec -> the callables that build the modules.

A ``type`` is looked up, in this order:

1. a block defined in the spec's own ``blocks`` section (handled by the builder);
2. a module registered with :func:`register_module`;
3. a ``torch.nn`` layer (``Linear``, ``nn.Linear`` or ``torch.nn.Linear``);
4. a torchsmith block (any name in ``torchsmith.blocks.__all__``; ``blocks.NAME`` is explicit);
5. a zoo model (``resnet18``, ``zoo:resnet18``), or ``torchvision:NAME`` / ``timm:NAME`` (random
   weights, never a download);
6. a dotted import path (``mypkg.layers.Gate``), only when the caller passes ``allow_imports=True``:
   importing runs the module's code, so a spec from elsewhere must not do it by default.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torchsmith.errors import InputError, close_matches

__all__ = ["ResolveError", "Target", "register_module", "registered_modules", "resolve_type"]

_USER: dict[str, Callable[..., Any]] = {}
_CONTAINERS = {
    "Module",
    "Sequential",
    "ModuleList",
    "ModuleDict",
    "ParameterList",
    "ParameterDict",
    "Container",
}
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class ResolveError(ValueError):
    """A type that cannot be resolved or called as written; the builder adds the spec path."""


@dataclass(frozen=True)
class Target:
    """A resolved ``type``: what to call, how to describe it, and its signature when known."""

    name: str
    factory: Callable[..., Any]
    kind: str  # "user", "nn", "block", "zoo", "torchvision", "timm", "import"
    signature: inspect.Signature | None


def register_module(
    name_or_factory: str | Callable[..., Any] | None = None, *, overwrite: bool = False
) -> Any:
    """Make a module class or factory usable as a spec ``type`` (decorator or plain call).

    >>> import torch.nn as nn
    >>> @register_module("Gate")
    ... class Gate(nn.Module):
    ...     def __init__(self, channels: int):
    ...         super().__init__()
    ...         self.fc = nn.Linear(channels, channels)
    ...     def forward(self, x):
    ...         return x * self.fc(x).sigmoid()
    >>> "Gate" in registered_modules()
    True
    """

    def decorate(factory: Callable[..., Any], name: str | None) -> Callable[..., Any]:
        key = name or getattr(factory, "__name__", None)
        if not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise InputError(f"register_module: {key!r} is not a valid spec type name (letters, digits, _)")
        if key in _USER and _USER[key] is not factory and not overwrite:
            raise InputError(f"register_module: {key!r} is already registered; pass overwrite=True")
        _USER[key] = factory
        return factory

    if callable(name_or_factory):
        return decorate(name_or_factory, None)
    return lambda factory: decorate(factory, name_or_factory)


def registered_modules() -> list[str]:
    """Names registered with :func:`register_module`, sorted."""
    return sorted(_USER)


def _signature(factory: Callable[..., Any]) -> inspect.Signature | None:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    kinds = {p.kind for p in sig.parameters.values()}
    if kinds == {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD} and inspect.isclass(
        factory
    ):
        import torch.nn as nn

        # nn.RNN/LSTM/GRU take (*args, **kwargs) and pass them on to RNNBase after its 'mode'
        if issubclass(factory, nn.RNNBase) and factory is not nn.RNNBase:
            base = inspect.signature(nn.RNNBase.__init__)
            params = [p for n, p in base.parameters.items() if n not in ("self", "mode")]
            return base.replace(parameters=params)
    return sig


@functools.lru_cache(maxsize=1)
def _nn_names() -> tuple[str, ...]:
    import torch.nn as nn

    names = []
    for name in dir(nn):
        obj = getattr(nn, name, None)
        if (
            not name.startswith("_")
            and inspect.isclass(obj)
            and issubclass(obj, nn.Module)
            and name not in _CONTAINERS
        ):
            names.append(name)
    return tuple(names)


def _block_names() -> dict[str, Any]:
    try:
        blocks = importlib.import_module("torchsmith.blocks")
    except Exception:  # the blocks package may not exist yet, or be broken mid-edit
        return {}
    out = {}
    for name in getattr(blocks, "__all__", ()):
        obj = getattr(blocks, name, None)
        if callable(obj):
            out[name] = obj
    return out


def _zoo_names() -> list[str]:
    try:
        from torchsmith.zoo import list_models
    except Exception:
        return []
    try:
        return list_models()
    except Exception:
        return []


def suggest(name: str, choices: Iterable[str]) -> str:
    """Close matches, also across case (``Relu`` -> ``ReLU``, ``conv2D`` -> ``Conv2d``)."""
    choices = list(dict.fromkeys(choices))
    lower: dict[str, str] = {}
    for c in choices:
        lower.setdefault(c.lower(), c)
    hit = lower.get(name.lower())
    if hit is not None and hit != name:
        return f" (did you mean {hit!r}?)"
    found = close_matches(name.lower(), lower)
    if not found:
        return close_matches(name, choices)
    import re as _re

    keys = _re.findall(r"'([^']*)'", found)
    return " (did you mean " + " or ".join(repr(lower[k]) for k in keys if k in lower) + "?)"


def known_names(local: Iterable[str] = ()) -> list[str]:
    """Every bare type name a spec may use right now (for close-match suggestions)."""
    return [*local, *_USER, *_nn_names(), *_block_names(), *_zoo_names()]


def _library(prefix: str, name: str) -> Target:
    from torchsmith.zoo import create_model

    return Target(f"{prefix}:{name}", functools.partial(create_model, f"{prefix}:{name}"), prefix, None)


def resolve_type(name: Any, *, allow_imports: bool = False, local: Iterable[str] = ()) -> Target:
    """Resolve a spec ``type`` (other than a spec-local block) to a :class:`Target`."""
    import torch.nn as nn

    if not isinstance(name, str) or not name.strip():
        raise ResolveError(f"found {name!r}; expected a type name such as 'Linear' or 'torchvision:resnet18'")
    name = name.strip()
    if name in _USER:
        f = _USER[name]
        return Target(name, f, "user", _signature(f))
    bare = name
    for prefix in ("torch.nn.", "nn."):
        if name.startswith(prefix) and "." not in name[len(prefix) :]:
            bare = name[len(prefix) :]
            if bare not in _nn_names():
                raise ResolveError(
                    f"unknown torch.nn layer {bare!r}{suggest(bare, _nn_names())}"
                    + ("; containers are written as chain/list/dict in a spec" if bare in _CONTAINERS else "")
                )
    if bare in _nn_names():
        cls = getattr(nn, bare)
        return Target(bare, cls, "nn", _signature(cls))
    if bare in _CONTAINERS:
        raise ResolveError(
            f"{bare!r} is a container; write it as 'chain' (Sequential), 'list' (ModuleList) "
            "or 'dict' (ModuleDict)"
        )
    blocks = _block_names()
    for prefix in ("torchsmith.blocks.", "blocks."):
        if name.startswith(prefix):
            bare = name[len(prefix) :]
            if bare not in blocks:
                raise ResolveError(f"unknown torchsmith block {bare!r}{close_matches(bare, blocks)}")
    if bare in blocks:
        return Target(bare, blocks[bare], "block", _signature(blocks[bare]))
    if name.startswith(("torchvision:", "timm:")):
        prefix, _, model = name.partition(":")
        if not model:
            raise ResolveError(f"found {name!r}; expected '{prefix}:MODEL_NAME'")
        return _library(prefix, model)
    zoo_name = name[4:] if name.startswith("zoo:") else name
    zoo = _zoo_names()
    if zoo_name in zoo:
        from torchsmith.zoo import create_model, get_entry

        entry = get_entry(zoo_name)
        return Target(zoo_name, functools.partial(create_model, zoo_name), "zoo", _signature(entry.factory))
    if name.startswith("zoo:"):
        raise ResolveError(f"unknown zoo model {zoo_name!r}{close_matches(zoo_name, zoo)}")
    if ":" in name:
        raise ResolveError(f"unknown namespace in {name!r}; expected torchvision:, timm: or zoo:")
    if _DOTTED.match(name):
        return _import(name, allow_imports)
    raise ResolveError(
        f"unknown type {name!r}{suggest(name, known_names(local))}; expected a block defined in "
        "this spec, a registered module, a torch.nn layer, a torchsmith block, a zoo model, or "
        "'torchvision:NAME' / 'timm:NAME'"
    )


def _import(name: str, allow_imports: bool) -> Target:
    if not allow_imports:
        raise ResolveError(
            f"{name!r} would import Python code by path, which runs that code; pass "
            "allow_imports=True (CLI: --allow-imports) if you trust this spec, or register the module "
            "with torchsmith.spec.register_module"
        )
    module_name, _, attr = name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ResolveError(f"cannot import {module_name!r}: {type(e).__name__}: {e}") from None
    obj = getattr(module, attr, None)
    if inspect.isbuiltin(obj) or (inspect.isclass(obj) and not _is_module_class(obj)):
        raise ResolveError(f"{name!r} is not an nn.Module class or a model factory function")
    if obj is None or not callable(obj):
        public = [n for n in dir(module) if not n.startswith("_")]
        raise ResolveError(f"{module_name!r} has no callable {attr!r}{close_matches(attr, public)}")
    return Target(name, obj, "import", _signature(obj))


def _is_module_class(obj: Any) -> bool:
    import torch.nn as nn

    return issubclass(obj, nn.Module)


def check_arguments(target: Target, args: list, kwargs: dict, *, complete: bool) -> None:
    """Bind ``args``/``kwargs`` to ``target``'s signature; ``complete`` also requires every argument.

    Raises :class:`ResolveError` naming the unknown argument (with close matches) or the missing one.
    """
    sig = target.signature
    if sig is None:
        return
    params = sig.parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        for key in kwargs:
            if key not in params or params[key].kind is inspect.Parameter.POSITIONAL_ONLY:
                names = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
                raise ResolveError(
                    f"{target.name} has no argument {key!r}{close_matches(key, names)}; "
                    f"its arguments are: {', '.join(names) or '(none)'}"
                )
    try:
        if complete:
            sig.bind(*args, **kwargs)
        else:
            sig.bind_partial(*args, **kwargs)
    except TypeError as e:
        raise ResolveError(f"{target.name}{sig}: {e}") from None
