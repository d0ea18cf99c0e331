"""Checksums of files torchsmith writes: xxh3-128 recorded with its name, older SHA-256 files still verified.

Every test uses small tensors (the `mlp` zoo model at most, under 1 MB), so the file costs seconds.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import torchsmith
from torchsmith.checkpoint import _hashing, read_state_dict, save, verify_checkpoint
from torchsmith.checkpoint import load as load_mod
from torchsmith.checkpoint import saving as saving_mod
from torchsmith.checkpoint.formats import open_raw
from torchsmith.checkpoint.read import select_tensors
from torchsmith.checkpoint.saving import tensor_checksum
from torchsmith.checkpoint.torch_files import METADATA_RECORD
from torchsmith.cli.main import main
from torchsmith.errors import CheckpointError, TorchsmithError


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def small_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": torch.randn(8, 16, generator=g),
        "a.bias": torch.randn(8, generator=g),
        "steps": torch.arange(5),
        "half": torch.randn(3, 5, generator=g).half(),  # 30 bytes: stored unaligned, after the rest
    }


def _rewrite_safetensors_metadata(path, change) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    change(header["__metadata__"])
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])


def _old_format_file(tmp_path, ext: str, state: dict[str, torch.Tensor]):
    """A file as torchsmith wrote it before xxh3-128: ``torchsmith.sha256`` only, made here by hand."""
    table = json.dumps(
        {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() for k, v in state.items()}
    )
    path = tmp_path / f"old.{ext}"
    if ext == "safetensors":
        save_file(state, path, metadata={"torchsmith.sha256": table})
        return path
    torch.save(state, path)
    with zipfile.ZipFile(path, "a") as zf:
        prefix = next(n[: -len("data.pkl")] for n in zf.namelist() if n.endswith("data.pkl"))
        zf.writestr(prefix + METADATA_RECORD, json.dumps({"torchsmith.sha256": table}))
    return path


def _flip(path, tensor: str, where: float = 0.5) -> None:
    """Flip one bit inside ``tensor``'s stored bytes (at fraction ``where`` of them)."""
    refs, *_ = select_tensors(open_raw(path))
    begin, end = refs[tensor].byte_range()
    data = bytearray(path.read_bytes())
    data[begin + int((end - begin - 1) * where)] ^= 0x08
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("ext", ["safetensors", "pt"])
def test_new_files_record_xxh3_with_its_name(tmp_path, ext):
    state = small_state()
    path = save(state, tmp_path / f"w.{ext}")
    meta = open_raw(path).metadata
    assert meta["torchsmith.checksum_algorithm"] == "xxh3-128" and "torchsmith.sha256" not in meta
    assert json.loads(meta["torchsmith.checksums"]) == {
        k: tensor_checksum(v, "xxh3-128") for k, v in state.items()
    }
    result = verify_checkpoint(path)
    assert result["checksum"] == "xxh3-128" and "xxh3-128" in result["checks"]


@pytest.mark.parametrize("ext", ["safetensors", "pt"])
def test_old_sha256_files_still_verify_and_load(tmp_path, capsys, ext):
    state = small_state()
    path = _old_format_file(tmp_path, ext, state)
    result = verify_checkpoint(path)
    assert result["checksum"] == "sha256" and "sha256" in result["checks"] and "note" not in result
    code, out, err = run_cli(capsys, "verify", path, "--json")
    assert code == 0 and json.loads(out)["checksum"] == "sha256", err
    code, out, _ = run_cli(capsys, "verify", path)
    assert code == 0 and "sha256" in out
    got = read_state_dict(path)
    assert all(torch.equal(got[k], v) for k, v in state.items())
    _flip(path, "a.weight")
    with pytest.raises(CheckpointError, match=r"damaged: 1 tensor.*sha256.*'a\.weight'"):
        read_state_dict(path)


@pytest.mark.parametrize("algorithm", ["xxh3-128", "sha256"])
@pytest.mark.parametrize("ext", ["safetensors", "pt"])
def test_a_flipped_byte_anywhere_is_named_by_every_reader(tmp_path, monkeypatch, capsys, algorithm, ext):
    monkeypatch.setattr(_hashing, "writing_algorithm", lambda: algorithm)
    model = torchsmith.create_model("mlp")
    good = save(model, tmp_path / f"m.{ext}")
    assert verify_checkpoint(good)["checksum"] == algorithm
    for i, tensor in enumerate(model.state_dict()):
        path = tmp_path / f"bad{i}.{ext}"
        path.write_bytes(good.read_bytes())
        _flip(path, tensor, where=(i * 0.37) % 1.0)  # first, last and inner bytes over the tensors
        named = rf"'{tensor}'"
        for read in (torchsmith.load_model, read_state_dict, verify_checkpoint):
            with pytest.raises(CheckpointError, match=rf"damaged.*{named}"):
                read(path)
        code, _, err = run_cli(capsys, "verify", path)
        assert code == 2 and tensor in err and err.count("\n") == 1, err


def test_a_tied_copy_flipped_is_caught_by_the_readers_too(tmp_path):
    """Tied names written twice: the copy read as its target still has its own bytes checked."""
    emb = torch.randn(16, 4)
    path = save({"emb.weight": emb, "head.weight": emb, "other": torch.randn(3)}, tmp_path / "t.safetensors")
    sd = read_state_dict(path)
    assert sd["emb.weight"].data_ptr() == sd["head.weight"].data_ptr()  # still one tensor
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    begin = json.loads(data[8 : 8 + n])["head.weight"]["data_offsets"][0]
    data[8 + n + begin + 5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"head\.weight"):
        read_state_dict(path)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"torchsmith.checksum_algorithm": "md5"}, "does not know"),
        ({"torchsmith.checksum_algorithm": "XXH3-128"}, "did you mean 'xxh3-128'"),
        ({"torchsmith.checksum_algorithm": "none"}, "must name its checksum algorithm"),
        ({"torchsmith.checksum_algorithm": ""}, "must name its checksum algorithm"),
        ({"torchsmith.checksum_algorithm": None}, "must name its checksum algorithm"),
        ({"torchsmith.checksums": None}, "no torchsmith.checksums table"),
        ({"torchsmith.checksums": '{"a.weight": "abc"}'}, "not a xxh3-128 digest"),
        ({"torchsmith.checksums": "[1]"}, "damaged"),
    ],
)
def test_the_recorded_algorithm_is_validated(tmp_path, capsys, change, words):
    path = save(small_state(), tmp_path / "w.safetensors")

    def edit(meta):
        for k, v in change.items():
            if v is None:
                meta.pop(k)
            else:
                meta[k] = v

    _rewrite_safetensors_metadata(path, edit)
    for read in (verify_checkpoint, read_state_dict):
        with pytest.raises(CheckpointError, match=words) as info:
            read(path)
        assert str(path) in str(info.value)
    code, _, err = run_cli(capsys, "verify", path)
    assert code == 2 and words in err and "Traceback" not in err, err


def test_unknown_algorithm_in_a_torch_zip_and_in_load_model(tmp_path, capsys):
    path = save(torchsmith.create_model("mlp"), tmp_path / "m.pt")
    tmp = tmp_path / "edited.pt"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith(METADATA_RECORD):
                meta = json.loads(data)
                meta["torchsmith.checksum_algorithm"] = "blake9"
                data = json.dumps(meta).encode()
            zout.writestr(info.filename, data)
    with pytest.raises(CheckpointError, match=r"'blake9'.*does not know"):
        torchsmith.load_model(tmp)
    code, _, err = run_cli(capsys, "verify", tmp, "--json")
    assert code == 2 and "blake9" in err


def test_without_xxhash_saves_fall_back_to_sha256_and_xxh3_files_fail_loudly(tmp_path, monkeypatch):
    xxh3_file = save(small_state(), tmp_path / "new.safetensors")
    monkeypatch.setattr(_hashing, "_xxhash", lambda: None)
    monkeypatch.setattr(_hashing, "_warned_fallback", False)
    with pytest.warns(UserWarning, match="xxhash"):
        fallback = save(small_state(), tmp_path / "fallback.pt")
    meta = open_raw(fallback).metadata
    assert "torchsmith.sha256" in meta and "torchsmith.checksum_algorithm" not in meta  # the older form
    assert verify_checkpoint(fallback)["checksum"] == "sha256"
    with pytest.raises(TorchsmithError, match=r"pip install 'xxhash") as info:
        read_state_dict(xxh3_file)
    assert info.value.exit_code == 1 and str(xxh3_file) in str(info.value)
    torchsmith.inspect_checkpoint(xxh3_file)  # reading the header needs no hash


def test_torch_file_is_hashed_while_written(tmp_path, monkeypatch):
    """One pass: torch.save's storage writes are hashed as they go; only the rest is hashed after."""
    state = {**small_state(), "t": torch.randn(6, 4).t(), "view": torch.arange(20.0)[4:12]}
    after: list[int] = []
    real = saving_mod.tensor_checksum

    def counted(t, algorithm=None):
        after.append(t.numel())
        return real(t, algorithm)

    monkeypatch.setattr(saving_mod, "tensor_checksum", counted)
    path = save(state, tmp_path / "w.pt")
    assert after == [24]  # only the transposed tensor, whose storage is not in C order
    table = json.loads(open_raw(path).metadata["torchsmith.checksums"])
    assert table == {k: real(v, "xxh3-128") for k, v in state.items()}
    assert verify_checkpoint(path)["checksum"] == "xxh3-128"


def test_sharded_files_verify_each_shard_with_its_algorithm(tmp_path, monkeypatch, capsys):
    state = {f"w{i}": torch.randn(64, 8) for i in range(4)}
    index = save(state, tmp_path / "m.safetensors", max_shard_size="3KB")
    shards = sorted(tmp_path.glob("m-*-of-*.safetensors"))
    assert len(shards) > 1
    monkeypatch.setattr(_hashing, "writing_algorithm", lambda: "sha256")
    old = save({k: state[k] for k in ["w0"]}, tmp_path / "one.safetensors")  # an older shard, put in place
    shards[0].write_bytes(old.read_bytes())
    code, out, err = run_cli(capsys, "verify", index, "--json")
    assert code == 0, err
    assert json.loads(out)["checks"][-2:] == ["sha256", "xxh3-128"]
    _flip(shards[-1], next(k for k in state if k in shards[-1].read_bytes().decode("latin1")))
    code, _, err = run_cli(capsys, "verify", index)
    assert code == 2 and "damaged" in err and "xxh3-128" in err


def test_a_shard_naming_an_unknown_algorithm_fails_the_checkpoint(tmp_path, capsys):
    index = save(
        {f"w{i}": torch.randn(64, 8) for i in range(3)}, tmp_path / "m.safetensors", max_shard_size="3KB"
    )
    shard = sorted(tmp_path.glob("m-*-of-*.safetensors"))[1]
    _rewrite_safetensors_metadata(
        shard, lambda meta: meta.__setitem__("torchsmith.checksum_algorithm", "md5")
    )
    code, _, err = run_cli(capsys, "verify", index)
    assert code == 2 and "'md5'" in err and "does not know" in err, err
    with pytest.raises(CheckpointError, match="md5"):
        read_state_dict(index)


def test_inspect_counts_the_table_and_names_the_algorithm(tmp_path):
    path = save(small_state(), tmp_path / "w.safetensors")
    info = torchsmith.inspect_checkpoint(path)
    assert info["metadata"]["torchsmith.checksums"] == "<xxh3-128 of 4 tensors>"


def test_direct_assignment_gives_way_to_torch_where_a_module_hooks_loading():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    state = {k: v.clone() + 1 for k, v in model.state_dict().items()}
    with load_mod.params_on_meta():
        fresh = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    assert load_mod._assign_direct(fresh, dict(state))
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())
    assert fresh[0].weight.requires_grad and type(fresh[0].weight) is torch.nn.Parameter
    seen: list[str] = []
    fresh[1]._register_load_state_dict_pre_hook(lambda *a, **k: seen.append("hook"))
    assert not load_mod._assign_direct(fresh, dict(state))  # torch's load_state_dict must run the hook
    assert seen == []
