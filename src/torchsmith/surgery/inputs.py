"""Change what a model takes in: the number of input channels, or extra named inputs (seed S12).

``set_in_channels`` finds the layer(s) that consume the input by tracing a meta-device forward pass
(every tensor derived from the input is followed until a layer with weights consumes it), so it
works for any model, not only those whose first convolution has 3 inputs.

``add_inputs`` lets extra values (an age, a sensor reading, a one-hot) join the features entering a
chosen layer. The layer is widened with zero-initialised weights, so the model computes exactly what
it did until training moves them. It is done with two forward pre-hooks: the model object, its class
and its state_dict keys stay the same (only the widened layer's weight changes shape).

>>> import torch, torchvision
>>> from torchsmith.surgery import add_inputs
>>> net = torchvision.models.resnet18(weights=None).eval()
>>> x = torch.randn(2, 3, 64, 64)
>>> before = net(x)
>>> _ = add_inputs(net, "fc", {"age": 1})
>>> torch.allclose(net(x, age=torch.tensor([30.0, 40.0])), before, atol=1e-6)
True
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from torchsmith.errors import InputError, SurgeryError, close_matches
from torchsmith.surgery._common import on_plain_model, record
from torchsmith.surgery._dryrun import dry_run, guess_input_shape, is_dry_run
from torchsmith.surgery.paths import get_module
from torchsmith.surgery.report import SurgeryReport, snapshot

__all__ = ["add_inputs", "find_input_layers", "set_in_channels"]

INPUT_SHAPE_ATTR = "_torchsmith_input_shape"


@on_plain_model
def find_input_layers(model: nn.Module, input_shape: Sequence[int] | None = None) -> list[str]:
    """Paths of the layers with weights that consume the model's input (usually one convolution).

    >>> import torchvision
    >>> find_input_layers(torchvision.models.resnet50(weights=None))
    ['conv1']
    """
    run = dry_run(model, tuple(input_shape) if input_shape else None, train=False)
    return list(run.input_consumers)


def _adapt_weight(w: torch.Tensor, c: int, channel_map: Sequence[Any] | None, path: str) -> torch.Tensor:
    c0 = w.shape[1]
    if channel_map is not None:
        if len(channel_map) != c:
            raise SurgeryError(
                f"set_in_channels: channel_map has {len(channel_map)} entries; expected one per new "
                f"channel ({c})"
            )
        cols = []
        for i, src in enumerate(channel_map):
            if isinstance(src, int) and not isinstance(src, bool):
                if not 0 <= src < c0:
                    raise SurgeryError(
                        f"set_in_channels: channel_map[{i}]={src} but {path!r} has input channels 0..{c0 - 1}"
                    )
                cols.append(w[:, src])
            elif src == "mean":
                cols.append(w.mean(dim=1))
            elif src in ("zero", None):
                cols.append(torch.zeros_like(w[:, 0]))
            elif src == "random":
                fresh = torch.empty_like(w[:, :1])
                nn.init.kaiming_uniform_(fresh, a=math.sqrt(5))
                cols.append(fresh[:, 0])
            else:
                raise SurgeryError(
                    f"set_in_channels: channel_map[{i}]={src!r}; expected an old channel index, "
                    "'mean', 'zero' "
                    "or 'random'"
                )
        return torch.stack(cols, dim=1)
    if c == 1:
        # A gray image repeated over the old channels gives the same output with the summed kernel.
        return w.sum(dim=1, keepdim=True)
    reps = math.ceil(c / c0)
    return w.repeat(1, reps, *([1] * (w.dim() - 2)))[:, :c] * (c0 / c)


def _own_forward(m: nn.Module) -> bool:
    """True when a convolution's class overrides forward (it may transform its weight first)."""
    return type(m).forward not in (nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward)


def _standardised(m: nn.Module) -> str | None:
    """timm's weight-standardised convolutions: ``"scaled"`` (ScaledStdConv2d*: a learnable gain),
    ``"plain"`` (StdConv2d*: none), else None. Both normalise each kernel over its inputs in forward."""
    cls = type(m)
    if not cls.__module__.startswith("timm.") or not isinstance(getattr(m, "eps", None), float):
        return None
    if cls.__name__.startswith("ScaledStdConv") and isinstance(getattr(m, "gain", None), nn.Parameter):
        return "scaled"
    return "plain" if cls.__name__.startswith("StdConv") else None


def _standardise(w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(w - mean) / sqrt(var + eps) over each output channel (what timm's forward computes), and the mean."""
    flat = w.reshape(w.shape[0], -1)
    var, mean = torch.var_mean(flat, dim=1, unbiased=False, keepdim=True)
    return ((flat - mean) / torch.sqrt(var + eps)).reshape_as(w), mean


def _adapt_layer(
    m: nn.Module, c: int, channel_map: Sequence[Any] | None, path: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The new weight (and, for ScaledStdConv2d, the new gain) of input convolution ``m``.

    A weight-standardised convolution is adapted through the kernel it really applies: that kernel
    is summed (or repeated), and for ScaledStdConv2d the gain is set so that standardising the new
    weight gives back exactly that kernel (possible when it has zero mean per output channel, as a
    sum or whole repeats of standardised kernels do). StdConv2d has no gain: see the warning.
    """
    kind = _standardised(m)
    w = m.weight.detach()
    if kind is None:
        return _adapt_weight(w, c, channel_map, path), None
    applied, _ = _standardise(w, m.eps)
    if kind == "scaled":
        applied = applied * (m.gain.detach() * m.scale)
    new_w = _adapt_weight(applied, c, channel_map, path)
    if kind == "plain":
        return new_w, None
    var, _ = torch.var_mean(new_w.reshape(new_w.shape[0], -1), dim=1, unbiased=False)
    gain = (torch.sqrt(var + m.eps) / m.scale).reshape_as(m.gain).to(m.gain.dtype)
    return new_w, gain


def _same_outputs(old: nn.Module, new: nn.Module, c0: int, c: int) -> float | None:
    """Relative difference of ``new`` on a random c-channel input and ``old`` on it tiled to c0
    channels (gray -> RGB for c=1), or None when there is no exact expectation to check."""
    if old.weight.device.type == "meta" or not (c == 1 or c % c0 == 0):
        return None
    k = max(int(d) * (int(s) - 1) + 1 for d, s in zip(old.dilation, old.kernel_size))
    side = max(k + max(old.stride), 9)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(2, c, *([side] * (old.weight.dim() - 2)), generator=gen)
    x = x.to(device=old.weight.device, dtype=old.weight.dtype)
    x_old = x.expand(-1, c0, *x.shape[2:]) if c == 1 else x[:, :c0]
    if c > 1:  # new channels repeat the old ones: feed the same pattern into every repeat
        x = x_old.repeat(1, c // c0, *([1] * (x.dim() - 2)))
    with torch.no_grad():
        want, got = old(x_old), new(x)
    return float((want - got).abs().max() / want.abs().max().clamp_min(1e-12))


@on_plain_model
def set_in_channels(
    model: nn.Module,
    in_channels: int,
    *,
    channel_map: Sequence[int | str | None] | None = None,
    input_shape: Sequence[int] | None = None,
) -> SurgeryReport:
    """Make ``model`` take ``in_channels`` input channels, adapting the input layer's weights.

    One channel: the kernels are summed over the old channels, so a gray image gives exactly what the
    old model gave for that image repeated on every channel. More channels: the kernels are repeated
    and rescaled by ``old/new`` (activations keep their scale). ``channel_map`` chooses per new channel:
    an old channel index (``[0, 1, 2, 0]`` = RGB + NIR initialised from R), ``"mean"``, ``"zero"`` or
    ``"random"``. ``input_shape`` is a sample input for the tracing pass when it cannot be guessed.
    """
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        raise SurgeryError(f"in_channels must be a positive integer, got {in_channels!r}")
    shape = tuple(input_shape) if input_shape else guess_input_shape(model)
    consumers = dry_run(model, shape, train=False).input_consumers
    if not consumers:
        raise SurgeryError(
            f"set_in_channels: no layer with weights consumes the input of {type(model).__name__}"
        )
    convs = []
    for path in consumers:
        m = get_module(model, path)
        if not isinstance(m, nn.modules.conv._ConvNd) or isinstance(m, nn.modules.conv._ConvTransposeNd):
            raise SurgeryError(
                f"set_in_channels: the input is consumed by {path!r} ({type(m).__name__}), not a "
                "convolution; "
                "only convolutional inputs can change their channel count"
            )
        if m.groups != 1:
            raise SurgeryError(
                f"set_in_channels: the input convolution {path!r} has groups={m.groups}; only "
                "groups=1 is supported"
            )
        convs.append((path, m))
    _refuse_channel_constants(model, shape[1], in_channels)
    before = snapshot(model)
    saved = [(m, m.weight, m.in_channels, getattr(m, "gain", None)) for _, m in convs]
    originals = {path: copy.deepcopy(m) for path, m in convs if _own_forward(m)}
    for path, m in convs:
        with torch.no_grad():
            new_w, gain = _adapt_layer(m, in_channels, channel_map, path)
        m.weight = nn.Parameter(new_w.contiguous(), requires_grad=m.weight.requires_grad)
        if gain is not None:
            m.gain = nn.Parameter(gain.contiguous(), requires_grad=m.gain.requires_grad)
        m.in_channels = in_channels
    counts = _channel_count_attrs(model, [p for p, _ in convs], shape[1])
    for owner, attr in counts:
        setattr(owner, attr, in_channels)
    new_shape = (shape[0], in_channels, *shape[2:])
    try:
        dry_run(model, new_shape, train=False, record=False)
    except SurgeryError as e:
        for m, w, c, g in saved:
            m.weight, m.in_channels = w, c
            if g is not None:
                m.gain = g
        for owner, attr in counts:
            setattr(owner, attr, shape[1])
        raise SurgeryError(
            f"set_in_channels: after adapting {', '.join(p for p, _ in convs)} the model no longer runs on "
            f"{in_channels} channels (something else depends on the channel count); nothing was changed: {e}"
        ) from None
    object.__setattr__(model, INPUT_SHAPE_ATTR, new_shape)
    if isinstance(getattr(model, "in_chans", None), int):
        model.in_chans = in_channels
    report = SurgeryReport.diff("set_in_channels", before, model)
    how = (
        "channel map"
        if channel_map is not None
        else ("summed kernels" if in_channels == 1 else "repeated and rescaled kernels")
    )
    report.notes.append(
        f"input layer(s) {', '.join(p for p, _ in convs)}: {shape[1]} -> {in_channels} channels ({how})"
    )
    if channel_map is None:
        _check_custom_convs(report, convs, originals, shape[1], in_channels)
    op: dict[str, Any] = {"op": "set_in_channels", "in_channels": in_channels}
    if channel_map is not None:
        op["channel_map"] = list(channel_map)
    if input_shape:
        op["input_shape"] = list(input_shape)
    record(model, report, op)
    return report


_COUNT_ATTRS = ("num_channels", "in_chans")
_PER_CHANNEL = ("image_mean", "image_std")


def _refuse_channel_constants(model: nn.Module, c0: int, c: int) -> None:
    """Refuse, before anything changes, when a module normalises the input with per-channel constants
    (torchvision detectors' ``transform``: ``image_mean``/``image_std``) of the old channel count: no
    value for the new channels can be inferred, so the user sets them."""
    for path, m in model.named_modules():
        for attr in _PER_CHANNEL:
            v = getattr(m, attr, None)
            n = (
                len(v)
                if isinstance(v, list | tuple) or (isinstance(v, torch.Tensor) and v.dim() == 1)
                else None
            )
            if n is not None and n == c0 and n != c:
                where = f"model.{path}" if path else "model"
                values = {a: list(getattr(m, a)) for a in _PER_CHANNEL if hasattr(m, a)}
                shown = ", ".join(f"{a}={[round(float(x), 4) for x in vs]}" for a, vs in values.items())
                raise SurgeryError(
                    f"set_in_channels: {type(model).__name__} normalises its input in {where!r} "
                    f"({type(m).__name__}) with {c0} per-channel values ({shown}), which no layer "
                    f"adaptation can change; nothing was changed. Set {where}.image_mean and "
                    f"{where}.image_std to {c} values each (the statistics of your {c}-channel data), "
                    f"then call set_in_channels(model, {c}) again"
                )


def _channel_count_attrs(model: nn.Module, paths: list[str], c0: int) -> list[tuple[Any, str]]:
    """Attributes that record the input channel count next to the input layers: ``num_channels`` /
    ``in_chans`` of their ancestors (transformers' patch embeddings check it in forward) and of a
    transformers config (``config.num_channels``, ``vision_config.num_channels``), when equal to ``c0``."""
    owners: dict[int, Any] = {}
    for path in paths:
        parts = path.split(".")
        for i in range(len(parts)):
            m = get_module(model, ".".join(parts[:i]))
            owners[id(m)] = m
    config = getattr(model, "config", None)
    if type(model).__module__.startswith("transformers.") and config is not None:
        owners[id(config)] = config
        vision = getattr(config, "vision_config", None)
        if vision is not None:
            owners[id(vision)] = vision
    return [
        (o, a)
        for o in owners.values()
        for a in _COUNT_ATTRS
        if isinstance(getattr(o, a, None), int)
        and not isinstance(getattr(o, a), bool)
        and getattr(o, a) == c0
    ]


def _check_custom_convs(
    report: SurgeryReport, convs: list, originals: dict[str, nn.Module], c0: int, c: int
) -> None:
    """Convolutions that compute their kernel in forward: check the promise numerically, warn if broken."""
    for path, m in convs:
        if path not in originals:
            continue
        rel = _same_outputs(originals[path], m, c0, c)
        name = f"{path} ({type(m).__name__})"
        if rel is not None and rel <= 1e-4:
            if _standardised(m) == "scaled":
                report.notes.append(f"{name}: the standardised kernel was adapted and the gain rescaled")
            continue
        why = (
            "standardises its kernel in forward and has no gain to absorb the change (timm's StdConv2d)"
            if _standardised(m) == "plain"
            else "computes its kernel in forward"
        )
        msg = (
            f"set_in_channels: {name} {why}, so the adapted layer is NOT equivalent to the original"
            + (
                f" (outputs differ by {100 * rel:.1f}% of their scale on a test input)"
                if rel is not None
                else ""
            )
            + "; fine-tune that layer"
        )
        report.notes.append(msg)
        warnings.warn(msg, UserWarning, stacklevel=4)


# --- extra inputs -------------------------------------------------------------------------------


class _Slot:
    """Holds the extra values of the current call between the two hooks."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}


class _TakeExtras:
    """Root forward pre-hook: takes the extra inputs out of the call (by keyword or trailing position)."""

    def __init__(self, slot: _Slot, names: list[str], n_positional: int | None) -> None:
        self.slot, self.names, self.n_positional = slot, names, n_positional

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        self.slot.values = {}
        kwargs = dict(kwargs)
        if self.n_positional is not None and len(args) > self.n_positional:
            extra = list(args[self.n_positional :])
            args = args[: self.n_positional]
            for name in self.names:
                if extra and name not in kwargs:
                    self.slot.values[name] = extra.pop(0)
            args = args + tuple(extra)  # leave the rest to later hooks
        for name in self.names:
            if name in kwargs:
                self.slot.values[name] = kwargs.pop(name)
        missing = [n for n in self.names if n not in self.slot.values]
        if missing and not is_dry_run():
            unknown = [k for k in kwargs if k not in self.names]
            hint = close_matches(unknown[0], self.names) if unknown else ""
            raise InputError(
                f"{type(module).__name__} needs the extra input(s) {', '.join(map(repr, missing))} "
                f"(pass them as keyword arguments or after the usual inputs){hint}"
            )
        return args, kwargs


class _JoinExtras:
    """Pre-hook on the widened layer: joins the extra values to its input (concat or add)."""

    torchsmith_hook = True  # moved along when the layer is replaced (see _common.carry_hooks)

    def __init__(
        self, slot: _Slot, widths: dict[str, int], mode: str, is_conv: bool, owner: nn.Module | None
    ) -> None:
        self.slot, self.widths, self.mode, self.is_conv = slot, widths, mode, is_conv
        self.owner = owner  # holds the projections for mode="add"

    def _prepare(self, name: str, feats: torch.Tensor) -> torch.Tensor:
        k = self.widths[name]
        batch = feats.shape[0]
        v = self.slot.values.get(name)
        if v is None:  # only during a dry run
            v = torch.zeros(batch, k, device=feats.device, dtype=feats.dtype)
        if not isinstance(v, torch.Tensor):
            v = torch.as_tensor(v)
        if v.dim() == 1 and v.shape[0] == batch and k == 1:
            v = v.unsqueeze(1)  # (batch,) scalars, as in seed S12
        if v.dim() != 2 or v.shape[0] != batch or v.shape[1] != k:
            expected = f"({batch},) or ({batch}, 1)" if k == 1 else f"({batch}, {k})"
            raise InputError(
                f"extra input {name!r} has shape {tuple(v.shape)}; expected {expected} "
                f"(batch {batch} from the features entering the layer, width {k})"
            )
        return v.to(device=feats.device, dtype=feats.dtype)

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        feats = args[0]
        values = [self._prepare(n, feats) for n in self.widths]
        if self.mode == "add":
            for name, v in zip(self.widths, values):
                delta = self.owner[name](v)
                feats = feats + (
                    delta.view(*delta.shape, *([1] * (feats.dim() - 2)))
                    if self.is_conv
                    else _bcast(delta, feats)
                )
            return (feats, *args[1:])
        extra = torch.cat(values, dim=1)
        if self.is_conv:
            extra = extra.view(*extra.shape, *([1] * (feats.dim() - 2))).expand(-1, -1, *feats.shape[2:])
            return (torch.cat([feats, extra], dim=1), *args[1:])
        extra = _bcast(extra, feats[..., :1].expand(*feats.shape[:-1], extra.shape[-1]))
        return (torch.cat([feats, extra], dim=-1), *args[1:])


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(batch, k) -> (batch, ..., k) matching ``like``'s middle dimensions (token sequences)."""
    if like.dim() == 2:
        return v
    shape = (v.shape[0],) + (1,) * (like.dim() - 2) + (v.shape[-1],)
    return v.view(shape).expand(*like.shape[:-1], v.shape[-1])


def _positional_count(model: nn.Module) -> int | None:
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


@on_plain_model
def add_inputs(
    model: nn.Module,
    at: str,
    inputs: Mapping[str, int] | Sequence[str],
    *,
    mode: str = "concat",
    input_shape: Sequence[int] | None = None,
) -> SurgeryReport:
    """Let named extra inputs join the features entering the layer at ``at`` (seed S12).

    ``inputs`` maps each name to its width (``{"age": 1, "sensor": 4}``; a list means width 1).
    ``mode="concat"`` appends them to the layer's input and widens the layer (a ``Linear`` or a
    convolution; vectors are broadcast over positions) with zero weights; ``mode="add"`` adds a
    zero-initialised projection of each to the features. Either way outputs are unchanged until
    training moves the new weights. Call the model as ``model(x, age=a)`` or ``model(x, a)``. Values
    of shape ``(batch,)`` are unsqueezed, ``(batch, k)`` are used as they are; other shapes are refused
    naming both shapes (seed trap 8). Build the optimizer after this call: the layer's weight is new.
    """
    if mode not in ("concat", "add"):
        raise SurgeryError(f"add_inputs: mode must be 'concat' or 'add', got {mode!r}")
    widths = {n: 1 for n in inputs} if not isinstance(inputs, Mapping) else dict(inputs)
    if not widths or not all(isinstance(n, str) and n.isidentifier() for n in widths):
        raise SurgeryError(
            f"add_inputs: inputs must name at least one extra input with identifier names, got {inputs!r}"
        )
    bad = {n: w for n, w in widths.items() if not isinstance(w, int) or isinstance(w, bool) or w < 1}
    if bad:
        raise SurgeryError(f"add_inputs: widths must be positive integers, got {bad}")
    layer = get_module(model, at)
    is_conv = isinstance(layer, nn.modules.conv._ConvNd) and not isinstance(
        layer, nn.modules.conv._ConvTransposeNd
    )
    if not (isinstance(layer, nn.Linear) or (is_conv and layer.groups == 1)):
        inner = [f"{at}.{p}" for p, m in layer.named_modules() if p and isinstance(m, nn.Linear | nn.Conv2d)]
        raise SurgeryError(
            f"add_inputs: {at!r} is a {type(layer).__name__}; extra inputs join a Linear or a convolution "
            f"(groups=1){'; candidates inside: ' + ', '.join(map(repr, inner[:5])) if inner else ''}"
        )
    shape = tuple(input_shape) if input_shape else None
    run = dry_run(model, shape, train=False, record=False)
    if at not in run.inputs:
        raise SurgeryError(f"add_inputs: {at!r} never runs in a forward pass of {type(model).__name__}")
    feats = run.inputs[at][0]
    width = feats.shape[1] if is_conv else feats.shape[-1]
    before = snapshot(model)
    total = sum(widths.values())
    owner = None
    if mode == "concat":
        w = layer.weight
        with torch.no_grad():
            pad = torch.zeros(w.shape[0], total, *w.shape[2:], device=w.device, dtype=w.dtype)
            layer.weight = nn.Parameter(torch.cat([w.detach(), pad], dim=1), requires_grad=w.requires_grad)
        if is_conv:
            layer.in_channels += total
        else:
            layer.in_features += total
    else:
        holder_name = "extra_inputs"
        owner = getattr(model, holder_name, None)
        if owner is None:
            owner = nn.ModuleDict()
            model.add_module(holder_name, owner)
        ref = layer.weight
        for n, k in widths.items():
            if n in owner:
                raise SurgeryError(f"add_inputs: an extra input named {n!r} already exists")
            proj = nn.Linear(k, width, device=ref.device, dtype=ref.dtype)
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)
            owner[n] = proj
    slot = _Slot()
    model.register_forward_pre_hook(
        _TakeExtras(slot, list(widths), _positional_count(model)), with_kwargs=True
    )
    layer.register_forward_pre_hook(_JoinExtras(slot, widths, mode, is_conv, owner))
    names = getattr(model, "_torchsmith_extra_inputs", [])
    object.__setattr__(model, "_torchsmith_extra_inputs", names + list(widths))
    report = SurgeryReport.diff(
        "add_inputs", before, model, mechanism="forward pre-hooks on the model and on " + repr(at)
    )
    report.notes.append(
        f"extra inputs {', '.join(f'{n} (width {k})' for n, k in widths.items())} join the features entering "
        f"{at!r} by {mode}; new weights are zero, so outputs are unchanged until trained"
    )
    op: dict[str, Any] = {"op": "add_inputs", "at": at, "inputs": widths, "mode": mode}
    if input_shape:
        op["input_shape"] = list(input_shape)
    record(model, report, op)
    return report
