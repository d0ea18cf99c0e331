"""Read-only surgery calls and refused operations leave the model exactly as it was (issue 23, item 1).

The analysis pass runs on a structural copy, so generated models with modules registered twice,
shared layers, buffers, tensor caches and hooks keep every tensor (identity, device, bytes) and every
hook; refused changes leave the model runnable (checked by running it, not by comparing state_dicts).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn as nn
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchsmith.errors import SurgeryError
from torchsmith.surgery import (
    doctor,
    feature_info,
    find_head,
    find_input_layers,
    set_in_channels,
)
from torchsmith.surgery._copy import meta_copy


class _Generated(nn.Module):
    """A small CNN whose body reuses layers: ``reuse`` runs the shared conv again, ``alias``
    registers it under a second name, ``cache`` keeps a tensor attribute the forward fills."""

    def __init__(self, width: int, reuse: bool, alias: bool, cache: bool, classes: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.shared = nn.Conv2d(width, width, 3, padding=1)
        if alias:
            self.again = self.shared
        self.norm = nn.BatchNorm2d(width)
        self.register_buffer("scale", torch.ones(1, width, 1, 1))
        self.reuse, self.cache = reuse, cache
        self.memory: torch.Tensor | None = torch.zeros(1) if cache else None
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = self.shared(h)
        if self.reuse:
            h = self.shared(torch.relu(h))
        h = self.norm(h) * self.scale
        if self.cache:
            self.memory = h.mean().reshape(1)  # a cache written by forward
        return self.fc(h.mean((2, 3)))


def _fingerprint(model: nn.Module) -> dict:
    """Identity, device and bytes of every tensor; identity of every hook; modes; tensor attributes."""
    tensors = {}
    for kind, items in (
        ("p", model.named_parameters(remove_duplicate=False)),
        ("b", model.named_buffers(remove_duplicate=False)),
    ):
        for name, t in items:
            tensors[kind + name] = (id(t), t.device.type, t.dtype, t.detach().cpu().clone())
    mods = {}
    for path, m in model.named_modules(remove_duplicate=False):
        hooks = tuple(
            tuple((k, id(v)) for k, v in getattr(m, d).items())
            for d in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_state_dict_hooks")
        )
        attrs = {k: (id(v), v.device.type) for k, v in vars(m).items() if isinstance(v, torch.Tensor)}
        mods[path] = (id(m), m.training, hooks, attrs)
    return {"tensors": tensors, "modules": mods}


def _same(a: dict, b: dict) -> None:
    assert a["modules"] == b["modules"]
    assert a["tensors"].keys() == b["tensors"].keys()
    for k, (i, dev, dt, data) in a["tensors"].items():
        j, dev2, dt2, data2 = b["tensors"][k]
        assert (i, dev, dt) == (j, dev2, dt2), k
        assert torch.equal(data, data2), k


def _read_only_ops():
    return {
        "find_head": lambda m: find_head(m, (2, 3, 16, 16)),
        "find_input_layers": lambda m: find_input_layers(m, (2, 3, 16, 16)),
        "feature_info": lambda m: feature_info(m, input_shape=(2, 3, 16, 16)),
        "doctor": lambda m: doctor(m, input_shape=(2, 3, 16, 16)),
    }


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.sampled_from([4, 8]),
    reuse=st.booleans(),
    alias=st.booleans(),
    cache=st.booleans(),
    hook=st.booleans(),
    train=st.booleans(),
    op=st.sampled_from(sorted(_read_only_ops())),
)
def test_read_only_ops_leave_every_tensor_and_hook(width, reuse, alias, cache, hook, train, op):
    torch.manual_seed(0)
    model = _Generated(width, reuse, alias, cache, classes=5).train(train)
    seen: list = []
    if hook:
        model.shared.register_forward_hook(lambda m, a, o: seen.append(o.shape))
        model.register_forward_pre_hook(lambda m, a: None)
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    expected = model(x)  # before the fingerprint: this call fills the cache
    model.train(train)
    before = _fingerprint(model)
    with contextlib.suppress(SurgeryError):  # a refusal is allowed: what matters is that nothing moved
        _read_only_ops()[op](model)
    _same(before, _fingerprint(model))
    model.eval()
    assert torch.equal(model(x), expected)  # still runs, same output


def test_meta_copy_keeps_sharing_and_leaves_the_original():
    model = _Generated(4, reuse=True, alias=True, cache=True, classes=3)
    copy = meta_copy(model)
    assert copy.again is copy.shared and copy.shared is not model.shared
    assert all(t.is_meta for t in copy.state_dict().values())
    assert not any(t.is_meta for t in model.state_dict().values())
    assert copy.memory.is_meta and not model.memory.is_meta


@pytest.mark.parametrize("timm_name", ["coat_lite_tiny"])
def test_timm_model_with_aliased_modules_keeps_its_weights(timm_name):
    timm = pytest.importorskip("timm")
    model = timm.create_model(timm_name, pretrained=False).eval()
    before = _fingerprint(model)
    assert find_head(model) == "head"
    with contextlib.suppress(SurgeryError):  # CoaT's token stages are refused: the weights must stay
        feature_info(model)
    find_input_layers(model)
    _same(before, _fingerprint(model))


@pytest.mark.parametrize(
    "op",
    [lambda m: set_in_channels(m, 1)],
    ids=["set_in_channels_1"],
)
def test_refused_surgery_on_a_detector_leaves_it_running(op):
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3
    ).eval()
    x = [torch.rand(3, 96, 96)]
    expected = model(x)
    before = _fingerprint(model)
    with pytest.raises(
        SurgeryError, match=r"Set model\.transform\.image_mean and model\.transform\.image_std"
    ):
        op(model)
    _same(before, _fingerprint(model))
    got = model(x)
    for a, b in zip(expected, got, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model.transform.image_mean, model.transform.image_std = [0.5], [0.25]  # what the message asks
    set_in_channels(model, 1)
    assert model.backbone.body.get_submodule("0.0").weight.shape[1] == 1
    assert model([torch.rand(1, 96, 96)])[0].keys() == {"boxes", "labels", "scores"}


def test_doctor_on_a_detector_checks_in_eval_mode_and_says_so():
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    before = _fingerprint(model)
    with pytest.warns(UserWarning, match="checked in eval mode"):
        found = doctor(model, example_inputs=([torch.rand(3, 64, 64)],))
    assert not [f for f in found if f.trap == 7]
    _same(before, _fingerprint(model))
