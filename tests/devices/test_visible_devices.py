"""Trap 6: a misspelt, unparsable or late CUDA_VISIBLE_DEVICES is loud, never silently ignored."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import torchsmith
from torchsmith.devices import VISIBLE, check_device_env, set_visible_devices
from torchsmith.errors import InputError


@pytest.mark.parametrize(
    "name", ["CUDA_VISABLE_DEVICES", "CUDA_VISIBLE_DEVICE", "CUDA_VISIBLE_DEVICS", "cuda_visible_devices"]
)
def test_misspelt_names_are_reported(name):
    problems = check_device_env({name: "1", "PATH": "/bin"})
    assert len(problems) == 1 and name in problems[0] and VISIBLE in problems[0]


def test_correct_and_related_names_are_fine():
    env = {VISIBLE: "0,1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "NVIDIA_VISIBLE_DEVICES": "all", "HOME": "/"}
    assert check_device_env(env) == []
    assert check_device_env({VISIBLE: ""}) == []  # hides every GPU, on purpose
    assert check_device_env({VISIBLE: "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6"}) == []


@pytest.mark.parametrize("value", ["[0,1]", "0;1", "gpu0", "0,,1"])
def test_unparsable_values_are_reported(value):
    (problem,) = check_device_env({VISIBLE: value})
    assert repr(value) in problem and "'0,1'" in problem


def test_set_visible_devices_sets_or_refuses(monkeypatch):
    monkeypatch.delenv(VISIBLE, raising=False)
    set_visible_devices([1, 0])
    assert os.environ[VISIBLE] == "1,0"
    with pytest.raises(InputError, match="cannot parse"):
        set_visible_devices("0;1")
    assert os.environ[VISIBLE] == "1,0"  # unchanged by the refused call


def test_train_refuses_a_misspelt_variable_before_building(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISABLE_DEVICES", "1")
    with pytest.raises(InputError, match="CUDA_VISABLE_DEVICES"):
        torchsmith.train(None, out=tmp_path, overrides=["train.epochs=1"], log=None)
    assert not (tmp_path / "last.pt").exists()


def test_cli_exits_2_and_names_the_variable(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICE": "0"}
    out = subprocess.run(
        [sys.executable, "-m", "torchsmith.cli.main", "train", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "CUDA_VISIBLE_DEVICE is not read by CUDA" in out.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_setting_after_cuda_started_is_refused():
    code = (
        "import os, torch, torchsmith\n"
        "torch.zeros(1, device='cuda')\n"  # CUDA initialises here
        "n = torch.cuda.device_count()\n"
        "os.environ['CUDA_VISIBLE_DEVICES'] = ','.join(['0'] * (n + 1))\n"  # the seeds' late assignment
        "print(torchsmith.check_device_env())\n"
        "try:\n    torchsmith.set_visible_devices([0])\n"
        "except torchsmith.InputError as e:\n    print('refused', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "had no effect" in out.stdout and "refused" in out.stdout
