"""Small helpers shared by the commands: JSON, aligned tables, human-readable sizes, KEY=VALUE args."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def print_json(obj: Any) -> None:
    """Write ``obj`` as indented JSON on stdout (what ``--json`` prints)."""
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def error_json(message: str, kind: str, exit_code: int, details: Any = None) -> None:
    """What ``--json`` prints when a command fails: ``{"error", "kind", "exit_code"}`` (+ ``details``).

    ``kind`` is the error's class (``"CheckpointError"``, ``"TransferError"``...), ``"usage"`` for a
    command line argparse refused, ``"internal"`` for a bug, ``"interrupted"`` for Ctrl-C. The
    message is also written to stderr, as without ``--json``.
    """
    obj: dict[str, Any] = {"error": message, "kind": kind, "exit_code": exit_code}
    if details:
        obj["details"] = details
    print_json(obj)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """An aligned plain-text table. ``align`` has one letter per column, ``l`` or ``r``."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" * len(headers)

    def line(row: Sequence[str]) -> str:
        parts = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align)]
        return "  ".join(parts).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_shape(text: str, what: str = "--input-shape") -> tuple[int, ...]:
    """'1,3,224,224' -> (1, 3, 224, 224); raises InputError naming ``what`` otherwise."""
    from torchsmith.errors import InputError

    try:
        # "1,3,224,224" or "1x3x224x224"; an empty part ("1,,3", "1,3,x") is an error, not skipped.
        shape = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise InputError(
            f"{what}: expected positive integers separated by commas, like 1,3,224,224; got {text!r}"
        )
    return shape


def model_kwargs(items: list[str]) -> dict:
    """``--arg KEY=VALUE`` items as a dict of model arguments, each value read as YAML."""
    import yaml

    from torchsmith.errors import InputError

    kwargs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--arg: expected KEY=VALUE, like num_classes=10; got {item!r}")
        try:
            kwargs[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise InputError(
                f"--arg {key}: cannot read value {value!r}: {' '.join(str(e).split())}"
            ) from None
    return kwargs
