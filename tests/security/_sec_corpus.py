"""Crafted hostile inputs for tests/security: each payload, if it ever ran, would create ``marker``."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path


class Reduce:
    """Pickles as ``func(*args)``: the shape of every code-running pickle."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class Named:
    """Pickles as a call to ``module.name(*args)`` without that callable being importable here."""

    def __init__(self, qualname: str, *args):
        self.qualname, self.args = qualname, args

    def __reduce__(self):
        return _Global(self.qualname), self.args


class _Global:
    def __init__(self, qualname):
        self.qualname = qualname

    def __reduce__(self):  # only reached when misused
        raise TypeError


def named_call_pickle(qualname: str, *args, wrap=lambda x: x) -> bytes:
    """A protocol-2 pickle calling ``qualname(*args)`` (written by hand: the callable need not exist)."""
    module, name = qualname.rsplit(".", 1)
    body = b"c" + module.encode() + b"\n" + name.encode() + b"\n" + pickle.dumps(args, protocol=2)[2:-1]
    return b"\x80\x02" + body + b"R."


def dcp_folder(path: Path, sd=None) -> Path:
    import torch
    import torch.distributed.checkpoint as dcp

    sd = sd if sd is not None else {"w": torch.arange(6.0).reshape(2, 3), "step": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, checkpoint_id=str(path), no_dist=True)
    return path


def poison_dcp(path: Path, field: str, value) -> Path:
    """Rewrite ``path/.metadata`` with ``value`` (e.g. a ``Reduce``) planted in Metadata ``field``."""
    with open(path / ".metadata", "rb") as f:
        meta = pickle.load(f)  # our own, just written
    setattr(meta, field, value)
    with open(path / ".metadata", "wb") as f:
        pickle.dump(meta, f)
    return path
