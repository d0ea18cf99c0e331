"""The report of a weight transfer: what was loaded, adapted, skipped, missing and left over.

:func:`~torchsmith.transfer.load_weights` always returns one, so a partial load is never silent
(seed trap 5: ``state_dict.update(...)`` without ``load_state_dict`` loads nothing and says nothing).

>>> report = TransferReport(source="demo.safetensors", match="name", params_total=10, params_from_source=8)
>>> report.fraction
0.8
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["TransferReport"]


def _shape(s: Any) -> str:
    return str(tuple(int(d) for d in s))


@dataclass
class TransferReport:
    """What :func:`~torchsmith.transfer.load_weights` did, key by key.

    Every list holds dicts with the model's key (``key``), the source key it came from
    (``source_key``) and shapes (``shape`` in the model, ``source_shape`` in the source):

    * ``loaded``        copied as is.
    * ``adapted``       copied after a documented change of shape (``how`` says which).
    * ``skipped_shape`` a source tensor of the right name but a shape that cannot be adapted.
    * ``missing``       model keys nothing was loaded into (they keep their current values).
    * ``unexpected``    source keys nothing in the model took.
    * ``excluded``      pairs left out on purpose by ``include``/``exclude``.
    * ``kept``          (structure matches) the model's index buffers (``relative_position_index``):
      integers its modules compute themselves, kept, not copied; the numerical check covers them.

    ``mapping`` (structure matches) lists the module pairs: ``{"target", "source", "shapes"}``.
    ``fraction`` is the share of the model's parameter *elements* whose values came from the source.
    ``loaded_names`` is a set of model keys that hold source values: pass it (or the report) as
    ``skip=`` to :func:`~torchsmith.transfer.init_weights` so a later init never overwrites them.
    ``partial`` says why the source looked like another architecture when ``allow_partial=True``
    accepted it (empty otherwise); ``summary()`` ends with it, so a log line never hides it.
    ``unverified`` says why a structure port was not proven numerically when
    ``allow_unverified=True`` accepted it; the printed report then starts with ``UNVERIFIED``.
    ``adopted`` lists the hyper-parameters the model took from the source (a norm's ``eps``).
    ``missing_keys``/``unexpected_keys`` are the keys alone, as ``load_state_dict`` names them.
    """

    source: str = ""
    match: str = "name"
    loaded: list[dict[str, Any]] = field(default_factory=list)
    adapted: list[dict[str, Any]] = field(default_factory=list)
    skipped_shape: list[dict[str, Any]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    unexpected: list[dict[str, Any]] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    mapping: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params_total: int = 0
    params_from_source: int = 0
    applied: bool = False
    partial: str = ""
    unverified: str = ""
    adopted: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        """Share of the model's parameter elements that now hold values from the source (0..1)."""
        return self.params_from_source / self.params_total if self.params_total else 0.0

    @property
    def loaded_names(self) -> set[str]:
        """Model keys (parameters and buffers) whose values came from the source, adapted included."""
        return {e["key"] for e in self.loaded} | {e["key"] for e in self.adapted}

    @property
    def missing_keys(self) -> list[str]:
        """Model keys nothing was loaded into, as torch's ``load_state_dict`` names them."""
        return [e["key"] for e in self.missing]

    @property
    def unexpected_keys(self) -> list[str]:
        """Source keys nothing in the model took, as torch's ``load_state_dict`` names them."""
        return [e["key"] for e in self.unexpected]

    @property
    def ok(self) -> bool:
        """True when the whole model came from the source and the source was used up."""
        return not (self.skipped_shape or self.missing or self.unexpected) and bool(
            self.loaded or self.adapted
        )

    def counts(self) -> dict[str, int]:
        return {
            "loaded": len(self.loaded),
            "adapted": len(self.adapted),
            "skipped_shape": len(self.skipped_shape),
            "missing": len(self.missing),
            "unexpected": len(self.unexpected),
            "excluded": len(self.excluded),
        }

    def summary(self) -> str:
        """One line, e.g. ``"loaded 318, adapted 0, skipped for shape 2, ... : 99.2% of parameters"``."""
        c = self.counts()
        parts = [
            f"loaded {c['loaded']}",
            f"adapted {c['adapted']}",
            f"skipped for shape {c['skipped_shape']}",
            f"missing {c['missing']}",
            f"unexpected {c['unexpected']}",
        ]
        if c["excluded"]:
            parts.append(f"excluded {c['excluded']}")
        return (
            ", ".join(parts)
            + f": {self.fraction:.2%} of the model's parameters ({self.params_from_source:,} of "
            f"{self.params_total:,}) came from the source"
            + ("; partial load allowed (allow_partial=True): another architecture" if self.partial else "")
            + ("; UNVERIFIED port (allow_unverified=True)" if self.unverified else "")
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (shapes as lists)."""

        def clean(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in e.items()} for e in entries]

        return {
            "source": self.source,
            "match": self.match,
            "verified": not self.unverified,
            "unverified": self.unverified,
            "applied": self.applied,
            "partial": self.partial,
            "adopted": list(self.adopted),
            "fraction": self.fraction,
            "params_total": self.params_total,
            "params_from_source": self.params_from_source,
            "counts": self.counts(),
            "missing_keys": self.missing_keys,
            "unexpected_keys": self.unexpected_keys,
            "loaded": clean(self.loaded),
            "adapted": clean(self.adapted),
            "skipped_shape": clean(self.skipped_shape),
            "missing": clean(self.missing),
            "unexpected": clean(self.unexpected),
            "excluded": clean(self.excluded),
            "kept": clean(self.kept),
            "mapping": clean(self.mapping),
            "equivalences": [
                {
                    "target": m["target"],
                    "source": m["source"],
                    "equivalence": m["status"][len("equivalent: ") :],
                }
                for m in self.mapping
                if str(m.get("status", "")).startswith("equivalent: ")
            ],
            "notes": list(self.notes),
        }

    def table(self, *, show_loaded: bool = False) -> str:
        """The per-key table: every key that was not simply loaded, plus loaded keys when asked."""
        from torchsmith.cli._output import format_table

        rows: list[tuple[str, str, str, str, str]] = []
        if show_loaded:
            rows += [("loaded", e["key"], e["source_key"], _shape(e["shape"]), "") for e in self.loaded]
        rows += [
            (
                "adapted",
                e["key"],
                e["source_key"],
                f"{_shape(e['source_shape'])} -> {_shape(e['shape'])}",
                e["how"],
            )
            for e in self.adapted
        ]
        rows += [
            (
                "skipped (shape)",
                e["key"],
                e["source_key"],
                f"{_shape(e['source_shape'])} vs {_shape(e['shape'])}",
                e.get("why", ""),
            )
            for e in self.skipped_shape
        ]
        rows += [
            ("excluded", e["key"], e["source_key"], _shape(e["shape"]), e.get("why", ""))
            for e in self.excluded
        ]
        rows += [
            ("missing", e["key"], "", _shape(e["shape"]), "keeps its current value") for e in self.missing
        ]
        rows += [
            ("kept (index)", e["key"], "", _shape(e["shape"]), "an index the model computes itself")
            for e in self.kept
        ]
        rows += [("unexpected", "", e["key"], _shape(e["shape"]), "not used") for e in self.unexpected]
        if not rows:
            return ""
        return format_table(["status", "model key", "source key", "shape", "note"], rows)

    def mapping_table(self) -> str:
        """Structure matches: the module pairs, in the order they run."""
        from torchsmith.cli._output import format_table

        if not self.mapping:
            return ""
        rows = [
            (i, m["target"] or "(root)", m["source"] or "(root)", m.get("kind", ""), m.get("status", ""))
            for i, m in enumerate(self.mapping)
        ]
        return format_table(["#", "model module", "source module", "type", "status"], rows, "rllll")

    def __str__(self) -> str:
        return self.format()

    def format(self, *, show_loaded: bool = False) -> str:
        """The printed report: summary, notes, the module mapping (structure) and the per-key table."""
        head = f"load_weights from {self.source or '(state_dict)'} (match={self.match})"
        if not self.applied:
            head += " [not applied]"
        out = [f"UNVERIFIED: {self.unverified}"] if self.unverified else []
        out += [head, self.summary()]
        out += [f"note: {n}" for n in self.notes]
        mapping = self.mapping_table()
        if mapping:
            out += ["", mapping]
        table = self.table(show_loaded=show_loaded)
        if table:
            out += ["", table]
        return "\n".join(out)
