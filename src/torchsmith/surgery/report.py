"""What a surgery changed: paths added, removed and replaced, weights reshaped, parameter counts.

Every surgery function returns a :class:`SurgeryReport`. It is computed by diffing a snapshot of the
model taken before the operation with one taken after, so it reports what really happened rather
than what the operation meant to do.

>>> import torch.nn as nn
>>> from torchsmith.surgery import replace_module
>>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> print(replace_module(net, "1", nn.SiLU()).replaced)
['1']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SurgeryReport", "snapshot"]

_SHOWN = 8  # rows per kind in the printed table; to_dict() has them all


def snapshot(model: Any) -> dict:
    """The facts a report compares: module identities by path, state_dict shapes, parameter counts."""
    from torchsmith._modules import check_state_dict_intact

    check_state_dict_intact(model)  # trap 1: a shadowed state_dict would make every report wrong
    modules = {path: (id(m), type(m).__name__) for path, m in model.named_modules(remove_duplicate=False)}
    shapes = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    params = list(model.parameters())
    return {
        "modules": modules,
        "shapes": shapes,
        "params": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
    }


@dataclass
class SurgeryReport:
    """The outcome of one or more surgery operations on a model.

    ``added``/``removed``/``replaced`` are module paths; ``reshaped`` maps a state_dict key to its
    ``(old_shape, new_shape)``; ``ops`` are the replayable operation records (see
    :func:`torchsmith.surgery.apply_surgery`); ``model`` is the model operated on.
    """

    op: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    moved: dict[str, str] = field(default_factory=dict)
    reshaped: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    keys_added: list[str] = field(default_factory=list)
    keys_removed: list[str] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    trainable_before: int = 0
    trainable_after: int = 0
    notes: list[str] = field(default_factory=list)
    ops: list[dict] = field(default_factory=list)
    mechanism: str | None = None
    model: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def diff(cls, op: str, before: dict, model: Any, **extra: Any) -> SurgeryReport:
        """Build a report by comparing ``before`` (a :func:`snapshot`) with ``model`` now."""
        after = snapshot(model)
        bm, am = before["modules"], after["modules"]
        b_where: dict[int, str] = {}
        for p, (i, _) in bm.items():
            b_where.setdefault(i, p)
        a_where: dict[int, str] = {}
        for p, (i, _) in am.items():
            a_where.setdefault(i, p)
        new_objs = [p for p, (i, _) in am.items() if i not in b_where]
        gone = [p for p, (i, _) in bm.items() if i not in a_where]
        replaced = [p for p in new_objs if p in bm and p in gone]
        added = [p for p in new_objs if p not in replaced]
        removed = [p for p in gone if p not in replaced]
        moved = {
            b_where[i]: p for p, (i, _) in am.items() if i in b_where and b_where[i] != p and p == a_where[i]
        }
        # Children of an added, removed, replaced or moved module are reported through it.
        top = added + replaced
        replaced = [p for p in replaced if not any(_under(p, q) for q in top if q != p)]
        added = [p for p in added if not any(_under(p, q) for q in top if q != p)]
        removed = [p for p in removed if not any(_under(p, q) for q in removed + replaced if q != p)]
        moved = {
            a: b
            for a, b in moved.items()
            if not any(_under(a, q) and moved.get(q) and _under(b, moved[q]) for q in moved if q != a)
        }
        bs, as_ = before["shapes"], after["shapes"]

        def same_owner(key: str) -> bool:  # not a key reused by another module after renumbering
            owner = key.rpartition(".")[0]
            if bm.get(owner, (0,))[0] == am.get(owner, (1,))[0]:
                return True
            return any(_under(owner, q) or owner == q for q in replaced)

        reshaped = {k: (bs[k], as_[k]) for k in as_ if k in bs and bs[k] != as_[k] and same_owner(k)}
        return cls(
            op=op,
            added=added,
            removed=removed,
            replaced=replaced,
            moved=moved,
            reshaped=reshaped,
            keys_added=[k for k in as_ if k not in bs],
            keys_removed=[k for k in bs if k not in as_],
            params_before=before["params"],
            params_after=after["params"],
            trainable_before=before["trainable"],
            trainable_after=after["trainable"],
            model=model,
            **extra,
        )

    def merge(self, other: SurgeryReport) -> SurgeryReport:
        """Fold a later report into this one (used when replaying several operations)."""
        self.op = f"{self.op}+{other.op}" if self.op else other.op
        for name in ("added", "removed", "replaced", "keys_added", "keys_removed", "notes", "ops"):
            getattr(self, name).extend(x for x in getattr(other, name) if x not in getattr(self, name))
        self.moved.update(other.moved)
        for k, (old, new) in other.reshaped.items():
            self.reshaped[k] = (self.reshaped.get(k, (old, new))[0], new)
        self.params_after = other.params_after
        self.trainable_after = other.trainable_after
        self.model = other.model
        if other.mechanism:
            self.mechanism = other.mechanism
        return self

    @property
    def changed(self) -> bool:
        """True when anything about the model's structure or weights' shapes changed."""
        return bool(
            self.added
            or self.removed
            or self.replaced
            or self.reshaped
            or self.keys_added
            or self.keys_removed
            or self.trainable_before != self.trainable_after
        )

    def to_dict(self) -> dict:
        """A JSON-able summary (without the model)."""
        return {
            "op": self.op,
            "added": list(self.added),
            "removed": list(self.removed),
            "replaced": list(self.replaced),
            "moved": dict(self.moved),
            "reshaped": {k: [list(a), list(b)] for k, (a, b) in self.reshaped.items()},
            "keys_added": list(self.keys_added),
            "keys_removed": list(self.keys_removed),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "trainable_before": self.trainable_before,
            "trainable_after": self.trainable_after,
            "mechanism": self.mechanism,
            "notes": list(self.notes),
            "ops": list(self.ops),
        }

    def __str__(self) -> str:
        rows: list[tuple[str, str]] = []
        for kind, items in (
            ("added", self.added),
            ("removed", self.removed),
            ("replaced", self.replaced),
            ("moved", [f"{a} -> {b}" for a, b in self.moved.items()]),
            ("reshaped", [f"{k}: {list(a)} -> {list(b)}" for k, (a, b) in self.reshaped.items()]),
        ):
            rows += [(kind, p) for p in items[:_SHOWN]]
            if len(items) > _SHOWN:
                rows.append((kind, f"... and {len(items) - _SHOWN} more ({len(items)} in all)"))
        if not rows:
            rows.append(("structure", "unchanged (no module added, removed, replaced or reshaped)"))
        width = max(len(r[0]) for r in rows)
        lines = [f"surgery: {self.op}"]
        lines += [f"  {kind.ljust(width)}  {what}" for kind, what in rows]
        lines.append(
            f"  parameters: {self.params_before:,} -> {self.params_after:,} "
            f"(trainable {self.trainable_before:,} -> {self.trainable_after:,})"
        )
        if self.mechanism:
            lines.append(f"  mechanism: {self.mechanism}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _under(path: str, parent: str) -> bool:
    return parent == "" or path.startswith(parent + ".")
