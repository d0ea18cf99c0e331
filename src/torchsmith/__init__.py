"""torchsmith: define, reshape, initialise, transfer, train and save PyTorch models.

The public API is re-exported here and loaded lazily, so ``import torchsmith`` is cheap and does not
import torch until a torch-backed name is used.

>>> import torchsmith
>>> model = torchsmith.create_model("resnet18", num_classes=10)   # doctest: +SKIP
>>> torchsmith.save(model, "resnet18.safetensors")                 # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# The public surface, one entry per concern (see ARCHITECTURE.md): module -> the names it exports.
_PUBLIC: dict[str, list[str]] = {
    "torchsmith.errors": [
        "TorchsmithError", "InputError", "CheckpointError", "SpecError", "RecipeError", "SurgeryError",
        "TransferError",
    ],
    "torchsmith.zoo": ["create_model", "list_models", "register_model"],
    "torchsmith.summary": ["summarize"],
    "torchsmith.devices": ["check_device_env", "set_visible_devices"],
    "torchsmith.checkpoint": [
        "save", "load_model", "read_state_dict", "read_checkpoint", "Checkpoint", "inspect_checkpoint",
        "diff_checkpoints", "verify_checkpoint", "convert_checkpoint", "fit_keys", "strip_wrappers",
    ],
    "torchsmith.spec": ["build_model", "load_spec", "validate_spec"],
    "torchsmith.surgery": [
        "replace_module", "insert_module", "remove_module", "replace_modules", "set_num_classes",
        "replace_head", "set_in_channels", "add_inputs", "return_features", "feature_info", "freeze",
        "unfreeze", "param_groups", "doctor", "apply_surgery", "SurgeryReport",
    ],
    "torchsmith.transfer": ["init_weights", "InitRule", "InitReport", "load_weights", "TransferReport"],
    "torchsmith.hub": ["resolve_weights", "fetch_weights", "list_weights"],
    "torchsmith.training": ["train", "evaluate", "predict", "load_recipe", "TrainResult", "Callback"],
    "torchsmith.training.tune": ["tune_lr", "tune_batch_size"],
    "torchsmith.export": ["export", "ExportReport", "ExportError"],
}  # fmt: skip

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'torchsmith' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
