"""Fuzz the readers: thousands of mutated checkpoints give a CheckpointError or a sane result, never a crash.

Each example takes a small valid file (torch zip, legacy pickle, safetensors) and flips, deletes,
inserts or truncates bytes. Reading headers, the restricted pickle and tensor locations must either
succeed with every tensor inside its file, or raise :class:`CheckpointError`; nothing may be run.
"""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchsmith.checkpoint.formats import open_raw
from torchsmith.checkpoint.read import select_tensors
from torchsmith.checkpoint.saving import save
from torchsmith.errors import CheckpointError

torch.manual_seed(0)
_SD = {"a.weight": torch.randn(3, 4), "a.bias": torch.randn(3), "n": torch.tensor(7)}


def _seeds(tmp) -> dict[str, bytes]:
    b = io.BytesIO()
    torch.save(_SD, b)
    out = {"zip": b.getvalue()}
    b = io.BytesIO()
    torch.save(_SD, b, _use_new_zipfile_serialization=False)
    out["legacy"] = b.getvalue()
    save(_SD, tmp / "s.safetensors")
    out["safetensors"] = (tmp / "s.safetensors").read_bytes()
    return out


_SEEDS: dict[str, bytes] = {}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    _SEEDS.update(_seeds(tmp_path_factory.mktemp("seeds")))
    return _SEEDS


mutation = st.tuples(
    st.sampled_from(["flip", "set", "delete", "insert", "truncate"]),
    st.floats(0, 1, allow_nan=False),
    st.integers(0, 255),
)


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    kind=st.sampled_from(["zip", "legacy", "safetensors"]),
    mutations=st.lists(mutation, min_size=1, max_size=4),
)
def test_mutated_files_never_crash(seeds, tmp_path_factory, kind, mutations):
    data = bytearray(seeds[kind])
    for op, where, value in mutations:
        i = int(where * max(len(data) - 1, 0))
        if op == "flip" and data:
            data[i] ^= 1 << (value % 8)
        elif op == "set" and data:
            data[i] = value
        elif op == "delete" and data:
            del data[i : i + 1 + value % 16]
        elif op == "insert":
            data[i:i] = bytes([value]) * (1 + value % 8)
        elif op == "truncate":
            del data[i:]
    path = tmp_path_factory.getbasetemp() / f"fuzz.{kind}"
    path.write_bytes(bytes(data))
    try:
        raw = open_raw(path)
        refs, *_ = select_tensors(raw)
    except CheckpointError as e:
        assert str(path) in str(e)
        return
    size = len(data)
    for name, ref in refs.items():
        if ref.check_bounds() is None and ref.storage is not None:
            assert ref.storage.offset >= 0 and ref.storage.offset + ref.storage.nbytes <= size, name


def test_a_view_beyond_its_storage_never_becomes_a_tensor(tmp_path):
    # Found by fuzzing diff: a damaged legacy file whose tensor reaches past its storage reached
    # torch's as_strided (a raw RuntimeError). Every tensor is made by materialize, which checks.
    from torchsmith.checkpoint._refs import FileMaps, StorageRef, TensorRef, materialize

    f = tmp_path / "s.bin"
    f.write_bytes(bytes(48))
    ref = TensorRef(StorageRef(str(f), 0, 48, "float32"), "float32", (3, 4), offset=4)
    maps = FileMaps()
    with pytest.raises(CheckpointError, match=r"s\.bin: a float32 tensor of shape \[3, 4\] needs 64 bytes"):
        materialize(ref, maps)
