"""Load weights into a model from a file, a state_dict or another model, and say exactly what happened.

The seed's transfer learning (S15) keeps the pretrained keys whose names are in the new model and
``update``s a dict -- and never calls ``load_state_dict`` (trap 5), so nothing is loaded and nothing
says so. :func:`load_weights` does the whole job in one call and returns a
:class:`~torchsmith.transfer.TransferReport`; a call that would load nothing raises, and so does
one whose source is evidently another architecture (partial loads are loud) unless
``allow_partial=True``. A new head or input layer is normal:

>>> import torchvision
>>> src = torchvision.models.resnet18(num_classes=1000).state_dict()
>>> model = torchvision.models.resnet18(num_classes=10)
>>> report = load_weights(model, src)
>>> [e["key"] for e in report.skipped_shape]
['fc.weight', 'fc.bias']
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torchsmith._patterns import compile_regex
from torchsmith.errors import InputError, TorchsmithError, TransferError, close_matches
from torchsmith.transfer.report import TransferReport

__all__ = ["ADAPTATIONS", "ARCHITECTURE_MISMATCH", "DEFAULT_MIN_FRACTION", "load_weights", "resolve_source"]

#: Shape adaptations :func:`load_weights` can make. ``input_channels`` is on by default (its meaning is
#: clear); ``classifier`` is opt-in because a 1000-class head cut to 10 classes keeps 10 *ImageNet*
#: classes, which is right only when the new labels are a prefix or an extension of the old ones.
ADAPTATIONS = ("input_channels", "classifier")

_STRICT_LEVELS = {False: "none", "none": "none", "target": "target", True: "all", "all": "all"}
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "params", "weights")


# ----------------------------------------------------------------------------------------------------
# the source


def resolve_source(
    source: Any, *, trust_pickle: bool = False, want_module: bool = False
) -> tuple[dict[str, Any], str, Any, list[str]]:
    """Turn ``source`` into ``(state_dict, description, source_module_or_None, notes)``.

    ``source`` is a checkpoint path (any format :func:`torchsmith.checkpoint.read_state_dict` reads),
    a state_dict (a plain ``{name: tensor}`` mapping, or a training checkpoint holding one under
    ``state_dict``/``model``...), or an ``nn.Module`` (wrappers such as DataParallel are unwrapped).
    With ``want_module``, a file that records its architecture (``torchsmith.save`` of a model from
    ``create_model``/``build_model``) is rebuilt, so structure matching can trace it.
    """
    import torch
    import torch.nn as nn

    from torchsmith._modules import check_state_dict_intact, unwrap_model

    notes: list[str] = []
    if isinstance(source, nn.Module):
        check_state_dict_intact(source, "source")
        inner = unwrap_model(source)
        sd = inner.state_dict()
        return _keep_metadata(dict(sd), sd), f"{type(inner).__name__} module", inner, notes
    if isinstance(source, (str, os.PathLike)):
        from torchsmith.checkpoint import read_checkpoint

        ckpt = read_checkpoint(source, trust_pickle=trust_pickle)
        notes.extend(ckpt.notes)
        if ckpt.container_key:
            twins = [
                k
                for k, d in (ckpt.other_keys or {}).items()
                if d == f"dict with {len(ckpt.state_dict)} entries"
                and not any(w in k.lower() for w in ("optim", "sched", "scaler"))
            ]
            if twins:
                raise TransferError(
                    f"{source}: holds two complete weight sets, {ckpt.container_key!r} and "
                    f"{', '.join(map(repr, twins))} (a model and its EMA copy, a student and a teacher), "
                    "and nothing says which to load; load the file yourself (torch.load) and pass the "
                    f"entry you want as the source, e.g. load_weights(model, ckpt[{twins[0]!r}])"
                )
            notes.append(f"took the weights from the {ckpt.container_key!r} entry of the checkpoint")
        module = None
        if want_module and ("torchsmith.arch" in ckpt.metadata or "torchsmith.spec" in ckpt.metadata):
            from torchsmith.checkpoint import load_model

            try:
                module = load_model(source, trust_pickle=trust_pickle)
                notes.append("rebuilt the architecture the checkpoint records, to trace its forward order")
            except TorchsmithError as e:
                notes.append(f"could not rebuild the architecture the checkpoint records ({e})")
        return _flatten_source(ckpt.state_dict, str(source), notes), str(source), module, notes
    if isinstance(source, Mapping):
        return _flatten_source(source, "state_dict", notes), "state_dict", None, notes
    if getattr(source, "__name__", None) == "state_dict" and isinstance(
        getattr(source, "__self__", None), nn.Module
    ):
        raise InputError(
            "source: got the bound method model.state_dict, not the weights; call it: model.state_dict() "
            "(or pass the model itself)"
        )
    if callable(getattr(source, "state_dict", None)) and not isinstance(source, torch.Tensor):
        raise InputError(
            f"source: a {type(source).__name__} is not an nn.Module; pass a checkpoint path, a state_dict "
            "or a model"
        )
    raise InputError(
        f"source: expected a checkpoint path, a state_dict or an nn.Module, got {type(source).__name__}"
    )


def source_metadata(sd: Any) -> dict[str, Any] | None:
    """The module versions a state_dict carries (torch's ``_metadata``), or ``None``.

    ``Module.state_dict()`` records ``{module_prefix: {"version": n}}``; a module whose saved layout
    changed between versions (torchvision's MNASNet, batch norm's ``num_batches_tracked``) reads it
    in ``_load_from_state_dict`` -- MNASNet refuses a load without it.
    """
    meta = getattr(sd, "_metadata", None)
    return meta if isinstance(meta, Mapping) else None


def _keep_metadata(tensors: dict[str, Any], sd: Any) -> dict[str, Any]:
    """``tensors`` as an OrderedDict that keeps ``sd``'s ``_metadata`` (a plain dict cannot hold it)."""
    from collections import OrderedDict

    meta = source_metadata(sd)
    if meta is None:
        return tensors
    out: OrderedDict = OrderedDict(tensors)
    out._metadata = meta  # type: ignore[attr-defined]
    return out


def _flatten_source(sd: Mapping, where: str, notes: list[str]) -> dict[str, Any]:
    import torch

    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        sets = {
            str(k): v
            for k, v in sd.items()
            if isinstance(v, Mapping) and any(isinstance(t, torch.Tensor) for t in v.values())
        }
        twins = [
            (a, b)
            for i, a in enumerate(sets)
            for b in list(sets)[i + 1 :]
            if _shapes_of(sets[a]) == _shapes_of(sets[b])
        ]
        if twins:
            a, b = twins[0]
            raise InputError(
                f"{where}: holds two complete weight sets, entries {a!r} and {b!r} (a model and its EMA "
                f"copy, a student and a teacher), and nothing says which to load; pass the one you want "
                f"as the source: load_weights(model, checkpoint[{a!r}])"
            )
        for key in _NESTED_KEYS:
            inner = sd.get(key)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                notes.append(f"took the weights from the {key!r} entry of the checkpoint")
                return _flatten_source(inner, where, notes)
    others = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if others and tensors:
        notes.append(f"ignored {len(others)} non-tensor entries: {', '.join(map(str, others[:5]))}")
    if not tensors:
        raise TransferError(
            f"{where}: holds no tensors (entries: {', '.join(map(str, list(sd)[:8])) or 'none'}); "
            "expected a state_dict {name: tensor}"
        )
    return _keep_metadata({str(k): v for k, v in tensors.items()}, sd)


def _shapes_of(sd: Mapping) -> dict[str, tuple]:
    return {str(k): tuple(getattr(v, "shape", ())) for k, v in sd.items() if hasattr(v, "shape")}


def _take_prefix(src_sd: dict[str, Any], prefix: str, notes: list[str]) -> dict[str, Any]:
    """The source keys under ``prefix`` (``source_prefix=``), without it."""
    from torchsmith.checkpoint.keys import strip_wrappers

    p = prefix if prefix.endswith(".") else prefix + "."
    taken = {k[len(p) :]: v for k, v in src_sd.items() if k.startswith(p)}
    if not taken:
        taken = {strip_wrappers(k)[len(p) :]: v for k, v in src_sd.items() if strip_wrappers(k).startswith(p)}
    if not taken:
        tops = sorted({k.split(".", 1)[0] for k in src_sd})
        raise InputError(
            f"source_prefix: no source key starts with {p!r}; the keys start with "
            f"{', '.join(map(repr, tops[:8]))}{close_matches(prefix, tops)}"
        )
    notes.append(f"took the {len(taken)} source keys under {p!r} (source_prefix), without it")
    meta = source_metadata(src_sd)
    if meta is None:
        return taken
    from collections import OrderedDict

    out: Any = OrderedDict(taken)
    out._metadata = OrderedDict(
        (k[len(p) :] if k.startswith(p) else "", v)
        for k, v in meta.items()
        if k.startswith(p) or k + "." == p
    )
    return out


def _select_set(src_sd: dict[str, Any], prefix: str, tgt_shapes: Any, notes: list[str]) -> dict[str, Any]:
    """``source_prefix=``: a prefix takes its keys; ``""`` the keys outside every other weight set."""
    from torchsmith.checkpoint.keys import strip_wrappers

    if prefix:
        return _take_prefix(src_sd, prefix, notes)
    others = [p for p in _weight_sets(src_sd, tgt_shapes, len(tgt_shapes)) if p]
    if not others:
        return src_sd
    kept = {k: v for k, v in src_sd.items() if strip_wrappers(k).split(".", 1)[0] not in others}
    notes.append(
        f"left out the weight sets under {', '.join(repr(p + '.') for p in others)} (source_prefix='')"
    )
    return kept


def _weight_sets(
    src_sd: Mapping[str, Any], tgt_shapes: Mapping[str, tuple] | None, n_target: int = 0
) -> list[str]:
    """Prefixes of the source under which a complete weight set lies, when there are two or more.

    Two sets are complete when they hold the same keys with the same shapes (a model and its EMA
    copy), or when each alone holds every model key with the model's shapes (a student and a
    teacher of one architecture). ``""`` stands for the source's own keys outside the prefixes.
    """
    from torchsmith.checkpoint.keys import strip_wrappers

    keys = {strip_wrappers(k): tuple(v.shape) for k, v in src_sd.items() if hasattr(v, "shape")}
    groups: dict[str, dict[str, tuple]] = {}
    for k, shape in keys.items():
        top, _, rest = k.partition(".")
        if rest:
            groups.setdefault(top, {})[rest] = shape
    groups = {p: g for p, g in groups.items() if len(g) >= 2}
    complete: list[str] = []
    if tgt_shapes:
        need = {k: tuple(v) for k, v in tgt_shapes.items()}
        fits = [p for p, g in groups.items() if all(g.get(k) == v for k, v in need.items())]
        if all(keys.get(k) == v for k, v in need.items()):
            fits.insert(0, "")
        complete = fits
    if len(complete) < 2 and n_target:
        # Without names to compare (a structure port): equal sets each the model's size. Numbered
        # siblings (layer.0, layer.1) are repeated blocks, not weight sets.
        names = [p for p in groups if not p.isdigit() and len(groups[p]) == n_target]
        for i, a in enumerate(names):
            twins = [b for b in names[i + 1 :] if groups[b] == groups[a]]
            if twins:
                return [a, *twins]
    return complete if len(complete) >= 2 else []


def _refuse_ambiguous(
    src_sd: Mapping[str, Any], tgt_shapes: Mapping[str, tuple] | None, n_target: int, where: str
) -> None:
    sets = _weight_sets(src_sd, tgt_shapes, n_target)
    if sets:
        shown = ", ".join("the unprefixed keys" if p == "" else f"{p + '.'!r}" for p in sets)
        pick = next((p for p in sets if p), sets[0])
        raise InputError(
            f"{where}: holds {len(sets)} complete weight sets ({shown}: a model and its EMA copy, a "
            "student and a teacher), and nothing says which to load; pick one with "
            f"source_prefix={pick!r} (CLI: --source-prefix {pick})"
        )


# ----------------------------------------------------------------------------------------------------
# name matching


def _pattern_matcher(patterns: Iterable[str], what: str):
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = []
    for i, p in enumerate(patterns):
        if not isinstance(p, str) or not p:
            raise InputError(f"{what}[{i}]: expected a glob or 're:REGEX' string, got {p!r}")
        if p.startswith("re:"):
            try:
                rx = compile_regex(p[3:])  # linear time (RE2)
            except re.error as e:
                raise InputError(f"{what}[{i}]: invalid regular expression {p[3:]!r}: {e}") from None
            compiled.append((p, lambda k, rx=rx: rx.search(k) is not None))
        else:
            compiled.append((p, lambda k, p=p: fnmatch.fnmatchcase(k, p) or fnmatch.fnmatchcase(k, p + ".*")))

    def first_match(*keys: str) -> str | None:
        for p, fn in compiled:
            if any(k and fn(k) for k in keys):
                return p
        return None

    return first_match, bool(compiled)


def _parse_renames(rename: Any) -> list[tuple[str, str]]:
    if isinstance(rename, Mapping):
        rename = list(rename.items())
    if isinstance(rename, str):
        rename = [rename]
    out = []
    for i, r in enumerate(rename):
        if isinstance(r, str):
            if "=" not in r:
                raise InputError(f"rename[{i}]: expected 'REGEX=REPLACEMENT', got {r!r}")
            r = tuple(r.split("=", 1))
        out.append(r)
    return out


def _first_components(keys: Iterable[str], depth: int) -> Counter:
    c: Counter = Counter()
    for k in keys:
        parts = k.split(".")
        if len(parts) > depth:
            c[".".join(parts[:depth]) + "."] += 1
    return c


def _match_names(src_keys: list[str], tgt_keys: list[str], renames: list[tuple[str, str]], notes: list[str]):
    """Fit source keys to the model's: wrappers, the user's renames, then one automatic prefix.

    Notes say what was done; keys changed by the automatic prefix are never counted as "renamed by
    rules" (only the caller's own ``rename`` rules are).
    """
    from torchsmith.checkpoint.keys import fit_keys, inner_prefix_rule, strip_wrappers

    best = fit_keys(src_keys, tgt_keys, renames=renames)
    user_renamed = set(best.renamed)
    if best.unmatched_source and best.unmatched_target:
        # A prefix that is not a wrapper: a Lightning "model.", a "backbone." saved alone or loaded into one.
        candidates: list[tuple[str, list[tuple[str, str]]]] = []
        # counted on the keys without wrappers: module._orig_mod.model.x has the inner prefix model.
        plain_unmatched = [strip_wrappers(k) for k in best.unmatched_source]
        for depth in (1, 2):
            for p, n in _first_components(plain_unmatched, depth).most_common(3):
                if n >= 2:
                    candidates.append((f"removed prefix {p!r} from the source keys", [inner_prefix_rule(p)]))
            for p, n in _first_components(best.unmatched_target, depth).most_common(3):
                if n >= 2:
                    candidates.append((f"added prefix {p!r} to the source keys", [(r"^", p)]))
        chosen = None
        for note, rule in candidates:
            trial = fit_keys(src_keys, tgt_keys, renames=[*renames, *rule])
            if len(trial.mapping) > len(best.mapping):
                best, chosen = trial, note
        if chosen:
            notes.append(chosen)
    fitted_notes = []
    if best.prefixes_removed:
        fitted_notes.append("removed wrapper prefix " + ", ".join(map(repr, best.prefixes_removed)))
    if best.prefixes_added:
        fitted_notes.append("added wrapper prefix " + ", ".join(map(repr, best.prefixes_added)))
    n_renamed = len(user_renamed & set(best.mapping)) if renames else 0
    if n_renamed:
        fitted_notes.append(f"{n_renamed} source keys renamed by rules")
    notes[:0] = fitted_notes
    return best


# ----------------------------------------------------------------------------------------------------
# adaptation


def _parse_adapt(adapt: Any) -> set[str]:
    if adapt is True:
        return {"input_channels"}
    if adapt is False or adapt is None:
        return set()
    if adapt == "all":
        return set(ADAPTATIONS)
    items = [adapt] if isinstance(adapt, str) else list(adapt)
    for a in items:
        if a not in ADAPTATIONS:
            raise InputError(
                f"adapt: unknown adaptation {a!r}{close_matches(str(a), ADAPTATIONS)}; expected True, False, "
                f"'all' or some of {', '.join(ADAPTATIONS)}"
            )
    return set(items)


def _first_conv_and_head(model: Any, order: Sequence[str] | None = None) -> tuple[str | None, str | None]:
    """The module path of the input conv (first conv) and of the classifier (last Linear)."""
    import torch.nn as nn
    from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

    modules = dict(model.named_modules())
    paths = list(order) if order else list(modules)
    convs = [
        p
        for p in paths
        if isinstance(modules.get(p), _ConvNd) and not isinstance(modules[p], _ConvTransposeNd)
    ]
    linears = [p for p in paths if isinstance(modules.get(p), nn.Linear)]
    return (convs[0] if convs else None), (linears[-1] if linears else None)


def _adapt(
    key: str, src: Any, tgt: Any, modes: set[str], first_conv: str | None, head: str | None, model: Any
) -> tuple[Any, str, int] | str:
    """Return ``(tensor, how, elements_from_source)`` or the reason it cannot be adapted."""
    import torch

    path, _, local = key.rpartition(".")
    if src.dim() != tgt.dim():
        return f"different number of dimensions ({src.dim()} vs {tgt.dim()})"
    differ = [d for d in range(src.dim()) if src.shape[d] != tgt.shape[d]]
    if path == first_conv and local == "weight" and differ == [1]:
        if "input_channels" not in modes:
            return "input channels differ; pass adapt=True to adapt the first conv"
        if model.get_submodule(path).groups != 1:
            return "input channels differ on a grouped conv"
        s, t = src.shape[1], tgt.shape[1]
        w = src.float()
        if t == 1:
            new, how = w.sum(dim=1, keepdim=True), f"input channels {s} -> 1: summed over the input channels"
        else:
            reps = -(-t // s)
            new = w.repeat(1, reps, *([1] * (w.dim() - 2)))[:, :t] * (s / t)
            how = f"input channels {s} -> {t}: channels repeated and scaled by {s}/{t}"
        return new.to(tgt.dtype), how, tgt.numel()
    if path == head and local in ("weight", "bias") and differ == [0]:
        if "classifier" not in modes:
            return "classifier size differs (its classes differ); pass adapt='all' to truncate or widen it"
        s, t = src.shape[0], tgt.shape[0]
        if t < s:
            return (
                src[:t].to(tgt.dtype),
                f"classifier {s} -> {t} outputs: truncated to the first {t}",
                tgt.numel(),
            )
        new = torch.cat([src.to(tgt.dtype), tgt.detach()[s:].to(device=src.device)], dim=0)
        how = f"classifier {s} -> {t} outputs: rows {s}..{t - 1} keep the model's initialisation"
        return new, how, src.numel()
    if path == first_conv and local == "weight" and 1 in differ:
        return "the first conv differs in more than its input channels"
    return "no adaptation applies (only the first conv's input channels and the classifier's outputs adapt)"


# ----------------------------------------------------------------------------------------------------
# pairing: which source tensor goes into which model key


class _Filter:
    """``include``/``exclude`` patterns, tested against the model key and the source key of a pair."""

    def __init__(self, include: Iterable[str], exclude: Iterable[str]) -> None:
        self.excluded_by, _ = _pattern_matcher(exclude, "exclude")
        self.included_by, self.has_include = _pattern_matcher(include, "include")

    def dropped(self, t_key: str, s_key: str = "") -> str | None:
        """Why the pair is left out (``"exclude 'fc'"``, ``"not in include"``), or ``None``."""
        p = self.excluded_by(t_key, s_key)
        if p is not None:
            return f"exclude {p!r}"
        if self.has_include and self.included_by(t_key, s_key) is None:
            return "not in include"
        return None


@dataclass
class _Pairing:
    """Model key -> source key, and how to get the source value for a model key."""

    pairs: dict[str, str]
    src_sd: dict[str, Any]
    structure: Any = None  # the StructureMatch, whose equivalences may reshape or combine tensors
    order: list[str] | None = None  # the model's modules in forward order, when traced
    filter_pairs: bool = True  # name matches filter each pair; structure matches filter beforehand

    def value(self, t_key: str, shape: Any) -> Any:
        if self.structure is None:
            return self.src_sd[self.pairs[t_key]]
        return self.structure.value(t_key, self.src_sd, shape)  # equivalences applied

    def sources(self, t_key: str) -> list[str]:
        return [self.pairs[t_key]] if self.structure is None else list(self.structure.sources(t_key))


def _pair_by_name(src_sd: dict[str, Any], tgt_keys: list[str], rename: Any, notes: list[str]) -> _Pairing:
    fitted = _match_names(list(src_sd), tgt_keys, _parse_renames(rename), notes)
    return _Pairing({t: s for s, t in fitted.mapping.items()}, src_sd)


def _pair_by_structure(
    target: Any,
    src_sd: dict[str, Any],
    tgt_sd: dict[str, Any],
    src_module: Any,
    filt: _Filter,
    report: TransferReport,
    example_input: Any,
    order: str,
) -> _Pairing:
    from torchsmith.transfer.structure import match_structure

    keep_t = [k for k in tgt_sd if filt.dropped(k) is None]
    keep_s = [
        k
        for k in src_sd
        if filt.excluded_by(k) is None and (not filt.has_include or filt.included_by(k) is not None)
    ]
    sm = match_structure(
        target,
        {k: src_sd[k] for k in keep_s},
        target_keys=keep_t,
        source_module=src_module,
        example_input=example_input,
        order=order,
    )
    report.mapping = sm.mapping
    report.notes.extend(sm.notes)
    report.notes.extend(f"equivalence {e}" for e in sm.equivalences)
    for k in tgt_sd:
        if k not in keep_t:
            report.excluded.append(
                {"key": k, "source_key": "", "shape": tuple(tgt_sd[k].shape), "why": filt.dropped(k)}
            )
    for k in src_sd:
        if k not in keep_s:
            report.excluded.append(
                {"key": "", "source_key": k, "shape": tuple(src_sd[k].shape), "why": "filtered"}
            )
    return _Pairing(sm.pairs, src_sd, structure=sm, order=sm.target_order, filter_pairs=False)


# ----------------------------------------------------------------------------------------------------
# the plan: what each model key gets


def _plan(
    target: Any,
    tgt_sd: dict[str, Any],
    pairing: _Pairing,
    filt: _Filter,
    modes: set[str],
    report: TransferReport,
) -> dict[str, Any]:
    """Fill the report's loaded/adapted/skipped/missing/unexpected lists; return the new values."""
    first_conv, head = _first_conv_and_head(target, pairing.order)
    new_values: dict[str, Any] = {}
    from_source: dict[str, int] = {}
    used_source: set[str] = set()
    for t_key, tgt in tgt_sd.items():
        s_key = pairing.pairs.get(t_key)
        if s_key is None:
            continue
        src = pairing.value(t_key, tgt.shape)
        used_source.update(pairing.sources(t_key))
        why = filt.dropped(t_key, s_key) if pairing.filter_pairs else None
        if why:
            report.excluded.append({"key": t_key, "source_key": s_key, "shape": tuple(tgt.shape), "why": why})
            continue
        if tuple(src.shape) == tuple(tgt.shape):
            new_values[t_key] = src
            from_source[t_key] = tgt.numel()
            report.loaded.append({"key": t_key, "source_key": s_key, "shape": tuple(tgt.shape)})
            continue
        entry = {
            "key": t_key,
            "source_key": s_key,
            "source_shape": tuple(src.shape),
            "shape": tuple(tgt.shape),
        }
        result = _adapt(t_key, src, tgt, modes, first_conv, head, target)
        if isinstance(result, tuple):
            value, how, n_src = result
            new_values[t_key] = value
            from_source[t_key] = n_src
            report.adapted.append({**entry, "how": how})
        else:
            report.skipped_shape.append({**entry, "why": result})
    sm = pairing.structure
    kept = set(sm.kept) if sm is not None else set()
    ignored = set(sm.ignored) if sm is not None else set()
    report.kept = [{"key": k, "shape": tuple(tgt_sd[k].shape)} for k in tgt_sd if k in kept]
    report.missing = [
        {"key": k, "shape": tuple(v.shape)}
        for k, v in tgt_sd.items()
        if k not in pairing.pairs and k not in kept
    ]
    excluded_sources = {e["source_key"] for e in report.excluded}
    report.unexpected = [
        {"key": k, "shape": tuple(v.shape)}
        for k, v in pairing.src_sd.items()
        if k not in used_source and k not in excluded_sources and k not in ignored
    ]
    _count_parameters(target, from_source, report)
    casts = [t for t in new_values if pairing.src_sd[pairing.pairs[t]].dtype != tgt_sd[t].dtype]
    if casts:
        report.notes.append(
            f"{len(casts)} source tensors had another dtype and were cast to the model's dtype"
        )
    return new_values


def _count_parameters(target: Any, from_source: dict[str, int], report: TransferReport) -> None:
    """Parameter elements (not buffers), each tensor counted once even if tied under several names."""
    seen: set[int] = set()
    for name, p in target.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        report.params_total += p.numel()
        report.params_from_source += from_source.get(name, 0)


# ----------------------------------------------------------------------------------------------------
# the entry point


def load_weights(
    model: Any,
    source: Any,
    *,
    match: str = "name",
    rename: Sequence[tuple[str, str] | str] | Mapping[str, str] = (),
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    strict: bool | str = False,
    adapt: bool | str | Iterable[str] = True,
    allow_partial: bool = False,
    min_fraction: float | None = None,
    allow_empty: bool = False,
    trust_pickle: bool = False,
    example_input: Any = None,
    order: str = "auto",
    dry_run: bool = False,
    source_model: Any = None,
    source_prefix: str | None = None,
    allow_unverified: bool = False,
    adopt_hparams: bool = True,
) -> TransferReport:
    """Load ``source``'s weights into ``model`` (in place) and return a :class:`TransferReport`.

    ``source``: a checkpoint path, a state_dict, or an ``nn.Module``.

    ``match="name"`` pairs keys by name. Wrapper prefixes (``module.``, ``_orig_mod.``) are fitted
    automatically in both directions, and so is one other common prefix when that matches more
    keys (``model.`` of a Lightning checkpoint, a ``backbone.`` saved alone); the report notes it.
    ``rename`` is a list of ``(regex, replacement)`` pairs or ``"REGEX=REPL"`` strings applied to
    source keys. ``match="structure"`` pairs modules by the order they run in a forward pass and by
    shapes, for re-implementations whose names all differ (see :mod:`torchsmith.transfer.structure`;
    ``example_input`` and ``order`` tune the trace).

    ``include``/``exclude``: globs (``"fc"``, ``"layer4.*"``; a module name covers its tensors) or
    ``re:REGEX``, tested against both the model key and the source key of each pair.

    ``adapt``: shape changes allowed -- ``True`` (default) adapts the first conv's input channels
    (3 -> 1 sums the RGB filters; otherwise channels are repeated and rescaled); ``"all"`` or
    ``{"input_channels", "classifier"}`` also truncates or widens the classifier (the last Linear),
    new rows keeping the model's own initialisation. ``False`` adapts nothing. Every other shape
    mismatch is skipped and reported, never loaded silently.

    **Partial loads are loud.** A load where the architectures evidently differ raises
    :class:`~torchsmith.errors.TransferError` naming the fraction and the first mismatches: a tensor
    outside the head and the input layer has another shape (see :data:`ARCHITECTURE_MISMATCH`), or
    less than ``min_fraction`` (default 0.5) of the model's parameters would come from the source.
    A new head (another number of classes or outputs) and a changed input layer are normal.
    ``allow_partial=True`` loads the matching keys anyway (the seed's "keep the keys both have",
    S15); the report then notes the mismatch. An explicit ``min_fraction`` applies even then.

    ``strict``: ``False``/``"none"`` (default) loads what fits; ``"target"`` requires every model key
    to be loaded or adapted; ``True``/``"all"`` also requires every source key to be used. Checks
    run before anything is copied, so a refused load leaves the model untouched. A load that takes
    nothing at all raises unless ``allow_empty``. ``trust_pickle`` is passed to the checkpoint
    reader. ``dry_run`` plans and reports only (and refuses what the real load would refuse).

    **No unproven port** (``match="structure"``): a port is kept only when the two models compute
    the same function on an input. A source that is a state_dict or a file cannot run, so its
    architecture is found first: ``source_model=`` (a model, or a zoo/``torchvision:``/``timm:``/
    ``hf:`` name or spec) names it, else it is identified by its keys and shapes
    (:func:`torchsmith.transfer.fingerprint.identify_source`); the source is loaded into it by
    name and the port is checked. Unidentified, or fitting several architectures that compute
    different functions, the port is refused naming the candidates, unless ``allow_unverified=True``
    -- then the report says ``UNVERIFIED`` first. ``adopt_hparams`` (default ``True``): where paired
    modules differ in a hyper-parameter the model can take (a norm's ``eps``), the model takes the
    source's value and the report names it (``report.adopted``); ``False`` refuses instead. A
    difference the model cannot take (TF-"same" padding, a head count) is named when the check fails.

    **One weight set**: a source holding two complete weight sets (a model and its EMA copy under
    ``ema.``, a student and a teacher) is refused naming both; ``source_prefix="ema"`` takes the
    keys under that prefix (``""``: the keys outside the other sets).

    >>> import torch.nn as nn
    >>> src = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> dst = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 5))
    >>> r = load_weights(dst, nn.DataParallel(src), exclude=["2"], allow_partial=True)
    >>> r.counts()["loaded"], r.counts()["excluded"]
    (2, 2)
    """
    import torch

    from torchsmith._modules import check_state_dict_intact, unwrap_model

    strict_level, modes = _check_options(match, strict, adapt, min_fraction, rename)
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model: expected an nn.Module, got {type(model).__name__}")
    check_state_dict_intact(model, "model")
    target = unwrap_model(model)

    src_sd, src_desc, src_module, notes = resolve_source(
        source, trust_pickle=trust_pickle, want_module=match == "structure"
    )
    report = TransferReport(source=src_desc, match=match, notes=notes)
    tgt_sd = target.state_dict(keep_vars=True)
    tgt_shapes = {k: tuple(v.shape) for k, v in tgt_sd.items()}
    src_sd = _one_weight_set(src_sd, source_prefix, src_module, tgt_shapes, match, src_desc, notes)
    unproven, layout = "", None  # layout: a candidate architecture that gives the source's module kinds
    if match == "structure" and src_module is None:
        src_module, unproven, layout = _prove_source(src_sd, source_model, report)
        if src_module is not None or layout is not None:
            sd = (src_module if src_module is not None else layout).state_dict()
            src_sd = _keep_metadata(dict(sd), sd)
    elif source_model is not None:
        raise InputError("source_model: only used with match='structure' and a state_dict or file source")
    filt = _Filter(include, exclude)
    if match == "name":
        pairing = _pair_by_name(src_sd, list(tgt_sd), rename, notes)
    else:
        pairing = _pair_by_structure(
            target,
            src_sd,
            tgt_sd,
            src_module if layout is None else layout,
            filt,
            report,
            example_input,
            order,
        )
    new_values = _plan(target, tgt_sd, pairing, filt, modes, report)

    _check(report, strict_level, allow_empty, list(tgt_sd), list(src_sd))
    if report.loaded or report.adapted:  # an empty load was refused above or accepted by allow_empty
        _check_partial(report, target, pairing.order, allow_partial, min_fraction)
    if unproven:  # after the checks above, whose refusals say more (a divergence, another depth)
        _unproven_port(report, unproven, allow_unverified)
    if dry_run:
        return report
    versions = _module_versions(target, tgt_sd, pairing.pairs, src_sd, match == "name", report.notes)
    if match == "structure" and src_module is not None:
        _apply_checked(
            target,
            tgt_sd,
            new_values,
            src_module,
            report,
            example_input,
            pairing.structure,
            versions,
            adopt_hparams=adopt_hparams,
            allow_unverified=allow_unverified,
        )
    else:
        _apply(target, tgt_sd, new_values, versions)
    report.applied = True
    return report


def _one_weight_set(
    src_sd: dict[str, Any],
    source_prefix: Any,
    src_module: Any,
    tgt_shapes: dict[str, tuple],
    match: str,
    src_desc: str,
    notes: list[str],
) -> dict[str, Any]:
    """The source's one weight set: the keys under ``source_prefix``, or all of them when the source
    holds a single set (two complete sets, a model and its EMA copy, are refused naming both)."""
    if source_prefix is not None:
        if not isinstance(source_prefix, str):
            raise InputError(
                f"source_prefix: expected a key prefix string, got {type(source_prefix).__name__}"
            )
        return _select_set(src_sd, source_prefix, tgt_shapes, notes)
    if src_module is None:
        _refuse_ambiguous(src_sd, tgt_shapes if match == "name" else None, len(tgt_shapes), src_desc)
    return src_sd


def _unproven_port(report: TransferReport, unproven: str, allow_unverified: bool) -> None:
    """A port that cannot be checked numerically: refused, or kept and marked UNVERIFIED when asked."""
    if not allow_unverified:
        what = "the source state_dict" if report.source == "state_dict" else f"{report.source} (a state_dict)"
        raise _refuse(
            report,
            f"structure port refused: {what}: {unproven}, so the port cannot be checked numerically; "
            "nothing was loaded. Name the architecture that wrote it: source_model=NAME or a model "
            "(CLI: --source-model NAME; a zoo, torchvision:, timm: or hf: name), or pass "
            "allow_unverified=True (--allow-unverified) to port without proof",
        )
    report.unverified = f"the source is a state_dict and {unproven}; the port was not checked numerically"


def _prove_source(src_sd: dict[str, Any], source_model: Any, report: TransferReport) -> tuple[Any, str, Any]:
    """``(source model with its weights, "", None)`` so the port can be checked, or
    ``(None, why not, layout)``.

    ``source_model`` names the architecture; else it is identified by keys and shapes. Unproven:
    nothing fits, or several architectures fit and compute different functions on these weights
    (GPT-2's head count is not in its shapes). ``layout`` is then the first of them with the
    weights: its module kinds still tell how tensors are laid out (a transposed ``Conv1D``), so an
    unverified port (``allow_unverified=True``) pairs against it -- it is not used as proof.
    """
    from torchsmith.transfer.fingerprint import build_source_model, identify_source

    if source_model is not None:
        model = build_source_model(source_model)
        _load_into(model, src_sd, _name(source_model))
        report.notes.append(
            f"the source was loaded by name into {_name(source_model)} (source_model), then ported "
            "model to model and checked"
        )
        return model, "", None
    found = identify_source(src_sd)
    if len(found.matches) == 1:
        chosen = found.matches[0]
        model = chosen.build()
        _load_into(model, src_sd, chosen.describe())
        report.notes.append(
            f"identified the source as {chosen.describe()} by its keys and shapes; it was loaded into "
            "that architecture by name and the port checked against it"
        )
        return model, "", None
    if len(found.matches) > 1:
        model, first = _same_function(found.matches, src_sd)
        if model is not None:
            names = ", ".join(c.describe() for c in found.matches)
            report.notes.append(
                f"identified the source by its keys and shapes as one of {names}, which compute the same "
                "function on these weights; the port was checked against the first"
            )
            return model, "", None
        return (
            None,
            (
                "its keys and shapes fit "
                + ", ".join(c.describe() for c in found.matches[:6])
                + ", which compute different functions on these weights (a hyper-parameter the state_dict "
                f"does not hold: padding, norm eps, blur pooling, head count; e.g. "
                f"source_model={found.matches[0].name!r} if that is the one)"
            ),
            first,
        )
    closest = f"; closest known: {'; '.join(found.closest)}" if found.closest else ""
    return (
        None,
        (
            f"its architecture was not identified by its keys and shapes ({found.looked_at} candidates "
            f"built{closest})"
        ),
        None,
    )


def _name(source_model: Any) -> str:
    return repr(source_model) if isinstance(source_model, str) else type(source_model).__name__


def _load_into(model: Any, src_sd: dict[str, Any], what: str) -> None:
    try:
        load_weights(model, src_sd, match="name", strict="target")
    except TransferError as e:
        raise TransferError(f"source model {what}: the source is not of this architecture ({e})") from None


def _varied(model: Any, x: Any) -> Any:
    """``x`` with random token ids when it is an index tensor: all-equal tokens can hide a head count."""
    import torch

    if not isinstance(x, torch.Tensor) or x.dtype.is_floating_point:
        return x
    sizes = [m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, min(sizes) if sizes else 2, tuple(x.shape), generator=g, device=x.device)


def _same_function(candidates: list[Any], src_sd: dict[str, Any]) -> tuple[Any, Any]:
    """``(first, first)`` when all candidates compute the same function on ``src_sd`` (the first
    built with ``src_sd`` loaded), else ``(None, first or None)``."""
    from torchsmith.transfer.port_check import TOLERANCE, _run
    from torchsmith.transfer.structure import _example_inputs

    first, x, ref = None, None, None
    for cand in candidates:
        try:
            model = cand.build()
            load_weights(model, src_sd, match="name", strict="target")
            if x is None:
                inputs = _example_inputs(model)
                if not inputs:
                    return None, model
                x = _varied(model, inputs[0])
            out = _run(model, x, None).detach().double()
        except Exception:  # a candidate that cannot run on the input settles nothing
            return None, first
        if ref is None:
            first, ref = model, out
            continue
        scale = ref.abs().max().item() or 1.0
        if out.shape != ref.shape or not (out - ref).abs().max().item() / scale <= TOLERANCE:
            return None, first
    return first, first


def _check_options(
    match: str, strict: Any, adapt: Any, min_fraction: Any, rename: Any
) -> tuple[str, set[str]]:
    if match not in ("name", "structure"):
        raise InputError(
            f"match: expected 'name' or 'structure', got {match!r}"
            f"{close_matches(str(match), ['name', 'structure'])}"
        )
    if strict not in _STRICT_LEVELS:
        raise InputError(f"strict: expected False, 'none', 'target', True or 'all', got {strict!r}")
    if min_fraction is not None and (
        isinstance(min_fraction, bool)
        or not isinstance(min_fraction, (int, float))
        or not 0.0 <= float(min_fraction) <= 1.0
    ):
        raise InputError(f"min_fraction: expected a number between 0 and 1, got {min_fraction!r}")
    if match == "structure" and rename:
        raise InputError("rename: not used with match='structure' (names are ignored); use include/exclude")
    return _STRICT_LEVELS[strict], _parse_adapt(adapt)


# ----------------------------------------------------------------------------------------------------
# checks: run before anything is copied, so a refused load leaves the model untouched


def _few(entries: list[dict], key: str = "key", n: int = 5) -> str:
    names = [e[key] or e.get("source_key", "") for e in entries[:n]]
    return ", ".join(repr(x) for x in names) + (f" (+{len(entries) - n} more)" if len(entries) > n else "")


def _refuse(report: TransferReport, message: str) -> TransferError:
    """A TransferError that carries the report, so a caller (the CLI) can still show the table."""
    error = TransferError(message)
    error.report = report  # type: ignore[attr-defined]
    return error


def _check(
    report: TransferReport, strict_level: str, allow_empty: bool, tgt_keys: list[str], src_keys: list[str]
) -> None:
    if not report.loaded and not report.adapted and not allow_empty:
        hint = ""
        if src_keys and tgt_keys:
            t = tgt_keys[0]
            import difflib

            found = difflib.get_close_matches(t, src_keys, n=1, cutoff=0.5)
            near = f" (closest source key: {found[0]!r})" if found else ""
            hint = (
                f"; the source has keys like {src_keys[0]!r}, the model like {t!r}{near}. "
                "Use rename=[(REGEX, REPL)] for renamed layers, or match='structure' for a "
                "re-implementation with other names"
            )
        if report.skipped_shape:
            n = len(report.skipped_shape)
            hint += f"; {n} keys matched by name but had other shapes: {_few(report.skipped_shape)}"
        raise _refuse(
            report,
            f"nothing was loaded from {report.source}: 0 of {len(tgt_keys)} model keys matched{hint} "
            "(pass allow_empty=True to accept an empty load)",
        )
    if strict_level in ("target", "all"):
        bad = report.missing + report.skipped_shape
        if bad:
            raise _refuse(
                report,
                f"strict={strict_level!r}: {len(bad)} model keys would not come from {report.source}: "
                f"{_few(bad)}; nothing was loaded",
            )
    if strict_level == "all" and report.unexpected:
        raise _refuse(
            report,
            f"strict='all': {len(report.unexpected)} source keys would be left unused: "
            f"{_few(report.unexpected)}; nothing was loaded",
        )


#: The default share of the model's parameters that must come from the source (``min_fraction``).
DEFAULT_MIN_FRACTION = 0.5

ARCHITECTURE_MISMATCH = """A shape skip is evidence that the architectures differ unless it is
* in the input layer (the first conv, Linear or Embedding the model runs): other input channels, a
  smaller stem kernel, another vocabulary; or
* an output size: a Linear, conv or Embedding tensor that differs only in its number of outputs
  (dimension 0; dimension 1 of a transposed conv's weight) -- a new head, another number of classes.
Any other shape skip (a norm layer's width, a kernel size, an input width inside the network, a
different number of dimensions) means the source is another architecture. So do repeated blocks
only one side has (``layer1.2`` missing while ``layer1.0`` and ``layer1.1`` load: another depth)."""


def _layer_roles(target: Any, order: Sequence[str] | None) -> tuple[str | None, dict[str, Any]]:
    """The input layer's module path, and every module by path."""
    import torch.nn as nn
    from torch.nn.modules.conv import _ConvNd

    modules = dict(target.named_modules())
    paths = list(order) if order else list(modules)
    layers = (_ConvNd, nn.Linear, nn.Embedding, nn.EmbeddingBag)
    first = next((p for p in paths if isinstance(modules.get(p), layers)), None)
    return first, modules


def _is_output_size_change(entry: dict, module: Any) -> bool:
    import torch.nn as nn
    from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

    if not isinstance(module, (_ConvNd, nn.Linear, nn.Embedding, nn.EmbeddingBag)):
        return False
    s, t = entry["source_shape"], entry["shape"]
    if len(s) != len(t):
        return False
    differ = [d for d in range(len(t)) if s[d] != t[d]]
    local = entry["key"].rpartition(".")[2]
    out_dim = 1 if isinstance(module, _ConvTransposeNd) and local == "weight" else 0
    return differ == [out_dim]


def _mismatches(report: TransferReport, target: Any, order: Sequence[str] | None) -> tuple[list, list]:
    """Split the shape skips into ``(mismatches, expected)`` (see :data:`ARCHITECTURE_MISMATCH`).

    ``expected`` are a new head's or input layer's tensors, which do not count against the source.
    """
    if not report.skipped_shape:
        return [], []
    input_layer, modules = _layer_roles(target, order)
    bad, expected = [], []
    for e in report.skipped_shape:
        path = e["key"].rpartition(".")[0]
        if path == input_layer or _is_output_size_change(e, modules.get(path)):
            expected.append(e)
        else:
            bad.append(e)
    return bad, expected


def _comparable_fraction(report: TransferReport, target: Any, set_aside: list[dict]) -> float:
    """The share of parameters from the source, not counting tensors left out on purpose or expected
    to differ (``set_aside``: a new head, an input layer)."""
    params = dict(target.named_parameters())
    keys = {e["key"] for e in set_aside} | {e["key"] for e in report.excluded if e["key"]}
    aside = sum(params[k].numel() for k in keys if k in params)
    total = report.params_total - aside
    return report.params_from_source / total if total > 0 else 1.0


def _other_depth(report: TransferReport) -> tuple[list[str], list[str]]:
    """Repeated blocks only one side has: ``(model's, source's)``.

    ``layer1.2.conv1.weight`` missing while ``layer1.0.conv1.weight`` and ``layer1.1...`` were loaded
    means the model repeats a block more often than the source (resnet18 into resnet34): the
    numbers fill 54 % of the model without a single shape skip, yet it is another architecture.
    """

    def shapes_of(keys: Iterable[str]) -> set[tuple[tuple[str, ...], tuple[str, ...]]]:
        out = set()
        for k in keys:
            parts = k.split(".")
            for i, p in enumerate(parts[:-1]):
                if p.isdigit():
                    out.add((tuple(parts[:i]), tuple(parts[i + 1 :])))
        return out

    def extra(entries: list[dict], loaded: set) -> list[str]:
        blocks: dict[str, None] = {}
        for e in entries:
            parts = e["key"].split(".")
            for i, p in enumerate(parts[:-1]):
                if p.isdigit() and (tuple(parts[:i]), tuple(parts[i + 1 :])) in loaded:
                    blocks[".".join(parts[: i + 1])] = None
                    break
        return list(blocks)

    done = report.loaded + report.adapted
    model_side = shapes_of(e["key"] for e in done)
    source_side = shapes_of(e["source_key"] for e in done if e.get("source_key"))
    return extra(report.missing, model_side), extra(report.unexpected, source_side)


def _check_partial(
    report: TransferReport,
    target: Any,
    order: Sequence[str] | None,
    allow_partial: bool,
    min_fraction: float | None,
) -> None:
    """Refuse a load whose architecture mismatch is evident, unless ``allow_partial``.

    ``min_fraction`` given explicitly is the caller's own bar on ``report.fraction`` and applies
    even with ``allow_partial``; by default the bar is :data:`DEFAULT_MIN_FRACTION` of the
    parameters that could come from the source (a new head and input layer, and what
    include/exclude left out, are not counted) and is part of the evidence.
    """
    if min_fraction is not None and report.fraction < float(min_fraction):
        raise _refuse(
            report,
            f"only {report.fraction:.1%} of the model's parameters would come from {report.source}, "
            f"less than min_fraction={float(min_fraction):.1%}; nothing was loaded. {report.summary()}",
        )
    bad, expected = _mismatches(report, target, order)
    reasons = []
    if bad:
        shown = "; ".join(f"{e['key']!r} {tuple(e['source_shape'])} vs {tuple(e['shape'])}" for e in bad[:3])
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        reasons.append(
            f"{len(bad)} tensors outside the head and the input layer have other shapes (source vs "
            f"model): {shown}{more}"
        )
    for side, blocks in zip(("model", "source"), _other_depth(report)):
        if blocks:
            other = "source" if side == "model" else "model"
            shown = _few([{"key": b} for b in blocks], n=4)
            reasons.append(
                f"the {side} has {len(blocks)} repeated blocks the {other} lacks ({shown}): another "
                "depth of the same family"
            )
    fraction = _comparable_fraction(report, target, expected)
    if min_fraction is None and fraction < DEFAULT_MIN_FRACTION:
        first = []
        if report.missing:
            first.append(f"model keys not in the source: {_few(report.missing, n=3)}")
        if report.unexpected:
            first.append(f"source keys not in the model: {_few(report.unexpected, n=3)}")
        reasons.append(
            f"only {fraction:.1%} of the model's parameters (a new head or input layer not counted) would "
            f"come from the source, less than min_fraction={DEFAULT_MIN_FRACTION:.0%}"
            + (f"; {'; '.join(first)}" if first else "")
        )
    if not reasons:
        return
    what = f"{report.source} looks like another architecture: " + "; and ".join(reasons)
    if allow_partial:
        report.partial = what
        report.notes.append(f"partial load allowed (allow_partial=True): {what}")
        return
    raise _refuse(
        report,
        f"{what}. Nothing was loaded. If a partial load is what you want (keep the keys both have), "
        "pass allow_partial=True (CLI: --allow-partial); min_fraction= sets the threshold",
    )


# ----------------------------------------------------------------------------------------------------
# applying


def _apply_checked(
    target: Any,
    tgt_sd: dict[str, Any],
    new_values: dict[str, Any],
    src_module: Any,
    report: TransferReport,
    example_input: Any,
    sm: Any = None,
    versions: Any = None,
    *,
    adopt_hparams: bool = True,
    allow_unverified: bool = False,
) -> None:
    """A structure port is kept only if the two models agree on an input (WRONG = 0).

    The target runs with the ported tensors in place of its own (``functional_call``) and they are
    copied in only once the check passed: a refused port never touched the model, and no rollback
    copy is needed. Models where that is not exact (tied tensors, load hooks, state_dict entries
    that are not the module's own tensors, meta tensors) are written, checked and rolled back.
    """
    import torch

    from torchsmith.transfer import hparams
    from torchsmith.transfer.port_check import check_port

    run = (sm.check_input, sm.source_output) if sm is not None else (None, None)
    idle = sm.idle if sm is not None else ()
    diffs = hparams.compare_hparams(target, src_module, report.mapping)
    adoptable = [d for d in diffs if d.adoptable]
    if adoptable and not adopt_hparams:
        raise _refuse(
            report,
            "port refused (adopt_hparams=False): the paired modules differ in hyper-parameters the "
            f"weights do not hold: {hparams.describe(adoptable)}; nothing was loaded. Pass "
            "adopt_hparams=True to give the model the source's values",
        )
    adopted = hparams.adopt(
        target, adoptable
    )  # before the check: the model must compute the source's function
    fixed = [d for d in diffs if not d.adoptable]
    owned = _owned_tensors(target, tgt_sd, new_values)
    try:
        if owned is None:
            old_values = {k: tgt_sd[k].detach().clone() for k in new_values}
            _apply(target, tgt_sd, new_values, versions)
            try:
                result = check_port(target, src_module, report, example_input, source_run=run, idle=idle)
            except TransferError:
                _apply(target, tgt_sd, old_values, versions)
                raise
        else:
            values = {
                k: v.detach().to(device=owned[k].device, dtype=owned[k].dtype) for k, v in new_values.items()
            }
            result = check_port(
                target, src_module, report, example_input, source_run=run, idle=idle, target_values=values
            )
            if isinstance(result, str) and not allow_unverified:
                raise _refuse(report, _unproven(result))
            # The checked run used exactly these tensors as the module's own; copy_ into the module's
            # tensors (no load hook in between) makes the model that function. No second pass.
            with torch.no_grad():
                for k, v in values.items():
                    owned[k].copy_(v)
    except TransferError as e:
        hparams.restore(target, adopted)
        if fixed and "differ from the source's" in str(e):
            raise _refuse(report, str(hparams.refuse_differences(fixed, str(e), adopted))) from None
        if getattr(e, "report", None) is None:
            e.report = report  # type: ignore[attr-defined]
        raise
    if isinstance(result, str):
        if not allow_unverified:  # the write-check-rollback path: roll back
            _apply(target, tgt_sd, old_values, versions)
            hparams.restore(target, adopted)
            raise _refuse(report, _unproven(result))
        report.unverified = result
    report.adopted = [d.to_dict() for d in adopted]
    if adopted:
        report.notes.append(
            f"adopted the source's hyper-parameters (adopt_hparams=True): {hparams.describe(adopted)}"
        )
    if fixed:
        report.notes.append(
            f"hyper-parameters that differ but did not change the outputs: {hparams.describe(fixed)}"
        )
    report.notes.append(result if isinstance(result, str) else result.describe())


def _unproven(why: str) -> str:
    return (
        f"structure port refused: {why}, so the port is not proven; nothing was loaded. Pass "
        "allow_unverified=True (CLI: --allow-unverified) to port without proof"
    )


def _owned_tensors(target: Any, tgt_sd: dict[str, Any], keys: Iterable[str]) -> dict[str, Any] | None:
    """The module's own tensor for each key, when running with replaced tensors and then copying
    into them is exactly what ``load_state_dict`` would do; else ``None``.

    Not so with a meta tensor (nothing to run), a tensor shared under two names (``functional_call``
    would tie the replacements), a load hook (it may change values), or a state_dict entry that a
    custom ``_save_to_state_dict`` made instead of a parameter or buffer.
    """
    own: dict[str, Any] = {}
    seen: set[int] = set()
    for k, t in list(target.named_parameters(remove_duplicate=False)) + list(
        target.named_buffers(remove_duplicate=False)
    ):
        if id(t) in seen:
            return None
        seen.add(id(t))
        own[k] = t
    if any(m._load_state_dict_pre_hooks or m._load_state_dict_post_hooks for m in target.modules()):
        return None
    out = {}
    for k in keys:
        t = own.get(k)
        if t is None or t is not tgt_sd[k] or t.device.type == "meta":
            return None
        out[k] = t
    return out


def _module_versions(
    target: Any, tgt_sd: Any, pairs: Mapping[str, str], src_sd: Any, by_name: bool, notes: list[str]
) -> dict[str, Any] | None:
    """The ``_metadata`` (module versions) the load hands to ``load_state_dict``.

    By name, each model module takes the version its source module recorded (a module's
    ``_load_from_state_dict`` converts an older layout by it, as torch's own load does); modules
    the source says nothing about keep the model's own version, and a source without any versions
    (a safetensors file) is read as written by the model's code -- noted where a module of the
    model's own library reads its version. A structure port builds every value in the model's own
    layout, so the model's versions apply.
    """
    from collections import OrderedDict

    own = source_metadata(tgt_sd)
    if own is None:
        return None
    out: OrderedDict = OrderedDict((k, dict(v)) for k, v in own.items())
    src_meta = source_metadata(src_sd)
    if not by_name:
        return out
    if src_meta is None:
        modules = dict(target.named_modules())
        readers = [path for path in own if path in modules and _reads_version(modules[path])]
        if readers:
            notes.append(
                "the source records no module versions (torch's _metadata); read as written by the "
                "model's code (the model's own versions for "
                + ", ".join(f"{p or '(root)'} ({type(modules[p]).__name__})" for p in readers[:3])
                + ")"
            )
        return out
    # model module path -> source module path, from the paired keys' common tail
    src_path: dict[str, str] = {}
    for t_key, s_key in pairs.items():
        t_parts, s_parts = t_key.split("."), s_key.split(".")
        n = 0
        while n < min(len(t_parts), len(s_parts)) and t_parts[-1 - n] == s_parts[-1 - n]:
            n += 1
        for cut in range(1, n + 1):  # every module on the key's path, down from its owner
            t_mod = ".".join(t_parts[: len(t_parts) - cut])
            src_path.setdefault(t_mod, ".".join(s_parts[: len(s_parts) - cut]))
    for path in out:
        version = src_meta.get(src_path[path]) if path in src_path else None
        if isinstance(version, Mapping):
            out[path] = dict(version)
    return out


def _reads_version(module: Any) -> bool:
    """True when ``module`` has a load of its own library (not torch.nn's) that may read its version."""
    loader = type(module)._load_from_state_dict
    return not getattr(loader, "__module__", "").startswith("torch.")


def _apply(target: Any, tgt_sd: dict[str, Any], new_values: dict[str, Any], versions: Any = None) -> None:
    from collections import OrderedDict

    import torch

    meta = any(tgt_sd[k].device.type == "meta" for k in new_values)
    values: Any = OrderedDict((k, v.detach().to(dtype=tgt_sd[k].dtype)) for k, v in new_values.items())
    if versions is not None:
        values._metadata = versions
    result = target.load_state_dict(values, strict=False, assign=meta)
    if result.unexpected_keys:  # pragma: no cover - keys come from the model's own state_dict
        raise TransferError(f"load_state_dict rejected keys {result.unexpected_keys[:5]}")
    if meta:
        return
    # Trap 5 made loud: check that the model now really holds the values.
    now = target.state_dict()
    for k, v in values.items():
        if not torch.equal(now[k].detach().cpu(), v.cpu()):
            raise TransferError(
                f"after loading, {k!r} does not hold the source values (a custom _load_from_state_dict "
                "or a load hook changed them)"
            )
