"""Port weights between two implementations of one architecture whose names all differ.

The seed's ResNet34 calls its stem ``pre`` and its branches ``left``/``right``; torchvision calls
them ``conv1``/``bn1`` and ``downsample``. Name matching finds nothing in common. Structure matching
pairs *modules* instead:

1. Each side is cut into units: the tensors a module owns directly (a conv's ``weight``; a batch
   norm's ``weight, bias, running_mean, running_var``), identified by their shapes.
2. The model's units are put in the order their modules start running in a forward pass (traced
   with forward pre-hooks on ``example_input``, in eval mode without gradients, so nothing changes).
   A source model is traced the same way; a source state_dict is taken in its key order, which is
   the order its modules were registered.
3. The two sequences are aligned position by position and must agree in shapes. Two differences are
   allowed because :func:`~torchsmith.transfer.load_weights` can handle them: the first unit (input
   channels) and the last one (the classifier). Anything else is a divergence and the match is
   refused, naming the first position where the two differ.
4. With ``order="auto"`` and a state_dict source, the model's registration order is tried too. If
   both orders fit but pair different modules, the match is ambiguous and refused, naming the first
   module they disagree on. A source model is traced, so forward order on both sides decides.

>>> import torch.nn as nn
>>> a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
>>> class B(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.stem, self.norm = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
...     def forward(self, x):
...         return self.norm(self.stem(x))
>>> m = match_structure(B(), a[:2].state_dict(), example_input=__import__("torch").zeros(1, 3, 8, 8))
>>> m.pairs["stem.weight"], m.pairs["norm.running_var"]
('0.weight', '1.running_var')
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torchsmith.errors import InputError, TransferError
from torchsmith.transfer.dataflow import dataflow_groups

__all__ = ["StructureMatch", "execution_order", "match_structure"]

_SCALAR_BUFFERS = ("num_batches_tracked",)
# Tensors within a module are compared in this order (then by name), so that a file that stores
# keys sorted (safetensors: "bias" before "weight") compares equal to a model's own order.
# Equivalent names (gamma/beta) rank as their role, so a Keras-named norm compares like a torch one.
_LOCAL_RANK = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3, "num_batches_tracked": 4}


@dataclass
class StructureMatch:
    """The result of :func:`match_structure`.

    ``pairs`` maps each model key to its source key; ``mapping`` lists the module pairs in order
    (``target``, ``source``, ``kind``, ``status``); ``target_order`` is the module order used.
    """

    pairs: dict[str, str] = field(default_factory=dict)
    mapping: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    target_order: list[str] = field(default_factory=list)
    order: str = ""
    #: model key -> how its value is derived from source tensors: ("reshape",), ("transpose",),
    #: ("cat", [source keys]) or ("chunk", index, parts). Keys not here are copied as they are.
    derived: dict[str, tuple] = field(default_factory=dict)
    #: the equivalences applied, one line each ("'head.fc' <- 'classifier.0': 1x1 Conv = Linear").
    equivalences: list[str] = field(default_factory=list)
    #: the input the source was traced on and its output then (the numerical check reuses both)
    check_input: Any = None
    source_output: Any = None
    #: index buffers (integer tensors a module computes in its constructor: relative_position_index,
    #: position_ids): never aligned nor copied. ``kept`` are the model's (they keep their own values),
    #: ``ignored`` the source's (not counted unused).
    kept: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    #: model keys that take no part in the model's eval forward (an aux head): not ported, and no
    #: obstacle to the numerical check
    idle: list[str] = field(default_factory=list)

    def sources(self, key: str) -> list[str]:
        """Every source key the model's ``key`` takes its value from."""
        how = self.derived.get(key)
        if how and how[0] == "cat":
            return list(how[1])
        return [self.pairs[key]] if key in self.pairs else []

    def value(self, key: str, source_sd: dict[str, Any], shape: Any) -> Any:
        """The source value for the model's ``key``, with its equivalence applied."""
        import torch

        how = self.derived.get(key)
        src = source_sd[self.pairs[key]]
        if how is None:
            return src
        if how[0] == "cat":
            return torch.cat([source_sd[k] for k in how[1]], dim=0)
        if how[0] == "chunk":
            return src.chunk(how[2], dim=0)[how[1]]
        if how[0] == "transpose":
            return src.t() if src.dim() == 2 else src
        return src.reshape(tuple(shape))


@dataclass
class _Unit:
    path: str
    locals: list[str]
    shapes: list[tuple[int, ...]]
    kind: str = ""

    @property
    def sig(self) -> tuple:
        return tuple(s for n, s in zip(self.locals, self.shapes) if n not in _SCALAR_BUFFERS)

    def key(self, local: str) -> str:
        return f"{self.path}.{local}" if self.path else local

    def describe(self) -> str:
        tensors = " ".join(
            f"{n}({','.join(map(str, s))})"
            for n, s in zip(self.locals, self.shapes)
            if n not in _SCALAR_BUFFERS
        )
        return f"{self.path or '(root)'!r} [{self.kind + ': ' if self.kind else ''}{tensors}]"


def _units(shapes: dict[str, tuple[int, ...]], modules: dict[str, Any] | None = None) -> dict[str, _Unit]:
    units: dict[str, _Unit] = {}
    for key, shape in shapes.items():
        path, _, local = key.rpartition(".")
        unit = units.get(path)
        if unit is None:
            kind = type(modules[path]).__name__ if modules and path in modules else ""
            unit = units[path] = _Unit(path, [], [], kind)
        unit.locals.append(local)
        unit.shapes.append(tuple(shape))
    for unit in units.values():
        ranked = sorted(
            zip(unit.locals, unit.shapes), key=lambda ls: (_LOCAL_RANK.get(_role(ls[0]), 99), ls[0])
        )
        unit.locals = [n for n, _ in ranked]
        unit.shapes = [s for _, s in ranked]
    return units


def _is_index_buffer(key: str, tensor: Any) -> bool:
    """An integer tensor other than ``num_batches_tracked``: an index a module computes itself.

    Weights are floating point; an integer buffer (``relative_position_index``, ``position_ids``) is
    a function of the architecture's hyper-parameters, stored by some libraries and not by others.
    """
    dtype = getattr(tensor, "dtype", None)
    if dtype is None or dtype.is_floating_point or dtype.is_complex:
        return False
    return key.rpartition(".")[2] not in _SCALAR_BUFFERS


def _looks_sorted(sd: dict[str, Any]) -> bool:
    """True when keys are sorted by name, possibly within contiguous dtype groups (safetensors' layout)."""
    runs: list[tuple[Any, list[str]]] = []
    for k, v in sd.items():
        dtype = getattr(v, "dtype", None)
        if runs and runs[-1][0] == dtype:
            runs[-1][1].append(k)
        else:
            runs.append((dtype, [k]))
    if len({d for d, _ in runs}) != len(runs):
        return False
    return all(keys == sorted(keys) for _, keys in runs)


def _natural_key(path: str) -> list:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split(".")]


def _example_inputs(model: Any) -> list[Any]:
    """Plausible inputs for ``model``, cheapest first: the zoo's sample shape, or ones built from its
    first layer (a small image first, then 224x224 for models that need that size)."""
    import torch
    import torch.nn as nn

    from torchsmith._provenance import get_provenance

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    arch = get_provenance(model).get("arch", {}).get("name")
    if arch and ":" not in arch:
        try:
            from torchsmith.zoo import get_entry

            return [torch.randn(get_entry(arch).input_shape, device=device)]
        except Exception:
            pass
    for m in model.modules():
        if isinstance(m, nn.Conv1d):
            return [torch.randn(1, m.in_channels, n, device=device) for n in (64, 224)]
        if isinstance(m, nn.Conv3d):
            return [torch.randn(1, m.in_channels, 16, n, n, device=device) for n in (64, 112)]
        if isinstance(m, nn.Conv2d):
            return [torch.randn(1, m.in_channels, n, n, device=device) for n in (64, 224)]
        if isinstance(m, nn.Linear):
            return [torch.randn(1, m.in_features, device=device)]
        if isinstance(m, nn.Embedding):
            return [torch.zeros(1, 8, dtype=torch.long, device=device)]
    return []


def _traced(model: Any, example_input: Any, fn: Any) -> tuple[Any, Any]:
    """``(fn(model, x), x)`` for ``example_input`` or the first guessed input the model runs on."""
    candidates = [example_input] if example_input is not None else _example_inputs(model)
    if not candidates:
        raise TransferError(
            f"cannot guess an input for {type(model).__name__} to trace it; pass example_input=..."
        )
    last = None
    for x in candidates:
        try:
            return fn(model, x), x
        except Exception as e:  # the next candidate may fit
            last = e
    raise TransferError(
        f"could not run {type(model).__name__} to trace its dataflow ({type(last).__name__}: {last}); "
        "pass example_input=... (a tensor, tuple or dict)"
    )


def _flow_units(
    units: dict[str, _Unit], groups: list[tuple[str, tuple[str, ...]]]
) -> tuple[list[_Unit], list[str]]:
    """Cut ``units`` into the tensor groups of a dataflow trace, in graph order.

    Returns the units and the keys of tensors the forward never used (an aux head in eval), which
    take no part in the alignment. Scalar buffers ride along with their module's first group.
    """
    out: list[_Unit] = []
    used: set[str] = set()
    first: dict[str, _Unit] = {}
    for path, locals_ in groups:
        unit = units.get(path)
        if unit is None:
            continue
        keep = [
            (n, sh) for n, sh in zip(unit.locals, unit.shapes) if n in locals_ and unit.key(n) not in used
        ]
        if not keep:
            continue
        sub = _Unit(path, [n for n, _ in keep], [sh for _, sh in keep], unit.kind)
        used.update(unit.key(n) for n, _ in keep)
        first.setdefault(path, sub)
        out.append(sub)
    idle = []
    for path, unit in units.items():
        for n, sh in zip(unit.locals, unit.shapes):
            key = unit.key(n)
            if key in used:
                continue
            if n in _SCALAR_BUFFERS and path in first:
                first[path].locals.append(n)
                first[path].shapes.append(sh)
            elif n not in _SCALAR_BUFFERS:
                idle.append(key)
    return out, idle


def execution_order(model: Any, example_input: Any = None) -> list[str]:
    """Module paths in the order the modules *start* running on ``example_input`` (first call only).

    The model runs once in eval mode without gradients (batch-norm statistics are not updated) and
    its train/eval flags are restored afterwards.
    """
    if example_input is None:
        candidates = _example_inputs(model)
        if not candidates:
            raise TransferError(
                f"cannot guess an input for {type(model).__name__} to trace its forward order; "
                "pass example_input=... or order='registration'"
            )
        for i, candidate in enumerate(candidates):
            try:
                return execution_order(model, candidate)
            except TransferError:
                if i == len(candidates) - 1:
                    raise
    return _trace(model, example_input)


def _trace(model: Any, example_input: Any) -> list[str]:
    import torch

    order: list[str] = []
    seen: set[str] = set()
    handles = []
    for path, module in model.named_modules():

        def hook(_mod: Any, _args: Any, path: str = path) -> None:
            if path not in seen:
                seen.add(path)
                order.append(path)

        handles.append(module.register_forward_pre_hook(hook))
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(example_input, dict):
                model(**example_input)
            elif isinstance(example_input, (tuple, list)):
                model(*example_input)
            else:
                model(example_input)
    except Exception as e:
        raise TransferError(
            f"could not run {type(model).__name__} to trace the order its layers run "
            f"({type(e).__name__}: {e}); pass example_input=... (a tensor, tuple or dict) "
            "or order='registration'"
        ) from None
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    return order


def _ordered(units: dict[str, _Unit], order: Sequence[str]) -> tuple[list[_Unit], list[str]]:
    ranked = [units[p] for p in order if p in units]
    placed = {u.path for u in ranked}
    rest = [u for p, u in units.items() if p not in placed]
    return ranked + rest, [u.path for u in rest]


def _compatible(a: _Unit, b: _Unit) -> bool:
    """Same tensors up to sizes: the first conv or the classifier may differ like this."""
    sa, sb = a.sig, b.sig
    return len(sa) == len(sb) and all(len(x) == len(y) for x, y in zip(sa, sb))


def _canon(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape without its singleton dims: (96, 1, 1) and (96,), (n, k, 1, 1) and (n, k) agree."""
    return tuple(d for d in shape if d != 1)


def _reshape_equivalence(t: _Unit, s: _Unit) -> str | None:
    """The name of the equivalence that makes ``s``'s tensors ``t``'s by a reshape, or None.

    Proven by shapes alone; the numerical check after the port confirms the meaning.
    """
    ta, sa = t.sig, s.sig
    if len(ta) != len(sa):
        return None
    if sorted(map(_canon, ta)) == sorted(map(_canon, sa)):
        kinds = {t.kind, s.kind}
        if kinds in ({"Conv2d", "Linear"}, {"Conv1d", "Linear"}):
            return "1x1 Conv = Linear"
        return "singleton-dim reshape"
    convs = []
    for x, y in zip(sorted(ta, key=_flat_key), sorted(sa, key=_flat_key)):
        if x == y:
            continue
        if _flat_key(x) != _flat_key(y) or min(len(x), len(y)) != 2 or len(x) == len(y) or x[0] != y[0]:
            return None
        convs.append(x if len(x) > len(y) else y)
    if not convs:
        return None
    return f"Linear(k*h*w -> n) = Conv{len(convs[0]) - 2}d(k, n, {tuple(convs[0][2:])})"


def _flat_key(shape: tuple[int, ...]) -> tuple[int, int]:
    """(first dim, element count): a Linear weight and the conv weight it flattens agree on both."""
    n = 1
    for d in shape:
        n *= d
    return (shape[0] if shape else 1, n)


_PROJ_ROLE = {
    **dict.fromkeys(("q", "query", "q_proj", "q_lin", "wq"), 0),
    **dict.fromkeys(("k", "key", "k_proj", "k_lin", "wk"), 1),
    **dict.fromkeys(("v", "value", "v_proj", "v_lin", "wv"), 2),
}


def _split_group(units: list[_Unit], j: int, fused: _Unit) -> list[_Unit] | None:
    """Three units at ``j`` that are the q, k, v projections ``fused`` concatenates along dim 0."""
    group = units[j : j + 3]
    if len(group) != 3 or len({u.sig for u in group}) != 1:
        return None
    roles = [_PROJ_ROLE.get(u.path.rpartition(".")[2].lower()) for u in group]
    if sorted(r for r in roles if r is not None) != [0, 1, 2]:
        return None
    part, whole = group[0].sig, fused.sig
    if len(part) != len(whole):
        return None
    for p, w in zip(part, whole):
        if len(p) != len(w) or p[0] * 3 != w[0] or p[1:] != w[1:]:
            return None
    return sorted(group, key=lambda u: _PROJ_ROLE[u.path.rpartition(".")[2].lower()])


def _fused_status(fused: _Unit) -> str:
    what = "MultiheadAttention in_proj" if fused.kind == "MultiheadAttention" else "fused qkv"
    return f"equivalent: {what} = cat(q, k, v) along dim 0"


def _align(t_units: list[_Unit], s_units: list[_Unit]) -> tuple[list[tuple[Any, Any, str]] | None, str]:
    """Pair the two unit sequences in order. Each item is ``(target, source, status)`` where a side
    is a list of three units for a fused projection split on the other side."""
    n, m = len(t_units), len(s_units)
    out: list[tuple[Any, Any, str]] = []
    i = j = 0
    while i < n and j < m:
        t, s = t_units[i], s_units[j]
        if t.sig == s.sig:
            kinds = {t.kind, s.kind}
            status = "same shapes"
            if "Conv1D" in kinds and len(kinds) == 2:
                status = "equivalent: transposed Conv1D = Linear"
            elif "MultiheadAttention" in kinds and len(kinds) == 2:
                status = "equivalent: MultiheadAttention in_proj = fused qkv Linear"
            out.append((t, s, status))
            i, j = i + 1, j + 1
            continue
        if {t.kind, s.kind} == {"Conv1D", "Linear"} and sorted(map(sorted, t.sig)) == sorted(
            map(sorted, s.sig)
        ):
            out.append((t, s, "equivalent: transposed Conv1D = Linear"))
            i, j = i + 1, j + 1
            continue
        eq = _reshape_equivalence(t, s)
        if eq:
            out.append((t, s, f"equivalent: {eq}"))
            i, j = i + 1, j + 1
            continue
        split = _split_group(s_units, j, t)
        if split:
            out.append((t, split, _fused_status(t)))
            i, j = i + 1, j + 3
            continue
        split = _split_group(t_units, i, s)
        if split:
            out.append((split, s, _fused_status(s)))
            i, j = i + 3, j + 1
            continue
        edge = i == 0 or (i == n - 1 and j == m - 1)
        if edge and _compatible(t, s):
            out.append((t, s, "shapes differ" + (" (input layer)" if i == 0 else " (classifier)")))
            i, j = i + 1, j + 1
            continue
        return None, (
            f"first divergence at position {i}: model module {t.describe()} vs source module {s.describe()}"
            + (f" (the model has {n} modules with weights, the source {m})" if n != m else "")
        )
    if i < n or j < m:
        extra = t_units[i].describe() if i < n else s_units[j].describe()
        side = "model" if i < n else "source"
        return None, (
            f"first divergence at position {i}: the {side} has more modules with weights ({n} vs {m}), "
            f"starting with {extra}"
        )
    return out, ""


#: Names that mean the same tensor in different libraries (PyTorch, Keras/Flax, TF/timm ports).
#: A tensor's role is the first group its local name is in; names in no group are their own role.
_EQUIVALENT_NAMES = (
    ("weight", "gamma", "scale", "kernel", "in_proj_weight"),
    ("bias", "beta", "shift", "offset", "in_proj_bias"),
    ("running_mean", "moving_mean"),
    ("running_var", "moving_variance", "moving_var"),
)
_ROLE = {name: group[0] for group in _EQUIVALENT_NAMES for name in group}


def _role(local: str) -> str:
    return _ROLE.get(local.lower(), local)


def _pair_keys(t: _Unit, s: _Unit, shape_key: Any = None) -> list[tuple[str, str]]:
    """Pair the tensors of two aligned modules: by name or name equivalence, then by a unique shape.

    Raises :class:`TransferError` when two tensors could swap places (equal shapes) and neither their
    names nor a name equivalence (``gamma`` is ``weight``, ``beta`` is ``bias``...) says which is which.
    """
    t_main = [n for n in t.locals if n not in _SCALAR_BUFFERS]
    s_main = [n for n in s.locals if n not in _SCALAR_BUFFERS]
    shape_key = shape_key or tuple
    t_shape = {n: shape_key(sh) for n, sh in zip(t.locals, t.shapes)}
    s_shape = {n: shape_key(sh) for n, sh in zip(s.locals, s.shapes)}
    pairs: list[tuple[str, str]] = []
    left_t, left_s = list(t_main), list(s_main)
    # 1. the same name, 2. the same role (weight = gamma = scale ...), each only when unique.
    for key in (lambda n: n, _role):
        s_by: dict[str, list[str]] = {}
        for n in left_s:
            s_by.setdefault(key(n), []).append(n)
        t_by: dict[str, list[str]] = {}
        for n in left_t:
            t_by.setdefault(key(n), []).append(n)
        for k, tn in t_by.items():
            sn = s_by.get(k, [])
            if len(tn) == 1 and len(sn) == 1:
                pairs.append((tn[0], sn[0]))
                left_t.remove(tn[0])
                left_s.remove(sn[0])
    # 3. what is left pairs by shape, only where a shape occurs once on each side.
    for n in list(left_t):
        same_t = [m for m in left_t if t_shape[m] == t_shape[n]]
        same_s = [m for m in left_s if s_shape[m] == t_shape[n]]
        if len(same_t) == 1 and len(same_s) == 1:
            pairs.append((n, same_s[0]))
            left_t.remove(n)
            left_s.remove(same_s[0])
    if len(left_t) == 1 and len(left_s) == 1:
        # One tensor left on each side cannot be swapped with anything (its shapes may differ:
        # an adapted input conv, a classifier).
        pairs.append((left_t[0], left_s[0]))
        left_t, left_s = [], []
    if left_t or left_s:
        raise TransferError(
            f"structure match refused: model module {t.describe()} and source module {s.describe()} "
            f"line up, but their tensors {', '.join(left_t) or '-'} vs {', '.join(left_s) or '-'} cannot "
            "be paired: the names are not known equivalents (weight=gamma=scale, bias=beta=shift, "
            "running_mean=moving_mean, running_var=moving_variance) and the shapes do not tell them "
            "apart. Rename the source keys (match='name' with rename rules) to say which is which"
        )
    out = [(t.key(a), s.key(b)) for a, b in pairs]
    out += [(t.key(n), s.key(n)) for n in t.locals if n in _SCALAR_BUFFERS and n in s.locals]
    return out


def _record(result: StructureMatch, t: Any, s: Any, status: str) -> None:
    """Add one aligned pair (units, or a unit and a q/k/v group) to ``result``."""
    equivalence = status.startswith("equivalent: ")
    if isinstance(s, list) or isinstance(t, list):
        fused, parts = (t, s) if isinstance(s, list) else (s, t)
        by_role = [{_role(n): u.key(n) for n in u.locals if n not in _SCALAR_BUFFERS} for u in parts]
        for n in fused.locals:
            if n in _SCALAR_BUFFERS:
                continue
            keys = [roles.get(_role(n)) for roles in by_role]
            if None in keys:
                raise TransferError(
                    f"structure match refused: {fused.describe()} is a fused projection but "
                    f"{n!r} has no counterpart in {', '.join(u.describe() for u in parts)}"
                )
            if fused is t:
                result.pairs[t.key(n)] = keys[0]
                result.derived[t.key(n)] = ("cat", keys)
            else:
                for idx, tk in enumerate(keys):
                    result.pairs[tk] = s.key(n)
                    result.derived[tk] = ("chunk", idx, len(keys))
        t_path = t.path if not isinstance(t, list) else "+".join(u.path for u in t)
        s_path = s.path if not isinstance(s, list) else "+".join(u.path for u in s)
        result.mapping.append({"target": t_path, "source": s_path, "kind": "fused", "status": status})
        result.equivalences.append(f"{t_path!r} <- {s_path!r}: {status[12:]}")
        return
    pairs = _pair_keys(t, s, _flat_key if equivalence and "Conv1D" not in status else None)
    if "Conv1D" in status:
        pairs = _pair_keys(t, s, lambda sh: tuple(sorted(sh)))
    shapes_t = dict(zip(map(t.key, t.locals), t.shapes))
    shapes_s = dict(zip(map(s.key, s.locals), s.shapes))
    for tk, sk in pairs:
        result.pairs[tk] = sk
        if "Conv1D" in status and len(shapes_t[tk]) == 2:
            result.derived[tk] = ("transpose",)
        elif shapes_t[tk] != shapes_s[sk] and equivalence:
            result.derived[tk] = ("reshape",)
    if equivalence:
        result.equivalences.append(f"{t.path!r} <- {s.path!r}: {status[12:]}")
    result.mapping.append({"target": t.path, "source": s.path, "kind": t.kind, "status": status})


def _left_out(
    target: Any, modules: dict, sd: dict, keys: list[str], source_sd: dict[str, Any], notes: list[str]
) -> tuple[list[str], list[str], list[str]]:
    """Keys no pairing is made for: a shared module's second name, and integer index buffers
    (the model keeps its own, the source's are not used)."""
    # A module registered under two names appears twice in state_dict; align its first name only.
    first_path: dict[int, str] = {}
    aliases = []
    for k in keys:
        path = k.rpartition(".")[0]
        mod = modules.get(path)
        if mod is None:  # a path named_modules does not list (a shared module's second name)
            mod = target.get_submodule(path) if path else target
        if first_path.setdefault(id(mod), path) != path:
            aliases.append(k)
    if aliases:
        notes.append(
            f"{len(aliases)} keys of modules shared under a second name were left to their first name"
        )
    kept = [k for k in keys if k not in aliases and _is_index_buffer(k, sd[k])]
    ignored = [k for k, v in source_sd.items() if _is_index_buffer(k, v)]
    if kept or ignored:
        notes.append(
            f"index buffers are not copied: the model keeps its own ({len(kept)}: "
            f"{', '.join(kept[:3]) or '-'}), the source's are not used ({len(ignored)}: "
            f"{', '.join(ignored[:3]) or '-'}); the numerical check covers them"
        )
    return aliases, kept, ignored


def _choose(candidates: list, source_runs: bool, guessed: str) -> tuple[tuple, list]:
    """The first order that aligns, and every order that does; refuse when none aligns, or when two
    align differently (a traced source model is checked numerically instead of cross-checked)."""
    results = []
    failures = []
    for label, t_list, s_list, extra in candidates:
        aligned, why = _align(t_list, s_list)
        if aligned is None:
            failures.append((label, why))
        else:
            results.append((label, aligned, extra, [u.path for u in t_list]))
    if not results:
        label, why = failures[0]
        more = "".join(f"; in {lab}: {w}" for lab, w in failures[1:] if w != why)
        if guessed:
            more += "; " + guessed
        raise TransferError(f"structure match refused ({label}): {why}{more}")
    chosen = results[0]
    if source_runs:
        results = results[:1]  # the numerical check after the port decides, not a second order
    for other in results[1:]:
        a = {t.path: s.path for t, s, _ in chosen[1]}
        b = {t.path: s.path for t, s, _ in other[1]}
        if a != b:
            disputed = next(t.path for t, _, _ in chosen[1] if a[t.path] != b.get(t.path))
            raise TransferError(
                f"structure match is ambiguous: model module {disputed!r} pairs with source module "
                f"{a[disputed]!r} in {chosen[0]} but with {b[disputed]!r} in {other[0]}; "
                "pass order='execution' or order='registration' to choose, "
                "or use match='name' with rename rules"
            )
    return chosen, results


def match_structure(
    target: Any,
    source_sd: dict[str, Any],
    *,
    target_keys: Sequence[str] | None = None,
    source_module: Any = None,
    example_input: Any = None,
    source_example_input: Any = None,
    order: str = "auto",
) -> StructureMatch:
    """Pair ``target``'s state_dict keys with ``source_sd``'s by forward order and shapes.

    ``target_keys`` restricts the model side (``load_weights`` passes the keys left after
    include/exclude). ``source_module``, when the source is a model, is traced too. ``order``:
    ``"auto"`` (forward order, registration order as a cross-check), ``"execution"`` or
    ``"registration"``. Raises :class:`~torchsmith.errors.TransferError` naming the first divergence
    when the two do not align, or the first disputed module when two orders align differently.
    """
    if order not in ("auto", "execution", "registration"):
        raise InputError(f"order: expected 'auto', 'execution' or 'registration', got {order!r}")
    modules = dict(target.named_modules())
    sd = target.state_dict(keep_vars=True)
    keys = list(sd) if target_keys is None else list(target_keys)
    notes: list[str] = []
    aliases, kept, ignored = _left_out(target, modules, sd, keys, source_sd, notes)
    skip, ignored_set = set(aliases) | set(kept), set(ignored)
    t_units = _units({k: tuple(sd[k].shape) for k in keys if k not in skip}, modules)
    s_units = _units(
        {k: tuple(v.shape) for k, v in source_sd.items() if k not in ignored_set},
        dict(source_module.named_modules()) if source_module is not None else None,
    )
    guessed = ""
    if source_module is None and len(s_units) > 2 and _looks_sorted(source_sd):
        # Sorted keys (safetensors stores them so) have lost the order the modules were registered in.
        s_units = {p: s_units[p] for p in sorted(s_units, key=_natural_key)}
        guessed = (
            "the source keys are sorted (as safetensors stores them), so the order its modules were "
            "registered in is unknown; they were ordered by name, numbers as numbers. If the match is "
            "refused, load the file into its own architecture by name first and pass that model as source"
        )
        notes.append(guessed)
    if not t_units or not s_units:
        raise TransferError(
            f"structure match: the {'model' if not t_units else 'source'} has no tensors left to align"
        )

    candidates: list[tuple[str, list[_Unit], list[_Unit], list[str]]] = []
    trace_error = None
    check_input = check_output = None
    t_idle_keys: list[str] = []
    if source_module is not None and order in ("auto", "execution"):
        # Both sides run: match their dataflow graphs, so branch order does not matter.
        try:
            # The target's graph only (a crop of the input or the meta device: no full forward);
            # the source runs for real on the check input and its output is the check's reference.
            t_groups, used = _traced(
                target, example_input, lambda m, x: dataflow_groups(m, x, graph_only=True)
            )
            s_out: list = []
            s_input = used if source_example_input is None else source_example_input
            s_groups, _ = _traced(source_module, s_input, lambda m, x: dataflow_groups(m, x, s_out))
            if s_input is used:  # the check after the port runs the model on this input again
                check_input, check_output = used, s_out[0]
            s_list, s_idle = _flow_units(s_units, s_groups)
            t_list, t_idle = _flow_units(t_units, t_groups)
            if _align(t_list, s_list)[0] is None:  # a cheap graph may differ: the real run decides
                with contextlib.suppress(Exception):  # else the cheap graph's divergence is reported
                    t_list, t_idle = _flow_units(t_units, dataflow_groups(target, used))
            t_idle_keys = list(t_idle)
            extra = []
            if t_idle:
                extra.append(f"model tensors that take no part in the forward: {', '.join(t_idle[:5])}")
            if s_idle:
                extra.append(
                    f"source tensors that take no part in the forward (left unused): {', '.join(s_idle[:5])}"
                )
            candidates.append(("dataflow graph", t_list, s_list, extra))
            if _align(t_list, s_list)[0] is not None:
                order = "dataflow"  # aligned: no other order is needed (the numerical check follows)
        except TransferError as e:
            if example_input is not None:
                raise
            trace_error = str(e)
    if order in ("auto", "execution"):
        try:
            t_exec = execution_order(target, example_input)
            if source_module is not None:
                s_exec = None
                if source_example_input is None and example_input is not None:
                    try:  # the model's input usually suits the source as well
                        s_exec = execution_order(source_module, example_input)
                    except TransferError:
                        s_exec = None
                if s_exec is None:
                    s_exec = execution_order(source_module, source_example_input)
                s_list, s_rest = _ordered(s_units, s_exec)
            else:
                s_list, s_rest = list(s_units.values()), []
            t_list, t_rest = _ordered(t_units, t_exec)
            extra = []
            if t_rest:
                extra.append(f"model modules that did not run were placed last: {', '.join(t_rest[:5])}")
            if s_rest:
                extra.append(f"source modules that did not run were placed last: {', '.join(s_rest[:5])}")
            candidates.append(("forward order", t_list, s_list, extra))
        except TransferError as e:
            if order == "execution" or example_input is not None:
                raise  # the caller's own input failed, or they asked for forward order
            trace_error = str(e)
    # Registration order cross-checks a state_dict source; a traced source model is checked
    # numerically after the port instead, so there the first order that aligns is taken.
    if order in ("registration", "auto"):
        candidates.append(("registration order", list(t_units.values()), list(s_units.values()), []))
    if trace_error:
        notes.append(f"forward trace failed, used the other orders only: {trace_error}")

    chosen, results = _choose(candidates, source_module is not None, guessed)
    label, aligned, extra, t_order = chosen
    notes.append(
        f"aligned {len(aligned)} modules by {label}"
        + ("" if len(results) == 1 else f" (and {results[1][0]})")
    )
    notes.extend(extra)
    result = StructureMatch(notes=notes, target_order=t_order, order=label, kept=kept, ignored=ignored)
    if label == "dataflow graph":
        result.check_input, result.source_output = check_input, check_output
        result.idle = t_idle_keys
    for t, s, status in aligned:
        _record(result, t, s, status)
    return result
