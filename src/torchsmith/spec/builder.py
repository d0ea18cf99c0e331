"""Build an ``nn.Module`` from a spec: plan, check on the meta device, then build for real.

1. **Plan** (:mod:`torchsmith.spec.schema`): the spec is read, parameters and blocks are expanded,
   types resolved and arguments checked against their signatures; size limits hold here.
2. **Meta pass**: every module is built on ``torch.device("meta")`` and run on meta tensors of the
   sample input shape, in order; omitted ``in_features``/``in_channels``/... are read off the
   tensors (:mod:`torchsmith.spec.shapes`) and shape mismatches are reported with both shapes.
   A block use that leaves out such a parameter of its own is planned here, once its input is known;
   a ``shared`` module is built at the first use reached and run (``SharedModule``) by the others.
   The parameter count is checked against ``max_parameters`` before any memory is allocated.
3. **Real pass**: the same plan, with the inferred arguments filled in, is built on the current
   default device. The spec is recorded on the model (``torchsmith._provenance``) so that
   ``torchsmith.save`` stores it and ``torchsmith.load_model`` rebuilds the model without pickle.

>>> model = build_model('''
... input_shape: [1, 784]
... chain:
...   fc1: {type: Linear, out_features: 256}
...   relu1: ReLU
...   fc2: {type: Linear, out_features: 10}
... ''')
>>> model.fc1.in_features
784
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections import OrderedDict
from typing import Any

from torchsmith._provenance import set_provenance
from torchsmith._sandbox import kwarg_problem, sandbox
from torchsmith.errors import InputError, SpecError, close_matches
from torchsmith.spec.fastshape import module_output, op_output
from torchsmith.spec.graph import OPS, SharedModule, SpecDict, SpecGraph, SpecList
from torchsmith.spec.loader import Spec, _check_plain, envelope, format_path, load_spec
from torchsmith.spec.resolve import ResolveError, check_arguments
from torchsmith.spec.schema import (
    ChainPlan,
    DeferredPlan,
    DictPlan,
    GraphPlan,
    LeafPlan,
    ListPlan,
    ModuleArg,
    Planner,
    SharedPlan,
    Where,
    parse_input_spec,
)
from torchsmith.spec.shapes import INFER, describe, infer_value, meta_input, shape_str

__all__ = ["DEFAULT_MAX_PARAMETERS", "build_model", "build_with_report", "validate_spec"]

# ops that can fold the batch into another dim or move it: their output must keep it as dim 0
BATCH_OPS = ("reshape", "flatten", "permute", "transpose", "select", "index")
DEFAULT_MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32: beyond this a spec is more likely a typo


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:400]


class _Constructor:
    """Builds modules from a plan; in meta mode also runs them on meta tensors and infers arguments."""

    def __init__(self, planner: Planner, meta: bool) -> None:
        self.planner = planner
        self.meta = meta
        self.record: dict[str, dict] = {}
        self.inferred: dict[str, dict] = {}
        # shared key -> (module, its path, the input it was first run on, its output there)
        self.shared: dict[str, tuple] = {}
        self.sampled = False  # whether the model has a sample input (set by build_with_report)

    def fail(self, where: Where, msg: str) -> SpecError:
        return self.planner.fail(where, msg)

    def build(self, plan: Any, xs: list | None) -> tuple[Any, Any]:
        import torch.nn as nn

        if isinstance(plan, SharedPlan):
            return self._shared(plan, xs)
        if isinstance(plan, DeferredPlan):
            return self._deferred(plan, xs)
        if isinstance(plan, LeafPlan):
            module, out = self._leaf(plan, xs)
        elif isinstance(plan, GraphPlan):
            module, out = self._graph(plan, xs)
        else:
            children = plan.children
            if isinstance(plan, ListPlan):
                children = [(str(i), p) for i, p in enumerate(children)]
            built: list[tuple[str, Any]] = []
            out = None
            for i, (name, child) in enumerate(children):
                if xs is None:
                    m, _ = self.build(child, None)
                else:
                    m, out = self.build(child, xs if i == 0 else [out])
                built.append((name, m))
            if isinstance(plan, ChainPlan):
                module = nn.Sequential(OrderedDict(built))
            elif isinstance(plan, ListPlan):
                module = SpecList([m for _, m in built])
            else:
                module = SpecDict(OrderedDict(built))
        if self.meta:
            self.record[format_path(plan.where.inst) if plan.where.inst else ""] = {
                "type": self._label(plan),
                "output_shape": describe(out) if xs is not None else None,
            }
        return module, out

    def _shared(self, plan: SharedPlan, xs: list | None) -> tuple[Any, Any]:
        """The first use built builds the module and holds it; later ones run it (a SharedModule)."""
        held = self.shared.get(plan.key)
        if held is None:
            if plan.plan is None:  # a later use written, reached first (graphs run by dependencies)
                plan.plan = self.planner.plan_shared(plan)
            module, out = self.build(plan.plan, xs)
            self.shared[plan.key] = (module, format_path(plan.where.inst), xs, out)
            return module, out
        module, path, first_xs, first_out = held
        out = None
        if self.meta and xs is not None:
            if _same_shapes(xs, first_xs):  # a recurrent use (n: 4, shared: true) need not run again
                out = first_out
            else:
                try:
                    out = _run_module(module, xs)
                except Exception as e:
                    raise self.fail(
                        plan.where,
                        f"the shared module {plan.key!r} (held at {path}) cannot take an input of shape "
                        f"{shape_str(xs)} here: {_first_line(e)}; its first use took {shape_str(first_xs)}",
                    ) from None
        if self.meta:
            self.record[format_path(plan.where.inst)] = {
                "type": f"shared:{path}",
                "output_shape": describe(out) if xs is not None else None,
            }
        return SharedModule(module, path), out

    def _deferred(self, plan: DeferredPlan, xs: list | None) -> tuple[Any, Any]:
        """A block use without its in_channels/...: read them off the input, then plan and build it."""
        if plan.resolved is None:  # the meta pass; the real pass reuses what it planned
            values = {}
            for name in plan.missing:
                value = infer_value(name, xs[0]) if xs else None
                if value is None:
                    axis = "the last dim" if INFER[name] == -1 else f"dim {INFER[name]}"
                    if xs is not None:
                        why = f"it could not be read off an input of shape {shape_str(xs)} (at {axis})"
                    elif self.sampled:  # a module passed as an argument: nothing runs it here
                        why = "its input is not known here (a module passed as an argument)"
                    else:
                        why = (
                            "it can be left out only when the model has a sample input shape "
                            "('input_shape' in the spec, or build_model(..., input_shape=...))"
                        )
                    raise self.fail(
                        plan.where,
                        f"block {plan.block!r} needs the parameter {name!r}: {why}; or give {name}",
                    )
                values[name] = value
            plan.resolved = self.planner.resolve(plan, values)
            path = format_path(plan.where.inst)
            self.inferred[path] = values
            module, out = self.build(plan.resolved, xs)
            self.inferred[path] = {**values, **self.inferred[path]}  # a layer at this path adds its own
            return module, out
        return self.build(plan.resolved, xs)

    @staticmethod
    def _label(plan: Any) -> str:
        if getattr(plan, "block", ""):
            return plan.block
        if isinstance(plan, LeafPlan):
            return plan.target.name
        return {ChainPlan: "chain", ListPlan: "list", DictPlan: "dict", GraphPlan: "graph"}[type(plan)]

    def _leaf(self, plan: LeafPlan, xs: list | None) -> tuple[Any, Any]:
        import torch
        import torch.nn as nn

        t = plan.target
        kwargs = {**plan.kwargs, **plan.inferred}
        if self.meta and t.signature is not None:
            try:
                bound = set(t.signature.bind_partial(*plan.args, **kwargs).arguments)
            except TypeError:
                bound = set()
            for name in INFER:
                if name in t.signature.parameters and name not in bound and xs:
                    value = infer_value(name, xs[0])
                    if value is not None:
                        plan.inferred[name] = kwargs[name] = value
            if plan.inferred:
                self.inferred[format_path(plan.where.inst)] = dict(plan.inferred)
            try:
                check_arguments(t, plan.args, kwargs, complete=True)
            except ResolveError as e:
                missing = [n for n in INFER if n in t.signature.parameters and n not in kwargs]
                hint = ""
                if missing:
                    hint = (
                        f"; {missing[0]!r} can be left out only when the model has a sample input shape "
                        "('input_shape' in the spec, or build_model(..., input_shape=...))"
                        if xs is None
                        else f"; {missing[0]!r} could not be read off an input of shape {shape_str(xs)}"
                    )
                raise self.fail(plan.where, f"{e}{hint}") from None
        for key, value in kwargs.items():  # data may not ask the constructor to read files or download
            why = None if isinstance(value, ModuleArg) else kwarg_problem(key, value)
            if why is not None:
                raise self.fail(plan.where.at(key), why)
        call_args = [self.build(a.plan, None)[0] if isinstance(a, ModuleArg) else a for a in plan.args]
        call_kwargs = {
            k: self.build(v.plan, None)[0] if isinstance(v, ModuleArg) else v for k, v in kwargs.items()
        }
        device = torch.device("meta") if self.meta else contextlib.nullcontext()
        try:
            with device, sandbox(t.name):
                module = t.factory(*call_args, **call_kwargs)
        except InputError as e:
            raise self.fail(plan.where.at("type"), str(e)) from None
        except Exception as e:
            raise self.fail(
                plan.where, f"{t.name} cannot be built with {_call_str(plan.args, kwargs)}: {_first_line(e)}"
            ) from None
        if not isinstance(module, nn.Module):
            raise self.fail(
                plan.where.at("type"), f"{t.name} returned a {type(module).__name__}; expected an nn.Module"
            )
        if self.meta:
            for pname, p in module.named_parameters():
                if p.numel() == 0:  # meta kernels accept some of these where CPU/GPU kernels fail
                    raise self.fail(
                        plan.where,
                        f"{t.name} built with {_call_str(plan.args, kwargs)} has an empty {pname!r} of shape "
                        f"{tuple(p.shape)}; expected every size to be at least 1",
                    )
        out = None
        if self.meta and xs is not None:
            module.eval()  # batch-1 samples must not trip BatchNorm's training-mode check
            try:
                out = _run_module(module, xs)
            except Exception as e:
                where, why = _input_mismatch(plan, kwargs, xs)
                detail = f"{why} ({_first_line(e)})" if why else _first_line(e)
                raise self.fail(
                    where, f"{t.name} cannot take an input of shape {shape_str(xs)}: {detail}"
                ) from None
            if isinstance(module, (nn.Flatten, nn.Unflatten)):  # layers that reshape: as the reshape op
                self._check_module_batch(plan, module, kwargs, xs, out)
        elif self.meta and isinstance(module, (nn.Flatten, nn.Unflatten)):
            self._check_module_batch(plan, module, kwargs, None, None)
        return module, out

    def _check_module_batch(self, plan: LeafPlan, module: Any, kwargs: dict, xs: Any, out: Any) -> None:
        """A Flatten/Unflatten layer must keep the batch as dim 0 (like the reshape op, see _check_batch).

        Without a sample shape only what is wrong at every shape is refused: flattening from dim 0
        (to any end dim but 0) and unflattening dim 0.
        """
        import torch
        import torch.nn as nn

        if xs is None:
            if isinstance(module, nn.Flatten):
                ok = not (module.start_dim == 0 and module.end_dim != 0)
            else:
                ok = module.dim != 0
            detail = "at every input shape"
        else:
            x = xs[0]
            if not isinstance(x, torch.Tensor) or x.dim() == 0 or not isinstance(out, torch.Tensor):
                return
            ok = _keeps_batch(module, x, out)
            detail = f"turning the input {shape_str(x)} into {shape_str(out)}"
        if ok:
            return
        key = next((k for k in ("start_dim", "dim") if k in plan.kwargs), None)
        where = plan.where.at(key) if key else plan.where
        raise self.fail(
            where,
            f"{plan.target.name}({module.extra_repr()}) does not keep the batch dimension (dim 0) as it is, "
            f"{detail}: the model would work only at this batch size or mix samples; keep dim 0 as the "
            "batch (Flatten with start_dim 1 or more, Unflatten of a dim after the batch)",
        )

    def _select(self, env: dict, ref: tuple, where: Where) -> Any:
        src, sel = ref
        value = env[src]
        if sel is None:
            return value
        if isinstance(sel, int) and isinstance(value, (tuple, list)):
            if -len(value) <= sel < len(value):
                return value[sel]
            raise self.fail(where, f"{src!r} gives {len(value)} outputs; index {sel} is out of range")
        if isinstance(value, dict):
            keys = [str(k) for k in value]
            if sel in value:
                return value[sel]
            if str(sel) in keys:
                return value[str(sel)]
            raise self.fail(
                where,
                f"{src!r} gives outputs {', '.join(keys)}; found {sel!r}{close_matches(str(sel), keys)}",
            )
        if isinstance(value, (tuple, list)):
            raise self.fail(
                where,
                f"{src!r} gives {len(value)} outputs, selected by index ({src}.0 to {src}.{len(value) - 1}); "
                f"found {sel!r}",
            )
        raise self.fail(
            where, f"{src!r} gives a {type(value).__name__}; '{src}.{sel}' needs a tuple or dict output"
        )

    def _param(self, st: Any) -> Any:
        """The tensor of a ``param`` node: meta in the meta pass, initialised in the real one."""
        import torch
        import torch.nn as nn

        kw = st.op_kwargs
        if self.meta:
            t = torch.empty(kw["shape"], device="meta")
        else:
            t = torch.empty(kw["shape"])
            with torch.no_grad():
                if kw["init"] == "zeros":
                    t.zero_()
                elif kw["init"] == "ones":
                    t.fill_(1.0)
                elif kw["init"] == "normal":
                    nn.init.normal_(t, std=kw["std"])
                else:
                    nn.init.trunc_normal_(t, std=kw["std"], a=-2 * kw["std"], b=2 * kw["std"])
        if kw["buffer"]:
            return t
        return nn.Parameter(t, requires_grad=kw["trainable"])

    def _keyword_node(self, st: Any, vals: list | None, env: dict | None) -> tuple[Any, Any]:
        """A module node whose forward also gets keywords (``attn_mask``, ``is_causal``): built first,
        then run on its inputs and keywords (meta pass), so its output shape is known to the next node."""
        if isinstance(st.plan, DeferredPlan):
            raise self.fail(
                st.where.at("keywords"),
                f"a node with keywords is built before it runs, so {', '.join(st.plan.missing)} cannot be "
                "read off its input; give it in the node",
            )
        if isinstance(st.plan, LeafPlan) and vals is not None and self.meta:
            # a layer's sizes may be read off its inputs (embed_dim): a first run without the keywords
            # (which change no shapes) infers them; a layer that cannot run without them is built as written
            try:
                module, _ = self.build(st.plan, vals)
            except SpecError:
                module, _ = self.build(st.plan, None)
        else:
            module, _ = self.build(st.plan, None)
        if vals is None or env is None or not self.meta:
            return module, None
        kwargs = {k: self._select(env, r, w) for (k, r), w in zip(st.kw_refs, st.kw_wheres)}
        kwargs.update(st.kw_values)
        try:
            out = module(*vals, **kwargs)
        except Exception as e:
            raise self.fail(
                st.where,
                f"node {st.name!r} cannot take inputs of shape {shape_str(vals)} with keywords "
                f"{', '.join(kwargs)}: {_first_line(e)}",
            ) from None
        self.record[format_path(st.plan.where.inst)] = {
            "type": self._label(st.plan),
            "output_shape": describe(out),
        }
        return module, out

    def _call(self, st: Any, module: Any, vals: list | None) -> Any:
        """Run a shared module again (meta pass only: the real pass computes nothing)."""
        if vals is None or not self.meta:
            return None
        try:
            return _run_module(module, vals)
        except Exception as e:
            raise self.fail(
                st.where,
                f"the module of node {st.call!r} cannot take an input of shape {shape_str(vals)} here: "
                f"{_first_line(e)}",
            ) from None

    def _check_batch(self, st: Any, vals: list, out: Any) -> None:
        """Refuse an op whose output batch does not follow its input's (a folded or baked-in batch).

        ``reshape: [-1, 4]`` on ``(2, 3, 4)`` folds the batch into dim 0 and ``reshape: [6, 4]``
        bakes the sample's batch of 2 into the model: both pass on the sample and are wrong (or fail)
        at any other batch size. The op is run again on the meta device with a batch one larger;
        its output must keep the batch first and the other dims unchanged.
        """
        import torch

        x = vals[0]
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or not isinstance(out, torch.Tensor):
            return
        ok = _keeps_batch(lambda b: _run_op(st.op, [b, *vals[1:]], st.op_kwargs), x, out)
        if not ok:
            raise self.fail(
                st.where,
                f"op {st.op!r} turns the input {shape_str(x)} into {shape_str(out)}, which does not keep "
                "the batch dimension (dim 0) as it is: the model would work only at this batch size or mix "
                "samples; keep dim 0 as the batch, e.g. reshape with shape [-1, ...] over the other dims "
                "only, or flatten from start_dim 1",
            )

    def _graph(self, plan: GraphPlan, xs: list | None) -> tuple[Any, Any]:
        env: dict[str, Any] | None = None
        if xs is not None:
            if len(xs) != len(plan.inputs):
                raise self.fail(
                    plan.where,
                    f"this graph takes {len(plan.inputs)} input(s) ({', '.join(plan.inputs)}) "
                    f"but receives {len(xs)}",
                )
            env = dict(zip(plan.inputs, xs))
        modules: dict[str, Any] = {}
        steps = []
        for st in plan.steps:
            vals = None if env is None else [self._select(env, r, w) for r, w in zip(st.refs, st.ref_wheres)]
            out = None
            if st.op == "param":
                modules[st.name] = out = self._param(st)
            elif st.plan is not None and (st.kw_refs or st.kw_values):
                modules[st.name], out = self._keyword_node(st, vals, env)
            elif st.plan is not None:
                modules[st.name], out = self.build(st.plan, vals)
            elif st.call is not None:
                out = self._call(st, modules[st.call], vals)
            elif vals is not None:
                try:
                    out = (
                        _run_op(st.op, vals, st.op_kwargs)
                        if self.meta
                        else OPS[st.op].fn(vals, **st.op_kwargs)
                    )
                except Exception as e:
                    raise self.fail(
                        st.where,
                        f"op {st.op!r} cannot take inputs of shape {shape_str(vals)}: {_first_line(e)}",
                    ) from None
                if self.meta and st.op in BATCH_OPS:
                    self._check_batch(st, vals, out)
            if st.plan is None and self.meta:
                self.record[format_path((*plan.where.inst, st.name))] = {
                    "type": f"call:{st.call}" if st.call else "param" if st.op == "param" else f"op:{st.op}",
                    "output_shape": describe(out) if vals is not None or st.op == "param" else None,
                }
            if env is not None:
                env[st.name] = out
            kw = {"call": st.call} if st.call else st.op_kwargs
            if st.kw_refs or st.kw_values:
                kw = {"kw_refs": st.kw_refs, "kw_values": dict(st.kw_values)}
            steps.append((st.name, st.op, kw, st.refs))
        module = SpecGraph(plan.inputs, steps, plan.outputs, modules)
        out = None
        if env is not None:
            kind, outs = plan.outputs
            if kind == "single":
                out = self._select(env, outs, plan.where.at("outputs"))
            elif kind == "tuple":
                out = tuple(self._select(env, r, plan.where.at("outputs")) for r in outs)
            else:
                out = {k: self._select(env, r, plan.where.at("outputs")) for k, r in outs}
        return module, out


def _same_shapes(xs: list, ys: list | None) -> bool:
    """Whether two inputs are meta tensors of the same shapes and dtypes (the same output follows)."""
    import torch

    if ys is None or len(xs) != len(ys):
        return False
    tensors = all(isinstance(v, torch.Tensor) for v in (*xs, *ys))
    return tensors and all(x.shape == y.shape and x.dtype == y.dtype for x, y in zip(xs, ys))


def _run_module(module: Any, xs: list) -> Any:
    """``module(*xs)`` on meta tensors: by formula for common layers (no dynamo/sympy import), else run."""
    out = module_output(module, xs)
    return module(*xs) if out is None else out


def _run_op(op: str, xs: list, kwargs: dict) -> Any:
    """A graph op on meta tensors: by formula where one is known (see spec/fastshape.py), else run."""
    out = op_output(op, xs, kwargs)
    return OPS[op].fn(xs, **kwargs) if out is None else out


def _input_mismatch(plan: LeafPlan, kwargs: dict, xs: list) -> tuple[Where, str]:
    """When a layer fails on its input, name the argument that disagrees with the input's shape.

    The kernels' own messages ("Invalid channel dimensions", "mat1 and mat2 shapes cannot be
    multiplied") say neither which argument nor what the input holds; every argument shape
    inference knows (in_channels, in_features, num_features, ...) is compared with the value read
    off the input, and the first that differs is reported at its own spec line.
    """
    sig = plan.target.signature
    try:
        bound = sig.bind_partial(*plan.args, **kwargs).arguments if sig is not None else dict(kwargs)
    except TypeError:
        bound = dict(kwargs)
    for name in INFER:
        if name not in bound or not xs:
            continue
        actual = infer_value(name, xs[0])
        given = bound[name]
        if isinstance(given, (list, tuple)) and len(given) == 1:
            given = given[0]
        if actual is None or isinstance(given, bool) or not isinstance(given, int) or given == actual:
            continue
        dim = INFER[name]
        axis = "the last dim" if dim == -1 else f"dim {dim}"
        inferred = name in plan.inferred
        where = plan.where if inferred or name not in plan.kwargs else plan.where.at(name)
        return where, (
            f"expected {name}={given} (as {'inferred' if inferred else 'given'}), but the input has "
            f"{actual} at {axis}; fix {name} (or leave it out to infer it) or the layer before"
        )
    return plan.where, ""


def _call_str(args: list, kwargs: dict) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    text = "(" + ", ".join(parts) + ")"
    return text if len(text) < 200 else text[:197] + "...)"


def _input_specs(plan: Any, spec: Spec, input_shape: Any, planner: Planner) -> tuple[list[str], dict | None]:
    """The top-level inputs' names and sample (shape, dtype), from the call, the spec or the graph."""
    names = plan.inputs if isinstance(plan, GraphPlan) else ["x"]
    root = Where((), ())

    def from_value(value: Any, where: Where | None) -> dict:
        if isinstance(value, dict) and not set(value) <= {"shape", "dtype"}:
            unknown = [k for k in value if k not in names]
            if unknown:
                msg = (
                    f"input {unknown[0]!r} is not an input of this model{close_matches(unknown[0], names)}; "
                    f"inputs: {', '.join(names)}"
                )
                raise planner.fail(where, msg) if where else SpecError(f"input_shape: {msg}")
            return {
                k: parse_input_spec(v, planner if where else None, where.at(k) if where else None)
                for k, v in value.items()
            }
        if len(names) > 1:
            msg = f"this model has {len(names)} inputs ({', '.join(names)}); give one shape per input name"
            raise planner.fail(where, msg) if where else SpecError(f"input_shape: {msg}")
        return {names[0]: parse_input_spec(value, planner if where else None, where)}

    if input_shape is not None:
        if isinstance(input_shape, tuple):
            input_shape = list(input_shape)
        given = from_value(input_shape, None)
    elif "input_shape" in spec:
        given = from_value(
            planner.sub(spec["input_shape"], root.at("input_shape"), planner.globals), root.at("input_shape")
        )
    elif isinstance(plan, GraphPlan):
        given = {k: v for k, v in plan.input_specs.items() if v is not None}
    else:
        given = {}
    if not given:
        return names, None
    missing = [n for n in names if given.get(n) is None]
    if missing:
        raise planner.fail(
            root,
            f"no sample shape for input {missing[0]!r}; give a shape for every input ({', '.join(names)})",
        )
    return names, given


def _plain_shape(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {k: _plain_shape(v) for k, v in value.items()}
    return value


def _prepare(spec: Any, input_shape: Any, params: dict | None, allow_imports: bool) -> tuple:
    loaded = load_spec(spec)
    planner = Planner(loaded.source, allow_imports=allow_imports)
    try:
        plan = planner.plan_spec(loaded, params)
    except RecursionError:
        raise SpecError(f"{loaded.source.name or 'spec'}: blocks and nodes nest too deeply") from None
    names, inputs = _input_specs(plan, loaded, input_shape, planner)
    normalised = copy.deepcopy(dict(loaded))
    if input_shape is not None:
        normalised["input_shape"] = _check_plain(_plain_shape(input_shape), loaded.source)
    if params:
        normalised["params"] = {**normalised.get("params", {}), **_check_plain(dict(params), loaded.source)}
    return loaded, planner, plan, names, inputs, normalised


def _count(model: Any) -> tuple[int, int]:
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def build_with_report(
    spec: Any,
    *,
    input_shape: Any = None,
    params: dict | None = None,
    allow_imports: bool = False,
    max_parameters: int | None = DEFAULT_MAX_PARAMETERS,
    build: bool = True,
) -> tuple[Any, dict]:
    """Like :func:`build_model`, also returning the report of :func:`validate_spec` (one meta pass)."""
    loaded, planner, plan, names, inputs, normalised = _prepare(spec, input_shape, params, allow_imports)
    meta = _Constructor(planner, meta=True)
    xs = None if inputs is None else [meta_input(*inputs[n]) for n in names]
    meta.sampled = xs is not None
    try:
        meta_model, out = meta.build(plan, xs)
    except RecursionError:
        raise SpecError(f"{loaded.source.name or 'spec'}: blocks and nodes nest too deeply") from None
    _init(meta_model, loaded, planner)  # checks the rules (on meta: nothing is computed)
    total, trainable = _count(meta_model)
    if max_parameters is not None and total > max_parameters:
        raise SpecError(
            f"{loaded.source.name or 'spec'}: the model would have {total:,} parameters "
            f"({total * 4 / 2**30:.1f} GiB in float32); the limit is {max_parameters:,} "
            "(raise or lift it: --max-parameters N, or 0 for no limit, on the command line; "
            "max_parameters=N or None in Python)"
        )
    layers = []
    children = dict(meta_model.named_children())
    for path, info in meta.record.items():
        if path and "." not in path and "<" not in path:
            sub = children.get(path)
            tensor = dict(meta_model.named_parameters(recurse=False)).get(path)
            count = _count(sub)[0] if sub is not None else tensor.numel() if tensor is not None else 0
            layers.append({"name": path, **info, "parameters": count})
    report = {
        "name": loaded.get("name", ""),
        "inputs": {n: list(inputs[n][0]) for n in names} if inputs else {n: None for n in names},
        "outputs": describe(out) if inputs else None,
        "parameters": total,
        "trainable_parameters": trainable,
        "layers": layers,
        "inferred": meta.inferred,
        "spec": normalised,
    }
    if not build:
        return None, report
    model, _ = _Constructor(planner, meta=False).build(plan, None)
    _init(model, loaded, planner)
    set_provenance(model, spec=envelope(normalised))
    return model, report


def _init(model: Any, spec: Spec, planner: Planner) -> None:
    """Apply the spec's ``init:`` section (the rules of :func:`torchsmith.init_weights`), if any."""
    if "init" not in spec:
        return
    from torchsmith.transfer.init_rules import init_weights

    try:
        init_weights(model, spec["init"], where="init")
    except InputError as e:
        msg = str(e)
        raise planner.fail(
            Where((), ()).at("init"), msg.removeprefix("init.").removeprefix("init: ")
        ) from None


def build_model(
    spec: dict | str | os.PathLike,
    *,
    input_shape: Any = None,
    params: dict | None = None,
    allow_imports: bool = False,
    max_parameters: int | None = DEFAULT_MAX_PARAMETERS,
) -> Any:
    """Build the ``nn.Module`` a spec describes (a dict, YAML/JSON text, or a file path).

    ``input_shape`` is a sample input shape (batch first), or a dict ``{input_name: shape}`` for
    several inputs; it overrides the spec's own. ``params`` overrides the spec's ``params``.
    ``allow_imports`` lets ``type`` name a dotted import path (this runs that module's code).
    Every problem is a :class:`~torchsmith.errors.SpecError` naming the spec path and line, found
    before anything is allocated. The spec is recorded for ``torchsmith.save``/``load_model``.

    >>> m = build_model({"input_shape": [2, 8], "chain": [{"type": "Linear", "out_features": 4}]})
    >>> m[0].weight.shape
    torch.Size([4, 8])
    """
    model, _ = build_with_report(
        spec,
        input_shape=input_shape,
        params=params,
        allow_imports=allow_imports,
        max_parameters=max_parameters,
    )
    return model


def validate_spec(
    spec: dict | str | os.PathLike,
    *,
    input_shape: Any = None,
    params: dict | None = None,
    allow_imports: bool = False,
    max_parameters: int | None = DEFAULT_MAX_PARAMETERS,
) -> dict:
    """Check a spec completely without allocating weights; raise :class:`SpecError` at the first problem.

    Returns a report: ``inputs`` and ``outputs`` shapes (when a sample shape is known),
    ``parameters``, ``trainable_parameters``, ``layers`` (top-level name, type, output shape,
    parameters), ``inferred`` (arguments read off shapes, by module path) and the normalised ``spec``.

    >>> validate_spec({"input_shape": [1, 3, 224, 224], "chain": [
    ...     {"type": "Conv2d", "out_channels": 8, "kernel_size": 3}, {"type": "Flatten"},
    ...     {"type": "Linear", "out_features": 10}]})["inferred"]
    {'0': {'in_channels': 3}, '2': {'in_features': 394272}}
    """
    _, report = build_with_report(
        spec,
        input_shape=input_shape,
        params=params,
        allow_imports=allow_imports,
        max_parameters=max_parameters,
        build=False,
    )
    return report


def _keeps_batch(run: Any, x: Any, out: Any) -> bool:
    """Whether ``run`` (a layer or op on ``x``, which gave ``out``) keeps dim 0 as the batch: run
    again on the meta device with a batch one larger, only dim 0 of the output may change."""
    import torch

    if out.dim() == 0 or out.shape[0] != x.shape[0]:
        return False
    bigger = torch.empty((x.shape[0] + 1, *x.shape[1:]), dtype=x.dtype, device="meta")
    try:
        out2 = run(bigger)
    except Exception:
        return False
    return out2.dim() == out.dim() and out2.shape[0] == x.shape[0] + 1 and out2.shape[1:] == out.shape[1:]
