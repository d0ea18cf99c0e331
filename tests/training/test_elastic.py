"""Elastic runs: a clean one-line error when the group cannot form, and a torchrun restart that resumes."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import yaml
from _tiny import recipe

from torchsmith.cli.main import main

LAUNCH = str(Path(__file__).with_name("_launch.py"))
# torch's own gloo sometimes fails to re-form after a restart (plain-torch runs fail too).
_TORCH_FLAKE = (
    "connectFullMesh",
    "could not join the gloo process group",
    "the process group failed",
    "RendezvousTimeoutError",
    "RendezvousClosedError",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_group_that_cannot_form_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    port = _free_port()
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port)}.items():  # fmt: skip
        monkeypatch.setenv(k, v)  # rank 1 never comes
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(data={"limit": 100}, distributed={"timeout": 2})))
    start = time.monotonic()
    code = main(["train", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and time.monotonic() - start < 60  # distributed.timeout, not torch's 30 minutes
    assert len(err.splitlines()) == 1, err
    assert f"127.0.0.1:{port}" in err and "--max-restarts" in err and "internal error" not in err
