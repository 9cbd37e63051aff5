"""The package's layers, as its __init__ docstring states them: every import points down, never up or around."""

from __future__ import annotations

import ast
from pathlib import Path

import fashion_hpo

PACKAGE = Path(fashion_hpo.__file__).parent
LAYERS = (
    ("cli", "__main__"),
    ("pipeline",),
    ("study", "workers", "runs", "reconcile", "tracking", "artifacts", "registry", "predict"),
    ("objective", "training", "search_space", "storage", "serving", "integrity", "costs"),
    ("models", "data", "settings", "flags", "process", "seeding", "constants"),
)
# Imports inside one layer that the docstring allows, as (importer, imported).
WITHIN_LAYER = {
    ("__main__", "cli"),
    ("workers", "runs"),
    ("artifacts", "study"),
    ("objective", "costs"),
    ("runs", "tracking"),
    ("reconcile", "tracking"),
    ("objective", "training"),
    ("objective", "search_space"),
    ("flags", "settings"),
    ("flags", "constants"),
    ("settings", "constants"),
}


def layer_of(module: str) -> int:
    """The index of the layer that holds `module`."""
    return next(i for i, layer in enumerate(LAYERS) if module in layer)


def imported_modules(path: Path) -> set[str]:
    """The package's modules that a file imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fashion_hpo"):
            if node.module == "fashion_hpo":
                found |= {alias.name for alias in node.names if (PACKAGE / f"{alias.name}.py").exists()}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("fashion_hpo.")}
    return found - {path.stem}


def test_every_module_has_a_layer() -> None:
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == {m for layer in LAYERS for m in layer}


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{path.stem} -> {imported}"
        for path in sorted(PACKAGE.glob("*.py"))
        if path.stem != "__init__"
        for imported in sorted(imported_modules(path))
        if layer_of(imported) < layer_of(path.stem)
        or (layer_of(imported) == layer_of(path.stem) and (path.stem, imported) not in WITHIN_LAYER)
    ]
    assert not upward, f"imports against the layer order: {upward}"
