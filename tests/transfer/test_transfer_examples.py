"""The S14/S15 examples run and show what they claim (imported in-process, not spawned)."""

from __future__ import annotations

import pytest

from example_modules import load_example


def test_s14_rules_reproduce_the_seed_init_weights_exactly(capsys):
    r = load_example("transfer", "s14_init_weights").main(image_size=32)
    assert r["identical"]
    assert r["rules"] == {
        "conv1.weight": "#0 xavier_normal",
        "conv1.bias": "default: zeros (bias)",
        "fc1.weight": "#1 normal",
        "fc3.bias": "default: zeros (bias)",
    }
    assert r["fc3_zero"] and r["fc3_rule"] == "#0 zeros"
    assert r["conv_std"] == pytest.approx(r["conv_expected_std"], rel=0.1)  # kaiming fan_out, 64*9 outputs
    assert "identical to the seed's init_weights: True" in capsys.readouterr().out


def test_s15_trap5_is_silent_in_the_seed_and_loud_in_torchsmith(capsys):
    r = load_example("transfer", "s15_transfer_learning").main(image_size=32)
    assert r["seed_loaded"] is False  # the seed's update() loads nothing
    assert r["torchsmith_loaded"] and r["still_loaded"]
    assert r["skipped"] == ["fc3.weight", "fc3.bias"] and 0.99 < r["fraction"] < 1
    assert r["head_rule"] == "#0 normal" and r["conv1_skipped"]
    assert "nothing was loaded" in r["refused"]
    assert (
        "looks like another architecture" in r["partial_refused"] and "'fc1.weight'" in r["partial_refused"]
    )
    assert r["partial_skipped"] == ["fc1.weight"]
    out = capsys.readouterr().out
    assert "(101, 128) vs (10, 128)" in out and "weights loaded = False" in out
