"""What an export starts from: a model, the shape of its inputs, and what a deployment needs to know.

``export`` takes an ``nn.Module``, a model file written by ``torchsmith.save``, a training checkpoint
(``last.pt``, ``best.pt``), a spec file or a model name. Each gives the model and, where it records
them, its input shape (the spec's ``input_shape``, the weights' crop, the recipe's image size), its
preprocessing and its class names; an explicit ``input_shape`` always wins.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchsmith.errors import InputError

__all__ = ["ExportSource", "resolve_source"]

_SPEC_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class ExportSource:
    """A model ready to export, with what its files record about it."""

    model: Any
    input_names: list[str]
    inputs: dict[str, tuple[tuple[int, ...], str]] | None  # name -> (shape, dtype); None: not known
    preprocessing: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    origin: str = "model"


def resolve_source(source: Any, input_shape: Any = None) -> ExportSource:
    """Turn what the user gave into an :class:`ExportSource` (model in eval mode, on the CPU)."""
    import torch.nn as nn

    if isinstance(source, nn.Module):
        found = _from_module(source, "model")
    elif isinstance(source, (str, os.PathLike)):
        found = _from_path_or_name(source)
    else:
        raise InputError(
            f"export: found a {type(source).__name__}; expected an nn.Module, a saved model or checkpoint "
            "path, a spec file or a model name"
        )
    found.model = found.model.eval()
    if input_shape is not None:
        found.inputs = _given_shapes(input_shape, found.input_names)
    if found.inputs is None:
        raise InputError(
            f"export: the input shape of {found.origin} is not recorded anywhere (no spec input_shape, no "
            "pretrained crop, no recipe image size); give it: input_shape=(1, 3, 224, 224) or "
            "--input-shape 1,3,224,224"
        )
    return found


def _from_module(model: Any, origin: str) -> ExportSource:
    from torchsmith._provenance import get_provenance
    from torchsmith.hub import weights_categories

    record = get_provenance(model)
    names = list(getattr(model, "input_names", None) or ["x"])
    inputs = _spec_inputs(record.get("spec"), names)
    pre = dict((record.get("weights") or {}).get("transforms") or {})
    if inputs is None:
        shape = _declared_shape(model, record, pre)
        inputs = None if shape is None else {names[0]: (shape, "float32")}
    classes = weights_categories(model) or []
    return ExportSource(model, names, inputs, pre, classes, _plain(record), origin)


def _from_path_or_name(source: str | os.PathLike) -> ExportSource:
    path = Path(source)
    if path.is_dir() or path.is_file():
        if path.suffix.lower() in _SPEC_SUFFIXES:
            from torchsmith.spec import build_model

            return _from_module(build_model(path), f"spec {path}")
        from torchsmith.training.api import _is_saved_model

        if _is_saved_model(path):
            from torchsmith.checkpoint import load_model

            return _from_module(load_model(path, map_location="cpu"), f"saved model {path}")
        return _from_run_checkpoint(path)
    if isinstance(source, os.PathLike) or os.sep in str(source):
        raise InputError(f"export: {source}: no such file or folder")
    from torchsmith.zoo import create_model

    return _from_module(create_model(str(source)), f"model {source}")


def _from_run_checkpoint(path: Path) -> ExportSource:
    """A training checkpoint: the recipe it carries says the model, the image size and the classes."""
    from torchsmith.training.api import _model_from_checkpoint
    from torchsmith.training.data import recipe_transforms

    model, state, recipe = _model_from_checkpoint(path, None, "cpu")
    found = _from_module(model, f"checkpoint {path}")
    d = recipe["data"]
    size = d.get("image_size")
    if found.inputs is None and isinstance(size, int):
        found.inputs = {found.input_names[0]: ((1, int(d.get("channels") or 3), size, size), "float32")}
    tf = recipe_transforms(recipe)
    found.preprocessing = {
        "image_size": size,
        "channels": d.get("channels"),
        "transforms": _plain(tf.get("val_transforms") or []),
        **({"weights": found.preprocessing} if found.preprocessing else {}),
    }
    found.classes = [str(c) for c in state.get("classes") or []] or found.classes
    return found


def _declared_shape(model: Any, record: dict, pre: dict) -> tuple[int, ...] | None:
    """An image model's input as its makers declare it: the weights' crop, timm's ``pretrained_cfg``
    ``input_size``, the zoo entry's ``input_shape``; channels from the first convolution (which
    ``set_in_channels`` changed)."""
    crop = pre.get("crop")
    if crop:
        hw = tuple(crop) if isinstance(crop, (list, tuple)) else (int(crop), int(crop))
        return (1, _input_channels(model), *hw)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("input_size"), (list, tuple)):
        return (1, _input_channels(model), *tuple(cfg["input_size"])[1:])
    name = str((record.get("arch") or {}).get("name") or "")
    if name and ":" not in name:
        from torchsmith.zoo import get_entry

        shape = tuple(get_entry(name).input_shape)
        return (shape[0], _input_channels(model, shape[1]), *shape[2:]) if len(shape) == 4 else shape
    return None


def _spec_inputs(spec: Any, names: list[str]) -> dict | None:
    """A spec's recorded ``input_shape`` (one shape, or one per input name) as name -> (shape, dtype)."""
    if isinstance(spec, dict) and isinstance(spec.get("json"), str):  # provenance keeps the spec as text
        try:
            spec = json.loads(spec["json"])
        except ValueError:
            return None
    if not isinstance(spec, dict):
        return None
    shapes = spec.get("input_shape")
    graph_inputs = (spec.get("graph") or {}).get("inputs") if isinstance(spec.get("graph"), dict) else None
    if shapes is None and isinstance(graph_inputs, dict):  # graph: {inputs: {a: [1, 3, 28, 28], ...}}
        shapes = graph_inputs
    if shapes is None:
        return None
    try:
        return _given_shapes(shapes, names)
    except InputError:
        return None


def _given_shapes(value: Any, names: list[str]) -> dict[str, tuple[tuple[int, ...], str]]:
    from torchsmith.spec.graph_plan import parse_input_spec

    if isinstance(value, str):  # the CLI's 1,3,224,224
        try:
            value = [int(v) for v in value.replace("x", ",").split(",") if v.strip()]
        except ValueError:
            raise InputError(f"export: input shape {value!r}: expected integers like 1,3,224,224") from None
    if isinstance(value, dict) and not set(value) <= {"shape", "dtype"}:
        unknown = [k for k in value if k not in names]
        if unknown or set(value) != set(names):
            raise InputError(
                f"export: input shapes given for {sorted(value)}; the model's inputs are {names}"
            )
        return {k: _checked(parse_input_spec(value[k], None, None), k) for k in names}
    if len(names) > 1:
        raise InputError(f"export: the model has inputs {names}; give one shape per input name")
    return {names[0]: _checked(parse_input_spec(value, None, None), names[0])}


def _checked(spec: Any, name: str) -> tuple[tuple[int, ...], str]:
    if spec is None:
        raise InputError(f"export: input {name!r} has no shape")
    return tuple(spec[0]), spec[1]


def _input_channels(model: Any, default: int = 3) -> int:
    import torch.nn as nn

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return default


def _plain(value: Any) -> Any:
    """A JSON-able copy (tuples as lists, anything else as its text)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
