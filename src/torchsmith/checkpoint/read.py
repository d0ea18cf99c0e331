"""Read any checkpoint into a state dict: formats, containers, whole-model rescue, one trust policy.

:func:`read_checkpoint` sniffs the format from the bytes, reads pickles with the restricted reader
(:mod:`torchsmith.checkpoint.pickle_reader`), takes the weights out of common containers
(``state_dict``, ``model``, ``model_state_dict``, ``module``, ``ema``... as written by Lightning and
training scripts) and says which key it took and what else was there. Whole-model pickles are
rescued without importing their classes, and a pickled bound method (``torch.save(model.state_dict,
path)``, seed trap 2) is recognised. Tensors are memory-mapped views of the file.

>>> ckpt = read_checkpoint("last.ckpt")                         # doctest: +SKIP
>>> ckpt.container_key, sorted(ckpt.other_keys)                 # doctest: +SKIP
('state_dict', ['epoch', 'global_step', 'optimizer_states'])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchsmith.checkpoint._refs import FileMaps, TensorRef, materialize
from torchsmith.checkpoint.formats import RawCheckpoint, open_raw
from torchsmith.checkpoint.pickle_reader import (
    BoundMethodRef,
    StandIn,
    StandInCall,
    find_modules,
    module_state,
)
from torchsmith.errors import CheckpointError

__all__ = ["CONTAINER_KEYS", "Checkpoint", "read_checkpoint", "read_state_dict", "select_tensors"]

# Keys under which training scripts and libraries keep the model's weights, most specific first.
CONTAINER_KEYS = (
    "state_dict", "model_state_dict", "model_state", "model", "module", "net", "network",
    "weights", "params", "ema", "model_ema", "state_dict_ema", "ema_state_dict", "teacher", "student",
)  # fmt: skip

# Globals whose call in a pickle means "run code": reported by name, never executed.
_DANGEROUS_MODULES = ("os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy",
                      "pty", "ctypes", "webbrowser", "code", "codeop", "pickle", "_pickle", "marshal",
                      "types", "cProfile", "profile", "timeit", "pydoc", "pdb", "bdb", "trace",
                      "multiprocessing", "asyncio", "threading", "_thread", "signal", "tempfile",
                      "urllib", "http", "ftplib", "smtplib", "requests", "httpx", "dill", "cloudpickle",
                      "joblib", "numpy.f2py", "numpy.testing", "distutils", "setuptools", "pip",
                      "zipimport", "pkgutil", "operator", "glob", "fileinput", "linecache",
                      "logging.config", "shelve",
                      "dbm", "sqlite3", "venv", "ensurepip", "idlelib", "tkinter", "turtle",
                      "torch.hub", "torch.fx", "torch.jit", "torch._dynamo", "torch._inductor",
                      "torch.utils.cpp_extension", "torch.package", "torch.serialization.load",
                      "torch.cuda._utils", "torch._C._jit", "torch.testing", "torch.distributed.rpc",
                      "torch.multiprocessing", "torch.utils.data.datapipes")  # fmt: skip
_DANGEROUS_BUILTINS = {"eval", "exec", "compile", "__import__", "open", "input", "breakpoint", "globals",
                       "locals", "vars", "getattr", "setattr", "delattr", "__build_class__", "help",
                       "memoryview", "exit", "quit", "copyright", "credits", "license"}  # fmt: skip


@dataclass
class Checkpoint:
    """What :func:`read_checkpoint` found.

    ``container_key`` is the key the weights were taken from (``None`` when the file is a bare state
    dict), ``other_keys`` maps every other top-level key to a short description (``"int 12"``),
    ``notes`` says anything a user should know (rescued pickles, GPU locations, skipped entries).
    """

    path: Path
    format: str
    state_dict: dict[str, Any]
    container_key: str | None = None
    other_keys: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def is_dangerous(qualname: str) -> bool:
    """Whether calling global ``qualname`` from a pickle can run code, reach files or the network."""
    module, _, name = qualname.rpartition(".")
    if module in ("builtins", "__builtin__"):
        return name in _DANGEROUS_BUILTINS
    return any(module == m or module.startswith(m + ".") for m in _DANGEROUS_MODULES)


def safety_verdict(raw: RawCheckpoint) -> dict[str, Any]:
    """Every global the file's pickles name, each ``known-safe``, ``unknown`` or ``dangerous``.

    ``verdict`` is ``dangerous`` when any is, ``unknown`` when any name is not on the reader's
    allowlist (torchsmith did not run it, but ``torch.load(weights_only=False)`` would), else
    ``known-safe``; files without pickles (safetensors) are ``known-safe`` with no calls.
    """
    from torchsmith.checkpoint.pickle_reader import is_known_safe

    names = set(raw.globals_named) | set(raw.stand_ins) | set(raw.calls)
    allowed_dcp = _dcp_allowed() if raw.format == "dcp" else frozenset()
    calls = []
    for q in sorted(names):
        kind = (
            "dangerous"
            if is_dangerous(q)
            else "known-safe"
            if is_known_safe(q) or q in allowed_dcp
            else "unknown"
        )
        calls.append({"name": q, "class": kind})
    kinds = {c["class"] for c in calls}
    verdict = "dangerous" if "dangerous" in kinds else "unknown" if "unknown" in kinds else "known-safe"
    return {"verdict": verdict, "calls": calls}


def _dcp_allowed() -> frozenset:
    from torchsmith.checkpoint.dcp import DCP_METADATA_CLASSES

    return DCP_METADATA_CLASSES


def _dangerous(calls: list[str]) -> list[str]:
    return sorted({q for q in calls if is_dangerous(q)})


def describe_value(v: Any) -> str:
    """A short description of a non-tensor checkpoint entry, for ``other_keys`` and ``inspect``."""
    if isinstance(v, TensorRef):
        return f"tensor {v.dtype}{list(v.shape)}"
    if isinstance(v, bool | int | float):
        return f"{type(v).__name__} {v}"
    if isinstance(v, str):
        return f"str {v[:40]!r}"
    if isinstance(v, dict):
        return f"dict with {len(v)} entries"
    if isinstance(v, list | tuple):
        return f"{type(v).__name__} of {len(v)}"
    if module_state(v) is not None:
        return f"module {v._qualname} (not imported)"
    if isinstance(v, StandIn):
        return f"object {v._qualname} (not imported)"
    if isinstance(v, StandInCall):
        return f"call to {v.qualname} (not executed)"
    if v is None:
        return "None"
    if type(v).__name__ == "ndarray" and type(v).__module__ == "numpy":
        return f"numpy array {v.dtype}{list(v.shape)}"
    return type(v).__name__


def _tensor_dict(d: dict) -> dict[str, TensorRef] | None:
    """``d`` as a state dict when it is one (string keys, tensor values), else None."""
    if not d:
        return None
    tensors = {str(k): v for k, v in d.items() if isinstance(v, TensorRef)}
    if not tensors or len(tensors) * 2 < len(d):
        return None
    return tensors


_MAX_FLAT_ENTRIES = 1_000_000


def _flatten(
    d: dict, prefix: str, out: dict[str, TensorRef], depth: int = 0, seen: set | None = None
) -> None:
    # A dict the pickle shares (memo) is walked once: five levels of one 100-key dict referenced
    # 100 times each would otherwise be 100**5 paths.
    seen = set() if seen is None else seen
    if id(d) in seen:
        return
    seen.add(id(d))
    for k, v in d.items():
        if len(seen) + len(out) > _MAX_FLAT_ENTRIES:
            raise CheckpointError(f"more than {_MAX_FLAT_ENTRIES} nested entries; not a checkpoint")
        if isinstance(v, TensorRef):
            out[f"{prefix}{k}"] = v
        elif isinstance(v, dict) and depth < 4:
            _flatten(v, f"{prefix}{k}.", out, depth + 1, seen)


def select_tensors(raw: RawCheckpoint) -> tuple[dict[str, TensorRef], str | None, dict[str, str], list[str]]:
    """Find the weights in ``raw``: ``(tensors, container_key, other_keys, notes)``. Needs no torch."""
    path, obj = raw.path, raw.obj
    notes: list[str] = []
    bad = _dangerous([*raw.calls, *raw.stand_ins])  # named at all, not only called
    if bad:
        raise CheckpointError(
            f"{path}: refused: unpickling this file would call {', '.join(bad[:5])} (it can run "
            "arbitrary code); nothing was executed. A training script never writes such a call: treat "
            "the whole file as hostile (no torch.load, pickle or other unpickling tool), whatever else "
            "it holds; 'torchsmith inspect' lists every call it names"
        )
    if isinstance(obj, BoundMethodRef):
        owner = obj.obj
        if obj.name == "state_dict" and module_state(owner) is not None:
            tensors, classes = find_modules(owner)
            notes.append(
                f"this file holds the bound method {owner._qualname}.state_dict, not a state dict: it "
                "was written by torch.save(model.state_dict, path) without the call (seed trap 2). "
                f"torchsmith rescued the weights of the model it is bound to (class {classes[0]}) "
                "without importing it; save with torchsmith.save(model, path) or "
                "torch.save(model.state_dict(), path)"
            )
            return tensors, None, {}, notes
        raise CheckpointError(f"{path}: holds a pickled bound method .{obj.name}, not weights")
    if module_state(obj) is not None:
        tensors, classes = find_modules(obj)
        notes.append(_rescue_note(obj, classes))
        return tensors, None, {}, notes
    if isinstance(obj, TensorRef):
        raise CheckpointError(f"{path}: holds a single tensor {describe_value(obj)}, not a state dict")
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path}: holds {describe_value(obj)}, not a state dict or a checkpoint dictionary"
        )
    tensors = _tensor_dict(obj)
    if tensors is not None:
        skipped = [str(k) for k, v in obj.items() if not isinstance(v, TensorRef)]
        if skipped:
            notes.append(f"skipped {len(skipped)} non-tensor entries: {', '.join(skipped[:5])}")
        return tensors, None, {}, notes
    for key in (*CONTAINER_KEYS, *obj.keys()):
        if key not in obj:
            continue
        value = obj[key]
        found: dict[str, TensorRef] | None = None
        taken = str(key)
        if isinstance(value, dict):
            found = _tensor_dict(value)
            if found is None and key in CONTAINER_KEYS:
                for inner in CONTAINER_KEYS:  # e.g. {"model": {"state_dict": {...}}}
                    if isinstance(value.get(inner), dict) and (found := _tensor_dict(value[inner])):
                        taken = f"{key}.{inner}"
                        break
        elif module_state(value) is not None:
            found, classes = find_modules(value)
            notes.append(_rescue_note(value, classes))
        elif isinstance(value, BoundMethodRef) and module_state(value.obj) is not None:
            found, _ = find_modules(value.obj)
            notes.append(f"entry {key!r} is a pickled bound method .{value.name} (trap 2); weights rescued")
        if found:
            others = {str(k): describe_value(v) for k, v in obj.items() if k != key}
            return found, taken, others, notes
    flat: dict[str, TensorRef] = {}
    _flatten({k: v for k, v in obj.items() if "optim" not in str(k) and "sched" not in str(k)}, "", flat)
    if flat:
        notes.append("no standard container key found; took every tensor in nested dictionaries")
        return flat, None, {}, notes
    keys = ", ".join(repr(str(k)) for k in list(obj)[:8])
    raise CheckpointError(
        f"{path}: no tensors found: a dictionary with keys {keys}; expected a state dict or a container "
        f"key such as {', '.join(CONTAINER_KEYS[:5])}"
    )


def _rescue_note(obj: StandIn, classes: list[str]) -> str:
    inner = f" holding {', '.join(classes[1:6])}" if len(classes) > 1 else ""
    return (
        f"rescued whole-model pickle of class {obj._qualname}{inner} without importing it "
        "(tensors only; pass trust_pickle=True to unpickle the model object itself)"
    )


def _trusted_load(path: Path, map_location: Any) -> Any:
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path}: torch.load failed even with trust_pickle=True: {e}") from None


def read_checkpoint(
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    map_location: Any = "cpu",
    mmap: bool = True,
) -> Checkpoint:
    """Read the weights in ``path`` (any format), plus what else the file held.

    Safe by default: pickles are read with a restricted reader that imports nothing and runs
    nothing; whole-model pickles are rescued as tensors. ``trust_pickle=True`` falls back to
    ``torch.load(weights_only=False)`` only when the restricted reader cannot find the weights.
    Tensors saved on a GPU are read onto ``map_location`` (the CPU by default). With ``mmap`` the
    tensors are copy-on-write views of the file, so reading costs no memory until they are used.

    >>> sd = read_checkpoint("resnet.pth").state_dict               # doctest: +SKIP
    """
    raw = open_raw(path)
    if raw.format == "dcp":
        from torchsmith.checkpoint.dcp import load_dcp_tensors

        tensors = load_dcp_tensors(raw, trust_pickle=trust_pickle)
        return Checkpoint(raw.path, raw.format, tensors, None, {}, raw.metadata, list(raw.notes))
    try:
        refs, container, others, notes = select_tensors(raw)
    except CheckpointError:
        if trust_pickle and raw.format in ("torch-zip", "torch-legacy", "pickle"):
            return _read_trusted(raw, map_location)
        raise
    bounds = [(k, r.check_bounds()) for k, r in refs.items()]
    bounds = [(k, b) for k, b in bounds if b]
    if bounds:
        raise CheckpointError(f"{raw.path}: damaged: tensor {bounds[0][0]!r} {bounds[0][1]}")
    maps = FileMaps(use_mmap=mmap)
    state_dict = {k: materialize(r, maps) for k, r in refs.items()}
    if map_location not in (None, "cpu"):
        state_dict = {k: v.to(map_location) for k, v in state_dict.items()}
    return Checkpoint(raw.path, raw.format, state_dict, container, others, raw.metadata, raw.notes + notes)


def _read_trusted(raw: RawCheckpoint, map_location: Any) -> Checkpoint:
    import torch

    obj = _trusted_load(raw.path, map_location)
    notes = ["unpickled with trust_pickle=True"]
    if isinstance(obj, torch.nn.Module):
        from torchsmith._modules import unwrap_model

        return Checkpoint(raw.path, raw.format, unwrap_model(obj).state_dict(), None, {}, raw.metadata, notes)
    if isinstance(obj, dict):
        for key in (*CONTAINER_KEYS, *obj.keys()):
            v = obj.get(key)
            if isinstance(v, torch.nn.Module):
                others = {str(k): type(o).__name__ for k, o in obj.items() if k != key}
                return Checkpoint(raw.path, raw.format, v.state_dict(), str(key), others, raw.metadata, notes)
            if isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) for t in v.values()):
                others = {str(k): type(o).__name__ for k, o in obj.items() if k != key}
                return Checkpoint(raw.path, raw.format, dict(v), str(key), others, raw.metadata, notes)
    raise CheckpointError(f"{raw.path}: holds a {type(obj).__name__}, not weights (unpickled with trust)")


def read_state_dict(
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    map_location: Any = "cpu",
    mmap: bool = True,
) -> dict[str, Any]:
    """The state dict in ``path`` (any format, container unwrapped): see :func:`read_checkpoint`.

    >>> import torchsmith
    >>> sd = torchsmith.read_state_dict("model.pth")               # doctest: +SKIP
    """
    return read_checkpoint(path, trust_pickle=trust_pickle, map_location=map_location, mmap=mmap).state_dict
