"""A machine without a network fails a pretrained call fast and once, with the good error.

No ``TORCHSMITH_OFFLINE``: the network is simply not there (here: every request goes through a
proxy at 127.0.0.1:9, where nothing listens). The first call probes the host once and raises
:class:`OfflineError`; the libraries' own download functions (with their retries and warnings)
are never reached, and a second call does not probe again.
"""

from __future__ import annotations

import pytest

import torchsmith
from torchsmith.hub import _fetch


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHSMITH_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(_fetch, "_REACHABLE", {})
    import huggingface_hub

    def never(*args, **kwargs):
        raise AssertionError("the library's downloader ran although the host cannot be reached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", never)
    return _fetch._REACHABLE


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("timm:resnet18.a1_in1k", {"pretrained": True}),
        ("timm:hf-hub:timm/resnet18.a1_in1k", {"pretrained": True}),
        ("torchvision:resnet18", {"weights": "DEFAULT"}),
        ("torchvision:mobilenet_v3_small", {"weights": "IMAGENET1K_V1"}),
    ],
)
def test_pretrained_without_a_network_fails_fast_and_probes_once(no_network, name, kwargs):
    # No wall-clock bound (CI load varies): "fast" is checked as no retries: one probe, and the
    # library downloaders (which retry with back-off) never run.
    for _ in range(2):
        with pytest.raises(_fetch.OfflineError, match=r"no network.*TORCHSMITH_OFFLINE=1"):
            torchsmith.create_model(name, **kwargs)
    assert list(no_network) == [("127.0.0.1", 9)]  # one host probed, remembered
