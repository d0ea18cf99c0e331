"""Find a model's classifier, change its number of classes, or replace it by any module.

The classifier is found from what the model does, not from its class: a sample forward pass on the
meta device records the graph of tensors derived from the input, and the head is the last layer with
weights that the output is a function of alone (a ``Linear``, or a 1×1 convolution for segmentation
and SqueezeNet-style heads). A block's last layer never qualifies (a residual joins after it), so a
model without a classifier is seen to have none, and ``set_num_classes`` adds one. Auxiliary heads
are the heads of a training-mode pass's other outputs.

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
from torchsmith.surgery._declared import (
    Declared,
    Transaction,
    check_keep,
    copy_kept_rows,
    declared_heads,
    new_class_layer,
)
from torchsmith.surgery._dryrun import dry_run, shape_of
from torchsmith.surgery.paths import _as_module, _opaque, get_module
from torchsmith.surgery.report import SurgeryReport, snapshot

__all__ = ["find_aux_heads", "find_head", "replace_head", "set_num_classes"]

_HEAD_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is_head_layer(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    return isinstance(m, nn.modules.conv._ConvNd) and all(k == 1 for k in m.kernel_size) and m.groups == 1


def _out_width(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _in_width(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels


def _own_weights(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False))


def _head_for(run: Any, modules: dict, node: Any) -> str | None:
    """The classifier producing output ``node``: the last layer with weights that the output is a
    function of alone (it dominates the output), when that layer is a Linear or 1x1 convolution.

    A block's last layer does not qualify (a residual joins after it); a model without a classifier
    ends in a norm or a pooling, so None.
    """
    made_from = run.ancestors(node)
    for path in reversed([p for p in run.order if p and _own_weights(modules[p])]):
        if any(k in made_from for k in run.out_keys.get(path, ())) and run.dominates(path, node):
            return path if _is_head_layer(modules[path]) else None
    return None


def _width_matches(m: nn.Module, out_shape: tuple | None) -> bool:
    if out_shape is None or len(out_shape) < 2:
        return False
    return _out_width(m) in ((out_shape[-1] if isinstance(m, nn.Linear) else None), out_shape[1])


def _locate(model: nn.Module, input_shape, example_inputs) -> tuple[str | None, Any]:
    """(head path or None when the model has no classifier, the eval-mode run); raises when unsure."""
    cfg = getattr(model, "pretrained_cfg", None)
    declared = cfg.get("classifier") if isinstance(cfg, dict) else None
    if isinstance(declared, list | tuple) and len(declared) > 1:
        raise SurgeryError(
            f"{type(model).__name__} has several classifier heads ({', '.join(map(repr, declared))}); "
            "pass head='path' for each one you want to change"
        )
    run = dry_run(model, input_shape, example_inputs, train=False)
    modules = dict(model.named_modules(remove_duplicate=False))
    nodes = run.output_nodes()
    out_shape = shape_of(run.output)
    path = _head_for(run, modules, nodes[0]) if nodes else None
    if path is not None and _width_matches(modules[path], out_shape):
        return path, run
    if path is None:
        return None, run
    raise SurgeryError(
        f"cannot find the classifier of {type(model).__name__}: {path!r} ({type(modules[path]).__name__}) "
        f"produces the output, but its width does not match the output shape {list(out_shape or [])}; "
        "pass head='path' to choose one"
    )


@on_plain_model
def find_head(model: nn.Module, input_shape: Sequence[int] | None = None, example_inputs: Any = None) -> str:
    """The dotted path of ``model``'s classifier layer (see the module docstring for how).

    >>> import torchvision
    >>> find_head(torchvision.models.vgg11(weights=None))
    'classifier.6'
    """
    declared = declared_heads(model)
    if declared is not None and len(declared.layers) == 1:
        return declared.layers[0].path  # the library's own declaration (timm, transformers, detectors)
    if declared is not None and len(declared.layers) > 1:
        raise SurgeryError(
            f"{type(model).__name__} has several class layers ({declared.library}): "
            f"{', '.join(repr(layer.path) for layer in declared.layers)}; set_num_classes changes them all, "
            "replace_head needs head='path'"
        )
    path, run = _locate(model, input_shape, example_inputs)
    if path is None:
        raise SurgeryError(
            f"{type(model).__name__} has no classifier: its output (shape "
            f"{list(shape_of(run.output) or [])}) does not come from a Linear or 1x1 convolution alone "
            "(a model built with num_classes=0 returns features); set_num_classes adds one, or pass "
            "head='path'"
        )
    return path


@on_plain_model
def find_aux_heads(
    model: nn.Module, main: str, input_shape: Sequence[int] | None = None, example_inputs: Any = None
) -> list[str]:
    """Auxiliary classifiers: heads of the other outputs of a training-mode pass with ``main``'s width.

    inception_v3's ``AuxLogits.fc`` and googlenet's ``aux1.fc2``/``aux2.fc2`` are only used in
    training mode, where the model returns them next to the main logits.
    """
    run = dry_run(model, input_shape, example_inputs, train=True, min_batch=2)
    modules = dict(model.named_modules(remove_duplicate=False))
    width = _out_width(modules[main])
    found = []
    for node in run.output_nodes()[1:]:
        path = _head_for(run, modules, node)
        if path and path != main and path not in found and _out_width(modules[path]) == width:
            found.append(path)
    return found


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
    aux_heads: Sequence[str] | None = None,
    input_shape: Sequence[int] | None = None,
    example_inputs: Any = None,
) -> SurgeryReport:
    """Give ``model`` a new classifier layer with ``num_classes`` outputs; every other weight is kept.

    ``keep``: old class indices whose rows (weights and bias) become the new classes ``0..len(keep)-1``
    (e.g. ImageNet classes you still want); the other new rows are freshly initialised.
    ``num_classes=0`` removes the classifier (the model returns features). ``head`` names the layer when
    it cannot be found. Auxiliary classifiers (inception_v3's ``AuxLogits``, googlenet's ``aux1``/
    ``aux2``) are found from a training-mode pass and changed too (``aux_heads=[...]`` names them,
    ``[]`` leaves them). A model without a classifier (timm's ``num_classes=0``) gets a new one, as
    ``timm.create_model(num_classes=n)`` would build it (the model's ``reset_classifier`` when it has
    one, else a ``Linear`` applied to the output), reported as added. The new layers are created on the
    old device and dtype, and attributes that record the class count (timm's ``num_classes``) are
    updated too.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise SurgeryError(f"num_classes must be a non-negative integer, got {num_classes!r}")
    declared = declared_heads(model) if head is None and aux_heads is None else None
    if declared is not None:
        return _set_declared(model, declared, num_classes, keep, input_shape, example_inputs)
    if head is None:
        path, run = _locate(model, input_shape, example_inputs)
        if path is None:
            return _add_head(model, num_classes, keep, run)
    else:
        get_module(model, head)
        path = head
    old = get_module(model, path)
    if not isinstance(old, _HEAD_TYPES):
        raise SurgeryError(
            f"set_num_classes: the head {path!r} is a {type(old).__name__}; it must be a Linear or a "
            "convolution (use replace_head for anything else)"
        )
    if aux_heads is None:
        try:
            aux_heads = find_aux_heads(model, path, input_shape, example_inputs)
        except SurgeryError:
            aux_heads = []  # no training-mode pass: no training-only outputs to look at either
    aux = [str(a) for a in aux_heads]
    for a in aux:
        if not isinstance(get_module(model, a), _HEAD_TYPES):
            raise SurgeryError(f"set_num_classes: aux head {a!r} is not a Linear or a convolution")
    old_n = _out_width(old)
    before = snapshot(model)
    notes = []
    for p in [path, *aux]:
        n_was = _swap_head(model, p, num_classes, keep)
        role = "auxiliary head" if p != path else "head"
        notes.append(
            f"{role} {p}: {n_was} -> {num_classes} classes" + (f", kept old rows {keep}" if keep else "")
        )
    parent = get_module(model, path.rpartition(".")[0])
    for owner in {id(model): model, id(parent): parent}.values():
        if isinstance(getattr(owner, "num_classes", None), int) and owner.num_classes == old_n:
            owner.num_classes = num_classes
    report = SurgeryReport.diff("set_num_classes", before, model)
    report.notes += notes
    op = {"op": "set_num_classes", "num_classes": num_classes, "head": path, "keep": keep}
    if aux:
        op["aux_heads"] = aux
    record(model, report, op)
    return report


def _swap_head(model: nn.Module, path: str, num_classes: int, keep: Sequence[int] | None) -> int:
    """Put a ``num_classes`` layer at ``path`` (Identity for 0); returns the old class count."""
    old = get_module(model, path)
    old_n = _out_width(old)
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
                    f"0..{old_n - 1} of {path!r}; bad: {bad or 'too many'}"
                )
            with torch.no_grad():
                new.weight[: len(keep)] = old.weight[keep]
                if old.bias is not None:
                    new.bias[: len(keep)] = old.bias[keep]
        new.weight.requires_grad_(old.weight.requires_grad)
        if new.bias is not None:
            new.bias.requires_grad_(old.bias.requires_grad)
    parent_path, _, name = path.rpartition(".")
    carry_hooks(old, new)
    setattr(get_module(model, parent_path), name, new)
    return old_n


def _set_declared(
    model: nn.Module, decl: Declared, n: int, keep: Any, input_shape: Any, example_inputs: Any
) -> SurgeryReport:
    """Change the class count the way the model's library does (see ``_declared``); the changed
    model must pass a sample forward pass, or every replaced module is put back."""
    paths = [layer.path for layer in decl.layers]
    where = ", ".join(repr(p) for p in paths) or decl.library
    if n == 0 and not decl.allow_zero:
        raise SurgeryError(
            f"set_num_classes(0): {type(model).__name__} ({decl.library}) has no form without classes; "
            f"its class layers are {where}: replace them with replace_module to remove them"
        )
    keep = check_keep(keep, decl.num_classes, n, where)
    if keep and not paths:
        raise SurgeryError(
            f"set_num_classes: keep= needs the old class layer, and {decl.library} names none; "
            "pass head='path'"
        )
    olds = {p: get_module(model, p) for p in paths}
    before = snapshot(model)
    tx = Transaction(model)
    try:
        if decl.apply is not None:
            ref = next(iter(olds.values()), model).weight if olds else next(iter(model.parameters()))
            existing = {id(m) for m in model.modules()}
            with torch.device(ref.device):
                decl.apply(model, n)
            for m in model.modules():
                if id(m) not in existing and ref.is_floating_point():
                    m.to(dtype=ref.dtype)  # the library builds in the default dtype
            for p, old in olds.items():
                new = get_module(model, p) if n else None
                if keep and new is not None:
                    copy_kept_rows(old, new, keep)
                for name in ("weight", "bias"):
                    t = getattr(new, name, None) if new is not None else None
                    if isinstance(t, nn.Parameter) and getattr(old, name, None) is not None:
                        t.requires_grad_(getattr(old, name).requires_grad)
        else:
            for layer in decl.layers:
                old = olds[layer.path]
                new = new_class_layer(old, layer, decl.num_classes, n, keep)
                carry_hooks(old, new)
                parent, _, name = layer.path.rpartition(".")
                setattr(get_module(model, parent), name, new)
            for owner, attr in decl.attrs:
                setattr(get_module(model, owner), attr, n)
            # Same layer types with the same inputs, only more or fewer outputs: correct by
            # construction, so no check pass (a detector's real pass costs seconds).
            return _declared_report(model, decl, n, keep, before, where)
        if input_shape is None and example_inputs is None:
            example_inputs = decl.sample
        # Layers the library built itself: proven by a sample pass before the change is kept.
        dry_run(model, input_shape, example_inputs, train=False, record=False)
    except Exception as e:
        tx.rollback()
        raise SurgeryError(
            f"set_num_classes: changing {where} of {type(model).__name__} ({decl.library}) to {n} classes "
            f"failed ({type(e).__name__}: {e}); the model is unchanged"
        ) from None
    return _declared_report(model, decl, n, keep, before, where)


def _declared_report(
    model: nn.Module, decl: Declared, n: int, keep: Any, before: dict, where: str
) -> SurgeryReport:
    """The report of a declared change: a parameter-free placeholder (Identity) replaced is an addition."""
    report = SurgeryReport.diff("set_num_classes", before, model)
    placeholders = [p for p in report.replaced if not any(k.startswith(p + ".") for k in before["shapes"])]
    report.replaced = [p for p in report.replaced if p not in placeholders]
    report.added = placeholders + report.added
    if decl.num_classes == 0 and n:
        report.notes.append(f"the model had no classifier: added a {n}-class head ({decl.library})")
    else:
        report.notes.append(
            f"{decl.library}: {where} {decl.num_classes} -> {n} classes"
            + (f", kept old rows {keep}" if keep else "")
        )
    record(model, report, {"op": "set_num_classes", "num_classes": n, "head": None, "keep": keep})
    return report


class _ApplyHead:
    """Root forward hook: the model's output goes through the head added by set_num_classes."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, module: nn.Module, args: tuple, out: Any) -> Any:
        return getattr(module, self.name)(out)


def _add_head(model: nn.Module, num_classes: int, keep: Any, run: Any) -> SurgeryReport:
    """A new classifier on a model that has none (timm's num_classes=0), as timm would build it."""
    before = snapshot(model)
    out_shape = shape_of(run.output)
    op = {"op": "set_num_classes", "num_classes": num_classes, "head": None, "keep": None}
    if num_classes == 0:
        report = SurgeryReport.diff("set_num_classes", before, model)
        report.notes.append("the model has no classifier: nothing to remove")
        record(model, report, op)
        return report
    if keep:
        raise SurgeryError("set_num_classes: keep= needs an old classifier, and this model has none")
    if callable(getattr(model, "reset_classifier", None)):
        model.reset_classifier(num_classes)  # the model's own way (timm): pooling and norm as built
        how = f"{type(model).__name__}.reset_classifier({num_classes})"
    elif out_shape is not None and len(out_shape) == 2:
        ref = next(iter(model.parameters()), None)
        kw = {"device": ref.device, "dtype": ref.dtype} if ref is not None and ref.is_floating_point() else {}
        name = next(n for n in ("head", *(f"head_{i}" for i in range(1, 100))) if not hasattr(model, n))
        model.add_module(name, nn.Linear(out_shape[1], num_classes, **kw))
        model.register_forward_hook(_ApplyHead(name))
        how = f"a Linear({out_shape[1]}, {num_classes}) at {name!r} applied to the output by a forward hook"
    else:
        raise SurgeryError(
            f"set_num_classes: {type(model).__name__} has no classifier and its output has shape "
            f"{list(out_shape or [])}, not (batch, features); add a head with replace_module, or pass head="
        )
    report = SurgeryReport.diff("set_num_classes", before, model)
    # The head slot held a parameter-free placeholder (Identity): that is an addition, not a replacement.
    placeholders = [p for p in report.replaced if not any(k.startswith(p + ".") for k in before["shapes"])]
    report.replaced = [p for p in report.replaced if p not in placeholders]
    report.added = placeholders + report.added
    report.notes.append(f"the model had no classifier: added a {num_classes}-class head ({how})")
    record(model, report, op)
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
