"""The S16/S17 examples run end to end (they assert their own results)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "checkpoints"


@pytest.mark.parametrize("script", ["s16_whole_model_or_weights.py", "s17_single_multi_gpu.py"])
def test_example_runs(script, tmp_path, capsys):
    module = runpy.run_path(str(EXAMPLES / script))
    module["main"](tmp_path)
    out = capsys.readouterr().out
    assert "rescued" in out
