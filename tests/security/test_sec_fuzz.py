"""Hypothesis fuzz: mutated DCP .metadata and random torchsmith metadata give a TorchsmithError or a
sane result, never a raw exception, never code run."""

from __future__ import annotations

import json
import shutil

import torch
from _sec_corpus import dcp_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import torchsmith
from torchsmith.checkpoint.dcp import read_dcp_metadata
from torchsmith.errors import TorchsmithError

_FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FAST
@given(data=st.data())
def test_mutated_dcp_metadata(tmp_path_factory, data):
    base = tmp_path_factory.getbasetemp() / "dcp_seed"
    if not base.exists():
        dcp_folder(base, {"w": torch.arange(6.0).reshape(2, 3), "step": 3})
    d = tmp_path_factory.mktemp("dcp")
    shutil.rmtree(d)
    shutil.copytree(base, d)
    meta = bytearray((d / ".metadata").read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(meta) - 1))
        op = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if op == "flip":
            meta[i] = data.draw(st.integers(0, 255))
        elif op == "delete":
            del meta[i]
        elif op == "insert":
            meta.insert(i, data.draw(st.integers(0, 255)))
        else:
            del meta[i:]
        if not meta:
            meta = bytearray(b"\x80")
    (d / ".metadata").write_bytes(bytes(meta))
    try:
        m = read_dcp_metadata(d)
    except TorchsmithError:
        return
    assert set(m.state_dict_metadata) <= {"w", "step"} | set(m.state_dict_metadata)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)
_ARCH = (
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["torchvision:resnet18", "timm:resnet18", "nope", "zoo:x"])
            | st.text(max_size=8),
            "kwargs": st.dictionaries(
                st.sampled_from(["num_classes", "weights", "checkpoint_path", "x"]), _JSON, max_size=2
            )
            | _JSON,
        }
    )
    | _JSON
)


@_FAST
@given(arch=_ARCH, ops=_JSON | st.lists(st.fixed_dictionaries({"op": st.text(max_size=10)}), max_size=2))
def test_random_torchsmith_metadata(tmp_path_factory, arch, ops):
    f = tmp_path_factory.mktemp("meta") / "m.safetensors"
    save_file(
        {"w": torch.zeros(1)},
        f,
        metadata={"torchsmith.arch": json.dumps(arch), "torchsmith.surgery": json.dumps(ops)},
    )
    try:
        torchsmith.load_model(f)
    except TorchsmithError as e:
        assert "\n" not in str(e).strip() or len(str(e)) < 2000
