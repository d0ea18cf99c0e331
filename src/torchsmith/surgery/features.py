"""Return activations of any layers, at any depth, with or instead of the model's output (S8, S13).

``return_features`` changes the model in place and keeps its class, weights and state_dict keys: a
forward hook on each chosen layer records its output, and a small wrapper set as the instance's
``forward`` returns ``(output, {name: activation})``, or only the dict. When the final output is not
asked for, the pass stops right after the last chosen layer has run, so the rest of the network is
not computed. This works on models FX cannot trace (dynamic control flow), because nothing is traced.

``feature_info`` gives each layer's channels and stride from a meta-device pass, so a neck such as
an FPN can be wired onto any backbone without hand-computed ``in_channels_list``.

>>> import torch, torchvision
>>> from torchsmith.surgery import return_features, feature_info
>>> net = torchvision.models.resnet18(weights=None)
>>> [(f["name"], f["channels"], f["stride"]) for f in feature_info(net, ["layer2", "layer4"])]
[('layer2', 128, 8), ('layer4', 512, 32)]
>>> _ = return_features(net, ["layer2", "layer4"], output=False)
>>> {k: tuple(v.shape) for k, v in net(torch.randn(1, 3, 64, 64)).items()}
{'layer2': (1, 128, 8, 8), 'layer4': (1, 512, 2, 2)}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn as nn

from torchsmith.errors import SurgeryError
from torchsmith.surgery._common import on_plain_model, record
from torchsmith.surgery._dryrun import _tensors, dry_run, shape_of
from torchsmith.surgery.paths import get_module
from torchsmith.surgery.report import SurgeryReport, snapshot

__all__ = ["feature_info", "remove_features", "return_features"]


class _StopForward(BaseException):
    """Raised by the last feature hook when the final output is not needed.

    A BaseException so that a model's own ``except Exception`` cannot swallow it.
    """


class _Config:
    def __init__(self, names: dict[str, str], output: bool, train_only: bool) -> None:
        self.names = names  # feature name -> module path
        self.output = output
        self.train_only = train_only
        self.recording = False
        self.store: dict[str, Any] = {}


class _Capture:
    """Forward hook: keeps the first output of its layer during a recording call."""

    torchsmith_hook = True  # moved along when the layer is replaced (see _common.carry_hooks)

    def __init__(self, cfg: _Config, name: str) -> None:
        self.cfg, self.name = cfg, name

    def __call__(self, module: nn.Module, args: tuple, out: Any) -> None:
        cfg = self.cfg
        if not cfg.recording or self.name in cfg.store:
            return
        cfg.store[self.name] = out
        if not cfg.output and len(cfg.store) == len(cfg.names):
            raise _StopForward


class _FeatureForward:
    """Set as ``model.forward``: runs the class's forward while recording the chosen layers."""

    def __init__(self, model: nn.Module, cfg: _Config) -> None:
        self.model, self.cfg = model, cfg

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        model, cfg = self.model, self.cfg
        forward = type(model).forward
        if cfg.train_only and not model.training:
            return forward(model, *args, **kwargs)
        cfg.store = {}
        cfg.recording = True
        out = None
        try:
            out = forward(model, *args, **kwargs)
        except _StopForward:
            pass
        finally:
            cfg.recording = False
        store, cfg.store = cfg.store, {}
        missing = [n for n in cfg.names if n not in store]
        if missing:
            raise SurgeryError(
                f"return_features: {', '.join(repr(cfg.names[n]) for n in missing)} did not run in "
                "this forward pass"
            )
        feats = {n: store[n] for n in cfg.names}
        return (out, feats) if cfg.output else feats


@on_plain_model
def remove_features(model: nn.Module) -> None:
    """Undo :func:`return_features`: the model returns only its usual output again."""
    cfg = getattr(getattr(model, "__dict__", {}).get("forward"), "cfg", None)
    if cfg is None:
        return
    for m in model.modules():
        for key, hook in list(m._forward_hooks.items()):
            if isinstance(hook, _Capture) and hook.cfg is cfg:
                del m._forward_hooks[key]
    del model.__dict__["forward"]


def _names(features: Sequence[str] | Mapping[str, str] | str) -> dict[str, str]:
    if isinstance(features, str):
        features = [features]
    names = dict(features) if isinstance(features, Mapping) else {p: p for p in features}
    if not names:
        raise SurgeryError("return_features: name at least one module path")
    return names


@on_plain_model
def return_features(
    model: nn.Module,
    features: Sequence[str] | Mapping[str, str] | str,
    *,
    output: bool = True,
    train_only: bool = False,
) -> SurgeryReport:
    """Make ``model(x)`` also return the activations of the layers at ``features``.

    ``features``: module paths (any depth), or a dict ``{name: path}``. With ``output=True`` the model
    returns ``(output, {name: activation})`` (seed S13); with ``output=False`` only the dict, and the
    pass stops after the last of those layers. ``train_only=True`` returns the features only in
    training mode (deep supervision); in eval mode, and so in export, the model returns its usual
    output. Calling it again replaces the previous choice; :func:`remove_features` undoes it.
    A layer that runs several times in one pass gives its first output.
    """
    names = _names(features)
    for name, path in names.items():
        if not isinstance(path, str) or not path:
            raise SurgeryError(f"return_features: feature {name!r} needs a module path, got {path!r}")
        get_module(model, path)
    before = snapshot(model)
    remove_features(model)
    cfg = _Config(names, output, train_only)
    for name, path in names.items():
        get_module(model, path).register_forward_hook(_Capture(cfg, name))
    model.forward = _FeatureForward(model, cfg)
    report = SurgeryReport.diff(
        "return_features",
        before,
        model,
        mechanism=f"forward hooks on {len(names)} module(s) and a forward wrapper"
        + ("" if output else " that stops after the last feature"),
    )
    report.notes.append(
        "model(x) returns "
        + ("(output, features)" if output else "features")
        + (" in training mode, and only its output in eval mode" if train_only else "")
    )
    features_op: Any = names if isinstance(features, Mapping) else list(names)
    record(
        model,
        report,
        {"op": "return_features", "features": features_op, "output": output, "train_only": train_only},
    )
    return report


def _declared_levels(model: nn.Module) -> list[dict]:
    """The feature levels the model declares (timm's ``feature_info``: ``module``, ``num_chs``,
    ``reduction``, ``hook_type``), in their order; one module may be named several times."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list | tuple):
        return []
    return [e for e in info if isinstance(e, dict) and isinstance(e.get("module"), str)]


def _reduction(entry: dict) -> int | float | None:
    red = entry.get("reduction")
    return red if isinstance(red, int | float) and not isinstance(red, bool) and red > 0 else None


def _channel_sizes(t: Any) -> tuple[int, ...]:
    """The sizes a tensor's channels can have: dimension 1 or the last (channels-last, tokens)."""
    shape = tuple(t.shape)
    return (shape[1], shape[-1]) if len(shape) >= 3 else shape[-1:]


def _fits(t: Any, chs: Any, red: float | None, in_hw: tuple[int, ...]) -> int:
    """How well tensor ``t`` can be a level of ``chs`` channels at stride ``red``: 0 not at all (no
    channel dimension of that size, or a size that stride does not give: a spatial size more than
    twice off the input's / ``red``, a token count other than that grid's plus a few class tokens),
    2 proven by channels and size, 1 by channels only (the size cannot be checked)."""
    if not isinstance(chs, int):
        return 0
    shape = tuple(t.shape)
    layouts = [d for d, ok in ((1, len(shape) >= 3 and shape[1] == chs), (-1, shape[-1] == chs)) if ok]
    if not layouts or not red or not in_hw:
        return 1 if layouts else 0
    if len(shape) == 2 + len(in_hw):
        for d in layouts:
            hw = shape[2:] if d == 1 else shape[1:-1]
            if all(size and 0.5 <= full / size / red <= 2 for size, full in zip(hw, in_hw)):
                return 2
        return 0
    if len(shape) == 3 and -1 in layouts:
        grid = math.prod(max(1, round(full / red)) for full in in_hw)
        return 2 if 0 <= shape[1] - grid <= 8 else 0
    return 1


def _declared_points(
    model: nn.Module, run: Any, levels: list[dict], in_hw: tuple[int, ...] = ()
) -> list[tuple[dict, int | None, str]]:
    """Each declared level as ``(entry, index, why)``: ``index`` is the tensor of its module's output
    that holds it (when the output holds several, as CrossViT's blocks return one tensor per branch:
    the only one with the declared channels and stride; ``None`` for a single tensor); ``why`` is
    empty when that tensor is proven to be the level (it has the declared channels), else says why
    it is not: the module is missing or never runs (HRNet's ``stem``), the level is the module's
    input (``hook_type="forward_pre"``), or its output has other channels (a features wrapper that
    takes the level elsewhere)."""
    modules = dict(model.named_modules())
    seen: dict[str, int] = {}
    out = []
    for e in levels:
        path = e["module"]
        k = seen.get(path, 0)
        seen[path] = k + 1
        index: int | None = None
        why = ""
        if e.get("hook_type", "forward") not in ("forward", None):
            why = f"declared as the input of the module (hook_type {e['hook_type']!r}), not its output"
        elif path not in modules:
            why = "no module at that path"
        elif path not in run.outputs:
            why = "the module does not run in a forward pass"
        else:
            ts = _tensors(run.outputs[path])
            chs = e.get("num_chs")
            if len(ts) == 1 and k > 0:
                why = f"named {k + 1} times, but its output is one tensor"
            elif len(ts) == 1 and isinstance(chs, int) and chs not in _channel_sizes(ts[0]):
                why = f"its output has shape {list(ts[0].shape)}, no dimension of {chs} channels"
            elif len(ts) != 1:
                # several tensors: the k-th naming is the k-th tensor if it has the level's channels
                # and size, else the only tensor that has them; else none is proven (CoaT's parallel
                # outputs all have 152 channels: their sizes tell them apart)
                score = [_fits(t, chs, _reduction(e), in_hw) for t in ts]
                fits = [i for i, f in enumerate(score) if f and f == max(score)]
                if k in fits or len(fits) == 1:  # timm's wrappers take x[0] of a tuple output
                    index = k if k in fits else fits[0]
                else:
                    shapes = ", ".join(str(list(t.shape)) for t in ts[:6])
                    why = (
                        f"its output holds {len(ts)} tensors ({shapes}), "
                        f"{'several' if fits else 'none'} with {chs} channels at stride {e.get('reduction')}"
                    )
        out.append((e, index, why))
    return out


def _refuse_undeclarable(model: nn.Module, points: list[tuple[dict, int | None, str]]) -> None:
    bad = [
        f"{e['module']!r} ({e.get('num_chs')} channels, stride {e.get('reduction')}): {why}"
        for e, _, why in points
        if why
    ]
    if bad:
        raise SurgeryError(
            f"feature_info: {type(model).__name__} declares feature levels that are not the outputs of the "
            "modules it names, so their layers cannot be given (its features wrapper, such as timm's "
            "features_only=True, takes them elsewhere): "
            + "; ".join(bad)
            + ". Build the library's feature extractor (timm.create_model(..., features_only=True)), or name "
            "the layers: feature_info(model, ['path', ...])"
        )


def _stride_at(run: Any, path: str, in_hw: tuple[int, ...], cdim: int = 1) -> int | float | None:
    """The downsampling of ``path``'s output, traced from the strides of the convolutions, poolings
    and strided slices on the way (never the input size divided by the output size, which padding
    makes wrong at sizes that do not divide evenly). ``cdim`` is the channel dimension (1, or -1 for
    channels-last outputs): the spatial size is read beside it."""
    out = run.outputs.get(path)
    spatial = (lambda t: tuple(t.shape[2:])) if cdim == 1 else (lambda t: tuple(t.shape[1:-1]))
    if len({spatial(t) for t in _tensors(out)}) > 1:
        return None  # several outputs at different resolutions (HRNet's branches): no one stride
    shape = shape_of(out)
    stride = run.strides.get(path)
    if stride is None or not shape or not in_hw or len(shape) != 2 + len(in_hw):
        return None
    last = shape[-1] if cdim == 1 else shape[-2]
    if not last:
        return None
    # A layout the tracing cannot follow (downsampling by reshaping) shows as a size more than twice
    # off what the traced stride gives: then the stride is unknown, not guessed.
    if not 0.5 <= in_hw[-1] / last / stride <= 2:
        return None
    return round(stride) if abs(stride - round(stride)) < 1e-6 else round(stride, 3)


_LAST_DIM = (nn.Linear, nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))


def _width_of(m: nn.Module) -> int | None:
    """The feature width a layer produces (or normalises), from its own configuration."""
    for attr in ("out_features", "out_channels", "num_features", "num_channels"):
        v = getattr(m, attr, None)
        if isinstance(v, int):
            return v
    shape = getattr(m, "normalized_shape", None)
    if isinstance(shape, tuple | list) and shape:
        return int(shape[-1])
    return None


def _channel_dim(model: nn.Module, run: Any, path: str, shape: tuple[int, ...]) -> int:
    """1 (channels first) or -1 (channels last: Swin stages, transformer tokens) for ``path``'s output.

    The last layer with weights that ran inside ``path`` (else before it) made the features: the
    dimension equal to its width holds the channels; when both ends match, its kind decides
    (Linear and LayerNorm act on the last dimension; convolutions and batch norms on dimension 1).
    """
    if len(shape) < 3:
        return -1
    modules = dict(model.named_modules(remove_duplicate=False))
    order = [p for p in run.order if p in modules and any(True for _ in modules[p].parameters(recurse=False))]
    inside = [p for p in order if path == "" or p == path or p.startswith(path + ".")]
    before = order[: order.index(inside[0])] if inside else order[: run.order.index(path)]
    maker = (inside or before or [None])[-1]
    m = modules.get(maker) if maker is not None else None
    width = _width_of(m) if m is not None else None
    first, last = shape[1] == width, shape[-1] == width
    if last and not first:
        return -1
    if first and not last:
        return 1
    if first and last:
        return -1 if type(m) in _LAST_DIM else 1
    return 1


def _auto_stages(model: nn.Module, run: Any, in_hw: tuple[int, ...]) -> list[str]:
    """One module per stride: the shallowest module that runs last at that stride."""
    by_stride: dict[float, list[tuple[int, int, str]]] = {}
    for i, path in enumerate(run.order):
        if not path:
            continue
        shape = shape_of(run.outputs.get(path))
        if shape is None or len(shape) != 2 + len(in_hw):
            continue  # not spatial
        cdim = _channel_dim(model, run, path, shape)
        if all(d <= 1 for d in (shape[2:] if cdim == 1 else shape[1:-1])):
            continue  # globally pooled
        stride = _stride_at(run, path, in_hw, cdim)
        if stride is None or stride < 2:
            continue
        by_stride.setdefault(stride, []).append((path.count("."), i, path))
    stages = []
    for stride in sorted(by_stride):
        depth = min(d for d, _, _ in by_stride[stride])
        stages.append(max((i, p) for d, i, p in by_stride[stride] if d == depth)[1])
    return stages


def _entry(
    model: nn.Module,
    run: Any,
    in_hw: tuple[int, ...],
    name: str,
    path: str,
    index: int | None = None,
    declared: dict | None = None,
) -> dict:
    """One feature_info entry: the tensor ``index`` of ``path``'s output (the first when ``None``),
    its channels from its layout (the declared channel count decides between dimension 1 and the
    last when only one of them has it), its stride declared or traced."""
    ts = _tensors(run.outputs[path])
    if index is None and len(ts) > 1:
        index = 0  # a layer whose output holds several tensors: the entry describes the first
    t = ts[index or 0] if ts else None
    shape = tuple(t.shape) if t is not None else None
    channels, cdim = None, 1
    if shape:
        spatial = len(shape) == 2 + len(in_hw) and in_hw
        cdim = _channel_dim(model, run, path, shape) if spatial else -1
        chs = (declared or {}).get("num_chs")
        if spatial and isinstance(chs, int) and (shape[1] == chs) != (shape[-1] == chs):
            cdim = 1 if shape[1] == chs else -1
        channels = shape[cdim]
    stride = _reduction(declared) if declared else None
    if stride is None:
        stride = _stride_at(run, path, in_hw, cdim)
    return {
        "name": name,
        "path": path,
        "index": index,
        "channels": channels,
        "stride": stride,
        "shape": list(shape) if shape else None,
        "layout": "channels_last" if shape and cdim == -1 and len(shape) > 2 else "channels_first",
    }


@on_plain_model
def feature_info(
    model: nn.Module,
    features: Sequence[str] | Mapping[str, str] | str | None = None,
    *,
    input_shape: Sequence[int] | None = None,
) -> list[dict]:
    """Channels, stride and shape of the activations at ``features``, from a meta-device pass.

    Without ``features``, the stages are the model's declared ones (timm's ``feature_info``, each
    level proven to be the output of the module it names, or refused), else for each stride (2, 4,
    8, ...) the shallowest module that runs last at that stride (``layer1``..``layer4`` on a ResNet).
    Strides are the declared ``reduction``, else the product of the convolution, pooling and
    strided-slice strides on the way to each layer (``None`` when that cannot be traced, or for
    non-spatial outputs). Channels are read from the output's layout (the last dimension for
    channels-last outputs such as Swin stages, reported as ``layout``). Each entry is ``{"name",
    "path", "index", "channels", "stride", "shape", "layout"}``; ``index`` is the position of the
    tensor described in an output that holds several (CrossViT's blocks, one tensor per branch:
    declared levels are named ``"path[i]"``; a named layer gives its first), else ``None``.

    Why: an FPN or a detection neck needs each level's channels and stride; reading them off the
    model beats hand-written ``in_channels_list`` that break when the backbone changes.

    Example: ``[(f["path"], f["channels"]) for f in feature_info(resnet18)]`` gives
    ``[("relu", 64), ("layer1", 64), ("layer2", 128), ("layer3", 256), ("layer4", 512)]``.
    """
    run = dry_run(model, tuple(input_shape) if input_shape else None, train=False)
    in_shape = run.input_shape or shape_of(run.inputs.get("", ()))
    in_hw = tuple(in_shape[2:]) if in_shape and len(in_shape) > 2 else ()
    points = _declared_points(model, run, _declared_levels(model), in_hw)
    if features is None and points:
        _refuse_undeclarable(model, points)
        named = [e["module"] for e, _, _ in points]
        return [
            _entry(
                model,
                run,
                in_hw,
                e["module"] if named.count(e["module"]) == 1 else f"{e['module']}[{i}]",
                e["module"],
                i,
                e,
            )
            for e, i, _ in points
        ]
    names = _names(features) if features is not None else {p: p for p in _auto_stages(model, run, in_hw)}
    if not names:
        raise SurgeryError(
            f"feature_info: {type(model).__name__} declares no stages and no layer output has a spatial "
            "layout with a traceable stride (token sequences, downsampling by reshaping); name the layers: "
            "feature_info(model, ['path', ...])"
        )
    proven = {}
    for e, i, why in points:
        if not why and not i:
            proven.setdefault(e["module"], e)  # the level the first tensor of its module's output holds
    info = []
    for name, path in names.items():
        get_module(model, path)
        if path not in run.outputs:
            raise SurgeryError(
                f"feature_info: {path!r} does not run in a forward pass of {type(model).__name__}"
            )
        info.append(_entry(model, run, in_hw, name, path, None, proven.get(path)))
    return info
