"""Trace a model's dataflow into a graph of the operations that consume its tensors.

Execution order depends on how a forward is written: torchvision's RegNet runs a block's shortcut
before its main branch, timm's after. The dataflow graph does not. One forward pass (eval mode, no
gradients) runs under a :class:`torch.overrides.TorchFunctionMode` that sees every torch call:

* a call that takes some of the model's parameters or buffers *and* an activation is a **node**
  (``F.conv2d(x, weight, bias)``, ``torch.cat([cls_token, x])``, ``x + pos_embed``); the tensors it
  takes form one group (a module's ``weight, bias``; a root-owned ``cls_token`` on its own);
* a call on parameters only (``weight.t()``, ``table[index]``) derives a tensor that still belongs
  to those parameters; a call on activations only passes their ancestry on.

Each node gets its depth (longest path from the input) and height (longest path to the output);
sorting the groups by ``(depth, -height, first run)`` gives an order that is the same for any two
implementations computing the same graph, whichever branch they run first.

>>> import torch, torch.nn as nn
>>> class Block(nn.Module):
...     def __init__(self, shortcut_first):
...         super().__init__()
...         self.first = shortcut_first
...         self.a, self.b, self.short = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
...     def forward(self, x):
...         s = self.short(x) if self.first else None
...         y = self.b(self.a(x).relu())
...         return y + (self.short(x) if s is None else s)
>>> [p for p, _ in dataflow_groups(Block(True), torch.zeros(1, 4))]
['a', 'short', 'b']
>>> [p for p, _ in dataflow_groups(Block(False), torch.zeros(1, 4))]
['a', 'short', 'b']
"""

from __future__ import annotations

from typing import Any

__all__ = ["dataflow_groups"]


def _tensors(obj: Any, out: list, tensor: type) -> list:
    if isinstance(obj, tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _tensors(o, out, tensor)
    elif isinstance(obj, dict):
        for o in obj.values():
            _tensors(o, out, tensor)
    return out


def _mode_class() -> type:
    import torch
    from torch.overrides import TorchFunctionMode

    tensor = torch.Tensor

    class _Flow(TorchFunctionMode):
        def __init__(self, owner: dict[int, frozenset]):
            super().__init__()
            self.owner = owner  # id(tensor) -> frozenset of (module path, local name)
            self.anc: dict[int, frozenset] = {}  # id(activation) -> frozenset of node ids
            self.keep: list[Any] = []  # keeps traced tensors alive so their ids are not reused
            self.nodes: list[tuple[frozenset, frozenset]] = []  # (tensor names, predecessor nodes)

        def __torch_function__(self, func, types, args=(), kwargs=None):
            result = func(*args, **kwargs) if kwargs else func(*args)
            # Called for every torch call of the forward, .shape included: return early where
            # nothing is recorded (no tensor out), and look at the inputs only after that.
            if isinstance(result, tensor):
                outputs = [result]
            elif isinstance(result, (list, tuple)):
                outputs = _tensors(result, [], tensor)
                if not outputs:
                    return result
            else:
                return result
            inputs = _tensors(args, [], tensor)
            if kwargs:
                _tensors(kwargs, inputs, tensor)
            owner, anc = self.owner, self.anc
            owned: frozenset = frozenset()
            preds: frozenset = frozenset()
            active = False
            for t in inputs:
                i = id(t)
                o = owner.get(i)
                if o is not None:
                    owned |= o
                elif i in anc:
                    active = True
                    preds |= anc[i]
                elif not active:  # a tensor from outside (the input, a constant) is an activation
                    active = t.dtype.is_floating_point or t.dtype.is_complex
            if owned and not active:
                for t in outputs:
                    owner[id(t)] = owned
            else:
                if owned:
                    self.nodes.append((owned, preds))
                    preds = frozenset({len(self.nodes) - 1})
                for t in outputs:
                    if id(t) not in owner:
                        anc[id(t)] = preds
            self.keep.extend(outputs)
            return result

    return _Flow


def _call(model: Any, x: Any) -> Any:
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def _owners(model: Any, stand_in: dict[int, Any] | None = None) -> dict[int, frozenset]:
    """id(tensor) -> ``{(module path, local name)}`` for the model's tensors (or their stand-ins)."""
    owner: dict[int, frozenset] = {}
    for path, module in model.named_modules(remove_duplicate=True):
        for name, t in list(module.named_parameters(recurse=False)) + list(
            module.named_buffers(recurse=False)
        ):
            if t is not None:
                t = t if stand_in is None else stand_in[id(t)]
                owner.setdefault(id(t), frozenset({(path, name)}))
    return owner


def _to_meta(x: Any) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x.to("meta")
    if isinstance(x, (list, tuple)):
        return type(x)(_to_meta(o) for o in x)
    if isinstance(x, dict):
        return {k: _to_meta(v) for k, v in x.items()}
    return x


def _record(model: Any, example_input: Any, meta: bool) -> tuple[Any, list]:
    """Run ``model`` once under the tracing mode (eval, no grad, flags restored): ``(output, nodes)``.

    ``meta``: the model's tensors and the input are replaced by meta-device stand-ins for this run
    (``functional_call``), so only shapes are computed.
    """
    import torch

    stand_in: dict[int, Any] | None = None
    if meta:
        stand_in, by_key = {}, {}
        named = list(model.named_parameters(remove_duplicate=False)) + list(
            model.named_buffers(remove_duplicate=False)
        )
        for key, t in named:
            if id(t) not in stand_in:
                stand_in[id(t)] = torch.empty_like(t, device="meta")
            by_key[key] = stand_in[id(t)]
        example_input = _to_meta(example_input)
    mode = _mode_class()(_owners(model, stand_in))
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), mode:
            if stand_in is None:
                out = _call(model, example_input)
            else:
                x = example_input
                args = () if isinstance(x, dict) else tuple(x) if isinstance(x, (tuple, list)) else (x,)
                out = torch.func.functional_call(model, by_key, args, x if isinstance(x, dict) else {})
    finally:
        for m, flag in flags.items():
            m.training = flag
    return out, mode.nodes


#: The spatial sizes an image-like input is cut to for a graph-only trace, tried in turn: a
#: convnet's forward there is mostly per-call overhead (ResNet-50, one thread: 14.5 ms traced at
#: 16, 22 ms at 32, 36 ms at 64); 16 runs stride-32 ResNets, 32 also VGG and ConvNeXt.
GRAPH_SIZES = (16, 32)


def _crops(x: Any) -> list[Any]:
    """Batch-1 crops of an image-like input (float, ndim >= 3) to at most each of GRAPH_SIZES per
    spatial dim (no two alike; ``x`` itself at most once), or none when ``x`` is not image-like."""
    import torch

    if not isinstance(x, torch.Tensor) or x.dim() < 3 or not x.dtype.is_floating_point:
        return []
    out: dict[tuple, Any] = {}
    for size in GRAPH_SIZES:
        crop = x[(slice(0, 1), slice(None), *(slice(0, size) for _ in x.shape[2:]))]
        out.setdefault(tuple(crop.shape), crop)
    return list(out.values())


def _graph_nodes(model: Any, example_input: Any) -> list:
    """The nodes of ``model``'s dataflow on ``example_input``, computing as little as possible.

    The graph of parameterised calls does not depend on the values, and for the networks this
    serves not on the spatial size either: first a small crop of an image input with the model's
    own tensors (a convnet's forward there is mostly per-call overhead), then the meta device
    (shapes only; fixed-size models such as a ViT), then a real run. A graph taken on a crop is
    only a proposal: the port that follows is checked numerically on the full input, and a match
    that fails on it is retried on the real run's graph (``match_structure``).
    """
    state = _plain_attributes(model)
    for crop in _crops(example_input):
        try:
            return _record(model, crop, meta=False)[1]
        except Exception:  # too small for the model: a larger crop, then the meta device
            pass
        finally:
            _restore(state)
    try:
        return _record(model, example_input, meta=True)[1]
    except Exception:  # a data-dependent op, or a tensor outside the model: run it for real
        return _record(model, example_input, meta=False)[1]
    finally:
        _restore(state)


def _plain_attributes(model: Any) -> list[tuple[Any, dict[str, Any]]]:
    """Every module's plain attributes (not parameters, buffers or submodules), to put back.

    A forward may change them for the input it sees: transformers' Swin shrinks ``window_size`` and
    ``shift_size`` to a small input and keeps them, so a graph taken on a crop left the model
    unable to run on the caller's ``example_input``.
    """
    return [(m, {k: v for k, v in vars(m).items() if not k.startswith("_")}) for m in model.modules()]


def _restore(state: list[tuple[Any, dict[str, Any]]]) -> None:
    for module, attrs in state:
        for k, v in attrs.items():
            if module.__dict__.get(k, v) is not v:
                module.__dict__[k] = v


def dataflow_groups(
    model: Any, example_input: Any, outputs: list | None = None, *, graph_only: bool = False
) -> list[tuple[str, tuple[str, ...]]]:
    """``(module path, local tensor names)`` for each group of tensors consumed together, in graph order.

    A tensor consumed by several nodes (a shared weight) belongs to the first. Tensors that take no
    part in the forward (an aux head in eval, ``num_batches_tracked``) are not listed. With
    ``outputs`` (a list), the model's output is appended to it (the numerical check reuses it).
    ``graph_only``: the output is not needed, so the model runs as cheaply as its graph allows
    (a crop of the input, the meta device; see :func:`_graph_nodes`).
    """
    if graph_only:
        if outputs is not None:
            raise ValueError("graph_only runs compute no output")
        nodes = _graph_nodes(model, example_input)
    else:
        out, nodes = _record(model, example_input, meta=False)
        if outputs is not None:
            outputs.append(out)
    return _order(nodes)


def _order(nodes: list) -> list[tuple[str, tuple[str, ...]]]:
    """Group the recorded nodes' tensors, sorted by (depth from the input, -height, first run)."""
    n = len(nodes)
    depth = [0] * n
    for i, (_, preds) in enumerate(nodes):  # nodes are recorded in a topological order
        depth[i] = 1 + max((depth[p] for p in preds), default=0)
    height = [0] * n
    succ: list[list[int]] = [[] for _ in range(n)]
    for i, (_, preds) in enumerate(nodes):
        for p in preds:
            succ[p].append(i)
    for i in range(n - 1, -1, -1):
        height[i] = 1 + max((height[s] for s in succ[i]), default=0)
    seen: set[tuple[str, str]] = set()
    groups: list[tuple[tuple, str, tuple[str, ...]]] = []
    for i in sorted(range(n), key=lambda i: (depth[i], -height[i], i)):
        names = sorted(nodes[i][0] - seen)
        if not names:
            continue
        seen.update(names)
        by_path: dict[str, list[str]] = {}
        for path, local in names:
            by_path.setdefault(path, []).append(local)
        for path, locals_ in by_path.items():
            groups.append(((depth[i], -height[i], i), path, tuple(locals_)))
    return [(path, locals_) for _, path, locals_ in groups]
