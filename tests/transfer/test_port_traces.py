"""Traces honour ``example_input`` for every model (issue 24, item 5).

The target's graph is taken on a small crop of the input; a model whose forward adapts a plain
attribute to the input it sees (transformers' Swin shrinks ``window_size`` to a small input and
keeps it) must be left as it was, so the check on the caller's input runs the model as built.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn as nn

from torchsmith.transfer import load_weights


class _Adapts(nn.Module):
    """Pools in windows of ``window`` pixels, shrunk to the input's size -- and kept (as HF Swin does)."""

    def __init__(self, window: int, names: tuple[str, str]) -> None:
        super().__init__()
        self.window = window
        a, b = names
        self.add_module(a, nn.Conv2d(3, 6, 3, padding=1))
        self.add_module(b, nn.Linear(6, 4))
        self._names = names

    def forward(self, x):
        self.window = min(self.window, x.shape[-1])  # the persisted adaptation
        x = getattr(self, self._names[0])(x)
        x = nn.functional.avg_pool2d(x, self.window)
        return getattr(self, self._names[1])(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("window", [20, 24, 40, 48])
@pytest.mark.parametrize("size", [48, 64])
def test_a_crop_trace_leaves_the_models_attributes_as_built(window, size):
    source, model = _Adapts(window, ("conv", "fc")), _Adapts(window, ("stem", "head"))
    x = torch.randn(2, 3, size, size)
    report = load_weights(model, source, match="structure", example_input=x)
    assert model.window == window and any(n.startswith("numerical check:") for n in report.notes)
    with torch.no_grad():
        assert torch.allclose(model(x), source(x), atol=1e-6)


def test_transformers_swin_keeps_its_window_after_a_port_attempt():
    pytest.importorskip("transformers")
    timm = pytest.importorskip("timm")
    from torchsmith.errors import TransferError
    from torchsmith.zoo.hf_models import create_hf_model

    cfg = {"embed_dim": 24, "depths": [2], "num_heads": [3], "image_size": 56, "window_size": 7}
    hf = create_hf_model("swin/image-classification", {**cfg, "num_labels": 10})
    tm = timm.create_model(
        "swin_tiny_patch4_window7_224", embed_dim=24, depths=(2,), num_heads=(3,), img_size=56, num_classes=10
    )
    x = torch.randn(1, 3, 56, 56)
    # whether it ports is not this test's concern: the model must still be the one built
    with contextlib.suppress(TransferError):
        load_weights(hf, tm, match="structure", example_input=x)
    assert all(b.window_size == 7 for b in hf.swin.encoder.layers[0].blocks)
    with torch.no_grad():
        assert hf(x).logits.shape == (1, 10)
