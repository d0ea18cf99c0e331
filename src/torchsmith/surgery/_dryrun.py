"""One sample forward pass that records what the model did, run on the meta device when possible.

Surgery needs facts only a forward pass reveals: which module first consumes the input, the width of
the features entering the classifier, the shapes (channels, stride) at chosen layers, which
parameters are ever used, which function produced the output. The pass never runs on the user's
modules: it runs on a structural copy (``_copy.meta_copy``: every parameter, buffer and cached tensor
replaced by a meta tensor of the same shape, shared modules still shared), so it costs no compute and
no memory and leaves the model bit-identical. Models that cannot run on meta (code that creates CPU
tensors in ``forward``) fall back to a real pass under ``no_grad`` on a copy that shares only the
parameters; only a model that cannot be copied at all runs itself, with its buffers restored, and
``DryRun.note`` says so.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from torchsmith.errors import SurgeryError
from torchsmith.surgery._copy import meta_copy, real_copy

__all__ = ["DryRun", "default_sample", "dry_run", "guess_input_shape", "is_dry_run"]

_ACTIVE = [0]


def is_dry_run() -> bool:
    """True inside :func:`dry_run` (hooks added by surgery use it to fill in missing extra inputs)."""
    return _ACTIVE[0] > 0


@dataclass
class DryRun:
    """What one sample forward pass did."""

    output: Any
    device: str
    order: list[str] = field(default_factory=list)  # module paths, in order of their first call
    inputs: dict[str, tuple] = field(default_factory=dict)  # path -> positional args of the first call
    outputs: dict[str, Any] = field(default_factory=dict)  # path -> output of the first call
    calls: dict[str, int] = field(default_factory=dict)  # path -> number of calls
    used_params: set[str] = field(default_factory=set)
    output_params: set[str] = field(default_factory=set)  # used parameters the output depends on
    input_consumers: list[str] = field(default_factory=list)
    output_func: str | None = None
    input_shape: tuple[int, ...] | None = None
    out_keys: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # path -> its output nodes
    strides: dict[str, float | None] = field(default_factory=dict)  # path -> downsampling of its output
    graph: dict[tuple[int, int], tuple] = field(default_factory=dict)  # node -> input-derived parents
    input_keys: set[tuple[int, int]] = field(default_factory=set)
    note: str | None = None  # set when the pass could not run on a copy of the model

    def output_nodes(self) -> list[tuple[int, int]]:
        """Graph nodes of the tensors in the model's output, in order."""
        return [_key(t) for t in _tensors(self.output)]

    def ancestors(self, node: tuple[int, int]) -> set[tuple[int, int]]:
        """Every graph node ``node`` was computed from (itself included)."""
        todo, seen = [node], set()
        while todo:
            k = todo.pop()
            if k not in seen:
                seen.add(k)
                todo.extend(self.graph.get(k, ()))
        return seen

    def dominates(self, path: str, node: tuple[int, int] | None = None) -> bool:
        """True when every way from the input to ``node`` (the first output) passes through ``path``.

        That is, the output is a function of ``path``'s output alone (plus constants and weights),
        as it is of a classifier's logits, and unlike a block's output a residual is added to.
        """
        if node is None:
            nodes = self.output_nodes()
            if not nodes:
                return False
            node = nodes[0]
        stop = set(self.out_keys.get(path, ()))
        if not stop:
            return False
        todo, seen = [node], set()
        while todo:
            k = todo.pop()
            if k in stop or k in seen:
                continue
            seen.add(k)
            if k in self.input_keys:
                return False
            todo.extend(self.graph.get(k, ()))
        return True


def guess_input_shape(model: nn.Module) -> tuple[int, ...]:
    """A sample input shape for ``model``: from the zoo entry, timm's config, or the first layer."""
    from torchsmith._provenance import get_provenance

    fixed = getattr(model, "_torchsmith_input_shape", None)  # set by set_in_channels
    if fixed:
        return tuple(fixed)
    arch = get_provenance(model).get("arch") or {}
    name = arch.get("name")
    if name and ":" not in name:
        # The zoo is looked up, never imported: a model with a zoo name was built by the zoo, so it
        # is loaded already (importing it here made surgery and zoo import each other).
        registry = sys.modules.get("torchsmith.zoo.registry")
        try:
            return tuple(registry.get_entry(name).input_shape)  # type: ignore[union-attr]
        except Exception:
            pass
    hf = _hf_input_shape(model)
    if hf is not None:
        return hf
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        in_chans = getattr(model, "in_chans", None)
        size = tuple(cfg["input_size"])
        if in_chans:
            size = (in_chans, *size[1:])
        return (1, *size)
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            spatial = {1: (224,), 2: (224, 224), 3: (16, 224, 224)}[len(m.kernel_size)]
            return (1, m.in_channels, *spatial)
        if isinstance(m, nn.Linear):
            return (1, m.in_features)
    raise SurgeryError(
        f"cannot guess a sample input for {type(model).__name__} (no convolution or linear layer "
        "found); pass input_shape=(batch, ...) or example_inputs"
    )


def _hf_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    return config if type(model).__module__.startswith("transformers.") and config is not None else None


def _hf_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """A transformers model's sample shape from its config: pixels at its image size, or 8 tokens."""
    config = _hf_config(model)
    if config is None:
        return None
    vision = getattr(config, "vision_config", None) or config
    size = getattr(vision, "image_size", None)
    size = size[-1] if isinstance(size, list | tuple) else size
    channels = getattr(vision, "num_channels", None)
    if isinstance(size, int) and isinstance(channels, int):
        return (1, channels, size, size)
    if isinstance(channels, int):
        return (1, channels, 64, 64)  # convolutional (ResNet, ConvNeXt): any size
    if isinstance(getattr(config, "vocab_size", None), int):
        return (1, 8)
    return None


def _input_dtype(model: nn.Module) -> torch.dtype:
    """Token ids for a transformers text model (its config has a vocabulary, no image channels)."""
    config = _hf_config(model)
    if config is not None and _hf_input_shape(model) == (1, 8):
        return torch.long
    return _float_dtype(model)


_LARGER_SIZES = (299, 384, 512)


def _declared_shape(model: nn.Module) -> bool:
    """True when the sample shape is declared (set_in_channels, a spec, the zoo, timm's config)."""
    from torchsmith._provenance import get_provenance

    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    name = (get_provenance(model).get("arch") or {}).get("name")
    return bool(
        _hf_input_shape(model)
        or getattr(model, "_torchsmith_input_shape", None)
        or (isinstance(cfg, dict) and cfg.get("input_size"))
        or _spec_input_shapes(model)
        or (name and ":" not in name)
    )


def default_sample(model: nn.Module, min_batch: int = 1) -> tuple[tuple[int, ...] | None, tuple | None]:
    """``(input_shape, None)`` or, for spec graphs with several inputs, ``(None, zero tensors)``."""
    shapes = _spec_input_shapes(model) or [guess_input_shape(model)]
    shapes = [(max(min_batch, s[0]), *s[1:]) for s in shapes]
    if len(shapes) > 1:
        return None, tuple(torch.zeros(s) for s in shapes)
    return shapes[0], None


def _spec_input_shapes(model: nn.Module) -> list[tuple[int, ...]] | None:
    """Input shapes declared by the spec a model was built from (``graph.inputs`` or ``input_shape``)."""
    import json

    from torchsmith._provenance import get_provenance

    spec = get_provenance(model).get("spec")
    if isinstance(spec, dict) and isinstance(spec.get("json"), str):
        try:
            spec = json.loads(spec["json"])
        except ValueError:
            return None
    if not isinstance(spec, dict):
        return None
    inputs = (spec.get("graph") or {}).get("inputs") if isinstance(spec.get("graph"), dict) else None
    names = getattr(model, "input_names", None) or (list(inputs) if isinstance(inputs, dict) else None)
    if isinstance(inputs, dict) and names and all(n in inputs for n in names):
        shapes = [inputs[n] for n in names]
    elif spec.get("input_shape") is not None:
        shapes = [spec["input_shape"]]
    else:
        return None
    if all(isinstance(s, list) and s and all(isinstance(d, int) and d > 0 for d in s) for s in shapes):
        return [tuple(s) for s in shapes]
    return None


def _key(t: torch.Tensor) -> tuple[int, int]:
    """A graph node: a tensor at one version (an in-place op makes a new node of the same tensor)."""
    try:
        return (id(t), t._version)
    except Exception:  # tensors without a version counter (inference mode)
        return (id(t), 0)


# Ops that downsample by a stride argument: position of (stride, kernel_size) in args, and the name.
_STRIDED = {f"conv{n}d": 3 for n in (1, 2, 3)}
_POOLS = {
    f"{kind}_pool{n}d{suffix}"
    for kind in ("max", "avg", "lp")
    for n in (1, 2, 3)
    for suffix in ("", "_with_indices")
}
_JOINS = {"cat", "concat", "concatenate", "stack", "hstack", "vstack"}  # pass-through, not a layer


def _last(v: Any) -> float | None:
    if isinstance(v, list | tuple):
        v = v[-1] if v else None
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and v > 0 else None


def _op_stride(fname: str, args: tuple, kwargs: dict, x: torch.Tensor, out: Any) -> float | None:
    """How much ``fname`` downsamples its first input along the last spatial dimension (None: not at all)."""
    if fname in _STRIDED:
        return _last(args[3] if len(args) > 3 else kwargs.get("stride", 1))
    if fname.startswith("conv_transpose"):
        s = _last(args[3] if len(args) > 3 else kwargs.get("stride", 1))
        return 1.0 / s if s else None
    if fname in _POOLS:
        ki = 2 if fname.startswith("lp") else 1  # lp_pool(input, norm_type, kernel_size, stride)
        kernel = args[ki] if len(args) > ki else kwargs.get("kernel_size")
        stride = args[ki + 1] if len(args) > ki + 1 else kwargs.get("stride")
        return _last(stride) or _last(kernel)
    if fname == "__getitem__" and len(args) > 1:
        # x[..., 0::2, 0::2, :] (Swin's patch merging): a strided slice downsamples by its step
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        steps = [i.step for i in index if isinstance(i, slice) and isinstance(i.step, int) and i.step > 1]
        return float(max(steps)) if steps else None
    if fname == "pixel_unshuffle":
        return _last(args[1] if len(args) > 1 else kwargs.get("downscale_factor"))
    if fname == "pixel_shuffle":
        s = _last(args[1] if len(args) > 1 else kwargs.get("upscale_factor"))
        return 1.0 / s if s else None
    if fname.startswith("adaptive_"):
        return _UNKNOWN  # a pooling to a fixed size: its factor depends on the input size
    if fname.startswith(("interpolate", "upsample")):
        scale = kwargs.get("scale_factor", args[2] if len(args) > 2 else None)
        o = out[0] if isinstance(out, tuple) else out
        if scale is None:
            return _UNKNOWN  # a resize to a given size: no fixed factor
        if isinstance(o, torch.Tensor) and o.dim() == x.dim() and x.dim() > 2 and o.shape[-1]:
            return x.shape[-1] / o.shape[-1]  # a resize by a scale factor
    return None


_UNKNOWN = -1.0  # _op_stride: the op has no fixed stride (its output has none either)


class _Recorder(TorchFunctionMode):
    """Tracks, for every torch op: parameters used, tensors derived from the input, who made what,
    which parameters each tensor depends on (so parameters whose results are dropped show), the
    graph of input-derived tensors, and the downsampling (stride) of each tensor."""

    _NO_PARAMS: frozenset[str] = frozenset()

    def __init__(self, param_ids: dict[int, tuple[str, ...]], input_tensors: list[torch.Tensor]) -> None:
        super().__init__()
        self.param_ids = param_ids
        self.used: set[str] = set()
        # Derived from the input without passing a layer with weights yet (finds the input layers).
        self.tainted: dict[int, torch.Tensor] = {id(t): t for t in input_tensors}
        self.consumers: list[str] = []
        self.maker: dict[int, tuple[str, torch.Tensor]] = {}  # keeps tensors alive: ids stay unique
        self.depends: dict[int, frozenset[str]] = {}
        self.graph: dict[tuple[int, int], tuple] = {}
        self.input_keys = {_key(t) for t in input_tensors}
        self.derived: set[int] = {id(t) for t in input_tensors}
        self.stride: dict[int, float] = {id(t): 1.0 for t in input_tensors}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat_in = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        in_keys = [_key(a) for a in flat_in if id(a) in self.derived]
        out = func(*args, **kwargs)
        if not flat_in:
            return out
        deps = set()
        param_names = []
        for a in flat_in:
            names = self.param_ids.get(id(a), ())  # every name of a shared parameter
            self.used.update(names)
            deps.update(names)
            deps |= self.depends.get(id(a), self._NO_PARAMS)
            if names:
                param_names.append(names[0])
            elif id(a) not in self.derived and self.depends.get(id(a)):
                # a kernel computed from weights in forward (timm's StdConv2d standardises its
                # weight first): the layer owning those weights is what meets the input
                param_names.extend(sorted(self.depends[id(a)]))
        frozen = frozenset(deps)
        flat_out = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        fname = getattr(func, "__name__", str(func))
        in_place = fname.endswith("_") and not fname.endswith("__")  # add_, not __get__
        if in_place or fname.startswith("__i") or fname == "__setitem__":
            flat_out = [flat_in[0], *flat_out]  # in place: the first argument now depends on the rest
        if any(id(a) in self.tainted for a in flat_in):
            if param_names and fname not in _JOINS:
                # A layer's own weights meet the input: that layer consumes it.
                for name in param_names:
                    owner = name.rpartition(".")[0]
                    if owner not in self.consumers:
                        self.consumers.append(owner)
            else:
                for o in flat_out:
                    self.tainted[id(o)] = o
        if in_keys:
            stride = self._stride(fname, args, kwargs, flat_in, out)
            for o in flat_out:
                self.derived.add(id(o))
                k = _key(o)
                self.graph[k] = (*self.graph.get(k, ()), *in_keys)
                if stride is not None:
                    self.stride[id(o)] = stride
        for o in flat_out:
            self.maker[id(o)] = (fname, o)
            self.depends[id(o)] = frozen | self.depends.get(id(o), self._NO_PARAMS)
        return out

    def _stride(self, fname, args, kwargs, flat_in, out) -> float | None:
        known = [self.stride[id(a)] for a in flat_in if id(a) in self.stride]
        if not known:
            return None
        x = flat_in[0]
        if id(x) in self.stride and x.dim() > 2:
            factor = _op_stride(fname, args, kwargs, x, out)
            if self.stride[id(x)] == 1.0 and fname.startswith(("interpolate", "upsample")):
                return 1.0  # the model resizes its input (SSD's transform): strides count from there
            if factor == _UNKNOWN:
                return None
            if factor is not None:
                return self.stride[id(x)] * factor
        return max(known)

    def reaching(self, outputs: list[torch.Tensor]) -> set[str]:
        """Names of the parameters that the given tensors depend on."""
        found: set[str] = set()
        for o in outputs:
            found |= self.depends.get(id(o), self._NO_PARAMS)
            found.update(self.param_ids.get(id(o), ()))
        return found


def _names_by_id(pairs: Any) -> dict[int, tuple[str, ...]]:
    """tensor id -> all its names (a module registered twice shares its parameters)."""
    out: dict[int, tuple[str, ...]] = {}
    for t, name in pairs:
        out[id(t)] = (*out.get(id(t), ()), name)
    return out


def _tensors(x: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]


def _float_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _make_inputs(shape_or_inputs: Any, device: str, dtype: torch.dtype = torch.float32) -> tuple:
    if isinstance(shape_or_inputs, tuple) and all(isinstance(d, int) for d in shape_or_inputs):
        return (torch.zeros(shape_or_inputs, device=device, dtype=dtype),)
    if isinstance(shape_or_inputs, torch.Tensor):
        shape_or_inputs = (shape_or_inputs,)
    return tuple(
        torch.zeros_like(t, device=device) if isinstance(t, torch.Tensor) and device == "meta" else t
        for t in shape_or_inputs
    )


def dry_run(
    model: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    example_inputs: Any = None,
    *,
    train: bool | None = None,
    record: bool = True,
    min_batch: int = 1,
) -> DryRun:
    """Run one forward pass of ``model`` and record what happened (see :class:`DryRun`).

    ``input_shape`` or ``example_inputs`` give the sample input (guessed when both are ``None``;
    a guess from the first layer that fails is retried at 299, 384 and 512 pixels). ``train`` sets
    the mode for the pass (the model's own mode is restored afterwards); ``min_batch`` is the
    smallest batch of a guessed sample (2 for training-mode batch norm).
    """
    guessed = example_inputs is None and input_shape is None
    if guessed:
        input_shape, example_inputs = default_sample(model, min_batch)
    elif example_inputs is None:
        input_shape = tuple(input_shape)
    shapes = [input_shape]
    if guessed and input_shape is not None and len(input_shape) == 4 and not _declared_shape(model):
        # A size guessed from the first layer (224) can be too small (inception_v3's aux head):
        # the usual larger sizes cost nothing on the meta device.
        shapes += [(*input_shape[:2], s, s) for s in _LARGER_SIZES if s > input_shape[-1]]
    errors = {}
    for device in ("meta", "real"):  # every size on meta (free) before a real pass
        for shape in shapes:
            try:
                return _run(model, shape, example_inputs, device, train, record)
            except SurgeryError:
                raise
            except Exception as e:
                # Report the first size's failure: the other sizes are fallbacks.
                errors.setdefault(device, f"{device}: {type(e).__name__}: {e}")
    errors = list(errors.values())
    what = f"input shape {input_shape}" if example_inputs is None else "the example inputs"
    raise SurgeryError(
        f"a sample forward pass of {type(model).__name__} with {what} failed ({'; '.join(errors)}); "
        "pass the right input_shape or example_inputs"
    )


def _copy_for(model: nn.Module, device: str) -> tuple[nn.Module, str | None]:
    """The module the pass runs on: a structural copy, never the user's model (see ``_copy``).

    Returns ``(module, note)``; the note says when no copy could be made and the model itself ran.
    """
    try:
        return (meta_copy(model) if device == "meta" else real_copy(model)), None
    except Exception as e:  # an attribute deepcopy refuses (a lock, a generator, a C++ handle)
        if device == "meta":
            raise
        return model, (
            f"the model could not be copied ({type(e).__name__}: {e}); the sample pass ran on the "
            "model itself, with its buffers restored afterwards"
        )


def _run(model, input_shape, example_inputs, device, train, record) -> DryRun:
    work, note = _copy_for(model, device)
    named_params = list(work.named_parameters(remove_duplicate=False))
    named_buffers = list(work.named_buffers(remove_duplicate=False))
    param_ids = _names_by_id((v, k) for k, v in named_params)
    if device == "meta":
        inputs = _make_inputs(
            input_shape if example_inputs is None else example_inputs, "meta", _input_dtype(model)
        )
    else:
        real_dev = next((p.device for p in work.parameters()), torch.device("cpu"))
        if example_inputs is None:
            # A random sample, not zeros: data-dependent branches (`if h.mean() > 0`) must see
            # typical data, or a layer behind one looks unused (seeded: the same run every time).
            gen = torch.Generator().manual_seed(0)
            dtype = _input_dtype(model)
            if dtype.is_floating_point:
                sample = torch.randn(input_shape, generator=gen, dtype=dtype)
            else:  # token ids: small ones, valid in any vocabulary
                sample = torch.randint(1, 4, input_shape, generator=gen, dtype=dtype)
            inputs = (sample.to(real_dev),)
        else:
            inputs = _make_inputs(example_inputs, "real")

    result = DryRun(output=None, device=device, input_shape=input_shape, note=note)
    recorder = _Recorder(param_ids, _tensors(inputs)) if record else None
    handles = []
    mods = list(work.named_modules(remove_duplicate=False))
    seen_ids: dict[int, str] = {}

    def pre_hook(path):
        def hook(mod, args):
            result.calls[path] = result.calls.get(path, 0) + 1
            if path not in result.inputs:
                result.order.append(path)
                result.inputs[path] = args

        return hook

    def post_hook(path):
        def hook(mod, args, out):
            if path not in result.outputs:
                result.outputs[path] = out
                if recorder is not None:
                    ts = _tensors(out)
                    result.out_keys[path] = [_key(t) for t in ts]
                    result.strides[path] = recorder.stride.get(id(ts[0])) if ts else None

        return hook

    for path, m in mods:
        if id(m) in seen_ids:  # a module registered twice: hook it once, under its first path
            continue
        seen_ids[id(m)] = path
        handles.append(m.register_forward_pre_hook(pre_hook(path)))
        handles.append(m.register_forward_hook(post_hook(path)))

    # Only when no copy could be made does the pass touch the model: then modes and buffers are
    # put back afterwards (hooks are removed in every case).
    modes = {id(m): m.training for _, m in mods} if work is model else {}
    saved = {k: v.detach().clone() for k, v in named_buffers} if work is model else None
    _ACTIVE[0] += 1
    try:
        if train is not None:
            work.train(train)
        with torch.no_grad(), recorder if recorder is not None else contextlib.nullcontext():
            out = work(*inputs)
    finally:
        _ACTIVE[0] -= 1
        for h in handles:
            h.remove()
        for _, m in mods:
            if id(m) in modes:
                m.training = modes[id(m)]
        if saved is not None:
            bufs = dict(named_buffers)
            with torch.no_grad():
                for k, v in saved.items():
                    bufs[k].copy_(v)
    result.output = out
    if recorder is not None:
        result.used_params = recorder.used
        outs = _tensors(out)
        result.output_params = recorder.reaching(outs)
        result.input_consumers = list(recorder.consumers)
        result.graph, result.input_keys = recorder.graph, recorder.input_keys
        if outs:
            made = recorder.maker.get(id(outs[0]))
            result.output_func = made[0] if made else None
    return result


def shape_of(x: Any) -> tuple[int, ...] | None:
    """The shape of a tensor, or of the first tensor inside a tuple/list/dict output."""
    ts = _tensors(x)
    return tuple(ts[0].shape) if ts else None
