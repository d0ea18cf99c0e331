"""Conventions users bring from other tools, each checked on classes of inputs, not one case.

* names are matched ignoring case, and the case-folded match is the suggestion (close_matches);
* a short name only timm or torchvision has gets a did-you-mean with the prefix;
* ``list_models`` and ``weights list`` sort naturally (resnet18 before resnet101);
* ``weights list`` matches model names the way ``zoo`` does; an empty result is exit 2 with what
  names look like, never an empty table with exit 0;
* ``summarize(model, input_size=...)`` (torchinfo's name) is accepted.
"""

from __future__ import annotations

import fnmatch
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import torchsmith
from torchsmith.cli.main import main
from torchsmith.errors import InputError, close_matches
from torchsmith.zoo.registry import natural_key

_NAME = st.from_regex(r"[A-Za-z][A-Za-z_]{2,10}[0-9]{0,3}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(names=st.lists(_NAME, min_size=1, max_size=12, unique_by=str.casefold), data=st.data())
def test_a_name_typed_in_another_case_suggests_the_real_name_alone(names, data):
    real = data.draw(st.sampled_from(names))
    typed = data.draw(st.sampled_from([real.lower(), real.upper(), real.swapcase(), real.title()]))
    hint = close_matches(typed, names)
    if typed == real:
        assert repr(real) not in hint
    else:
        assert hint == f" (did you mean {real!r}?)"


@settings(max_examples=60, deadline=None)
@given(
    stem=st.from_regex(r"[a-z]{2,8}", fullmatch=True),
    numbers=st.lists(st.integers(0, 999), min_size=2, unique=True),
)
def test_natural_order_sorts_numbers_by_value(stem, numbers):
    names = [f"{stem}{n}" for n in numbers]
    assert sorted(names, key=natural_key) == [f"{stem}{n}" for n in sorted(numbers)]


def test_list_models_is_in_natural_order():
    names = torchsmith.list_models()
    assert names == sorted(names, key=natural_key)
    resnets = torchsmith.list_models("resnet*")
    assert resnets.index("resnet18") < resnets.index("resnet101") < resnets.index("resnet152")
    assert torchsmith.list_models("RESNET*") == resnets


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("efficientnet_b0", ["timm:efficientnet_b0", "torchvision:efficientnet_b0"]),
        ("EfficientNet_B0", ["timm:efficientnet_b0", "torchvision:efficientnet_b0"]),
        ("convnext_tiny", ["timm:convnext_tiny", "torchvision:convnext_tiny"]),
        ("vit_b_16", ["torchvision:vit_b_16"]),
        ("resnet50d", ["timm:resnet50d"]),
        ("ResNet50", ["resnet50"]),
        ("UNet", ["unet"]),
    ],
)
def test_a_name_outside_the_zoo_suggests_its_prefixed_form(typed, expected, capsys):
    with pytest.raises(InputError) as info:
        torchsmith.create_model(typed)
    for name in expected:
        assert repr(name) in str(info.value)
    assert main(["summary", typed, "--no-forward"]) == 2
    err = capsys.readouterr().err
    for name in expected:
        assert repr(name) in err


@pytest.mark.parametrize(
    ("pattern", "model"),
    [
        ("resnet50", "resnet50"),
        ("RESNET50", "resnet50"),
        ("torchvision:resnet50", "resnet50"),
        ("resnet5?", "resnet50"),
        ("torchvision:resnet50:IMAGENET1K_V2", "resnet50"),
        ("vit_b_16", "vit_b_16"),
        ("mobilenet_v3_*", "mobilenet_v3_large"),
    ],
)
def test_weights_list_matches_model_names_the_way_zoo_does(pattern, model, capsys):
    assert main(["weights", "list", pattern, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    tv = [r["name"] for r in rows if r["name"].startswith("torchvision:")]
    assert tv and any(n.split(":")[1] == model for n in tv)
    for name in tv:  # every row is a model the pattern names, never a neighbour
        full_or_model = (
            name.casefold(),
            name.split(":")[1].casefold(),
            ":".join(name.split(":")[:2]).casefold(),
        )
        assert any(fnmatch.fnmatchcase(c, pattern.casefold()) for c in full_or_model)
    models = list(dict.fromkeys(n.split(":")[1] for n in tv))  # weights keep torchvision's order
    assert models == sorted(models, key=natural_key)


def test_weights_list_timm_tags_by_model_name(capsys):
    assert main(["weights", "list", "timm:resnet18", "--json"]) == 0
    rows = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert rows and all(re.match(r"timm:resnet18\.", n) for n in rows)


@pytest.mark.parametrize("pattern", ["resnt50", "nosuchmodel", "torchvision:resnt50", "zz*"])
def test_weights_list_with_no_match_says_what_names_look_like(pattern, capsys):
    assert main(["weights", "list", pattern]) == 2
    captured = capsys.readouterr()
    assert (
        "no pretrained weights match" in captured.err and "torchvision:resnet50:IMAGENET1K_V2" in captured.err
    )
    if "resnt50" in pattern:
        assert "'resnet50'" in captured.err
    assert captured.out == ""


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [({"input_size": (2, 3, 32, 32)}, [2, 3, 32, 32]), ({"input_size": [(1, 3, 16, 16)]}, [1, 3, 16, 16])],
)
def test_summarize_accepts_torchinfos_input_size(kwargs, shape):
    model = torchsmith.create_model("simple_cnn")
    summary = torchsmith.summarize(model, **kwargs)
    assert summary.input_shape == shape
    assert summary.total_params == torchsmith.summarize(model, shape).total_params


@pytest.mark.parametrize("bad", ["x", (), (1, 0, 3), [(1, 3), "y"], (1.5, 2)])
def test_summarize_refuses_a_bad_input_size_naming_it(bad):
    with pytest.raises(InputError, match="input_size"):
        torchsmith.summarize(torchsmith.create_model("simple_cnn"), input_size=bad)
