"""Valid files the reader must read as torch does, or refuse loudly by name (issue 28, item 4 and 5):
sparse and quantized tensors, every map_location form, device=, TorchScript and torch.export
archives, tensor-less checkpoints, folders with several model files, module versions (_metadata)."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
import torch.nn as nn
from _ckpt_fixtures import relocate_to_cuda, same_state, tiny
from safetensors.torch import save_file

import torchsmith
from torchsmith.checkpoint import inspect_checkpoint, read_checkpoint, read_state_dict
from torchsmith.checkpoint.formats import SeveralModelFiles
from torchsmith.cli.main import main
from torchsmith.errors import CheckpointError, InputError


def _sparse(kind: str) -> torch.Tensor:
    dense = torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, 0.0]])
    return {"coo": dense.to_sparse(), "csr": dense.to_sparse_csr(), "csc": dense.to_sparse_csc()}[kind]


@pytest.mark.parametrize("kind,name", [("coo", "sparse COO"), ("csr", "sparse CSR"), ("csc", "sparse CSC")])
@pytest.mark.parametrize("legacy", [False, True])
def test_sparse_tensors_are_refused_by_key_and_kind_never_dropped(tmp_path, kind, name, legacy):
    path = tmp_path / "s.pt"
    try:
        torch.save(
            {"w": torch.ones(2), "adj": _sparse(kind)}, path, _use_new_zipfile_serialization=not legacy
        )
    except Exception:
        pytest.skip(f"torch cannot save a {kind} tensor in this format")
    with pytest.raises(CheckpointError, match=rf"'adj' is a {name} tensor"):
        read_state_dict(path)
    with pytest.raises(CheckpointError, match="adj"):
        inspect_checkpoint(path)


@pytest.mark.parametrize("dtype", [torch.qint8, torch.quint8, torch.qint32])
def test_quantized_tensors_are_refused_by_key_and_kind(tmp_path, dtype):
    q = torch.quantize_per_tensor(torch.randn(3, 4), 0.1, 3 if dtype != torch.qint8 else 0, dtype)
    torch.save({"w": torch.ones(2), "q": q}, tmp_path / "q.pt")
    with pytest.raises(CheckpointError, match=r"'q' is a quantized"):
        read_state_dict(tmp_path / "q.pt")


@pytest.fixture
def on_cuda(tmp_path):
    src = tmp_path / "cpu.pt"
    torch.save(tiny().state_dict(), src)
    dst = tmp_path / "cuda.pt"
    relocate_to_cuda(src, dst)
    return dst


@pytest.mark.parametrize(
    "map_location",
    [
        "cpu",
        torch.device("cpu"),
        {"cuda:0": "cpu"},
        {"cuda:0": torch.device("cpu")},
        lambda storage, location: storage,
        lambda storage, location: None,
        None,
    ],
    ids=["str", "device", "dict", "dict-device", "callable", "callable-none", "none"],
)
def test_every_map_location_form_torch_load_takes(on_cuda, map_location):
    want = tiny().state_dict()
    got = read_state_dict(on_cuda, map_location=map_location)
    assert same_state(got, want) and all(t.device.type == "cpu" for t in got.values())


def test_map_location_to_meta_and_device_spellings(tmp_path):
    torch.save(tiny().state_dict(), tmp_path / "m.pt")
    meta = read_state_dict(tmp_path / "m.pt", map_location="meta")
    assert all(t.device.type == "meta" for t in meta.values())
    assert same_state(read_state_dict(tmp_path / "m.pt", device="cpu"), tiny().state_dict())
    assert same_state(read_state_dict(tmp_path / "m.pt", device=torch.device("cpu")), tiny().state_dict())
    with pytest.raises(InputError, match="give one"):
        read_state_dict(tmp_path / "m.pt", map_location="meta", device="cpu")
    with pytest.raises(InputError, match="map_location"):
        read_state_dict(tmp_path / "m.pt", map_location=3.5)


_PT2_MEMBERS = [
    "data/weights/weight_0",
    "data/weights/weight_1",
    "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json",
    "models/model.json",
    "data/sample_inputs/model.pt",
    "archive_format",
    "archive_version",
    ".data/version",
    "byteorder",
    ".data/serialization_id",
]


def test_torchscript_and_export_archives_are_named(tmp_path):
    m = tiny()
    torch.jit.script(m).save(str(tmp_path / "scripted.pt"))
    with pytest.raises(CheckpointError, match=r"TorchScript.*torch\.jit\.load"):
        read_state_dict(tmp_path / "scripted.pt")
    # The member layout torch.export.save (torch 2.14) writes, taken from a real .pt2; exporting a
    # model here costs 15 s of dynamo start-up, so the archive is rebuilt with the same members.
    with zipfile.ZipFile(tmp_path / "prog.pt2", "w") as zf:
        for name in _PT2_MEMBERS:
            zf.writestr(f"prog/{name}", b"{}" if name.endswith(".json") else b"0")
    with pytest.raises(CheckpointError, match=r"torch\.export archive.*torch\.export\.load"):
        read_state_dict(tmp_path / "prog.pt2")
    assert main(["inspect", str(tmp_path / "prog.pt2")]) == 2


def test_tensorless_checkpoints_are_described(tmp_path, capsys):
    opt = torch.optim.SGD(tiny().parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3)
    for name, obj in [("sched.pt", sched.state_dict()), ("state.pkl", {"epoch": 3, "best": 0.5, "tag": "x"})]:
        torch.save(obj, tmp_path / name)
        info = inspect_checkpoint(tmp_path / name)
        assert info["tensors"] == 0 and set(info["other_keys"]) == set(obj)
        assert main(["inspect", str(tmp_path / name)]) == 0
        assert "tensors     0" in capsys.readouterr().out
        with pytest.raises(CheckpointError, match="tensor-less"):
            read_state_dict(tmp_path / name)


def test_a_folder_of_several_model_files_is_listed_and_read_asks_which(tmp_path, capsys):
    folder = tmp_path / "state"
    folder.mkdir()
    a, b = nn.Linear(4, 3), nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    save_file(a.state_dict(), folder / "model.safetensors")
    save_file(b.state_dict(), folder / "model_1.safetensors")
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.bin")
    with pytest.raises(SeveralModelFiles, match=r"model\.safetensors, model_1\.safetensors") as e:
        read_state_dict(folder)
    assert [p.name for p in e.value.files] == ["model.safetensors", "model_1.safetensors"]
    info = inspect_checkpoint(folder)
    assert info["format"] == "folder" and info["tensors"] == 2 + 7
    assert len(info["files"]) == 2 and "optimizer.bin" in " ".join(info["notes"])
    assert main(["inspect", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tensors"] == 9
    assert same_state(read_state_dict(folder / "model_1.safetensors"), b.state_dict())


@pytest.mark.parametrize("container,legacy", [(None, False), ("state_dict", True)])
def test_module_versions_travel_with_the_state_dict(tmp_path, container, legacy):
    import torchvision

    src = torchvision.models.mnasnet0_5()
    sd = src.state_dict()
    obj = sd if container is None else {container: sd, "epoch": 1}
    torch.save(obj, tmp_path / "m.pt", _use_new_zipfile_serialization=not legacy)
    got = read_state_dict(tmp_path / "m.pt")
    assert got._metadata == sd._metadata and got._metadata[""] == {"version": 2}
    dst = torchvision.models.mnasnet0_5()
    dst.load_state_dict(got)  # MNASNet reads its version from _metadata
    assert same_state(dst.state_dict(), sd)
    ckpt = read_checkpoint(tmp_path / "m.pt")
    assert list(ckpt.state_dict._metadata) == list(sd._metadata)


def test_a_plain_dict_without_versions_stays_a_plain_dict(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "p.pt")
    assert not hasattr(torchsmith.read_state_dict(tmp_path / "p.pt"), "_metadata")
