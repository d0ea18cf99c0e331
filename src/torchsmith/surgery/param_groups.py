"""Optimizer parameter groups: per-pattern learning rates and weight decay, layer-wise decay.

The groups carry the real ``lr`` of each group (not a scale that only timm's schedulers read,
timm#2691), so any ``torch.optim`` optimizer and scheduler uses them as they are. Every trainable
parameter lands in exactly one group and no frozen parameter in any; this is checked, not assumed.

>>> import torch, torchvision
>>> from torchsmith.surgery import param_groups
>>> net = torchvision.models.resnet18(weights=None)
>>> groups = param_groups(net, lr=0.1, weight_decay=1e-4, rules=[{"match": "fc", "lr": 1.0}])
>>> opt = torch.optim.SGD(groups, lr=0.1)
>>> sorted({g["lr"] for g in opt.param_groups})
[0.1, 1.0]
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn as nn

from torchsmith.errors import SurgeryError
from torchsmith.surgery._common import match_path, on_plain_model

__all__ = ["check_param_groups", "format_param_groups", "layer_ids", "param_groups"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, _NORMS) or "norm" in type(m).__name__.lower()


@on_plain_model
def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Depth index of every parameter, and the number of depths.

    A model that declares its layers with timm's ``group_matcher(coarse=False)`` gets timm's
    depths (each block of each stage its own depth, as ``timm.optim.param_groups_layer_decay``
    has them). Otherwise from the model's structure: a parameter's block is its path up to the
    first numeric part (``layer1.0``, ``blocks.3``); everything before the first block is the stem
    (depth 0), everything after the last is the head (last depth), and each block in between is one
    depth, in registration order.
    """
    declared = _timm_ids(model) or _matcher_ids(model)
    if declared is not None:
        return declared
    keys: list[str] = []
    of: dict[str, str] = {}
    numeric: dict[str, bool] = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        idx = next((i for i, p in enumerate(parts[:-1]) if p.isdigit()), None)
        key = ".".join(parts[: idx + 1]) if idx is not None else parts[0]
        if key not in numeric:
            keys.append(key)
            numeric[key] = idx is not None
        of[name] = key
    first = next((i for i, k in enumerate(keys) if numeric[k]), None)
    if first is None:  # no repeated blocks: one depth per top-level child
        depth = {k: i for i, k in enumerate(keys)}
    else:
        last = max(i for i, k in enumerate(keys) if numeric[k])
        depth, d = {}, 0
        for i, k in enumerate(keys):
            if i < first:
                depth[k] = 0
            elif i <= last:
                d += 1
                depth[k] = d
            else:
                depth[k] = d + 1
    n = max(depth.values(), default=0) + 1
    return {name: depth[key] for name, key in of.items()}, n


def _timm_ids(model: nn.Module) -> tuple[dict[str, int], int] | None:
    """A timm model's depths as timm's own layer decay computes them (``group_parameters`` over its
    ``group_matcher(coarse=False)``), the oracle; unmatched parameters (the head) are the last depth."""
    if not type(model).__module__.startswith("timm."):
        return None
    try:
        if callable(getattr(model, "group_matcher", None)):
            from timm.models import group_parameters

            found = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
        else:  # timm's own fallback for models without a matcher
            from timm.optim._param_groups import _layer_map

            found = _layer_map(model)
    except Exception:
        return None
    if not found:
        return None
    n = max(found.values()) + 1
    return {name: found.get(name, n - 1) for name, _ in model.named_parameters()}, n


_JOIN_PREVIOUS = 99999.0  # timm's MATCH_PREV_GROUP ordinal: the parameters join the group before


def _matcher_ids(model: nn.Module) -> tuple[dict[str, int], int] | None:
    """Depths from the model's own ``group_matcher(coarse=False)`` (timm's format), or None.

    The matcher maps group names to a regex, or to ``[(regex, suffix ordinal or None), ...]``; a
    parameter's ordinal is (group position, the regex's numeric groups, the suffix); unmatched
    parameters (the head) come last; sorted ordinals become depths 0, 1, ..., except that an
    ordinal ending in 99999 shares the depth of the one before it.
    """
    matcher = getattr(model, "group_matcher", None)
    if not callable(matcher):
        return None
    try:
        spec = matcher(coarse=False)
        rules = []
        for i, entry in enumerate(spec.values()):
            if entry is None:
                continue
            pairs = entry if isinstance(entry, list | tuple) else [(entry, None)]
            rules += [(re.compile(rx), (float(i),), suffix) for rx, suffix in pairs]
    except Exception:  # not timm's format: fall back to the structure
        return None

    def ordinal(name: str) -> tuple[float, ...]:
        for rx, prefix, suffix in rules:
            m = rx.match(name)
            if m:
                found = tuple(float(g) for g in m.groups() if g is not None)
                return prefix + found + tuple(float(x) for x in (suffix or ()))
        return (float("inf"),)

    of = {name: ordinal(name) for name, _ in model.named_parameters()}
    depth_of: dict[tuple[float, ...], int] = {}
    d = -1
    for key in sorted(set(of.values())):
        if d < 0 or key[-1] != _JOIN_PREVIOUS:
            d += 1
        depth_of[key] = d
    return {name: depth_of[key] for name, key in of.items()}, d + 1


def _no_weight_decay(model: nn.Module) -> list[str]:
    """Names or patterns the model's own ``no_weight_decay()`` excludes (timm: pos_embed, cls_token)."""
    fn = getattr(model, "no_weight_decay", None)
    if not callable(fn):
        return []
    try:
        names = fn()
    except Exception:
        return []
    return [n for n in names if isinstance(n, str)] if isinstance(names, set | list | tuple) else []


@on_plain_model
def param_groups(
    model: nn.Module,
    lr: float,
    *,
    weight_decay: float = 0.0,
    rules: Sequence[Mapping[str, Any]] | None = None,
    no_decay_norm_bias: bool = True,
    layer_decay: float | None = None,
    verbose: bool = False,
) -> list[dict]:
    """Parameter groups for ``torch.optim`` with real per-group ``lr`` and ``weight_decay``.

    ``rules``: ``[{"match": "fc" | ["layer4", "re:..."], "lr": 1e-2 | "lr_scale": 10,
    "weight_decay": 0.0}]`` (``params`` is accepted for ``match``); the first rule that matches a
    parameter decides. ``no_decay_norm_bias``:
    weight decay 0 for biases, normalisation weights, and what the model's own ``no_weight_decay()``
    names (timm's ``cls_token``, ``pos_embed``, ``relative_position_bias_table``). ``layer_decay``:
    the learning rate is multiplied by ``layer_decay ** (depths - 1 - depth)``, depths from
    :func:`layer_ids`. Frozen parameters are left out. Each group also has ``name`` and
    ``param_names`` (``torch.optim`` keeps extra keys). ``verbose=True`` prints the group table.
    """
    if not isinstance(lr, int | float) or lr <= 0:
        raise SurgeryError(f"param_groups: lr must be a positive number, got {lr!r}")
    rules = [_normalise_rule(i, r) for i, r in enumerate(rules or [])]
    for i, rule in enumerate(rules):
        unknown = set(rule) - {"match", "lr", "lr_scale", "weight_decay", "name"}
        if "match" not in rule or unknown:
            raise SurgeryError(
                f"param_groups: rules[{i}] needs 'match' and may have lr, lr_scale, weight_decay, name; "
                f"got keys {sorted(rule)}"
            )
        if "lr" in rule and "lr_scale" in rule:
            raise SurgeryError(f"param_groups: rules[{i}] has both lr and lr_scale; give one")
        pats = [rule["match"]] if isinstance(rule["match"], str) else list(rule["match"])
        names = [n for n, _ in model.named_parameters()]
        for p in pats:
            if not any(match_path(n, p) for n in names):
                raise SurgeryError(
                    f"param_groups: rules[{i}] match {p!r} selects no parameter of {type(model).__name__}"
                )
    depth, n_depths = layer_ids(model) if layer_decay is not None else ({}, 1)
    norm_params = {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
    declared_no_decay = _no_weight_decay(model) if no_decay_norm_bias else []
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        g_lr, g_wd, label = float(lr), float(weight_decay), "default"
        for i, rule in enumerate(rules):
            pats = [rule["match"]] if isinstance(rule["match"], str) else list(rule["match"])
            if any(match_path(name, pat) for pat in pats):
                label = str(rule.get("name", f"rule{i}:{','.join(pats)}"))
                if "lr" in rule:
                    g_lr = float(rule["lr"])
                elif "lr_scale" in rule:
                    g_lr = float(lr) * float(rule["lr_scale"])
                if "weight_decay" in rule:
                    g_wd = float(rule["weight_decay"])
                break
        if layer_decay is not None:
            d = depth[name]
            g_lr *= float(layer_decay) ** (n_depths - 1 - d)
            label += f"/depth{d}"
        no_decay = p.ndim <= 1 or id(p) in norm_params or name.endswith(".bias")
        if no_decay_norm_bias and (no_decay or any(match_path(name, n) for n in declared_no_decay)):
            g_wd = 0.0
            label += "/no_decay"
        key = (label, g_lr, g_wd)
        group = groups.setdefault(
            key, {"params": [], "lr": g_lr, "weight_decay": g_wd, "name": label, "param_names": []}
        )
        group["params"].append(p)
        group["param_names"].append(name)
    out = list(groups.values())
    check_param_groups(model, out)
    if verbose:
        print(format_param_groups(out))
    return out


def _normalise_rule(i: int, rule: Any) -> dict:
    """Accept ``params`` as another name for ``match`` (as in recipes: ``{params: "fc", lr: 0.01}``)."""
    if not isinstance(rule, Mapping):
        raise SurgeryError(
            f"param_groups: rules[{i}] must be a mapping like {{match: 'fc', lr: 0.01}}, got {rule!r}"
        )
    rule = dict(rule)
    if "params" in rule and "match" not in rule:
        pats = rule.pop("params")
        ok = isinstance(pats, str) or (
            isinstance(pats, list | tuple) and all(isinstance(p, str) for p in pats)
        )
        if not ok:
            raise SurgeryError(
                f"param_groups: rules[{i}].params must be a pattern or a list of patterns, got {pats!r}"
            )
        rule["match"] = pats
    return rule


def check_param_groups(model: nn.Module, groups: Sequence[Mapping[str, Any]]) -> None:
    """Raise unless every trainable parameter is in exactly one group and no frozen one is in any."""
    names = {id(p): n for n, p in model.named_parameters()}
    count: dict[int, int] = {}
    for i, g in enumerate(groups):
        for p in g["params"]:
            if id(p) not in names:
                raise SurgeryError(
                    f"param group {i} holds a tensor of shape {list(p.shape)} that is not a "
                    "parameter of the model"
                )
            count[id(p)] = count.get(id(p), 0) + 1
    twice = [names[i] for i, c in count.items() if c > 1]
    frozen = [names[i] for i in count if not _param(model, names[i]).requires_grad]
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in count]
    for what, bad in (
        ("in more than one group", twice),
        ("frozen but in a group", frozen),
        ("trainable but in no group", missing),
    ):
        if bad:
            shown = ", ".join(bad[:5]) + (f" ... ({len(bad)} in all)" if len(bad) > 5 else "")
            raise SurgeryError(f"param groups: parameters {what}: {shown}")


def _param(model: nn.Module, name: str):
    return model.get_parameter(name)


def format_param_groups(groups: Sequence[Mapping[str, Any]]) -> str:
    """A table of the groups: name, tensors, elements, lr, weight decay."""
    from torchsmith.cli._output import format_table

    rows = [
        (
            g.get("name", i),
            len(g["params"]),
            f"{sum(p.numel() for p in g['params']):,}",
            f"{g['lr']:.3g}",
            f"{g.get('weight_decay', 0.0):.3g}",
        )
        for i, g in enumerate(groups)
    ]
    return format_table(["group", "tensors", "elements", "lr", "weight_decay"], rows, "lrrrr")
