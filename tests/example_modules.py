"""Import a script from ``examples/`` as a module, so tests call its ``main()`` in-process and check the
values it returns (faster than a subprocess, and the example stays a plain runnable script)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(folder: str, name: str) -> ModuleType:
    """``examples/<folder>/<name>.py`` imported under a unique module name."""
    spec = importlib.util.spec_from_file_location(
        f"example_{folder}_{name}", EXAMPLES / folder / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
