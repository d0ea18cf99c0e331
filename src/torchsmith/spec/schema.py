"""The spec schema, checked while turning a spec into a *plan*: a tree of what to build, nothing built yet.

A module spec ("node") is a type name (``"ReLU"``) or a mapping with exactly one body key:

``type: NAME``            a layer/block/model; other keys are its keyword arguments, ``args: [...]`` its
                          positional ones (``kwargs: {...}`` for names that clash with the keys below);
``chain: [...] | {...}``  ``nn.Sequential`` with numbered (list) or named (mapping) children;
``list: [...]``           a ``ModuleList`` whose forward runs the items in order;
``dict: {...}``           a ``ModuleDict`` whose forward runs the values in order;
``graph: {inputs, nodes, outputs}``  named nodes wired by name (see ``docs/spec.md``), planned by
                          :mod:`torchsmith.spec.graph_plan`.

Keys about *how a node is used*: ``n`` (repeat: in a list it expands in place, elsewhere it makes an
``nn.Sequential`` of ``n`` copies), ``when`` (a boolean; false drops the node), ``shared`` (every
use with the same key is one module; with ``n``, one module run ``n`` times) and, in graphs,
``inputs``. Planning expands parameters and blocks, so its size is bounded here, before anything is
allocated: at most ``MAX_MODULES`` modules, ``n`` at most ``MAX_REPEAT``, blocks nested at most
``MAX_BLOCK_DEPTH`` deep, and a block that uses itself is an error naming the cycle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torchsmith.errors import SpecError, close_matches
from torchsmith.spec.expr import ExprError, substitute
from torchsmith.spec.graph_plan import GraphPlanner, parse_input_spec
from torchsmith.spec.loader import Source, format_path
from torchsmith.spec.plans import (
    USE_KEYS,
    ChainPlan,
    DeferredPlan,
    DictPlan,
    GraphPlan,
    LeafPlan,
    ListPlan,
    ModuleArg,
    Plan,
    SharedPlan,
    Where,
)
from torchsmith.spec.resolve import ResolveError, check_arguments, resolve_type
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
    "parse_input_spec",
]

MAX_MODULES = 10_000
MAX_REPEAT = 10_000
MAX_BLOCK_DEPTH = 32

BODY_KEYS = ("type", "chain", "list", "dict", "graph")
NODE_KEYS = ("n", "when", "shared")  # the use keys of a node outside graphs
TOP_KEYS = ("torchsmith", "name", "description", "params", "blocks", "input_shape", "init")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CHILD = re.compile(r"^[A-Za-z0-9_]+$")
REQUIRED = object()


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
        self.graphs = GraphPlanner(self)

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

    def unknown_keys(self, d: dict, allowed: tuple, where: Where, what: str) -> None:
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
            self.unknown_keys(spec, TOP_KEYS + BODY_KEYS, root, "the spec")
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
                self.unknown_keys(block, ("params", "description", bodies[0]), w, f"block {name!r}")
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
    def split(self, value: Any, where: Where, scope: dict, use_keys: tuple) -> tuple[dict, dict]:
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

    def when(self, use: dict, where: Where, scope: dict) -> bool:
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
        body, use = self.split(value, where, scope, use_keys)
        if not self.when(use, where, scope):
            return None
        return self.plan_use(body, use, where, scope)

    def plan_use(self, body: dict, use: dict, where: Where, scope: dict) -> Plan:
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
            body, use = self.split(item, where.at(i), scope, NODE_KEYS)
            if not self.when(use, where.at(i), scope):
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

    def child_name(self, name: str, where: Where) -> None:
        if not _CHILD.match(name):
            raise self.fail(
                where, f"the name {name!r} may hold only letters, digits and _ (it becomes a state_dict key)"
            )
        if name in self._reserved:
            raise self.fail(where, f"the name {name!r} clashes with an nn.Module attribute; choose another")

    def _plan_named(self, mapping: dict, where: Where, scope: dict) -> list:
        children = []
        for name, item in mapping.items():
            self.child_name(name, where.at(name))
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
        self.unknown_keys(body, (key,), where, f"a {key} node")
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
        return self.graphs.plan(value, w, scope, where)

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
