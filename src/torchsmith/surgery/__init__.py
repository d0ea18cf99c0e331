"""Model surgery: reshape any ``nn.Module``, keep its weights, and say what changed.

Paths and patterns (:mod:`.paths`), classifier heads (:mod:`.heads`), input channels and extra
inputs (:mod:`.inputs`), extra outputs and feature shapes (:mod:`.features`), freezing
(:mod:`.freeze`), optimizer parameter groups (:mod:`.param_groups`), the trap finder
(:mod:`.doctor`) and declarative replay (:mod:`.ops`). Every operation returns a
:class:`SurgeryReport` and records itself so that ``torchsmith.load_model`` can replay it.
"""

from torchsmith.surgery._spec import module_from_spec, module_to_spec
from torchsmith.surgery.doctor import Finding, doctor
from torchsmith.surgery.features import feature_info, remove_features, return_features
from torchsmith.surgery.freeze import freeze, frozen_bn_paths, unfreeze
from torchsmith.surgery.heads import find_aux_heads, find_head, replace_head, set_num_classes
from torchsmith.surgery.inputs import add_inputs, find_input_layers, set_in_channels
from torchsmith.surgery.ops import OPS, apply_surgery, load_ops
from torchsmith.surgery.param_groups import check_param_groups, format_param_groups, layer_ids, param_groups
from torchsmith.surgery.paths import get_module, insert_module, remove_module, replace_module, replace_modules
from torchsmith.surgery.report import SurgeryReport

__all__ = [
    "OPS",
    "Finding",
    "SurgeryReport",
    "add_inputs",
    "apply_surgery",
    "check_param_groups",
    "doctor",
    "feature_info",
    "find_aux_heads",
    "find_head",
    "find_input_layers",
    "format_param_groups",
    "freeze",
    "frozen_bn_paths",
    "get_module",
    "insert_module",
    "layer_ids",
    "load_ops",
    "module_from_spec",
    "module_to_spec",
    "param_groups",
    "remove_features",
    "remove_module",
    "replace_head",
    "replace_module",
    "replace_modules",
    "return_features",
    "set_in_channels",
    "set_num_classes",
    "unfreeze",
]
