"""Planning the ``graph:`` body of a spec: named nodes wired by name (see ``docs/spec.md``).

A graph is checked whole before anything is built: every input a node names exists and is not
switched off, ``call`` names a node that builds a module, every node computed is used (a dangling node
is almost always a wiring mistake, trap 7) and the run order has no cycle. Nodes that hold a module
are planned by the :class:`~torchsmith.spec.schema.Planner` this graph planner serves.
"""

from __future__ import annotations

import re
from typing import Any

from torchsmith.errors import SpecError, close_matches
from torchsmith.spec.graph import OPS
from torchsmith.spec.plans import USE_KEYS, GraphPlan, StepPlan, Where

__all__ = ["GraphPlanner", "parse_input_spec"]

DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "bool")
PARAM_KEYS = {"shape": None, "init": "zeros", "std": 0.02, "trainable": True, "buffer": False}
PARAM_INITS = ("zeros", "ones", "normal", "trunc_normal")
_KEYWORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class GraphPlanner:
    """Plans graphs for one :class:`~torchsmith.spec.schema.Planner` (``p``): its errors, its
    substitution and its module count are the planner's, so a graph inside a block fails with the
    block's place and counts towards the same limits."""

    def __init__(self, planner: Any) -> None:
        self.p = planner

    def _parse_ref(self, raw: Any, where: Where, scope: dict) -> tuple:
        ref = self.p.sub(raw, where, scope)
        if not isinstance(ref, str) or not ref:
            raise self.p.fail(
                where,
                f"found {ref!r}; expected the name of an input or a node (optionally name.0 or name.key)",
            )
        src, _, sel = ref.partition(".")
        selector: Any = None
        if sel:
            selector = int(sel) if re.fullmatch(r"-?\d+", sel) else sel
        return src, selector

    def _input_specs(self, raw: Any, where: Where) -> tuple[list, dict]:
        if isinstance(raw, str):
            raw = [raw]
        if isinstance(raw, list):
            specs = {}
            for i, name in enumerate(raw):
                if not isinstance(name, str):
                    raise self.p.fail(where.at(i), f"found {name!r}; expected an input name")
                specs[name] = None
            names = list(raw)
        elif isinstance(raw, dict):
            names = list(raw)
            specs = {name: parse_input_spec(value, self.p, where.at(name)) for name, value in raw.items()}
        else:
            raise self.p.fail(
                where, f"found {type(raw).__name__}; expected input names (a list) or name: shape"
            )
        if not names:
            raise self.p.fail(where, "a graph needs at least one input")
        for i, name in enumerate(names):
            self.p.child_name(name, where.at(name if isinstance(raw, dict) else i))
            if names.count(name) > 1:
                raise self.p.fail(where, f"input {name!r} is listed twice")
        return names, specs

    def plan(self, g: Any, where: Where, scope: dict, node_where: Where) -> GraphPlan:
        if not isinstance(g, dict):
            raise self.p.fail(
                where, f"found {type(g).__name__}; expected a mapping with inputs, nodes, outputs"
            )
        self.p.unknown_keys(g, ("inputs", "nodes", "outputs"), where, "a graph")
        raw_inputs = self.p.sub(g.get("inputs", ["x"]), where.at("inputs"), scope)
        inputs, input_specs = self._input_specs(raw_inputs, where.at("inputs"))
        nodes = g.get("nodes")
        if not isinstance(nodes, dict) or not nodes:
            raise self.p.fail(
                where.at("nodes"), f"found {nodes!r:.60}; expected a mapping of node name: node"
            )
        steps: dict[str, StepPlan] = {}
        disabled: set[str] = set()
        previous: str | None = inputs[0] if len(inputs) == 1 else None
        for name, value in nodes.items():
            w = Where((*where.src, "nodes", name), (*node_where.inst, name), where.in_block)
            self.p.child_name(name, w)
            if name in inputs:
                raise self.p.fail(w, f"node {name!r} has the name of a graph input")
            step = self._plan_step(name, value, w, scope, previous)
            if step is None:
                disabled.add(name)
                continue
            steps[name] = step
            if step.op != "param":  # a parameter is not the running value a next node takes
                previous = name
        self._check_calls(steps, inputs, disabled)
        known = set(inputs) | set(steps)
        for step in steps.values():
            for (src, _), rw in step.uses():
                if src in disabled:
                    raise self.p.fail(
                        rw, f"node {src!r} is switched off by its 'when', so it cannot be an input here"
                    )
                if src not in known:
                    raise self.p.fail(
                        rw,
                        f"unknown input {src!r}{close_matches(src, known)}; "
                        f"known inputs and nodes: {', '.join(sorted(known))}",
                    )
        outputs, out_refs = self._plan_outputs(
            g.get("outputs"), where.at("outputs"), scope, previous, known, disabled
        )
        order = self._toposort(steps, inputs)
        # everything computed must be used: a dangling node is almost always a wiring mistake (trap 7)
        needed: set[str] = set()
        todo = [src for src, _ in out_refs]
        while todo:
            src = todo.pop()
            if src in needed:
                continue
            needed.add(src)
            if src in steps:
                todo.extend(s for (s, _), _ in steps[src].uses())
        for name, step in steps.items():
            if name not in needed:
                raise self.p.fail(
                    step.where,
                    f"node {name!r} is computed but never used: "
                    "no output and no other node takes it as input",
                )
        for name in inputs:
            if name not in needed:
                raise self.p.fail(
                    where.at("inputs"), f"graph input {name!r} is never used by any node or output"
                )
        return GraphPlan(node_where, inputs, input_specs, [steps[n] for n in order], outputs)

    def _plan_call(
        self, name: str, value: dict, w: Where, scope: dict, previous: str | None
    ) -> StepPlan | None:
        """``{call: enc, inputs: b}``: run node ``enc``'s module again on other inputs (one weight set)."""
        self.p.unknown_keys(value, ("call", "inputs", "when"), w, "a call node")
        if not self.p.when(value, w, scope):
            return None
        target = self.p.sub(value["call"], w.at("call"), scope)
        if not isinstance(target, str) or not target:
            raise self.p.fail(w.at("call"), f"found {target!r:.60}; expected the name of a module node")
        refs, ref_wheres = self._refs(value, w, scope, previous)
        return StepPlan(name, w, None, None, {}, refs, ref_wheres, call=target)

    def _plan_param(self, name: str, value: dict, w: Where, scope: dict) -> StepPlan | None:
        """``{param: {shape: [1, 1, $dim], init: zeros}}``: an ``nn.Parameter`` (or buffer) as a node."""
        self.p.unknown_keys(value, ("param", "when"), w, "a param node")
        if not self.p.when(value, w, scope):
            return None
        wp = w.at("param")
        raw = self.p.sub(value["param"], wp, scope)
        if not isinstance(raw, dict):
            raise self.p.fail(
                wp, f"found {raw!r:.60}; expected a mapping like {{shape: [1, 1, 64], init: zeros}}"
            )
        self.p.unknown_keys(raw, tuple(PARAM_KEYS), wp, "a param")
        spec = {**PARAM_KEYS, **raw}
        shape = spec["shape"]
        if (
            not isinstance(shape, list)
            or not 1 <= len(shape) <= 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 2**31 for d in shape)
        ):
            raise self.p.fail(
                wp.at("shape"), f"found {shape!r:.60}; expected a list of 1 to 8 positive integers"
            )
        if spec["init"] not in PARAM_INITS:
            raise self.p.fail(
                wp.at("init"),
                f"found init {spec['init']!r}{close_matches(str(spec['init']), PARAM_INITS)}; "
                f"expected one of {', '.join(PARAM_INITS)}",
            )
        std = spec["std"]
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 <= std <= 1e6:
            raise self.p.fail(wp.at("std"), f"found {std!r:.60}; expected a number from 0 up")
        for key in ("trainable", "buffer"):
            if not isinstance(spec[key], bool):
                raise self.p.fail(wp.at(key), f"found {spec[key]!r:.60}; expected true or false")
        count = 1
        for d in shape:
            count *= d
        if count > 2**31:
            raise self.p.fail(
                wp.at("shape"), f"the shape {shape} has {count:,} elements; expected at most 2**31"
            )
        self.p.tick(w)
        return StepPlan(name, w, None, "param", spec, (), ())

    def _check_calls(self, steps: dict, inputs: list, disabled: set) -> None:
        for step in steps.values():
            if step.call is None:
                continue
            w, target = step.where.at("call"), step.call
            modules = [n for n, s in steps.items() if s.plan is not None]
            if target in disabled:
                raise self.p.fail(w, f"node {target!r} is switched off by its 'when', so it cannot be called")
            if target not in steps or steps[target].plan is None:
                kind = (
                    "a graph input"
                    if target in inputs
                    else "an op node"
                    if target in steps and steps[target].op
                    else "a call node"
                    if target in steps
                    else "not a node"
                )
                raise self.p.fail(
                    w,
                    f"{target!r} is {kind}{close_matches(target, modules)}; 'call' names a node that "
                    f"builds a module: {', '.join(modules) or '(none)'}",
                )

    def _plan_step(
        self, name: str, value: Any, w: Where, scope: dict, previous: str | None
    ) -> StepPlan | None:
        if isinstance(value, dict) and "call" in value:
            return self._plan_call(name, value, w, scope, previous)
        if isinstance(value, dict) and "param" in value:
            return self._plan_param(name, value, w, scope)
        if isinstance(value, dict) and "op" in value:
            if not self.p.when(value, w, scope):
                return None
            op = self.p.sub(value["op"], w.at("op"), scope)
            if not isinstance(op, str) or op not in OPS:
                raise self.p.fail(
                    w.at("op"), f"unknown op {op!r}{close_matches(str(op), OPS)}; ops: {', '.join(OPS)}"
                )
            self.p.unknown_keys(
                {k: v for k, v in value.items() if k not in ("op", "inputs", "when")},
                tuple(OPS[op].kwargs),
                w,
                f"op {op!r}",
            )
            spec = OPS[op]
            kwargs = dict(spec.kwargs)
            for k in value:
                if k not in ("op", "inputs", "when"):
                    kwargs[k] = self.p.sub(value[k], w.at(k), scope)
            for k in spec.required:
                if kwargs.get(k) is None:
                    raise self.p.fail(w, f"op {op!r} needs the argument {k!r}")
            refs, ref_wheres = self._refs(value, w, scope, previous)
            n = len(refs)
            if n < spec.min_inputs or (spec.max_inputs is not None and n > spec.max_inputs):
                want = (
                    f"{spec.min_inputs}"
                    if spec.max_inputs == spec.min_inputs
                    else f"at least {spec.min_inputs}"
                    if spec.max_inputs is None
                    else f"{spec.min_inputs} to {spec.max_inputs}"
                )
                raise self.p.fail(w.at("inputs"), f"op {op!r} takes {want} input(s); found {n}")
            return StepPlan(name, w, None, op, kwargs, refs, ref_wheres)
        body, use = self.p.split(value, w, scope, USE_KEYS)
        if not self.p.when(use, w, scope):
            return None
        refs, ref_wheres = self._refs(use, w, scope, previous)
        step = StepPlan(name, w, self.p.plan_use(body, use, w, scope), None, {}, refs, ref_wheres)
        if "keywords" in use:
            if "n" in use:
                raise self.p.fail(
                    w.at("keywords"), "'keywords' cannot go with 'n' (a chain of copies takes one input)"
                )
            self._keywords(step, use["keywords"], w.at("keywords"), scope)
        return step

    def _keywords(self, step: StepPlan, raw: Any, w: Where, scope: dict) -> None:
        """``keywords: {attn_mask: mask, is_causal: true}``: what the module's forward gets by keyword.

        A string names an input or a node (its tensor is passed); true/false, numbers and null are
        passed as written.
        """
        if not isinstance(raw, dict) or not raw:
            raise self.p.fail(
                w, f"found {raw!r:.60}; expected a mapping of forward keyword: node name or constant"
            )
        refs, wheres, values = [], [], {}
        for key, value in raw.items():
            if not isinstance(key, str) or not _KEYWORD.match(key):
                raise self.p.fail(w.at(key), f"found {key!r}; expected a Python keyword argument name")
            if isinstance(value, str):
                refs.append((key, self._parse_ref(value, w.at(key), scope)))
                wheres.append(w.at(key))
            elif value is None or isinstance(value, (bool, int, float)):
                values[key] = self.p.sub(value, w.at(key), scope)
            else:
                raise self.p.fail(
                    w.at(key), f"found {value!r:.60}; expected the name of an input or node, or a constant"
                )
        step.kw_refs, step.kw_wheres, step.kw_values = tuple(refs), tuple(wheres), values

    def _refs(self, d: dict, w: Where, scope: dict, previous: str | None) -> tuple[tuple, tuple]:
        if "inputs" not in d:
            if previous is None:
                raise self.p.fail(
                    w, "this node must name its inputs (the graph has several inputs and no node before it)"
                )
            return ((previous, None),), (w,)
        raw = self.p.sub(d["inputs"], w.at("inputs"), scope)
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not items:
            raise self.p.fail(w.at("inputs"), f"found {raw!r:.60}; expected a name or a list of names")
        wheres = tuple(
            w.at("inputs") if isinstance(raw, str) else w.at("inputs", i) for i in range(len(items))
        )
        refs = tuple(self._parse_ref(item, wh, scope) for item, wh in zip(items, wheres))
        return refs, wheres

    def _plan_outputs(
        self, raw: Any, where: Where, scope: dict, previous: str | None, known: set, disabled: set
    ) -> tuple[tuple, list]:
        if raw is None:
            if previous is None:
                raise self.p.fail(where, "the graph needs 'outputs'")
            return ("single", (previous, None)), [(previous, None)]

        def check(item: Any, w: Where) -> tuple:
            ref = self._parse_ref(item, w, scope)
            if ref[0] in disabled:
                raise self.p.fail(w, f"node {ref[0]!r} is switched off by its 'when'")
            if ref[0] not in known:
                raise self.p.fail(
                    w,
                    f"unknown output {ref[0]!r}{close_matches(ref[0], known)}; "
                    f"known: {', '.join(sorted(known))}",
                )
            return ref

        raw = self.p.sub(raw, where, scope)
        if isinstance(raw, str):
            ref = check(raw, where)
            return ("single", ref), [ref]
        if isinstance(raw, list) and raw:
            refs = tuple(check(item, where.at(i)) for i, item in enumerate(raw))
            return ("tuple", refs), list(refs)
        if isinstance(raw, dict) and raw:
            pairs = tuple((str(k), check(v, where.at(k))) for k, v in raw.items())
            return ("dict", pairs), [r for _, r in pairs]
        raise self.p.fail(where, f"found {raw!r:.60}; expected a node name, a list of names, or key: name")

    def _toposort(self, steps: dict[str, StepPlan], inputs: list) -> list[str]:
        """Run order (written order where possible); a cycle is an error naming it. No recursion."""
        order: list[str] = []
        state: dict[str, int] = {}  # 1 on the current path, 2 done
        for root in steps:
            if state.get(root) == 2:
                continue
            path: list[str] = [root]
            iters = [iter(_deps(steps[root]))]
            state[root] = 1
            while path:
                nxt = next(iters[-1], None)
                if nxt is None:
                    done = path.pop()
                    iters.pop()
                    state[done] = 2
                    order.append(done)
                    continue
                if nxt not in steps or state.get(nxt) == 2:
                    continue
                if state.get(nxt) == 1:
                    cycle = " -> ".join([*path[path.index(nxt) :], nxt])
                    raise self.p.fail(steps[nxt].where.at("inputs"), f"the graph has a cycle: {cycle}")
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(_deps(steps[nxt])))
        return order


def _deps(step: StepPlan) -> list:
    """What must run before ``step``: its inputs and keyword tensors, and the node whose module it calls."""
    return [s for (s, _), _ in step.uses()] + ([step.call] if step.call else [])


def parse_input_spec(value: Any, planner: Any, where: Where | None) -> tuple | None:
    """``[1, 3, 32, 32]`` or ``{shape: [...], dtype: int64}`` -> ``(shape, dtype)``; ``None`` stays None."""

    def fail(msg: str) -> SpecError:
        if planner is not None and where is not None:
            return planner.fail(where, msg)
        return SpecError(msg)

    if value is None:
        return None
    dtype = "float32"
    if isinstance(value, dict):
        unknown = [k for k in value if k not in ("shape", "dtype")]
        if unknown:
            raise fail(
                f"unknown key {unknown[0]!r}{close_matches(unknown[0], ('shape', 'dtype'))}; "
                "expected shape, dtype"
            )
        dtype = value.get("dtype", "float32")
        if dtype not in DTYPES:
            raise fail(
                f"found dtype {dtype!r}{close_matches(str(dtype), DTYPES)}; "
                f"expected one of {', '.join(DTYPES)}"
            )
        value = value.get("shape")
    if isinstance(value, tuple):
        value = list(value)
    if (
        not isinstance(value, list)
        or not value
        or len(value) > 8
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 2**31 for d in value)
    ):
        raise fail(
            f"found {value!r:.60}; expected a shape: a list of 1 to 8 positive integers "
            "such as [1, 3, 224, 224]"
        )
    return tuple(value), dtype
