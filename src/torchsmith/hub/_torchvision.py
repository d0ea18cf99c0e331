"""torchvision models with pretrained weights: built by torchvision's own builders, read by torchsmith.

torchvision's builders do more than load a state dict when given ``weights=`` or
``weights_backbone=``: they fix arguments to match the weights (``num_classes``, Inception's
``transform_input``), build detection/segmentation backbones with ``FrozenBatchNorm2d`` and freeze
all but ``trainable_backbone_layers`` of them, and adjust modules after the load (``eps=0`` in the
COCO Faster R-CNN). So the builder runs with the weights enum, while torchsmith swaps in its own
reading of the file (:func:`reads_through_torchsmith`).

A saved model records the weights it was built for (``weights_structure``), and a rebuild passes
the same enum to the same builder with the loading switched off (:func:`structure_only`): the same
modules, buffers and frozen parameters, with nothing fetched, nothing read, nothing downloaded.

>>> from torchsmith.hub._torchvision import build_structure
>>> m = build_structure("fasterrcnn_mobilenet_v3_large_fpn", {},
...                     {"weights_backbone": "MobileNet_V3_Large_Weights.IMAGENET1K_V1"})
>>> type(m.backbone.body["0"][1]).__name__
'FrozenBatchNorm2d'
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import sys
import typing
from collections.abc import Callable, Iterator
from typing import Any

from torchsmith.errors import InputError, TorchsmithError, TransferError
from torchsmith.hub._fetch import hash_prefix_from_name, weights_off_active
from torchsmith.hub.sources import WeightsSource, resolve_weights, torchvision_enum

__all__ = ["build_structure", "create_torchvision", "reads_through_torchsmith", "structure_only"]

_ENUM_NAME = re.compile(r"^[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+$")
_WEIGHT_ARGS = ("weights", "weights_backbone")
_LICENSE = "not stated by torchvision (see its model docs)"


def _enum_name(enum: Any) -> str:
    return f"{type(enum).__name__}.{enum.name}"


def backbone_enum_class(model: str) -> Any:
    """The weights enum class a builder's ``weights_backbone`` takes (None if it takes none)."""
    import torchvision.models as tvm
    from torchvision.models._api import WeightsEnum

    try:
        params = inspect.signature(tvm.get_model_builder(model)).parameters
    except ValueError:
        return None
    param = params.get("weights_backbone")
    if param is None:
        return None
    candidates = [param.annotation, *typing.get_args(param.annotation), type(param.default)]
    for c in candidates:
        if isinstance(c, type) and issubclass(c, WeightsEnum) and c is not WeightsEnum:
            return c
    return None


def backbone_enum(model: str, value: Any) -> Any:
    """``weights_backbone`` given as the enum, ``"Enum.NAME"``, ``"NAME"``, ``"DEFAULT"`` or ``True``."""
    from torchvision.models._api import WeightsEnum

    enum_cls = backbone_enum_class(model)
    if enum_cls is None:
        raise InputError(f"torchvision:{model} takes no weights_backbone")
    if isinstance(value, WeightsEnum):
        if not isinstance(value, enum_cls):
            raise InputError(
                f"weights_backbone for torchvision:{model} must be a {enum_cls.__name__}, "
                f"got {_enum_name(value)}"
            )
        return value
    if value is True or (isinstance(value, str) and value.strip().lower() in ("true", "yes", "1")):
        value = "DEFAULT"
    members = [m.name for m in enum_cls]
    if isinstance(value, str):
        name = value.removeprefix(enum_cls.__name__ + ".")
        if name == "DEFAULT":
            return enum_cls.DEFAULT
        if name in members:
            return enum_cls[name]
    raise InputError(
        f"weights_backbone for torchvision:{model} must be DEFAULT, one of {members} or "
        f"'{enum_cls.__name__}.NAME', got {value!r}"
    )


def _patched_overwrite(replacement: Callable[..., None]) -> list[tuple[Any, Any]]:
    patched = [(m, m._ovewrite_named_param) for name, m in list(sys.modules.items())
               if name.startswith("torchvision.models") and hasattr(m, "_ovewrite_named_param")]  # fmt: skip
    for module, _ in patched:
        module._ovewrite_named_param = replacement
    return patched


@contextlib.contextmanager
def reads_through_torchsmith(progress: bool, read: Callable[[WeightsSource, bool], dict]) -> Iterator[None]:
    """While torchvision builds a model with ``weights=``, its state dicts come from ``read``.

    torchvision's builders also fix some arguments to match the weights (``num_classes``,
    ``transform_input``, ``aux_logits``...); a conflicting argument of the caller's is refused with
    the fix. The fixed values are not recorded as arguments: nested builders fix their own (a
    detection backbone's ``num_classes``), and the rebuild (:func:`build_structure`) passes the same
    weights, so the builder fixes them again.
    """
    import torchvision.models  # noqa: F401  (loads the builder modules)
    from torchvision.models._api import WeightsEnum

    def get_state_dict(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        filename = os.path.basename(self.url)
        src = WeightsSource(name=_enum_name(self), kind="url", url=self.url, filename=filename,
                            sha256=hash_prefix_from_name(filename))  # fmt: skip
        return read(src, progress)

    def record_override(kwargs: dict[str, Any], param: str, new_value: Any) -> None:
        if param in kwargs and kwargs[param] != new_value:
            raise InputError(
                f"these weights need {param}={new_value!r}, got {param}={kwargs[param]!r}"
                + (
                    "; build with the weights' classes and call torchsmith.set_num_classes"
                    if param == "num_classes"
                    else ""
                )
            )
        kwargs.setdefault(param, new_value)

    saved = WeightsEnum.get_state_dict
    WeightsEnum.get_state_dict = get_state_dict  # type: ignore[method-assign]
    patched = _patched_overwrite(record_override)
    try:
        yield
    finally:
        WeightsEnum.get_state_dict = saved  # type: ignore[method-assign]
        for module, original in patched:
            module._ovewrite_named_param = original


class _NoState(dict):
    """What ``get_state_dict`` returns in a structure-only build: a load of it does nothing."""


@contextlib.contextmanager
def structure_only() -> Iterator[None]:
    """While torchvision builds with a weights enum, nothing is fetched and nothing is loaded.

    ``get_state_dict`` returns an empty marker and ``load_state_dict`` of that marker is a no-op, so
    every other effect of the weights on the build (frozen BatchNorm, frozen layers, fixed
    arguments, post-load adjustments) happens exactly as in the pretrained build.
    """
    import torch.nn as nn
    import torchvision.models  # noqa: F401
    from torch.nn.modules.module import _IncompatibleKeys
    from torchvision.models._api import WeightsEnum

    saved_get, saved_load = WeightsEnum.get_state_dict, nn.Module.load_state_dict

    def get_state_dict(self: Any, *args: Any, **kwargs: Any) -> dict:
        return _NoState()

    def load_state_dict(self: nn.Module, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(state_dict, _NoState):
            return _IncompatibleKeys([], [])
        return saved_load(self, state_dict, *args, **kwargs)

    WeightsEnum.get_state_dict = get_state_dict  # type: ignore[method-assign]
    nn.Module.load_state_dict = load_state_dict  # type: ignore[method-assign]
    try:
        yield
    finally:
        WeightsEnum.get_state_dict = saved_get  # type: ignore[method-assign]
        nn.Module.load_state_dict = saved_load  # type: ignore[method-assign]


def _structure_enums(model: str, structure: Any) -> dict[str, Any]:
    """Check a recorded ``weights_structure`` ({arg: "Enum.NAME"}) and return the enum members."""
    import torchvision.models as tvm

    if not isinstance(structure, dict) or not set(structure) <= set(_WEIGHT_ARGS):
        raise InputError(
            f"weights_structure must map {' or '.join(_WEIGHT_ARGS)} to a torchvision weights name, "
            f"got {structure!r}"
        )
    out = {}
    for arg, value in structure.items():
        if not isinstance(value, str) or not _ENUM_NAME.match(value):
            raise InputError(f"weights_structure.{arg}: expected 'Enum.NAME', got {value!r}")
        try:
            enum = tvm.get_weight(value)
        except (ValueError, KeyError):
            raise InputError(f"weights_structure.{arg}: torchvision has no weights {value!r}") from None
        expected = tvm.get_model_weights(model) if arg == "weights" else backbone_enum_class(model)
        if expected is None or not isinstance(enum, expected):
            raise InputError(f"weights_structure.{arg}: {value} are not weights of torchvision:{model}")
        out[arg] = enum
    return out


def build_structure(model: str, kwargs: dict[str, Any], structure: dict[str, str]) -> Any:
    """Build ``torchvision:model`` as its builder does for the recorded weights, without loading them.

    ``structure`` maps ``weights``/``weights_backbone`` to enum names (``"ResNet50_Weights.DEFAULT"``
    resolved to its member); the parameters keep their initial values, to be overwritten by a
    checkpoint. Used by ``load_model`` to rebuild a saved pretrained model.
    """
    import torchvision.models as tvm

    if model not in tvm.list_models():
        raise InputError(f"unknown torchvision model {model!r}")
    call = dict(kwargs)
    call.update(_structure_enums(model, structure))
    if "weights_backbone" not in call and backbone_enum_class(model) is not None:
        call["weights_backbone"] = None
    with structure_only():
        try:
            return tvm.get_model(model, **call)
        except (TypeError, ValueError) as e:
            raise InputError(f"torchvision:{model}: {e}") from None


def create_torchvision(
    name: str, kwargs: dict[str, Any], progress: bool, read: Callable[[WeightsSource, bool], dict]
) -> tuple[Any, dict, list[WeightsSource]]:
    """Build torchvision model ``name`` with the weights its kwargs ask for; see :mod:`torchsmith.hub`."""
    import torchvision.models as tvm

    kwargs = dict(kwargs)
    sources: list[WeightsSource] = []
    notes: list[str] = []
    weights = kwargs.pop("weights", None)
    pretrained = kwargs.pop("pretrained", None)
    backbone = kwargs.pop("weights_backbone", None)
    legacy_backbone = kwargs.pop("pretrained_backbone", None)
    if pretrained not in (None, False):
        if weights is not None:
            raise InputError("give weights= or pretrained=, not both")
        weights = "DEFAULT"
        notes.append("pretrained=True is deprecated in torchvision: it means weights='DEFAULT'")
    if legacy_backbone not in (None, False):
        if backbone not in (None, False):
            raise InputError("give weights_backbone= or pretrained_backbone=, not both")
        backbone = "DEFAULT"
        notes.append(
            "pretrained_backbone=True is deprecated in torchvision: it means weights_backbone='DEFAULT'"
        )
    call: dict[str, Any] = dict(kwargs)
    structure: dict[str, str] = {}
    new_classes = None
    if weights is not None:
        enum = torchvision_enum(name, weights)
        sources.append(resolve_weights(f"torchvision:{name}", enum))
        call["weights"] = enum
        structure["weights"] = _enum_name(enum)
        cats = enum.meta.get("categories")
        if "num_classes" in call and cats and call["num_classes"] != len(cats):
            new_classes = call.pop("num_classes")  # load the weights' own head, then replace it
            kwargs.pop("num_classes")  # the rebuild, given the same weights, makes that head again
    if backbone not in (None, False):
        enum = backbone_enum(name, backbone)
        if weights is not None:  # torchvision ignores it: the full weights hold the backbone
            notes.append(f"weights_backbone={_enum_name(enum)} ignored: weights= includes the backbone")
        else:
            call["weights_backbone"] = enum
            structure["weights_backbone"] = _enum_name(enum)
            filename = os.path.basename(enum.url)
            # the backbone's own categories and transforms are not the model's: only where it came from
            meta = {"source_url": enum.url, "license": _LICENSE, "backbone": True}
            sha = hash_prefix_from_name(filename)
            src = WeightsSource(name=f"backbone {_enum_name(enum)}", kind="url", url=enum.url,
                                filename=filename, sha256=sha, meta=meta)  # fmt: skip
            sources.append(src)
    elif backbone_enum_class(name) is not None:
        call["weights_backbone"] = None  # torchvision's default would download the backbone
    # A rebuild for a checkpoint's tensors builds the same structure with loading switched off.
    loading = structure_only() if weights_off_active() else reads_through_torchsmith(progress, read)
    with loading:
        try:
            model = tvm.get_model(name, **call)
        except TorchsmithError:
            raise
        except RuntimeError as e:  # load_state_dict(strict=True) inside torchvision
            raise TransferError(
                f"torchvision:{name}: the pretrained weights do not fit the model: {e}"
            ) from None
        except (ValueError, KeyError) as e:
            raise InputError(f"torchvision:{name}: {e}") from None
    info = {"kwargs": kwargs, "notes": notes, "new_classes": new_classes, "structure": structure}
    return model, info, sources
