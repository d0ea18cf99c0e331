"""feature_info against the libraries' own feature declarations (issue 23, item 3): channels from
the output's layout (channels-last Swin stages), strides from the strides on the way (dilated
backbones, strided slices), stages held in a ModuleList."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from torchsmith.surgery import feature_info, return_features


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "convnext_atto"])
def test_timm_stages_match_features_only(name):
    ours = feature_info(timm.create_model(name, pretrained=False))
    oracle = timm.create_model(name, pretrained=False, features_only=True).feature_info.get_dicts()
    assert [(f["path"], f["channels"], f["stride"]) for f in ours] == [
        (d["module"], d["num_chs"], d["reduction"]) for d in oracle
    ]


def test_torchvision_swin_channels_last_stages_match_the_feature_extractor():
    net = torchvision.models.swin_t(weights=None).eval()
    paths = ["features.1", "features.3", "features.5", "features.7"]
    info = feature_info(net, paths, input_shape=(1, 3, 64, 64))
    with torch.no_grad():
        got = create_feature_extractor(net, paths)(torch.rand(1, 3, 64, 64))
    assert [f["channels"] for f in info] == [got[p].shape[-1] for p in paths]  # NHWC: channels last
    assert [f["stride"] for f in info] == [64 // got[p].shape[1] for p in paths]  # patch merging traced
    assert {f["layout"] for f in info} == {"channels_last"}


@pytest.mark.parametrize("dilation", [[False, False, False], [False, True, True], [False, False, True]])
def test_dilated_backbones_give_their_real_strides(dilation):
    net = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=dilation)
    info = feature_info(net, ["layer1", "layer2", "layer3", "layer4"], input_shape=(1, 3, 64, 64))
    expected, s = [], 4
    for i, d in enumerate([False, *dilation]):
        s *= 1 if d or i == 0 else 2
        expected.append(s)
    assert [f["stride"] for f in info] == expected


class _ModuleListStages(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(8 * 2**i, 16 * 2**i, 3, stride=2, padding=1), nn.ReLU()) for i in range(3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x.mean((2, 3))


def test_stages_held_in_a_module_list():
    net = _ModuleListStages()
    info = feature_info(net, input_shape=(1, 3, 64, 64))
    assert [(f["path"], f["channels"], f["stride"]) for f in info] == [
        ("stem", 8, 2),
        ("stages.0", 16, 4),
        ("stages.1", 32, 8),
        ("stages.2", 64, 16),
    ]
    return_features(net, ["stages.0", "stages.2"], output=False)
    feats = net(torch.rand(1, 3, 64, 64))
    assert [tuple(v.shape) for v in feats.values()] == [(1, 16, 16, 16), (1, 64, 4, 4)]


def test_no_stages_found_is_refused_not_an_empty_list():
    from torchsmith.errors import SurgeryError

    tokens = nn.Sequential(nn.Flatten(1), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(SurgeryError, match="name the layers"):
        feature_info(tokens, input_shape=(1, 3, 8, 8))
    assert feature_info(tokens, ["1"], input_shape=(1, 3, 8, 8))[0]["channels"] == 16


def test_a_pooling_to_a_fixed_size_has_no_stride_and_is_no_stage():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 11, stride=4, padding=2),  # unpadded arithmetic: 64 -> 15, still stride 4
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(6),  # 6x6 whatever the input: no stride of its own
        nn.Flatten(1),
        nn.Linear(8 * 36, 4),
    )
    info = feature_info(net, ["0", "2"], input_shape=(1, 3, 64, 64))
    assert [f["stride"] for f in info] == [4, None]
    assert [f["path"] for f in feature_info(net, input_shape=(1, 3, 64, 64))] == ["1"]
