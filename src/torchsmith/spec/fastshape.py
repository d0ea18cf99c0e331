"""Output shapes of common layers and graph ops from their arguments, without running a meta kernel.

Why: most of torch's meta kernels are Python functions, and the first one run imports
``torch._dynamo`` and ``sympy`` (about as long as ``import torch`` itself), so a spec check that
runs a three-layer MLP on meta tensors would cost twice the import. For the layers and ops below
the output shape is a short formula of the input shape and the layer's arguments.

Each function answers a meta tensor of the output's shape and dtype, or ``None`` when the case is
not one it fully understands: an unusual argument, another dtype, an unbatched input, anything the
layer might refuse. The caller then runs the real meta kernel, which gives torch's own result or
error, so errors always come from torch and a formula never accepts what torch would refuse.
``tests/spec/test_spec_fastshape.py`` checks every formula against torch's meta kernels, on valid
and invalid inputs.

>>> import torch, torch.nn as nn
>>> x = torch.empty(2, 3, 32, 32, device="meta")
>>> module_output(nn.Conv2d(3, 8, 3, stride=2, device="meta"), [x]).shape
torch.Size([2, 8, 15, 15])
>>> module_output(nn.Conv2d(4, 8, 3, device="meta"), [x]) is None   # torch decides (and refuses)
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from torchsmith.spec.graph import SharedModule

__all__ = ["module_output", "op_output"]

_FLOAT = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _plain(xs: Sequence[Any]) -> bool:
    """Meta tensors of a floating dtype with at least one dim, every size at least 1."""
    return bool(xs) and all(
        isinstance(x, torch.Tensor)
        and x.device.type == "meta"
        and x.dtype in _FLOAT
        and x.dim() >= 1
        and all(d >= 1 for d in x.shape)
        for x in xs
    )


def _empty(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=like.dtype, device="meta")


def _params_match(module: nn.Module, x: torch.Tensor) -> bool:
    """Every parameter and buffer of ``module`` is a meta tensor of ``x``'s dtype (no type promotion)."""
    tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    return all(t.device.type == "meta" and (t.dtype == x.dtype or not t.is_floating_point()) for t in tensors)


def _tuple(value: Any, n: int) -> tuple[int, ...] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n
    if isinstance(value, (tuple, list)) and len(value) == n and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None


# ----------------------------------------------------------------------------------------- layers
def _same(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    return _empty(x.shape, x)


def _gelu(module: nn.GELU, x: torch.Tensor) -> torch.Tensor | None:
    return _empty(x.shape, x) if module.approximate in ("none", "tanh") else None


def _softmax(module: Any, x: torch.Tensor) -> torch.Tensor | None:
    dim = module.dim
    if not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        return None
    return _empty(x.shape, x)


def _linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor | None:
    if x.shape[-1] != module.in_features or not _params_match(module, x):
        return None
    return _empty((*x.shape[:-1], module.out_features), x)


def _batch_norm(module: Any, x: torch.Tensor) -> torch.Tensor | None:
    dims = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}[type(module)]
    if (
        module.training  # batch statistics: batch-1 checks and more; torch decides
        or not module.track_running_stats
        or module.running_mean is None
        or x.dim() not in dims
        or x.shape[1] != module.num_features
        or not _params_match(module, x)
    ):
        return None
    return _empty(x.shape, x)


def _layer_norm(module: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor | None:
    shape = tuple(module.normalized_shape)
    if not shape or x.dim() < len(shape) or tuple(x.shape[-len(shape) :]) != shape:
        return None
    return _empty(x.shape, x) if _params_match(module, x) else None


def _group_norm(module: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor | None:
    if x.dim() < 2 or x.shape[1] != module.num_channels or module.num_channels % module.num_groups:
        return None
    values = x.shape[0] * x.shape[1] // module.num_groups  # F.group_norm's "more than 1 value" check
    for d in x.shape[2:]:
        values *= d
    if values == 1:
        return None
    return _empty(x.shape, x) if _params_match(module, x) else None


_CONV = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_CONV_T = {nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2, nn.ConvTranspose3d: 3}


def _conv(module: Any, x: torch.Tensor) -> torch.Tensor | None:
    n = _CONV[type(module)]
    if x.dim() != n + 2 or x.shape[1] != module.in_channels or module.padding_mode != "zeros":
        return None
    if not _params_match(module, x) or module.weight.shape[1] * module.groups != x.shape[1]:
        return None
    k, s, d = _tuple(module.kernel_size, n), _tuple(module.stride, n), _tuple(module.dilation, n)
    if k is None or s is None or d is None:
        return None
    sizes = tuple(x.shape[2:])
    if module.padding == "same":
        outs = sizes
    else:
        p = (0,) * n if module.padding == "valid" else _tuple(module.padding, n)
        if p is None:
            return None
        outs = tuple(
            (L + 2 * pi - di * (ki - 1) - 1) // si + 1 for L, pi, di, ki, si in zip(sizes, p, d, k, s)
        )
    if any(o < 1 for o in outs):
        return None
    return _empty((x.shape[0], module.out_channels, *outs), x)


def _conv_transpose(module: Any, x: torch.Tensor) -> torch.Tensor | None:
    n = _CONV_T[type(module)]
    if x.dim() != n + 2 or x.shape[1] != module.in_channels or module.padding_mode != "zeros":
        return None
    if not _params_match(module, x) or module.weight.shape[0] != x.shape[1]:
        return None
    k, s, d = _tuple(module.kernel_size, n), _tuple(module.stride, n), _tuple(module.dilation, n)
    p, op = _tuple(module.padding, n), _tuple(module.output_padding, n)
    if k is None or s is None or d is None or p is None or op is None:
        return None
    if any(not (o < si or o < di) for o, si, di in zip(op, s, d)):
        return None
    sizes = tuple(x.shape[2:])
    outs = tuple(
        (L - 1) * si - 2 * pi + di * (ki - 1) + oi + 1 for L, si, pi, di, ki, oi in zip(sizes, s, p, d, k, op)
    )
    if any(o < 1 for o in outs):
        return None
    return _empty((x.shape[0], module.out_channels, *outs), x)


_POOL = {
    nn.MaxPool1d: 1,
    nn.MaxPool2d: 2,
    nn.MaxPool3d: 3,
    nn.AvgPool1d: 1,
    nn.AvgPool2d: 2,
    nn.AvgPool3d: 3,
}


def _pool(module: Any, x: torch.Tensor) -> torch.Tensor | None:
    n = _POOL[type(module)]
    is_max = isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d))
    if x.dim() != n + 2 or (is_max and module.return_indices):
        return None
    if not is_max and getattr(module, "divisor_override", None) is not None:
        return None
    k = _tuple(module.kernel_size, n)
    s = _tuple(module.stride if module.stride not in (None, (), []) else module.kernel_size, n)
    p = _tuple(module.padding, n)
    d = _tuple(module.dilation, n) if is_max else (1,) * n
    if k is None or s is None or p is None or d is None or any(v < 1 for v in (*k, *s, *d)):
        return None
    outs = []
    for L, ki, si, pi, di in zip(x.shape[2:], k, s, p, d):
        if pi < 0 or 2 * pi > ki:  # torch's "pad at most half of the kernel"
            return None
        if n == 3 and (ki - 1) * di + 1 > L:  # 3-D pools also refuse an input smaller than the kernel
            return None
        span = L + 2 * pi - di * (ki - 1) - 1 + (si - 1 if module.ceil_mode else 0)
        if span < 0:
            return None
        o = span // si + 1
        if module.ceil_mode and (o - 1) * si >= L + pi:
            o -= 1
        if o < 1:
            return None
        outs.append(o)
    return _empty((*x.shape[:2], *outs), x)


_ADAPTIVE = {
    nn.AdaptiveAvgPool1d: 1,
    nn.AdaptiveAvgPool2d: 2,
    nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1,
    nn.AdaptiveMaxPool2d: 2,
    nn.AdaptiveMaxPool3d: 3,
}


def _adaptive(module: Any, x: torch.Tensor) -> torch.Tensor | None:
    n = _ADAPTIVE[type(module)]
    if x.dim() != n + 2 or getattr(module, "return_indices", False):
        return None
    size = module.output_size
    size = (size,) * n if isinstance(size, int) or size is None else tuple(size)
    if len(size) != n:
        return None
    outs = []
    for L, o in zip(x.shape[2:], size):
        if o is None and n > 1:  # None keeps the input size (2-D and 3-D only)
            outs.append(L)
        elif isinstance(o, int) and not isinstance(o, bool) and o >= 1:
            outs.append(o)
        else:
            return None
    return _empty((*x.shape[:2], *outs), x)


def _run(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """Views and no-ops whose meta kernels are C++ (free): run them."""
    try:
        return module(x)
    except Exception:
        return None


def _sequential(module: nn.Sequential, x: torch.Tensor) -> Any:
    out: Any = x
    for child in module:
        out = module_output(child, [out])
        if out is None:
            return None
    return out


_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Mish,
    nn.Softplus,
    nn.Softsign,
    nn.LogSigmoid,
)

_MODULES: dict[type, Callable[[Any, torch.Tensor], Any]] = {
    **dict.fromkeys(_ELEMENTWISE, _same),
    nn.GELU: _gelu,
    nn.Softmax: _softmax,
    nn.LogSoftmax: _softmax,
    nn.Linear: _linear,
    nn.BatchNorm1d: _batch_norm,
    nn.BatchNorm2d: _batch_norm,
    nn.BatchNorm3d: _batch_norm,
    nn.LayerNorm: _layer_norm,
    nn.GroupNorm: _group_norm,
    **dict.fromkeys(_CONV, _conv),
    **dict.fromkeys(_CONV_T, _conv_transpose),
    **dict.fromkeys(_POOL, _pool),
    **dict.fromkeys(_ADAPTIVE, _adaptive),
    nn.Identity: _run,
    nn.Flatten: _run,
    nn.Unflatten: _run,
    nn.Dropout: lambda m, x: None if m.training else _same(m, x),  # eval: the input itself
}


def module_output(module: nn.Module, xs: Sequence[Any]) -> Any:
    """The output of ``module(*xs)`` on meta tensors by formula, or ``None`` (run the meta kernel).

    Only the exact classes listed are known (a subclass may change ``forward``); an ``nn.Sequential``
    (or a subclass that keeps its ``forward``, like ``ConvNormAct``) is known when all its children are.
    """
    if len(xs) != 1 or not _plain(xs):
        return None
    cls = type(module)
    if cls is SharedModule:  # a later use of a spec's shared module: the module it runs
        return module_output(module._shared[0], xs)
    if isinstance(module, nn.Sequential) and cls.forward is nn.Sequential.forward:
        return _sequential(module, xs[0])
    fn = _MODULES.get(cls)
    return None if fn is None else fn(module, xs[0])


# -------------------------------------------------------------------------------------------- ops
def _broadcast(shapes: Sequence[Sequence[int]]) -> tuple[int, ...] | None:
    n = max(len(s) for s in shapes)
    out = []
    for i in range(n):
        sizes = {s[len(s) - n + i] for s in shapes if len(s) - n + i >= 0} - {1}
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _elementwise(xs: Sequence[torch.Tensor]) -> torch.Tensor | None:
    if len({x.dtype for x in xs}) != 1:
        return None
    shape = _broadcast([tuple(x.shape) for x in xs])
    return None if shape is None else _empty(shape, xs[0])


def _op_concat(xs: Sequence[torch.Tensor], dim: Any = 1) -> torch.Tensor | None:
    nd = xs[0].dim()
    if len({x.dtype for x in xs}) != 1 or any(x.dim() != nd for x in xs):
        return None
    if isinstance(dim, bool) or not isinstance(dim, int) or not -nd <= dim < nd:
        return None
    dim %= nd
    rest = {tuple(x.shape[:dim]) + tuple(x.shape[dim + 1 :]) for x in xs}
    if len(rest) != 1:
        return None
    shape = list(xs[0].shape)
    shape[dim] = sum(x.shape[dim] for x in xs)
    return _empty(shape, xs[0])


def _op_unary(xs: Sequence[torch.Tensor]) -> torch.Tensor | None:
    return _empty(xs[0].shape, xs[0])


def _op_softmax(xs: Sequence[torch.Tensor], dim: Any = 1) -> torch.Tensor | None:
    x = xs[0]
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        return None
    return _empty(x.shape, x)


def _op_mean(xs: Sequence[torch.Tensor], dim: Any = None, keepdim: bool = False) -> torch.Tensor | None:
    x = xs[0]
    if dim is None:
        return _empty((), x)
    dims = [dim] if isinstance(dim, int) else dim
    if (
        not isinstance(dims, (list, tuple))
        or not dims
        or not isinstance(keepdim, bool)
        or any(isinstance(d, bool) or not isinstance(d, int) or not -x.dim() <= d < x.dim() for d in dims)
    ):
        return None
    dims = {d % x.dim() for d in dims}
    if len(dims) != (1 if isinstance(dim, int) else len(dim)):
        return None  # a dim named twice: torch refuses
    shape = [1 if i in dims else s for i, s in enumerate(x.shape) if keepdim or i not in dims]
    return _empty(shape, x)


def _op_matmul(xs: Sequence[torch.Tensor]) -> torch.Tensor | None:
    a, b = xs
    if a.dtype != b.dtype:
        return None
    sa, sb = list(a.shape), list(b.shape)
    if len(sa) == 1 and len(sb) == 1:
        return _empty((), a) if sa == sb else None
    a_vec, b_vec = len(sa) == 1, len(sb) == 1
    if a_vec:
        sa = [1, *sa]
    if b_vec:
        sb = [*sb, 1]
    if sa[-1] != sb[-2]:
        return None
    batch = _broadcast([sa[:-2], sb[:-2]]) if (sa[:-2] or sb[:-2]) else ()
    if batch is None:
        return None
    shape = [*batch, *([] if a_vec else [sa[-2]]), *([] if b_vec else [sb[-1]])]
    return _empty(shape, a)


_OPS: dict[str, Callable[..., Any]] = {
    "add": _elementwise,
    "multiply": _elementwise,
    "subtract": _elementwise,
    "concat": _op_concat,
    "cat": _op_concat,
    "abs": _op_unary,
    "relu": _op_unary,
    "sigmoid": _op_unary,
    "softmax": _op_softmax,
    "mean": _op_mean,
    "matmul": _op_matmul,
}


def op_output(op: str, xs: Sequence[Any], kwargs: dict) -> Any:
    """The output of graph op ``op`` on meta tensors by formula, or ``None`` (run the op itself)."""
    fn = _OPS.get(op)
    if fn is None or not _plain(xs):
        return None
    try:
        return fn(xs, **kwargs)
    except TypeError:  # an argument the formula does not take: the op itself will say
        return None
