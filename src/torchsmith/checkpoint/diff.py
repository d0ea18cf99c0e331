"""Compare two checkpoints: keys only in one, shape and dtype differences, value and byte differences.

Wrapper prefixes are fitted first (``module.fc.weight`` in one file and ``fc.weight`` in the other
are the same tensor; the prefix is reported, not every key). Values and bytes are compared
separately: ``-0.0`` and ``+0.0``, or two NaNs with different payloads, are equal values held in
different bytes, so such files are not ``identical`` although ``values_equal`` holds.

>>> d = diff_checkpoints("epoch10.pt", "epoch20.safetensors")   # doctest: +SKIP
>>> d["identical"], d["max_abs_diff"]["fc.weight"]              # doctest: +SKIP
(False, 0.0132)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from torchsmith.checkpoint._refs import FileMaps, materialize
from torchsmith.checkpoint.formats import open_raw
from torchsmith.checkpoint.keys import fit_keys
from torchsmith.checkpoint.read import select_tensors

__all__ = ["diff_checkpoints"]

# Elements compared at a time: comparing converts to float64, so a chunk costs 8 bytes an element
# on each side, whatever the tensors' size.
_CHUNK = 1 << 22


def diff_checkpoints(
    a: str | os.PathLike, b: str | os.PathLike, *, allow_expand: bool = False
) -> dict[str, Any]:
    """A JSON-able comparison of checkpoints ``a`` and ``b``.

    Keys: ``a``, ``b`` (paths and formats), ``only_in_a``, ``only_in_b``, ``shape_differs`` and
    ``dtype_differs`` (lists of ``{"key", "a", "b"}``), ``max_abs_diff`` (key -> float, for common
    tensors of equal shape), ``bytes_differ`` (keys of common tensors with equal values held in other
    bytes: ``-0.0`` vs ``+0.0``, NaN payloads), ``prefixes_removed``/``prefixes_added`` (wrapper
    prefixes fitted from a to b), ``values_equal`` (same keys after fitting, shapes, dtypes and
    values) and ``identical`` (all that and the same bytes; ``bit_identical`` says the same).

    The tensors compared may materialise at most ``EXPAND_FACTOR`` x each file's size (see
    :func:`torchsmith.checkpoint.convert.check_expansion`) unless ``allow_expand=True``: a stride-0
    view stores a few bytes but is compared element by element.
    """
    from torchsmith.checkpoint.convert import check_expansion, input_bytes

    raw_a, raw_b = open_raw(a), open_raw(b)
    refs_a, _, _, _ = select_tensors(raw_a)
    refs_b, _, _, _ = select_tensors(raw_b)
    fit = fit_keys(list(refs_a), list(refs_b))
    shape_differs, dtype_differs, max_abs, bytes_differ = [], [], {}, []
    common = []
    for ka, kb in fit.mapping.items():
        ra, rb = refs_a[ka], refs_b[kb]
        if ra.shape != rb.shape:
            shape_differs.append({"key": kb, "a": list(ra.shape), "b": list(rb.shape)})
        else:
            common.append((ka, kb))
        if ra.dtype != rb.dtype:
            dtype_differs.append({"key": kb, "a": ra.dtype, "b": rb.dtype})
    for raw, refs, side in ((raw_a, refs_a, 0), (raw_b, refs_b, 1)):
        compared = {pair[side]: refs[pair[side]] for pair in common}
        size = input_bytes(raw.files or [raw.path])
        check_expansion(compared, size, what="diff", where=raw.path, allow_expand=allow_expand)
    if common:
        if raw_a.format == "dcp" or raw_b.format == "dcp":
            from torchsmith.checkpoint.read import read_state_dict

            sd_a = read_state_dict(a)
            sd_b = read_state_dict(b)
            get_a, get_b = sd_a.__getitem__, sd_b.__getitem__
            maps = None
        else:
            maps = ma, mb = FileMaps(populate=True), FileMaps(populate=True)
            get_a = lambda k: materialize(refs_a[k], ma)  # noqa: E731
            get_b = lambda k: materialize(refs_b[k], mb)  # noqa: E731
        for ka, kb in common:
            if maps is not None and _same_stored_bytes(refs_a[ka], refs_b[kb], *maps):
                max_abs[kb] = 0.0  # same dtype, shape and bytes: identical, nothing to materialise
                continue
            ta, tb = get_a(ka), get_b(kb)
            max_abs[kb], same_bytes = _compare(ta, tb)
            if max_abs[kb] == 0 and not same_bytes and ta.dtype == tb.dtype:
                bytes_differ.append(kb)
    values_equal = not (
        fit.unmatched_source or fit.unmatched_target or shape_differs or dtype_differs
    ) and all(v == 0 for v in max_abs.values())
    identical = values_equal and not bytes_differ
    return {
        "a": {"path": str(raw_a.path), "format": raw_a.format, "tensors": len(refs_a)},
        "b": {"path": str(raw_b.path), "format": raw_b.format, "tensors": len(refs_b)},
        "only_in_a": fit.unmatched_source,
        "only_in_b": fit.unmatched_target,
        "shape_differs": shape_differs,
        "dtype_differs": dtype_differs,
        "max_abs_diff": max_abs,
        "bytes_differ": bytes_differ,
        "prefixes_removed": fit.prefixes_removed,
        "prefixes_added": fit.prefixes_added,
        "values_equal": values_equal,
        "bit_identical": identical,
        "identical": identical,
    }


def _same_stored_bytes(ra: Any, rb: Any, ma: FileMaps, mb: FileMaps) -> bool:
    """Whether two contiguous tensors of one dtype and shape hold the same bytes, compared in the files.

    A memcmp over the mapped files: no tensor is made (no alignment copy, no float64 conversion),
    which is most of a diff between similar checkpoints. False when it cannot tell (views, no data).
    """
    if ra.dtype != rb.dtype or ra.shape != rb.shape or ra.check_bounds() or rb.check_bounds():
        return False
    range_a, range_b = ra.byte_range(), rb.byte_range()
    if range_a is None or range_b is None or ra.storage is None or rb.storage is None:
        return False
    try:
        buf_a = ma.buffer(ra.storage.file, getattr(ra.storage, "ident", None))
        buf_b = mb.buffer(rb.storage.file, getattr(rb.storage, "ident", None))
    except OSError:
        return False  # the tensor path reports it
    (a0, a1), (b0, b1) = range_a, range_b
    if a1 > len(buf_a) or b1 > len(buf_b):
        return False
    return memoryview(buf_a)[a0:a1] == memoryview(buf_b)[b0:b1]


def _chunks(t: Any) -> Iterator[Any]:
    """Views of ``t`` along its first dimension, each of about ``_CHUNK`` elements (no copy)."""
    if t.dim() == 0 or t.numel() <= _CHUNK:
        yield t
        return
    row = max(1, t.numel() // t.shape[0])
    step = max(1, _CHUNK // row)
    for i in range(0, t.shape[0], step):
        yield t[i : i + step]


def _compare(ta: Any, tb: Any) -> tuple[float, bool]:
    """(largest value difference, whether the bytes are the same) for two tensors of one shape."""
    if ta.numel() == 0:
        return 0.0, True
    worst, same_bytes = 0.0, ta.dtype == tb.dtype
    for ca, cb in zip(_chunks(ta), _chunks(tb)):
        # Equal bits mean equal values: the integer comparison (no float64 copies) settles most
        # chunks of similar checkpoints, and the value comparison runs only where bytes differ.
        if ta.dtype == tb.dtype and _same_bits(ca, cb):
            continue
        same_bytes = False
        worst = max(worst, _max_abs_diff(ca, cb))
    return worst, same_bytes


def _bits(t: Any) -> Any:
    """``t`` reinterpreted as integers of its element size (a view when the layout allows)."""
    import torch

    if t.is_complex():
        t = torch.view_as_real(t)
    if t.dtype == torch.bool:
        return t.view(torch.uint8)
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    try:
        return t.view(ints[t.element_size()])
    except (KeyError, RuntimeError):
        return t.contiguous().view(torch.uint8)


def _same_bits(ta: Any, tb: Any) -> bool:
    import torch

    return bool(torch.equal(_bits(ta), _bits(tb)))


def _max_abs_diff(ta: Any, tb: Any) -> float:
    """Largest element difference; 0.0 when every element is equal, NaN at the same place included.

    Complex values compare both parts; ``inf`` equals ``inf`` of the same sign; NaN against a number,
    or ``inf`` against a finite value, is an infinite difference. Integers compare exactly.
    """
    import torch

    if ta.dtype == torch.bool or tb.dtype == torch.bool:
        return float((ta.bool() != tb.bool()).any())
    if ta.is_complex() or tb.is_complex():
        ta, tb = (torch.view_as_real(t.to(torch.complex128)) for t in (ta, tb))
    exact = not (ta.is_floating_point() or tb.is_floating_point() or ta.is_complex())
    if exact:
        same = ta == tb  # integers: no rounding through float64
        a64, b64 = ta.double(), tb.double()
    else:
        a64, b64 = ta.double(), tb.double()
        same = (a64 == b64) | (a64.isnan() & b64.isnan())
    if bool(same.all()):
        return 0.0
    diff = (a64 - b64).abs()[~same]
    diff = torch.where(diff.isnan(), torch.full_like(diff, float("inf")), diff)
    worst = float(diff.max())
    return max(worst, 1.0) if exact else worst  # unequal integers differ by 1 at least (float64 rounds)
