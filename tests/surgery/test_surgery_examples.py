"""The S8 example runs end to end in-process (it asserts its own results)."""

from __future__ import annotations

from example_modules import load_example


def test_s8_example_wires_fpn_from_feature_info(capsys):
    load_example("surgery", "s8_fpn").main()
    out = capsys.readouterr().out
    assert "layer4:  2048 channels, stride 32" in out
    assert "'blocks.5': (1, 64, 2, 2)" in out  # timm's own feature_info stages
