"""Tensors described, not loaded: where a tensor's bytes lie in a file, its dtype, shape and strides.

Every reader (torch zip, legacy torch pickle, safetensors, shards) produces :class:`TensorRef`
objects without importing torch; ``inspect`` and ``verify`` work on them directly, and
:func:`materialize` turns them into memory-mapped torch tensors when tensors are really needed.
"""

from __future__ import annotations

import contextlib
import errno
import math
import mmap
import os
import stat
from dataclasses import dataclass, field

# dtype name (as torch spells it after "torch.") -> bytes per element
ITEMSIZE: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
    "uint16": 2, "uint32": 4, "uint64": 8,
    "complex64": 8, "complex128": 16, "complex32": 4,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1, "float4_e2m1fn_x2": 1,
    "qint8": 1, "quint8": 1, "qint32": 4, "quint4x2": 1, "quint2x4": 1,
    "bcomplex32": 4, "bits16": 2, "bits8": 1, "bits1x8": 1, "bits2x4": 1, "bits4x2": 1,
}  # fmt: skip

# Legacy typed-storage class names in torch pickles -> dtype
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128", "ComplexFloatStorage": "complex64",
    "QInt8Storage": "qint8", "QUInt8Storage": "quint8", "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
    "UntypedStorage": "uint8",
}  # fmt: skip

# safetensors dtype codes <-> torch dtype names
ST_TO_DTYPE: dict[str, str] = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
}  # fmt: skip
DTYPE_TO_ST = {v: k for k, v in ST_TO_DTYPE.items()}

FLOAT_DTYPES = {"float64", "float32", "float16", "bfloat16"}


def open_regular(path: str | os.PathLike) -> int:
    """Open ``path`` for reading and return the descriptor, only when it is a regular file.

    Opened non-blocking first (a FIFO would otherwise block the ``open`` itself), then checked with
    ``fstat`` on the descriptor (no race with a rename between a check and the open): a FIFO, a
    device, a socket or a directory is refused with a :class:`~torchsmith.errors.CheckpointError`.
    """
    from torchsmith.errors import CheckpointError

    try:
        fd = os.open(
            path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
        )
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.EISDIR):
            raise CheckpointError(f"{path}: not a regular file; a checkpoint is a regular file") from None
        raise CheckpointError(f"{path}: cannot open: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CheckpointError(
            f"{path}: not a regular file (a FIFO, device, socket or directory); checkpoints are regular files"
        )
    os.set_blocking(fd, True)
    return fd


def file_identity(fd: int) -> tuple[int, int]:
    """``(device, inode)`` of an open file: the archive a storage record was read from."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


@dataclass(frozen=True, eq=False, slots=True)
class StorageRef:
    """Bytes in ``file`` from ``offset``; ``location`` is where they were saved (``cuda:0``).

    Frozen: only the reader that opened ``file`` makes one, from the archive's own member table,
    and no pickle opcode can change it. ``ident`` is the ``(device, inode)`` of the archive as it
    was opened; :class:`FileMaps` maps only that same regular file.
    """

    file: str
    offset: int
    nbytes: int
    dtype: str
    location: str = "cpu"
    key: str = ""
    ident: tuple[int, int] | None = None


@dataclass(frozen=True, eq=False, slots=True)
class TensorRef:
    """A tensor inside a checkpoint file: ``storage`` plus element ``offset``, ``shape`` and ``stride``.

    Frozen (a new record is made with :func:`dataclasses.replace`), so nothing read later can point
    it at other bytes.
    """

    storage: StorageRef | None
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...] | None = None
    offset: int = 0
    requires_grad: bool = False
    is_parameter: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return ITEMSIZE.get(self.dtype, 1)

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def contiguous_stride(self) -> tuple[int, ...]:
        stride, acc = [], 1
        for d in reversed(self.shape):
            stride.append(acc)
            acc *= max(d, 1)
        return tuple(reversed(stride))

    @property
    def is_contiguous(self) -> bool:
        if self.stride is None or self.numel <= 1:
            return True
        return all(s == c for s, c, d in zip(self.stride, self.contiguous_stride, self.shape) if d != 1)

    def byte_range(self) -> tuple[int, int] | None:
        """(start, end) of this tensor's bytes in its file when it is stored contiguously, else None."""
        if self.storage is None or not self.is_contiguous:
            return None
        start = self.storage.offset + self.offset * self.itemsize
        return start, start + self.nbytes

    def check_bounds(self) -> str | None:
        """A description of what is wrong when the tensor reaches outside its storage, else None."""
        if self.storage is None or self.numel == 0:
            return None
        stride = self.stride or self.contiguous_stride
        if self.offset < 0 or any(s < 0 for s in stride) or any(d < 0 for d in self.shape):
            return "negative offset, size or stride"
        last = self.offset + sum((d - 1) * s for d, s in zip(self.shape, stride))
        if (last + 1) * self.itemsize > self.storage.nbytes:
            return f"needs {(last + 1) * self.itemsize} bytes but its storage holds {self.storage.nbytes}"
        return None


_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux >= 5.14


def _populate(buf: mmap.mmap) -> None:
    # Map every page now, in one kernel call, instead of one page fault per 4 KiB on first use;
    # a read populate keeps the pages shared with the page cache (no copy-on-write break).
    with contextlib.suppress(OSError, ValueError, AttributeError):
        buf.madvise(_MADV_POPULATE_READ)


class FileMaps:
    """Memory maps of checkpoint files, opened once per file and shared by every tensor from it.

    Maps are copy-on-write (``ACCESS_COPY``): tensors can be written to without touching the file,
    and a later atomic save over the same path replaces the inode, leaving these pages intact.
    """

    def __init__(self, use_mmap: bool = True, populate: bool = False):
        self.use_mmap = use_mmap
        self.populate = populate
        self._maps: dict[str, object] = {}
        self._storages: dict[int, object] = {}

    def buffer(self, file: str, ident: tuple[int, int] | None = None):
        """The bytes of regular file ``file`` (mapped or read); when ``ident`` is given, the file
        must still be that ``(device, inode)``: a path swapped since the archive was read is refused."""
        buf = self._maps.get(file)
        if buf is None:
            fd = open_regular(file)
            with open(fd, "rb") as f:
                if ident is not None and file_identity(fd) != tuple(ident):
                    from torchsmith.errors import CheckpointError

                    raise CheckpointError(f"{file}: the file was replaced while it was being read")
                if self.use_mmap and os.fstat(f.fileno()).st_size > 0:
                    buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
                    if self.populate:
                        _populate(buf)
                else:
                    buf = bytearray(f.read())
            self._maps[file] = buf
        return buf

    def populate_all(self) -> None:
        """Map every page of every file mapped so far, now (one kernel call per file)."""
        for buf in list(self._maps.values()):
            if isinstance(buf, mmap.mmap):
                _populate(buf)

    def storage_tensor(self, ref: StorageRef):
        """A flat torch tensor of ``ref.dtype`` over the storage's bytes (shared between views)."""
        import torch

        cached = self._storages.get(id(ref))
        if cached is not None:
            return cached[1]
        dtype = getattr(torch, ref.dtype)
        itemsize = ITEMSIZE.get(ref.dtype, 1)
        count = ref.nbytes // itemsize
        if count == 0:
            flat = torch.empty(0, dtype=dtype)
        else:
            buf = self.buffer(ref.file, ref.ident)
            if ref.offset < 0 or ref.offset + count * itemsize > len(buf):
                from torchsmith.errors import CheckpointError

                raise CheckpointError(
                    f"{ref.file}: storage {ref.key!r} lies outside the file: the file is damaged"
                )
            flat = torch.frombuffer(buf, dtype=torch.uint8, count=count * itemsize, offset=ref.offset)
            if flat.data_ptr() % ALIGNMENT:
                # Data not 64-byte aligned (other writers' safetensors, legacy torch files): copied into
                # aligned memory, because vectorised kernels take other paths (other roundings) on
                # unaligned data, so a reloaded model would not compute bit-exactly what it did.
                flat = torch.empty_like(flat).copy_(flat)
            flat = flat.view(dtype)
        self._storages[id(ref)] = (ref, flat)
        return flat


# Tensor data is used in place only at addresses that are multiples of this (torch's own allocator's).
ALIGNMENT = 64
_INT64_MAX = (1 << 63) - 1
# Quantized dtypes need a quantizer (scale, zero point) that a plain storage does not carry; torch
# crashes on views of one made without it, so they are refused by name rather than materialized.
QUANTIZED_DTYPES = {"qint8", "quint8", "qint32", "quint4x2", "quint2x4"}


def _check_representable(ref: TensorRef) -> None:
    # torch multiplies sizes in int64 left to right (even when one is 0): [2**40, 2**40, 0] is a
    # valid empty tensor in a file but one torch cannot make. Checked with Python ints, named clearly.
    if ref.dtype in QUANTIZED_DTYPES:
        from torchsmith.errors import CheckpointError

        where = ref.storage.file if ref.storage is not None else "checkpoint"
        raise CheckpointError(
            f"{where}: a tensor of quantized dtype {ref.dtype} (shape {list(ref.shape)}): quantized "
            "tensors are not read; dequantize before saving (tensor.dequantize())"
        )
    acc = ref.itemsize
    for d in ref.shape:
        acc *= max(int(d), 1)
        if acc > _INT64_MAX:
            from torchsmith.errors import CheckpointError

            where = ref.storage.file if ref.storage is not None else "checkpoint"
            raise CheckpointError(
                f"{where}: a tensor of shape {list(ref.shape)} ({ref.dtype}): "
                "torch cannot hold it (the product of its sizes overflows 64 bits, even though it has "
                f"{ref.numel} elements); inspect/verify read it, but it cannot become a torch tensor"
            )


def materialize(ref: TensorRef, maps: FileMaps):
    """The torch tensor described by ``ref``, a view into the memory-mapped file when possible."""
    import torch

    dtype = getattr(torch, ref.dtype)
    _check_representable(ref)
    problem = ref.check_bounds()  # every path that makes a tensor comes here, so the check does too
    if problem:
        from torchsmith.errors import CheckpointError

        raise CheckpointError(
            f"{ref.storage.file}: a {ref.dtype} tensor of shape {list(ref.shape)} {problem}: "
            "the file is damaged"
        )
    if ref.storage is None:
        return torch.empty(ref.shape, dtype=dtype)
    flat = maps.storage_tensor(ref.storage)
    if flat.dtype != dtype:
        flat = flat.view(torch.uint8).view(dtype)
    stride = ref.stride if ref.stride is not None else ref.contiguous_stride
    if ref.numel == 0:
        return torch.empty(ref.shape, dtype=dtype)
    return flat.as_strided(ref.shape, stride, ref.offset)
