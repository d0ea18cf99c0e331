"""One budget per read: bytes allocated, pickle operations, nesting and time, each with a named limit.

A checkpoint of a few hundred bytes must not become gigabytes or minutes of work. Every read gets
one :class:`ReadBudget`; the pickle reader charges each opcode, each MARK level and each allocating
call to it, and the tensor paths charge what they materialise (a view's size from its shape, see
:func:`~torchsmith.checkpoint._values.materialised_nbytes`). Exceeding any limit raises a
:class:`BudgetExceeded` (a :class:`~torchsmith.errors.CheckpointError`, CLI exit 2) naming the
limit, its value and what was being done. ``convert`` and ``diff`` use the same class for their
outputs.

>>> b = ReadBudget(  # doctest: +ELLIPSIS
...     max_bytes=100, where="x.pt")
>>> b.charge_bytes(60, "a bytearray")
>>> b.charge_bytes(60, "a bytearray")
Traceback (most recent call last):
...
torchsmith.checkpoint._budget.BudgetExceeded: x.pt: read budget exceeded: bytes allocated would reach 120, ...
"""

from __future__ import annotations

import os
import time

from torchsmith.errors import CheckpointError

__all__ = ["BudgetExceeded", "ReadBudget"]

# Defaults, overridable per read and by environment (TORCHSMITH_READ_MAX_BYTES, ...).
DEFAULT_MAX_BYTES = 1 << 30  # allocations a read makes beyond mapping the file
DEFAULT_MAX_OPS = 50_000_000  # pickle opcodes
DEFAULT_MAX_DEPTH = 10_000  # MARK levels / nested containers
DEFAULT_MAX_SECONDS = 300.0


def _env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return type(default)(raw)
    except ValueError:
        raise CheckpointError(f"environment variable {name}={raw!r}: expected a number") from None


class BudgetExceeded(CheckpointError):
    """A read went over one of its limits (bytes allocated, operations, nesting, time)."""


class ReadBudget:
    """Limits for one read, and what has been used so far. All charges are checked immediately."""

    def __init__(
        self,
        *,
        max_bytes: int | None = None,
        max_ops: int | None = None,
        max_depth: int | None = None,
        max_seconds: float | None = None,
        where: str = "",
    ) -> None:
        self.max_bytes = int(
            max_bytes if max_bytes is not None else _env("TORCHSMITH_READ_MAX_BYTES", DEFAULT_MAX_BYTES)
        )
        self.max_ops = int(
            max_ops if max_ops is not None else _env("TORCHSMITH_READ_MAX_OPS", DEFAULT_MAX_OPS)
        )
        self.max_depth = int(max_depth if max_depth is not None else DEFAULT_MAX_DEPTH)
        self.max_seconds = float(
            max_seconds
            if max_seconds is not None
            else _env("TORCHSMITH_READ_MAX_SECONDS", DEFAULT_MAX_SECONDS)
        )
        self.where = where
        self.bytes = 0
        self.ops = 0
        self.start = time.monotonic()

    def _exceeded(self, what: str, value: float, limit: float, doing: str) -> BudgetExceeded:
        prefix = f"{self.where}: " if self.where else ""
        return BudgetExceeded(
            f"{prefix}read budget exceeded: {what} would reach {value}, over the limit of {limit}"
            + (f" ({doing})" if doing else "")
        )

    def charge_bytes(self, n: int, doing: str = "") -> None:
        """Count ``n`` bytes about to be (or just) allocated; refuse past ``max_bytes``."""
        if n > 0:
            if self.bytes + n > self.max_bytes:
                raise self._exceeded("bytes allocated", self.bytes + n, self.max_bytes, doing)
            self.bytes += n

    def tick(self, ops: int = 1) -> None:
        """Count ``ops`` pickle operations and check the clock."""
        self.ops += ops
        if self.ops > self.max_ops:
            raise self._exceeded("pickle operations", self.ops, self.max_ops, "")
        elapsed = time.monotonic() - self.start
        if elapsed > self.max_seconds:
            raise self._exceeded("seconds", round(elapsed, 1), self.max_seconds, "")

    def check_depth(self, depth: int, doing: str = "nesting") -> None:
        """Refuse nesting deeper than ``max_depth``."""
        if depth > self.max_depth:
            raise self._exceeded("nesting depth", depth, self.max_depth, doing)
