"""feature_info on declared feature levels that are not one module's single output (issue 23, the
sweep's two WRONG classes): a module named several times (its output holds one tensor per level, as
CrossViT's blocks hold one per branch) gives every level, in the declared order; a level the model's
features wrapper takes elsewhere (HRNet's ``stem``/``stage1``, a ``forward_pre`` hook, a module whose
output has other channels) is refused naming it, the model bit-identical and still running."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

from torchsmith.errors import SurgeryError
from torchsmith.surgery import feature_info, return_features


class _TwoBranches(nn.Module):
    """Each block returns a list with one tensor per branch; both branches are declared per block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.ModuleList([nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(3, 16, 3, 4, 1)])
        self.blocks = nn.ModuleList(_Pair(8, 16) for _ in range(2))
        self.feature_info = [
            {"module": f"blocks.{i}", "num_chs": c, "reduction": r}
            for c, r in ((8, 2), (16, 4))
            for i in range(2)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = [conv(x) for conv in self.stem]
        for block in self.blocks:
            xs = block(xs)
        return xs[0].mean((2, 3)) + xs[1].mean((2, 3))[:, :8]


class _Pair(nn.Module):
    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(a, a, 3, padding=1), nn.Conv2d(b, b, 3, padding=1)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.a(xs[0]), self.b(xs[1])]


def test_a_module_named_twice_gives_one_level_per_tensor_of_its_output():
    net = _TwoBranches()
    info = feature_info(net, input_shape=(1, 3, 32, 32))
    assert [(f["name"], f["path"], f["index"], f["channels"], f["stride"]) for f in info] == [
        ("blocks.0[0]", "blocks.0", 0, 8, 2),
        ("blocks.1[0]", "blocks.1", 0, 8, 2),
        ("blocks.0[1]", "blocks.0", 1, 16, 4),
        ("blocks.1[1]", "blocks.1", 1, 16, 4),
    ]
    assert [f["shape"] for f in info] == [[1, 8, 16, 16]] * 2 + [[1, 16, 8, 8]] * 2
    return_features(net, ["blocks.1"], output=False)  # the path gives the list; index picks the level
    got = net(torch.rand(1, 3, 32, 32))["blocks.1"]
    assert [tuple(got[f["index"]].shape) for f in info[1::2]] == [(1, 8, 16, 16), (1, 16, 8, 8)]


@pytest.mark.parametrize(
    "level",
    [
        {"module": "stem", "num_chs": 8, "reduction": 2},  # no such module (HRNet)
        {"module": "blocks.0", "num_chs": 12, "reduction": 2},  # its output has other channels
        {"module": "blocks.0.a", "num_chs": 8, "reduction": 2, "hook_type": "forward_pre"},  # an input
        {"module": "blocks.0.a", "num_chs": 8, "reduction": 2},  # named twice, one tensor
    ],
)
def test_a_level_taken_elsewhere_is_refused_naming_it_and_the_model_untouched(level):
    torch.manual_seed(0)
    net = _TwoBranches()
    net.feature_info = [{"module": "blocks.0.a", "num_chs": 8, "reduction": 2}, level]
    x = torch.rand(1, 3, 32, 32)
    before = {k: (v.device.type, v.clone()) for k, v in net.state_dict().items()}
    with torch.no_grad():
        out = net(x)
    with pytest.raises(SurgeryError, match=rf"{level['module']!r} \({level['num_chs']} channels") as err:
        feature_info(net, input_shape=(1, 3, 32, 32))
    assert "features_only=True" in str(err.value) and "feature_info(model, ['path'" in str(err.value)
    assert all(
        v.device.type == before[k][0] and torch.equal(v, before[k][1]) for k, v in net.state_dict().items()
    )
    with torch.no_grad():
        assert torch.equal(net(x), out)
    assert feature_info(net, ["blocks.0.a"], input_shape=(1, 3, 32, 32))[0]["channels"] == 8  # by path: fine


class _ThreeOut(nn.Module):
    """A block returning (a 5-channel map, then two 8-channel maps at the same stride)."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, c, 3, 2, 1) for c in (5, 8, 8))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(conv(x) for conv in self.convs)


class _Taps(nn.Module):
    def __init__(self, levels: list[dict]) -> None:
        super().__init__()
        self.block = _ThreeOut()
        self.feature_info = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.block(x)
        return a.mean((2, 3)) + b.mean((2, 3))[:, :5] + c.mean((2, 3))[:, :5]


def test_a_level_is_the_kth_tensor_when_it_fits_else_the_only_one_that_fits_else_refused():
    shape = (1, 3, 32, 32)
    five = feature_info(_Taps([{"module": "block", "num_chs": 5, "reduction": 2}]), input_shape=shape)
    assert [(f["index"], f["channels"]) for f in five] == [(0, 5)]  # timm's wrappers take x[0]
    two = feature_info(
        _Taps([{"module": "block", "num_chs": c, "reduction": 2} for c in (5, 8)]), input_shape=shape
    )
    assert [(f["name"], f["index"], f["channels"]) for f in two] == [("block[0]", 0, 5), ("block[1]", 1, 8)]
    with pytest.raises(
        SurgeryError, match=r"'block' \(8 channels, stride 2\): its output holds 3 tensors .*several"
    ):
        feature_info(_Taps([{"module": "block", "num_chs": 8, "reduction": 2}]), input_shape=shape)
    with pytest.raises(
        SurgeryError, match=r"'block' \(8 channels, stride 8\): its output holds 3 tensors .*none"
    ):
        feature_info(_Taps([{"module": "block", "num_chs": 8, "reduction": 8}]), input_shape=shape)


def _meta(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kw)


def test_crossvit_levels_agree_with_timm_features_only():
    net = _meta("crossvit_tiny_240")
    ours = feature_info(net)
    oracle = _meta("crossvit_tiny_240", features_only=True).feature_info.get_dicts()
    want = [(d["module"], d["num_chs"], d["reduction"]) for d in oracle]
    assert len(want) == 2 and want[0][0] == want[1][0]  # timm names one module for both branches
    assert [(f["path"], f["channels"], f["stride"]) for f in ours if f["path"] == want[0][0]] == want
    assert [(f["path"], f["channels"]) for f in ours] == [
        (d["module"], d["num_chs"]) for d in net.feature_info
    ]


def test_hrnet_stem_and_stage_levels_are_refused_not_dropped():
    with pytest.raises(SurgeryError) as err:
        feature_info(_meta("hrnet_w18_small"))
    for module in ("stem", "stage1", "stage2"):
        assert f"'{module}' (" in str(err.value)
