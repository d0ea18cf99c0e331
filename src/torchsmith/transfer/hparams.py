"""What a state_dict does not hold: the hyper-parameters of two paired modules, compared and adopted.

Two modules can hold the same tensors and compute different functions: a batch norm with eps 1e-3
(TensorFlow's default, kept by torchvision's EfficientNet and MNASNet) and one with 1e-5 (timm's),
a convolution padded symmetrically and one padded TF-"same" (asymmetric, computed per input), two
attentions with other head counts. A structure port pairs tensors, so after pairing, every module
pair is compared on what the weights do not say:

* **adoptable** (the model can take the source's value without changing its structure): a norm's
  ``eps``. With ``adopt_hparams=True`` (default) the model takes it, and the report names each
  change; ``False`` refuses instead;
* **not adoptable** (padding, TF-"same" padding, stride, dilation, padding mode, a norm's
  ``affine``/``track_running_stats``, the head count of the attention owning a projection, GELU's
  approximation): named -- and when the numerical check then fails, the refusal names these
  differences and the modules rather than blaming the pairing.

>>> import torch.nn as nn
>>> t, s = nn.Sequential(nn.BatchNorm2d(4)), nn.Sequential(nn.BatchNorm2d(4, eps=1e-3))
>>> diffs = compare_hparams(t, s, [{"target": "0", "source": "0"}])
>>> [(d.attr, d.target_value, d.source_value, d.adoptable) for d in diffs]
[('eps', 1e-05, 0.001, True)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torchsmith.errors import TransferError

__all__ = ["HparamDiff", "adopt", "compare_hparams", "describe", "refuse_differences", "restore"]

_HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "heads")


@dataclass
class HparamDiff:
    """One hyper-parameter that differs between a model module and its source module."""

    target: str
    source: str
    attr: str
    target_value: Any
    source_value: Any
    adoptable: bool
    kind: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "source": self.source,
            "attr": self.attr,
            "target_value": _show(self.target_value),
            "source_value": _show(self.source_value),
            "adoptable": self.adoptable,
        }


def _show(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


def _fmt(v: Any) -> str:
    """A value as the report shows it: descriptions as they are, numbers and tuples as Python writes them."""
    return v if isinstance(v, str) else repr(v)


def _padding(m: Any) -> Any:
    """A conv's padding as it acts: TF-"same" (timm's Conv2dSame, asymmetric), a string, or the tuple."""
    name = type(m).__name__
    if "Same" in name:  # timm's Conv2dSame / MixedConv2dSame: pads per input, possibly asymmetric
        return "TF 'same' (asymmetric, per input)"
    pad = getattr(m, "padding", None)
    if isinstance(pad, str):
        return f"{pad!r}"
    return tuple(pad) if isinstance(pad, (tuple, list)) else pad


def _attrs(m: Any) -> dict[str, tuple[Any, bool]]:
    """``attr -> (value, adoptable)`` for what ``m``'s tensors do not hold."""
    import torch.nn as nn
    from torch.nn.modules.batchnorm import _NormBase
    from torch.nn.modules.conv import _ConvNd

    out: dict[str, tuple[Any, bool]] = {}
    eps = getattr(m, "eps", None)
    if isinstance(eps, float) and not isinstance(m, _ConvNd):
        out["eps"] = (eps, True)
    if isinstance(m, _NormBase):
        out["affine"] = (m.affine, False)
        out["track_running_stats"] = (m.track_running_stats, False)
    if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
        out["affine"] = (getattr(m, "elementwise_affine", getattr(m, "affine", True)), False)
    if isinstance(m, _ConvNd):
        out["padding"] = (_padding(m), False)
        out["stride"] = (tuple(m.stride), False)
        out["dilation"] = (tuple(m.dilation), False)
        out["padding_mode"] = (m.padding_mode, False)
    return out


def _heads(m: Any) -> Any:
    for a in _HEAD_ATTRS:
        v = getattr(m, a, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    config = getattr(m, "config", None)
    for a in _HEAD_ATTRS:
        v = getattr(config, a, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _owner_heads(model: Any, path: str) -> Any:
    """The head count of the module at ``path`` or the nearest one above it that has one (an attention)."""
    parts = path.split(".") if path else []
    for n in range(len(parts), -1, -1):
        try:
            m = model.get_submodule(".".join(parts[:n]))
        except AttributeError:
            return None
        h = _heads(m)
        if h is not None:
            return h
    return None


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or abs(a - b) <= 1e-12 * max(abs(a), abs(b))
    return a == b


def compare_hparams(target: Any, source: Any, mapping: Iterable[Mapping[str, Any]]) -> list[HparamDiff]:
    """Every hyper-parameter that differs between the paired modules of ``mapping`` (model, source)."""
    diffs: list[HparamDiff] = []
    for pair in mapping:
        t_path, s_path = pair["target"], pair["source"]
        if "+" in t_path or "+" in s_path:  # a fused projection and its parts: no module pair
            continue
        try:
            t_mod, s_mod = target.get_submodule(t_path), source.get_submodule(s_path)
        except AttributeError:
            continue
        t_attrs, s_attrs = _attrs(t_mod), _attrs(s_mod)
        for attr, (tv, adoptable) in t_attrs.items():
            if attr in s_attrs and not _equal(tv, s_attrs[attr][0]):
                diffs.append(
                    HparamDiff(t_path, s_path, attr, tv, s_attrs[attr][0], adoptable, type(t_mod).__name__)
                )
        th, sh = _owner_heads(target, t_path), _owner_heads(source, s_path)
        if th is not None and sh is not None and th != sh:
            diffs.append(HparamDiff(t_path, s_path, "attention heads", th, sh, False, type(t_mod).__name__))
    diffs += _gelu_differences(target, source)
    return diffs


def _gelu_differences(target: Any, source: Any) -> list[HparamDiff]:
    """GELU modules hold no tensors, so they are not paired: their approximations are compared as sets."""
    import torch.nn as nn

    def kinds(model: Any) -> dict[str, str]:
        out: dict[str, str] = {}
        for path, m in model.named_modules():
            if isinstance(m, nn.GELU):
                out.setdefault(m.approximate, path)
        return out

    t, s = kinds(target), kinds(source)
    if len(t) == 1 and len(s) == 1 and set(t) != set(s):
        (tv, tp), (sv, sp) = next(iter(t.items())), next(iter(s.items()))
        return [HparamDiff(tp, sp, "GELU approximate", tv, sv, False, "GELU")]
    return []


def adopt(target: Any, diffs: Iterable[HparamDiff]) -> list[HparamDiff]:
    """Give the model the source's value of each adoptable difference; returns what was changed."""
    done = []
    for d in diffs:
        if d.adoptable:
            setattr(target.get_submodule(d.target), d.attr, d.source_value)
            done.append(d)
    return done


def restore(target: Any, adopted: Iterable[HparamDiff]) -> None:
    """Undo :func:`adopt` (a refused port leaves the model as it was)."""
    for d in adopted:
        setattr(target.get_submodule(d.target), d.attr, d.target_value)


def describe(diffs: Iterable[HparamDiff], n: int = 3) -> str:
    """One clause per (attribute, model value, source value): how many module pairs, the first few."""
    groups: dict[tuple[str, str, str], list[HparamDiff]] = {}
    for d in diffs:
        groups.setdefault((d.attr, _fmt(d.target_value), _fmt(d.source_value)), []).append(d)
    parts = []
    for (attr, tv, sv), items in groups.items():
        shown = ", ".join(f"{d.target or '(root)'} <- {d.source or '(root)'}" for d in items[:n])
        more = f" (+{len(items) - n} more)" if len(items) > n else ""
        parts.append(
            f"{attr} {tv} in the model vs {sv} in the source, {len(items)} module pairs: {shown}{more}"
        )
    return "; ".join(parts)


def refuse_differences(diffs: list[HparamDiff], check_error: str, adopted: list[HparamDiff]) -> TransferError:
    """The refusal when the port's check failed and the modules differ in what the weights do not hold."""
    import re

    found = re.search(r"max relative difference [^)]*", check_error)
    how = f" ({found.group(0)})" if found else ""
    also = f" (adopting {describe(adopted, n=1)} was not enough)" if adopted else ""
    return TransferError(
        "port refused: the tensors pair up, but the paired modules differ in hyper-parameters the "
        f"weights do not hold, which the model cannot take from the source: {describe(diffs)}{also}. "
        f"So the model does not compute the source's function{how}; nothing was loaded. Build the "
        "model with the source's values"
    )
