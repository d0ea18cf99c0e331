"""Classifier layers as the model's library declares them, changed the way that library builds them.

The dataflow search in :mod:`.heads` finds one layer the output depends on alone; libraries know
better, and their ``num_classes=`` is the oracle. Here each library's declaration is read:

* timm: ``reset_classifier`` (it changes both heads of a distilled model, and removes what
  ``num_classes=0`` removes), with the heads named by ``pretrained_cfg['classifier']``;
* torchvision detection: the box predictor (class scores *and* per-class boxes), the mask predictor,
  RetinaNet/FCOS/SSD classification heads (one class block per anchor; box regression untouched);
* torchvision segmentation: FCN/DeepLabV3 ``classifier`` and ``aux_classifier``, LRASPP's two
  classifiers;
* transformers: the model class rebuilt on the meta device from its config with the new
  ``num_labels``: every layer whose shape differs is replaced, and ``config.num_labels`` updated.

Changes are made under a :class:`Transaction`: the replaced module objects are put back as they were
(same objects, so bit-identical and runnable) when the changed model fails its sample pass.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from torchsmith.errors import SurgeryError

__all__ = ["ClassLayer", "Declared", "Transaction", "declared_heads"]


@dataclass
class ClassLayer:
    """A layer whose output rows are ``groups`` blocks of ``classes`` x ``per`` (anchors, box coords)."""

    path: str
    groups: int = 1
    per: int = 1
    init: Callable[[nn.Module], None] | None = None


@dataclass
class Declared:
    """The class-count layers of a model as its library declares them, and how to change them."""

    library: str
    layers: list[ClassLayer]
    num_classes: int
    attrs: list[tuple[str, str]]  # (module path, attribute) holding the class count
    allow_zero: bool = False
    apply: Callable[[nn.Module, int], None] | None = None  # the library's own way (timm, transformers)
    sample: tuple | None = None  # example inputs for the check pass, when a guess would not fit


class Transaction:
    """Snapshot of every module's registered children, parameters, buffers and plain attributes:
    ``rollback`` puts the same objects back (nothing is copied, nothing is changed in place)."""

    def __init__(self, model: nn.Module) -> None:
        self.saved = [
            (m, dict(m.__dict__), dict(m._modules), dict(m._parameters), dict(m._buffers))
            for m in {id(m): m for m in model.modules()}.values()
        ]
        # Hook dictionaries are changed in place (carry_hooks moves torchsmith's hooks along).
        self.hooks = [
            (d, dict(d))
            for m, *_ in self.saved
            for k, d in vars(m).items()
            if "hooks" in k and isinstance(d, dict)
        ]

    def rollback(self) -> None:
        """Restore every module as it was when the transaction began."""
        for m, attrs, mods, params, bufs in self.saved:
            m.__dict__.clear()
            m.__dict__.update(attrs)
            for d, old in ((m._modules, mods), (m._parameters, params), (m._buffers, bufs)):
                d.clear()
                d.update(old)
        for d, old in self.hooks:
            d.clear()
            d.update(old)


def _get(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def _width(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _normal_init(std: float, bias: float = 0.0) -> Callable[[nn.Module], None]:
    def init(m: nn.Module) -> None:
        nn.init.normal_(m.weight, std=std)
        if m.bias is not None:
            nn.init.constant_(m.bias, bias)

    return init


def _xavier_init(m: nn.Module) -> None:
    nn.init.xavier_uniform_(m.weight)
    if m.bias is not None:
        nn.init.constant_(m.bias, 0.0)


def _kaiming_out_init(m: nn.Module) -> None:
    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    if m.bias is not None:
        nn.init.constant_(m.bias, 0.0)


def _last_conv(m: nn.Module) -> tuple[str, nn.Module] | None:
    convs = [(p, c) for p, c in m.named_modules() if isinstance(c, nn.Conv2d | nn.Linear)]
    return convs[-1] if convs else None


def _torchvision_detection(model: nn.Module) -> Declared | None:
    roi = getattr(model, "roi_heads", None)
    box = getattr(roi, "box_predictor", None)
    if isinstance(getattr(box, "cls_score", None), nn.Linear) and isinstance(
        getattr(box, "bbox_pred", None), nn.Linear
    ):
        n = box.cls_score.out_features
        layers = [
            ClassLayer("roi_heads.box_predictor.cls_score"),
            ClassLayer("roi_heads.box_predictor.bbox_pred", per=4),
        ]
        mask = getattr(getattr(roi, "mask_predictor", None), "mask_fcn_logits", None)
        if isinstance(mask, nn.Conv2d):
            layers.append(ClassLayer("roi_heads.mask_predictor.mask_fcn_logits", init=_kaiming_out_init))
        return Declared("torchvision detection (box predictor)", layers, n, [])
    cls_head = getattr(getattr(model, "head", None), "classification_head", None)
    if cls_head is None:
        return None
    base = "head.classification_head"
    if isinstance(getattr(cls_head, "cls_logits", None), nn.Conv2d):  # RetinaNet, FCOS
        n, a = cls_head.num_classes, cls_head.num_anchors
        prior = -math.log((1 - 0.01) / 0.01)  # torchvision's prior probability 0.01
        layer = ClassLayer(f"{base}.cls_logits", groups=a, init=_normal_init(0.01, prior))
        return Declared(
            f"torchvision {type(model).__name__} classification head", [layer], n, [(base, "num_classes")]
        )
    if isinstance(getattr(cls_head, "module_list", None), nn.ModuleList):  # SSD, SSDLite
        n = cls_head.num_columns
        layers = []
        for i, block in enumerate(cls_head.module_list):
            sub, conv = (("", block) if isinstance(block, nn.Conv2d) else _last_conv(block)) or ("", None)
            if conv is None:
                return None
            path = f"{base}.module_list.{i}" + (f".{sub}" if sub else "")
            init = _xavier_init if isinstance(block, nn.Conv2d) else _normal_init(0.03)
            layers.append(ClassLayer(path, groups=_width(conv) // n, init=init))
        return Declared(
            f"torchvision {type(model).__name__} classification head", layers, n, [(base, "num_columns")]
        )
    return None


def _torchvision_segmentation(model: nn.Module) -> Declared | None:
    if type(model).__module__.split(".")[:2] != ["torchvision", "models"]:
        return None
    head = getattr(model, "classifier", None)
    if type(head).__name__ == "LRASPPHead":
        n = head.low_classifier.out_channels
        layers = [ClassLayer("classifier.low_classifier"), ClassLayer("classifier.high_classifier")]
        return Declared("torchvision LRASPP (two classifiers)", layers, n, [])
    if type(head).__name__ not in ("DeepLabHead", "FCNHead"):
        return None
    layers = []
    for name in ("classifier", "aux_classifier"):
        found = (
            _last_conv(getattr(model, name)) if isinstance(getattr(model, name, None), nn.Module) else None
        )
        if found:
            layers.append(ClassLayer(f"{name}.{found[0]}"))
    n = _width(_get(model, layers[0].path))
    return Declared(f"torchvision {type(model).__name__} classifier", layers, n, [])


def _timm(model: nn.Module) -> Declared | None:
    if not type(model).__module__.startswith("timm.") or not callable(
        getattr(model, "reset_classifier", None)
    ):
        return None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") if isinstance(cfg, dict) else None
    names = [names] if isinstance(names, str) else list(names or [])
    layers = []
    for name in names:
        try:
            m = _get(model, name)
        except AttributeError:
            continue
        if isinstance(m, nn.Linear | nn.Conv2d):
            layers.append(ClassLayer(name))
    n = getattr(model, "num_classes", None)
    if not isinstance(n, int):
        return None

    def apply(target: nn.Module, num_classes: int) -> None:
        target.reset_classifier(num_classes, **_timm_kept(target))

    return Declared(f"timm {type(model).__name__}.reset_classifier", layers, n, [], True, apply)


def _timm_kept(model: nn.Module) -> dict[str, Any]:
    """What a timm ``reset_classifier`` would reset to its own default but ``num_classes=`` keeps: the
    distilled head (RepVit's ``reset_classifier(n)`` drops ``head_dist`` unless told
    ``distillation=True``; ``create_model(..., num_classes=n)`` keeps it)."""
    try:
        params = inspect.signature(model.reset_classifier).parameters
    except (TypeError, ValueError):
        return {}
    if "distillation" not in params:
        return {}
    getter = getattr(model, "get_classifier", None)
    for owner in (model, getter() if callable(getter) else None):
        value = getattr(owner, "distillation", None)
        if isinstance(value, bool):
            return {"distillation": value}
    return {}


def _transformers(model: nn.Module) -> Declared | None:
    config = getattr(model, "config", None)
    if not type(model).__module__.startswith("transformers.") or not isinstance(
        getattr(config, "num_labels", None), int
    ):
        return None
    n = config.num_labels

    def reference(num_classes: int) -> nn.Module:
        cfg = copy.deepcopy(config)
        cfg.num_labels = num_classes
        with torch.device("meta"):
            return type(model)(cfg)

    ref = reference(n + 1)
    if not _differing(model, ref):
        return None  # a base model: the class count is not in any layer

    def apply(target: nn.Module, num_classes: int) -> None:
        ref = reference(num_classes)
        for path in _differing(target, ref):
            new = copy.deepcopy(_get(ref, path))
            old = _get(target, path)
            dev = next((t.device for t in old.parameters()), torch.device("cpu"))
            dtype = next((t.dtype for t in old.parameters() if t.is_floating_point()), None)
            new = new.to_empty(device=dev)
            if dtype is not None:
                new = new.to(dtype)
            init = getattr(target, "_init_weights", None)
            for sub in new.modules():
                if callable(init):
                    init(sub)
                elif callable(getattr(sub, "reset_parameters", None)):
                    sub.reset_parameters()
            parent, _, name = path.rpartition(".")
            setattr(_get(target, parent), name, new)
        target.config.num_labels = num_classes
        if isinstance(getattr(target, "num_labels", None), int):
            target.num_labels = num_classes

    layers = [
        ClassLayer(p) for p in _differing(model, ref) if isinstance(_get(model, p), nn.Linear | nn.Conv2d)
    ]
    return Declared(
        f"transformers {type(model).__name__} (config.num_labels)",
        layers,
        n,
        [],
        True,
        apply,
        _hf_sample(config),
    )


def _hf_sample(config: Any) -> tuple:
    """A small first positional input from a transformers config: pixels, or token ids."""
    vision = getattr(config, "vision_config", None) or config
    size = getattr(vision, "image_size", None)
    if isinstance(size, list | tuple):
        size = size[-1]
    if isinstance(size, int):
        return (torch.zeros(1, getattr(vision, "num_channels", 3), size, size),)
    if isinstance(getattr(vision, "num_channels", None), int) and getattr(vision, "embedding_size", None):
        return (torch.zeros(1, vision.num_channels, 64, 64),)  # convolutional (ResNet): any size
    return (torch.ones(1, 8, dtype=torch.long),)


def _differing(model: nn.Module, ref: nn.Module) -> list[str]:
    """Outermost module paths whose type or parameter shapes differ between ``model`` and ``ref``."""
    mine = dict(model.named_modules())
    out: list[str] = []
    for path, r in ref.named_modules():
        if not path or any(path.startswith(p + ".") for p in out):
            continue
        m = mine.get(path)
        shapes = lambda x: [(k, tuple(v.shape)) for k, v in x.named_parameters()]  # noqa: E731
        if m is None or type(m) is not type(r) or shapes(m) != shapes(r):
            out.append(path)
    return out


def declared_heads(model: nn.Module) -> Declared | None:
    """The model's class-count layers as its library declares them, or None (use the dataflow)."""
    for find in (_timm, _transformers, _torchvision_detection, _torchvision_segmentation):
        try:
            found = find(model)
        except Exception:  # a declaration that cannot be read (a config the class rejects): dataflow
            found = None
        if found is not None and (found.layers or found.apply is not None):
            return found
    return None


def new_class_layer(
    old: nn.Module, layer: ClassLayer, old_n: int, n: int, keep: Sequence[int] | None
) -> nn.Module:
    """A layer like ``old`` with ``groups * n * per`` outputs, initialised as its library does;
    ``keep`` copies the rows of those old classes (in every group) to the new classes 0..len-1."""
    kw = {"device": old.weight.device, "dtype": old.weight.dtype}
    width = layer.groups * n * layer.per
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, width, bias=old.bias is not None, **kw)
    else:
        new = type(old)(
            old.in_channels,
            width,
            old.kernel_size,
            stride=old.stride,
            padding=old.padding,
            dilation=old.dilation,
            groups=old.groups,
            bias=old.bias is not None,
            **kw,
        )
    if layer.init is not None:
        with torch.no_grad():
            layer.init(new)
    if keep:
        with torch.no_grad():
            for name in ("weight", "bias"):
                src, dst = getattr(old, name), getattr(new, name)
                if src is None:
                    continue
                s = src.view(layer.groups, old_n, layer.per, *src.shape[1:])
                d = dst.view(layer.groups, n, layer.per, *dst.shape[1:])
                d[:, : len(keep)] = s[:, list(keep)]
    new.weight.requires_grad_(old.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(old.bias.requires_grad)
    return new


def check_keep(keep: Sequence[int] | None, old_n: int, n: int, what: str) -> list[int] | None:
    """``keep`` as a list of old class indices, or a SurgeryError naming what is wrong."""
    if keep is None:
        return None
    keep = [int(k) for k in keep]
    bad = [k for k in keep if not 0 <= k < old_n]
    if n == 0 and keep:
        raise SurgeryError("set_num_classes: keep= makes no sense with num_classes=0")
    if bad or len(keep) > n:
        raise SurgeryError(
            f"set_num_classes: keep={keep} must list at most {n} old class indices in 0..{old_n - 1} "
            f"of {what}; bad: {bad or 'too many'}"
        )
    return keep


def copy_kept_rows(old: nn.Module, new: nn.Module, keep: list[int]) -> None:
    """Rows of the kept old classes into a layer the library built (timm, transformers)."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            src, dst = getattr(old, name, None), getattr(new, name, None)
            if src is not None and dst is not None:
                dst[: len(keep)] = src[keep].to(dst.dtype)


def place(new: nn.Module, ref: Any) -> nn.Module:
    """``new`` on the device and floating dtype of tensor ``ref``."""
    return new.to(device=ref.device, dtype=ref.dtype) if ref.is_floating_point() else new.to(ref.device)
