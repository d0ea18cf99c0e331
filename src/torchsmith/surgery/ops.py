"""Replay surgery declaratively: a list of operations (from YAML, a recipe or a checkpoint).

Every surgery function records itself on the model as ``{"op": name, **arguments}`` when its
arguments are JSON-able (module arguments are stored as module specs). ``torchsmith.save`` writes that
list into the checkpoint; replaying it on a freshly built base model gives a model whose state_dict
keys and shapes match the checkpoint, so a reshaped model reloads without pickling it.

>>> import torchvision
>>> from torchsmith.surgery import apply_surgery
>>> net = torchvision.models.resnet18(weights=None)
>>> report = apply_surgery(net, [{"op": "set_num_classes", "num_classes": 10},
...                              {"op": "freeze", "before": "layer3", "bn_stats": True}])
>>> net.fc.out_features, net.layer2[0].conv1.weight.requires_grad
(10, False)
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch.nn as nn

from torchsmith.errors import SurgeryError, close_matches
from torchsmith.surgery._common import on_plain_model
from torchsmith.surgery.report import SurgeryReport, snapshot

__all__ = ["OPS", "apply_surgery", "load_ops"]


def _ops() -> dict[str, Callable[..., SurgeryReport]]:
    from torchsmith.surgery.features import return_features
    from torchsmith.surgery.freeze import freeze, unfreeze
    from torchsmith.surgery.heads import replace_head, set_num_classes
    from torchsmith.surgery.inputs import add_inputs, set_in_channels
    from torchsmith.surgery.paths import insert_module, remove_module, replace_module, replace_modules

    return {
        "replace_module": lambda m, path, module: replace_module(m, path, module),
        "insert_module": lambda m, path, module, after=True, name=None: insert_module(
            m, path, module, after=after, name=name
        ),
        "remove_module": remove_module,
        "replace_modules": lambda m, match, new, kwargs=None: replace_modules(
            m, match, new, **(kwargs or {})
        ),
        "set_num_classes": set_num_classes,
        "replace_head": lambda m, module, head=None: replace_head(m, module, head=head),
        "set_in_channels": set_in_channels,
        "add_inputs": add_inputs,
        "return_features": return_features,
        "freeze": freeze,
        "unfreeze": unfreeze,
    }


OPS = (
    "replace_module",
    "insert_module",
    "remove_module",
    "replace_modules",
    "set_num_classes",
    "replace_head",
    "set_in_channels",
    "add_inputs",
    "return_features",
    "freeze",
    "unfreeze",
)


def load_ops(path: str | os.PathLike) -> list[dict]:
    """Read a list of operations from a YAML or JSON file (a list, or a mapping with key ``surgery``)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise SurgeryError(f"{path}: cannot read surgery operations: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SurgeryError(f"{path}: not valid YAML/JSON: {e}") from None
    if isinstance(data, dict) and "surgery" in data:
        data = data["surgery"]
    if not isinstance(data, list):
        raise SurgeryError(f"{path}: expected a list of operations, got {type(data).__name__}")
    return data


@on_plain_model
def apply_surgery(model: nn.Module, ops: Sequence[dict] | str | os.PathLike) -> SurgeryReport:
    """Apply each operation ``{"op": name, **arguments}`` to ``model`` in order, in place.

    ``ops`` is a list of dicts or the path of a YAML/JSON file holding one. The operations are those
    of ``torchsmith.surgery`` (:data:`OPS`). Returns one report for all of them; errors name the
    operation's index and the argument at fault.
    """
    if isinstance(ops, str | os.PathLike):
        ops = load_ops(ops)
    if not isinstance(ops, Sequence):
        raise SurgeryError(f"apply_surgery: expected a list of operations, got {type(ops).__name__}")
    table = _ops()
    total = SurgeryReport.diff("", snapshot(model), model)
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or "op" not in op:
            raise SurgeryError(f"surgery[{i}]: expected a dict with an 'op' key, got {op!r}")
        name = op["op"]
        if name == "unreplayable":
            raise SurgeryError(
                f"surgery[{i}]: the model was changed by {op.get('original_op')!r} with arguments "
                f"that could not be recorded ({', '.join(op.get('arguments') or [])}); rebuild that "
                "change in code, then load the weights with load_state_dict"
            )
        if name not in table:
            raise SurgeryError(
                f"surgery[{i}]: unknown op {name!r}{close_matches(str(name), OPS)}; valid ops: "
                f"{', '.join(OPS)}"
            )
        fn = table[name]
        args = {k: v for k, v in op.items() if k != "op"}
        _check_args(i, name, fn, args)
        try:
            report = fn(model, **args)
        except SurgeryError as e:
            raise SurgeryError(f"surgery[{i}] ({name}): {e}") from None
        total.merge(report)
    total.op = "+".join(str(op["op"]) for op in ops) or "apply_surgery"
    return total


def _check_args(i: int, name: str, fn: Callable, args: dict[str, Any]) -> None:
    params = list(inspect.signature(fn).parameters.values())[1:]
    valid = [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    for key in args:
        if key not in valid:
            raise SurgeryError(
                f"surgery[{i}] ({name}): unknown argument {key!r}{close_matches(key, valid)}; "
                f"valid: {', '.join(valid)}"
            )
    missing = [
        p.name for p in params if p.default is p.empty and p.kind is not p.VAR_KEYWORD and p.name not in args
    ]
    if missing:
        raise SurgeryError(f"surgery[{i}] ({name}): missing argument(s) {', '.join(map(repr, missing))}")
