"""The build sandbox: specs, recipes and recorded architectures never download, unpickle or exec."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import urllib.request

import pytest
import torch
from _sec_corpus import Reduce
from safetensors.torch import save_file

import torchsmith
from torchsmith._sandbox import check_kwargs, sandbox
from torchsmith.errors import CheckpointError, InputError, SpecError
from torchsmith.spec import build_model, validate_spec
from torchsmith.zoo import register_model


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A torch hub cache under a temp TORCH_HOME holding a planted resnet18 "weights" file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    marker = tmp_path / "PWNED"
    ckpts = tmp_path / "torch_home" / "hub" / "checkpoints"
    ckpts.mkdir(parents=True)
    for name in ("resnet18-f37072fd.pth", "resnet50-0676ba61.pth", "mobilenet_v3_large-8738ca79.pth"):
        with open(ckpts / name, "wb") as f:
            pickle.dump({"x": Reduce(os.system, f"touch {marker}")}, f)
    return marker


def _downloader():
    import torchvision

    return torchvision.models.resnet18(weights="IMAGENET1K_V1")  # reads the (poisoned) hub cache


def _swallower():
    import torch.nn as nn

    with contextlib.suppress(Exception):  # a library that "falls back" quietly must not hide it
        urllib.request.urlopen("http://127.0.0.1:9/weights.bin", timeout=0.1)
    return nn.Linear(2, 2)


@pytest.fixture(autouse=True, scope="module")
def _test_models():
    from torchsmith.zoo import registry

    register_model("sec_downloader", overwrite=True)(_downloader)
    register_model("sec_swallower", overwrite=True)(_swallower)
    yield
    for name in ("sec_downloader", "sec_swallower"):  # other tests list and build every zoo model
        registry._REGISTRY.pop(name, None)


def _st_with_arch(path, arch: dict | str, key="torchsmith.arch"):
    save_file({"w": torch.zeros(1)}, path, metadata={key: json.dumps(arch)})
    return path


def test_poisoned_hub_cache_is_never_read_by_load_model(tmp_path, hub_cache):
    f = _st_with_arch(tmp_path / "m.safetensors", {"name": "sec_downloader", "kwargs": {}})
    with pytest.raises(CheckpointError, match=r"torch\.hub|torch\.load"):
        torchsmith.load_model(f)
    assert not hub_cache.exists()


def test_swallowed_download_attempt_still_fails(tmp_path):
    with pytest.raises(SpecError, match="download a URL"):
        build_model({"input_shape": [1, 2], "chain": [{"type": "sec_swallower"}]})
    f = _st_with_arch(tmp_path / "m.safetensors", {"name": "sec_swallower", "kwargs": {}})
    with pytest.raises(CheckpointError, match="download a URL"):
        torchsmith.load_model(f)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weights_backbone": "DEFAULT"},
        {"weights": "IMAGENET1K_V1"},
        {"pretrained": True},
        {"checkpoint_path": "/etc/passwd"},
        {"pretrained_cfg_overlay": {"file": "/etc/passwd"}},
        {"model_url": "http://x"},
        {"num_classes": {"__class__": 1, "x": object()}},
    ],
)
def test_data_kwargs_allowlist_and_denylist(tmp_path, hub_cache, kwargs):
    key = next(iter(kwargs))
    spec = {
        "input_shape": [1, 3, 64, 64],
        "chain": [{"type": "torchvision:fasterrcnn_mobilenet_v3_large_fpn", **kwargs}],
    }
    if key != "num_classes":
        for call in (build_model, validate_spec):
            with pytest.raises(SpecError, match=key):
                call(spec)
    with pytest.raises(InputError, match=key):
        check_kwargs(kwargs, "here")
    if key == "num_classes":
        return
    f = _st_with_arch(tmp_path / "m.safetensors", {"name": "torchvision:resnet18", "kwargs": kwargs})
    with pytest.raises(CheckpointError, match=key):
        torchsmith.load_model(f)
    assert not hub_cache.exists()


def test_detection_models_build_without_backbone_download(hub_cache):
    report = validate_spec({"chain": [{"type": "torchvision:fasterrcnn_mobilenet_v3_large_fpn"}]})
    assert report["parameters"] > 0
    assert torchsmith.create_model("torchvision:deeplabv3_mobilenet_v3_large", num_classes=2) is not None
    assert not hub_cache.exists()


def test_recorded_spec_is_inline_only(tmp_path):
    for spec in ("/etc/passwd", ["x"], 3):
        f = _st_with_arch(tmp_path / "s.safetensors", spec, key="torchsmith.spec")
        with pytest.raises(CheckpointError, match="not an inline spec") as e:
            torchsmith.load_model(f)
        assert "root:" not in str(e.value)


def test_harmless_kwargs_pass_and_activation_checkpointing_flags_are_fine():
    check_kwargs({"num_classes": 3, "dims": [1, 2], "act": "relu", "use_checkpoint": True}, "x")
    with sandbox("x"):
        torch.nn.Linear(2, 2)  # nothing refused
    assert torch.load is not None and not hasattr(torch.load, "__wrapped__")  # guards are removed


@pytest.mark.parametrize(
    "body",
    [
        "import subprocess\nsubprocess.run(['true'])",
        "import os\nos.system('true')",
        "import urllib.request\ntry:\n    urllib.request.urlopen('http://127.0.0.1:9/x', timeout=0.1)\n"
        "except OSError:\n    pass",
    ],
)
def test_import_time_work_of_a_module_the_spec_names_is_still_guarded(tmp_path, monkeypatch, body):
    """Installed libraries may do import-time work inside the sandbox; a module the data imports may not."""
    import sys

    name = f"sec_planted_{abs(hash(body)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(f"{body}\nimport torch.nn as nn\nLayer = nn.Linear\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:  # a module outside the standard library and site-packages: its import is guarded
        with pytest.raises(SpecError, match="tried to"), sandbox("spec planted"):
            __import__(name)
    finally:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_installed_library_imported_inside_the_sandbox_is_not_the_models_doing(tmp_path, monkeypatch, depth):
    """An installed module's import-time program (torch's CUDA probe) is excused; the constructor's is not.

    The folder stands in for site-packages; ``depth`` nests the program start in helper calls and
    further imports, as torch -> torch.cuda -> cuda.pathfinder -> ctypes.util does.
    """
    import sys

    from torchsmith import _sandbox

    monkeypatch.setattr(_sandbox, "_ROOTS", [(*_sandbox._installed_roots(), str(tmp_path) + "/")])
    monkeypatch.syspath_prepend(str(tmp_path))
    lib = f"sec_installed_lib_{depth}"
    (tmp_path / f"{lib}_0.py").write_text("import subprocess\nsubprocess.run(['true'], check=True)\n")
    for i in range(1, depth + 1):  # each level imports the one below from inside a function
        (tmp_path / f"{lib}_{i}.py").write_text(f"def _probe():\n    import {lib}_{i - 1}\n_probe()\n")
    try:
        with sandbox("installed import"):
            __import__(f"{lib}_{depth}")
        with pytest.raises(SpecError, match="start a program"), sandbox("after the import"):
            import subprocess

            subprocess.run(["true"], check=False)
    finally:
        for i in range(depth + 1):
            sys.modules.pop(f"{lib}_{i}", None)
