"""Multi-scale features and the Feature Pyramid Network neck (S8).

* :class:`IntermediateLayerGetter` runs a backbone's direct children in order and returns the
  outputs of the ones named in ``return_layers`` as an ``OrderedDict``.
* :class:`FeaturePyramidNetwork` turns an ``OrderedDict`` of feature maps (shallow to deep) into
  maps with ``out_channels`` channels each: 1×1 lateral convs (``inner_blocks``), a top-down path
  with nearest upsampling, and 3×3 output convs (``layer_blocks``).
* :class:`LastLevelMaxPool` adds a ``"pool"`` level by a stride-2 max-pool of the last level.
* :class:`BackboneWithFPN` = ``body`` (an ``IntermediateLayerGetter``) + ``fpn``.

>>> import torch
>>> from collections import OrderedDict
>>> fpn = FeaturePyramidNetwork([8, 16], 4, extra_blocks=LastLevelMaxPool())
>>> feats = OrderedDict(a=torch.randn(1, 8, 16, 16), b=torch.randn(1, 16, 8, 8))
>>> {k: tuple(v.shape) for k, v in fpn(feats).items()}
{'a': (1, 4, 16, 16), 'b': (1, 4, 8, 8), 'pool': (1, 4, 4, 4)}
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchsmith.blocks._factory import LayerArg, make_norm
from torchsmith.errors import InputError, close_matches

__all__ = ["BackboneWithFPN", "FeaturePyramidNetwork", "IntermediateLayerGetter", "LastLevelMaxPool"]


class IntermediateLayerGetter(nn.ModuleDict):
    """Keep ``model``'s direct children up to the last one in ``return_layers``; return their outputs.

    ``return_layers`` maps a child's name to the key it gets in the output, e.g.
    ``{"layer1": "0", "layer2": "1"}``. Like torchvision's, it assumes the children run in the
    order they were registered and each is used once (true of ResNets, not of every model).
    """

    def __init__(self, model: nn.Module, return_layers: Mapping[str, str]) -> None:
        children = [name for name, _ in model.named_children()]
        missing = [name for name in return_layers if name not in children]
        if missing:
            hint = close_matches(missing[0], children)
            raise InputError(
                f"return_layers names {missing} that are not direct children of {type(model).__name__}"
                f"{hint}; its children are: {', '.join(children)}"
            )
        if not return_layers:
            raise InputError("return_layers is empty: name at least one child whose output to return")
        wanted = set(return_layers)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for name, module in model.named_children():
            layers[name] = module
            wanted.discard(name)
            if not wanted:
                break
        super().__init__(layers)
        self.return_layers = dict(return_layers)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class LastLevelMaxPool(nn.Module):
    """Append a ``"pool"`` level: ``max_pool2d(last, kernel 1, stride 2)`` (as torchvision's)."""

    def forward(self, results: list[torch.Tensor], names: list[str]) -> tuple[list[torch.Tensor], list[str]]:
        return [*results, F.max_pool2d(results[-1], 1, 2, 0)], [*names, "pool"]


class FeaturePyramidNetwork(nn.Module):
    """An FPN over feature maps given shallow-to-deep; returns an ``OrderedDict`` with the same keys.

    ``in_channels_list[i]`` is the channel count of the i-th input map. Every output level has
    ``out_channels`` channels. ``extra_blocks`` (e.g. :class:`LastLevelMaxPool`) takes
    ``(results, names)`` and returns them extended. With ``norm_layer`` None (the default) the lateral
    and output blocks are plain biased convs, as in the seed (``inner_blocks.0.weight``); otherwise
    each is ``Sequential(conv, norm)``.
    """

    def __init__(
        self,
        in_channels_list: Sequence[int],
        out_channels: int,
        extra_blocks: nn.Module | None = None,
        norm_layer: LayerArg = None,
    ) -> None:
        super().__init__()
        in_channels_list = list(in_channels_list)
        if not in_channels_list or any(int(c) <= 0 for c in in_channels_list):
            raise InputError(
                "FeaturePyramidNetwork: in_channels_list must be positive channel counts, "
                f"got {in_channels_list}"
            )
        self.in_channels_list = in_channels_list
        self.out_channels = out_channels
        self.inner_blocks = nn.ModuleList()
        self.layer_blocks = nn.ModuleList()
        for in_channels in in_channels_list:
            self.inner_blocks.append(self._conv(in_channels, out_channels, 1, norm_layer))
            self.layer_blocks.append(self._conv(out_channels, out_channels, 3, norm_layer))
        # torchvision's init. (The seed looped over self.children(), which are ModuleLists, so its
        # init never ran; self.modules() reaches the convs.)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
        self.extra_blocks = extra_blocks

    @staticmethod
    def _conv(cin: int, cout: int, k: int, norm_layer: LayerArg) -> nn.Module:
        norm = make_norm(norm_layer, cout)
        conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=norm is None)
        return conv if norm is None else nn.Sequential(conv, norm)

    def forward(self, x: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        names = list(x.keys())
        feats = list(x.values())
        if len(feats) != len(self.inner_blocks):
            raise InputError(
                f"FeaturePyramidNetwork expects {len(self.inner_blocks)} feature maps "
                f"(in_channels_list={self.in_channels_list}), got {len(feats)}: {names}"
            )
        for name, f, c in zip(names, feats, self.in_channels_list):
            if f.dim() != 4 or f.shape[1] != c:
                raise InputError(
                    f"FeaturePyramidNetwork: feature {name!r} has shape {tuple(f.shape)}, expected "
                    f"(N, {c}, H, W) from in_channels_list={self.in_channels_list}"
                )
        last_inner = self.inner_blocks[-1](feats[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(feats) - 2, -1, -1):
            lateral = self.inner_blocks[idx](feats[idx])
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, self.layer_blocks[idx](last_inner))
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, names)
        return OrderedDict(zip(names, results))


class BackboneWithFPN(nn.Module):
    """``body`` = ``IntermediateLayerGetter(backbone, return_layers)``, ``fpn`` = the FPN neck.

    ``forward(x)`` returns the FPN's ``OrderedDict``; ``out_channels`` is its channel count.
    ``extra_blocks`` defaults to :class:`LastLevelMaxPool` (pass ``None`` explicitly for none).
    """

    _DEFAULT = object()

    def __init__(
        self,
        backbone: nn.Module,
        return_layers: Mapping[str, str],
        in_channels_list: Sequence[int],
        out_channels: int,
        extra_blocks: nn.Module | object | None = _DEFAULT,
        norm_layer: LayerArg = None,
    ) -> None:
        super().__init__()
        if len(in_channels_list) != len(return_layers):
            raise InputError(
                f"BackboneWithFPN: {len(return_layers)} return_layers {list(return_layers)} but "
                f"{len(in_channels_list)} in_channels_list entries {list(in_channels_list)}"
            )
        if extra_blocks is BackboneWithFPN._DEFAULT:
            extra_blocks = LastLevelMaxPool()
        self.body = IntermediateLayerGetter(backbone, return_layers)
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels, extra_blocks, norm_layer)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))
