"""Where a model came from, recorded on the module itself so that a checkpoint can rebuild it.

``create_model`` records the zoo/library name and its arguments, ``build_model`` records the spec,
and every surgery operation appends itself. ``torchsmith.save`` writes this record into the
checkpoint's metadata, and ``torchsmith.load_model`` replays it: build, then surgery, then weights,
with no pickle involved.

Metadata keys written by ``save`` (all values are JSON strings):
    ``torchsmith.arch``     {"name": "resnet50", "kwargs": {...}}      (from create_model)
    ``torchsmith.spec``     the model spec as a dict                     (from build_model)
    ``torchsmith.surgery``  [ {"op": "set_num_classes", ...}, ... ]      (replayable operations)
    ``torchsmith.weights``  {"sources": [...], "categories": [...], ...} (pretrained weights: information)
"""

from __future__ import annotations

import copy
from typing import Any

_ATTR = "_torchsmith_provenance"

__all__ = ["add_surgery", "get_provenance", "set_provenance", "set_weights_info"]


def set_provenance(
    model: Any, *, arch: dict | None = None, spec: dict | None = None, weights: dict | None = None
) -> None:
    """Record how ``model`` was built (a zoo/library ``arch`` or a ``spec``), replacing any record.

    ``weights`` describes pretrained weights it was built with (source, licence, categories,
    transforms): information only, never replayed (a rebuild loads the checkpoint's own tensors).
    """
    record: dict[str, Any] = {"surgery": []}
    if weights is not None:
        record["weights"] = copy.deepcopy(weights)
    if arch is not None:
        record["arch"] = copy.deepcopy(arch)
    if spec is not None:
        record["spec"] = copy.deepcopy(spec)
    # object.__setattr__: nn.Module.__setattr__ would be fine too, but this keeps it off _modules.
    object.__setattr__(model, _ATTR, record)


def set_weights_info(model: Any, weights: dict) -> None:
    """Attach the pretrained-weights record (``torchsmith.weights``) to ``model``'s provenance.

    ``load_model`` calls this so that a reloaded model saved again keeps where its weights came from.
    """
    record = getattr(model, _ATTR, None)
    if record is None:
        record = {"surgery": []}
        object.__setattr__(model, _ATTR, record)
    record["weights"] = copy.deepcopy(weights)


def add_surgery(model: Any, op: dict) -> None:
    """Append one replayable surgery operation (a JSON-able dict with an ``"op"`` key)."""
    record = getattr(model, _ATTR, None)
    if record is None:
        record = {"surgery": []}
        object.__setattr__(model, _ATTR, record)
    record["surgery"].append(copy.deepcopy(op))


def get_provenance(model: Any) -> dict:
    """Return a copy of the record: keys ``arch`` and/or ``spec`` when known, and ``surgery``."""
    return copy.deepcopy(getattr(model, _ATTR, None) or {"surgery": []})
