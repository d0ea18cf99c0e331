"""Reading every format and layout safely: containers, rescue without trust, traps 2 and 13, GPU tags."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from _ckpt_fixtures import evil_bytes, relocate_to_cuda, same_state, tiny

from torchsmith.checkpoint import read_checkpoint, read_state_dict, sniff
from torchsmith.errors import CheckpointError


@pytest.fixture
def model():
    return tiny()


def test_formats_detected_from_bytes_not_extension(tmp_path, model):
    sd = model.state_dict()
    torch.save(sd, tmp_path / "zip.weird")
    torch.save(sd, tmp_path / "legacy.pkl", _use_new_zipfile_serialization=False)
    from safetensors.torch import save_file

    save_file(sd, tmp_path / "st.pth")  # safetensors behind a torch extension
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    expect = {"zip.weird": "torch-zip", "legacy.pkl": "torch-legacy", "st.pth": "safetensors", "dcp": "dcp"}
    for name, fmt in expect.items():
        assert sniff(tmp_path / name) == fmt
        ckpt = read_checkpoint(tmp_path / name)
        assert ckpt.format == fmt
        assert same_state(ckpt.state_dict, sd), name


def test_tensors_are_memory_mapped_and_correct(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "m.pt")
    sd = read_state_dict(tmp_path / "m.pt")
    assert same_state(sd, model.state_dict())
    sd2 = read_state_dict(tmp_path / "m.pt", mmap=False)
    assert same_state(sd2, model.state_dict())


def test_containers_unwrapped_and_reported(tmp_path, model):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.save(
        {"epoch": 7, "state_dict": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "a.ckpt"
    )
    ckpt = read_checkpoint(tmp_path / "a.ckpt")
    assert ckpt.container_key == "state_dict"
    assert ckpt.other_keys == {"epoch": "int 7", "optimizer": "dict with 2 entries"}
    assert same_state(ckpt.state_dict, model.state_dict())
    torch.save({"model": {"state_dict": model.state_dict()}, "best_acc": 0.9}, tmp_path / "b.tar")
    ckpt = read_checkpoint(tmp_path / "b.tar")
    assert ckpt.container_key == "model.state_dict" and "best_acc" in ckpt.other_keys
    torch.save({"model_state_dict": model.state_dict(), "ema": model.state_dict()}, tmp_path / "c.pth")
    assert read_checkpoint(tmp_path / "c.pth").container_key == "model_state_dict"


def test_whole_model_pickle_rescued_without_importing_its_code(tmp_path, monkeypatch):
    # A model class in its own module ("models.py"), pickled whole, then the code disappears (trap 13).
    pkg = tmp_path / "code"
    pkg.mkdir()
    (pkg / "seedmodels.py").write_text(
        textwrap.dedent(
            """
            import torch.nn as nn
            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.features = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2))
                    self.classifier = nn.Linear(2, 3)
            """
        )
    )
    monkeypatch.syspath_prepend(str(pkg))
    import seedmodels

    net = seedmodels.Net()
    torch.save(net, tmp_path / "whole.pkl")
    torch.save(nn.DataParallel(net), tmp_path / "dp_whole.pth")
    expected = net.state_dict()
    del sys.modules["seedmodels"]
    (pkg / "seedmodels.py").unlink()
    with pytest.raises(ModuleNotFoundError):
        torch.load(tmp_path / "whole.pkl", weights_only=False)
    ckpt = read_checkpoint(tmp_path / "whole.pkl")
    assert "seedmodels" not in sys.modules
    assert same_state(ckpt.state_dict, expected)
    assert any("seedmodels.Net" in n and "without importing" in n for n in ckpt.notes)
    dp = read_state_dict(tmp_path / "dp_whole.pth")  # device ids and the module. prefix of S17
    assert same_state({k.removeprefix("module."): v for k, v in dp.items()}, expected)


def test_whole_model_loaded_whole_with_trust(tmp_path):
    from torchsmith.checkpoint import load_model

    net = tiny()
    torch.save(net, tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        load_model(tmp_path / "whole.pt")
    loaded = load_model(tmp_path / "whole.pt", trust_pickle=True)
    assert isinstance(loaded, type(net)) and same_state(loaded.state_dict(), net.state_dict())


def test_bound_method_pickle_is_explained_and_rescued(tmp_path, model):
    torch.save(model.state_dict, tmp_path / "trap2.pth")  # the seeds' mistake: no call
    ckpt = read_checkpoint(tmp_path / "trap2.pth")
    assert same_state(ckpt.state_dict, model.state_dict())
    assert any("trap 2" in n and "torch.save(model.state_dict, path)" in n for n in ckpt.notes)


@pytest.mark.parametrize("wrap", ["plain", "torch"])
def test_malicious_pickle_never_executes(tmp_path, wrap):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if wrap == "plain":
        path.write_bytes(evil_bytes(marker))
    else:
        from _ckpt_fixtures import Evil

        torch.save({"state_dict": {"w": torch.ones(2)}, "x": Evil(marker)}, path)
    with pytest.raises(CheckpointError, match=r"os\.system|posix\.system") as e:
        read_checkpoint(path)
    assert "nothing was executed" in str(e.value)
    assert not marker.exists()
    from torchsmith.checkpoint import inspect_checkpoint

    with pytest.raises(CheckpointError):
        inspect_checkpoint(path)
    assert not marker.exists()


def test_gpu_saved_checkpoint_loads_on_cpu(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "cpu.pt")
    relocate_to_cuda(tmp_path / "cpu.pt", tmp_path / "gpu.pt")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "gpu.pt", weights_only=True)  # plain torch fails here
    ckpt = read_checkpoint(tmp_path / "gpu.pt")
    assert same_state(ckpt.state_dict, model.state_dict())
    assert all(t.device.type == "cpu" for t in ckpt.state_dict.values())
    assert any("cuda:0" in n for n in ckpt.notes)


def test_not_a_state_dict(tmp_path):
    torch.save(torch.ones(3), tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="single tensor"):
        read_checkpoint(tmp_path / "t.pt")
    torch.save({"epoch": 1, "name": "x"}, tmp_path / "n.pt")
    with pytest.raises(CheckpointError, match="no tensors found"):
        read_checkpoint(tmp_path / "n.pt")
