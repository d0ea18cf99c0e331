"""Unbounded work from small inputs: regexes from data, ${...} sizes, pickle bombs, zip bombs."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import torchsmith
from torchsmith.errors import SpecError
from torchsmith.spec import validate_spec
from torchsmith.surgery import apply_surgery


def test_backtracking_regex_from_metadata_is_linear(tmp_path):
    model = nn.Sequential()
    model.add_module("a" * 40, nn.Linear(2, 2))
    t = time.perf_counter()
    apply_surgery(model, [{"op": "freeze", "patterns": ["re:(a+)+b|a+"]}])  # exponential in Python's re
    assert time.perf_counter() - t < 2
    # The same pattern recorded in a checkpoint's metadata.
    arch = {"name": "torchvision:resnet18", "kwargs": {"num_classes": 2}}
    ops = [{"op": "freeze", "patterns": ["re:(a+)+b|fc", "re:(" + "(x+x+)+y" * 3 + ")|conv1"]}]
    m = torchsmith.create_model("torchvision:resnet18", num_classes=2)
    save_file(
        {k: v.contiguous() for k, v in m.state_dict().items()},
        tmp_path / "m.safetensors",
        metadata={"torchsmith.arch": json.dumps(arch), "torchsmith.surgery": json.dumps(ops)},
    )
    t = time.perf_counter()
    torchsmith.load_model(tmp_path / "m.safetensors")
    assert time.perf_counter() - t < 10


@pytest.mark.parametrize("pattern", ["re:(a)\\1", "re:(?=a)b", "re:" + "a" * 2000, "re:(unclosed"])
def test_bad_or_backtracking_only_patterns_are_clean_errors(pattern):
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(torchsmith.errors.InputError, match="regular expression"):
        apply_surgery(model, [{"op": "freeze", "patterns": [pattern]}])


def test_interpolation_sizes_are_checked_before_building():
    import tracemalloc

    spec = {"params": {"s": "x" * 9000}, "chain": [{"type": "Dropout", "p": "${s}" * 50_000}]}
    tracemalloc.start()
    try:
        with pytest.raises(SpecError, match="characters"):
            validate_spec(spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 << 20  # the 450 MB string is never built


def _proto2(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


@pytest.mark.parametrize(
    "name,data",
    [
        # builtins.bytearray(2**30): 34 bytes that would allocate 1 GiB
        ("bytearray", _proto2(b"c__builtin__\nbytearray\nJ\x00\x00\x00@\x85R")),
        ("bytes", _proto2(b"c__builtin__\nbytes\n\x8a\x05\x00\x00\x00\x00\x01\x85R")),  # 4 GiB
        # list(range(10**9))
        ("list-range", _proto2(b"c__builtin__\nlist\nc__builtin__\nrange\nJ\x00\xca\x9a;\x85R\x85R")),
        ("bytes-range", _proto2(b"c__builtin__\nbytes\nc__builtin__\nrange\nJ\x00\xca\x9a;\x85R\x85R")),
    ],
)
def test_allocating_constructors_are_size_checked(tmp_path, name, data):
    import resource

    f = tmp_path / f"{name}.pkl"
    f.write_bytes(data)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(torchsmith.errors.CheckpointError, match=r"limit|allocate"):
        torchsmith.read_state_dict(f)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 << 10  # KiB: < 256 MiB


def test_memo_shared_dicts_are_walked_once(tmp_path):
    # One dict shared 100 times at each of four levels: 100**4 paths if walked naively.
    level = {"w": torch.zeros(1)}
    for _ in range(4):
        level = {f"k{i}": level for i in range(100)}
    f = tmp_path / "shared.pt"
    torch.save(level, f)
    assert f.stat().st_size < 50_000
    start = time.perf_counter()
    assert list(torchsmith.read_state_dict(f)) == ["k0.k0.k0.k0.w"]
    assert torchsmith.inspect_checkpoint(f)["tensors"] == 1
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("opcode", [b"\x8e", b"\x8d", b"\x96"])  # BINBYTES8, BINUNICODE8, BYTEARRAY8
@pytest.mark.parametrize("claim", [2**34, 2**62])
def test_counted_opcodes_claiming_more_than_the_file_are_refused(tmp_path, opcode, claim):
    import resource

    from torchsmith.checkpoint import inspect_checkpoint
    from torchsmith.errors import CheckpointError

    f = tmp_path / "claim.pkl"
    f.write_bytes(b"\x80\x05" + opcode + claim.to_bytes(8, "little") + b"abc.")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match=r"claim\.pkl"):
        inspect_checkpoint(f)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 * 1024  # KiB: < 256 MiB
