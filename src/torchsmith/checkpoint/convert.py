"""Convert a checkpoint between formats (any readable format -> safetensors or a torch zip, sharded or not).

The weights are read safely (restricted pickle reader, containers unwrapped, whole-model pickles
rescued) and written by :func:`torchsmith.save`: atomically, with checksums, keeping the source's
recorded provenance so ``load_model`` still rebuilds the model.

Key edits, in this order: ``rename`` rules (``re.sub``) on the keys *as written in the source*,
then ``strip_wrappers`` (every ``module.`` / ``_orig_mod.`` component, and a Lightning ``model.``
prefix when every key has it). Tied tensors are written under every name (plain
``safetensors.torch.load_file`` sees every key); ``dedupe_tied=True`` stores them once instead.

>>> convert_checkpoint("model.pth", "model.safetensors")        # doctest: +SKIP
PosixPath('model.safetensors')
>>> convert_checkpoint("ddp.ckpt", "m.safetensors", strip_wrappers=True)   # doctest: +SKIP
PosixPath('m.safetensors')
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torchsmith.checkpoint.read import read_checkpoint
from torchsmith.errors import CheckpointError, InputError

__all__ = [
    "EXPAND_FACTOR",
    "EXPAND_SLACK",
    "check_expansion",
    "convert_checkpoint",
    "edit_keys",
    "input_bytes",
]

_CARRIED = ("torchsmith.arch", "torchsmith.spec", "torchsmith.surgery")

# A result may materialise at most EXPAND_FACTOR x its input's bytes + EXPAND_SLACK unless asked:
# a stride-0 or broadcast view, or many views of one storage, turn a few stored bytes into gigabytes.
# Tied weights written under each name (at most a few copies) stay well inside it.
EXPAND_FACTOR = 4
EXPAND_SLACK = 64 << 20


def input_bytes(paths: Iterable[str | os.PathLike]) -> int:
    """Bytes on disk of ``paths`` (files, or every regular file under a folder)."""
    total = 0
    for p in paths:
        p = Path(p)
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
        elif p.is_file():
            total += p.stat().st_size
    return total


def _sizes(t: Any) -> tuple[int, int]:
    """(materialised bytes, stored bytes) of a tensor or ``TensorRef``: shape x itemsize vs its storage."""
    if hasattr(t, "untyped_storage"):
        out = t.numel() * t.element_size()
        try:
            return out, t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
            return out, out
    from torchsmith.checkpoint._values import materialised_nbytes  # the reader's own budget unit

    out = materialised_nbytes(t)  # a TensorRef: from its shape, never from its storage
    return out, t.storage.nbytes if t.storage is not None else 0


def check_expansion(
    tensors: dict[str, Any], source_bytes: int, *, what: str, where: Any, allow_expand: bool = False
) -> int:
    """Refuse (``CheckpointError``) when ``tensors`` materialise far more bytes than their source holds.

    ``tensors`` maps names to torch tensors or ``TensorRef`` objects; each counts its materialised size
    (numel x itemsize, from shape and strides, not its storage's size). Over
    ``EXPAND_FACTOR x source_bytes + EXPAND_SLACK`` the error names the tensor that expands most, its
    materialised size and the input's size. Returns the total materialised bytes.

    >>> import torch
    >>> view = torch.zeros(1).expand(1 << 28)              # 4 bytes stored, 1 GiB materialised
    >>> check_expansion({"w": view}, 100, what="convert", where="x.pt")
    Traceback (most recent call last):
    ...
    torchsmith.errors.CheckpointError: x.pt: convert would materialise 1 GiB from a 100 B input ...
    """
    total, worst, worst_key, worst_sizes = 0, -1, "", (0, 0)
    for key, t in tensors.items():
        out, stored = _sizes(t)
        total += out
        if out - stored > worst:
            worst, worst_key, worst_sizes = out - stored, key, (out, stored)
    limit = EXPAND_FACTOR * source_bytes + EXPAND_SLACK
    if total > limit and not allow_expand:
        out, stored = worst_sizes
        raise CheckpointError(
            f"{where}: {what} would materialise {_human(total)} from a {_human(source_bytes)} input (more "
            f"than {EXPAND_FACTOR}x + {_human(EXPAND_SLACK)}): tensor {worst_key!r} alone is {_human(out)} "
            f"({out} bytes) over {_human(stored)} stored, a broadcast/stride-0 view or many views of one "
            "storage; pass allow_expand=True (--allow-expand) if the file is trusted and that is intended"
        )
    return total


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def _describe(value: Any) -> str:
    """What an entry that is not a dense tensor is, for messages (``a sparse COO tensor``, ``an int``)."""
    kind = getattr(value, "kind", None)  # the reader's RefusedTensor: "sparse COO", "quantized qint8"
    if isinstance(kind, str):
        return f"a {kind} tensor"
    qualname = getattr(value, "qualname", None) or getattr(value, "_qualname", None)
    if isinstance(qualname, str):
        kinds = {
            "_rebuild_sparse_tensor": "a sparse COO tensor",
            "_rebuild_sparse_csr": "a sparse CSR tensor",
            "_rebuild_qtensor": "a quantized tensor",
            "_rebuild_nested_tensor": "a nested tensor",
        }
        return kinds.get(qualname.rpartition(".")[2], f"an object built by {qualname}")
    layout = getattr(value, "layout", None)
    if layout is not None and hasattr(value, "is_quantized"):
        if value.is_quantized:
            return f"a quantized tensor ({value.dtype})"
        return f"a {str(layout).removeprefix('torch.')} tensor"
    article = "an" if type(value).__name__[:1] in "aeiou" else "a"
    return f"{article} {type(value).__name__}"


def _tensor_like(value: Any) -> bool:
    from torchsmith.checkpoint._refs import TensorRef

    return isinstance(value, TensorRef) or isinstance(getattr(value, "kind", None), str)


def _weights_dicts(obj: Any) -> list[dict]:
    """Dictionaries of ``obj`` that can hold the weights: the top level and its container entries."""
    from torchsmith.checkpoint.read import CONTAINER_KEYS

    if not isinstance(obj, dict):
        return []
    found = [obj]
    for key in CONTAINER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, dict):
            found.append(inner)
            found.extend(v for k in CONTAINER_KEYS if isinstance(v := inner.get(k), dict))
    return found


def _entries_left_out(raw: Any, tensors: dict[str, Any], container: str | None) -> dict[str, str]:
    """Entries of the dictionary the weights came from that are not dense tensors (name -> what)."""
    obj = raw.obj
    if container is not None and isinstance(obj, dict):
        if container in obj:
            obj = obj[container]
        else:
            head, _, tail = container.partition(".")
            obj = obj.get(head)
            obj = obj.get(tail) if isinstance(obj, dict) else None
    if not isinstance(obj, dict) or not set(tensors) <= {str(k) for k in obj}:
        return {}  # weights rescued from a model object or nested dictionaries: nothing else in there
    from torchsmith.checkpoint._refs import TensorRef

    return {str(k): _describe(v) for k, v in obj.items() if not isinstance(v, TensorRef)}


def _unwritable(state_dict: dict[str, Any]) -> dict[str, str]:
    """Entries the writers cannot store as they are: non-tensors, sparse, quantized, nested tensors.

    Both writers (safetensors, and torchsmith's torch zip with per-tensor checksums) take dense
    strided tensors; anything else is named to the user rather than converted lossily or dropped.
    """
    import torch

    return {
        k: _describe(v)
        for k, v in state_dict.items()
        if not isinstance(v, torch.Tensor) or v.layout != torch.strided or v.is_quantized or v.is_nested
    }


def _skip_patterns(skip: Sequence[str] | str) -> list[str]:
    patterns = [skip] if isinstance(skip, str) else list(skip)
    bad = [p for p in patterns if not isinstance(p, str) or not p]
    if bad:
        raise InputError(f"skip: expected entry names or glob patterns (non-empty strings), got {bad[0]!r}")
    return patterns


def _skipped(name: str, patterns: list[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def _without_skipped(raw: Any, patterns: list[str]) -> tuple[Any, dict[str, str]]:
    """``raw`` with the tensor-like entries ``patterns`` name removed from its weight dictionaries.

    The reader refuses a file holding a sparse or quantized tensor (it never leaves one out on its
    own); the user's explicit ``skip`` removes it before the reader looks, so the refusal still
    applies to every entry not named.
    """
    import dataclasses

    from torchsmith.checkpoint._refs import TensorRef

    if not patterns:
        return raw, {}
    removed: dict[str, str] = {}
    replaced: dict[int, dict] = {}

    def without(d: dict) -> dict:
        if id(d) not in replaced:
            kept = {}
            for k, v in d.items():
                if _skipped(str(k), patterns) and (_tensor_like(v) or not isinstance(v, dict)):
                    removed[str(k)] = "a tensor" if isinstance(v, TensorRef) else _describe(v)
                else:
                    kept[k] = v
            replaced[id(d)] = kept
        return replaced[id(d)]

    obj = raw.obj
    if not isinstance(obj, dict):
        return raw, {}
    inner_dicts = {id(d) for d in _weights_dicts(obj)}
    new_obj = {}
    for k, v in without(obj).items():
        if isinstance(v, dict) and id(v) in inner_dicts:
            v = {ik: (without(iv) if isinstance(iv, dict) and id(iv) in inner_dicts else iv)
                 for ik, iv in without(v).items()}  # fmt: skip
        new_obj[k] = v
    return dataclasses.replace(raw, obj=new_obj), removed


def _refuse_left(left: dict[str, str], where: Any, dst: Path) -> None:
    if not left:
        return
    shown = "; ".join(f"{k!r} ({d})" for k, d in list(left.items())[:5])
    more = f" and {len(left) - 5} more" if len(left) > 5 else ""
    first = next(iter(left))
    raise CheckpointError(
        f"{where}: convert cannot write {len(left)} entr{'y' if len(left) == 1 else 'ies'} of the weights "
        f"to {dst.name}: {shown}{more}; nothing was written. Leave them out explicitly with "
        f"skip=[{first!r}] (--skip {first!r}), or keep a torch file that holds them"
    )


def _tensor_like_left(raw: Any, patterns: list[str]) -> dict[str, str]:
    """Sparse/quantized entries (the reader's refused tensors) in the weight dictionaries, not skipped."""
    left: dict[str, str] = {}
    for d in _weights_dicts(raw.obj):
        for k, v in d.items():
            if isinstance(getattr(v, "kind", None), str) and not _skipped(str(k), patterns):
                left.setdefault(str(k), _describe(v))
    return left


def _read_weights(
    src: Path, trust_pickle: bool, patterns: list[str], ignore_checksums: bool, allow_expand: bool, dst: Path
) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """(checkpoint, state dict, entries left out by ``skip``), every refusal checked before any write.

    Order: the file's structure and the reader's safety rules (``select_tensors``), entries that
    cannot be written, checksums and CRCs, the expansion budget from shapes alone; only then are
    tensors materialised.
    """
    from torchsmith.checkpoint._refs import FileMaps, materialize
    from torchsmith.checkpoint.formats import open_raw
    from torchsmith.checkpoint.read import Checkpoint, select_tensors

    raw = open_raw(src)
    if raw.format == "dcp":  # tensors are loaded by torch's own dcp reader: nothing can be skipped
        ckpt = read_checkpoint(src, trust_pickle=trust_pickle)
        check_expansion(ckpt.state_dict, input_bytes([raw.path]), what="convert", where=raw.path,
                        allow_expand=allow_expand)  # fmt: skip
        return ckpt, ckpt.state_dict, {}
    _refuse_left(_tensor_like_left(raw, patterns), raw.path, dst)
    filtered, skipped = _without_skipped(raw, patterns)
    try:
        refs, container, others, notes = select_tensors(filtered)
    except CheckpointError as e:
        if trust_pickle and type(e).__name__ != "DangerousPickle":  # trust never covers a named danger
            ckpt = read_checkpoint(src, trust_pickle=True)  # the user's explicit trust: torch.load
            return ckpt, ckpt.state_dict, {}
        raise
    left = {
        k: d for k, d in _entries_left_out(filtered, refs, container).items() if not _skipped(k, patterns)
    }
    _refuse_left(left, raw.path, dst)
    if not ignore_checksums:
        from torchsmith.checkpoint.verify import check_integrity

        try:
            check_integrity(raw, refs)
        except CheckpointError as e:
            raise CheckpointError(
                f"{e}; convert refused to copy it (verify reports the same): pass ignore_checksums=True "
                "(--force) to convert it anyway"
            ) from None
    source_bytes = input_bytes(raw.files or [raw.path])
    check_expansion(refs, source_bytes, what="convert", where=raw.path, allow_expand=allow_expand)
    # Materialised here from the refs already read (read_checkpoint would parse the pickle again);
    # the expansion budget above bounds every byte this can allocate.
    problems = [(k, r.check_bounds()) for k, r in refs.items()]
    problems = [(k, b) for k, b in problems if b]
    if problems:
        raise CheckpointError(f"{raw.path}: damaged: tensor {problems[0][0]!r} {problems[0][1]}")
    maps = FileMaps(use_mmap=True)
    state_dict: dict[str, Any] = {k: materialize(r, maps) for k, r in refs.items()}
    versions = _module_versions(raw.obj, container)
    if versions is not None:
        state_dict = OrderedDict(state_dict)
        state_dict._metadata = versions  # type: ignore[attr-defined]
    ckpt = Checkpoint(raw.path, raw.format, state_dict, container, others, raw.metadata, raw.notes + notes)
    return ckpt, state_dict, skipped


def _module_versions(obj: Any, container: str | None) -> OrderedDict | None:
    """The ``_metadata`` (module versions) of the dictionary the weights came from, checked, or None."""
    for part in container.split(".") if container else []:
        obj = obj.get(part) if isinstance(obj, dict) else None
    meta = getattr(obj, "_metadata", None)
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in meta.items()
    ):
        return None  # file data of another shape is not module versions: not carried
    scalar = int | float | str | bool | type(None)
    return OrderedDict(
        (k, {str(a): b for a, b in v.items() if isinstance(b, scalar)}) for k, v in meta.items()
    )


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    max_shard_size: int | str | None = None,
    strip_wrappers: bool = False,
    rename: Sequence[tuple[str, str] | str] = (),
    dedupe_tied: bool = False,
    skip: Sequence[str] = (),
    ignore_checksums: bool = False,
    allow_expand: bool = False,
    notes: list[str] | None = None,
) -> Path:
    """Read ``src`` and write its weights to ``dst`` (format from ``dst``'s extension); return the path.

    ``rename`` is a list of ``(regex, replacement)`` pairs or ``"REGEX=REPL"`` strings, applied in
    order to each key as written in ``src``; ``strip_wrappers`` then removes wrapper prefixes. Two
    keys that end up with one name raise :class:`~torchsmith.errors.InputError` naming both.

    Nothing is dropped silently: an entry of the weights that ``dst`` cannot hold (a sparse or
    quantized tensor, a number among the tensors) is refused by name unless ``skip`` lists it
    (exact names or ``fnmatch`` patterns, matched against the source's names). A file whose
    recorded checksums or CRCs fail (what ``verify`` reports) is refused unless
    ``ignore_checksums=True``; a result that would materialise far more bytes than ``src`` holds
    (see :func:`check_expansion`) unless ``allow_expand=True``. With ``max_shard_size``, weights that
    fit one shard are written as one file ``dst`` (as transformers does), else shards and an index
    (whose path is returned); an older file or index under ``dst``'s name is removed either way.
    ``notes``, when a list, receives what was left out (``skip`` entries, the container's other keys).
    """
    from torchsmith.checkpoint.saving import (
        TORCH_EXTENSIONS,
        _dedupe,
        _user_metadata,
        _versions,
        _write_sharded,
        _write_single,
        versions_metadata,
    )

    dst = Path(dst)
    if dst.suffix != ".safetensors" and dst.suffix not in TORCH_EXTENSIONS:
        raise InputError(
            f"convert: unknown destination extension {dst.suffix!r}; use .safetensors or one of "
            f"{', '.join(TORCH_EXTENSIONS)}"
        )
    if dst.is_dir():
        raise InputError(
            f"convert: destination {dst} is a directory; give a file name such as model.safetensors"
        )
    patterns = _skip_patterns(skip)
    ckpt, state_dict, skipped = _read_weights(
        Path(src), trust_pickle, patterns, ignore_checksums, allow_expand, dst
    )
    unwritable = _unwritable(state_dict)  # what a trusted torch.load returned beyond dense tensors
    _refuse_left({k: d for k, d in unwritable.items() if not _skipped(k, patterns)}, ckpt.path, dst)
    skipped.update({k: unwritable[k] for k in unwritable})
    kept: dict[str, Any] = OrderedDict((k, v) for k, v in state_dict.items() if k not in skipped)
    if isinstance(getattr(state_dict, "_metadata", None), dict):
        kept._metadata = state_dict._metadata  # type: ignore[attr-defined]
    if not kept:
        raise CheckpointError(
            f"{ckpt.path}: nothing to convert: no tensor is left once skipped entries are out"
        )
    state_dict = edit_keys(kept, rename=rename, strip_wrappers=strip_wrappers)
    if notes is not None:
        if skipped:
            names = sorted(skipped)
            notes.append(f"left out (skip): {', '.join(names[:10])}" + (" ..." if len(names) > 10 else ""))
        if ckpt.container_key is not None and ckpt.other_keys:
            others = ", ".join(list(ckpt.other_keys)[:10])
            notes.append(
                f"converted the weights under {ckpt.container_key!r}; not weights, not written: {others}"
            )
    user = {
        k: v for k, v in ckpt.metadata.items() if not k.startswith(("torchsmith.", "torch.", "total_size"))
    }
    meta = {**_user_metadata(user), **_versions()}
    meta.update({k: ckpt.metadata[k] for k in _CARRIED if k in ckpt.metadata})
    meta["torchsmith.converted_from"] = f"{ckpt.format}:{Path(src).name}"
    meta.update(versions_metadata(state_dict))
    tensors, aliases = _dedupe(state_dict)
    if max_shard_size is None:
        return _write_single(dst, tensors, aliases, meta, dedupe_tied=dedupe_tied)
    return _write_sharded(dst, tensors, aliases, meta, max_shard_size, dedupe_tied=dedupe_tied)


def _rules(rename: Sequence[tuple[str, str] | str]) -> list[tuple[re.Pattern, str]]:
    rules = []
    for i, r in enumerate([rename] if isinstance(rename, str) else rename):
        if isinstance(r, str):
            if "=" not in r:
                raise InputError(f"rename[{i}]: expected 'REGEX=REPLACEMENT', got {r!r}")
            r = tuple(r.split("=", 1))
        try:
            pattern, repl = r
            rules.append((re.compile(pattern), repl))
        except (TypeError, ValueError) as e:
            raise InputError(f"rename[{i}]: expected a (regex, replacement) pair, got {r!r}: {e}") from None
        except re.error as e:
            raise InputError(f"rename[{i}]: invalid regular expression {r[0]!r}: {e}") from None
    return rules


def edit_keys(
    state_dict: dict[str, Any], *, rename: Sequence[tuple[str, str] | str] = (), strip_wrappers: bool = False
) -> dict[str, Any]:
    r"""``state_dict`` with renamed keys: ``rename`` rules on the source keys, then wrappers stripped.

    >>> edit_keys({"module.model.fc.w": 1, "module.model.fc.b": 2}, strip_wrappers=True)
    {'fc.w': 1, 'fc.b': 2}
    >>> edit_keys({"module.fc.w": 1}, rename=[r"^module\.fc\.=head."])
    {'head.w': 1}
    """
    from torchsmith.checkpoint.keys import strip_wrappers as strip

    rules = _rules(rename)
    names = {}
    for k in state_dict:
        new = k
        for pattern, repl in rules:
            new = pattern.sub(repl, new)
        names[k] = strip(new) if strip_wrappers else new
    if strip_wrappers and names and all(n.startswith("model.") and n.count(".") > 1 for n in names.values()):
        names = {k: n[len("model.") :] for k, n in names.items()}  # a LightningModule's self.model
    seen: dict[str, str] = {}
    for k, n in names.items():
        if not n:
            raise InputError(f"rename: key {k!r} became empty")
        if n in seen:
            raise InputError(f"keys {seen[n]!r} and {k!r} would both be written as {n!r}; adjust rename")
        seen[n] = k
    out = {names[k]: v for k, v in state_dict.items()}
    versions = getattr(state_dict, "_metadata", None)
    if isinstance(versions, dict):  # module versions travel with their keys (load_state_dict reads them)
        from torchsmith.checkpoint.keys import rename_module_metadata

        out = OrderedDict(out)
        out._metadata = rename_module_metadata(versions, names)  # type: ignore[attr-defined]
    return out
