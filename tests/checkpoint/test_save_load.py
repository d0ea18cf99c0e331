"""Saving and loading: wrappers both ways (DataParallel, real DDP, torch.compile), atomicity, shards, ties."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
from _ckpt_fixtures import TinyNet, same_state, sample, tiny

import torchsmith
from torchsmith.checkpoint import fit_keys, load_model, read_checkpoint, read_state_dict, save
from torchsmith.errors import CheckpointError, InputError


def load_into(model: nn.Module, path) -> nn.Module:
    """Load a checkpoint into ``model`` whatever the wrappers on either side (the fitting under test)."""
    sd = read_state_dict(path)
    fit = fit_keys(sd, model.state_dict())
    assert not fit.unmatched_source and not fit.unmatched_target, fit.describe()
    model.load_state_dict({fit.mapping[k]: v for k, v in sd.items()})
    return model


def _ddp_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    ddp = nn.parallel.DistributedDataParallel(tiny())
    if rank == 0:
        torch.save(ddp.state_dict(), out)  # the seeds' multi-GPU save: keys start with module.
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "ddp.pth"
    init = f"file://{out.parent / 'rendezvous'}"
    # fork: the workers inherit the imported torch instead of paying for it again
    torch.multiprocessing.start_processes(
        _ddp_worker, args=(2, init, str(out)), nprocs=2, join=True, start_method="fork"
    )
    return out


@pytest.mark.parametrize("source", ["plain", "dataparallel", "ddp", "compile", "compile_dp"])
def test_wrapped_checkpoints_load_into_plain_model_and_back(tmp_path, source, request):
    ref = tiny()
    x = sample()
    if source == "ddp":
        path = request.getfixturevalue("ddp_checkpoint")
        assert next(iter(read_state_dict(path))).startswith("module.")
    else:
        wrapped = {
            "plain": lambda m: m,
            "dataparallel": nn.DataParallel,
            "compile": lambda m: torch.compile(m, backend="eager"),
            "compile_dp": lambda m: torch.compile(nn.DataParallel(m), backend="eager"),
        }[source](tiny())
        path = tmp_path / "w.pth"
        torch.save(wrapped.state_dict(), path)
    plain = load_into(tiny(seed=5), path).eval()
    assert torch.equal(plain(x), ref(x))
    # ...and the reverse: a plain checkpoint into each wrapper.
    torch.save(ref.state_dict(), tmp_path / "plain.pt")
    for wrap in (nn.DataParallel, lambda m: torch.compile(m, backend="eager")):
        target = wrap(tiny(seed=7)).eval()
        assert torch.equal(load_into(target, tmp_path / "plain.pt")(x), ref(x))


def test_save_unwraps_wrappers(tmp_path):
    model = tiny()
    for wrapped in (nn.DataParallel(model), torch.compile(model, backend="eager")):
        path = save(wrapped, tmp_path / "w.safetensors")
        assert same_state(read_state_dict(path), model.state_dict())
    save(nn.DataParallel(model).state_dict(), tmp_path / "d.pt")  # a wrapped state dict too
    assert list(read_state_dict(tmp_path / "d.pt")) == list(model.state_dict())


@pytest.mark.parametrize("ext", ["safetensors", "pt"])
def test_load_model_rebuilds_without_pickle(tmp_path, ext):
    model = torchsmith.create_model("mlp").eval()
    path = save(model, tmp_path / f"mlp.{ext}", metadata={"note": "hello"})
    meta = read_checkpoint(path).metadata
    assert meta["note"] == "hello" and "torchsmith.arch" in meta and "torchsmith.checksums" in meta
    assert meta["torchsmith.checksum_algorithm"] == "xxh3-128" and "torchsmith.sha256" not in meta
    assert meta["torch.version"] == torch.__version__
    loaded = load_model(path).eval()
    x = torch.randn(3, 1, 28, 28)
    assert same_state(loaded.state_dict(), model.state_dict())
    assert torch.allclose(loaded(x), model(x), rtol=1e-5, atol=1e-6)  # mapped weights: other alignment
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    if ext == "pt":  # still a plain torch zip for torch.load users
        assert same_state(torch.load(path, weights_only=True), model.state_dict())
    else:  # and a valid file for the safetensors library, keys in the model's order
        from safetensors.torch import load_file

        assert same_state(load_file(path), model.state_dict())
        assert torchsmith.inspect_checkpoint(path)["keys"] == list(model.state_dict())


def test_load_model_without_architecture_explains(tmp_path):
    save(tiny(), tmp_path / "t.safetensors")
    with pytest.raises(CheckpointError, match="records no architecture"):
        load_model(tmp_path / "t.safetensors")


def test_traps_1_and_2_refused(tmp_path):
    model = tiny()
    with pytest.raises(InputError, match="trap 2"):
        save(model.state_dict, tmp_path / "x.pt")
    model.state_dict = {"w": torch.ones(1)}  # trap 1
    with pytest.raises(InputError, match="loads nothing"):
        save(model, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(InputError, match="unknown extension"):
        save(tiny(), tmp_path / "x.h5")


def test_tied_weights_stay_tied(tmp_path, monkeypatch):
    from torchsmith.zoo import _entries

    # Registered for this test only: other tests compare the zoo's list of models.
    torchsmith.list_models()  # the built-in models are registered into the real table first
    monkeypatch.setattr(_entries, "_REGISTRY", dict(_entries._REGISTRY))

    @torchsmith.register_model("_test_tied_lm", input_shape=(1, 4))
    def tied_lm():
        m = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 10, bias=False))
        m[1].weight = m[0].weight
        return m

    model = torchsmith.create_model("_test_tied_lm")
    for ext in ("safetensors", "pt"):
        path = save(model, tmp_path / f"tied.{ext}")
        sd = read_state_dict(path)
        assert sd["0.weight"].data_ptr() == sd["1.weight"].data_ptr()
        loaded = load_model(path)
        assert loaded[0].weight is loaded[1].weight
        assert torch.equal(loaded[1].weight, model[1].weight)


def test_crash_mid_save_keeps_previous_file(tmp_path, monkeypatch):
    import torchsmith.checkpoint.safetensors_io as st

    old = tiny(seed=1)
    path = save(old, tmp_path / "m.safetensors")
    before = sorted(os.listdir(tmp_path))
    calls = {"n": 0}
    real = st._tensor_bytes

    def crash_after_two(t):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError("disk full (injected)")
        return real(t)

    monkeypatch.setattr(st, "_tensor_bytes", crash_after_two)
    with pytest.raises(OSError, match="injected"):
        save(tiny(seed=2), path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before  # no temporary file left behind
    assert same_state(read_state_dict(path), old.state_dict())


def test_overwrite_the_file_a_model_is_mapped_from(tmp_path):
    model = torchsmith.create_model("mlp")
    path = save(model, tmp_path / "m.safetensors")
    loaded = load_model(path)  # its weights are views of the file
    expected = {k: v.clone() for k, v in loaded.state_dict().items()}
    with torch.no_grad():
        loaded.fc2.bias.add_(1.0)  # copy-on-write: the file is untouched
    save(loaded, path)  # replaces the file the model is mapped from
    assert torch.equal(load_model(path).fc2.bias, expected["fc2.bias"] + 1)
    assert torch.equal(loaded.fc1.weight, expected["fc1.weight"])


@pytest.mark.parametrize("ext", ["safetensors", "bin"])
def test_sharded_round_trip(tmp_path, ext):
    model = torchsmith.create_model("mlp")
    index = save(model, tmp_path / f"model.{ext}", max_shard_size="300KB")
    assert index.name == f"model.{ext}.index.json"
    shards = sorted(tmp_path.glob(f"model-*-of-*.{ext}"))
    assert len(shards) >= 2
    ckpt = read_checkpoint(index)
    assert ckpt.format == "sharded" and same_state(ckpt.state_dict, model.state_dict())
    assert same_state(read_state_dict(tmp_path), model.state_dict())  # the folder works too
    x = torch.randn(2, 784)
    assert torch.allclose(load_model(index).eval()(x), model.eval()(x), rtol=1e-5, atol=1e-6)
    shards[-1].unlink()
    with pytest.raises(CheckpointError, match="missing"):
        read_checkpoint(index)


def test_plain_model_class_without_registry(tmp_path):
    model = TinyNet()
    path = save(model, tmp_path / "m.pth")
    assert same_state(read_state_dict(path), model.state_dict())


def test_load_model_replays_spec_and_surgery(tmp_path):
    from torchsmith.spec import build_model
    from torchsmith.surgery import set_num_classes

    model = torchsmith.create_model("torchvision:resnet18")
    set_num_classes(model, 3)
    path = save(model, tmp_path / "r18.safetensors")
    assert "set_num_classes" in read_checkpoint(path).metadata["torchsmith.surgery"]
    loaded = load_model(path).eval()
    x = torch.randn(1, 3, 32, 32)
    assert loaded.fc.out_features == 3 and same_state(loaded.state_dict(), model.state_dict())
    assert torch.allclose(loaded(x), model.eval()(x), rtol=1e-5, atol=1e-6)  # kernels may pick other paths
    spec = {"input_shape": [2, 8], "chain": [{"type": "Linear", "out_features": 4}, {"type": "ReLU"}]}
    built = build_model(spec)
    loaded = load_model(save(built, tmp_path / "spec.pt"))
    x = torch.randn(2, 8)
    assert torch.allclose(loaded(x), built(x), rtol=1e-5, atol=1e-6)


def test_non_json_kwargs_are_skipped_with_a_note(tmp_path):
    model = torchsmith.create_model("torchvision:resnet18", norm_layer=nn.BatchNorm2d)
    with pytest.warns(UserWarning, match="norm_layer"):
        path = save(model, tmp_path / "r.safetensors")
    meta = read_checkpoint(path).metadata
    assert "norm_layer" in meta["torchsmith.provenance_notes"]
    assert load_model(path).fc.out_features == 1000


def test_damaged_file_is_named_on_load(tmp_path):
    model = torchsmith.create_model("mlp")
    path = save(model, tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"damaged: 1 tensor.*fc\d\.(weight|bias)"):
        load_model(path)


def test_process_killed_mid_save_keeps_previous_file(tmp_path):
    """A real crash: the saving process dies (os._exit) halfway through writing the tensors."""
    import subprocess
    import sys

    path = tmp_path / "m.pt"
    old = torchsmith.create_model("mlp")
    save(old, path)
    child = f"""
import os, torch, torchsmith
real = torch.save
def dying_save(obj, f, *a, **k):
    real(obj, f, *a, **k)
    (tmp,) = [os.path.join({str(tmp_path)!r}, n) for n in os.listdir({str(tmp_path)!r}) if n.endswith(".tmp")]
    with open(tmp, "r+b") as fh:
        fh.truncate(os.path.getsize(tmp) // 2)   # half of the new file is on disk...
    os._exit(9)                                  # ...when the process dies
torch.save = dying_save
torch.manual_seed(123)
torchsmith.save(torchsmith.create_model("mlp"), {str(path)!r})
"""
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert out.returncode == 9, out.stderr
    assert same_state(read_state_dict(path), old.state_dict())
    assert torchsmith.verify_checkpoint(path)["ok"]


def test_damaged_provenance_is_a_checkpoint_error(tmp_path):
    from torchsmith.checkpoint.safetensors_io import write_safetensors

    write_safetensors(tmp_path / "m.safetensors", {"w": torch.ones(2)}, {"torchsmith.arch": "{not json"})
    with pytest.raises(CheckpointError, match="damaged provenance"):
        load_model(tmp_path / "m.safetensors")
    write_safetensors(
        tmp_path / "n.safetensors", {"w": torch.ones(2)}, {"torchsmith.arch": '{"name": "nope"}'}
    )
    with pytest.raises(CheckpointError, match=r"cannot rebuild.*nope"):
        load_model(tmp_path / "n.safetensors")


def test_params_on_meta_builds_without_memory_and_restores_torch():
    import torch.nn.init as init

    from torchsmith.checkpoint.load import params_on_meta

    before = init.kaiming_uniform_
    with params_on_meta():
        m = TinyNet()
        real = torch.empty(3)
        init.constant_(real, 2.0)  # real tensors are still initialised
    assert all(p.is_meta for p in m.parameters())
    assert not any(b.is_meta for b in m.buffers())
    assert torch.equal(real, torch.full((3,), 2.0))
    assert init.kaiming_uniform_ is before
    assert not TinyNet().conv.weight.is_meta
