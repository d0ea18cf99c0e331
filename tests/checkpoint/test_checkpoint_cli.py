"""inspect / convert / diff / verify on every format; bad input: one line, exit code 2, nothing changed."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from _ckpt_fixtures import same_state

import torchsmith
from torchsmith.checkpoint import read_state_dict, save
from torchsmith.cli.main import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same tiny model in every format torchsmith reads."""
    d = tmp_path_factory.mktemp("formats")
    model = torchsmith.create_model("mlp")
    sd = model.state_dict()
    torch.save(sd, d / "zip.pth")
    torch.save({k: v for k, v in sd.items()}, d / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save(model, d / "whole.pkl")
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, d / "lightning.ckpt")
    save(model, d / "saved.safetensors")
    save(model, d / "saved.pt")
    save(model, d / "sharded.safetensors", max_shard_size="400KB")
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, checkpoint_id=str(d / "dcp"), no_dist=True)
    names = {
        "zip.pth": "torch-zip",
        "legacy.pt": "torch-legacy",
        "whole.pkl": "torch-zip",
        "lightning.ckpt": "torch-zip",
        "saved.safetensors": "safetensors",
        "saved.pt": "torch-zip",
        "sharded.safetensors.index.json": "sharded",
        "dcp": "dcp",
    }
    return d, model, names


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_every_format(files, capsys):
    d, model, names = files
    n_params = sum(p.numel() for p in model.parameters())
    for name, fmt in names.items():
        code, out, _ = run_cli(capsys, "inspect", d / name, "--json")
        assert code == 0, name
        info = json.loads(out)
        assert info["format"] == fmt
        assert info["tensors"] == 4 and info["parameters"] == n_params
        assert info["bytes"] == n_params * 4
        assert {"format", "tensors", "parameters", "bytes", "prefixes", "keys"} <= set(info)
    info = json.loads(run_cli(capsys, "inspect", d / "lightning.ckpt", "--json")[1])
    assert info["prefixes"] == {"module.": 4} and info["container_key"] == "state_dict"
    assert info["other_keys"] == {"epoch": "int 3"}
    info = json.loads(run_cli(capsys, "inspect", d / "saved.safetensors", "--json")[1])
    assert json.loads(info["metadata"]["torchsmith.arch"])["name"] == "mlp"
    code, out, _ = run_cli(capsys, "inspect", d / "whole.pkl")
    assert code == 0 and "rescued whole-model pickle" in out and "fc1.weight" in out


def test_verify_every_format(files, capsys):
    d, _, names = files
    for name in names:
        code, out, err = run_cli(capsys, "verify", d / name, "--json")
        assert code == 0, (name, err)
        checks = json.loads(out)["checks"]
        if name.startswith("saved") or name.startswith("sharded"):
            assert "xxh3-128" in checks
        else:
            assert "no per-tensor checksums" in json.loads(out)["note"]
        if names[name] == "torch-zip":
            assert "crc32" in checks


def test_convert_every_format_both_ways(files, tmp_path, capsys):
    d, model, names = files
    for name in names:
        for ext in ("safetensors", "pt"):
            dst = tmp_path / f"{name.replace('.', '_')}.{ext}"
            code, _, err = run_cli(capsys, "convert", d / name, dst)
            assert code == 0, (name, err)
            got = read_state_dict(dst)
            expect = model.state_dict()
            assert same_state({k.removeprefix("module."): v for k, v in got.items()}, expect), name
    code, _, _ = run_cli(capsys, "convert", d / "saved.safetensors", tmp_path / "again.safetensors")
    assert torchsmith.load_model(tmp_path / "again.safetensors") is not None  # provenance carried over
    code, _, _ = run_cli(capsys, "convert", d / "zip.pth", tmp_path / "sh.pt", "--max-shard-size", "300KB")
    assert code == 0 and (tmp_path / "sh.pt.index.json").exists()


def test_diff(files, tmp_path, capsys):
    d, model, _ = files
    code, out, _ = run_cli(capsys, "diff", d / "zip.pth", d / "lightning.ckpt", "--json")
    res = json.loads(out)
    assert code == 0 and res["identical"] and res["prefixes_added"] == ["module."]
    changed = {k: v.clone() for k, v in model.state_dict().items()}
    changed["fc2.bias"] += 0.5
    changed["extra"] = torch.zeros(2)
    del changed["fc1.bias"]
    changed["fc2.weight"] = changed["fc2.weight"].double()
    torch.save(changed, tmp_path / "changed.pt")
    code, out, _ = run_cli(capsys, "diff", d / "saved.safetensors", tmp_path / "changed.pt", "--json")
    res = json.loads(out)
    assert code == 1 and not res["identical"] and not res["values_equal"]  # exit 1 on a difference, as cmp
    assert res["only_in_a"] == ["fc1.bias"] and res["only_in_b"] == ["extra"]
    assert res["max_abs_diff"]["fc2.bias"] == pytest.approx(0.5)
    assert res["dtype_differs"] == [{"key": "fc2.weight", "a": "float32", "b": "float64"}]
    code, out, _ = run_cli(capsys, "diff", d / "saved.safetensors", tmp_path / "changed.pt")
    assert "only in a: fc1.bias" in out and "fc2.bias" in out


def _snapshot(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _flip(path, where):
    data = bytearray(path.read_bytes())
    data[where] ^= 0x10
    path.write_bytes(bytes(data))


def test_bad_input_one_line_exit_2_nothing_changed(files, tmp_path, capsys):
    d, _model, _ = files
    (tmp_path / "empty.pt").write_bytes(b"")
    good = (d / "saved.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (tmp_path / "truncated.pt").write_bytes((d / "saved.pt").read_bytes()[:5000])
    (tmp_path / "text.pth").write_text("hello, not weights\n")
    (tmp_path / "image.pt").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (tmp_path / "notckpt").mkdir()
    (tmp_path / "notckpt" / "readme.txt").write_text("x")
    (tmp_path / "flipped.safetensors").write_bytes(good)
    _flip(tmp_path / "flipped.safetensors", len(good) - 10)  # inside the last tensor's bytes
    (tmp_path / "flipped.pt").write_bytes((d / "zip.pth").read_bytes())
    from torchsmith.checkpoint.formats import open_raw
    from torchsmith.checkpoint.read import select_tensors

    refs, *_ = select_tensors(open_raw(tmp_path / "flipped.pt"))
    _flip(tmp_path / "flipped.pt", refs["fc1.weight"].storage.offset + 100)
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    for p in d.glob("sharded*"):
        (shard_dir / p.name).write_bytes(p.read_bytes())
    next(iter(sorted(shard_dir.glob("sharded-*")))).unlink()
    cases = {
        "empty.pt": "empty",
        "truncated.safetensors": "truncated",
        "truncated.pt": "zip",
        "text.pth": "not a checkpoint",
        "image.pt": "PNG",
        "notckpt": "not a checkpoint",
        "missing.pt": "no such file",
        "shards/sharded.safetensors.index.json": "missing",
    }
    before = _snapshot(tmp_path)
    for name, words in cases.items():
        for cmd in (["inspect"], ["verify"], ["diff", d / "zip.pth"], ["convert"]):
            argv = [cmd[0], *cmd[1:], tmp_path / name]
            if cmd[0] == "convert":
                argv.append(tmp_path / "out.safetensors")
            code, _, err = run_cli(capsys, *argv)
            assert code == 2, (name, cmd, err)
            assert err.count("\n") == 1 and "Traceback" not in err
            assert name.split("/")[-1] in err or "shards" in err, err
            assert words in err, (name, err)
    for name, tensor in (("flipped.safetensors", "fc2"), ("flipped.pt", "fc1.weight")):
        code, _, err = run_cli(capsys, "verify", tmp_path / name)
        assert code == 2 and "damaged" in err and tensor in err, err
    assert _snapshot(tmp_path) == before  # nothing written, nothing removed


def test_inspect_does_not_import_torch(files):
    import subprocess
    import sys

    d, _, _ = files
    code = (
        "import sys; from torchsmith.cli import inspect as c; import argparse;"
        f"c.run(argparse.Namespace(checkpoint={str(d / 'saved.pt')!r}, json=True, trust_pickle=False,"
        " limit=5));"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    env = {**os.environ, "PYTHONPATH": "src"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["format"] == "torch-zip"
