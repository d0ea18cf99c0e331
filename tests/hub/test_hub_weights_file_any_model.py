"""``weights={url|path, sha256}`` works for every model kind: zoo, ``torchvision:``, ``timm:``.

The file is served from 127.0.0.1 (or read from a local path), hash-checked, and fills every tensor
of the model; a wrong hash or a file for another model is refused, never a half-loaded model.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import save_file
from test_hub_fetch import _Server

import torchsmith
from torchsmith.errors import CheckpointError, InputError

_MODELS = ["simple_cnn", "mlp", "torchvision:mobilenet_v3_small", "timm:resnet18"]


def _file(tmp_path, name, model):
    path = tmp_path / f"{name.replace(':', '_')}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", _MODELS)
def test_weights_file_by_path_and_url_for_every_model_kind(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("TORCHSMITH_OFFLINE", raising=False)
    source = torchsmith.create_model(name)
    path, sha = _file(tmp_path, name, source)

    by_path = torchsmith.create_model(name, weights={"path": str(path), "sha256": sha})
    assert _same(by_path, source)
    assert _same(torchsmith.create_model(name, weights=path), source)  # a path object, no hash

    server = _Server({path.name: path.read_bytes()})
    try:
        by_url = torchsmith.create_model(name, weights={"url": f"{server.url}/{path.name}", "sha256": sha})
    finally:
        server.close()
    assert _same(by_url, source)
    reloaded = torchsmith.load_model(torchsmith.save(by_url, tmp_path / "saved.safetensors"))
    assert _same(reloaded, source)  # the record rebuilds the model; nothing is fetched again


@pytest.mark.parametrize("name", _MODELS[:3])
def test_a_wrong_hash_or_another_models_file_is_refused(name, tmp_path):
    path, _ = _file(tmp_path, name, torchsmith.create_model(name))
    with pytest.raises(CheckpointError, match=r"SHA-256|sha256|hash"):
        torchsmith.create_model(name, weights={"path": str(path), "sha256": "0" * 64})
    other, _ = _file(tmp_path, "other", torch.nn.Sequential(torch.nn.Linear(3, 2)))
    with pytest.raises(InputError):
        torchsmith.create_model(name, weights={"path": str(other)})
