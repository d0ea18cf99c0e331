"""Pretrained weights: resolved by name, downloaded from a local server, verified, read safely.

No test reaches the network: a server on 127.0.0.1 started here serves the files, and the Hugging
Face cache is a folder laid out by the test.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import threading
from pathlib import Path

import pytest
import torch
import torchvision

import torchsmith
from torchsmith.errors import CheckpointError, InputError
from torchsmith.hub import OfflineError, download, resolve_weights, verify_cache


class _Server:
    """Serve ``files`` (name -> bytes) on 127.0.0.1, honouring Range; ``cut_at`` drops connections."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.cut_at: int | None = None
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                data = server.files.get(name)
                server.requests.append({"path": name, "range": self.headers.get("Range")})
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    self.send_response(206)
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_at is not None:
                    self.wfile.write(body[: server.cut_at])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("TORCHSMITH_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _weights_file(tmp_path: Path, model: torch.nn.Module, stem: str) -> tuple[str, bytes, str]:
    path = tmp_path / "src.pth"
    torch.save(model.state_dict(), path)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    return f"{stem}-{digest[:8]}.pth", data, digest


def test_url_with_sha256_downloads_caches_and_loads(tmp_path, torch_home, capsys):
    src = torch.nn.Linear(4, 3)
    name, data, digest = _weights_file(tmp_path, src, "lin")
    server = _Server({name: data})
    try:
        model = torch.nn.Linear(4, 3)
        report = torchsmith.load_weights(
            model,
            torchsmith.hub.fetch_weights(
                resolve_weights(None, {"url": f"{server.url}/{name}", "sha256": digest})
            ),
        )
        assert report.counts()["loaded"] == 2
        assert torch.equal(model.weight, src.weight)
        assert (torch_home / name).is_file() and not (torch_home / (name + ".part")).exists()
        # cached: a second fetch makes no request
        before = len(server.requests)
        torchsmith.hub.fetch_weights(resolve_weights(None, {"url": f"{server.url}/{name}", "sha256": digest}))
        assert len(server.requests) == before
    finally:
        server.close()


def test_wrong_hash_is_refused_and_leaves_no_file(tmp_path, torch_home):
    name, data, _ = _weights_file(tmp_path, torch.nn.Linear(2, 2), "lin")
    server = _Server({name: data})
    try:
        with pytest.raises(CheckpointError, match=r"SHA-256 mismatch.*expected 00000000"):
            download(f"{server.url}/{name}", torch_home / name, sha256="0" * 64, progress=False)
        assert not any(torch_home.iterdir())
    finally:
        server.close()


def test_server_dying_mid_transfer_leaves_no_file_and_next_call_resumes(tmp_path, torch_home):
    name, data, digest = _weights_file(tmp_path, torch.nn.Linear(64, 64), "big")
    server = _Server({name: data})
    try:
        server.cut_at = len(data) // 3
        with pytest.raises(CheckpointError, match="resume"):
            download(f"{server.url}/{name}", torch_home / name, sha256=digest, progress=False)
        assert not (torch_home / name).exists()  # never a half file under the real name
        assert 0 < (torch_home / (name + ".part")).stat().st_size < len(data)
        server.cut_at = None
        download(f"{server.url}/{name}", torch_home / name, sha256=digest, progress=False)
        assert server.requests[-1]["range"] == f"bytes={len(data) // 3}-"
        assert hashlib.sha256((torch_home / name).read_bytes()).hexdigest() == digest
        assert not (torch_home / (name + ".part")).exists()
    finally:
        server.close()


def test_offline_names_the_file_and_where_to_put_it(torch_home, monkeypatch):
    monkeypatch.setenv("TORCHSMITH_OFFLINE", "1")
    with pytest.raises(OfflineError, match=r"resnet18-f37072fd\.pth.*place it at .*checkpoints"):
        torchsmith.hub.fetch_weights(resolve_weights("torchvision:resnet18", "DEFAULT"))


@pytest.mark.parametrize(
    ("model", "weights", "name", "prefix"),
    [
        ("resnet50", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", "11ad3fa6"),
        ("resnet50", "DEFAULT", "resnet50-11ad3fa6.pth", "11ad3fa6"),
        ("resnet50", True, "resnet50-11ad3fa6.pth", "11ad3fa6"),
        ("resnet50", "ResNet50_Weights.IMAGENET1K_V1", "resnet50-0676ba61.pth", "0676ba61"),
        ("mobilenet_v3_small", "DEFAULT", "mobilenet_v3_small-047dcff4.pth", "047dcff4"),
    ],
)
def test_torchvision_names_resolve_to_url_and_hash_prefix(model, weights, name, prefix):
    src = resolve_weights(f"torchvision:{model}", weights)
    assert src.url == f"https://download.pytorch.org/models/{name}"
    assert src.sha256 == prefix and src.filename == name
    assert len(src.meta["categories"]) == 1000 and src.meta["transforms"]["crop"] == [224]


def test_torchvision_enum_and_bad_names():
    enum = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    assert resolve_weights("torchvision:resnet50", enum).sha256 == "0676ba61"
    with pytest.raises(InputError, match=r"IMAGENET1K_V9.*valid: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2"):
        resolve_weights("torchvision:resnet50", "IMAGENET1K_V9")
    with pytest.raises(InputError, match="do not belong"):
        resolve_weights("torchvision:resnet50", "ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(InputError, match="needs its sha256"):
        resolve_weights(None, {"url": "http://127.0.0.1/x.pt"})


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_poisoned_cache_file_is_refused_before_it_is_read(tmp_path, torch_home, monkeypatch):
    """A file planted under torchvision's cache name fails the hash check; its payload never runs."""
    monkeypatch.chdir(tmp_path)
    torch_home.mkdir(parents=True)
    (torch_home / "resnet18-f37072fd.pth").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(CheckpointError, match=r"SHA-256 mismatch.*expected f37072fd"):
        torchsmith.create_model("torchvision:resnet18", weights="DEFAULT")
    assert not (tmp_path / "PWNED").exists()
    rows = verify_cache()
    assert rows == [
        {"file": str(torch_home / "resnet18-f37072fd.pth"), "sha256": rows[0]["sha256"], "ok": False}
    ]


def test_torchvision_weights_build_through_torchsmith_reader(tmp_path, torch_home, monkeypatch):
    """The torchvision path, served locally: download, hash, restricted read, torchvision's strict load."""
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    original = torchvision.models.resnet18()
    name, data, _ = _weights_file(tmp_path, original, "resnet18")
    server = _Server({name: data})
    monkeypatch.setattr(weights.value, "url", f"{server.url}/{name}")
    try:
        model = torchsmith.create_model("torchvision:resnet18", weights="IMAGENET1K_V1", progress=False)
        assert all(
            torch.equal(a, b) for a, b in zip(model.state_dict().values(), original.state_dict().values())
        )
        # a new head: the backbone keeps the pretrained weights, the record says how
        model7 = torchsmith.create_model("torchvision:resnet18", weights="IMAGENET1K_V1", num_classes=7)
        assert model7.fc.out_features == 7 and torch.equal(model7.conv1.weight, original.conv1.weight)
        assert len(server.requests) == 1  # the second build used the verified cache
        # saved and reloaded without any download: the provenance has no weights to fetch
        out = torchsmith.save(model7, tmp_path / "m.safetensors")
        server.close()
        again = torchsmith.load_model(out)
        assert torch.equal(again.conv1.weight, original.conv1.weight) and again.fc.out_features == 7
        info = torchsmith.inspect_checkpoint(out)
        assert "torchsmith.weights" in info["metadata"]
    finally:
        server.close()


def test_pretrained_true_means_default_and_inception_keeps_its_settings(tmp_path, torch_home, monkeypatch):
    """torchvision fixes transform_input/aux_logits for inception weights: a rebuild must match."""
    weights = torchvision.models.Inception_V3_Weights.IMAGENET1K_V1
    original = torchvision.models.inception_v3(init_weights=False, aux_logits=True)
    name, data, _ = _weights_file(tmp_path, original, "inception")
    server = _Server({name: data})
    monkeypatch.setattr(weights.value, "url", f"{server.url}/{name}")
    try:
        model = torchsmith.create_model("torchvision:inception_v3", pretrained=True, progress=False)
    finally:
        server.close()
    assert model.transform_input is True
    record = torchsmith._provenance.get_provenance(model)
    assert record["arch"]["weights_structure"] == {"weights": "Inception_V3_Weights.IMAGENET1K_V1"}
    assert "deprecated" in record["weights"]["notes"][0]
    again = torchsmith.load_model(torchsmith.save(model, tmp_path / "inception.safetensors"))
    assert again.transform_input is True and again.AuxLogits is not None  # rebuilt as for the weights


def test_hf_cache_layout_offline_loads_timm_weights(tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file

    original = timm.create_model("resnet18", pretrained=False)
    blob = tmp_path / "blob.safetensors"
    save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(blob))
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    repo = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    os.replace(blob, repo / "blobs" / digest)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "model.safetensors").symlink_to(f"../../blobs/{digest}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = torchsmith.create_model("timm:resnet18.a1_in1k", pretrained=True)
    assert torch.equal(model.conv1.weight, original.conv1.weight)
    # timm's num_classes= with pretrained weights: a new head, everything else from the file
    model5 = torchsmith.create_model("timm:resnet18.a1_in1k", pretrained=True, num_classes=5)
    assert model5.fc.out_features == 5 and torch.equal(
        model5.layer4[1].conv2.weight, original.layer4[1].conv2.weight
    )
    # a damaged blob is refused by its content address
    target = repo / "blobs" / digest
    target.write_bytes(target.read_bytes()[:-1] + b"\0")
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        torchsmith.create_model("timm:resnet18.a1_in1k", pretrained=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    with pytest.raises(OfflineError, match=r"models--timm--resnet18\.a1_in1k"):
        torchsmith.create_model("timm:resnet18.a1_in1k", pretrained=True)


def test_building_without_weights_never_downloads(torch_home, monkeypatch):
    monkeypatch.setenv("TORCHSMITH_OFFLINE", "1")
    model = torchsmith.create_model("torchvision:resnet18", weights=None)
    assert model.fc.out_features == 1000
    assert not torch_home.exists()


def test_weights_cli_list_fetch_verify(tmp_path, torch_home, monkeypatch, capsys):
    import json

    from torchsmith.cli.main import main

    assert main(["weights", "list", "torchvision:resnet50:*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == {
        "torchvision:resnet50:IMAGENET1K_V1",
        "torchvision:resnet50:IMAGENET1K_V2",
    }
    monkeypatch.setenv("TORCHSMITH_OFFLINE", "1")
    assert main(["weights", "fetch", "torchvision:resnet18"]) == 2  # offline, not cached: bad input
    assert "place it at" in capsys.readouterr().err
    torch_home.mkdir(parents=True)
    (torch_home / "resnet18-f37072fd.pth").write_bytes(b"not the weights")
    assert main(["weights", "verify", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False
