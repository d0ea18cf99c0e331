"""What a spec becomes before anything is built: plan records, and where each comes from in the spec.

:mod:`torchsmith.spec.schema` (nodes, blocks, parameters) and :mod:`torchsmith.spec.graph_plan`
(graphs) make these records; :mod:`torchsmith.spec.builder` turns them into modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from torchsmith.spec.resolve import Target

__all__ = [
    "USE_KEYS",
    "ChainPlan",
    "DeferredPlan",
    "DictPlan",
    "GraphPlan",
    "LeafPlan",
    "ListPlan",
    "ModuleArg",
    "Plan",
    "SharedPlan",
    "StepPlan",
    "Where",
]

USE_KEYS = ("n", "when", "shared", "inputs", "keywords")  # keys about how a node is used, not what it is


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
    kw_refs: tuple = ()  # ((keyword, (source, selector)), ...): tensors passed by keyword (attn_mask)
    kw_wheres: tuple = ()  # Where of each keyword ref
    kw_values: dict = field(default_factory=dict)  # constants passed by keyword (is_causal: true)

    def uses(self) -> list[tuple[tuple, Where]]:
        """Every (ref, where) this step reads: its inputs, then its keyword tensors."""
        return [
            *zip(self.refs, self.ref_wheres),
            *((r, w) for (_, r), w in zip(self.kw_refs, self.kw_wheres)),
        ]


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
