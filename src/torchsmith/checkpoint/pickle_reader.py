"""A restricted unpickler that reads torch pickles without torch and without running anything.

``pickle.load`` imports whatever the file names and calls it: a checkpoint can run ``os.system``,
and a whole-model pickle fails with ``No module named 'models'`` once the defining code is gone
(seed trap 13). This reader resolves only a short list of harmless names (containers, torch's
tensor-rebuild functions, dtypes) to local stand-ins that *describe* tensors
(:class:`~torchsmith.checkpoint._refs.TensorRef`) instead of loading them. Every other global
becomes a :class:`StandIn` class named after it: nothing is imported, and "calling" it only records
the call, so the file's tensors can be rescued and its classes reported, and code never runs.

>>> import io, pickle, collections
>>> dict(read_pickle(io.BytesIO(pickle.dumps(collections.OrderedDict(a=1)))).obj)
{'a': 1}
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torchsmith.checkpoint._numpy_values import numpy_global
from torchsmith.checkpoint._refs import ITEMSIZE, STORAGE_DTYPES, StorageRef, TensorRef

__all__ = [
    "BoundMethodRef",
    "PickleResult",
    "StandIn",
    "StandInCall",
    "find_modules",
    "module_state",
    "read_pickle",
]


class StandIn:
    """An object of a class the reader did not import. ``_qualname`` names the class it stands for."""

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

    def __init__(self, qualname: str, args: tuple, kwargs: dict | None = None):
        self.qualname = qualname
        self.args = args
        self.kwargs = kwargs or {}

    def __repr__(self) -> str:
        return f"<call to {self.qualname} (not executed)>"


@dataclass
class BoundMethodRef:
    """``getattr(obj, name)`` as pickled for a bound method, e.g. ``model.state_dict`` (trap 2)."""

    obj: Any
    name: str


@dataclass
class DTypeRef:
    name: str


@dataclass
class DeviceRef:
    name: str


@dataclass
class StorageTypeRef:
    dtype: str
    name: str


@dataclass
class PickleResult:
    """What :func:`read_pickle` found: the object and every global the file named."""

    obj: Any
    globals_named: set[str] = field(default_factory=set)
    stand_ins: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)


def _rebuild_tensor(storage, storage_offset, size, stride, *args):
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError(f"tensor storage is a {type(storage).__name__}, not a storage")
    return TensorRef(
        storage,
        storage.dtype,
        tuple(int(s) for s in size),
        tuple(int(s) for s in stride),
        int(storage_offset),
        requires_grad=bool(args[0]) if args else False,
    )


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype, *rest):
    ref = _rebuild_tensor(storage, storage_offset, size, stride, requires_grad)
    if isinstance(dtype, DTypeRef):
        ref.dtype = dtype.name
    return ref


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    if isinstance(data, TensorRef):
        data.is_parameter = True
        data.requires_grad = bool(requires_grad)
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args) if callable(func) else StandInCall("torch._tensor._rebuild_from_type_v2", args)


def _safe_getattr(obj, name, *default):
    return BoundMethodRef(obj, str(name))


def _reconstructor(cls, base, state=None):
    obj = StandIn.__new__(cls) if isinstance(cls, type) and issubclass(cls, StandIn) else StandIn()
    obj._args = (base, state)
    return obj


# Allowed constructors that allocate are size-checked: a 34-byte pickle calling bytearray(2**30)
# or list(range(10**9)) must fail, not allocate gigabytes.
MAX_ALLOC_BYTES = 64 << 20
MAX_ALLOC_ITEMS = 4 << 20


def _sized(fn: Callable[..., Any]) -> Callable[..., Any]:
    name = fn.__name__

    def build(*args: Any, **kwargs: Any) -> Any:
        if args:
            a = args[0]
            if fn in (bytes, bytearray) and isinstance(a, int) and a > MAX_ALLOC_BYTES:
                raise pickle.UnpicklingError(f"{name}({a}) would allocate more than {MAX_ALLOC_BYTES} bytes")
            if isinstance(a, range) and len(a) > MAX_ALLOC_ITEMS:
                raise pickle.UnpicklingError(
                    f"{name}() of a range of {len(a)} items (limit {MAX_ALLOC_ITEMS})"
                )
            if fn is str and not isinstance(a, (str, bytes, bytearray, int, float, bool)) and a is not None:
                # str() of a shared nested structure grows exponentially with its depth.
                raise pickle.UnpicklingError(f"str() of a {type(a).__name__} is not allowed in a checkpoint")
        return fn(*args, **kwargs)

    build.__name__ = name
    return build


_SAFE: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "dict"): dict,
    ("builtins", "list"): _sized(list),
    ("builtins", "tuple"): _sized(tuple),
    ("builtins", "set"): _sized(set),
    ("builtins", "frozenset"): _sized(frozenset),
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "complex"): complex,
    ("builtins", "bool"): bool,
    ("builtins", "str"): _sized(str),
    ("builtins", "bytes"): _sized(bytes),
    ("builtins", "bytearray"): _sized(bytearray),
    ("builtins", "slice"): slice,
    ("builtins", "range"): range,
    ("builtins", "getattr"): _safe_getattr,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): tuple,
    ("torch", "device"): lambda *a: DeviceRef(":".join(str(x) for x in a)),
}


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    # Protocol 2 pickles bytes as _codecs.encode(str, 'latin1'); only text codecs are allowed.
    if not isinstance(text, str) or str(encoding).lower().replace("-", "") not in ("latin1", "utf8", "ascii"):
        return StandInCall("_codecs.encode", (text, encoding))
    return text.encode(encoding, errors)


_SAFE[("_codecs", "encode")] = _codecs_encode


def is_known_safe(qualname: str) -> bool:
    """Whether the reader resolves global ``qualname`` itself (a container, dtype, tensor rebuild...)."""
    module, _, name = qualname.rpartition(".")
    return (module, name) in _SAFE or (module == "torch" and (name in ITEMSIZE or name in STORAGE_DTYPES))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, persistent_load: Callable[[Any], Any] | None, result: PickleResult):
        super().__init__(file, encoding="latin1")
        self._persistent = persistent_load
        self._result = result
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Protocol < 3 writes Python 2 names (__builtin__.set, copy_reg._reconstructor).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualname = f"{module}.{name}"
        self._result.globals_named.add(qualname)
        safe = _SAFE.get((module, name))
        if safe is not None:
            return safe
        if module == "torch" and name in ITEMSIZE:
            return DTypeRef(name)
        if module in ("torch", "torch.storage") and name in STORAGE_DTYPES:
            # UntypedStorage counts bytes; the tensor's dtype comes from _rebuild_tensor_v3's argument.
            return StorageTypeRef(STORAGE_DTYPES[name], name)
        if module == "numpy" or module.startswith("numpy."):
            value = numpy_global(module, name)
            if value is not None:
                return value
        return self._stand_in(qualname, name)

    def _stand_in(self, qualname: str, name: str) -> type:
        cls = self._classes.get(qualname)
        if cls is None:
            result = self._result

            class _Meta(type):
                # Calling a stand-in (REDUCE) records the call instead of running anything.
                def __call__(cls, *args, **kwargs):
                    result.calls.append(qualname)
                    if args and isinstance(args[0], type) and issubclass(args[0], StandIn):
                        # copyreg.__newobj__-style helpers: make an instance of the class they name.
                        return StandIn.__new__(args[0])
                    return StandInCall(qualname, args, kwargs)

            cls = _Meta(name, (StandIn,), {"_qualname": qualname, "__module__": __name__})
            self._classes[qualname] = cls
            self._result.stand_ins.add(qualname)
        return cls

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise pickle.UnpicklingError("persistent id in a plain pickle")
        return self._persistent(pid)


def read_pickle(file: io.IOBase, persistent_load: Callable[[Any], Any] | None = None) -> PickleResult:
    """Unpickle one object from ``file`` with the restricted reader.

    ``persistent_load`` resolves torch's storage ids to :class:`StorageRef` objects. Raises
    ``pickle.UnpicklingError`` (or another exception) for malformed data; callers turn it into a
    :class:`~torchsmith.errors.CheckpointError` naming the file.
    """
    result = PickleResult(obj=None)
    try:
        result.obj = _Unpickler(file, persistent_load, result).load()
    except MemoryError:
        # A counted opcode (BYTEARRAY8, BINBYTES8) allocates its stated length before it reads; a
        # length no memory holds fails here. Smaller false claims fail as truncated, pages untouched.
        raise pickle.UnpicklingError("a length field claims more bytes than the file holds") from None
    return result


def storage_from_pid(pid: Any) -> tuple[str, str, str, int]:
    """Parse torch's persistent id ``('storage', storage_type, key, location, numel, ...)``.

    Returns ``(key, dtype, location, numel)``; ``numel`` counts elements of ``dtype``.
    """
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
    storage_type, key, location, numel = pid[1], pid[2], pid[3], pid[4]
    if isinstance(storage_type, StorageTypeRef):
        dtype = storage_type.dtype
    elif isinstance(storage_type, DTypeRef):
        dtype = storage_type.name
    else:
        raise pickle.UnpicklingError(f"unknown storage type {storage_type!r:.80}")
    if not isinstance(numel, int) or numel < 0:
        raise pickle.UnpicklingError(f"bad storage size {numel!r:.80}")
    return str(key), dtype, str(location), numel


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
    """
    tensors: dict[str, TensorRef] = {}
    classes: list[str] = []
    seen: set[int] = set()

    def walk(m: Any, pre: str) -> None:
        state = module_state(m)
        if state is None or id(m) in seen:
            return
        seen.add(id(m))
        if m._qualname not in classes:
            classes.append(m._qualname)
        skip = state.get("_non_persistent_buffers_set") or set()
        for name, t in state.get("_parameters", {}).items():
            if isinstance(t, TensorRef):
                tensors[pre + str(name)] = t
        for name, t in (state.get("_buffers") or {}).items():
            if isinstance(t, TensorRef) and name not in skip:
                tensors[pre + str(name)] = t
        for name, child in state.get("_modules", {}).items():
            if child is not None:
                walk(child, f"{pre}{name}.")

    walk(obj, prefix)
    return tensors, classes
