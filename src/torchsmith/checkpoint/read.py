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

import collections
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchsmith.checkpoint._budget import ReadBudget
from torchsmith.checkpoint._globals import GlobalVerdict, classify
from torchsmith.checkpoint._refs import ALIGNMENT, FileMaps, TensorRef, materialize
from torchsmith.checkpoint._values import (
    BoundMethodRef,
    RefusedTensor,
    StandIn,
    StandInCall,
    materialised_nbytes,
)
from torchsmith.checkpoint.formats import RawCheckpoint, open_raw
from torchsmith.checkpoint.pickle_reader import (
    DangerousPickle,
    _dangerous_message,
    find_modules,
    module_state,
)
from torchsmith.errors import CheckpointError, InputError

__all__ = ["CONTAINER_KEYS", "Checkpoint", "read_checkpoint", "read_state_dict", "select_tensors"]

# Keys under which training scripts and libraries keep the model's weights, most specific first.
CONTAINER_KEYS = (
    "state_dict", "model_state_dict", "model_state", "model", "module", "net", "network",
    "weights", "params", "ema", "model_ema", "state_dict_ema", "ema_state_dict", "teacher", "student",
)  # fmt: skip


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
    """Whether global ``qualname`` is dangerous by the one globals table (:mod:`._globals`)."""
    return classify(qualname).verdict == "dangerous"


def safety_verdict(raw: RawCheckpoint | set[str], fmt: str = "") -> dict[str, Any]:
    """Every global the file's pickles name, each ``known-safe``, ``unknown`` or ``dangerous``.

    The classes come from the same table the reader obeys (:func:`._globals.classify`):
    ``known-safe`` is built by the reader, ``unknown`` is read as an inert stand-in (torchsmith did
    not run it, but ``torch.load(weights_only=False)`` would), ``dangerous`` (with its ``danger``
    class: code execution, nested load, file, network, process) makes the reader refuse the file.
    ``verdict`` is the worst class; files without pickles (safetensors) are ``known-safe``.
    """
    if isinstance(raw, RawCheckpoint):
        names = set(raw.globals_named) | set(raw.stand_ins) | set(raw.calls)
        fmt = raw.format
    else:
        names = set(raw)
    allowed_dcp = _dcp_allowed() if fmt == "dcp" else frozenset()
    calls = []
    for q in sorted(names):
        v = classify(q)
        if v.verdict == "unknown" and q in allowed_dcp:
            v = GlobalVerdict(q, "known-safe")
        calls.append(v.as_dict())
    kinds = {c["class"] for c in calls}
    verdict = "dangerous" if "dangerous" in kinds else "unknown" if "unknown" in kinds else "known-safe"
    return {"verdict": verdict, "calls": calls}


def _dcp_allowed() -> frozenset:
    from torchsmith.checkpoint.dcp import DCP_METADATA_CLASSES

    return DCP_METADATA_CLASSES


def _dangerous(names: Any) -> dict[str, str]:
    out = {}
    for q in names:
        v = classify(q)
        if v.verdict == "dangerous":
            out[q] = v.danger or "code execution"
    return out


class NoTensors(CheckpointError):
    """A checkpoint that holds no tensors at all (a scheduler or optimizer-free state): ``keys`` lists it."""

    def __init__(self, message: str, keys: dict[str, str]) -> None:
        super().__init__(message)
        self.keys = keys


def describe_value(v: Any) -> str:
    """A short description of a non-tensor checkpoint entry, for ``other_keys`` and ``inspect``."""
    if isinstance(v, TensorRef):
        return f"tensor {v.dtype}{list(v.shape)}"
    if isinstance(v, RefusedTensor):
        return f"{v.kind} tensor{list(v.shape) if v.shape else ''} (not read)"
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
    tensors = {str(k): v for k, v in d.items() if isinstance(v, TensorRef | RefusedTensor)}
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
        if isinstance(v, TensorRef | RefusedTensor):
            out[f"{prefix}{k}"] = v
        elif isinstance(v, dict) and depth < 4:
            _flatten(v, f"{prefix}{k}.", out, depth + 1, seen)


def select_tensors(raw: RawCheckpoint) -> tuple[dict[str, TensorRef], str | None, dict[str, str], list[str]]:
    """Find the weights in ``raw``: ``(tensors, container_key, other_keys, notes)``. Needs no torch.

    A file naming a dangerous global is refused (:class:`DangerousPickle`); a sparse, quantized or
    other tensor the reader does not read densely is refused naming its key and kind, never left out.
    """
    bad = _dangerous([*raw.globals_named, *raw.calls, *raw.stand_ins])  # named at all, not only called
    if bad:
        raise DangerousPickle(_dangerous_message(str(raw.path), bad), set(raw.globals_named), bad)
    tensors, container, others, notes = _select(raw)
    refused = [(k, v) for k, v in tensors.items() if isinstance(v, RefusedTensor)]
    if refused:
        k, v = refused[0]
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise CheckpointError(
            f"{raw.path}: tensor {k!r} is a {v.kind} tensor{more}: torchsmith reads dense tensors only and "
            "does not leave entries out; convert it first (tensor.to_dense() / tensor.dequantize()) or "
            "read the file with torch.load(weights_only=True)"
        )
    return tensors, container, others, notes


def _select(raw: RawCheckpoint) -> tuple[dict[str, Any], str | None, dict[str, str], list[str]]:
    path, obj = raw.path, raw.obj
    notes: list[str] = []
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
    if isinstance(obj, TensorRef | RefusedTensor):
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
    raise NoTensors(
        f"{path}: no tensors found: a dictionary with keys {keys} (a tensor-less checkpoint, e.g. a "
        "scheduler or training state); expected a state dict or a container key such as "
        f"{', '.join(CONTAINER_KEYS[:5])}",
        {str(k): describe_value(v) for k, v in obj.items()},
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
    device: Any = None,
) -> Checkpoint:
    """Read the weights in ``path`` (any format), plus what else the file held.

    Safe by default: pickles are read with a restricted reader that imports nothing and runs
    nothing; whole-model pickles are rescued as tensors. ``trust_pickle=True`` falls back to
    ``torch.load(weights_only=False)`` only when the restricted reader cannot find the weights.
    ``map_location`` takes every form ``torch.load`` does: a device string or ``torch.device``, a
    dict mapping saved locations to new ones (``{"cuda:1": "cuda:0"}``), or a callable
    ``(storage, location) -> storage or None``; ``device=`` is the safetensors/timm spelling of a
    single device. Tensors saved on a GPU are read onto the CPU unless mapped elsewhere. With
    ``mmap`` the tensors are copy-on-write views of the file, so reading costs no memory until they
    are used. When the file's state dict carries module versions (``_metadata``, as
    ``Module.state_dict()`` writes it), the returned state dict has the same ``_metadata``. A file saved
    by torchsmith has every tensor checked against its recorded checksums first (``CheckpointError``
    naming the damaged tensors).

    >>> sd = read_checkpoint("resnet.pth").state_dict               # doctest: +SKIP
    """
    if device is not None:
        if map_location not in ("cpu", None) and map_location != device:
            raise InputError(
                f"read_checkpoint: both map_location={map_location!r} and device={device!r}; give one"
            )
        map_location = f"cuda:{device}" if type(device) is int else device
    _check_map_location(map_location)
    try:
        raw = open_raw(path)
    except DangerousPickle:
        if not trust_pickle:
            raise
        # Asked for in words: torch.load(weights_only=False) runs whatever the file holds.
        from torchsmith.checkpoint.formats import sniff

        return _read_trusted(RawCheckpoint(Path(path), sniff(path), None), map_location)
    if raw.format == "dcp":
        from torchsmith.checkpoint.dcp import load_dcp_tensors

        tensors = load_dcp_tensors(raw, trust_pickle=trust_pickle)
        tensors = {k: _to_device(v, _target(map_location, "cpu", v)) for k, v in tensors.items()}
        return Checkpoint(raw.path, raw.format, tensors, None, {}, raw.metadata, list(raw.notes))
    try:
        refs, container, others, notes = select_tensors(raw)
    except CheckpointError as e:
        if isinstance(e, DangerousPickle):
            raise
        if trust_pickle and raw.format in ("torch-zip", "torch-legacy", "pickle"):
            return _read_trusted(raw, map_location)
        raise
    bounds = [(k, r.check_bounds()) for k, r in refs.items()]
    bounds = [(k, b) for k, b in bounds if b]
    if bounds:
        raise CheckpointError(f"{raw.path}: damaged: tensor {bounds[0][0]!r} {bounds[0][1]}")
    budget = raw.budget if isinstance(raw.budget, ReadBudget) else ReadBudget(where=str(raw.path))
    maps = FileMaps(use_mmap=mmap)
    if not mmap:
        budget.charge_bytes(_file_size(raw.path), "reading the file into memory (mmap=False)")
    from torchsmith.checkpoint._checksums import check_checksums, damaged_message

    algorithms, bad = check_checksums(refs, raw.metadata, maps, raw.path)  # recorded checksums: every byte
    if bad:
        raise CheckpointError(damaged_message(raw.path, bad, algorithms))
    copied: set[int] = set()
    state_dict: dict[str, Any] = {}
    for k, r in refs.items():
        st = r.storage
        if st is not None and st.offset % ALIGNMENT and id(st) not in copied:
            copied.add(id(st))  # unaligned data is copied once per storage (see FileMaps.storage_tensor)
            budget.charge_bytes(st.nbytes, f"aligning tensor {k!r}")
        t = materialize(r, maps)
        target = _target(map_location, st.location if st is not None else "cpu", t)
        if target is not None and str(target) != "cpu":
            budget.charge_bytes(materialised_nbytes(r), f"moving tensor {k!r} to {target}")
            t = _to_device(t, target)
        state_dict[k] = t
    versions = _module_versions(raw.obj, container)
    if versions is not None:
        state_dict = collections.OrderedDict(state_dict)
        state_dict._metadata = versions  # type: ignore[attr-defined]
    return Checkpoint(raw.path, raw.format, state_dict, container, others, raw.metadata, raw.notes + notes)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _check_map_location(m: Any) -> None:
    if m is None or isinstance(m, str | dict) or callable(m):
        if isinstance(m, dict) and not all(
            (isinstance(k, str) and isinstance(v, str)) or _is_device(v) for k, v in m.items()
        ):
            raise InputError(
                f"map_location: a dict must map saved location strings to devices, got {m!r:.80}"
            )
        return
    if _is_device(m):
        return
    raise InputError(
        f"map_location: expected a device string, a torch.device, a dict of locations or a callable "
        f"(as torch.load takes), got a {type(m).__name__}"
    )


def _is_device(v: Any) -> bool:
    return type(v).__name__ == "device" and type(v).__module__ == "torch"


def _target(map_location: Any, location: str, tensor: Any) -> Any:
    """The device a tensor saved on ``location`` goes to, as torch.load's ``map_location`` says."""
    if map_location is None:
        return "cpu"
    if isinstance(map_location, str) or _is_device(map_location):
        return map_location
    if isinstance(map_location, dict):
        return map_location.get(location, "cpu" if location.startswith("cuda") else location) or "cpu"
    import torch

    # torch calls it with the storage on the CPU and the saved location; None means "the default".
    try:
        out = map_location(tensor.untyped_storage(), location)
    except Exception as e:
        raise InputError(
            f"map_location callable failed for location {location!r}: {type(e).__name__}: {e}"
        ) from None
    if out is None:
        return "cpu"
    if isinstance(out, torch.UntypedStorage | torch.TypedStorage):
        return out.device
    raise InputError(f"map_location callable returned a {type(out).__name__}, not a storage or None")


def _to_device(t: Any, target: Any) -> Any:
    if target is None or str(target) == "cpu":
        return t
    try:
        return t.to(target)
    except (RuntimeError, AssertionError, ValueError) as e:
        raise CheckpointError(f"cannot move a tensor to {target}: {e}"[:300]) from None


def _module_versions(obj: Any, container: str | None) -> Any:
    """The ``_metadata`` (module versions) of the dict the weights came from, checked, or None."""
    src = obj
    for part in container.split(".") if container else []:
        src = src.get(part) if isinstance(src, dict) else None
    meta = getattr(src, "_metadata", None) if isinstance(src, collections.OrderedDict) else None
    if not isinstance(meta, dict) or len(meta) > 1_000_000:
        return None
    out = collections.OrderedDict()
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, dict):
            return None
        out[k] = {str(a): b for a, b in v.items() if isinstance(b, int | str | float | bool | type(None))}
    return out


def _read_trusted(raw: RawCheckpoint, map_location: Any) -> Checkpoint:
    import torch

    obj = _trusted_load(raw.path, map_location)
    notes = ["unpickled with trust_pickle=True"]
    if isinstance(obj, torch.nn.Module):
        from torchsmith._modules import unwrap_model

        return Checkpoint(raw.path, raw.format, unwrap_model(obj).state_dict(), None, {}, raw.metadata, notes)
    if isinstance(obj, dict):
        top = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if top and len(top) * 2 >= len(obj):  # a state dict with a few other entries
            skipped = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            if skipped:
                notes.append(f"skipped {len(skipped)} non-tensor entries: {', '.join(skipped[:5])}")
            return Checkpoint(raw.path, raw.format, top, None, {}, raw.metadata, notes)
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
    device: Any = None,
) -> dict[str, Any]:
    """The state dict in ``path`` (any format, container unwrapped): see :func:`read_checkpoint`.

    ``device`` (a string, an int GPU index or a ``torch.device``) is accepted as safetensors and
    timm spell it; it is the same as ``map_location``.

    >>> import torchsmith
    >>> sd = torchsmith.read_state_dict("model.pth")               # doctest: +SKIP
    """
    return read_checkpoint(
        path, trust_pickle=trust_pickle, map_location=map_location, mmap=mmap, device=device
    ).state_dict
