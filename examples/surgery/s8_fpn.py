"""S8: multi-scale features of any backbone feed a feature pyramid network, wired automatically.

The seed's ``IntermediateLayerGetter`` takes direct children only and assumes they run in
registration order; its ``in_channels_list`` is computed by hand (``in_channel // 8`` ...). Here
``feature_info`` measures channels and strides with a meta-device pass (no compute), and
``return_features(..., output=False)`` returns the chosen activations, stopping after the last one, on
a torchvision resnet50 and on a timm model alike. The seed freezes layer1 and before: ``freeze``.

Run:  python examples/surgery/s8_fpn.py
"""

from __future__ import annotations

import torch

import torchsmith
from torchsmith.blocks import FeaturePyramidNetwork
from torchsmith.surgery import feature_info, freeze, return_features


def backbone_with_fpn(name: str, stages: list[str] | None, out_channels: int = 64) -> torch.nn.Module:
    backbone = torchsmith.create_model(name)
    info = feature_info(backbone, stages)  # stages=None: one per stride, found automatically
    for f in info:
        print(f"  {name} {f['path']:>10}: {f['channels']:5d} channels, stride {f['stride']}")
    return_features(backbone, {f["path"]: f["path"] for f in info}, output=False)
    fpn = FeaturePyramidNetwork([f["channels"] for f in info], out_channels)
    return torch.nn.Sequential(backbone, fpn)


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    model = backbone_with_fpn("torchvision:resnet50", ["layer1", "layer2", "layer3", "layer4"])
    freeze(model[0], before="layer2", bn_stats=True)  # as resnet152_fpn_backbone does
    with torch.no_grad():
        levels = model.eval()(x)
    print({k: tuple(v.shape) for k, v in levels.items()})
    assert [v.shape[-1] for v in levels.values()] == [16, 8, 4, 2]

    timm_model = backbone_with_fpn("timm:mobilenetv3_small_050", None)
    with torch.no_grad():
        levels = timm_model.eval()(x)
    print({k: tuple(v.shape) for k, v in levels.items()})


if __name__ == "__main__":
    main()
