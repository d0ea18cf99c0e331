"""Fixtures of the hub tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """An empty ``$TORCH_HOME/hub/checkpoints``, the process offline: a miss is an error, not a download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("TORCHSMITH_OFFLINE", "1")
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder
