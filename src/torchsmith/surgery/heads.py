"""Find a model's classifier, change its number of classes, or replace it by any module.

The classifier is found from what the model does, not from its class: a sample forward pass on the
meta device lists the layers in the order they run, and the last layer with weights that produces
the model's output (a ``Linear``, or a 1×1 convolution for segmentation and SqueezeNet-style heads)
is the head. This works for torchvision, timm, torchsmith zoo and spec models and for your own; when
it cannot decide it says so and names the candidates.

>>> import torchvision
>>> from torchsmith.surgery import set_num_classes
>>> net = torchvision.models.resnet18(weights=None)
>>> set_num_classes(net, 10).replaced
['fc']
>>> net.fc
Linear(in_features=512, out_features=10, bias=True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from torchsmith.errors import SurgeryError
from torchsmith.surgery._common import carry_hooks, on_plain_model, place_like, record
from torchsmith.surgery._dryrun import dry_run, shape_of
from torchsmith.surgery.paths import _as_module, _opaque, get_module
from torchsmith.surgery.report import SurgeryReport, snapshot

__all__ = ["find_head", "replace_head", "set_num_classes"]

_HEAD_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is_head_layer(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    return isinstance(m, nn.modules.conv._ConvNd) and all(k == 1 for k in m.kernel_size) and m.groups == 1


def _out_width(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _in_width(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels


@on_plain_model
def find_head(model: nn.Module, input_shape: Sequence[int] | None = None, example_inputs: Any = None) -> str:
    """The dotted path of ``model``'s classifier layer (see the module docstring for how).

    >>> import torchvision
    >>> find_head(torchvision.models.vgg11(weights=None))
    'classifier.6'
    """
    cfg = getattr(model, "pretrained_cfg", None)
    declared = cfg.get("classifier") if isinstance(cfg, dict) else None
    if isinstance(declared, list | tuple) and len(declared) > 1:
        raise SurgeryError(
            f"{type(model).__name__} has several classifier heads ({', '.join(map(repr, declared))}); "
            "pass head='path' for each one you want to change"
        )
    run = dry_run(model, input_shape, example_inputs, train=False)
    modules = dict(model.named_modules(remove_duplicate=False))
    weighted = [p for p in run.order if p and any(True for _ in modules[p].parameters(recurse=False))]
    out_shape = shape_of(run.output)
    candidates = [p for p in weighted if _is_head_layer(modules[p])]
    if weighted:
        last = weighted[-1]
        m = modules[last]
        if _is_head_layer(m) and out_shape is not None and len(out_shape) >= 2:
            width = _out_width(m)
            if width in (out_shape[-1] if isinstance(m, nn.Linear) else None, out_shape[1]):
                return last
        reason = (
            f"the last layer with weights to run is {last!r} ({type(m).__name__})"
            f", and the output has shape {list(out_shape) if out_shape else None}"
        )
    else:
        reason = "no layer with weights ran"
    near = ", ".join(repr(c) for c in candidates[-3:]) or "(none)"
    raise SurgeryError(
        f"cannot find the classifier of {type(model).__name__}: {reason}; candidate layers (last to run): "
        f"{near}; pass head='path' to choose one"
    )


def _head_path(model, head, input_shape, example_inputs) -> str:
    if head is None:
        return find_head(model, input_shape, example_inputs)
    get_module(model, head)
    return head


def _new_head_layer(old: nn.Module, n: int) -> nn.Module:
    ref = old.weight
    kw = {"device": ref.device, "dtype": ref.dtype}
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, n, bias=old.bias is not None, **kw)
    cls = type(old) if type(old) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) else nn.Conv2d
    return cls(
        old.in_channels,
        n,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        bias=old.bias is not None,
        **kw,
    )


@on_plain_model
def set_num_classes(
    model: nn.Module,
    num_classes: int,
    *,
    keep: Sequence[int] | None = None,
    head: str | None = None,
    input_shape: Sequence[int] | None = None,
    example_inputs: Any = None,
) -> SurgeryReport:
    """Give ``model`` a new classifier layer with ``num_classes`` outputs; every other weight is kept.

    ``keep``: old class indices whose rows (weights and bias) become the new classes ``0..len(keep)-1``
    (e.g. ImageNet classes you still want); the other new rows are freshly initialised.
    ``num_classes=0`` removes the classifier (the model returns features). ``head`` names the layer when
    it cannot be found. The new layer is created on the old one's device and dtype, and attributes that
    record the class count (timm's ``num_classes``) are updated too.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise SurgeryError(f"num_classes must be a non-negative integer, got {num_classes!r}")
    path = _head_path(model, head, input_shape, example_inputs)
    old = get_module(model, path)
    if not isinstance(old, _HEAD_TYPES):
        raise SurgeryError(
            f"set_num_classes: the head {path!r} is a {type(old).__name__}; it must be a Linear or a "
            "convolution (use replace_head for anything else)"
        )
    old_n = _out_width(old)
    before = snapshot(model)
    if num_classes == 0:
        new: nn.Module = nn.Identity()
        if keep:
            raise SurgeryError("set_num_classes: keep= makes no sense with num_classes=0")
    else:
        new = _new_head_layer(old, num_classes)
        if keep is not None:
            keep = [int(k) for k in keep]
            bad = [k for k in keep if not 0 <= k < old_n]
            if bad or len(keep) > num_classes:
                raise SurgeryError(
                    f"set_num_classes: keep={keep} must list at most {num_classes} old class indices in "
                    f"0..{old_n - 1}; bad: {bad or 'too many'}"
                )
            with torch.no_grad():
                new.weight[: len(keep)] = old.weight[keep]
                if old.bias is not None:
                    new.bias[: len(keep)] = old.bias[keep]
        new.weight.requires_grad_(old.weight.requires_grad)
        if new.bias is not None:
            new.bias.requires_grad_(old.bias.requires_grad)
    parent_path, _, name = path.rpartition(".")
    parent = get_module(model, parent_path)
    carry_hooks(old, new)
    setattr(parent, name, new)
    for owner in {id(model): model, id(parent): parent}.values():
        if isinstance(getattr(owner, "num_classes", None), int) and owner.num_classes == old_n:
            owner.num_classes = num_classes
    report = SurgeryReport.diff("set_num_classes", before, model)
    report.notes.append(
        f"{path}: {old_n} -> {num_classes} classes" + (f", kept old rows {keep}" if keep else "")
    )
    record(model, report, {"op": "set_num_classes", "num_classes": num_classes, "head": path, "keep": keep})
    return report


@on_plain_model
def replace_head(
    model: nn.Module,
    new: nn.Module | dict,
    *,
    head: str | None = None,
    input_shape: Sequence[int] | None = None,
    example_inputs: Any = None,
) -> SurgeryReport:
    """Replace the classifier layer by ``new`` (any module, or a module spec dict).

    The width of the features entering the old head is measured by a meta-device forward pass, and
    ``new`` must accept them: a mismatch raises naming both widths. This is seed S11:

    >>> from collections import OrderedDict
    >>> import torch.nn as nn, torchvision
    >>> net = torchvision.models.resnet50(weights=None)
    >>> r = replace_head(net, nn.Sequential(OrderedDict([
    ...     ("fc1", nn.Linear(2048, 128)), ("relu1", nn.ReLU()), ("dropout1", nn.Dropout(0.5)),
    ...     ("fc2", nn.Linear(128, 10)), ("output", nn.LogSoftmax(dim=1))])))
    >>> r.replaced
    ['fc']
    """
    path = head
    if path is None:
        path = find_head(model, input_shape, example_inputs)
    else:
        get_module(model, path)
    new, spec = _as_module(new, f"replace_head({path!r})")
    run = dry_run(model, input_shape, example_inputs, train=False)
    feats = run.inputs.get(path)
    if not feats:
        raise SurgeryError(
            f"replace_head: the module at {path!r} never runs in a forward pass of {type(model).__name__}"
        )
    x = feats[0]
    first = next((m for m in new.modules() if isinstance(m, _HEAD_TYPES)), None)
    width = x.shape[-1] if isinstance(first, nn.Linear) else (x.shape[1] if x.dim() > 1 else x.shape[-1])
    if first is not None and _in_width(first) != width:
        raise SurgeryError(
            f"replace_head: the features entering {path!r} have shape {list(x.shape)}, so the new head's "
            f"first layer {type(first).__name__} would see width {width} "
            f"({'the last dimension' if isinstance(first, nn.Linear) else 'dimension 1'}), but it expects "
            f"{_in_width(first)}"
        )
    try:
        dry_run(new, example_inputs=(x,), train=False, record=False)
    except SurgeryError as e:
        raise SurgeryError(
            f"replace_head: the new head does not accept the features entering {path!r} "
            f"(shape {list(x.shape)}): {e}"
        ) from None
    old = get_module(model, path)
    before = snapshot(model)
    parent_path, _, name = path.rpartition(".")
    new = place_like(new, old)
    carry_hooks(old, new)
    setattr(get_module(model, parent_path), name, new)
    report = SurgeryReport.diff("replace_head", before, model)
    if isinstance(list(new.modules())[-1], nn.Softmax):
        report.notes.append(
            "the new head ends with Softmax: train it with NLLLoss on its log, not CrossEntropyLoss "
            "(which applies softmax again, seed trap 11); or end it with LogSoftmax"
        )
    record(model, report, {"op": "replace_head", "head": path, "module": spec if spec else _opaque(new)})
    return report
