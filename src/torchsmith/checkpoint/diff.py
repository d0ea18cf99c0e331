"""Compare two checkpoints: keys only in one, shape and dtype differences, largest value difference.

Wrapper prefixes are fitted first (``module.fc.weight`` in one file and ``fc.weight`` in the other
are the same tensor; the prefix is reported, not every key).

>>> d = diff_checkpoints("epoch10.pt", "epoch20.safetensors")   # doctest: +SKIP
>>> d["identical"], d["max_abs_diff"]["fc.weight"]              # doctest: +SKIP
(False, 0.0132)
"""

from __future__ import annotations

import os
from typing import Any

from torchsmith.checkpoint._refs import FileMaps, materialize
from torchsmith.checkpoint.formats import open_raw
from torchsmith.checkpoint.keys import fit_keys
from torchsmith.checkpoint.read import select_tensors

__all__ = ["diff_checkpoints"]


def diff_checkpoints(a: str | os.PathLike, b: str | os.PathLike) -> dict[str, Any]:
    """A JSON-able comparison of checkpoints ``a`` and ``b``.

    Keys: ``a``, ``b`` (paths and formats), ``only_in_a``, ``only_in_b``, ``shape_differs`` and
    ``dtype_differs`` (lists of ``{"key", "a", "b"}``), ``max_abs_diff`` (key -> float, for common
    tensors of equal shape), ``prefixes_removed``/``prefixes_added`` (wrapper prefixes fitted from a
    to b) and ``identical`` (same keys after fitting, shapes, dtypes and values).
    """
    raw_a, raw_b = open_raw(a), open_raw(b)
    refs_a, _, _, _ = select_tensors(raw_a)
    refs_b, _, _, _ = select_tensors(raw_b)
    fit = fit_keys(list(refs_a), list(refs_b))
    shape_differs, dtype_differs, max_abs = [], [], {}
    common = []
    for ka, kb in fit.mapping.items():
        ra, rb = refs_a[ka], refs_b[kb]
        if ra.shape != rb.shape:
            shape_differs.append({"key": kb, "a": list(ra.shape), "b": list(rb.shape)})
        else:
            common.append((ka, kb))
        if ra.dtype != rb.dtype:
            dtype_differs.append({"key": kb, "a": ra.dtype, "b": rb.dtype})
    if common:
        if raw_a.format == "dcp" or raw_b.format == "dcp":
            from torchsmith.checkpoint.read import read_state_dict

            sd_a = read_state_dict(a)
            sd_b = read_state_dict(b)
            get_a, get_b = sd_a.__getitem__, sd_b.__getitem__
        else:
            ma, mb = FileMaps(), FileMaps()
            get_a = lambda k: materialize(refs_a[k], ma)  # noqa: E731
            get_b = lambda k: materialize(refs_b[k], mb)  # noqa: E731
        for ka, kb in common:
            ta, tb = get_a(ka), get_b(kb)
            if ta.numel() == 0:
                max_abs[kb] = 0.0
                continue
            max_abs[kb] = _max_abs_diff(ta, tb)
    identical = not (fit.unmatched_source or fit.unmatched_target or shape_differs or dtype_differs) and all(
        v == 0 for v in max_abs.values()
    )
    return {
        "a": {"path": str(raw_a.path), "format": raw_a.format, "tensors": len(refs_a)},
        "b": {"path": str(raw_b.path), "format": raw_b.format, "tensors": len(refs_b)},
        "only_in_a": fit.unmatched_source,
        "only_in_b": fit.unmatched_target,
        "shape_differs": shape_differs,
        "dtype_differs": dtype_differs,
        "max_abs_diff": max_abs,
        "prefixes_removed": fit.prefixes_removed,
        "prefixes_added": fit.prefixes_added,
        "identical": identical,
    }


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
