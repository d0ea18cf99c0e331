"""What each allowlisted global builds, with its arguments checked (used by ``_globals.ALLOWED``).

Each function takes what a pickle passes and returns a value of the reader's closed set
(:mod:`~torchsmith.checkpoint._values`) or raises ``pickle.UnpicklingError`` naming what was wrong.
Tensor rebuilds make frozen :class:`~torchsmith.checkpoint._refs.TensorRef` records over a
:class:`~torchsmith.checkpoint._refs.StorageRef` that only the archive's reader can make; sparse,
quantized and other non-dense tensors become a :class:`~torchsmith.checkpoint._values.RefusedTensor`
that names them (a file holding one is refused, never read with the entry left out).
"""

from __future__ import annotations

import collections
import dataclasses
import pickle
from collections.abc import Callable
from typing import Any

from torchsmith.checkpoint._refs import StorageRef, TensorRef
from torchsmith.checkpoint._values import (
    BoundMethodRef,
    DeviceRef,
    DTypeRef,
    RefusedTensor,
    StandIn,
    StandInCall,
    short_repr,
)

__all__ = ["MAX_ALLOC_BYTES", "MAX_ALLOC_ITEMS", "check_hashable"]

# One allocating call may make at most this much; the read's budget bounds all calls together.
MAX_ALLOC_BYTES = 64 << 20
MAX_ALLOC_ITEMS = 4 << 20
# Hashing a tuple walks it (CPython does not cache tuple hashes): a key made of shared nested tuples
# costs 2**depth. Keys and set elements are limited to small, shallow tuples.
_MAX_KEY_NODES = 256
_MAX_KEY_DEPTH = 8
_LAYOUTS = {f"torch.sparse_{x.lower()}": f"sparse {x}" for x in ("COO", "CSR", "CSC", "BSR", "BSC")}


def _bad(msg: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(msg)


_ATOMS = frozenset({str, int, float, bool, bytes, type(None), complex})


def check_hashable(value: Any) -> Any:
    """``value`` when it is cheap to hash and compare (a dict key or set element), else refuse."""
    if type(value) in _ATOMS:
        return value
    budget = [_MAX_KEY_NODES]

    def walk(v: Any, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0 or depth > _MAX_KEY_DEPTH:
            raise _bad(f"a dict key or set element nested deeper or larger than {_MAX_KEY_NODES} items")
        if type(v) in (tuple, frozenset):
            for x in v:
                walk(x, depth + 1)
        elif isinstance(v, list | dict | set | bytearray):
            raise _bad(f"a {type(v).__name__} used as a dict key or set element")

    if type(value) in (tuple, frozenset):
        walk(value, 0)
    elif isinstance(value, list | dict | set | bytearray):
        raise _bad(f"a {type(value).__name__} used as a dict key or set element")
    return value


def _ints(v: Any, what: str) -> tuple[int, ...]:
    if type(v) not in (tuple, list) or len(v) > 64 or not all(type(x) is int for x in v):
        raise _bad(f"tensor {what} is {short_repr(v)}, not a tuple of at most 64 ints")
    return tuple(v)


def _int(v: Any, what: str) -> int:
    if type(v) is not int:
        raise _bad(f"tensor {what} is {short_repr(v)}, not an int")
    return v


def _storage(v: Any) -> StorageRef:
    if type(v) is not StorageRef:
        raise _bad(f"tensor storage is a {type(v).__name__}, not a storage record of the archive")
    return v


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None = None, rg: Any = False):
    st = _storage(storage)
    shape = _ints(size, "size")
    strides = _ints(stride, "stride")
    if len(strides) != len(shape):
        raise _bad(f"tensor size {list(shape)} and stride {list(strides)} differ in length")
    if type(rg) is not bool:
        raise _bad(f"tensor requires_grad is {short_repr(rg)}, not a bool")
    return TensorRef(st, dtype or st.dtype, shape, strides, _int(offset, "storage offset"), requires_grad=rg)


def rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> TensorRef:
    """``torch._utils._rebuild_tensor``: a dense view of a storage."""
    return _tensor(storage, storage_offset, size, stride)


def rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False, hooks: Any = None,
    metadata: Any = None,
) -> TensorRef:  # fmt: skip
    """``torch._utils._rebuild_tensor_v2``: the dtype is the storage's."""
    return _tensor(storage, storage_offset, size, stride, rg=requires_grad)


def rebuild_tensor_v3(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, dtype: Any,
    metadata: Any = None,
) -> TensorRef:  # fmt: skip
    """``torch._utils._rebuild_tensor_v3``: an untyped storage viewed as ``dtype``."""
    if type(dtype) is not DTypeRef:
        raise _bad(f"tensor dtype is {short_repr(dtype)}, not a torch dtype")
    return _tensor(storage, storage_offset, size, stride, dtype.name, requires_grad)


def rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None, state: Any = None) -> Any:
    """``torch._utils._rebuild_parameter(_with_state)``: the same tensor, marked as a parameter."""
    if type(data) is RefusedTensor:
        return data
    if type(data) is not TensorRef:
        raise _bad(f"a parameter's data is a {type(data).__name__}, not a tensor")
    if type(requires_grad) is not bool:
        raise _bad(f"parameter requires_grad is {short_repr(requires_grad)}, not a bool")
    return dataclasses.replace(data, is_parameter=True, requires_grad=requires_grad)


def rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """``torch._tensor._rebuild_from_type_v2``: a tensor (subclass) rebuilt by an allowlisted function."""
    from torchsmith.checkpoint._values import Builder

    if type(func) is not Builder or not func.qualname.startswith("torch._utils._rebuild"):
        raise _bad(f"tensor rebuilt by {short_repr(func)}, not by a torch rebuild function")
    if type(args) is not tuple:
        raise _bad("tensor rebuild arguments are not a tuple")
    out = func(*args)
    if isinstance(new_type, TorchConst) and new_type.qualname == "torch.nn.parameter.Parameter":
        return rebuild_parameter(out, bool(getattr(out, "requires_grad", False)))
    return out


def refused_builder(kind: str) -> Callable[..., RefusedTensor]:
    """A rebuild function for tensors the reader names instead of reading (sparse, quantized...)."""

    def build(*args: Any, **kwargs: Any) -> RefusedTensor:
        k = kind
        if kind == "sparse" and args:
            layout = args[0]
            if isinstance(layout, StandInCall) and layout.args:  # torch.serialization._get_layout(name)
                layout = TorchConst(str(layout.args[0]))
            if isinstance(layout, TorchConst):
                k = _LAYOUTS.get(layout.qualname, "sparse")
        shape: tuple[int, ...] = ()
        dtype = "?"
        if kind == "quantized" and len(args) >= 3 and type(args[0]) is StorageRef:
            dtype = args[0].dtype
            k = f"quantized {dtype}"
            if type(args[2]) in (tuple, list) and all(type(x) is int for x in args[2][:64]):
                shape = tuple(args[2][:64])
        return RefusedTensor(k, shape, dtype)

    build.__name__ = f"refused_{kind.replace(' ', '_')}"
    return build


@dataclasses.dataclass(frozen=True)
class TorchConst:
    """A torch constant named by a pickle (a layout, a qscheme, ``torch.Tensor``): a name, nothing more."""

    qualname: str


def get_layout(name: Any) -> StandInCall:
    """``torch.serialization._get_layout('torch.sparse_coo')``: the layout's name, recorded."""
    if type(name) is not str or len(name) > 64:
        raise _bad(f"layout name {short_repr(name)} is not a short string")
    return StandInCall("torch.serialization._get_layout", (name,))


def device(*args: Any) -> DeviceRef:
    """``torch.device('cuda', 0)``: the device's name."""
    if not 1 <= len(args) <= 2 or not all(type(a) in (str, int) for a in args):
        raise _bad(f"torch.device{short_repr(args)} is not a device name")
    return DeviceRef(":".join(str(a) for a in args))


def _items(arg: Any, what: str) -> list:
    # Anything iterable the reader made (a list, tuple, dict, set, range) of bounded length.
    if isinstance(arg, range):
        if len(arg) > MAX_ALLOC_ITEMS:
            raise _bad(f"{what}() of a range of {len(arg)} items (limit {MAX_ALLOC_ITEMS})")
        return list(arg)
    if type(arg) in (list, tuple, set, frozenset, dict, collections.OrderedDict, str, bytes, bytearray):
        return list(arg)
    raise _bad(f"{what}() of a {type(arg).__name__}")


def sized(fn: type) -> Callable[..., Any]:
    """``list``/``tuple``/``set``/``frozenset``/``str``/``bytes``/``bytearray``, size-checked first."""
    name = fn.__name__

    def build(*args: Any, **kwargs: Any) -> Any:
        if kwargs or len(args) > 3:
            raise _bad(f"{name}() with keyword or extra arguments")
        if not args:
            return fn()
        a = args[0]
        if fn in (bytes, bytearray):
            if type(a) is int:
                if not 0 <= a <= MAX_ALLOC_BYTES:
                    raise _bad(f"{name}({a}) would allocate more than {MAX_ALLOC_BYTES} bytes (limit)")
                return fn(a)
            if type(a) is str:
                return fn(*args)  # bytes(text, encoding): as long as the text
            return fn(a if isinstance(a, bytes | bytearray) else _items(a, name))
        if fn is str:
            if a is not None and type(a) not in (str, bytes, bytearray, int, float, bool):
                # str() of a shared nested structure grows exponentially with its depth.
                raise _bad(f"str() of a {type(a).__name__} is not allowed in a checkpoint")
            if type(a) is int and a.bit_length() > 4096:
                raise _bad("str() of an int of more than 4096 bits")
            return fn(*args)
        items = _items(a, name)
        if fn in (set, frozenset):
            for x in items:
                if type(x) not in _ATOMS:
                    check_hashable(x)
        return fn(items)

    build.__name__ = name
    return build


def _pairs(args: tuple, kwargs: dict, what: str) -> list[tuple[Any, Any]]:
    if kwargs or len(args) > 1:
        raise _bad(f"{what}() with keyword or extra arguments")
    if not args:
        return []
    a = args[0]
    if isinstance(a, dict):
        pairs = list(a.items())
    else:
        pairs = []
        for p in _items(a, what):
            if type(p) not in (tuple, list) or len(p) != 2:
                raise _bad(f"{what}() of an item that is not a (key, value) pair")
            pairs.append((p[0], p[1]))
    for k, _ in pairs:
        check_hashable(k)
    return pairs


def ordered_dict(*args: Any, **kwargs: Any) -> collections.OrderedDict:
    """``collections.OrderedDict`` from pairs or a dict."""
    return collections.OrderedDict(_pairs(args, kwargs, "OrderedDict"))


def plain_dict(*args: Any, **kwargs: Any) -> dict:
    """``dict`` from pairs or a dict."""
    return dict(_pairs(args, kwargs, "dict"))


def default_dict(*args: Any, **kwargs: Any) -> dict:
    """``collections.defaultdict(factory[, pairs])`` read as a plain dict: the factory is never kept."""
    return dict(_pairs(args[1:], kwargs, "defaultdict"))


def counter(*args: Any, **kwargs: Any) -> collections.Counter:
    """``collections.Counter`` from a dict of counts."""
    return collections.Counter(dict(_pairs(args, kwargs, "Counter")))


def plain_int(*args: Any) -> int:
    """``int(x[, base])`` of a number or short text."""
    if not args:
        return 0
    if type(args[0]) not in (int, float, bool, str, bytes) or len(args) > 2:
        raise _bad(f"int() of a {type(args[0]).__name__}")
    return int(*args)


def plain_float(*args: Any) -> float:
    """``float(x)`` of a number or text."""
    if args and (type(args[0]) not in (int, float, bool, str, bytes) or len(args) > 1):
        raise _bad(f"float() of a {type(args[0]).__name__}")
    return float(*args)


def plain_complex(*args: Any) -> complex:
    """``complex(re, im)`` of numbers."""
    if len(args) > 2 or not all(type(a) in (int, float, bool, str) for a in args):
        raise _bad("complex() of something other than numbers")
    return complex(*args)


def plain_bool(*args: Any) -> bool:
    """``bool(x)`` of a plain value."""
    if len(args) > 1 or (args and type(args[0]) not in (int, float, bool, str, bytes, type(None))):
        raise _bad("bool() of something other than a plain value")
    return bool(*args)


def plain_slice(*args: Any) -> slice:
    """``slice(...)`` of ints or None."""
    if not 1 <= len(args) <= 3 or not all(a is None or type(a) is int for a in args):
        raise _bad("slice() of something other than ints")
    return slice(*args)


def plain_range(*args: Any) -> range:
    """``range(...)`` of ints (lazy; its length is checked where it is expanded)."""
    if not 1 <= len(args) <= 3 or not all(type(a) is int for a in args):
        raise _bad("range() of something other than ints")
    return range(*args)


def bound_method(obj: Any, name: Any, *default: Any) -> BoundMethodRef:
    """``getattr(obj, name)``: recorded as (object, name); nothing is looked up."""
    if type(name) is not str:
        raise _bad("getattr() with a name that is not a string")
    return BoundMethodRef(obj, name)


def reconstructor(cls: Any, base: Any = None, state: Any = None) -> StandIn:
    """``copyreg._reconstructor(cls, base, state)`` (protocols 0-1): an instance of a stand-in class."""
    if not (isinstance(cls, type) and issubclass(cls, StandIn)):
        raise _bad(f"copyreg._reconstructor of {short_repr(cls)}, not of a class")
    obj = StandIn.__new__(cls)
    obj._args = (base, state)
    return obj


def newobj(cls: Any, *args: Any) -> StandIn:
    """``copyreg.__newobj__(cls, *args)``: an instance of a stand-in class."""
    if not (isinstance(cls, type) and issubclass(cls, StandIn)):
        raise _bad(f"copyreg.__newobj__ of {short_repr(cls)}, not of a class")
    return StandIn.__new__(cls, *args)


def codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> Any:
    """``_codecs.encode(str, 'latin1')`` (how protocol 2 pickles bytes); only text codecs."""
    if (
        type(text) is not str
        or type(encoding) is not str
        or encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "utf8", "ascii")
        or errors != "strict"
    ):
        return StandInCall("_codecs.encode", (short_repr(text), short_repr(encoding)))
    return text.encode(encoding, errors)
