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

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchsmith.checkpoint.read import read_checkpoint

__all__ = ["convert_checkpoint", "edit_keys"]

_CARRIED = ("torchsmith.arch", "torchsmith.spec", "torchsmith.surgery")


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    max_shard_size: int | str | None = None,
    strip_wrappers: bool = False,
    rename: Sequence[tuple[str, str] | str] = (),
    dedupe_tied: bool = False,
) -> Path:
    """Read ``src`` and write its weights to ``dst`` (format from ``dst``'s extension); return the path.

    ``rename`` is a list of ``(regex, replacement)`` pairs or ``"REGEX=REPL"`` strings, applied in
    order to each key as written in ``src``; ``strip_wrappers`` then removes wrapper prefixes. Two
    keys that end up with one name raise :class:`~torchsmith.errors.InputError` naming both.
    """
    ckpt = read_checkpoint(src, trust_pickle=trust_pickle)
    state_dict = edit_keys(ckpt.state_dict, rename=rename, strip_wrappers=strip_wrappers)
    from torchsmith.checkpoint.saving import (
        TORCH_EXTENSIONS,
        _dedupe,
        _user_metadata,
        _versions,
        _write_one,
        _write_sharded,
    )
    from torchsmith.errors import InputError

    dst = Path(dst)
    if dst.suffix != ".safetensors" and dst.suffix not in TORCH_EXTENSIONS:
        raise InputError(
            f"convert: unknown destination extension {dst.suffix!r}; use .safetensors or one of "
            f"{', '.join(TORCH_EXTENSIONS)}"
        )
    user = {
        k: v for k, v in ckpt.metadata.items() if not k.startswith(("torchsmith.", "torch.", "total_size"))
    }
    meta = {**_user_metadata(user), **_versions()}
    meta.update({k: ckpt.metadata[k] for k in _CARRIED if k in ckpt.metadata})
    meta["torchsmith.converted_from"] = f"{ckpt.format}:{Path(src).name}"
    tensors, aliases = _dedupe(state_dict)
    if max_shard_size is None:
        _write_one(dst, tensors, aliases, meta, dedupe_tied=dedupe_tied)
        return dst
    return _write_sharded(dst, tensors, aliases, meta, max_shard_size, dedupe_tied=dedupe_tied)


def _rules(rename: Sequence[tuple[str, str] | str]) -> list[tuple[re.Pattern, str]]:
    from torchsmith.errors import InputError

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
    from torchsmith.errors import InputError

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
