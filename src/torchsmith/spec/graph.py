"""The modules a spec builds besides ``nn.Sequential``: graphs, and list/dict containers that run.

:class:`SpecGraph` runs named nodes in a fixed, precomputed order: each node's inputs are graph
inputs or earlier nodes' outputs (``name``, or ``name.0`` / ``name.key`` for one element of a tuple
or dict output), merged by ops (``concat``, ``add``, ``multiply``, ...) that are plain functions, not
modules, so the ``state_dict`` holds exactly the spec's named layers. The plan is made of Python
constants, so ``torch.compile(fullgraph=True)`` unrolls it and ``torch.export`` traces it.

>>> import torch, torch.nn as nn
>>> g = SpecGraph(["x", "t"], [("fc", None, {}, (("x", None),)), ("cat", "concat", {"dim": 1},
...     (("fc", None), ("t", None)))], ("single", ("cat", None)), {"fc": nn.Linear(3, 2)})
>>> g(torch.ones(4, 3), torch.ones(4, 1)).shape
torch.Size([4, 3])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["OPS", "Op", "SharedModule", "SpecDict", "SpecGraph", "SpecList"]


# ------------------------------------------------------------------------------------------------ ops
def _concat(xs: Sequence[torch.Tensor], dim: int = 1) -> torch.Tensor:
    return torch.cat(list(xs), dim)


def _add(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


def _multiply(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = out * x
    return out


def _subtract(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return xs[0] - xs[1]


def _pad_to(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Pad (or crop) the spatial dims of ``xs[0]`` to those of ``xs[1]``, centred (the S10 U-Net's Up)."""
    x, ref = xs
    pads: list[int] = []
    for d in range(x.dim() - 1, 1, -1):  # last dim first, as F.pad wants
        diff = ref.shape[d] - x.shape[d]
        pads += [diff // 2, diff - diff // 2]
    return F.pad(x, pads)


def _interpolate(
    xs: Sequence[torch.Tensor],
    scale_factor: float | None = None,
    size: Any = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
) -> torch.Tensor:
    return F.interpolate(xs[0], size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners)


def _unsqueeze(xs: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    return xs[0].unsqueeze(dim)


def _flatten(xs: Sequence[torch.Tensor], start_dim: int = 1, end_dim: int = -1) -> torch.Tensor:
    return torch.flatten(xs[0], start_dim, end_dim)


def _reshape(xs: Sequence[torch.Tensor], shape: list[int]) -> torch.Tensor:
    return xs[0].reshape(shape)


def _identity(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return xs[0]


def _relu(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return F.relu(xs[0])


def _sigmoid(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.sigmoid(xs[0])


def _softmax(xs: Sequence[torch.Tensor], dim: int = 1) -> torch.Tensor:
    return F.softmax(xs[0], dim=dim)


def _mean(xs: Sequence[torch.Tensor], dim: Any = None, keepdim: bool = False) -> torch.Tensor:
    return xs[0].mean() if dim is None else xs[0].mean(dim=dim, keepdim=keepdim)


def _abs(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return xs[0].abs()


def _permute(xs: Sequence[torch.Tensor], dims: list[int]) -> torch.Tensor:
    return xs[0].permute(*dims)


def _transpose(xs: Sequence[torch.Tensor], dim0: int, dim1: int) -> torch.Tensor:
    return xs[0].transpose(dim0, dim1)


def _select(xs: Sequence[torch.Tensor], dim: int, index: int) -> torch.Tensor:
    return xs[0].select(dim, index)


def _index(xs: Sequence[torch.Tensor], dim: int, index: Any) -> torch.Tensor:
    """``x[..., index, ...]`` along ``dim``: an int drops the dim, a list keeps it (index_select)."""
    if isinstance(index, int):
        return xs[0].select(dim, index)
    size = xs[0].shape[dim]
    bad = [i for i in index if not -size <= i < size]
    if bad:  # the meta kernel does not check the values of an index tensor
        raise IndexError(f"index {bad[0]} is out of range for dim {dim} of size {size}")
    index = [i % size for i in index]
    return xs[0].index_select(dim, torch.tensor(index, dtype=torch.long, device=xs[0].device))


def _named(parts: Sequence[torch.Tensor], names: list[str] | None) -> Any:
    if names is None:
        return tuple(parts)
    if len(names) != len(parts):
        raise ValueError(f"gives {len(parts)} parts but names lists {len(names)}: {names}")
    return dict(zip(names, parts))


def _split(xs: Sequence[torch.Tensor], size: Any, dim: int = 1, names: list[str] | None = None) -> Any:
    return _named(torch.split(xs[0], size, dim), names)


def _chunk(xs: Sequence[torch.Tensor], chunks: int, dim: int = 1, names: list[str] | None = None) -> Any:
    return _named(torch.chunk(xs[0], chunks, dim), names)


def _getitem(xs: Sequence[Any], index: Any) -> Any:
    return _pick(xs[0], index)


def _matmul(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.matmul(xs[0], xs[1])


def _expand(xs: Sequence[torch.Tensor], size: list[int]) -> torch.Tensor:
    return xs[0].expand(*size)


def _causal_mask(xs: Sequence[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """``[L, L]`` booleans, True above the diagonal (position i may not see j > i), L = x.shape[dim].

    The ``attn_mask`` of ``nn.MultiheadAttention`` / ``src_mask`` of Transformer layers, where True
    means "not allowed"; pass ``is_causal: true`` beside it to let PyTorch use its causal kernels.
    """
    n = xs[0].shape[dim]
    return torch.ones(n, n, dtype=torch.bool, device=xs[0].device).triu(1)


def _expand_batch(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``inputs[0]`` (batch 1: a class token) repeated to the batch of ``inputs[1]``, without a copy."""
    x, like = xs
    if x.shape[0] != 1:
        raise ValueError(
            f"expected a first input with batch 1 (a parameter such as [1, 1, D]); got {tuple(x.shape)}"
        )
    return x.expand(like.shape[0], *x.shape[1:])


@dataclass(frozen=True)
class Op:
    """A merge or reshaping operation usable as a graph node: ``{op: concat, inputs: [a, b]}``."""

    fn: Callable[..., torch.Tensor]
    min_inputs: int
    max_inputs: int | None  # None: any number
    kwargs: dict[str, Any]  # accepted keyword arguments and their defaults
    required: tuple[str, ...] = ()
    doc: str = ""


OPS: dict[str, Op] = {
    "concat": Op(_concat, 2, None, {"dim": 1}, doc="torch.cat(inputs, dim)"),
    "add": Op(_add, 2, None, {}, doc="elementwise sum"),
    "multiply": Op(_multiply, 2, None, {}, doc="elementwise product"),
    "subtract": Op(_subtract, 2, 2, {}, doc="inputs[0] - inputs[1]"),
    "pad_to": Op(_pad_to, 2, 2, {}, doc="pad/crop inputs[0]'s spatial dims to inputs[1]'s, centred"),
    "interpolate": Op(
        _interpolate,
        1,
        1,
        {"scale_factor": None, "size": None, "mode": "nearest", "align_corners": None},
        doc="F.interpolate",
    ),
    "unsqueeze": Op(_unsqueeze, 1, 1, {"dim": None}, required=("dim",), doc="x.unsqueeze(dim)"),
    "flatten": Op(_flatten, 1, 1, {"start_dim": 1, "end_dim": -1}, doc="torch.flatten"),
    "reshape": Op(_reshape, 1, 1, {"shape": None}, required=("shape",), doc="x.reshape(shape)"),
    "identity": Op(_identity, 1, 1, {}, doc="the input itself (a named alias)"),
    "relu": Op(_relu, 1, 1, {}, doc="F.relu"),
    "sigmoid": Op(_sigmoid, 1, 1, {}, doc="torch.sigmoid"),
    "softmax": Op(_softmax, 1, 1, {"dim": 1}, doc="F.softmax"),
    "mean": Op(_mean, 1, 1, {"dim": None, "keepdim": False}, doc="x.mean(dim, keepdim)"),
    "abs": Op(_abs, 1, 1, {}, doc="torch.abs (|a - b| for a distance head)"),
    "cat": Op(_concat, 2, None, {"dim": 1}, doc="torch.cat(inputs, dim): concat by its torch name"),
    "permute": Op(_permute, 1, 1, {"dims": None}, required=("dims",), doc="x.permute(*dims)"),
    "transpose": Op(
        _transpose,
        1,
        1,
        {"dim0": None, "dim1": None},
        required=("dim0", "dim1"),
        doc="x.transpose(dim0, dim1)",
    ),
    "select": Op(
        _select, 1, 1, {"dim": None, "index": None}, required=("dim", "index"), doc="x.select(dim, index)"
    ),
    "index": Op(
        _index,
        1,
        1,
        {"dim": None, "index": None},
        required=("dim", "index"),
        doc="an int: x.select(dim, i); a list: x.index_select(dim, list)",
    ),
    "split": Op(
        _split,
        1,
        1,
        {"size": None, "dim": 1, "names": None},
        required=("size",),
        doc="torch.split(x, size, dim): a tuple (node.0, ...) or, with names, a dict (node.q, ...)",
    ),
    "chunk": Op(
        _chunk,
        1,
        1,
        {"chunks": None, "dim": 1, "names": None},
        required=("chunks",),
        doc="torch.chunk(x, chunks, dim): a tuple, or a dict with names",
    ),
    "getitem": Op(
        _getitem, 1, 1, {"index": None}, required=("index",), doc="one element of a tuple/dict output"
    ),
    "matmul": Op(_matmul, 2, 2, {}, doc="torch.matmul(inputs[0], inputs[1])"),
    "expand": Op(_expand, 1, 1, {"size": None}, required=("size",), doc="x.expand(*size) (-1 keeps a dim)"),
    "expand_batch": Op(_expand_batch, 2, 2, {}, doc="inputs[0] (batch 1) expanded to the batch of inputs[1]"),
    "causal_mask": Op(
        _causal_mask, 1, 1, {"dim": 1}, doc="[L, L] bool mask, True above the diagonal (L = x.shape[dim])"
    ),
}

# a graph step: (node name, op name or None for a module, op kwargs, ((source, selector), ...))
Step = tuple[str, "str | None", dict, tuple]


class SpecGraph(nn.Module):
    """A model made of named nodes wired by name; several inputs and outputs.

    ``steps`` run in order; ``outputs`` is ``("single", ref)``, ``("tuple", (ref, ...))`` or
    ``("dict", ((key, ref), ...))`` where a ref is ``(source, selector)`` or a plain source name.
    ``modules`` maps node names to their modules (registered as children under those names).
    """

    def __init__(
        self,
        input_names: Sequence[str],
        steps: Sequence[Step],
        outputs: tuple,
        modules: dict[str, nn.Module],
    ) -> None:
        super().__init__()
        for name, module in modules.items():
            if isinstance(module, nn.Parameter):  # a param node: a class token, a position embedding
                self.register_parameter(name, module)
            elif isinstance(module, torch.Tensor):
                self.register_buffer(name, module)
            else:
                self.add_module(name, module)
        self.input_names = tuple(input_names)
        self._steps = tuple(
            (n, op, dict(kw), tuple(refs), self._frees(steps, outputs, i))
            for i, (n, op, kw, refs) in enumerate(steps)
        )
        kind, outs = outputs
        self._out_kind = kind
        self._outs = outs

    @staticmethod
    def _frees(steps: Sequence[Step], outputs: tuple, i: int) -> tuple[str, ...]:
        """Names whose last use is step ``i`` (dropped then, so eager mode frees activations early)."""
        kind, outs = outputs
        if kind == "single":
            keep = {_src(outs)}
        elif kind == "tuple":
            keep = {_src(r) for r in outs}
        else:
            keep = {_src(r) for _, r in outs}
        last: dict[str, int] = {}
        for j, (_, _, kw, refs) in enumerate(steps):
            for ref in (*refs, *(r for _, r in kw.get("kw_refs", ()))):
                last[_src(ref)] = j
        return tuple(sorted(n for n, j in last.items() if j == i and n not in keep))

    def extra_repr(self) -> str:
        kind, outs = self._out_kind, self._outs
        if kind == "single":
            shown = _ref_str(outs)
        elif kind == "tuple":
            shown = "(" + ", ".join(_ref_str(r) for r in outs) + ")"
        else:
            shown = "{" + ", ".join(f"{k}: {_ref_str(r)}" for k, r in outs) + "}"
        ops = [
            f"{n}={op or kw['call']}({', '.join(_ref_str(r) for r in refs)})"
            for n, op, kw, refs, _ in self._steps
            if (op and op != "param") or "call" in kw
        ]
        return f"inputs=({', '.join(self.input_names)}), outputs={shown}" + (
            ", ops: " + "; ".join(ops) if ops else ""
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        names = self.input_names
        if len(args) + len(kwargs) != len(names):
            raise TypeError(
                f"this model takes {len(names)} input(s) ({', '.join(names)}); got {len(args) + len(kwargs)}"
            )
        env: dict[str, Any] = dict(zip(names, args))
        for key, value in kwargs.items():
            if key not in names or key in env:
                raise TypeError(f"unexpected or repeated input {key!r}; inputs are: {', '.join(names)}")
            env[key] = value
        for name, op, kw, refs, frees in self._steps:
            xs = [env[src] if sel is None else _pick(env[src], sel) for src, sel in refs]
            if op is None and "kw_refs" in kw:  # a module node with keywords (attn_mask, is_causal)
                kwargs = {k: _get(env, r) for k, r in kw["kw_refs"]}
                env[name] = getattr(self, name)(*xs, **kwargs, **kw["kw_values"])
            elif op is None:  # a module node, or a call of another node's module (shared weights)
                env[name] = getattr(self, kw.get("call", name))(*xs)
            elif op == "param":
                env[name] = getattr(self, name)
            else:
                env[name] = OPS[op].fn(xs, **kw)
            for dead in frees:
                del env[dead]
        if self._out_kind == "single":
            return _get(env, self._outs)
        if self._out_kind == "tuple":
            return tuple(_get(env, r) for r in self._outs)
        return {k: _get(env, r) for k, r in self._outs}


def _src(ref: Any) -> str:
    return ref[0]


def _get(env: dict[str, Any], ref: tuple) -> Any:
    src, sel = ref
    return env[src] if sel is None else _pick(env[src], sel)


def _pick(value: Any, sel: Any) -> Any:
    """``value[sel]``: an index into a tuple/list, a key of a dict (``fpn.0`` finds the key ``"0"``)."""
    if isinstance(value, (tuple, list)):
        return value[int(sel)]
    if sel in value:
        return value[sel]
    return value[str(sel)]


def _ref_str(ref: tuple) -> str:
    src, sel = ref
    return src if sel is None else f"{src}.{sel}"


class SpecList(nn.ModuleList):
    """An ``nn.ModuleList`` that also runs: each module feeds the next (the seeds' ModuleList loop)."""

    def forward(self, *xs: Any) -> Any:
        out: Any = None
        for i, module in enumerate(self):
            out = module(*xs) if i == 0 else module(out)
        return out


class SpecDict(nn.ModuleDict):
    """An ``nn.ModuleDict`` that also runs: its modules in insertion order (the seeds' ModuleDict loop)."""

    def forward(self, *xs: Any) -> Any:
        out: Any = None
        for i, module in enumerate(self.values()):
            out = module(*xs) if i == 0 else module(out)
        return out


class SharedModule(nn.Module):
    """A later use of a spec's shared module (``shared: true``): runs the module held at ``target``.

    The module is kept in a tuple, which ``nn.Module`` does not register as a child, so the
    ``state_dict``, ``parameters()`` and ``apply()`` see it once, at the place that holds it;
    ``deepcopy`` and pickling keep both places pointing at one module.
    """

    def __init__(self, module: nn.Module, target: str) -> None:
        super().__init__()
        self._shared = (module,)
        self.target = target

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._shared[0](*args, **kwargs)

    def extra_repr(self) -> str:
        return f"runs {self.target}"
