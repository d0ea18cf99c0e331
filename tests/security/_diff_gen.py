"""Differential checking of torchsmith's reader against ``torch.load(weights_only=True)``.

:func:`gen_case` writes one checkpoint from a ``random.Random``: a pickle program assembled opcode
by opcode (tensors over shared storages with random offsets, sizes and strides, nested dicts,
lists, tuples, OrderedDicts, sets, bytes, memo reuse, parameters, ``_rebuild_tensor_v2``/``v3``,
allowlisted, unknown and dangerous globals, state and item writes on records, then optional byte
mutations) in a torch zip (optionally mutated: duplicate, compressed, missing, resized or foreign
records) or in the legacy format, or a real ``torch.save`` file mutated. :func:`check_case` reads it
with both readers and returns an outcome; ``"DIFF: ..."`` means torchsmith returned something torch
did not (bytes, dtype, shape, strides, storage offset, storage sharing, container types and values),
or failed with something other than a ``CheckpointError``.

Used by ``test_sec_differential.py`` (a seeded sample, under hypothesis) and by
``scripts/fuzz_reader.py`` (a long campaign under an audit hook).
"""

from __future__ import annotations

import collections
import io
import random
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

DTYPES = {  # dtype -> (legacy storage class, itemsize)
    "float32": ("FloatStorage", 4), "float64": ("DoubleStorage", 8), "float16": ("HalfStorage", 2),
    "bfloat16": ("BFloat16Storage", 2), "int64": ("LongStorage", 8), "int32": ("IntStorage", 4),
    "int16": ("ShortStorage", 2), "int8": ("CharStorage", 1), "uint8": ("ByteStorage", 1),
    "bool": ("BoolStorage", 1), "complex64": ("ComplexFloatStorage", 8),
}  # fmt: skip
UNKNOWN_GLOBALS = [("argparse", "Namespace"), ("collections", "namedtuple"), ("mymodels", "Net"),
                   ("functools", "partial"), ("types", "SimpleNamespace")]  # fmt: skip
DANGEROUS_GLOBALS = [("os", "system"), ("posix", "system"), ("builtins", "eval"), ("torch", "load"),
                     ("torch.serialization", "load"), ("pickle", "loads"),
                     ("torch.storage", "_load_from_bytes"),
                     ("builtins", "open"), ("subprocess", "check_output"), ("numpy", "load"),
                     ("socket", "create_connection"), ("mylib.io", "load")]  # fmt: skip


class _Pickle:
    """A protocol-2 pickle written opcode by opcode, with a memo the generator reuses."""

    def __init__(self, r: random.Random) -> None:
        self.r = r
        self.out = bytearray(b"\x80\x02")
        self.memo = 0
        self.pool: dict[str, list[int]] = collections.defaultdict(list)  # kind -> memo indices

    def op(self, b: bytes) -> None:
        self.out += b

    def put(self, kind: str) -> None:
        i = self.memo
        self.memo += 1
        self.op(b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i))
        self.pool[kind].append(i)

    def get(self, i: int) -> None:
        self.op(b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i))

    def glob(self, module: str, name: str) -> None:
        self.op(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def int_(self, v: int) -> None:
        if 0 <= v < 256:
            self.op(b"K" + bytes([v]))
        elif -(2**31) <= v < 2**31:
            self.op(b"J" + struct.pack("<i", v))
        else:
            data = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.op(b"\x8a" + bytes([len(data)]) + data)

    def str_(self, s: str) -> None:
        data = s.encode("utf-8", "surrogatepass")
        self.op(b"X" + struct.pack("<I", len(data)) + data)

    def float_(self, v: float) -> None:
        self.op(b"G" + struct.pack(">d", v))

    def ints(self, vals: list[int]) -> None:
        if not vals:
            self.op(b")")
            return
        if len(vals) <= 3:
            for v in vals:
                self.int_(v)
            self.op({1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(vals)])
            return
        self.op(b"(")
        for v in vals:
            self.int_(v)
        self.op(b"t")


class Gen:
    """One random checkpoint: storages, tensors over them, and a nested object holding them."""

    def __init__(self, r: random.Random) -> None:
        self.r = r
        self.p = _Pickle(r)
        self.storages: list[tuple[str, str, int, bytes]] = []  # key, dtype, numel, data
        self.v3 = r.random() < 0.3
        self.dangerous = False

    def storage_data(self, dtype: str, numel: int) -> bytes:
        size = DTYPES[dtype][1] * numel
        if dtype == "bool":
            return bytes(self.r.choice((0, 1)) for _ in range(size))
        return bytes(self.r.getrandbits(8) for _ in range(size))

    def storage(self) -> None:
        p, r = self.p, self.r
        if p.pool["storage"] and r.random() < 0.5:
            p.get(r.choice(p.pool["storage"]))
            return
        if self.storages and r.random() < 0.3:  # the same key again, as torch.save writes a shared storage
            key, dtype, numel, _ = r.choice(self.storages)
        else:
            dtype = r.choice(list(DTYPES))
            numel = r.choice((0, 1, 2, 3, 4, 6, 8, 12, 16))
            key = str(len(self.storages))
            self.storages.append((key, dtype, numel, self.storage_data(dtype, numel)))
        p.op(b"(")
        p.str_("storage")
        if self.v3:
            p.glob("torch", "UntypedStorage")
        else:
            p.glob("torch", DTYPES[dtype][0])
        p.str_(key)
        p.str_(r.choice(("cpu", "cpu", "cuda:0")) if r.random() < 0.1 else "cpu")
        p.int_(numel * DTYPES[dtype][1] if self.v3 else numel)
        p.op(b"t")
        p.op(b"Q")
        p.put("storage")

    def tensor(self) -> None:
        p, r = self.p, self.r
        if p.pool["tensor"] and r.random() < 0.3:
            p.get(r.choice(p.pool["tensor"]))
            return
        param = r.random() < 0.2
        if param:
            p.glob("torch._utils", "_rebuild_parameter")
            p.op(b"(")
        p.glob("torch._utils", "_rebuild_tensor_v3" if self.v3 else "_rebuild_tensor_v2")
        p.op(b"(")
        self.storage()
        ndim = r.choice((0, 1, 1, 2, 2, 3))
        shape = [r.choice((0, 1, 2, 3, 4)) for _ in range(ndim)]
        if r.random() < 0.6:
            stride, acc = [], 1
            for d in reversed(shape):
                stride.append(acc)
                acc *= max(d, 1)
            stride.reverse()
        else:
            stride = [r.choice((0, 1, 2, 3, 5)) for _ in range(ndim)]
        p.int_(r.choice((0, 0, 0, 1, 2, 5)))
        p.ints(shape)
        p.ints(stride if r.random() > 0.02 else stride[:-1])
        p.op(b"\x89")  # requires_grad False
        p.glob("collections", "OrderedDict")
        p.op(b")R")
        if self.v3:
            p.glob("torch", r.choice(list(DTYPES)))
        p.op(b"tR")
        if param:
            p.op(b"\x88" if r.random() < 0.5 else b"\x89")
            p.glob("collections", "OrderedDict")
            p.op(b")RtR")
        p.put("tensor")

    def leaf(self) -> None:
        p, r = self.p, self.r
        k = r.random()
        if k < 0.45:
            self.tensor()
        elif k < 0.55:
            p.int_(r.choice((0, 1, -1, 7, 2**40, -(2**70))))
        elif k < 0.62:
            p.float_(r.choice((0.5, -0.0, float("inf"), float("nan"), 1e300)))
        elif k < 0.7:
            p.str_(r.choice(("lr", "", "é", "x" * 50)))
        elif k < 0.74:
            p.op(b"N")
        elif k < 0.78:
            p.op(r.choice((b"\x88", b"\x89")))
        elif k < 0.82:  # bytes, as protocol 2 writes them
            p.glob("_codecs", "encode")
            p.str_("ab\xff")
            p.str_("latin1")
            p.op(b"\x86R")
        elif k < 0.85:
            p.glob("builtins", "set")
            p.op(b"](")
            for v in r.sample(range(10), r.randint(0, 3)):
                p.int_(v)
            p.op(b"e\x85R")
        elif k < 0.88:
            p.glob("torch", "device")
            p.str_("cpu")
            p.op(b"\x85R")
        elif k < 0.9:
            p.glob("torch", "Size")
            p.ints([r.randint(0, 5) for _ in range(r.randint(0, 3))])
            p.op(b"\x85R")
        elif k < 0.94 and p.pool["container"]:
            p.get(r.choice(p.pool["container"]))
        elif k < 0.97:
            module, name = r.choice(UNKNOWN_GLOBALS)
            p.glob(module, name)
            p.op(b")R")
        else:
            module, name = r.choice(DANGEROUS_GLOBALS)
            self.dangerous = True
            p.glob(module, name)
            p.str_("true")
            p.op(b"\x85R")

    def value(self, depth: int = 0) -> None:
        p, r = self.p, self.r
        if depth >= 3 or r.random() < 0.35:
            self.leaf()
            return
        kind = r.choice(("dict", "dict", "odict", "list", "tuple"))
        n = r.randint(0, 4)
        if kind in ("dict", "odict"):
            if kind == "odict":
                p.glob("collections", "OrderedDict")
                p.op(b")R")
            else:
                p.op(b"}")
            p.put("container")
            p.op(b"(")
            for i in range(n):
                p.str_(r.choice(("w", "b", "state_dict", "layer.weight", f"k{i}")) + str(i))
                self.value(depth + 1)
            p.op(b"u")
            if kind == "odict" and r.random() < 0.3:  # module versions, as Module.state_dict() writes
                p.op(b"}")
                p.str_("_metadata")
                p.glob("collections", "OrderedDict")
                p.op(b")R}")
                p.str_("version")
                p.int_(r.randint(1, 3))
                p.op(b"ss")
                p.op(b"b")
        elif kind == "list":
            p.op(b"]")
            p.put("container")
            p.op(b"(")
            for _ in range(n):
                self.value(depth + 1)
            p.op(b"e")
        else:
            p.op(b"(")
            for _ in range(n):
                self.value(depth + 1)
            p.op(b"t")

    def attack(self) -> None:
        """State and item writes aimed at the reader's own records (torch refuses all of them)."""
        p, r = self.p, self.r
        targets = p.pool["storage"] + p.pool["tensor"]
        if not targets:
            return
        p.op(b"0")  # drop the top value, then rewrite a record and leave it as the result
        p.get(r.choice(targets))
        how = r.choice(("build", "slots", "setitem", "append"))
        if how == "build":
            p.op(b"}")
            p.str_(r.choice(("file", "offset", "nbytes", "storage", "shape")))
            p.str_("/etc/passwd") if r.random() < 0.5 else p.int_(0)
            p.op(b"sb")
        elif how == "slots":
            p.op(b"N}")
            p.str_("file")
            p.str_("/etc/passwd")
            p.op(b"s\x86b")
        elif how == "setitem":
            p.str_("file")
            p.str_("/etc/passwd")
            p.op(b"s")
        else:
            p.str_("x")
            p.op(b"a")

    def program(self) -> bytes:
        self.value()
        if self.r.random() < 0.05:
            self.attack()
        self.p.op(b".")
        data = bytearray(self.p.out)
        if self.r.random() < 0.1:  # byte-level mutations of the program
            self.dangerous = False  # a mutation may have renamed the dangerous global: no longer known
            for _ in range(self.r.randint(1, 3)):
                i = self.r.randrange(len(data))
                op = self.r.random()
                if op < 0.4:
                    data[i] = self.r.getrandbits(8)
                elif op < 0.7:
                    del data[i]
                else:
                    data.insert(i, self.r.getrandbits(8))
        return bytes(data)


def _zip(path: Path, pkl: bytes, storages: list, r: random.Random) -> None:
    records = [("archive/data.pkl", pkl), ("archive/byteorder", b"little")]
    records += [(f"archive/data/{key}", data) for key, _, _, data in storages]
    records.append(("archive/version", b"3\n"))
    mutation = r.random()
    compressed = set()
    if mutation < 0.03 and len(records) > 2:
        name, data = r.choice(records[2:-1] or records[:1])
        records.append((name, bytes(len(data)) if data else b"\0"))  # a duplicate member
    elif mutation < 0.05 and len(records) > 3:
        del records[2]  # a storage record missing
    elif mutation < 0.07 and len(records) > 3:
        name, data = records[2]
        records[2] = (name, data + b"\0\0\0\0")  # a record longer than its storage
    elif mutation < 0.08 and len(records) > 3:
        compressed.add(records[2][0])
    elif mutation < 0.09:
        records.append(("other/data.pkl", pkl))  # a second archive
    with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate member it is asked to write
        for name, data in records:
            ct = zipfile.ZIP_DEFLATED if name in compressed else zipfile.ZIP_STORED
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=ct)


def _legacy(path: Path, pkl: bytes, storages: list) -> None:
    import pickle

    out = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, out, protocol=2)
    pickle.dump(1001, out, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True,
                 "type_sizes": {"short": 2, "int": 4, "long": 4}}, out, protocol=2)  # fmt: skip
    out.write(pkl)
    pickle.dump([key for key, *_ in storages], out, protocol=2)
    for _key, _dtype, numel, data in storages:
        out.write(struct.pack("<q", numel) + data)
    path.write_bytes(out.getvalue())


def _real(path: Path, r: random.Random) -> None:
    """A real torch.save file (views, parameters, shared storages, every container), then mutated."""
    import torch

    g = torch.Generator().manual_seed(r.getrandbits(31))
    base = torch.randn(4, 6, generator=g)
    obj = {
        "w": base, "view": base[1:, ::2], "t": base.t(), "e": torch.ones(3).expand(4, 3),
        "p": torch.nn.Parameter(torch.randn(2, generator=g)), "i": torch.arange(5, dtype=torch.int16),
        "nested": collections.OrderedDict(a=[base[0], (1, "x")], b={"c": 2.5}), "s": torch.tensor(3),
    }  # fmt: skip
    legacy = r.random() < 0.2
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    data = bytearray(path.read_bytes())
    for _ in range(r.choice((0, 1, 1, 2, 4))):
        i = r.randrange(len(data))
        data[i] = r.getrandbits(8)
    path.write_bytes(bytes(data))


def gen_case(r: random.Random, path: Path) -> dict[str, Any]:
    """Write one generated checkpoint to ``path``; returns what the generator knows about it."""
    kind = r.random()
    if kind < 0.15:
        _real(path, r)
        return {"kind": "real", "dangerous": False}
    g = Gen(r)
    pkl = g.program()
    if kind < 0.3:
        _legacy(path, pkl, g.storages)
        return {"kind": "legacy", "dangerous": g.dangerous}
    _zip(path, pkl, g.storages, r)
    return {"kind": "zip", "dangerous": g.dangerous}


# -- comparison ---------------------------------------------------------------------------------


class Diff(Exception):
    pass


def _same_float(a: float, b: float) -> bool:
    return struct.pack("<d", a) == struct.pack("<d", b)


def _compare(t: Any, o: Any, where: str, storages: dict, maps: Any) -> None:
    import torch

    from torchsmith.checkpoint._refs import TensorRef, materialize
    from torchsmith.checkpoint._values import DeviceRef, RefusedTensor

    if isinstance(o, RefusedTensor):
        raise _Refused
    if isinstance(t, torch.Tensor):
        if not isinstance(o, TensorRef):
            raise Diff(f"{where}: torch has a tensor, torchsmith a {type(o).__name__}")
        if isinstance(t, torch.nn.Parameter) != o.is_parameter:
            raise Diff(f"{where}: parameter flag differs")
        m = materialize(o, maps)
        if m.dtype != t.dtype or tuple(m.shape) != tuple(t.shape):
            raise Diff(f"{where}: dtype/shape {m.dtype}{list(m.shape)} vs torch {t.dtype}{list(t.shape)}")
        if t.numel() and (m.stride() != t.stride() or m.storage_offset() != t.storage_offset()):
            raise Diff(
                f"{where}: stride/offset {m.stride()}+{m.storage_offset()} vs "
                f"{t.stride()}+{t.storage_offset()}"
            )
        if t.numel():
            a = torch.empty(t.shape, dtype=t.dtype).copy_(t.detach()).view(-1).view(torch.uint8)
            b = torch.empty(m.shape, dtype=m.dtype).copy_(m.detach()).view(-1).view(torch.uint8)
            if not torch.equal(a, b):
                raise Diff(f"{where}: bytes differ")
        if o.storage is not None and t.untyped_storage().nbytes():
            key = t.untyped_storage().data_ptr()
            if storages.setdefault(("t", key), id(o.storage)) != id(o.storage):
                raise Diff(f"{where}: storage sharing differs (torch shares, torchsmith does not)")
            if storages.setdefault(("o", id(o.storage)), key) != key:
                raise Diff(f"{where}: storage sharing differs (torchsmith shares, torch does not)")
        return
    if isinstance(t, torch.TypedStorage | torch.UntypedStorage):  # a bare storage in the pickle
        from torchsmith.checkpoint._refs import StorageRef

        if not isinstance(o, StorageRef):
            raise Diff(f"{where}: torch has a storage, torchsmith a {type(o).__name__}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage is deprecated: torch still returns it
            data = t.untyped() if isinstance(t, torch.TypedStorage) else t
        flat = maps.storage_tensor(o).view(torch.uint8) if o.nbytes else torch.empty(0, dtype=torch.uint8)
        mine = bytes(flat.numpy().tobytes())
        if data.nbytes() != o.nbytes or bytes(data.cpu()) != mine:
            raise Diff(f"{where}: storage bytes differ")
        return
    if isinstance(t, torch.device):
        if not isinstance(o, DeviceRef) or o.name != str(t):
            raise Diff(f"{where}: device {t} vs {o!r}")
        return
    if isinstance(t, torch.Size):
        t = tuple(t)
    if isinstance(t, dict | list | tuple):
        # Shared and self-containing containers (memo reuse) must be shared the same way.
        known = storages.setdefault(("c", id(t)), id(o))
        if known != id(o) and not isinstance(t, tuple):
            raise Diff(f"{where}: container sharing differs")
        if ("seen", id(t)) in storages:
            return
        storages[("seen", id(t))] = True
    if isinstance(t, dict):
        if type(o) is not type(t) and not (type(t) is dict and type(o) is dict):
            raise Diff(f"{where}: {type(t).__name__} vs {type(o).__name__}")
        if list(t) != list(o):
            raise Diff(f"{where}: keys {list(t)[:5]} vs {list(o)[:5]}")
        for k in t:
            _compare(t[k], o[k], f"{where}[{k!r}]", storages, maps)
        return
    if isinstance(t, list | tuple):
        if type(o) is not type(t) or len(o) != len(t):
            raise Diff(f"{where}: {type(t).__name__}[{len(t)}] vs {type(o).__name__}")
        for i, (x, y) in enumerate(zip(t, o)):
            _compare(x, y, f"{where}[{i}]", storages, maps)
        return
    if isinstance(t, float):
        if type(o) is not float or not _same_float(t, o):
            raise Diff(f"{where}: {t!r} vs {o!r}")
        return
    if isinstance(t, set | frozenset | bytes | bytearray | str | int | bool | complex) or t is None:
        if type(o) is not type(t) or o != t:
            raise Diff(f"{where}: {t!r:.40} vs {o!r:.40}")
        return
    if isinstance(t, torch.dtype):  # a dtype named as a value
        from torchsmith.checkpoint._values import DTypeRef

        if not isinstance(o, DTypeRef) or f"torch.{o.name}" != str(t):
            raise Diff(f"{where}: dtype {t} vs {o!r:.60}")
        return
    if callable(t):  # an allowlisted global named as a value, not called: the same name
        name = getattr(t, "__name__", "?")
        qual = getattr(o, "qualname", None) or getattr(o, "name", None)
        if not isinstance(qual, str) or not qual.endswith(name):
            raise Diff(f"{where}: torch's {name} vs {o!r:.60}")
        return
    raise Diff(f"{where}: torch returned a {type(t).__name__}, not compared")


class _Refused(Exception):
    pass


def ours(path: Path) -> tuple[str, Any]:
    """torchsmith's reading of ``path``: ``("ok", obj)`` or ``("refused", message)``; other errors raise."""
    from torchsmith.checkpoint.formats import open_raw
    from torchsmith.errors import CheckpointError

    try:
        obj = open_raw(path).obj
    except CheckpointError as e:
        return "refused", str(e)
    problem = _first_bounds_problem(obj)
    return ("refused", problem) if problem else ("ok", obj)


def _first_bounds_problem(obj: Any) -> str | None:
    # What read_checkpoint checks before it makes tensors: every tensor inside its storage.
    from torchsmith.checkpoint._refs import TensorRef

    todo, seen = [obj], set()
    while todo:
        v = todo.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if isinstance(v, TensorRef):
            problem = v.check_bounds()
            if problem:
                return problem
        elif isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, list | tuple | set | frozenset):
            todo.extend(v)
    return None


def check_case(path: Path, known: dict[str, Any]) -> str:
    """Compare both readers on ``path``: an outcome name, or ``"DIFF: ..."`` for a difference."""
    import torch

    from torchsmith.checkpoint._refs import FileMaps
    from torchsmith.errors import CheckpointError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs: Any = torch.load(path, weights_only=True, map_location="cpu")
        torch_ok = True
    except Exception:
        theirs, torch_ok = None, False
    try:
        status, obj = ours(path)
    except Exception as e:  # anything but a CheckpointError is a finding
        return f"DIFF: torchsmith raised {type(e).__name__}: {str(e)[:200]}"
    if known.get("dangerous") and status == "ok":
        return "DIFF: a file naming a dangerous global was read"
    if status == "refused":
        return "torch-ok/refused" if torch_ok else "both-refuse"
    if not torch_ok:
        return "torch-fails/read"
    try:
        _compare(theirs, obj, "obj", {}, FileMaps(use_mmap=False))
    except _Refused:
        return "torch-ok/refused"
    except CheckpointError:
        return "torch-ok/refused"
    except Diff as e:
        return f"DIFF: {e}"
    except Exception as e:
        return f"DIFF: comparing raised {type(e).__name__}: {str(e)[:200]}"
    return "equal"
