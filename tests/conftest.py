"""Shared test settings: deterministic seeds, few threads (CI has 2 cores), GPU tests skipped without one."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

# Scripts run in their own process, never imported by pytest (--doctest-modules imports every .py):
# the audit runner installs an audit hook and a 120 s CPU limit at import, which in the pytest
# process killed the suite three quarters of the way through.
collect_ignore = ["security/_audit_runner.py"]


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty ``$TORCH_HOME/hub/checkpoints``, the process offline: a miss is an error, not a download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("TORCHSMITH_OFFLINE", "1")
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder
