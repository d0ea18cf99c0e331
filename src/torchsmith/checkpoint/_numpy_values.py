"""numpy values inside pickles (``best_acc = np.float64(...)``, an array of metrics) decoded as values.

numpy pickles a scalar as ``numpy.core.multiarray.scalar(dtype, raw_bytes)``, an array as
``_reconstruct(ndarray, (0,), b'b')`` followed by a BUILD with ``(version, shape, dtype, fortran,
raw_bytes)``, protocol 5 arrays as ``numpy.core.numeric._frombuffer(buf, dtype, shape, order)``, and
a dtype as ``numpy.dtype('f8', False, True)`` plus a BUILD with its byte order and fields. Only these
constructors are honoured, each checking its arguments (a dtype from a type string, never from an
object the file made; an array only of ``numpy.ndarray`` itself); numpy's own ``__setstate__`` then
checks sizes against the bytes given. Nothing else in numpy (or any module the file names) is
imported or called. ``numpy`` itself is imported only when a file names one of these.
"""

from __future__ import annotations

from typing import Any

from torchsmith.checkpoint._values import StandInCall

__all__ = ["CONSTRUCTORS", "numpy_global"]

# numpy moved numpy.core to numpy._core in 2.0; pickles name either.
_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")


class _NDArrayClass:
    """Stands for ``numpy.ndarray`` when a pickle names it: usable only as ``_reconstruct``'s class."""

    def __repr__(self) -> str:
        return "<numpy.ndarray (class, not callable here)>"


_NDARRAY = _NDArrayClass()


def _np():
    import numpy

    return numpy


def _dtype(obj: Any, align: Any = False, copy: Any = False) -> Any:
    # A dtype only from a type string ('f8', '<U5', 'M8', 'V16'): numpy parses it, nothing is imported.
    if not isinstance(obj, str) or not isinstance(align, bool) or not isinstance(copy, bool):
        return _refused("numpy.dtype", (obj, align, copy))
    return _np().dtype(obj, align=align, copy=copy)


def _reconstruct(cls: Any, shape: Any = (0,), typecode: Any = b"b") -> Any:
    if cls is not _NDARRAY:
        return _refused("numpy.core.multiarray._reconstruct", (cls, shape, typecode))
    # numpy writes an empty placeholder here; the BUILD that follows sets shape, dtype and data.
    return _np().ndarray((0,), dtype="b")


def _scalar(dtype: Any, data: Any = None) -> Any:
    np = _np()
    if not isinstance(dtype, np.dtype):
        return _refused("numpy.core.multiarray.scalar", (dtype, data))
    if dtype.hasobject:
        return data  # an object scalar pickles the object itself
    if not isinstance(data, bytes | bytearray) or len(data) != dtype.itemsize:
        raise ValueError(
            f"numpy scalar of dtype {dtype} needs {dtype.itemsize} bytes, got {type(data).__name__}"
        )
    return np.frombuffer(bytes(data), dtype=dtype)[0]


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> Any:
    np = _np()
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(buf, bytes | bytearray):
        return _refused("numpy.core.numeric._frombuffer", (dtype, shape))
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"numpy array shape {shape!r:.60} is not a tuple of sizes")
    if order not in ("C", "F"):
        raise ValueError(f"numpy array order {order!r:.20} is not 'C' or 'F'")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _refused(qualname: str, args: tuple) -> Any:
    return StandInCall(qualname, args)


_CONSTRUCTORS = {"_reconstruct": _reconstruct, "scalar": _scalar, "_frombuffer": _frombuffer}

# Every numpy global the reader honours, by the qualified name a pickle uses (the globals table
# in ``_globals`` takes them from here).
CONSTRUCTORS: dict[str, Any] = {
    "numpy.dtype": _dtype,
    "numpy.ndarray": _NDARRAY,
    **{f"{m}.{n}": fn for m in _MODULES for n, fn in _CONSTRUCTORS.items()},
}


def numpy_global(module: str, name: str) -> Any | None:
    """The decoder for numpy global ``module.name``; None when it is not one of its value constructors."""
    if module == "numpy":
        return {"dtype": _dtype, "ndarray": _NDARRAY}.get(name)
    if module in _MODULES:
        return _CONSTRUCTORS.get(name)
    return None
