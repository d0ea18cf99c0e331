"""Shared CLI helpers: shape parsing refuses anything that is not a list of positive integers."""

from __future__ import annotations

import pytest

from torchsmith.cli._output import format_table, human_bytes, parse_shape
from torchsmith.errors import InputError


def test_parse_shape_accepts_commas_and_x():
    assert parse_shape("1,3,224,224") == (1, 3, 224, 224)
    assert parse_shape("1x3x8x8") == (1, 3, 8, 8)


@pytest.mark.parametrize("bad", ["1,3,x", "1,,3", "a", "0,3", "", "-1,3"])
def test_parse_shape_rejects_bad_text_naming_the_option(bad):
    with pytest.raises(InputError, match="--input-shape"):
        parse_shape(bad)


def test_table_and_sizes():
    table = format_table(["name", "n"], [["a", 1], ["bbb", 22]], align="lr")
    assert table.splitlines()[2] == "a      1"
    assert human_bytes(1536) == "1.5 KiB"


def test_resnet_refuses_no_norm_instead_of_silently_using_batchnorm():
    import torchsmith

    with pytest.raises(InputError, match="norm_layer='none'"):
        torchsmith.create_model("resnet18", norm_layer="none")


# Commands whose output a script pipes on; none needs torch except summary (kept to a small model).
_PIPED = [
    ["zoo", "--json"],
    ["zoo"],
    ["zoo", "resnet*"],
    ["--help"],
    ["summary", "mlp", "--json"],
    ["weights", "list", "resnet18", "--json"],
    ["zoo", "nosuchmodel*", "--json"],  # a failure whose JSON error meets the closed pipe
]


@pytest.mark.parametrize("argv", _PIPED, ids=" ".join)
def test_a_closed_pipe_ends_quietly(argv, tmp_path):
    """``torchsmith ... --json | head``: the reader went away; no traceback, exit 141 (or 0), like coreutils.

    The pipe's read end is closed before the command starts, so its first write fails every time
    (with ``head`` it depends on timing).
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "torchsmith"), *argv],
            stdout=w,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env={**os.environ, "TORCHSMITH_OFFLINE": "1", "TORCH_HOME": str(tmp_path)},
        )
    finally:
        os.close(w)
    assert proc.returncode in (0, 141), proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert "BrokenPipe" not in proc.stderr
