"""Fit checkpoint keys to a model's own keys: wrapper prefixes removed or added, then user renames.

Wrappers rename every parameter: ``nn.DataParallel`` and DDP insert ``module.``, ``torch.compile``
inserts ``_orig_mod.``, and they stack in any order (``_orig_mod.module.fc.weight``) and at any depth
(``model._orig_mod.fc.weight`` when a compiled submodule is saved). Rather than stripping one fixed
prefix (and failing silently on a typo such as the seeds' ``'modeule.'``, trap 4), :func:`fit_keys`
compares both sides with every wrapper component removed and maps each source key to the target
key that has the same plain name. Pure Python: no torch import.

>>> m = fit_keys(["module.fc.weight", "module.fc.bias"], ["fc.weight", "fc.bias"])
>>> m.mapping["module.fc.weight"]
'fc.weight'
>>> m.describe()
"2 of 2 keys fitted; removed wrapper prefix 'module.'"
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torchsmith._patterns import compile_regex

__all__ = [
    "WRAPPER_COMPONENTS",
    "KeyMapping",
    "fit_keys",
    "inner_prefix_rule",
    "rename_module_metadata",
    "strip_wrappers",
    "wrapper_prefix",
]

# Dotted-key components that wrappers insert: DataParallel/DDP/FSDP(1) -> "module",
# torch.compile's OptimizedModule -> "_orig_mod".
WRAPPER_COMPONENTS = ("module", "_orig_mod")


def strip_wrappers(key: str) -> str:
    """Remove every ``module.`` / ``_orig_mod.`` component from a dotted key, wherever it is.

    The last component (the tensor's own name) is never removed.

    >>> strip_wrappers("_orig_mod.module.layer1.0.conv1.weight")
    'layer1.0.conv1.weight'
    >>> strip_wrappers("model._orig_mod.fc.bias")
    'model.fc.bias'
    """
    parts = key.split(".")
    if len(parts) < 2:
        return key
    kept = [p for p in parts[:-1] if p not in WRAPPER_COMPONENTS]
    kept.append(parts[-1])
    return ".".join(kept)


def wrapper_prefix(key: str) -> str:
    """The part of ``key`` up to and including its last wrapper component, or ``""`` when it has none.

    >>> wrapper_prefix("_orig_mod.module.fc.weight")
    '_orig_mod.module.'
    >>> wrapper_prefix("fc.weight")
    ''
    """
    parts = key.split(".")
    last = -1
    for i, p in enumerate(parts[:-1]):
        if p in WRAPPER_COMPONENTS:
            last = i
    return "" if last < 0 else ".".join(parts[: last + 1]) + "."


@dataclass
class KeyMapping:
    """The result of :func:`fit_keys`.

    ``mapping`` maps each matched source key to the target key it loads into. ``prefixes_removed``
    are wrapper prefixes found in the source but not in the target (``"module."``), and
    ``prefixes_added`` the reverse. ``renamed`` maps source keys that a user rename rule changed.
    ``metadata`` is the source state dict's ``_metadata`` (module versions, as ``state_dict()``
    records them) with its module prefixes renamed like the keys, or ``None`` when the source keys
    came without one; :meth:`apply` attaches it to the renamed state dict.
    """

    mapping: dict[str, str] = field(default_factory=dict)
    unmatched_source: list[str] = field(default_factory=list)
    unmatched_target: list[str] = field(default_factory=list)
    prefixes_removed: list[str] = field(default_factory=list)
    prefixes_added: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    metadata: OrderedDict | None = None

    def apply(self, state_dict: Mapping[str, Any]) -> OrderedDict:
        """``state_dict``'s matched entries under their target names, module versions kept.

        The result carries ``_metadata`` (renamed like the keys) as ``load_state_dict`` expects:
        modules that version their state (BatchNorm, torchvision's MNASNet) read it while loading.
        Unmatched source entries are left out (they are listed in ``unmatched_source``).

        >>> from collections import OrderedDict
        >>> sd = OrderedDict([("module.fc.weight", 1)])
        >>> sd._metadata = OrderedDict([("", {"version": 1}), ("module", {"version": 2}),
        ...                             ("module.fc", {"version": 1})])
        >>> out = fit_keys(sd, ["fc.weight"]).apply(sd)
        >>> dict(out), dict(out._metadata)
        ({'fc.weight': 1}, {'': {'version': 2}, 'fc': {'version': 1}})
        """
        out = OrderedDict((self.mapping[k], v) for k, v in state_dict.items() if k in self.mapping)
        metadata = getattr(state_dict, "_metadata", None)
        if metadata is not None:
            renamed = self.metadata
            out._metadata = renamed if renamed is not None else rename_module_metadata(metadata, self.mapping)
        return out

    @property
    def changed(self) -> bool:
        """True when at least one key is loaded under a different name."""
        return any(s != t for s, t in self.mapping.items())

    def describe(self) -> str:
        """One line for people, e.g. ``"120 of 122 keys fitted; removed wrapper prefix 'module.'"``."""
        total = len(self.mapping) + len(self.unmatched_source)
        parts = [f"{len(self.mapping)} of {total} keys fitted"]
        if self.prefixes_removed:
            parts.append("removed wrapper prefix " + ", ".join(repr(p) for p in self.prefixes_removed))
        if self.prefixes_added:
            parts.append("added wrapper prefix " + ", ".join(repr(p) for p in self.prefixes_added))
        if self.renamed:
            parts.append(f"{len(self.renamed)} renamed by rules")
        if self.unmatched_source:
            parts.append(f"{len(self.unmatched_source)} source keys unmatched")
        if self.unmatched_target:
            parts.append(f"{len(self.unmatched_target)} target keys missing")
        return "; ".join(parts)


_WRAPPERS_RE = "(?:(?:" + "|".join(WRAPPER_COMPONENTS) + r")\.)*"


def inner_prefix_rule(prefix: str) -> tuple[str, str]:
    """A rename rule removing a non-wrapper ``prefix`` (``"model."``) with wrappers around it in any order.

    Lightning's ``model.``, a ``backbone.``: under DDP and ``torch.compile`` the keys read
    ``module.model.x``, ``_orig_mod.model.x``, ``module._orig_mod.model.x`` or ``model._orig_mod.x``;
    the rule removes the prefix and every wrapper component before and inside it.

    >>> import re
    >>> pattern, repl = inner_prefix_rule("model.")
    >>> keys = ["module._orig_mod.model.fc.w", "_orig_mod.model.fc.w", "model.module.fc.w"]
    >>> [re.sub(pattern, repl, k) for k in keys]
    ['fc.w', 'fc.w', 'fc.w']
    """
    parts = [p for p in prefix.split(".") if p]
    return "^" + _WRAPPERS_RE + "".join(re.escape(p) + r"\." + _WRAPPERS_RE for p in parts), ""


def _compile_renames(renames: Sequence[tuple[str, str]]) -> list[tuple[re.Pattern, str]]:
    from torchsmith.errors import InputError

    compiled = []
    for i, rule in enumerate(renames):
        try:
            pattern, repl = rule
        except (TypeError, ValueError):
            raise InputError(f"renames[{i}]: expected a (regex, replacement) pair, got {rule!r}") from None
        try:
            compiled.append((compile_regex(pattern), repl))  # linear time (RE2)
        except re.error as e:
            raise InputError(f"renames[{i}]: invalid regular expression {pattern!r}: {e}") from None
    return compiled


def fit_keys(
    source_keys: Iterable[str],
    target_keys: Iterable[str],
    *,
    renames: Sequence[tuple[str, str]] = (),
) -> KeyMapping:
    """Map each source key to the target key it should load into.

    A source key matches a target key when they are equal, or equal once every wrapper component
    (``module.``, ``_orig_mod.``) is removed from both: wrapper prefixes are removed or added so the
    source fits the target's own naming, in any order and at any depth. ``renames`` is a sequence of
    ``(regex, replacement)`` rules (``re.sub``) applied to each source key *as written in the
    source* (wrapper prefixes included, so ``r"^module\\.model\\."`` matches what the file holds),
    before wrapper fitting; for genuine renames such as ``(r"^backbone\\.", "")``. For an inner
    prefix under wrappers in any order (``module._orig_mod.model.``), see :func:`inner_prefix_rule`.

    >>> m = fit_keys(["fc.weight"], ["_orig_mod.module.fc.weight"])
    >>> m.mapping, m.prefixes_added
    ({'fc.weight': '_orig_mod.module.fc.weight'}, ['_orig_mod.module.'])
    >>> fit_keys(["backbone.fc.w"], ["fc.w"], renames=[(r"^backbone\\.", "")]).mapping
    {'backbone.fc.w': 'fc.w'}
    >>> fit_keys(["module.model.fc.w"], ["fc.w"], renames=[(r"^module\\.model\\.", "")]).mapping
    {'module.model.fc.w': 'fc.w'}
    """
    source = list(source_keys)
    target = list(target_keys)
    rules = _compile_renames(renames)
    target_set = set(target)
    # plain name -> target key; the first target with a given plain name wins.
    by_plain: dict[str, str] = {}
    for t in target:
        by_plain.setdefault(strip_wrappers(t), t)

    result = KeyMapping()
    taken: set[str] = set()
    removed: dict[str, None] = {}
    added: dict[str, None] = {}
    # Exact matches first so that a source holding both "x" and "module.x" maps each faithfully.
    pending = []
    for s in source:
        if not rules and s in target_set and s not in taken:
            result.mapping[s] = s
            taken.add(s)
        else:
            pending.append(s)
    for s in pending:
        # Rules see the key as written in the source (wrappers included), as the user reads it.
        name = s
        for pattern, repl in rules:
            name = pattern.sub(repl, name)
        if name != s:
            result.renamed[s] = name
        t = by_plain.get(strip_wrappers(name))
        if t is None and name in target_set:
            t = name
        if t is None or t in taken:
            result.unmatched_source.append(s)
            continue
        result.mapping[s] = t
        taken.add(t)
        sp, tp = wrapper_prefix(s), wrapper_prefix(t)
        if sp != tp:
            if sp:
                removed[sp] = None
            if tp:
                added[tp] = None
    result.unmatched_target = [t for t in target if t not in taken]
    result.prefixes_removed = list(removed)
    result.prefixes_added = list(added)
    metadata = getattr(source_keys, "_metadata", None)
    if isinstance(metadata, Mapping):
        result.metadata = rename_module_metadata(metadata, result.mapping)
    return result


def _module_pairs(mapping: Mapping[str, str]) -> dict[str, str]:
    """Source module prefix -> target module prefix, read off the key pairs' common endings.

    ``module.layer1.0.conv.weight`` -> ``layer1.0.conv.weight`` share ``layer1.0.conv.weight``, so
    ``module`` -> ``""``, ``module.layer1`` -> ``layer1`` ... ``module.layer1.0.conv`` -> ``layer1.0.conv``.
    """
    pairs: dict[str, str] = {}
    for s, t in mapping.items():
        sp, tp = s.split("."), t.split(".")
        common = 0
        while common < min(len(sp), len(tp)) and sp[-1 - common] == tp[-1 - common]:
            common += 1
        shift = len(sp) - len(tp)
        for j in range(len(sp) - common, len(sp)):
            pairs.setdefault(".".join(sp[:j]), ".".join(tp[: j - shift]))
    return pairs


def rename_module_metadata(metadata: Mapping[str, Any], mapping: Mapping[str, str]) -> OrderedDict:
    """A state dict's ``_metadata`` (module prefix -> ``{"version": n}``) renamed as ``mapping`` renames keys.

    Why: ``load_state_dict`` gives each module the metadata entry of its own prefix; keys renamed
    without their metadata load into modules that see no version (torchvision's MNASNet then refuses
    to load, BatchNorm takes an old layout). A module with no tensors of its own follows its
    nearest renamed ancestor; entries of modules that only the source has (a DDP wrapper's root)
    are left out.

    >>> from collections import OrderedDict
    >>> md = OrderedDict([("", {"version": 1}), ("module", {"version": 2}), ("module.act", {})])
    >>> dict(rename_module_metadata(md, {"module.fc.weight": "fc.weight"}))
    {'': {'version': 2}, 'act': {}}
    """
    pairs = _module_pairs(mapping)
    out: OrderedDict = OrderedDict()
    for prefix, value in metadata.items():
        if not isinstance(prefix, str):
            continue
        target = pairs.get(prefix)
        if target is None:
            parts = prefix.split(".") if prefix else []
            for cut in range(len(parts) - 1, -1, -1):  # nearest ancestor with a known rename
                base = pairs.get(".".join(parts[:cut]))
                if base is not None:
                    target = ".".join([*([base] if base else []), *parts[cut:]])
                    break
        if target is not None and target not in out:
            out[target] = value
    return out
