"""The S8 example runs end to end in-process (it asserts its own results)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "surgery"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"surgery_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_s8_example_wires_fpn_from_feature_info(capsys):
    _load("s8_fpn").main()
    out = capsys.readouterr().out
    assert "layer4:  2048 channels, stride 32" in out
    assert "'blocks': (1, 64, 2, 2)" in out
