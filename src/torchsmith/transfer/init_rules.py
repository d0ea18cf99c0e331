"""Rule-based weight initialisation: ordered rules instead of an ``isinstance`` ladder (seed S14).

The seed writes initialisation as a loop over ``self.modules()`` with one ``isinstance`` branch per
layer type. :func:`init_weights` takes the same decisions from a list of :class:`InitRule` (or the
equivalent dicts/YAML of a recipe or spec) and reports, for every parameter, which rule set it.

A rule matches a parameter when *all* its given criteria match:

* ``type``  the owning module is an instance of this class (subclasses included). A class, a tuple
  of classes, or a name: ``"Conv2d"``, ``"nn.Linear"``, ``"timm.layers.BatchNormAct2d"``, or one of
  the families ``"conv"``, ``"linear"``, ``"norm"``, ``"batchnorm"``, ``"embedding"``.
* ``path``  the owning module's dotted path: a glob (``"layer1.*"``, ``"fc"``; the root is ``""``),
  or a regular expression prefixed with ``re:`` (``"re:^head\\."``, searched).
* ``role``  the parameter's own name: a glob, ``"weight"`` by default; ``"weight"``/``"bias"`` also
  match the suffixed names of recurrent layers (``weight_ih_l0``). ``"*"`` matches every parameter.

**Precedence: the first matching rule wins.** Put specific rules (a path) before general ones (a
type). With ``defaults=True`` three rules are appended after yours, so yours always take precedence:
norm-layer weights -> 1, norm-layer biases -> 0, every other bias -> 0. A parameter that no rule
matches keeps its value and is reported as untouched.

Functions: every ``torch.nn.init`` function the seeds list -- ``xavier_uniform``, ``xavier_normal``
(``gain``), ``kaiming_uniform``, ``kaiming_normal`` (``a``, ``mode``, ``nonlinearity``), ``uniform``
(``a``, ``b``), ``normal`` (``mean``, ``std``), ``constant`` (``val``), ``eye``, ``orthogonal``
(``gain``), ``sparse`` (``sparsity``, ``std``) -- plus ``trunc_normal``, ``dirac``, ``zeros`` and
``ones``. A ``gain`` may be a number or a nonlinearity name resolved by ``calculate_gain``:
``gain: relu``, ``gain: "leaky_relu:0.2"`` or ``gain: {nonlinearity: leaky_relu, param: 0.2}``.

Determinism: with ``seed=`` every parameter draws from its own generator seeded from the seed and
the parameter's name, so the result does not depend on the global RNG, on the order of the rules
or on which other parameters are initialised (``only=``/``skip=`` give the same values for the
parameters they keep). Without ``seed`` the global RNG is used, as ``torch.nn.init`` does.

>>> import torch.nn as nn
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
>>> report = init_weights(net, [
...     InitRule("kaiming_normal", type="Conv2d", mode="fan_out", nonlinearity="relu"),
... ], seed=0)
>>> report.rule_of("0.weight"), report.rule_of("1.weight")
('#0 kaiming_normal', 'default: ones')

The same rules as YAML (a recipe's or spec's ``init:`` list)::

    init:
      - {fn: kaiming_normal, type: Conv2d, mode: fan_out, nonlinearity: relu}
      - {fn: normal, type: Linear, std: 0.01}
      - {fn: zeros, path: "fc", role: "*"}
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import os
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torchsmith._patterns import compile_regex
from torchsmith.errors import InputError, RecipeError, close_matches

__all__ = ["INIT_FUNCTIONS", "InitReport", "InitRule", "init_weights", "load_init_rules", "rules_from_config"]

# name -> torch.nn.init function name (all take the tensor first, most take generator=).
INIT_FUNCTIONS: dict[str, str] = {
    "xavier_uniform": "xavier_uniform_",
    "xavier_normal": "xavier_normal_",
    "kaiming_uniform": "kaiming_uniform_",
    "kaiming_normal": "kaiming_normal_",
    "uniform": "uniform_",
    "normal": "normal_",
    "trunc_normal": "trunc_normal_",
    "constant": "constant_",
    "zeros": "zeros_",
    "ones": "ones_",
    "eye": "eye_",
    "dirac": "dirac_",
    "orthogonal": "orthogonal_",
    "sparse": "sparse_",
}

_NONLINEARITIES = (
    "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "sigmoid", "tanh", "relu", "leaky_relu", "selu",
)  # fmt: skip
_RULE_FIELDS = ("fn", "type", "path", "role", "params")


def _families() -> dict[str, tuple[type, ...]]:
    import torch.nn as nn
    from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
    from torch.nn.modules.conv import _ConvNd

    return {
        "conv": (_ConvNd,),
        "linear": (nn.Linear, nn.Bilinear),
        "norm": (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm, nn.LocalResponseNorm),
        "batchnorm": (_BatchNorm,),
        "embedding": (nn.Embedding, nn.EmbeddingBag),
    }


def _norm_types() -> tuple[type, ...]:
    return _families()["norm"]


class InitRule:
    """One initialisation rule: which parameters (``type``, ``path``, ``role``) get which function.

    ``fn`` is a name from :data:`INIT_FUNCTIONS` (a trailing ``_`` or ``nn.init.`` prefix is
    accepted) or a callable ``fn(tensor, **params)`` that fills the tensor in place. Function
    parameters are keyword arguments (or ``params={...}``).

    >>> InitRule("xavier_uniform", type="Linear", gain="relu")
    InitRule('xavier_uniform', type='Linear', gain='relu')
    >>> InitRule("constant", path="head.*", role="bias", val=0.1).params
    {'val': 0.1}
    """

    def __init__(
        self,
        fn: str | Callable[..., Any],
        *,
        type: Any = None,
        path: str | None = None,
        role: str = "weight",
        params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.fn = fn
        self.type = type
        self.path = path
        self.role = role
        self.params: dict[str, Any] = {**dict(params or {}), **kwargs}
        # Validate eagerly so a bad rule fails where it is written, not when it is applied.
        _compile(self, "InitRule")

    def __repr__(self) -> str:
        fn = self.fn if isinstance(self.fn, str) else getattr(self.fn, "__name__", repr(self.fn))
        parts = [repr(fn)]
        if self.type is not None:
            parts.append(f"type={_type_label(self.type)!r}")
        if self.path is not None:
            parts.append(f"path={self.path!r}")
        if self.role != "weight":
            parts.append(f"role={self.role!r}")
        parts += [f"{k}={v!r}" for k, v in self.params.items()]
        return f"InitRule({', '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        """The YAML/dict form of this rule (callables and classes are written by name)."""
        d: dict[str, Any] = {"fn": self.fn if isinstance(self.fn, str) else _qualname(self.fn)}
        if self.type is not None:
            d["type"] = _type_label(self.type)
        if self.path is not None:
            d["path"] = self.path
        if self.role != "weight":
            d["role"] = self.role
        d.update(self.params)
        return d


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}".lstrip(".")


def _type_label(t: Any) -> str:
    if isinstance(t, str):
        return t
    if isinstance(t, tuple):
        return "|".join(_type_label(x) for x in t)
    return getattr(t, "__name__", repr(t))


@dataclass
class _Compiled:
    label: str
    fn: Callable[..., Any]
    params: dict[str, Any]
    types: tuple[type, ...] | None
    path: Callable[[str], bool] | None
    role: str
    takes_generator: bool


def _err(where: str, msg: str) -> RecipeError:
    return RecipeError(f"{where}: {msg}")


def _resolve_type(spec: Any, where: str) -> tuple[type, ...]:
    import torch.nn as nn

    if isinstance(spec, type):
        return (spec,)
    if isinstance(spec, (tuple, list)):
        out: tuple[type, ...] = ()
        for s in spec:
            out += _resolve_type(s, where)
        return out
    if not isinstance(spec, str) or not spec:
        raise _err(where, f"field 'type': expected a module class or its name, got {spec!r}")
    families = _families()
    if spec.lower() in families:
        return families[spec.lower()]
    name = spec
    for prefix in ("torch.nn.", "nn."):
        if name.startswith(prefix) and "." not in name[len(prefix) :]:
            name = name[len(prefix) :]
    if "." not in name:
        cls = getattr(nn, name, None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            return (cls,)
        choices = [n for n in dir(nn) if isinstance(getattr(nn, n), type)] + list(families)
        raise _err(
            where,
            f"field 'type': unknown module type {spec!r}{close_matches(name, choices)}; expected a "
            "torch.nn class name (Conv2d, Linear...), a family (conv, linear, norm, batchnorm, embedding) "
            "or a dotted path such as 'timm.layers.BatchNormAct2d'",
        )
    module_name, _, attr = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise _err(where, f"field 'type': cannot import {spec!r} ({e})") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise _err(where, f"field 'type': {spec!r} is not an nn.Module class")
    return (cls,)


def _path_matcher(pattern: Any, where: str) -> Callable[[str], bool]:
    if not isinstance(pattern, str):
        raise _err(where, f"field 'path': expected a glob or 're:REGEX' string, got {pattern!r}")
    if pattern.startswith("re:"):
        try:
            rx = compile_regex(pattern[3:])  # linear time (RE2)
        except re.error as e:
            raise _err(where, f"field 'path': invalid regular expression {pattern[3:]!r}: {e}") from None
        return lambda p: rx.search(p) is not None
    return lambda p: fnmatch.fnmatchcase(p, pattern)


def _resolve_gain(value: Any, where: str) -> float:
    import torch.nn.init as init

    if isinstance(value, bool):
        raise _err(where, f"field 'gain': expected a number or a nonlinearity name, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    param = None
    if isinstance(value, Mapping):
        extra = set(value) - {"nonlinearity", "param"}
        if "nonlinearity" not in value or extra:
            raise _err(
                where, f"field 'gain': expected {{nonlinearity: NAME, param: NUMBER}}, got {dict(value)!r}"
            )
        name, param = value["nonlinearity"], value.get("param")
    elif isinstance(value, str):
        name, _, p = value.partition(":")
        if p:
            try:
                param = float(p)
            except ValueError:
                raise _err(where, f"field 'gain': {p!r} in {value!r} is not a number") from None
    else:
        raise _err(where, f"field 'gain': expected a number or a nonlinearity name, got {value!r}")
    if name not in _NONLINEARITIES:
        raise _err(
            where,
            f"field 'gain': unknown nonlinearity {name!r}{close_matches(str(name), _NONLINEARITIES)}; "
            f"expected one of {', '.join(_NONLINEARITIES)}",
        )
    return float(init.calculate_gain(name, param))


def _resolve_fn(fn: Any, where: str) -> tuple[str, Callable[..., Any]]:
    import torch.nn.init as init

    if callable(fn):
        return getattr(fn, "__name__", "custom"), fn
    if not isinstance(fn, str) or not fn:
        raise _err(where, f"field 'fn': expected an init function name or a callable, got {fn!r}")
    name = fn.removeprefix("torch.").removeprefix("nn.").removeprefix("init.").rstrip("_")
    if name not in INIT_FUNCTIONS:
        raise _err(
            where,
            f"field 'fn': unknown init function {fn!r}{close_matches(name, INIT_FUNCTIONS)}; "
            f"expected one of {', '.join(INIT_FUNCTIONS)}",
        )
    return name, getattr(init, INIT_FUNCTIONS[name])


def _compile(rule: InitRule, where: str) -> _Compiled:
    name, fn = _resolve_fn(rule.fn, where)
    params = dict(rule.params)
    takes_generator = False
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is not None and isinstance(rule.fn, str):
        accepted = [p for p in list(sig.parameters)[1:] if p != "generator"]
        takes_generator = "generator" in sig.parameters
        for key in params:
            if key not in accepted:
                raise _err(
                    where,
                    f"unknown field {key!r} for fn {name!r}"
                    f"{close_matches(key, accepted + list(_RULE_FIELDS))}; "
                    f"{name} takes: {', '.join(accepted) or '(nothing)'}",
                )
        for pname, p in list(sig.parameters.items())[1:]:
            if p.default is inspect.Parameter.empty and pname not in params:
                raise _err(where, f"fn {name!r} needs field {pname!r}")
        if "gain" in params:
            params["gain"] = _resolve_gain(params["gain"], where)
        if "mode" in params and params["mode"] not in ("fan_in", "fan_out"):
            raise _err(where, f"field 'mode': expected 'fan_in' or 'fan_out', got {params['mode']!r}")
        if "nonlinearity" in params and params["nonlinearity"] not in _NONLINEARITIES:
            bad = params["nonlinearity"]
            raise _err(
                where,
                f"field 'nonlinearity': unknown {bad!r}{close_matches(str(bad), _NONLINEARITIES)}; "
                f"expected one of {', '.join(_NONLINEARITIES)}",
            )
        for key, value in params.items():
            if key in ("mode", "nonlinearity"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _err(where, f"field {key!r}: expected a number, got {value!r}")
    elif sig is not None:
        takes_generator = "generator" in sig.parameters
    types = None if rule.type is None else _resolve_type(rule.type, where)
    path = None if rule.path is None else _path_matcher(rule.path, where)
    if not isinstance(rule.role, str) or not rule.role:
        raise _err(where, f"field 'role': expected a glob such as 'weight', 'bias' or '*', got {rule.role!r}")
    return _Compiled(name, fn, params, types, path, rule.role, takes_generator)


def _role_matches(role: str, local: str) -> bool:
    return fnmatch.fnmatchcase(local, role) or local.startswith(role + "_")


def _matches(rule: _Compiled, module: Any, path: str, local: str) -> bool:
    if rule.types is not None and not isinstance(module, rule.types):
        return False
    if rule.path is not None and not rule.path(path):
        return False
    return _role_matches(rule.role, local)


def rules_from_config(config: Any, where: str = "init") -> list[InitRule]:
    """Build rules from their dict/YAML form: a list of dicts, or a dict with an ``init``/``rules`` list.

    Each dict has ``fn`` and optionally ``type``, ``path``, ``role``, ``params``; any other key is a
    parameter of the function. Errors name the rule index and the field: ``init[2]: field 'mode' ...``.

    >>> rules_from_config([{"fn": "normal", "type": "Linear", "std": 0.01}])
    [InitRule('normal', type='Linear', std=0.01)]
    """
    if isinstance(config, Mapping):
        for key in ("init", "rules"):
            if key in config:
                return rules_from_config(config[key], f"{where}.{key}" if where != "init" else key)
        raise RecipeError(
            f"{where}: expected a list of rules or a mapping with an 'init' list, got keys {list(config)}"
        )
    if isinstance(config, (str, bytes)) or not isinstance(config, Iterable):
        raise RecipeError(f"{where}: expected a list of rules, got {type(config).__name__}")
    rules = []
    for i, item in enumerate(config):
        here = f"{where}[{i}]"
        if isinstance(item, InitRule):
            rules.append(item)
            continue
        if not isinstance(item, Mapping):
            raise RecipeError(f"{here}: expected a mapping such as {{fn: normal, std: 0.01}}, got {item!r}")
        item = dict(item)
        if "fn" not in item:
            raise RecipeError(
                f"{here}: missing field 'fn' (the init function, e.g. kaiming_normal){_fn_hint(item)}"
            )
        params = item.pop("params", None) or {}
        if not isinstance(params, Mapping):
            raise RecipeError(f"{here}: field 'params': expected a mapping, got {params!r}")
        kwargs = {k: item.pop(k) for k in ("type", "path", "role") if k in item}
        fn = item.pop("fn")
        rule = InitRule.__new__(InitRule)
        rule.fn, rule.type, rule.path = fn, kwargs.get("type"), kwargs.get("path")
        rule.role = kwargs.get("role", "weight")
        rule.params = {**dict(params), **item}
        _compile(rule, here)
        rules.append(rule)
    return rules


def _fn_hint(item: Mapping) -> str:
    return f"; found fields: {', '.join(repr(k) for k in item)}" if item else ""


def load_init_rules(path: str | os.PathLike) -> list[InitRule]:
    """Read rules from a YAML (or JSON) file holding a list or a mapping with an ``init:`` list."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read init rules: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
    return rules_from_config(data, where=str(path))


@dataclass
class InitReport:
    """Which rule set each parameter (``rules``: name -> rule label; ``None`` = untouched).

    ``skipped`` are parameters left alone because of ``only=``/``skip=`` (loaded weights, say).
    ``warnings`` name the rules that set nothing (matched no parameter, or always shadowed).
    """

    rules: dict[str, str | None] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seed: int | None = None
    warnings: list[str] = field(default_factory=list)

    def rule_of(self, name: str) -> str | None:
        """The label of the rule that set parameter ``name`` (``None`` when no rule did)."""
        if name not in self.rules:
            raise InputError(f"no parameter {name!r} in this report{close_matches(name, self.rules)}")
        return self.rules[name]

    @property
    def initialised(self) -> list[str]:
        return [n for n, r in self.rules.items() if r is not None]

    @property
    def untouched(self) -> list[str]:
        return [n for n, r in self.rules.items() if r is None and n not in self.skipped]

    def by_rule(self) -> dict[str, list[str]]:
        """Rule label -> the parameters it set, in model order."""
        out: dict[str, list[str]] = {}
        for n, r in self.rules.items():
            if r is not None:
                out.setdefault(r, []).append(n)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "warnings": list(self.warnings),
            "parameters": [
                {"name": n, "shape": list(self.shapes[n]), "rule": r, "skipped": n in self.skipped}
                for n, r in self.rules.items()
            ],
        }

    def __str__(self) -> str:
        from torchsmith.cli._output import format_table

        rows = []
        for label, names in self.by_rule().items():
            shown = ", ".join(names[:3]) + (f", ... (+{len(names) - 3})" if len(names) > 3 else "")
            rows.append((label, len(names), shown))
        if self.skipped:
            rows.append(("(skipped: only/skip/lazy)", len(self.skipped), ", ".join(self.skipped[:3])))
        if self.untouched:
            rows.append(("(untouched: no rule)", len(self.untouched), ", ".join(self.untouched[:3])))
        head = f"init_weights: {len(self.initialised)} of {len(self.rules)} parameters set" + (
            f" (seed {self.seed})" if self.seed is not None else ""
        )
        warnings = "".join(f"\nwarning: {w}" for w in self.warnings)
        return head + "\n" + format_table(["rule", "params", "names"], rows, "lrl") + warnings


def _default_rules() -> list[tuple[str, _Compiled]]:
    norm = _norm_types()
    specs = [
        ("default: ones", InitRule("ones", type=norm, role="weight")),
        ("default: zeros (norm bias)", InitRule("zeros", type=norm, role="bias")),
        ("default: zeros (bias)", InitRule("zeros", role="bias")),
    ]
    return [(label, _compile(rule, label)) for label, rule in specs]


def _rule_label(index: int, compiled: _Compiled) -> str:
    return f"#{index} {compiled.label}"


def _param_seed(seed: int, name: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def init_weights(
    model: Any,
    rules: Iterable[InitRule | Mapping] | str | os.PathLike = (),
    *,
    defaults: bool = True,
    seed: int | None = None,
    only: Iterable[str] | None = None,
    skip: Iterable[str] | Any = None,
    where: str = "rules",
    strict: bool = False,
) -> InitReport:
    """Initialise ``model``'s parameters by ordered rules; return who set what.

    ``rules``: :class:`InitRule` objects, their dict form, a YAML file path, or a mapping
    ``{rules: [...], seed: N, defaults: bool}`` (a recipe's ``init:``). ``where`` names the rules in
    error messages (``init[2]: field 'mode' ...``). The first matching
    rule wins; ``defaults=True`` appends norm weight -> 1, norm/other biases -> 0 after them.
    ``only``: parameter names to initialise (all others are left alone). ``skip``: parameter names
    never to touch -- pass a :class:`~torchsmith.transfer.TransferReport` (or its ``loaded_names``)
    so a partial load is not overwritten. ``seed``: per-parameter generators (see module doc).
    A rule of yours that sets nothing -- it matches no parameter (``path="layer5.*"``, a type not in
    the model) or every parameter it matches is taken by an earlier rule -- is a warning in
    ``report.warnings``; ``strict=True`` (or ``strict: true`` in the mapping form) makes it a
    :class:`~torchsmith.errors.RecipeError`, raised before anything is initialised.

    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> r = init_weights(net, [InitRule("xavier_uniform", type="Linear", gain="relu")], seed=1)
    >>> sorted(r.by_rule())
    ['#0 xavier_uniform', 'default: zeros (bias)']
    """
    import torch

    from torchsmith._modules import unwrap_model

    rules_where = where
    if isinstance(rules, (str, os.PathLike)):
        rule_list = load_init_rules(rules)
        rules_where = str(rules)
    elif isinstance(rules, Mapping):
        # A recipe's form: {rules: [...], seed: 0, defaults: true} (or the list under "init").
        extra = set(rules) - {"rules", "init", "seed", "defaults", "strict"}
        if extra:
            raise RecipeError(
                f"{where}: unknown field {sorted(extra)[0]!r}"
                f"{close_matches(sorted(extra)[0], ['rules', 'seed', 'defaults', 'strict'])}; "
                "expected a list of rules, or a mapping with 'rules' and optionally 'seed', 'defaults' "
                "and 'strict'"
            )
        if "seed" in rules:
            if isinstance(rules["seed"], bool) or not isinstance(rules["seed"], (int, type(None))):
                raise RecipeError(f"{where}: field 'seed': expected an integer, got {rules['seed']!r}")
            seed = rules["seed"] if seed is None else seed
        if "defaults" in rules:
            if not isinstance(rules["defaults"], bool):
                raise RecipeError(
                    f"{where}: field 'defaults': expected true or false, got {rules['defaults']!r}"
                )
            defaults = rules["defaults"]
        if "strict" in rules:
            if not isinstance(rules["strict"], bool):
                raise RecipeError(f"{where}: field 'strict': expected true or false, got {rules['strict']!r}")
            strict = strict or rules["strict"]
        key = "rules" if "rules" in rules else "init"
        rules_where = f"{where}.{key}"
        rule_list = rules_from_config(rules.get(key, []), where=rules_where)
    else:
        rule_list = rules_from_config(list(rules), where=where)
    compiled = []
    for i, r in enumerate(rule_list):
        c = _compile(r, f"{where}[{i}]")
        compiled.append((_rule_label(i, c), c))
    if defaults:
        compiled += _default_rules()

    model = unwrap_model(model)
    all_names = set(model.state_dict().keys()) | {n for n, _ in model.named_parameters()}
    only_set = None if only is None else _name_set(only, all_names, "only")
    skip_set = set() if skip is None else _name_set(skip, all_names, "skip")

    report = InitReport(seed=seed)
    n_user = len(rule_list)
    usage = [_RuleUse() for _ in range(n_user)]
    plan: list[tuple[str, Any, str, _Compiled]] = []
    seen: set[int] = set()
    for path, module in model.named_modules():
        for local, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue  # a tied parameter is set once, under its first name
            seen.add(id(param))
            name = f"{path}.{local}" if path else local
            report.rules[name] = None
            lazy = isinstance(param, torch.nn.parameter.UninitializedParameter)
            report.shapes[name] = () if lazy else tuple(param.shape)
            left_alone = lazy or (only_set is not None and name not in only_set) or name in skip_set
            if left_alone:
                report.skipped.append(name)  # lazy: a lazy module's parameter, run a forward pass first
            winner = None
            for i, (label, rule) in enumerate(compiled):
                if not _matches(rule, module, path, local):
                    continue
                if i < n_user:
                    usage[i].note(left_alone, winner)
                if winner is None and not left_alone:
                    winner = label
                    plan.append((name, param, label, rule))
    _check_rule_use(report, rule_list, [c for _, c in compiled[:n_user]], usage, model, rules_where, strict)
    for name, param, label, rule in plan:
        kwargs = dict(rule.params)
        if seed is not None and rule.takes_generator and param.device.type != "meta":
            gen = torch.Generator(device=param.device)
            gen.manual_seed(_param_seed(seed, name))
            kwargs["generator"] = gen
        try:
            with torch.no_grad():
                rule.fn(param, **kwargs)
        except (ValueError, RuntimeError) as e:
            at = label if label.startswith("default") else f"{where}[{label.split()[0][1:]}]"
            raise InputError(
                f"{at} ({rule.label}) cannot initialise {name!r} of shape {tuple(param.shape)}: "
                f"{e}; "
                "narrow the rule with 'type', 'path' or 'role'"
            ) from None
        report.rules[name] = label
    return report


@dataclass
class _RuleUse:
    """What one rule met: parameters it set, lost to an earlier rule, or found left alone."""

    won: int = 0
    skipped: int = 0
    shadowed_by: dict[str, int] = field(default_factory=dict)

    def note(self, left_alone: bool, winner: str | None) -> None:
        if left_alone:
            self.skipped += 1
        elif winner is None:
            self.won += 1
        else:
            self.shadowed_by[winner] = self.shadowed_by.get(winner, 0) + 1


def _why_nothing(rule: _Compiled, model: Any) -> str:
    """Which criterion of a rule that matched no parameter at all fails."""
    modules = list(model.named_modules())
    with_params = [(p, m) for p, m in modules if any(True for _ in m.named_parameters(recurse=False))]
    if rule.types is not None and not any(isinstance(m, rule.types) for _, m in with_params):
        kinds = sorted({type(m).__name__ for _, m in with_params})
        return f"the model has no module of that type (its types with parameters: {', '.join(kinds[:8])})"
    if rule.path is not None and not any(rule.path(p) for p, _ in with_params):
        shown = ", ".join(repr(p) for p, _ in with_params[:4])
        return f"no module path matches (paths look like {shown})"
    return "no parameter of the modules it selects has that role"


def _check_rule_use(
    report: InitReport,
    rules: list[InitRule],
    compiled: list[_Compiled],
    usage: list[_RuleUse],
    model: Any,
    where: str,
    strict: bool,
) -> None:
    """A rule that sets nothing is a warning in the report; ``strict=True`` makes it an error."""
    problems = []
    for i, (rule, c, use) in enumerate(zip(rules, compiled, usage)):
        if use.won:
            continue
        at = f"{where}[{i}] {rule!r}"
        if use.shadowed_by:
            earlier = ", ".join(sorted(use.shadowed_by))
            problems.append(
                f"{at} sets nothing: every parameter it matches is taken by earlier rule {earlier}"
            )
        elif use.skipped:
            report.warnings.append(
                f"{at} sets nothing: the {use.skipped} parameters it matches are left alone"
            )
        else:
            problems.append(f"{at} matches no parameter: {_why_nothing(c, model)}")
    report.warnings.extend(problems)
    if strict and problems:
        raise RecipeError(
            "; ".join(problems) + "; nothing was initialised (strict=True: every rule must set a parameter)"
        )


def _name_set(names: Any, valid: set[str], what: str) -> set[str]:
    loaded = getattr(names, "loaded_names", None)
    if loaded is not None:  # a TransferReport
        names = loaded
    if isinstance(names, str):
        raise InputError(f"{what}: expected a collection of parameter names, got the string {names!r}")
    out = set(names)
    for n in sorted(out):
        if n not in valid:
            raise InputError(f"{what}: the model has no parameter {n!r}{close_matches(n, valid)}")
    return out
