"""The reader's value model: the only things a pickle read by torchsmith can turn into.

A pickle is a program; :mod:`~torchsmith.checkpoint.pickle_reader` runs it over a closed set of
values and nothing else:

* plain data: ``None``, bools, ints, floats, complex, str, bytes, bytearray, tuples, lists, dicts,
  ``OrderedDict``, sets, frozensets, slices, ranges, numpy scalars and arrays (decoded as values);
* immutable records made here and by the readers: :class:`~torchsmith.checkpoint._refs.TensorRef`
  and :class:`~torchsmith.checkpoint._refs.StorageRef` (where a tensor's bytes are, frozen once
  made), :class:`DTypeRef`, :class:`DeviceRef`, :class:`StorageTypeRef`, :class:`RefusedTensor`
  (a sparse or quantized tensor the reader names instead of dropping);
* inert stand-ins: :class:`StandIn` (an object of a class that was not imported; it records its
  arguments and state), :class:`StandInCall` (a call that was not made), :class:`BoundMethodRef`;
* :class:`Builder`: the allowlisted callables (``_rebuild_tensor_v2``, ``OrderedDict``...), frozen
  objects that build one of the values above from checked arguments.

No opcode can change a record: the unpickler applies BUILD only to stand-ins, ``OrderedDict``
attributes and numpy values, SETITEM(S)/APPEND(S) only to plain containers and stand-ins. This
module imports nothing of the reader, so ``_numpy_values`` and ``_globals`` can use it without a
circle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torchsmith.checkpoint._refs import ITEMSIZE, StorageRef, TensorRef

__all__ = [
    "BoundMethodRef",
    "Builder",
    "DTypeRef",
    "DeviceRef",
    "RefusedTensor",
    "StandIn",
    "StandInCall",
    "StorageTypeRef",
    "materialised_nbytes",
    "short_repr",
]


class Builder:
    """An allowlisted global: calling it builds a value from checked arguments; it has no state.

    ``fn`` must only build values of this module's closed set; ``allocates`` says whether the call
    can allocate in proportion to an argument (``bytearray(n)``), so the reader charges its budget.
    """

    __slots__ = ("allocates", "fn", "qualname")

    def __init__(self, qualname: str, fn: Callable[..., Any], allocates: bool = False) -> None:
        object.__setattr__(self, "qualname", qualname)
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "allocates", allocates)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{self.qualname} is read-only")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> Any:  # never pickled back out
        raise TypeError(f"{self.qualname} (a reader builder) cannot be pickled")

    def __repr__(self) -> str:
        return f"<{self.qualname} (reader builder)>"


class StandIn:
    """An object of a class the reader did not import. ``_qualname`` names the class it stands for.

    It only records what the pickle gave it (arguments, state, items); nothing it records is ever
    called, opened or imported.
    """

    _qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any):
        # NEWOBJ calls cls.__new__ directly, so the fields are set here rather than in __init__.
        self = object.__new__(cls)
        self._args = args
        self._kwargs = kwargs
        self._state = None
        self._items = []
        self._dict_items = {}
        return self

    def __setstate__(self, state: Any) -> None:
        self._state = state

    # APPENDS / SETITEMS on a stand-in (list and dict subclasses) only record the items.
    def append(self, item: Any) -> None:
        self._items.append(item)

    def extend(self, items: Any) -> None:
        self._items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._dict_items[key] = value

    @property
    def state_dict_like(self) -> dict:
        """The instance's attributes, as pickled (``__dict__`` or the dict part of a (dict, slots) state)."""
        s = self._state
        if isinstance(s, tuple) and len(s) == 2 and isinstance(s[0], dict):
            s = s[0]
        return s if isinstance(s, dict) else {}

    def __repr__(self) -> str:
        return f"<{self._qualname} (not imported)>"


class StandInCall:
    """The recorded result of calling a global that is not a known class, e.g. ``os.system('...')``."""

    __slots__ = ("args", "kwargs", "qualname")

    def __init__(self, qualname: str, args: tuple, kwargs: dict | None = None):
        self.qualname = qualname
        self.args = args
        self.kwargs = kwargs or {}

    def __repr__(self) -> str:
        return f"<call to {self.qualname} (not executed)>"


@dataclass(frozen=True, eq=False)
class BoundMethodRef:
    """``getattr(obj, name)`` as pickled for a bound method, e.g. ``model.state_dict`` (trap 2)."""

    obj: Any
    name: str


@dataclass(frozen=True)
class DTypeRef:
    """A torch dtype named by a pickle (``torch.float32``), by its name after ``torch.``."""

    name: str


@dataclass(frozen=True)
class DeviceRef:
    """A ``torch.device`` named by a pickle."""

    name: str


@dataclass(frozen=True)
class StorageTypeRef:
    """A storage class named by a pickle (``torch.FloatStorage``) and the dtype it holds."""

    dtype: str
    name: str


@dataclass(frozen=True, eq=False)
class RefusedTensor:
    """A tensor torchsmith will not describe as a dense tensor (sparse, quantized): named, not dropped.

    ``kind`` says what it is (``"sparse COO"``, ``"quantized qint8"``); every path that collects
    tensors refuses a file holding one with a :class:`~torchsmith.errors.CheckpointError` naming
    the key and the kind, instead of leaving the entry out.
    """

    kind: str
    shape: tuple[int, ...] = ()
    dtype: str = "?"


def materialised_nbytes(ref: TensorRef | RefusedTensor) -> int:
    """Bytes a tensor occupies once made contiguous: ``numel * itemsize`` from its shape.

    A view's own size, not its storage's: a stride-0 view of 4 bytes with shape ``[2**28]`` costs
    1 GiB when copied, converted or compared. Every budget (reads, ``convert``, ``diff``) charges
    this for a tensor it materialises.

    >>> from torchsmith.checkpoint._refs import StorageRef, TensorRef
    >>> materialised_nbytes(TensorRef(StorageRef("f", 0, 4, "float32"), "float32", (1 << 28,), (0,)))
    1073741824
    """
    if isinstance(ref, RefusedTensor):
        return 0
    return math.prod(max(int(d), 0) for d in ref.shape) * ITEMSIZE.get(ref.dtype, 1)


def short_repr(value: Any, limit: int = 80) -> str:
    """A bounded description of a value for messages: never the repr of a deep or shared structure."""
    if isinstance(value, str | bytes | int | float | bool) or value is None:
        text = repr(value) if not isinstance(value, int) or value.bit_length() < 256 else "<huge int>"
        return text[:limit]
    if isinstance(value, tuple | list):
        inner = ", ".join(short_repr(v, 20) for v in list(value)[:4])
        return f"{type(value).__name__}({inner}{', ...' if len(value) > 4 else ''})"[:limit]
    if isinstance(value, StorageRef | TensorRef):
        return f"<{type(value).__name__}>"
    return f"<{type(value).__name__}>"
