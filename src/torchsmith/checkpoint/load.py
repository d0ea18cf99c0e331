"""Rebuild a model from a checkpoint, with no pickle and without holding the weights twice.

``torchsmith.save`` records how a model was built (``torchsmith.arch`` from ``create_model``,
``torchsmith.spec`` from ``build_model``, ``torchsmith.surgery`` from surgery operations).
:func:`load_model` replays that record with every parameter on the ``meta`` device (no memory, no
random initialisation), then assigns the memory-mapped tensors of the file in place
(``load_state_dict(assign=True)``): the file's pages *are* the weights. Every byte is checked
against the recorded checksums (xxh3-128, or SHA-256 in older files) in threads while the model is
built, before it is returned; tied weights stay tied.

>>> import torchsmith
>>> model = torchsmith.load_model("resnet152.safetensors")       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from torchsmith.checkpoint._checksums import check_checksums
from torchsmith.checkpoint._gc import gc_paused
from torchsmith.checkpoint._refs import FileMaps, TensorRef, materialize
from torchsmith.checkpoint.formats import RawCheckpoint, open_raw
from torchsmith.errors import CheckpointError

__all__ = ["check_checksums", "checksum_mismatches", "load_model", "params_on_meta"]


@contextlib.contextmanager
def params_on_meta() -> Iterator[None]:
    """Create every ``nn.Parameter`` on the meta device while the block runs; buffers stay real.

    Parameters cost no memory, and ``torch.nn.init`` functions called on them return at once
    (on meta tensors they would only run slow decompositions that produce nothing); buffers, often
    computed in ``__init__`` and not saved (position tables), are built as usual. The patches are
    process-wide while the block runs, so build one model at a time.
    """
    import torch
    import torch.nn as nn
    import torch.nn.init as init

    original = nn.Module.register_parameter

    def register(self: nn.Module, name: str, param: Any) -> None:
        original(self, name, param)
        if param is not None and param.device.type != "meta":
            self._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    def skip_on_meta(fn: Any) -> Any:
        @functools.wraps(fn)  # keeps the signature visible to callers that check arguments (init rules)
        def init_fn(tensor: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
            return fn(tensor, *args, **kwargs)

        return init_fn

    inits = {n: getattr(init, n) for n in dir(init) if n.endswith("_") and not n.startswith("_")}
    nn.Module.register_parameter = register
    for n, fn in inits.items():
        setattr(init, n, skip_on_meta(fn))
    try:
        yield
    finally:
        nn.Module.register_parameter = original
        for n, fn in inits.items():
            setattr(init, n, fn)


def checksum_mismatches(refs: dict[str, TensorRef], metadata: dict[str, str], maps: FileMaps) -> list[str]:
    """Names of tensors whose bytes do not match the checksums recorded in ``metadata`` at save time."""
    return check_checksums(refs, metadata, maps)[1]


def damaged_message(path: Path, bad: list[str], algorithms: Any = ("sha256",)) -> str:
    """The one-line message for a file whose tensors ``bad`` fail their recorded checksums."""
    from torchsmith.checkpoint._hashing import damaged_message as message

    return message(path, bad, algorithms)


def _build(raw: RawCheckpoint) -> tuple[Any, list[str]]:
    """Build the recorded architecture on meta (falling back to a normal build) and replay surgery."""
    notes: list[str] = []
    try:
        arch = json.loads(raw.metadata["torchsmith.arch"]) if "torchsmith.arch" in raw.metadata else None
        spec = json.loads(raw.metadata["torchsmith.spec"]) if arch is None else None
        ops = json.loads(raw.metadata.get("torchsmith.surgery") or "[]")
        if "torchsmith.arch" in raw.metadata and not (
            isinstance(arch, dict) and isinstance(arch.get("name"), str)
        ):
            raise ValueError("torchsmith.arch has no model name")
        if arch is not None and not isinstance(arch.get("kwargs", {}), dict):
            raise ValueError("torchsmith.arch kwargs is not a mapping")
        # A recorded spec is inline JSON only: a string would be read as a path or YAML text.
        if arch is None and not isinstance(spec, dict):
            raise ValueError(f"torchsmith.spec is a JSON {type(spec).__name__}, not an inline spec mapping")
        if not (isinstance(ops, list) and all(isinstance(op, dict) for op in ops)):
            raise ValueError("torchsmith.surgery is not a list of operations")
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        raise CheckpointError(f"{raw.path}: damaged provenance metadata: {str(e)[:200]}") from None
    from torchsmith._sandbox import check_kwargs, sandbox
    from torchsmith.errors import InputError

    if arch is not None:
        try:
            check_kwargs(arch.get("kwargs", {}), "torchsmith.arch.kwargs")
        except InputError as e:
            raise CheckpointError(f"{raw.path}: cannot rebuild the recorded model: {e}") from None

    def construct() -> Any:
        if arch is not None and arch.get("weights_structure") is not None:
            from torchsmith.hub import rebuild_structure  # what torchvision builds for those weights

            return rebuild_structure(arch)
        if arch is not None:
            from torchsmith.zoo import create_model

            return create_model(arch["name"], **arch.get("kwargs", {}))
        from torchsmith.spec import build_model  # lazily: the spec concern

        return build_model(spec)

    def replay(model: Any) -> Any:
        if ops:
            from torchsmith.surgery import apply_surgery  # lazily: the surgery concern

            result = apply_surgery(model, ops)  # in place; returns a report
            model = result if _is_module(result) else model
        return model

    where = f"{raw.path.name}: recorded model"
    try:
        with params_on_meta(), sandbox(where):
            return replay(construct()), notes
    except InputError as e:
        raise CheckpointError(f"{raw.path}: cannot rebuild the recorded model: {e}") from None
    except Exception:  # some constructors compute with their weights: build for real instead
        pass
    notes.append("the model could not be built on the meta device; built it normally")
    try:
        with sandbox(where):
            return replay(construct()), notes
    except InputError as e:
        raise CheckpointError(f"{raw.path}: cannot rebuild the recorded model: {e}") from None
    except Exception as e:  # malformed metadata must not escape as a raw TypeError
        raise CheckpointError(
            f"{raw.path}: cannot rebuild the recorded model: {type(e).__name__}: {str(e)[:200]}"
        ) from None


def _is_module(obj: Any) -> bool:
    import torch.nn as nn

    return isinstance(obj, nn.Module)


def _tie_groups(model: Any) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def _set_param(model: Any, name: str, value: Any) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, leaf, value)


def load_model(
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    map_location: Any = "cpu",
    device: Any = None,
) -> Any:
    """Rebuild the model saved in ``path`` and load its weights; no pickle involved.

    Works for checkpoints written by ``torchsmith.save`` from a model made by ``create_model``,
    ``build_model`` and surgery. A whole-model pickle (``torch.save(model, path)``) is unpickled
    only with ``trust_pickle=True``; without it, read its weights with ``read_state_dict`` and
    load them into a model you build. ``device`` (``"cuda"``, ``torch.device``), as safetensors'
    and timm's loaders spell it, is another name for ``map_location``: the model ends up there.

    Raises :class:`~torchsmith.errors.CheckpointError` when the file records no architecture, its
    keys do not fit the rebuilt model, or a checksum fails; :class:`~torchsmith.errors.InputError`
    when ``device`` and ``map_location`` name different places or ``device`` is not a device.
    """
    map_location = _device_argument(device, map_location)
    with gc_paused():
        raw = open_raw(path)
        if "torchsmith.arch" not in raw.metadata and "torchsmith.spec" not in raw.metadata:
            return _load_unrecorded(raw, trust_pickle, map_location)
        model = _load_recorded(raw)
    if map_location not in (None, "cpu"):
        model = _move(model, map_location)
    return model


def _device_argument(device: Any, map_location: Any) -> Any:
    """``map_location`` for ``load_model``: ``device`` when given (checked), else ``map_location``."""
    if device is None:
        return map_location
    import torch

    from torchsmith.errors import InputError

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise InputError(
            f"load_model: device={device!r} is not a device; expected e.g. 'cpu', 'cuda', 'cuda:1' or "
            f"torch.device(...) ({str(e)[:120]})"
        ) from None
    if map_location not in (None, "cpu") and map_location != device:
        try:
            same = torch.device(map_location) == dev
        except (RuntimeError, TypeError, ValueError):
            same = False
        if not same:
            raise InputError(
                f"load_model: device={device!r} and map_location={map_location!r} name different places; "
                "give one of them"
            )
    return "cpu" if dev == torch.device("cpu") else dev


def _move(model: Any, where: Any) -> Any:
    """``model.to(where)``; a device this machine lacks is an ``InputError``, not torch's raw error."""
    from torchsmith.errors import InputError

    try:
        return model.to(where)
    except (RuntimeError, AssertionError, TypeError, ValueError) as e:
        raise InputError(f"load_model: cannot place the model on {where!r}: {str(e)[:200]}") from None


def _load_recorded(raw: RawCheckpoint) -> Any:
    from torchsmith.checkpoint.read import select_tensors

    meta = raw.metadata
    refs, _, _, _ = select_tensors(raw)
    maps = FileMaps(use_mmap=True)
    for ref in refs.values():  # map the files here, before the build runs beside the hashing
        if ref.storage is not None:
            maps.buffer(ref.storage.file, ref.storage.ident)

    def check() -> tuple[list[str], list[str]]:
        # No madvise(POPULATE) first: Python's madvise holds the GIL for its whole duration (it
        # stalled the build), while the hashing maps every page itself with the GIL released.
        return check_checksums(refs, meta, maps, raw.path)

    # Every byte is hashed in threads (xxhash releases the GIL) while this thread builds the model
    # and hands it the mapped tensors; the model is returned only once all of them match.
    error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="torchsmith-verify") as pool:
        checking = pool.submit(check)
        try:
            model, notes = _build(raw)
            _assign_weights(model, raw, refs, maps)
        except BaseException as e:  # a damaged file is named as damaged first, whatever else failed
            error = e
        algorithms, bad = checking.result()
    if bad:
        raise CheckpointError(damaged_message(raw.path, bad, algorithms)) from None
    if error is not None:
        raise error
    model._torchsmith_load_notes = raw.notes + notes
    _restore_weights_info(model, meta)
    return model


def _assign_weights(model: Any, raw: RawCheckpoint, refs: dict[str, TensorRef], maps: FileMaps) -> None:
    """Put the file's tensors (views of the mapped file) into ``model``, built on meta; ties kept."""
    from torchsmith.checkpoint.keys import fit_keys

    target = list(model.state_dict(keep_vars=True).keys())
    fit = fit_keys(list(refs), target)
    if fit.unmatched_source or fit.unmatched_target:
        raise CheckpointError(
            f"{raw.path}: its tensors do not fit the recorded model ({fit.describe()}); e.g. missing "
            f"{fit.unmatched_target[:3]}, unexpected {fit.unmatched_source[:3]}"
        )
    ties = _tie_groups(model)
    state = fit.apply(_mapped_tensors(refs, maps))
    if not _assign_direct(model, state):
        versions = getattr(raw.obj, "_metadata", None)  # module versions the file recorded (MNASNet)
        if isinstance(versions, dict):
            from torchsmith.checkpoint.keys import rename_module_metadata

            state._metadata = rename_module_metadata(versions, fit.mapping)  # type: ignore[attr-defined]
        model.load_state_dict(state, strict=True, assign=True)
    for group in ties:
        first = model.get_parameter(group[0])
        for name in group[1:]:
            _set_param(model, name, first)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise CheckpointError(f"{raw.path}: the checkpoint leaves {left[:3]} uninitialised")


def _mapped_tensors(refs: dict[str, TensorRef], maps: FileMaps) -> dict[str, Any]:
    """name -> tensor: each a view of the mapped file, made in one step where its bytes lie aligned.

    A contiguous tensor whose bytes start on a 64-byte boundary (every tensor of a file torchsmith
    wrote) is set straight onto one storage over the whole map (no copy, no per-tensor buffer
    object); anything else goes through :func:`materialize`, which checks, views or copies it.
    """
    import torch

    from torchsmith.checkpoint._refs import ALIGNMENT, QUANTIZED_DTYPES

    storages: dict[str, Any] = {}
    dtypes: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for name, ref in refs.items():
        st, rng = ref.storage, ref.byte_range()
        dtype = dtypes.get(ref.dtype)
        if dtype is None and ref.dtype not in QUANTIZED_DTYPES:
            dtype = getattr(torch, ref.dtype, None)
            dtype = dtypes[ref.dtype] = dtype if isinstance(dtype, torch.dtype) else None
        # In place only when the bytes lie inside the storage, and the storage inside the file.
        buf = None
        if st is not None and rng is not None and dtype is not None and rng[0] % ALIGNMENT == 0:
            inside = st.offset <= rng[0] and rng[1] <= st.offset + st.nbytes and min(ref.shape, default=1) > 0
            buf = maps.buffer(st.file, st.ident) if inside else None
        if buf is None or rng[1] > len(buf):
            out[name] = materialize(ref, maps)
            continue
        storage = storages.get(st.file)
        if storage is None:
            storage = storages[st.file] = torch.frombuffer(buf, dtype=torch.uint8).untyped_storage()
        stride = ref.stride if ref.stride is not None else ref.contiguous_stride
        out[name] = torch.empty(0, dtype=dtype).set_(storage, rng[0] // ref.itemsize, ref.shape, stride)
    return out


def _assign_direct(model: Any, state: dict[str, Any]) -> bool:
    """Assign ``state`` into ``model``'s parameter and buffer slots; False where only torch may.

    What ``load_state_dict(strict=True, assign=True)`` does for plain modules (a new ``Parameter``
    keeping ``requires_grad``, buffers as they are), without its per-module machinery. Used only
    when nothing can observe the difference: no load hooks, no module with its own
    ``_load_from_state_dict`` (BatchNorm's only adds a missing counter), no registration hooks,
    every key a plain parameter or persistent buffer of the same shape; otherwise torch loads.
    """
    import torch
    import torch.nn as nn
    from torch.nn.modules import module as module_mod
    from torch.nn.modules.batchnorm import _BatchNorm

    default_loaders = (nn.Module._load_from_state_dict, _BatchNorm._load_from_state_dict)
    hooks = [getattr(module_mod, n, None) for n in dir(module_mod) if n.startswith("_global_")]
    if (
        any(h for h in hooks if isinstance(h, dict))
        or type(model).load_state_dict is not nn.Module.load_state_dict
    ):
        return False
    if torch.__future__.get_swap_module_params_on_conversion():
        return False
    modules = dict(model.named_modules(remove_duplicate=False))
    for m in modules.values():
        if (
            m._load_state_dict_pre_hooks
            or m._load_state_dict_post_hooks
            or type(m)._load_from_state_dict not in default_loaders
            or type(m).set_extra_state is not nn.Module.set_extra_state
        ):
            return False
    plan = []
    for key, value in state.items():
        owner_name, _, leaf = key.rpartition(".")
        owner = modules.get(owner_name)
        if owner is None or not isinstance(value, torch.Tensor):
            return False
        old = owner._parameters.get(leaf)
        is_param = old is not None
        if old is None:
            old = owner._buffers.get(leaf)
            if old is None or leaf in owner._non_persistent_buffers_set:
                return False
        if (is_param and type(old) is not nn.Parameter) or tuple(old.shape) != tuple(value.shape):
            return False
        plan.append((owner, leaf, is_param, old, value))
    for owner, leaf, is_param, old, value in plan:
        if is_param:
            owner._parameters[leaf] = nn.Parameter(value, requires_grad=old.requires_grad)
        else:
            owner._buffers[leaf] = value
    return True


def _restore_weights_info(model: Any, meta: dict[str, str]) -> None:
    """Keep the pretrained weights' record (source, licence, categories) on the reloaded model."""
    from torchsmith._provenance import set_weights_info

    try:
        info = json.loads(meta.get("torchsmith.weights") or "null")
    except (ValueError, RecursionError):
        info = None
    if isinstance(info, dict):
        set_weights_info(model, info)


def _load_unrecorded(raw: RawCheckpoint, trust_pickle: bool, map_location: Any) -> Any:
    from torchsmith.checkpoint.pickle_reader import module_state

    whole = module_state(raw.obj) is not None or (
        isinstance(raw.obj, dict) and any(module_state(v) is not None for v in raw.obj.values())
    )
    if whole and trust_pickle:
        import torch.nn as nn

        from torchsmith._modules import unwrap_model
        from torchsmith.checkpoint.read import CONTAINER_KEYS, _trusted_load

        obj = _trusted_load(raw.path, map_location)
        if isinstance(obj, dict):
            obj = next((obj[k] for k in (*CONTAINER_KEYS, *obj) if isinstance(obj.get(k), nn.Module)), obj)
        if isinstance(obj, nn.Module):
            return unwrap_model(obj)
    if whole:
        classes = sorted(c for c in raw.stand_ins if "torch." not in c)[:3] or sorted(raw.stand_ins)[:1]
        raise CheckpointError(
            f"{raw.path}: a whole pickled model (class {', '.join(classes)}); rebuilding the object means "
            "running the file's pickle: pass trust_pickle=True if you trust it, or build the model and "
            "load the rescued weights with torchsmith.read_state_dict"
        )
    raise CheckpointError(
        f"{raw.path}: records no architecture (not saved by torchsmith.save from a create_model/build_model "
        "model); build the model yourself and load the weights with torchsmith.load_weights(model, path) "
        "or model.load_state_dict(torchsmith.read_state_dict(path))"
    )
