"""The spec schema, checked while turning a spec into a *plan*: a tree of what to build, nothing built yet.

A module spec ("node") is a type name (``"ReLU"``) or a mapping with exactly one body key:

``type: NAME``            a layer/block/model; other keys are its keyword arguments, ``args: [...]`` its
                          positional ones (``kwargs: {...}`` for names that clash with the keys below);
``chain: [...] | {...}``  ``nn.Sequential`` with numbered (list) or named (mapping) children;
``list: [...]``           a ``ModuleList`` whose forward runs the items in order;
``dict: {...}``           a ``ModuleDict`` whose forward runs the values in order;
``graph: {inputs, nodes, outputs}``  named nodes wired by name (see ``docs/spec.md``).

Keys about *how a node is used*: ``n`` (repeat: in a list it expands in place, elsewhere it makes an
``nn.Sequential`` of ``n`` copies), ``when`` (a boolean; false drops the node), ``shared`` (every
use with the same key is one module; with ``n``, one module run ``n`` times) and, in graphs,
``inputs``. Planning expands parameters and blocks, so its size is bounded here, before anything is
allocated: at most ``MAX_MODULES`` modules, ``n`` at most ``MAX_REPEAT``, blocks nested at most
``MAX_BLOCK_DEPTH`` deep, and a block that uses itself is an error naming the cycle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Union

from torchsmith.errors import SpecError, close_matches
from torchsmith.spec.expr import ExprError, substitute
from torchsmith.spec.graph import OPS
from torchsmith.spec.loader import Source, format_path
from torchsmith.spec.resolve import ResolveError, Target, check_arguments, resolve_type
from torchsmith.spec.shapes import INFER

__all__ = [
    "MAX_BLOCK_DEPTH",
    "MAX_MODULES",
    "MAX_REPEAT",
    "ChainPlan",
    "DeferredPlan",
    "DictPlan",
    "GraphPlan",
    "LeafPlan",
    "ListPlan",
    "ModuleArg",
    "Planner",
    "SharedPlan",
    "Where",
]

MAX_MODULES = 10_000
MAX_REPEAT = 10_000
MAX_BLOCK_DEPTH = 32

BODY_KEYS = ("type", "chain", "list", "dict", "graph")
USE_KEYS = ("n", "when", "shared", "inputs")
NODE_KEYS = ("n", "when", "shared")  # the use keys of a node outside graphs
TOP_KEYS = ("torchsmith", "name", "description", "params", "blocks", "input_shape", "init")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CHILD = re.compile(r"^[A-Za-z0-9_]+$")
_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "bool")
REQUIRED = object()
PARAM_KEYS = {"shape": None, "init": "zeros", "std": 0.02, "trainable": True, "buffer": False}
PARAM_INITS = ("zeros", "ones", "normal", "trunc_normal")


@dataclass(frozen=True)
class Where:
    """Where a plan node comes from: its path in the spec file and its module path in the model."""

    src: tuple
    inst: tuple
    in_block: bool = False

    def at(self, *src: Any) -> Where:
        return Where((*self.src, *src), self.inst, self.in_block)

    def child(self, name: str, *src: Any) -> Where:
        return Where((*self.src, *src), (*self.inst, name), self.in_block)


@dataclass
class LeafPlan:
    where: Where
    target: Target
    args: list
    kwargs: dict
    inferred: dict = field(default_factory=dict)


@dataclass
class ModuleArg:
    """An argument that is itself a module (``extra_blocks: {module: LastLevelMaxPool}``)."""

    plan: Any

    def __repr__(self) -> str:
        return "<module>"


@dataclass
class ChainPlan:
    where: Where
    children: list  # [(name, plan)]


@dataclass
class ListPlan:
    where: Where
    children: list  # [plan]


@dataclass
class DictPlan:
    where: Where
    children: list  # [(name, plan)]


@dataclass
class StepPlan:
    name: str
    where: Where
    plan: Plan | None
    op: str | None
    op_kwargs: dict
    refs: tuple  # ((source, selector), ...)
    ref_wheres: tuple  # Where of each ref, for errors
    call: str | None = None  # the module node whose module this node runs again (shared weights)


@dataclass
class GraphPlan:
    where: Where
    inputs: list  # names
    input_specs: dict  # name -> (shape, dtype) | None, as written in the graph
    steps: list  # [StepPlan] in run order
    outputs: tuple  # ("single", ref) | ("tuple", (ref, ...)) | ("dict", ((key, ref), ...))


@dataclass
class SharedPlan:
    """One use of a module shared by ``key`` (``shared: true`` keys by type name, ``shared: NAME`` by NAME).

    The use the model builds first builds the module and holds it (its ``state_dict`` keys are that
    place's); every later use runs that module. ``plan`` is planned when the spec is read for the
    first use written and, for a later one, only if the build reaches it first (a graph can run a
    node written later first), from ``body`` in ``scope`` with the block ``stack`` it was written in.
    """

    where: Where
    key: str
    plan: Plan | None
    body: dict
    scope: dict
    stack: tuple


@dataclass
class DeferredPlan:
    """A block use that leaves out a parameter named in ``INFER`` (``in_channels``, ``d_model``, ...).

    Its body depends on the value, so it is planned in the meta pass, once the block's input is
    known: ``resolved`` is that plan (then reused by the real pass).
    """

    where: Where
    block: str
    args: list
    kwargs: dict
    missing: tuple  # the parameter names to read off the input
    stack: tuple  # the blocks it is written in (cycle checks go on when it is planned)
    resolved: Plan | None = None


Plan = Union[LeafPlan, ChainPlan, ListPlan, DictPlan, GraphPlan, SharedPlan, DeferredPlan]  # noqa: UP007


@dataclass
class _Block:
    name: str
    params: list  # [(name, default or REQUIRED)]
    body: dict
    src: tuple


def _reserved() -> set[str]:
    import torch.nn as nn

    return set(dir(nn.Module))


class Planner:
    """Turns a loaded spec into a plan, raising :class:`SpecError` at the first problem."""

    def __init__(self, source: Source, *, allow_imports: bool = False) -> None:
        self.source = source
        self.allow_imports = allow_imports
        self.blocks: dict[str, _Block] = {}
        self.globals: dict[str, Any] = {}
        self.count = 0
        self.stack: list[str] = []
        self.shared: dict[str, tuple[dict, Where]] = {}  # key -> (the first use as written, its place)
        self._reserved = _reserved()

    # ------------------------------------------------------------------------------------- errors
    def fail(self, where: Where, msg: str) -> SpecError:
        loc = self.source.where(where.src)
        if where.in_block:
            loc += f" (building {format_path(where.inst) if where.inst else 'the model'})"
        err = SpecError(f"{loc}: {msg}")
        err.path = format_path(where.src)  # type: ignore[attr-defined]
        err.line = self.source.line(where.src)  # type: ignore[attr-defined]
        return err

    def sub(self, value: Any, where: Where, scope: dict) -> Any:
        try:
            return substitute(value, scope)
        except ExprError as e:
            raise self.fail(where, str(e)) from None

    def tick(self, where: Where) -> None:
        self.count += 1
        if self.count > MAX_MODULES:
            raise self.fail(
                where, f"the spec expands to more than {MAX_MODULES} modules (repeats and blocks multiply)"
            )

    def _unknown_keys(self, d: dict, allowed: tuple, where: Where, what: str) -> None:
        for key in d:
            if key not in allowed:
                raise self.fail(
                    where.at(key),
                    f"unknown key {key!r} in {what}{close_matches(key, allowed)}; expected one of: "
                    f"{', '.join(allowed)}",
                )

    # -------------------------------------------------------------------------------------- top
    def plan_spec(self, spec: dict, params: dict | None = None) -> Plan:
        """Plan the whole model described by ``spec`` (a loaded spec: a dict)."""
        root = Where((), ())
        if "type" not in spec:  # with a top-level 'type', the other keys are its arguments
            self._unknown_keys(spec, TOP_KEYS + BODY_KEYS, root, "the spec")
        version = spec.get("torchsmith", 1)
        if version != 1:
            raise self.fail(root.at("torchsmith"), f"found spec format version {version!r}; expected 1")
        for key in ("name", "description"):
            if key in spec and not isinstance(spec[key], str):
                raise self.fail(root.at(key), f"found {type(spec[key]).__name__}; expected a string")
        self._read_params(spec.get("params", {}), params or {}, root.at("params"))
        self._read_blocks(spec.get("blocks", {}), root.at("blocks"))
        body = {k: v for k, v in spec.items() if k not in TOP_KEYS}
        if not body:
            raise self.fail(
                root, "the spec has no model: expected one of the keys type, chain, list, dict, graph"
            )
        return self._plan_body(body, root, self.globals)

    def _read_params(self, raw: Any, overrides: dict, where: Where) -> None:
        if not isinstance(raw, dict):
            raise self.fail(
                where, f"found {type(raw).__name__}; expected a mapping of parameter names to values"
            )
        for key in overrides:
            if key not in raw:
                raise SpecError(
                    f"unknown spec parameter {key!r}{close_matches(key, raw)}; this spec's parameters are: "
                    f"{', '.join(raw) or '(none)'}"
                )
        scope: dict[str, Any] = {}
        for key, value in raw.items():
            if not _NAME.match(key):
                raise self.fail(where.at(key), f"parameter name {key!r} is not an identifier")
            default = self.sub(value, where.at(key), scope)
            if key not in overrides:
                scope[key] = default
                continue
            try:
                given = substitute(overrides[key], scope)
            except ExprError as e:
                raise SpecError(f"parameter {key!r} (given as an override): {e}") from None
            _check_override(key, given, default, self.source.where(where.at(key).src))
            scope[key] = given
        self.globals = scope

    def _read_blocks(self, raw: Any, where: Where) -> None:
        if not isinstance(raw, dict):
            raise self.fail(
                where, f"found {type(raw).__name__}; expected a mapping of block names to definitions"
            )
        for name, block in raw.items():
            w = where.at(name)
            if not _NAME.match(name):
                raise self.fail(w, f"block name {name!r} is not an identifier")
            if not isinstance(block, dict):
                raise self.fail(
                    w, f"found {type(block).__name__}; expected a mapping with 'params' and a body"
                )
            bodies = [k for k in BODY_KEYS if k in block]
            if len(bodies) != 1:
                raise self.fail(
                    w,
                    f"a block needs exactly one body key of: {', '.join(BODY_KEYS)}; "
                    f"found {bodies or 'none'}",
                )
            if bodies != ["type"]:
                self._unknown_keys(block, ("params", "description", bodies[0]), w, f"block {name!r}")
            params = self._read_block_params(block.get("params", []), w.at("params"))
            body = {k: v for k, v in block.items() if k not in ("params", "description")}
            self.blocks[name] = _Block(name, params, body, w.src)

    def _read_block_params(self, raw: Any, where: Where) -> list:
        items: list = []
        if isinstance(raw, dict):
            items = [(k, v) for k, v in raw.items()]
        elif isinstance(raw, list):
            for i, item in enumerate(raw):
                if isinstance(item, str):
                    items.append((item, REQUIRED))
                elif isinstance(item, dict) and len(item) == 1:
                    items.append(next(iter(item.items())))
                else:
                    raise self.fail(
                        where.at(i),
                        f"found {item!r:.60}; expected a parameter name (required) or {{name: default}}",
                    )
        else:
            raise self.fail(
                where, f"found {type(raw).__name__}; expected a list like [out_channels, {{stride: 1}}]"
            )
        seen = set()
        for i, (name, _) in enumerate(items):
            if not isinstance(name, str) or not _NAME.match(name):
                raise self.fail(where.at(i), f"parameter name {name!r} is not an identifier")
            if name in seen:
                raise self.fail(where.at(i), f"parameter {name!r} is listed twice")
            seen.add(name)
        return items

    # ------------------------------------------------------------------------------------- nodes
    def _split(self, value: Any, where: Where, scope: dict, use_keys: tuple) -> tuple[dict, dict]:
        """A node as (body, use keys); a string is a type name."""
        if isinstance(value, str):
            value = self.sub(value, where, scope)
            if isinstance(value, str):
                return {"type": value}, {}
        if not isinstance(value, dict):
            raise self.fail(
                where,
                f"found {type(value).__name__} {value!r:.60}; expected a type name or a mapping with one of "
                f"the keys {', '.join(BODY_KEYS)}",
            )
        use = {k: value[k] for k in USE_KEYS if k in value}
        for key in use:
            if key not in use_keys:
                raise self.fail(
                    where.at(key), f"{key!r} is not allowed here (allowed: {', '.join(use_keys) or 'none'})"
                )
        body = {k: v for k, v in value.items() if k not in USE_KEYS}
        return body, use

    def _when(self, use: dict, where: Where, scope: dict) -> bool:
        if "when" not in use:
            return True
        value = self.sub(use["when"], where.at("when"), scope)
        if not isinstance(value, bool):
            raise self.fail(where.at("when"), f"found {value!r}; expected true or false")
        return value

    def _repeat(self, use: dict, where: Where, scope: dict) -> int | None:
        if "n" not in use:
            return None
        n = self.sub(use["n"], where.at("n"), scope)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_REPEAT:
            raise self.fail(
                where.at("n"), f"found {n!r}; expected a whole number of repeats from 1 to {MAX_REPEAT}"
            )
        return n

    def plan_node(self, value: Any, where: Where, scope: dict, use_keys: tuple = NODE_KEYS) -> Plan | None:
        """Plan one node; ``None`` when its ``when`` is false. ``n`` makes a Sequential of copies."""
        body, use = self._split(value, where, scope, use_keys)
        if not self._when(use, where, scope):
            return None
        return self._plan_use(body, use, where, scope)

    def _plan_use(self, body: dict, use: dict, where: Where, scope: dict) -> Plan:
        """A node's body with its ``n`` and ``shared``: ``n`` copies, or one shared module run ``n`` times."""
        key = self._shared_key(use, body, where, scope)
        n = self._repeat(use, where, scope)
        if n is None:
            return self._plan_one(body, where, scope, key)
        self.tick(where)
        children = [(str(i), self._plan_one(body, where.child(str(i)), scope, key)) for i in range(n)]
        return ChainPlan(where, children)

    def _plan_items(self, items: list, where: Where, scope: dict) -> list:
        """Plan a list of nodes, expanding ``n`` in place (a ResNet stage: ``{type: Block, n: 3}``)."""
        plans: list = []
        for i, item in enumerate(items):
            body, use = self._split(item, where.at(i), scope, NODE_KEYS)
            if not self._when(use, where.at(i), scope):
                continue
            key = self._shared_key(use, body, where.at(i), scope)
            n = self._repeat(use, where.at(i), scope) or 1
            for _ in range(n):
                name = str(len(plans))
                w = Where((*where.src, i), (*where.inst, name), where.in_block)
                plans.append(self._plan_one(body, w, scope, key))
        return plans

    # ------------------------------------------------------------------------------------ sharing
    def _shared_key(self, use: dict, body: dict, where: Where, scope: dict) -> str | None:
        """The key of a ``shared`` use (``true``: the type name; a name: itself), or None."""
        if "shared" not in use:
            return None
        w = where.at("shared")
        value = self.sub(use["shared"], w, scope)
        if value is False:
            return None
        if value is not True and not (isinstance(value, str) and _NAME.match(value)):
            raise self.fail(
                w, f"found {value!r:.60}; expected true, false, or a name (an identifier) for the module"
            )
        if "type" not in body:
            raise self.fail(
                w,
                "'shared' needs a node with 'type' (a layer, a block or a model); to share a chain, list, "
                "dict or graph, define it under 'blocks' and write {type: BLOCK, shared: true}",
            )
        if value is not True:
            return value
        type_name = self.sub(body["type"], where.at("type"), scope)
        return type_name if isinstance(type_name, str) else repr(type_name)

    def _plan_one(self, body: dict, where: Where, scope: dict, key: str | None) -> Plan:
        """One use of a body; a shared one is planned here only for the first use written.

        Later uses are compared with the first as written (after ``$`` substitution, so cheaply,
        whatever the block expands to): one module has one set of arguments.
        """
        if key is None:
            return self._plan_body(body, where, scope)
        first = self.shared.get(key)
        plan = self._plan_body(body, where, scope) if first is None else None
        written = {k: self.sub(v, where.at(k), scope) for k, v in body.items()}
        if first is None:
            self.shared[key] = (written, where)
        else:
            self._same_arguments(key, written, first, where)
            self.tick(where)  # a later use is one small module that runs the first
            plan = None
        return SharedPlan(where, key, plan, body, scope, tuple(self.stack))

    def _same_arguments(self, key: str, written: dict, first: tuple, where: Where) -> None:
        first_written, first_where = first
        if written == first_written:
            return
        missing = "(not given)"
        names = ["type", *sorted((set(written) | set(first_written)) - {"type"}, key=str)]
        name = next(k for k in names if written.get(k, missing) != first_written.get(k, missing))
        here, there = written.get(name, missing), first_written.get(name, missing)
        raise self.fail(
            where.at(name) if name in written else where,
            f"this use of the shared module {key!r} has {name}={here!r:.60} but its first use "
            f"({self.source.where(first_where.src)}) has {name}={there!r:.60}; the uses of a shared "
            "module are one module, so they are written with the same arguments (give this use its "
            "own key with shared: NAME, or drop shared to build a copy)",
        )

    def plan_shared(self, plan: SharedPlan) -> Plan:
        """Plan a later shared use that the build reaches first (it then holds the module)."""
        return self._plan_with_stack(plan.stack, lambda: self._plan_body(plan.body, plan.where, plan.scope))

    def resolve(self, plan: DeferredPlan, values: dict) -> Plan:
        """Plan a deferred block use now that its omitted parameters are known (``values``)."""
        block = self.blocks[plan.block]
        return self._plan_with_stack(
            plan.stack, lambda: self._instantiate(block, plan.args, {**plan.kwargs, **values}, plan.where)
        )

    def _plan_with_stack(self, stack: tuple, make: Any) -> Plan:
        saved = self.stack
        self.stack = list(stack)  # the blocks it was written in: a block using itself is still caught
        try:
            return make()
        finally:
            self.stack = saved

    def _child_name(self, name: str, where: Where) -> None:
        if not _CHILD.match(name):
            raise self.fail(
                where, f"the name {name!r} may hold only letters, digits and _ (it becomes a state_dict key)"
            )
        if name in self._reserved:
            raise self.fail(where, f"the name {name!r} clashes with an nn.Module attribute; choose another")

    def _plan_named(self, mapping: dict, where: Where, scope: dict) -> list:
        children = []
        for name, item in mapping.items():
            self._child_name(name, where.at(name))
            plan = self.plan_node(item, where.child(name, name), scope)
            if plan is not None:
                children.append((name, plan))
        return children

    def _plan_body(self, body: dict, where: Where, scope: dict) -> Plan:
        self.tick(where)
        keys = [k for k in BODY_KEYS if k in body]
        if not keys:
            guess = "".join(close_matches(k, BODY_KEYS) for k in body)
            raise self.fail(
                where,
                f"found keys {', '.join(map(repr, body)) or '(none)'}{guess}; "
                f"expected one of {', '.join(BODY_KEYS)}",
            )
        if len(keys) > 1:
            raise self.fail(where.at(keys[1]), f"a node has one body key; found {' and '.join(keys)}")
        key = keys[0]
        if key == "type":
            return self._plan_type(body, where, scope)
        self._unknown_keys(body, (key,), where, f"a {key} node")
        value = body[key]
        w = where.at(key)
        if key == "chain":
            if isinstance(value, list):
                children = self._plan_items(value, w, scope)
                named = [(str(i), p) for i, p in enumerate(children)]
            elif isinstance(value, dict):
                named = self._plan_named(value, w, scope)
            else:
                raise self.fail(
                    w, f"found {type(value).__name__}; expected a list or a mapping of name: node"
                )
            if not named:
                raise self.fail(w, "the chain is empty; expected at least one node")
            return ChainPlan(where, named)
        if key == "list":
            if not isinstance(value, list):
                raise self.fail(w, f"found {type(value).__name__}; expected a list of nodes")
            items = self._plan_items(value, w, scope)
            if not items:
                raise self.fail(w, "the list is empty; expected at least one node")
            return ListPlan(where, items)
        if key == "dict":
            if not isinstance(value, dict):
                raise self.fail(w, f"found {type(value).__name__}; expected a mapping of name: node")
            named = self._plan_named(value, w, scope)
            if not named:
                raise self.fail(w, "the dict is empty; expected at least one node")
            return DictPlan(where, named)
        return self._plan_graph(value, w, scope, where)

    def _arg(self, value: Any, where: Where, scope: dict, name: str) -> Any:
        """An argument value; ``{module: NODE}`` is a module built from NODE and passed in."""
        if isinstance(value, dict) and set(value) == {"module"}:
            inner = Where((*where.src, "module"), (*where.inst, f"<{name}>"), where.in_block)
            plan = self.plan_node(value["module"], inner, scope)
            return None if plan is None else ModuleArg(plan)
        return self.sub(value, where, scope)

    def _plan_type(self, body: dict, where: Where, scope: dict) -> Plan:
        type_name = self.sub(body["type"], where.at("type"), scope)
        raw_args = body.get("args", [])
        if isinstance(raw_args, list):
            args = [self._arg(a, where.at("args", i), scope, str(i)) for i, a in enumerate(raw_args)]
        else:
            args = self.sub(raw_args, where.at("args"), scope)
        if not isinstance(args, list):
            raise self.fail(
                where.at("args"), f"found {type(args).__name__}; expected a list of positional arguments"
            )
        kwargs = {
            k: self._arg(v, where.at(k), scope, k)
            for k, v in body.items()
            if k not in ("type", "args", "kwargs")
        }
        extra = self.sub(body.get("kwargs", {}), where.at("kwargs"), scope)
        if not isinstance(extra, dict):
            raise self.fail(where.at("kwargs"), f"found {type(extra).__name__}; expected a mapping")
        for k in extra:
            if k in kwargs:
                raise self.fail(where.at("kwargs", k), f"argument {k!r} is given twice")
        kwargs.update(extra)
        if isinstance(type_name, str) and type_name in self.blocks:
            return self._instantiate(self.blocks[type_name], args, kwargs, where)
        try:
            target = resolve_type(type_name, allow_imports=self.allow_imports, local=self.blocks)
            check_arguments(target, args, kwargs, complete=False)
        except ResolveError as e:
            raise self.fail(where.at("type"), str(e)) from None
        return LeafPlan(where, target, args, kwargs)

    def _instantiate(self, block: _Block, args: list, kwargs: dict, where: Where) -> Plan:
        if block.name in self.stack:
            cycle = " -> ".join([*self.stack[self.stack.index(block.name) :], block.name])
            raise self.fail(
                where.at("type"), f"block {block.name!r} uses itself ({cycle}); blocks may not recurse"
            )
        if len(self.stack) >= MAX_BLOCK_DEPTH:
            raise self.fail(where.at("type"), f"blocks nest more than {MAX_BLOCK_DEPTH} deep")
        names = [p for p, _ in block.params]
        if len(args) > len(names):
            raise self.fail(
                where.at("args"),
                f"block {block.name!r} takes {len(names)} parameter(s) ({', '.join(names)}); got {len(args)}",
            )
        bound: dict[str, Any] = dict(zip(names, args))
        for key, value in kwargs.items():
            if key not in names:
                raise self.fail(
                    where.at(key),
                    f"block {block.name!r} has no parameter {key!r}{close_matches(key, names)}; "
                    "its parameters "
                    f"are: {', '.join(names) or '(none)'}",
                )
            if key in bound:
                raise self.fail(where.at(key), f"parameter {key!r} is given twice (positionally and by name)")
            bound[key] = value
        given = dict(bound)
        # a required in_channels/in_features/d_model/... left out is read off the block's input
        missing = [p for p, d in block.params if d is REQUIRED and p not in given]
        for name in missing:
            if name not in INFER:
                raise self.fail(where, f"block {block.name!r} needs the parameter {name!r}")
        if missing:
            return DeferredPlan(where, block.name, args, kwargs, tuple(missing), tuple(self.stack))
        ordered: dict[str, Any] = {}
        for i, (name, default) in enumerate(block.params):
            if name in given:
                ordered[name] = given[name]
            else:  # defaults may use the spec's params and earlier block params: {mid: $out_channels}
                w = Where((*block.src, "params", i), where.inst, True)
                ordered[name] = self.sub(default, w, {**self.globals, **given, **ordered})
        scope = {**self.globals, **ordered}
        self.stack.append(block.name)
        try:
            inner = Where(block.src, where.inst, True)
            plan = self._plan_body(block.body, inner, scope)
            plan.block = block.name  # type: ignore[union-attr]  # shown as the type in summaries
            return plan
        finally:
            self.stack.pop()

    # ------------------------------------------------------------------------------------- graph
    def _parse_ref(self, raw: Any, where: Where, scope: dict) -> tuple:
        ref = self.sub(raw, where, scope)
        if not isinstance(ref, str) or not ref:
            raise self.fail(
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
                    raise self.fail(where.at(i), f"found {name!r}; expected an input name")
                specs[name] = None
            names = list(raw)
        elif isinstance(raw, dict):
            names = list(raw)
            specs = {name: parse_input_spec(value, self, where.at(name)) for name, value in raw.items()}
        else:
            raise self.fail(
                where, f"found {type(raw).__name__}; expected input names (a list) or name: shape"
            )
        if not names:
            raise self.fail(where, "a graph needs at least one input")
        for i, name in enumerate(names):
            self._child_name(name, where.at(name if isinstance(raw, dict) else i))
            if names.count(name) > 1:
                raise self.fail(where, f"input {name!r} is listed twice")
        return names, specs

    def _plan_graph(self, g: Any, where: Where, scope: dict, node_where: Where) -> GraphPlan:
        if not isinstance(g, dict):
            raise self.fail(
                where, f"found {type(g).__name__}; expected a mapping with inputs, nodes, outputs"
            )
        self._unknown_keys(g, ("inputs", "nodes", "outputs"), where, "a graph")
        raw_inputs = self.sub(g.get("inputs", ["x"]), where.at("inputs"), scope)
        inputs, input_specs = self._input_specs(raw_inputs, where.at("inputs"))
        nodes = g.get("nodes")
        if not isinstance(nodes, dict) or not nodes:
            raise self.fail(where.at("nodes"), f"found {nodes!r:.60}; expected a mapping of node name: node")
        steps: dict[str, StepPlan] = {}
        disabled: set[str] = set()
        previous: str | None = inputs[0] if len(inputs) == 1 else None
        for name, value in nodes.items():
            w = Where((*where.src, "nodes", name), (*node_where.inst, name), where.in_block)
            self._child_name(name, w)
            if name in inputs:
                raise self.fail(w, f"node {name!r} has the name of a graph input")
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
            for (src, _), rw in zip(step.refs, step.ref_wheres):
                if src in disabled:
                    raise self.fail(
                        rw, f"node {src!r} is switched off by its 'when', so it cannot be an input here"
                    )
                if src not in known:
                    raise self.fail(
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
                todo.extend(s for s, _ in steps[src].refs)
        for name, step in steps.items():
            if name not in needed:
                raise self.fail(
                    step.where,
                    f"node {name!r} is computed but never used: "
                    "no output and no other node takes it as input",
                )
        for name in inputs:
            if name not in needed:
                raise self.fail(
                    where.at("inputs"), f"graph input {name!r} is never used by any node or output"
                )
        return GraphPlan(node_where, inputs, input_specs, [steps[n] for n in order], outputs)

    def _plan_call(
        self, name: str, value: dict, w: Where, scope: dict, previous: str | None
    ) -> StepPlan | None:
        """``{call: enc, inputs: b}``: run node ``enc``'s module again on other inputs (one weight set)."""
        self._unknown_keys(value, ("call", "inputs", "when"), w, "a call node")
        if not self._when(value, w, scope):
            return None
        target = self.sub(value["call"], w.at("call"), scope)
        if not isinstance(target, str) or not target:
            raise self.fail(w.at("call"), f"found {target!r:.60}; expected the name of a module node")
        refs, ref_wheres = self._refs(value, w, scope, previous)
        return StepPlan(name, w, None, None, {}, refs, ref_wheres, call=target)

    def _plan_param(self, name: str, value: dict, w: Where, scope: dict) -> StepPlan | None:
        """``{param: {shape: [1, 1, $dim], init: zeros}}``: an ``nn.Parameter`` (or buffer) as a node."""
        self._unknown_keys(value, ("param", "when"), w, "a param node")
        if not self._when(value, w, scope):
            return None
        wp = w.at("param")
        raw = self.sub(value["param"], wp, scope)
        if not isinstance(raw, dict):
            raise self.fail(
                wp, f"found {raw!r:.60}; expected a mapping like {{shape: [1, 1, 64], init: zeros}}"
            )
        self._unknown_keys(raw, tuple(PARAM_KEYS), wp, "a param")
        spec = {**PARAM_KEYS, **raw}
        shape = spec["shape"]
        if (
            not isinstance(shape, list)
            or not 1 <= len(shape) <= 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 2**31 for d in shape)
        ):
            raise self.fail(
                wp.at("shape"), f"found {shape!r:.60}; expected a list of 1 to 8 positive integers"
            )
        if spec["init"] not in PARAM_INITS:
            raise self.fail(
                wp.at("init"),
                f"found init {spec['init']!r}{close_matches(str(spec['init']), PARAM_INITS)}; "
                f"expected one of {', '.join(PARAM_INITS)}",
            )
        std = spec["std"]
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 <= std <= 1e6:
            raise self.fail(wp.at("std"), f"found {std!r:.60}; expected a number from 0 up")
        for key in ("trainable", "buffer"):
            if not isinstance(spec[key], bool):
                raise self.fail(wp.at(key), f"found {spec[key]!r:.60}; expected true or false")
        count = 1
        for d in shape:
            count *= d
        if count > 2**31:
            raise self.fail(
                wp.at("shape"), f"the shape {shape} has {count:,} elements; expected at most 2**31"
            )
        self.tick(w)
        return StepPlan(name, w, None, "param", spec, (), ())

    def _check_calls(self, steps: dict, inputs: list, disabled: set) -> None:
        for step in steps.values():
            if step.call is None:
                continue
            w, target = step.where.at("call"), step.call
            modules = [n for n, s in steps.items() if s.plan is not None]
            if target in disabled:
                raise self.fail(w, f"node {target!r} is switched off by its 'when', so it cannot be called")
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
                raise self.fail(
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
            if not self._when(value, w, scope):
                return None
            op = self.sub(value["op"], w.at("op"), scope)
            if not isinstance(op, str) or op not in OPS:
                raise self.fail(
                    w.at("op"), f"unknown op {op!r}{close_matches(str(op), OPS)}; ops: {', '.join(OPS)}"
                )
            self._unknown_keys(
                {k: v for k, v in value.items() if k not in ("op", "inputs", "when")},
                tuple(OPS[op].kwargs),
                w,
                f"op {op!r}",
            )
            spec = OPS[op]
            kwargs = dict(spec.kwargs)
            for k in value:
                if k not in ("op", "inputs", "when"):
                    kwargs[k] = self.sub(value[k], w.at(k), scope)
            for k in spec.required:
                if kwargs.get(k) is None:
                    raise self.fail(w, f"op {op!r} needs the argument {k!r}")
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
                raise self.fail(w.at("inputs"), f"op {op!r} takes {want} input(s); found {n}")
            return StepPlan(name, w, None, op, kwargs, refs, ref_wheres)
        body, use = self._split(value, w, scope, USE_KEYS)
        if not self._when(use, w, scope):
            return None
        refs, ref_wheres = self._refs(use, w, scope, previous)
        return StepPlan(name, w, self._plan_use(body, use, w, scope), None, {}, refs, ref_wheres)

    def _refs(self, d: dict, w: Where, scope: dict, previous: str | None) -> tuple[tuple, tuple]:
        if "inputs" not in d:
            if previous is None:
                raise self.fail(
                    w, "this node must name its inputs (the graph has several inputs and no node before it)"
                )
            return ((previous, None),), (w,)
        raw = self.sub(d["inputs"], w.at("inputs"), scope)
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not items:
            raise self.fail(w.at("inputs"), f"found {raw!r:.60}; expected a name or a list of names")
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
                raise self.fail(where, "the graph needs 'outputs'")
            return ("single", (previous, None)), [(previous, None)]

        def check(item: Any, w: Where) -> tuple:
            ref = self._parse_ref(item, w, scope)
            if ref[0] in disabled:
                raise self.fail(w, f"node {ref[0]!r} is switched off by its 'when'")
            if ref[0] not in known:
                raise self.fail(
                    w,
                    f"unknown output {ref[0]!r}{close_matches(ref[0], known)}; "
                    f"known: {', '.join(sorted(known))}",
                )
            return ref

        raw = self.sub(raw, where, scope)
        if isinstance(raw, str):
            ref = check(raw, where)
            return ("single", ref), [ref]
        if isinstance(raw, list) and raw:
            refs = tuple(check(item, where.at(i)) for i, item in enumerate(raw))
            return ("tuple", refs), list(refs)
        if isinstance(raw, dict) and raw:
            pairs = tuple((str(k), check(v, where.at(k))) for k, v in raw.items())
            return ("dict", pairs), [r for _, r in pairs]
        raise self.fail(where, f"found {raw!r:.60}; expected a node name, a list of names, or key: name")

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
                    raise self.fail(steps[nxt].where.at("inputs"), f"the graph has a cycle: {cycle}")
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(_deps(steps[nxt])))
        return order


def _deps(step: StepPlan) -> list:
    """What must run before ``step``: its inputs, and the node whose module it calls."""
    return [s for s, _ in step.refs] + ([step.call] if step.call else [])


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean (true/false)"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "null"


def _check_override(name: str, given: Any, default: Any, where: str) -> None:
    """An override (``params=``, ``--param``) must have the kind of value its default has.

    Without this, ``--param width=abc`` surfaces far away as "cannot apply Mult to str and int".
    A null default accepts anything (the spec did not say what it wants).
    """
    if default is None or _kind(given) == _kind(default):
        return
    raise SpecError(
        f"parameter {name!r}: found {given!r:.60} ({_kind(given)}); expected {_kind(default)} like its "
        f"default {default!r:.60} ({where})"
    )


def parse_input_spec(value: Any, planner: Planner | None, where: Where | None) -> tuple | None:
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
        if dtype not in _DTYPES:
            raise fail(
                f"found dtype {dtype!r}{close_matches(str(dtype), _DTYPES)}; "
                f"expected one of {', '.join(_DTYPES)}"
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
