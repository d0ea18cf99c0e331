"""set_num_classes against each library's own ``num_classes=`` (issue 23, item 2): same keys and
shapes as the model the library builds, every head the library changes, and the model still runs
(its own loss for transformers). A refused change leaves the model's objects in place and running."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    ViTConfig,
    ViTForImageClassification,
)

from torchsmith.errors import SurgeryError
from torchsmith.surgery import set_num_classes

tv = torchvision.models


def _shapes(m: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


_TV = {
    "fasterrcnn": lambda **k: tv.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, **k
    ),
    "ssdlite": lambda **k: tv.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, **k
    ),
    "lraspp": lambda **k: tv.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, **k),
    "deeplabv3_aux": lambda **k: tv.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, aux_loss=True, **k
    ),
}


@pytest.mark.parametrize("name", sorted(_TV))
def test_torchvision_heads_match_num_classes(name):
    torch.manual_seed(0)
    model = _TV[name]().eval()
    set_num_classes(model, 5)
    assert _shapes(model) == _shapes(_TV[name](num_classes=5))
    with torch.no_grad():
        if name in ("fasterrcnn", "ssdlite"):
            out = model([torch.rand(3, 96, 96)])
            assert isinstance(out[0]["boxes"], torch.Tensor)
        else:
            assert model(torch.rand(1, 3, 64, 64))["out"].shape[1] == 5


def test_detector_keep_copies_rows_of_every_anchor_and_box():
    model = _TV["ssdlite"]().eval()
    old = model.head.classification_head.module_list[0][1].weight.detach().clone()  # (anchors*91, ...)
    set_num_classes(model, 3, keep=[0, 17])
    new = model.head.classification_head.module_list[0][1].weight
    a = new.shape[0] // 3
    assert torch.equal(new.view(a, 3, -1)[:, :2], old.view(a, 91, -1)[:, [0, 17]])
    frcnn = _TV["fasterrcnn"]().eval()
    box = frcnn.roi_heads.box_predictor.bbox_pred.weight.detach().clone()
    set_num_classes(frcnn, 2, keep=[5])
    assert torch.equal(frcnn.roi_heads.box_predictor.bbox_pred.weight[:4], box[20:24])


def test_refused_detector_change_leaves_the_same_objects_running():
    model = _TV["fasterrcnn"](num_classes=3).eval()
    x = [torch.rand(3, 96, 96)]
    with torch.no_grad():
        expected = model(x)
    predictor = model.roi_heads.box_predictor
    tensors = dict(model.state_dict(keep_vars=True))
    with pytest.raises(SurgeryError, match="box_predictor"):
        set_num_classes(model, 0)
    assert model.roi_heads.box_predictor is predictor
    assert all(model.state_dict(keep_vars=True)[k] is v for k, v in tensors.items())
    with torch.no_grad():
        got = model(x)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(expected, got, strict=True) for k in a)


def test_a_library_head_that_fails_its_check_pass_is_rolled_back():
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False).eval()
    heads = (model.head, model.head_dist)
    tensors = dict(model.state_dict(keep_vars=True))
    with pytest.raises(SurgeryError, match="model is unchanged"):
        set_num_classes(model, 4, example_inputs=(torch.rand(1, 3, 40, 40),))  # wrong size: refused
    assert (model.head, model.head_dist) == heads and model.num_classes == 1000
    assert all(model.state_dict(keep_vars=True)[k] is v for k, v in tensors.items())
    assert model(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize(
    ("name", "n"),
    [
        ("deit_tiny_distilled_patch16_224", 6),
        ("deit_tiny_distilled_patch16_224", 0),
        ("convnext_atto", 0),
        ("repvit_m1", 7),  # its reset_classifier(n) drops the distilled head unless told to keep it
    ],
)
def test_timm_heads_match_num_classes(name, n):
    model = timm.create_model(name, pretrained=False)
    set_num_classes(model, n)
    assert _shapes(model) == _shapes(timm.create_model(name, pretrained=False, num_classes=n))
    assert model.num_classes == n
    with torch.no_grad():
        out = model.eval()(torch.rand(1, 3, 224, 224) if "deit" in name else torch.rand(1, 3, 64, 64))
    assert out.shape[-1] == (n or model.num_features)


_HF = {
    "gpt2": (
        GPT2ForSequenceClassification,
        lambda: GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=100, n_positions=32, pad_token_id=0),
    ),
    "bert": (
        BertForSequenceClassification,
        lambda: BertConfig(
            num_hidden_layers=1, num_attention_heads=2, hidden_size=32, intermediate_size=64, vocab_size=100
        ),
    ),
    "vit": (
        ViTForImageClassification,
        lambda: ViTConfig(
            num_hidden_layers=1,
            num_attention_heads=2,
            hidden_size=32,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(_HF))
def test_transformers_heads_match_num_labels_and_the_loss_runs(name):
    cls, make_config = _HF[name]
    torch.manual_seed(0)
    model = cls(make_config())
    set_num_classes(model, 7)
    ref_config = copy.deepcopy(make_config())
    ref_config.num_labels = 7
    assert _shapes(model) == _shapes(cls(ref_config))
    assert model.config.num_labels == 7 and len(model.config.id2label) == 7
    labels = torch.tensor([1, 6])
    if name == "vit":
        out = model(pixel_values=torch.rand(2, 3, 32, 32), labels=labels)
    else:
        out = model(input_ids=torch.tensor([[1, 2, 3], [4, 5, 6]]), labels=labels)
    assert out.logits.shape == (2, 7) and torch.isfinite(out.loss)


def test_find_head_reads_the_declaration():
    from torchsmith.surgery import find_head

    cls, make_config = _HF["gpt2"]
    assert find_head(cls(make_config())) == "score"
    with pytest.raises(SurgeryError, match="'head', 'head_dist'"):
        find_head(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False))
