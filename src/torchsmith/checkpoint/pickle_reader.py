"""A restricted unpickler that reads torch pickles without torch and without running anything.

``pickle.load`` imports whatever the file names and calls it: a checkpoint can run ``os.system``,
and a whole-model pickle fails with ``No module named 'models'`` once the defining code is gone
(seed trap 13). This reader runs the pickle program over a closed set of values
(:mod:`~torchsmith.checkpoint._values`), opcode by opcode, and decides every global with one table
(:mod:`~torchsmith.checkpoint._globals`):

* allowlisted globals are :class:`~torchsmith.checkpoint._values.Builder` objects that check their
  arguments and build plain values or frozen tensor records;
* dangerous globals (code execution, nested load, file, network, process) make the whole read fail
  with a :class:`DangerousPickle` naming each one and its class; nothing of them runs;
* every other global becomes an inert :class:`StandIn` class named after it: nothing is imported,
  "calling" it only records the call, so a whole model's tensors can be rescued.

By construction: REDUCE/NEWOBJ/INST/OBJ call only Builders and stand-in classes; BUILD applies only
to stand-ins, an ``OrderedDict``'s ``_metadata`` and numpy values; SETITEM(S)/APPEND(S)/ADDITEMS only
to plain dicts, lists, sets and stand-ins; dict keys and set elements must be cheap to hash;
extension codes and out-of-band buffers are refused. Tensor storages come only from the
``persistent_load`` the archive reader passes (its own member table). Every opcode, MARK level and
allocating call is charged to the read's :class:`~torchsmith.checkpoint._budget.ReadBudget`.

>>> import io, pickle, collections
>>> dict(read_pickle(io.BytesIO(pickle.dumps(collections.OrderedDict(a=1)))).obj)
{'a': 1}
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import io
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torchsmith.checkpoint._budget import BudgetExceeded, ReadBudget
from torchsmith.checkpoint._globals import classify, resolve
from torchsmith.checkpoint._refs import ITEMSIZE, TensorRef
from torchsmith.checkpoint._tensor_builders import MAX_ALLOC_BYTES, check_hashable
from torchsmith.checkpoint._values import (
    BoundMethodRef,
    Builder,
    DeviceRef,
    DTypeRef,
    RefusedTensor,
    StandIn,
    StandInCall,
    StorageTypeRef,
    short_repr,
)
from torchsmith.errors import CheckpointError

__all__ = [
    "BoundMethodRef",
    "DTypeRef",
    "DangerousPickle",
    "DeviceRef",
    "PickleResult",
    "RefusedTensor",
    "StandIn",
    "StandInCall",
    "StorageTypeRef",
    "find_modules",
    "is_known_safe",
    "module_state",
    "read_pickle",
    "storage_from_pid",
]

# The codecs text opcodes decode with, looked up now: a lazy lookup during a read would import.
for _codec in ("raw_unicode_escape", "latin1", "ascii", "utf-8"):
    codecs.lookup(_codec)

# A text opcode's line (GLOBAL module and name, INT, PERSID...) is at most this long.
_MAX_LINE = 1 << 16
# Nested module stand-ins deeper than this are not a model (find_modules walks them).
_MAX_MODULE_DEPTH = 1000


@dataclass
class PickleResult:
    """What :func:`read_pickle` found: the object and every global the file named."""

    obj: Any
    globals_named: set[str] = field(default_factory=set)
    stand_ins: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    dangerous: dict[str, str] = field(default_factory=dict)  # qualname -> danger class


class DangerousPickle(CheckpointError):
    """A pickle names globals that can run code, load other files or reach files, network or process.

    ``globals_named`` lists every global the pickle named (for ``inspect``'s verdict) and
    ``dangerous`` maps each dangerous one to its class.
    """

    def __init__(self, message: str, globals_named: set[str], dangerous: dict[str, str]) -> None:
        super().__init__(message)
        self.globals_named = set(globals_named)
        self.dangerous = dict(dangerous)


def _dangerous_message(where: str, dangerous: dict[str, str]) -> str:
    named = ", ".join(f"{q} ({c})" for q, c in sorted(dangerous.items())[:5])
    return (
        f"{where}: refused: unpickling this file would call {named}; nothing was executed. A training "
        "script never writes such a call: treat the whole file as hostile (no torch.load, pickle or "
        "other unpickling tool), whatever else it holds; 'torchsmith inspect' lists every call it names"
    )


class _Source:
    """The pickle bytes, read only within what the file holds (a length field cannot over-read)."""

    def __init__(self, file: Any, limit: int | None) -> None:
        self._file = file
        if limit is None:
            try:
                pos = file.tell()
                file.seek(0, io.SEEK_END)
                limit = file.tell() - pos
                file.seek(pos)
            except (OSError, AttributeError, ValueError):
                limit = 1 << 62
        self.left = limit

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            raise pickle.UnpicklingError("a length field claims more bytes than the file holds")
        data = self._file.read(n)
        if len(data) != n:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.left -= n
        return data

    def readline(self) -> bytes:
        line = self._file.readline(min(self.left, _MAX_LINE))
        if not line.endswith(b"\n"):
            raise pickle.UnpicklingError("a text opcode's line is unterminated or too long")
        self.left -= len(line)
        return line

    def readinto(self, buf: Any) -> int:  # pragma: no cover - only protocol 5 buffers, refused
        raise pickle.UnpicklingError("out-of-band buffers are not read")


def _approx_nbytes(v: Any) -> int:
    if isinstance(v, bytes | bytearray | str):
        return len(v)
    if isinstance(v, list | tuple | set | frozenset | dict):
        return 8 * len(v) + 64
    nbytes = getattr(v, "nbytes", None)  # numpy arrays
    return nbytes if type(nbytes) is int else 64


def _requested_nbytes(args: tuple) -> int:
    a = args[0] if args else None
    if type(a) is int:
        return max(a, 0)
    if type(a) is range:
        return 8 * max(len(a), 0) if a.step else 0
    return 0


def _is_standin_class(v: Any) -> bool:
    return isinstance(v, type) and issubclass(v, StandIn)


class _Unpickler(pickle._Unpickler):  # the pure-Python unpickler: its dispatch table is ours to set
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(
        self,
        file: Any,
        persistent_load: Callable[[Any], Any] | None,
        result: PickleResult,
        budget: ReadBudget,
        limit: int | None,
    ) -> None:
        self._memory = file if isinstance(file, io.BytesIO) and limit is None else None
        self._src = _Source(file, limit)
        super().__init__(self._src, encoding="latin1")
        self._persistent = persistent_load
        self._result = result
        self._budget = budget
        self._classes: dict[str, type] = {}

    def load(self) -> Any:
        if self._memory is not None:
            # Bytes already in memory (a zip's data.pkl): read straight from them. A short read
            # (a length past the end) leaves the stream at its end, so the next opcode read finds
            # nothing and the read fails as truncated; frames are contiguous, so FRAME is skipped.
            self.read = self._memory.read
            self.readline = self._memory.readline
        else:
            self._unframer = pickle._Unframer(self._src.read, self._src.readline)
            self.read = self._unframer.read
            self.readline = self._unframer.readline
        self.readinto = self._src.readinto
        self.metastack = []
        self.stack = []
        self.append = self.stack.append
        self.proto = 0
        read, dispatch, budget = self.read, self.dispatch, self._budget
        n = 0
        try:
            while True:
                key = read(1)
                if not key:
                    raise pickle.UnpicklingError("pickle data was truncated")
                n += 1
                if n >= 4096:
                    budget.tick(n)
                    n = 0
                dispatch[key[0]](self)  # an unknown opcode: KeyError, refused like any malformed pickle
        except pickle._Stop as stop:
            budget.tick(n)
            return stop.value

    # -- globals ------------------------------------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:
        # Protocol < 3 writes Python 2 names (__builtin__.set, copy_reg._reconstructor).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualname = f"{module}.{name}"
        if len(qualname) > 512:
            raise pickle.UnpicklingError(f"a global name of {len(qualname)} characters")
        self._result.globals_named.add(qualname)
        verdict = classify(qualname)
        if verdict.verdict == "known-safe":
            return resolve(qualname)
        if verdict.verdict == "dangerous":
            self._result.dangerous[qualname] = verdict.danger or "code execution"
        return self._stand_in(qualname, name)

    def _stand_in(self, qualname: str, name: str) -> type:
        cls = self._classes.get(qualname)
        if cls is None:
            result = self._result

            class _Meta(type):
                # Calling a stand-in (REDUCE) records the call instead of running anything.
                def __call__(cls, *args, **kwargs):
                    result.calls.append(qualname)
                    if args and _is_standin_class(args[0]):
                        # copyreg.__newobj__-style helpers: make an instance of the class they name.
                        return StandIn.__new__(args[0])
                    return StandInCall(qualname, args, kwargs)

            cls = _Meta(name, (StandIn,), {"_qualname": qualname, "__module__": __name__})
            self._classes[qualname] = cls
            self._result.stand_ins.add(qualname)
        return cls

    # -- calls --------------------------------------------------------------------------------
    def _call(self, func: Any, args: Any, kwargs: dict | None = None) -> Any:
        if type(args) is not tuple:
            raise pickle.UnpicklingError(f"call arguments are a {type(args).__name__}, not a tuple")
        if type(func) is Builder:
            if kwargs:
                raise pickle.UnpicklingError(f"{func.qualname} called with keyword arguments")
            if not func.allocates:
                return func(*args)
            # Charged before the call from what the arguments ask for (bytearray(n), list(range(n))),
            # then for whatever more the result holds.
            doing = f"a call to {func.qualname}"
            before = _requested_nbytes(args)
            self._budget.charge_bytes(before, doing)
            value = func(*args)
            self._budget.charge_bytes(_approx_nbytes(value) - before, doing)
            return value
        if _is_standin_class(func):
            return func(*args, **(kwargs or {}))
        raise pickle.UnpicklingError(f"the pickle calls a {type(func).__name__}, not an allowlisted global")

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        stack[-1] = self._call(stack[-1], args)

    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if not _is_standin_class(cls) or type(args) is not tuple:
            raise pickle.UnpicklingError(f"NEWOBJ of a {type(cls).__name__}, not of a stand-in class")
        self.append(StandIn.__new__(cls, *args))

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if not _is_standin_class(cls) or type(args) is not tuple or type(kwargs) is not dict:
            raise pickle.UnpicklingError(f"NEWOBJ_EX of a {type(cls).__name__}, not of a stand-in class")
        self.append(StandIn.__new__(cls, *args, **{str(k): v for k, v in kwargs.items()}))

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def _instantiate(self, klass: Any, args: list) -> None:  # INST and OBJ
        if _is_standin_class(klass):
            self.append(StandIn.__new__(klass, *args))
        else:
            self.append(self._call(klass, tuple(args)))

    def _refuse(self) -> None:
        raise pickle.UnpicklingError("extension codes and out-of-band buffers are not read")

    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4, pickle.NEXT_BUFFER, pickle.READONLY_BUFFER):
        dispatch[_op[0]] = _refuse

    # -- state and items ----------------------------------------------------------------------
    def load_build(self) -> None:
        stack = self.stack
        state = stack.pop()
        inst = stack[-1]
        if isinstance(inst, StandIn):
            inst.__setstate__(state)
        elif type(inst) is collections.OrderedDict:
            # torch's Module.state_dict() carries _metadata (module versions); nothing else is set.
            if type(state) is not dict or not all(type(k) is str for k in state):
                raise pickle.UnpicklingError("OrderedDict state is not a dict of attribute names")
            if "_metadata" in state:
                inst._metadata = state["_metadata"]
        elif (type(inst).__module__ == "numpy" and type(inst).__name__ in ("ndarray", "dtype")) or (
            type(inst).__module__.startswith("numpy") and type(inst).__name__.endswith("DType")
        ):
            self._numpy_state(inst, state)
        else:
            raise pickle.UnpicklingError(f"BUILD on a {type(inst).__name__}: only stand-ins and plain values")

    dispatch[pickle.BUILD[0]] = load_build

    def _numpy_state(self, inst: Any, state: Any) -> None:
        if type(inst).__name__ == "ndarray":
            if type(state) is not tuple or len(state) != 5 or type(state[1]) is not tuple:
                raise pickle.UnpicklingError(
                    "numpy array state is not (version, shape, dtype, fortran, data)"
                )
            itemsize = getattr(state[2], "itemsize", 1)
            n = itemsize if type(itemsize) is int else 1
            for d in state[1]:
                if type(d) is not int or d < 0:
                    raise pickle.UnpicklingError("numpy array shape is not a tuple of sizes")
                n *= d
                if n > MAX_ALLOC_BYTES:
                    raise pickle.UnpicklingError(
                        f"a numpy array of more than {MAX_ALLOC_BYTES} bytes (limit)"
                    )
            self._budget.charge_bytes(n, "a numpy array")
        inst.__setstate__(state)

    def _set_items(self, target: Any, items: list) -> None:
        if isinstance(target, StandIn):
            for i in range(0, len(items) - 1, 2):
                target[items[i]] = items[i + 1]
        elif type(target) in (dict, collections.OrderedDict, collections.Counter):
            for i in range(0, len(items) - 1, 2):
                key = items[i]
                target[key if type(key) is str else check_hashable(key)] = items[i + 1]
        else:
            raise pickle.UnpicklingError(f"SETITEM on a {type(target).__name__}: only dicts and stand-ins")
        if len(items) % 2:
            raise pickle.UnpicklingError("SETITEMS with an odd number of items")

    def load_setitem(self) -> None:
        stack = self.stack
        value = stack.pop()
        key = stack.pop()
        self._set_items(stack[-1], [key, value])

    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._set_items(self.stack[-1], items)

    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_dict(self) -> None:
        items = self.pop_mark()
        d: dict = {}
        self._set_items(d, items)
        self.append(d)

    dispatch[pickle.DICT[0]] = load_dict

    def _append(self, target: Any, items: list) -> None:
        if type(target) is list or isinstance(target, StandIn):
            target.extend(items)
        else:
            raise pickle.UnpicklingError(f"APPEND on a {type(target).__name__}: only lists and stand-ins")

    def load_append(self) -> None:
        value = self.stack.pop()
        self._append(self.stack[-1], [value])

    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._append(self.stack[-1], items)

    dispatch[pickle.APPENDS[0]] = load_appends

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise pickle.UnpicklingError(f"ADDITEMS on a {type(target).__name__}: only sets")
        for x in items:
            target.add(check_hashable(x))

    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_frozenset(self) -> None:
        items = self.pop_mark()
        self.append(frozenset(check_hashable(x) for x in items))

    dispatch[pickle.FROZENSET[0]] = load_frozenset

    def load_mark(self) -> None:
        self.metastack.append(self.stack)
        self._budget.check_depth(len(self.metastack), "MARK levels")
        self.stack = []
        self.append = self.stack.append

    dispatch[pickle.MARK[0]] = load_mark

    def load_frame(self) -> None:
        (size,) = struct.unpack("<Q", self.read(8))
        if self._memory is None:
            self._unframer.load_frame(size)
        elif size > len(self._memory.getbuffer()) - self._memory.tell():
            raise pickle.UnpicklingError("a frame claims more bytes than the pickle holds")

    dispatch[pickle.FRAME[0]] = load_frame

    def load_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        self.append(bytearray(self.read(n)))

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    # -- storages -----------------------------------------------------------------------------
    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise pickle.UnpicklingError("persistent id in a plain pickle")
        return self._persistent(pid)

    def load_persid(self) -> None:
        try:
            pid = self.readline()[:-1].decode("ascii")
        except UnicodeDecodeError:
            raise pickle.UnpicklingError("persistent IDs in protocol 0 must be ASCII strings") from None
        self.append(self.persistent_load(pid))

    dispatch[pickle.PERSID[0]] = load_persid

    def load_binpersid(self) -> None:
        self.append(self.persistent_load(self.stack.pop()))

    dispatch[pickle.BINPERSID[0]] = load_binpersid
    del _op


def read_pickle(
    file: Any,
    persistent_load: Callable[[Any], Any] | None = None,
    *,
    budget: ReadBudget | None = None,
    where: str = "pickle",
    limit: int | None = None,
) -> PickleResult:
    """Unpickle one object from ``file`` with the restricted reader.

    ``persistent_load`` resolves torch's storage ids to storage records of the archive; ``budget``
    bounds the work (a fresh default budget when None); ``limit`` is how many bytes the pickle may
    span from the current position (default: to the end of ``file``). Raises
    :class:`DangerousPickle` when the pickle names a dangerous global (even when it is otherwise
    broken), :class:`~torchsmith.checkpoint._budget.BudgetExceeded` past a limit, and
    ``pickle.UnpicklingError`` (or another exception) for malformed data; callers turn the latter
    into a :class:`~torchsmith.errors.CheckpointError` naming the file.
    """
    result = PickleResult(obj=None)
    budget = budget if budget is not None else ReadBudget(where=where)
    try:
        result.obj = _Unpickler(file, persistent_load, result, budget, limit).load()
    except BudgetExceeded:
        if result.dangerous:
            raise DangerousPickle(
                _dangerous_message(where, result.dangerous), result.globals_named, result.dangerous
            ) from None
        raise
    except CheckpointError:
        raise
    except RecursionError:
        raise pickle.UnpicklingError("nesting too deep") from None
    except MemoryError:
        raise pickle.UnpicklingError("a length field claims more bytes than the file holds") from None
    except Exception:
        if result.dangerous:
            raise DangerousPickle(
                _dangerous_message(where, result.dangerous), result.globals_named, result.dangerous
            ) from None
        raise
    if result.dangerous:
        raise DangerousPickle(
            _dangerous_message(where, result.dangerous), result.globals_named, result.dangerous
        )
    return result


def is_known_safe(qualname: str) -> bool:
    """Whether the reader resolves global ``qualname`` itself (a container, dtype, tensor rebuild...)."""
    return classify(qualname).verdict == "known-safe"


def storage_from_pid(pid: Any) -> tuple[str, str, str, int]:
    """Parse torch's persistent id ``('storage', storage_type, key, location, numel, ...)``.

    Returns ``(key, dtype, location, numel)``; ``numel`` counts elements of ``dtype``.
    """
    if not (type(pid) is tuple and len(pid) >= 5 and type(pid[0]) is str and pid[0] == "storage"):
        raise pickle.UnpicklingError(f"unexpected persistent id {short_repr(pid)}")
    storage_type, key, location, numel = pid[1], pid[2], pid[3], pid[4]
    if isinstance(storage_type, StorageTypeRef):
        dtype = storage_type.dtype
    elif isinstance(storage_type, DTypeRef):
        dtype = storage_type.name
    else:
        raise pickle.UnpicklingError(f"unknown storage type {short_repr(storage_type)}")
    if dtype not in ITEMSIZE:
        raise pickle.UnpicklingError(f"unknown storage dtype {dtype!r}")
    if type(key) is not str or not 0 < len(key) <= 256:
        raise pickle.UnpicklingError(f"storage key {short_repr(key)} is not a short string")
    if type(location) is not str or len(location) > 64:
        raise pickle.UnpicklingError(f"storage location {short_repr(location)} is not a short string")
    if type(numel) is not int or numel < 0:
        raise pickle.UnpicklingError(f"bad storage size {short_repr(numel)}")
    return key, dtype, location, numel


def module_state(obj: Any) -> dict | None:
    """The pickled ``__dict__`` of an ``nn.Module`` stand-in, or None when ``obj`` is not one."""
    if not isinstance(obj, StandIn):
        return None
    state = obj.state_dict_like
    if isinstance(state.get("_parameters"), dict) and isinstance(state.get("_modules"), dict):
        return state
    return None


def find_modules(obj: Any, prefix: str = "") -> tuple[dict[str, TensorRef], list[str]]:
    """The state dict of a pickled module stand-in: its parameters and persistent buffers, by dotted key.

    Returns ``(tensors, class_names)``; ``class_names`` lists the module classes met, outermost first.
    Sparse or quantized entries appear as :class:`RefusedTensor` (callers refuse them by name).
    """
    tensors: dict[str, Any] = {}
    classes: list[str] = []
    seen: set[int] = set()
    # Iterative (a pickle can nest module stand-ins deeper than Python's recursion limit).
    todo: list[tuple[Any, str, int]] = [(obj, prefix, 0)]
    while todo:
        m, pre, depth = todo.pop()
        state = module_state(m)
        if state is None or id(m) in seen:
            continue
        if depth > _MAX_MODULE_DEPTH:
            raise CheckpointError(f"modules nested more than {_MAX_MODULE_DEPTH} deep: not a model")
        seen.add(id(m))
        if m._qualname not in classes:
            classes.append(m._qualname)
        skip = state.get("_non_persistent_buffers_set") or set()
        for name, t in state.get("_parameters", {}).items():
            if isinstance(t, TensorRef | RefusedTensor):
                tensors[pre + str(name)] = t
        buffers = state.get("_buffers")
        for name, t in buffers.items() if isinstance(buffers, dict) else ():
            if isinstance(t, TensorRef | RefusedTensor) and not (
                isinstance(skip, set | frozenset) and name in skip
            ):
                tensors[pre + str(name)] = t
        children = [(n, c) for n, c in state.get("_modules", {}).items() if c is not None]
        for name, child in reversed(
            children
        ):  # popped in order: keys come out as Module.state_dict() has them
            todo.append((child, f"{pre}{name}.", depth + 1))
    return tensors, classes
