"""A source with two complete weight sets (model + EMA copy, student + teacher) is refused, never a
silent choice; ``source_prefix=`` / ``--source-prefix`` picks one (issue 24, item 4)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from torchsmith.cli.main import main
from torchsmith.errors import InputError, TransferError
from torchsmith.transfer import load_weights


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def _two_sets(first: str, second: str) -> tuple[dict, nn.Module, nn.Module]:
    a, b = _net(), _net()
    sd = {}
    for prefix, m in ((first, a), (second, b)):
        sd.update({(prefix + "." if prefix else "") + k: v for k, v in m.state_dict().items()})
    return sd, a, b


PAIRS = [("model", "ema"), ("student", "teacher"), ("", "ema"), ("", "model_ema"), ("net", "shadow")]


@pytest.mark.parametrize(("first", "second"), PAIRS)
@pytest.mark.parametrize("wrapped", [False, True])
def test_two_complete_weight_sets_are_refused_naming_both(first, second, wrapped):
    sd, _, _ = _two_sets(first, second)
    if wrapped:
        sd = {"module." + k: v for k, v in sd.items()}
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError) as info:
        load_weights(model, sd)
    msg = str(info.value)
    assert f"{second + '.'!r}" in msg and "source_prefix=" in msg and "--source-prefix" in msg
    assert (f"{first + '.'!r}" if first else "unprefixed keys") in msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("first", "second"), PAIRS)
@pytest.mark.parametrize("pick", [0, 1])
def test_source_prefix_takes_the_set_named(first, second, pick):
    sd, a, b = _two_sets(first, second)
    prefix, want = ((first, a), (second, b))[pick]
    model = _net()
    report = load_weights(model, sd, source_prefix=prefix)
    assert report.ok
    for k, v in model.state_dict().items():
        assert torch.equal(v, want.state_dict()[k]), k


def test_nested_weight_sets_in_one_checkpoint_dict_are_refused():
    a, b = _net(), _net()
    ckpt = {"model": a.state_dict(), "model_ema": b.state_dict(), "epoch": 3}
    with pytest.raises(InputError, match=r"'model' and 'model_ema'.*checkpoint\['model'\]"):
        load_weights(_net(), ckpt)
    assert load_weights(_net(), ckpt["model_ema"]).ok


def test_a_file_with_two_weight_sets_is_refused(tmp_path):
    a, b = _net(), _net()
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": a.state_dict(), "state_dict_ema": b.state_dict()}, path)
    with pytest.raises(TransferError, match=r"two complete weight sets, 'state_dict' and 'state_dict_ema'"):
        load_weights(_net(), path)


def test_an_unknown_prefix_is_an_input_error_naming_the_prefixes():
    sd, _, _ = _two_sets("model", "ema")
    with pytest.raises(InputError, match=r"source_prefix: no source key starts with 'emma\.'.*'ema'"):
        load_weights(_net(), sd, source_prefix="emma")


def test_one_weight_set_and_other_entries_are_not_ambiguous():
    a = _net()
    sd = {**a.state_dict(), "aux.weight": torch.zeros(3), "aux.bias": torch.zeros(3)}
    assert load_weights(_net(), sd).counts()["loaded"] == len(a.state_dict())


def test_cli_source_prefix_and_the_refusal(tmp_path, capsys):
    from safetensors.torch import save_file

    from torchsmith.zoo import create_model

    a, b = create_model("mlp"), create_model("mlp")
    sd = {**{"model." + k: v for k, v in a.state_dict().items()}}
    sd.update({"ema." + k: v for k, v in b.state_dict().items()})
    path = tmp_path / "two.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    rc = main(["load", "mlp", str(path), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 2 and "--source-prefix" in out["error"]
    out_file = tmp_path / "ema.safetensors"
    rc = main(["load", "mlp", str(path), "--source-prefix", "ema", "--json", "-o", str(out_file)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["counts"]["loaded"] == len(b.state_dict())
    from torchsmith.checkpoint import read_state_dict

    saved = read_state_dict(out_file)
    assert all(torch.equal(saved[k], v) for k, v in b.state_dict().items())
