"""The fast write paths: batched, threaded hash-and-write of safetensors, pwritev, writeback, release."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open

import torchsmith._io as tio
import torchsmith.checkpoint.safetensors_io as st
from torchsmith.checkpoint import read_state_dict, save
from torchsmith.checkpoint.saving import tensor_checksum


def awkward_state() -> dict[str, torch.Tensor]:
    """Sizes around the batch and chunk limits, odd byte counts, empty, non-contiguous, many dtypes."""
    torch.manual_seed(0)
    big = torch.randn(700, 1000)  # 2.8 MB: several chunks
    return {
        "big": big,
        "transposed": torch.randn(300, 500).t(),  # not contiguous
        "odd_bytes": torch.arange(7, dtype=torch.int8),
        "empty": torch.empty(0, 3),
        "half": torch.randn(1001, dtype=torch.float16),
        "bf16": torch.randn(33, 5, dtype=torch.bfloat16),
        "flags": torch.rand(77) > 0.5,
        "ints": torch.arange(12345, dtype=torch.int64),
        **{f"small.{i}": torch.randn(i + 1) for i in range(40)},
    }


@pytest.mark.parametrize("batch,chunk", [(8 << 20, 1 << 20), (1 << 10, 1 << 9), (1, 64)])
def test_safetensors_written_in_batches_reads_back_everywhere(tmp_path, monkeypatch, batch, chunk):
    monkeypatch.setattr(st, "_BATCH", batch)
    monkeypatch.setattr(st, "_CHUNK", chunk)
    sd = awkward_state()
    path = save(sd, tmp_path / "w.safetensors")
    with safe_open(path, "pt") as f:
        assert set(f.keys()) == set(sd)
        for k, v in sd.items():
            assert torch.equal(f.get_tensor(k), v), k
        recorded = json.loads(f.metadata()["torchsmith.checksums"])
    assert recorded == {k: tensor_checksum(v, "xxh3-128") for k, v in sd.items()}
    assert all(torch.equal(read_state_dict(path)[k], v) for k, v in sd.items())


def test_pwrite_all_finishes_short_writes(tmp_path, monkeypatch):
    real = os.pwritev

    def at_most_5_bytes(fd, buffers, offset):
        return real(fd, [bytes(buffers[0])[:5]], offset)

    monkeypatch.setattr(os, "pwritev", at_most_5_bytes)
    pieces = [memoryview(b"hello, "), memoryview(b""), memoryview(b"short"), memoryview(b" writes!")]
    with open(tmp_path / "f", "wb") as f:
        tio.pwrite_all(f.fileno(), pieces, 3)
    assert (tmp_path / "f").read_bytes() == b"\0\0\0hello, short writes!"


def test_start_writeback_accepts_any_range(tmp_path):
    with open(tmp_path / "f", "wb") as f:
        f.write(b"x" * 200_000)
        f.flush()
        for offset, n in [(0, 0), (1, 10), (0, 200_000), (65_537, 100_000)]:
            tio.start_writeback(f.fileno(), offset, n)  # never raises, never waits


def test_replacing_a_large_file_releases_it_in_the_background(tmp_path, monkeypatch):
    monkeypatch.setattr(tio, "_RELEASE_IN_BACKGROUND", 1000)
    path = tmp_path / "m.safetensors"
    save({"w": torch.zeros(1000)}, path)
    save({"w": torch.ones(1000)}, path)
    assert torch.equal(read_state_dict(path)["w"], torch.ones(1000))
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]
