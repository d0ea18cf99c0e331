"""load_weights hands torch's ``_metadata`` (module versions) to ``load_state_dict`` (issue 24, item 3).

torchvision's MNASNet reads its version in ``_load_from_state_dict`` and refuses a load without one
("version should be set to 1 or 2"); a module of any library may convert an older layout by it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision
from safetensors.torch import save_file

import torchsmith


class _Versioned(nn.Module):
    """Records the version its load was given, as a versioned module of a library reads it."""

    _version = 3

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.seen: list = []

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        self.seen.append(local_metadata.get("version"))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), _Versioned())


def _prefixed(sd, prefix: str):
    """``sd`` with every key and every ``_metadata`` module prefix under ``prefix`` (as a wrapper saves)."""
    from collections import OrderedDict

    out = OrderedDict((prefix + k, v) for k, v in sd.items())
    out._metadata = OrderedDict(
        ((prefix + p if p else prefix.rstrip(".")), v) for p, v in sd._metadata.items()
    )
    if prefix:
        out._metadata[""] = {"version": 1}
    return out


@pytest.mark.parametrize("prefix", ["", "module.", "model.", "module.model."])
@pytest.mark.parametrize("version", [1, 2, 3])
def test_each_module_gets_the_version_its_source_module_recorded(prefix, version):
    src = _net()
    sd = src.state_dict()
    sd._metadata["1"] = {"version": version}
    model = _net()
    torchsmith.load_weights(model, _prefixed(sd, prefix))
    assert model[1].seen == [version]
    assert torch.equal(model[1].lin.weight, src[1].lin.weight)


def test_a_source_without_versions_is_read_as_the_models_own_code_and_noted():
    sd = dict(_net().state_dict())  # a plain dict: no _metadata
    model = _net()
    report = torchsmith.load_weights(model, sd)
    assert model[1].seen == [3]
    assert any("records no module versions" in n and "_Versioned" in n for n in report.notes)


@pytest.mark.parametrize("form", ["model", "state_dict", "wrapped", "safetensors"])
def test_torchvision_mnasnet_loads_from_every_source_form(form, tmp_path):
    src = torchvision.models.mnasnet0_5()
    sd = src.state_dict()
    source = {
        "model": src,
        "state_dict": sd,
        "wrapped": _prefixed(sd, "module."),
        "safetensors": tmp_path / "m.safetensors",
    }[form]
    if form == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, source)
    model = torchvision.models.mnasnet0_5()
    report = torchsmith.load_weights(model, source)
    assert report.ok
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_missing_and_unexpected_keys_use_torchs_names():
    src = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model = nn.Sequential(nn.Linear(4, 4))
    sd = {"0.weight": src[0].weight, "9.bias": src[1].bias}
    report = torchsmith.load_weights(model, sd, allow_partial=True)
    assert report.missing_keys == ["0.bias"]
    assert report.unexpected_keys == ["9.bias"]
    d = report.to_dict()
    assert d["missing_keys"] == ["0.bias"] and d["unexpected_keys"] == ["9.bias"]
