"""Imports point down: drivers (train.py, test.py) -> engine/ -> pipelines/, models/, configs/ -> utils/.

Every project module's imports are read with ``ast`` (top-level and function-level imports alike, relative ones
resolved) and checked against the layer table; ``engine/demo.py`` must call the engine, never ``train``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("utils", "configs", "models", "pipelines", "engine", "benchmarks")
DRIVERS = ("train", "test")
# what each layer must not import (utils: nothing of the project at all)
FORBIDDEN = {
    "utils": set(PACKAGES[1:]) | set(DRIVERS),
    "configs": {"engine", "benchmarks", *DRIVERS},
    "models": {"engine", "benchmarks", *DRIVERS},
    "pipelines": {"engine", "benchmarks", *DRIVERS},
    "engine": {"benchmarks", *DRIVERS},
    "benchmarks": set(DRIVERS),
    "train": {"test", "benchmarks"},
    "test": {"train", "benchmarks"},
}


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages and the two drivers."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for driver in DRIVERS:
        modules[driver] = REPO / f"{driver}.py"
    return modules


def imported_modules(name: str, path: Path) -> set[str]:
    """Every module ``path`` imports (``import a.b`` -> ``a.b``; ``from a import b`` -> ``a``, ``a.b``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def top_level(module: str) -> str:
    return module.split(".", 1)[0]


def violations(modules: dict[str, Path]) -> list[str]:
    """``"<module> imports <module>"`` for every import of a module its layer must not import."""
    found = []
    for name, path in modules.items():
        forbidden = FORBIDDEN[top_level(name)]
        for imported in sorted(imported_modules(name, path)):
            if top_level(imported) in forbidden:
                found.append(f"{name} imports {imported}")
    return found


def test_every_module_imports_only_lower_layers():
    modules = project_modules()
    assert {"utils.errors", "models.weights", "engine.trainer", "engine.evaluator", "train", "test"} <= set(modules)
    assert violations(modules) == []


def test_the_demo_calls_the_engine_not_the_training_driver():
    demo = imported_modules("engine.demo", REPO / "engine" / "demo.py")
    assert not {m for m in demo if top_level(m) == "train"}
    assert "engine.trainer" in demo


@pytest.mark.parametrize("source, expected", [
    ("import train\n", "imports train"),
    ("from engine.trainer import fit\n", "imports engine.trainer"),
    ("def f():\n    from benchmarks import run\n", "imports benchmarks"),
    ("from ..engine import trainer\n", "imports engine.trainer"),
])
def test_the_check_catches_an_upward_import(tmp_path, source, expected):
    # a lower-layer module (models/x.py) importing upwards, at the top or inside a function, absolutely or
    # relatively, is reported; importing downwards is not
    (tmp_path / "models").mkdir()
    path = tmp_path / "models" / "x.py"
    path.write_text(source)
    assert any(v.startswith("models.x " + expected) for v in violations({"models.x": path})), source
    path.write_text("import torch\nfrom utils.atomic import write_text\nfrom . import registry\n")
    assert violations({"models.x": path}) == []
