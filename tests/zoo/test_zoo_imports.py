"""The zoo's import graph: model modules register into a leaf table, the registry finds them lazily."""

from __future__ import annotations

import ast
from pathlib import Path

import torchsmith.zoo as zoo

ZOO = Path(zoo.__file__).parent


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_model_modules_never_import_the_registry():
    for path in sorted((ZOO / "models").glob("*.py")):
        names = _imports(path, top_level_only=False)
        assert not any(n.startswith("torchsmith.zoo.registry") for n in names), path.name
        if path.name != "__init__.py":
            assert "torchsmith.zoo._entries.register_model" in names, path.name


def test_registry_and_table_do_not_import_the_models_at_import_time():
    for name in ("registry.py", "_entries.py", "__init__.py"):
        names = _imports(ZOO / name, top_level_only=True)
        assert not any(n.startswith("torchsmith.zoo.models") for n in names), name
    assert not any(
        n.startswith("torchsmith.zoo") for n in _imports(ZOO / "_entries.py", top_level_only=False)
    )


def test_the_registry_reads_the_table_the_models_write():
    from torchsmith.zoo import _entries, registry
    from torchsmith.zoo.models import mlp

    assert "mlp" in registry.list_models()
    assert registry.get_entry("mlp").factory is mlp.mlp
    assert registry._REGISTRY is _entries._REGISTRY and zoo.register_model is _entries.register_model


def test_the_zoo_never_imports_surgery():
    """No surgery <-> zoo circle from the zoo's side: a pretrained model's new head is given by the
    hub (hub.pretrained.finish_pretrained), not by the registry; no import anywhere in zoo/."""
    for path in sorted(ZOO.rglob("*.py")):
        names = _imports(path, top_level_only=False)
        assert not any(n.startswith("torchsmith.surgery") for n in names), path
