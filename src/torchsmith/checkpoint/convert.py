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
    out = t.numel * t.itemsize  # a TensorRef: computed from the shape, never from its storage
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
    qualname = getattr(value, "qualname", None) or getattr(value, "_qualname", None)
    if isinstance(qualname, str):
        kind = {
            "_rebuild_sparse_tensor": "a sparse COO tensor",
            "_rebuild_sparse_csr": "a sparse CSR tensor",
            "_rebuild_qtensor": "a quantized tensor",
            "_rebuild_nested_tensor": "a nested tensor",
        }
        return kind.get(qualname.rpartition(".")[2], f"an object built by {qualname}")
    layout = getattr(value, "layout", None)
    if layout is not None and hasattr(value, "is_quantized"):
        if value.is_quantized:
            return f"a quantized tensor ({value.dtype})"
        return f"a {str(layout).removeprefix('torch.')} tensor"
    return f"a {type(value).__name__}"


def _weights_dict(raw: Any, container: str | None, tensor_keys: set[str]) -> dict | None:
    """The dictionary of ``raw.obj`` that the weights were taken from, or None (rescued models...)."""
    obj = raw.obj
    if container is not None and isinstance(obj, dict):
        if container in obj:
            obj = obj[container]
        else:
            head, _, tail = container.partition(".")
            obj = obj.get(head)
            obj = obj.get(tail) if isinstance(obj, dict) else None
    if not isinstance(obj, dict):
        return None
    names = {str(k) for k in obj}
    return obj if tensor_keys and tensor_keys <= names else None


def _left_out(src: Path, trust_pickle: bool) -> tuple[dict[str, str], Any, Any]:
    """Entries of the weights' own dictionary that are not plain tensors (name -> what they are).

    Also returns the raw checkpoint and its tensor refs (None when the restricted reader refuses the
    file and ``read_checkpoint`` will decide, e.g. with ``trust_pickle``).
    """
    from torchsmith.checkpoint.formats import open_raw
    from torchsmith.checkpoint.read import select_tensors

    raw = open_raw(src)
    if raw.format == "dcp":
        return {}, raw, None
    try:
        refs, container, _, _ = select_tensors(raw)
    except CheckpointError:
        if trust_pickle:
            return {}, raw, None
        raise
    from torchsmith.checkpoint._refs import TensorRef

    weights = _weights_dict(raw, container, set(refs))
    if weights is None:
        return {}, raw, refs
    return {str(k): _describe(v) for k, v in weights.items() if not isinstance(v, TensorRef)}, raw, refs


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


def _apply_skip(left: dict[str, str], skip: Sequence[str], where: Any, dst: Path) -> list[str]:
    """Names in ``left`` that ``skip`` covers; refuse any other, and any skip pattern matching nothing."""
    patterns = [skip] if isinstance(skip, str) else list(skip)
    refused = {k: d for k, d in left.items() if not any(fnmatch.fnmatchcase(k, p) for p in patterns)}
    if refused:
        shown = "; ".join(f"{k!r} ({d})" for k, d in list(refused.items())[:5])
        more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
        first = next(iter(refused))
        raise CheckpointError(
            f"{where}: convert cannot write {len(refused)} entr{'y' if len(refused) == 1 else 'ies'} of the "
            f"weights to {dst.name}: {shown}{more}; nothing was written. Leave them out explicitly with "
            f"skip=[{first!r}] (--skip {first!r}), or keep a torch file that holds them"
        )
    return sorted(left)


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
    left, raw, refs = _left_out(Path(src), trust_pickle)
    if not ignore_checksums and refs is not None:
        from torchsmith.checkpoint.verify import check_integrity

        try:
            check_integrity(raw, refs)
        except CheckpointError as e:
            raise CheckpointError(
                f"{e}; convert refused to copy it (verify reports the same): pass ignore_checksums=True "
                "(--force) to convert it anyway"
            ) from None
    source_bytes = input_bytes(raw.files or [raw.path])
    if refs is not None:  # before anything is materialised: the budget needs only shapes
        check_expansion(refs, source_bytes, what="convert", where=raw.path, allow_expand=allow_expand)
    ckpt = read_checkpoint(src, trust_pickle=trust_pickle)
    left.update(_unwritable(ckpt.state_dict))
    skipped = _apply_skip(left, skip, raw.path, dst)
    kept = {k: v for k, v in ckpt.state_dict.items() if k not in skipped}
    if not kept:
        raise CheckpointError(f"{raw.path}: nothing to convert: every entry of the weights was skipped")
    state_dict = edit_keys(kept, rename=rename, strip_wrappers=strip_wrappers)
    check_expansion(state_dict, source_bytes, what="convert", where=raw.path, allow_expand=allow_expand)
    if notes is not None:
        if skipped:
            notes.append(
                f"left out (skip): {', '.join(skipped[:10])}" + (" ..." if len(skipped) > 10 else "")
            )
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
    return {names[k]: v for k, v in state_dict.items()}
