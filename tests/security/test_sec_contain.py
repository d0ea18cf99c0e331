"""Containment and format rules: sharded indexes stay in their folder, safetensors layouts are exact,
zip members are read with a size cap."""

from __future__ import annotations

import json
import os
import struct
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import torchsmith
from torchsmith.checkpoint.safetensors_io import validate_header
from torchsmith.errors import CheckpointError


def _index(folder, weight_map):
    f = folder / "model.safetensors.index.json"
    f.write_text(json.dumps({"weight_map": weight_map}))
    return f


def test_index_entries_must_stay_inside_the_folder(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    ck = tmp_path / "ck"
    ck.mkdir()
    save_file({"w": torch.zeros(2)}, ck / "a.safetensors")
    os.symlink(secret, ck / "link.safetensors")
    for bad in ("../secret", str(secret), "sub/../../secret", "link.safetensors"):
        with pytest.raises(CheckpointError, match=r"(in|out)side the index's folder") as e:
            torchsmith.read_state_dict(_index(ck, {"w": bad}))
        assert "root:x" not in str(e.value) and "72 6f" not in str(e.value)
    (ck / "junk.safetensors").write_bytes(b"root:x:0:0:" * 10)
    with pytest.raises(CheckpointError) as e:
        torchsmith.read_state_dict(_index(ck, {"w": "junk.safetensors"}))
    assert "72 6f" not in str(e.value) and "root:x" not in str(e.value)


def _st(path, header: dict, data: bytes):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


@pytest.mark.parametrize(
    "header,data,why",
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlaps"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "gap"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, "after the last"),
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "truncated"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "shape"),
        ({"a": {"dtype": "XX", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "dtype"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, "4"]}}, b"\0" * 4, "data_offsets"),
    ],
)  # fmt: skip
def test_safetensors_layout_rules(tmp_path, header, data, why):
    f = _st(tmp_path / "x.safetensors", header, data)
    with pytest.raises(CheckpointError, match=why):
        torchsmith.read_state_dict(f)
    with pytest.raises(CheckpointError, match=why):
        validate_header(header, len(data), "x")


def test_real_safetensors_files_pass(tmp_path):
    save_file({"a": torch.zeros(3), "b": torch.ones(2, 2, dtype=torch.float16)}, tmp_path / "r.safetensors")
    assert set(torchsmith.read_state_dict(tmp_path / "r.safetensors")) == {"a", "b"}
    m = torchsmith.build_model({"input_shape": [1, 3], "chain": [{"type": "Linear", "out_features": 2}]})
    torchsmith.save(m, tmp_path / "t.safetensors")  # torchsmith's own writer keeps the layout exact
    assert torchsmith.load_model(tmp_path / "t.safetensors")[0].weight.shape == (2, 3)


def test_zip_member_bomb_is_refused_before_inflating(tmp_path):
    import resource

    torch.save({"w": torch.zeros(2)}, tmp_path / "ok.pt")
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(tmp_path / "ok.pt") as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):  # 64 MB of zeros behind the real pickle
                dst.writestr(info.filename, data + b"\0" * (64 << 20), compress_type=zipfile.ZIP_DEFLATED)
            else:
                dst.writestr(info, data)
    assert bomb.stat().st_size < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="zip bomb"):
        torchsmith.read_state_dict(bomb)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 128 << 10  # KiB
