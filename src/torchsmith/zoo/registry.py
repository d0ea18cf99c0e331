"""The model registry: one name -> one factory, plus the ``torchvision:`` and ``timm:`` namespaces.

>>> from torchsmith.zoo import create_model, register_model
>>> @register_model("tiny_mlp", input_shape=(1, 4))
... def tiny_mlp(num_classes: int = 2):
...     import torch.nn as nn
...     return nn.Linear(4, num_classes)
>>> create_model("tiny_mlp", num_classes=3).out_features
3

Names with a prefix build other libraries' models with random weights (never a download):
``torchvision:resnet50`` calls ``torchvision.models.get_model(name, weights=None)``,
``timm:resnet18`` calls ``timm.create_model(name, pretrained=False)``.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

from torchsmith._names import name_matches, natural_key
from torchsmith._provenance import set_provenance
from torchsmith._sandbox import check_kwargs, preload, sandbox
from torchsmith.errors import InputError, close_matches
from torchsmith.zoo import _entries
from torchsmith.zoo._entries import ModelEntry, register_model

__all__ = [
    "ModelEntry",
    "create_model",
    "get_entry",
    "list_models",
    "name_matches",
    "natural_key",
    "register_model",
    "unknown_model_error",
]

_PREFIXES = ("torchvision:", "timm:", "hf:")
_REGISTRY = _entries._REGISTRY  # the same table (kept under this name for callers that read it)


def _ensure_builtin_models() -> None:
    # Lazy discovery: importing the zoo's model package runs their @register_model decorators, which
    # write to torchsmith.zoo._entries (the models never import this module: no circle).
    importlib.import_module("torchsmith.zoo.models")


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the registered zoo models (optionally filtered by an ``fnmatch`` pattern, case
    ignored), in natural order (``resnet18`` before ``resnet101``)."""
    _ensure_builtin_models()
    names = sorted(_entries._REGISTRY, key=natural_key)
    return [n for n in names if pattern is None or name_matches(n, pattern)]


def other_library_names(name: str) -> list[str]:
    """``torchvision:NAME`` / ``timm:NAME`` for a short ``name`` (case ignored) that those libraries know.

    Only called on the error path: importing timm or torchvision costs a second or two.
    """
    found: list[str] = []
    key = name.casefold()
    try:
        import torchvision.models as tvm

        found += [f"torchvision:{n}" for n in tvm.list_models() if n.casefold() == key]
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    try:
        import timm

        found += [f"timm:{n}" for n in timm.list_models() if n.casefold() == key]
        if not any(f.startswith("timm:") for f in found) and timm.is_model(name):
            found.append(f"timm:{name}")  # a tagged name (resnet50.a1_in1k) is not listed
    except ImportError:  # pragma: no cover - timm is optional
        pass
    return found


def unknown_model_error(name: str) -> InputError:
    """The error for a name that is not in the zoo: close zoo names, else the prefixed library names."""
    table = _entries._REGISTRY
    # The zoo name in another case, else the exact name in timm/torchvision, else a zoo name near it.
    same = [n for n in table if n.casefold() == name.casefold()]
    others = same or other_library_names(name)
    hint = (
        " (did you mean " + " or ".join(repr(o) for o in others) + "?)"
        if others
        else close_matches(name, table)
    )
    return InputError(
        f"unknown model {name!r}{hint}; valid zoo models: {', '.join(sorted(table, key=natural_key))}; "
        "or use a 'torchvision:NAME', 'timm:NAME' or 'hf:NAME' model"
    )


def get_entry(name: str) -> ModelEntry:
    """The registry entry for a zoo model ``name``; an :class:`InputError` naming close matches if unknown.

    A name only timm or torchvision has (``efficientnet_b0``) is answered with its prefixed form
    (``'timm:efficientnet_b0' or 'torchvision:efficientnet_b0'``).
    """
    _ensure_builtin_models()
    table = _entries._REGISTRY
    if name not in table:
        raise unknown_model_error(name)
    return table[name]


def _check_kwargs(name: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for key in kwargs:
        if key not in params:
            raise InputError(
                f"model {name!r} has no argument {key!r}{close_matches(key, params)}; "
                f"its arguments are: {', '.join(params) or '(none)'}"
            )


def _create_torchvision(name: str, kwargs: dict[str, Any]) -> Any:
    import torchvision.models as tvm

    valid = tvm.list_models()
    if name not in valid:
        raise InputError(f"unknown torchvision model {name!r}{close_matches(name, valid)}")
    if kwargs.get("weights") not in (None,) or kwargs.get("pretrained"):
        raise InputError(
            "torchsmith never downloads weights: build 'torchvision:"
            f"{name}' with random weights and load a checkpoint with torchsmith.load_weights"
        )
    kwargs = {k: v for k, v in kwargs.items() if k not in ("weights", "pretrained")}
    # Detection/segmentation builders download backbone weights unless told not to.
    if "weights_backbone" in inspect.signature(tvm.get_model_builder(name)).parameters:
        kwargs.setdefault("weights_backbone", None)
    return tvm.get_model(name, weights=None, **kwargs)


def _create_timm(name: str, kwargs: dict[str, Any]) -> Any:
    import timm

    if not timm.is_model(name):
        raise InputError(f"unknown timm model {name!r}{close_matches(name, timm.list_models())}")
    if kwargs.pop("pretrained", False):
        raise InputError(
            f"torchsmith never downloads weights: build 'timm:{name}' with random weights and "
            "load a checkpoint with torchsmith.load_weights"
        )
    return timm.create_model(name, pretrained=False, **kwargs)


_WEIGHT_KWARGS = ("weights", "pretrained", "weights_backbone", "pretrained_backbone")


def _wants_weights(kwargs: dict[str, Any]) -> bool:
    return any(kwargs.get(k) not in (None, False) for k in _WEIGHT_KWARGS)


def create_model(name: str, *, progress: bool = True, **kwargs: Any) -> Any:
    """Build a model by name, with random weights unless pretrained weights are asked for by name.

    Pretrained weights come only from these explicit arguments (see :mod:`torchsmith.hub`):
    ``weights="IMAGENET1K_V2"`` / ``"DEFAULT"`` / the enum (and the deprecated ``pretrained=True``)
    and ``weights_backbone=`` for ``torchvision:`` models; ``pretrained=True`` for ``timm:NAME.TAG``
    and ``timm:hf-hub:ORG/NAME``. The file is downloaded once to the standard cache, hash-checked and
    read by torchsmith's own reader, outside the build sandbox; ``progress`` shows a download bar.
    A file of your own works for every kind of model, zoo names included: ``weights={"url": URL,
    "sha256": HEX}`` (downloaded once to ``$TORCH_HOME/hub/checkpoints``, hash-checked) or
    ``weights={"path": PATH}`` (``sha256`` optional); it must fill every tensor of the model.

    ``name`` is a zoo name (see :func:`list_models`), ``torchvision:NAME`` or ``timm:NAME``. The
    model remembers how it was built, so ``torchsmith.save`` can record it and
    ``torchsmith.load_model`` can rebuild it without pickling code.

    >>> import torchsmith
    >>> torchsmith.create_model("torchvision:resnet18", num_classes=10).fc.out_features
    10
    """
    if not isinstance(name, str) or not name:
        raise InputError(f"model name must be a non-empty string, got {name!r}")
    explicit = kwargs.get("weights")
    if isinstance(explicit, (Mapping, os.PathLike)):  # a file by url or path: any kind of model
        return _create_with_file(name, dict(kwargs), explicit, progress)
    if _wants_weights(kwargs):  # the caller asked by name: the one explicit way to pretrained weights
        return _create_pretrained(name, kwargs, progress)
    kwargs = {k: v for k, v in kwargs.items() if not (k in _WEIGHT_KWARGS and v in (None, False))}
    preload(name)  # torch and the library the name needs are imported before the guard starts
    with sandbox(f"model {name!r}"):  # building never downloads or unpickles (see torchsmith._sandbox)
        model = _create(name, kwargs)
    set_provenance(model, arch={"name": name, "kwargs": kwargs})
    return model


def _create(name: str, kwargs: dict[str, Any]) -> Any:
    if name.startswith(("torchvision:", "timm:")):
        # Other libraries' constructors take file/URL/weights arguments: never those (values from
        # data are also type-checked where the data enters: specs, recipes, load_model).
        check_kwargs(kwargs, f"model {name!r}: argument", types=False)
    if name.startswith("torchvision:"):
        try:
            model = _create_torchvision(name.split(":", 1)[1], dict(kwargs))
        except TypeError as e:
            raise InputError(f"bad arguments for model {name!r}: {e}") from None
    elif name.startswith("timm:"):
        try:
            model = _create_timm(name.split(":", 1)[1], dict(kwargs))
        except TypeError as e:
            raise InputError(f"bad arguments for model {name!r}: {e}") from None
    elif name.startswith("hf:"):
        from torchsmith.zoo.hf_models import create_hf_model  # transformers config, random weights

        model = create_hf_model(name[3:], dict(kwargs))
    elif ":" in name:
        raise InputError(
            f"unknown model namespace in {name!r}; use one of {', '.join(_PREFIXES)} or a zoo name"
        )
    else:
        entry = get_entry(name)
        _check_kwargs(name, entry.factory, kwargs)
        model = entry.factory(**kwargs)
    return model


def _create_with_file(name: str, kwargs: dict[str, Any], weights: Any, progress: bool) -> Any:
    """``weights={"url": ..., "sha256": ...}`` or ``{"path": ...[, "sha256": ...]}`` (or a path object):
    the model is built with random weights as usual (in the sandbox), then the file is fetched,
    hash-checked and loaded completely; every model kind (zoo, ``torchvision:``, ``timm:``,
    ``hf:``) takes it the same way."""
    from torchsmith.hub import fetch_weights, resolve_weights  # lazily: the hub concern
    from torchsmith.transfer import load_weights

    del kwargs["weights"]
    source = resolve_weights(name, weights)
    model = create_model(name, progress=progress, **kwargs)
    path = fetch_weights(source, progress=progress)
    # Every tensor of the model must come from the file: a partial load would leave random weights
    # behind a name that promises a checkpoint.
    load_weights(model, path, strict="target")
    set_provenance(model, arch={"name": name, "kwargs": kwargs}, weights={"sources": [source.describe()]})
    return model


def _create_pretrained(name: str, kwargs: dict[str, Any], progress: bool) -> Any:
    if not name.startswith(("torchvision:", "timm:")):
        raise InputError(
            f"pretrained weights by name exist for 'torchvision:' and 'timm:' models; build {name!r} and "
            "load a file with torchsmith.load_weights(model, path)"
        )
    from torchsmith.hub.pretrained import create_pretrained, finish_pretrained  # lazily: the hub concern

    check_kwargs({k: v for k, v in kwargs.items() if k not in _WEIGHT_KWARGS}, f"model {name!r}: argument",
                 types=False)  # fmt: skip
    try:
        model, record = create_pretrained(name, kwargs, progress=progress)
    except TypeError as e:
        raise InputError(f"bad arguments for model {name!r}: {e}") from None
    # The hub records it and gives a new head where asked (surgery): the zoo never imports surgery.
    finish_pretrained(model, record)
    return model
