"""summarize(): layer rows, output shapes, and totals that count shared/tied parameters once."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from torchsmith.errors import InputError
from torchsmith.summary import parameter_count, summarize, summarize_model
from torchsmith.zoo import create_model


class TiedLinears(nn.Module):
    """Two Linear layers sharing one weight (as tied input/output embeddings do)."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(8, 8)
        self.decode = nn.Linear(8, 8)
        self.decode.weight = self.encode.weight

    def forward(self, x):
        return self.decode(torch.relu(self.encode(x)))


class CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.block(self.block(x)))


def test_tied_weights_are_counted_once():
    import torchinfo

    model = TiedLinears()
    s = summarize(model, (2, 8))
    assert s.total_params == 64 + 8 + 8 == sum(p.numel() for p in model.parameters())
    assert s.trainable_params == 80
    # torchinfo alone counts the shared weight twice: the bug this module exists to fix
    assert torchinfo.summary(model, input_size=(2, 8), verbose=0).total_params == 144
    rows = {r.name: r for r in s.rows}
    assert rows["encode"].params == 72
    assert rows["decode"].params == 8 and rows["decode"].shared == ["encode.weight"]
    assert sum(r.params for r in s.rows) == s.total_params
    assert s.tied == {"decode.weight": "encode.weight"}
    text = str(s)
    assert "Total params: 80" in text and "decode.weight = encode.weight" in text


def test_a_module_called_twice_is_listed_twice_and_counted_once():
    s = summarize(CalledTwice(), (1, 8))
    block_rows = [r for r in s.rows if r.name == "block"]
    assert [r.recursive for r in block_rows] == [False, True]
    assert [r.params for r in block_rows] == [72, 0]
    assert s.total_params == 72 + 18
    assert "(recursive)" in str(s)


def test_rows_add_up_to_the_total_at_every_depth():
    with torch.device("meta"):
        model = create_model("resnet18")
    for depth in (0, 1, 3):
        s = summarize(model, depth=depth)
        assert max(r.depth for r in s.rows) == depth
        assert sum(r.params for r in s.rows) == s.total_params == 11_689_512


def test_output_shapes_and_structured_outputs():
    s = summarize(create_model("resnet_fpn", depth=18), (1, 3, 64, 64), depth=2)
    root = s.rows[0]
    assert root.type == "BackboneWithFPN"
    assert root.output_shape == {
        "0": [1, 256, 16, 16],
        "1": [1, 256, 8, 8],
        "2": [1, 256, 4, 4],
        "3": [1, 256, 2, 2],
        "pool": [1, 256, 1, 1],
    }
    conv1 = next(r for r in s.rows if r.name == "body.conv1")
    assert conv1.output_shape == [1, 64, 32, 32]
    # the default freezes layer1 and before: the body is partly trainable, the FPN fully
    by_name = {r.name: r for r in s.rows}
    assert by_name["body.conv1"].trainable is False and by_name["body.layer2"].trainable is True
    assert by_name["body.layer1"].trainable is False
    frozen = sum(
        p.numel() for n, p in create_model("resnet_fpn", depth=18).named_parameters() if not p.requires_grad
    )
    assert s.non_trainable_params == frozen > 0
    assert s.mult_adds and s.mult_adds > 0


def test_to_dict_is_json():
    d = json.loads(json.dumps(summarize(TiedLinears(), (1, 8)).to_dict()))
    assert d["total_params"] == 80 and d["input_shape"] == [1, 8]
    assert [r["name"] for r in d["rows"]] == ["", "encode", "decode"]
    assert d["rows"][1]["trainable"] is True and d["rows"][0]["trainable"] is None


def test_partially_trainable_row():
    model = nn.Sequential(nn.Linear(4, 4))
    model[0].bias.requires_grad_(False)
    s = summarize(model, (1, 4))
    assert s.rows[1].trainable == "partial" and s.trainable_params == 16


def test_bad_inputs_are_input_errors():
    with pytest.raises(InputError, match=r"cannot run on an input of shape \[1, 5\]"):
        summarize(TiedLinears(), (1, 5))
    with pytest.raises(InputError, match=r"expects a torch\.nn\.Module"):
        summarize("resnet18")
    with pytest.raises(InputError, match="depth must be"):
        summarize(TiedLinears(), depth=-1)


@pytest.mark.parametrize(
    ("name", "count"), [("timm:resnet18", 11_689_512), ("torchvision:resnet50", 25_557_032)]
)
def test_library_models_by_name(name, count):
    s = summarize_model(name, (1, 3, 32, 32), depth=1)
    assert s.total_params == count == parameter_count(name)
    assert s.rows[-1].output_shape == [1, 1000]


def test_summarize_model_names_the_sample_shape_on_bad_input():
    with pytest.raises(InputError, match=r"has 3 dimensions but 'resnet18' takes 4, like 1,3,224,224"):
        summarize_model("resnet18", (1, 3, 32))
    with pytest.raises(InputError, match=r"expected input\[1, 1, 32, 32\].*looks like 1,3,224,224"):
        summarize_model("resnet18", (1, 1, 32, 32))
