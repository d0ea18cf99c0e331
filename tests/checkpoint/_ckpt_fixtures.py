"""Small real checkpoints in every format, made on the fly (no downloads, tiny models)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch
import torch.nn as nn


class TinyNet(nn.Module):
    """Conv + BatchNorm + Linear: parameters and buffers, like the seeds' classifiers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def tiny(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    m = TinyNet().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 1.5)
    return m


def sample() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 8, 8)


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def relocate_to_cuda(src: Path, dst: Path) -> None:
    """Rewrite a CPU torch zip so every storage carries the location tag a CUDA save records ('cuda:0')."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data.pkl"):
                # BINUNICODE 'cpu' (opcode X, 4-byte length) -> 'cuda:0'
                old, new = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"
                assert old in data
                data = data.replace(old, new)
            zout.writestr(info.filename, data)


class Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def evil_bytes(marker: Path) -> bytes:
    import pickle

    return pickle.dumps({"weight": Evil(marker)}, protocol=2)


def buf_of(obj) -> bytes:
    b = io.BytesIO()
    torch.save(obj, b)
    return b.getvalue()
