"""The package surface: every public name resolves, the CLI starts without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

import torchsmith


def test_every_public_name_resolves():
    for name in torchsmith.__all__:
        assert getattr(torchsmith, name) is not None, name


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        torchsmith.nope  # noqa: B018


def test_cli_help_does_not_import_torch():
    code = (
        "import sys; from torchsmith.cli.main import build_parser; build_parser(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_without_command_is_usage_error(capsys):
    from torchsmith.cli.main import main

    assert main([]) == 2


def test_python_dash_m_torchsmith_is_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "torchsmith", "zoo", "--json"], capture_output=True, text=True, check=True
    )
    import json

    assert "resnet50" in {m["name"] for m in json.loads(out.stdout)}


def test_readme_commands_are_what_ci_runs():
    """The README's two commands keep their CI check: the second is exactly what .ci/run runs, the
    first runs the built-in default recipe (tests/docs runs `torchsmith train` itself, smaller)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    block = readme.split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == [
        "bash scripts/setup.sh && .venv/bin/torchsmith train",
        "bash scripts/setup.sh && .venv/bin/python -m pytest -q",
    ]
    ci = [line.strip() for line in (root / ".ci" / "run").read_text().splitlines()]
    assert commands[1] in ci
    assert (root / "scripts" / "setup.sh").is_file()
    from torchsmith.training import load_recipe

    assert load_recipe(None)["model"]["name"] == "torchvision:resnet18"  # what `torchsmith train` runs
