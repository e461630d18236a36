"""Imports point one way: pure values at the bottom, the servers and Agent at the top."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import dfagent

PACKAGE = Path(dfagent.__file__).parent
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages([str(PACKAGE)], "dfagent.")
    if m.name != "dfagent.__main__"
)

# package -> dfagent packages it must not import
FORBIDDEN = {
    "dfagent.core": ("dfagent.",),
    "dfagent.storage": ("dfagent.origin", "dfagent.engine", "dfagent.proxy", "dfagent.agent"),
    "dfagent.origin": ("dfagent.storage", "dfagent.engine", "dfagent.proxy", "dfagent.agent"),
    "dfagent.engine": ("dfagent.proxy", "dfagent.agent", "dfagent.admin"),
    "dfagent.registry": (
        "dfagent.storage",
        "dfagent.engine",
        "dfagent.swarm",
        "dfagent.proxy",
        "dfagent.preheat",
        "dfagent.agent",
    ),
    # the nydus formats are pure values: nothing but the error types
    "dfagent.nydus": tuple(
        f"dfagent.{name}"
        for name in (
            "core",
            "storage",
            "origin",
            "engine",
            "swarm",
            "proxy",
            "registry",
            "preheat",
            "agent",
            "admin",
            "tools",
            "config",
        )
    ),
    "dfagent.preheat": ("dfagent.proxy", "dfagent.agent", "dfagent.admin", "dfagent.tools"),
}


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize(("package", "banned"), FORBIDDEN.items())
def test_dependencies_point_down(package, banned):
    folder = PACKAGE / package.removeprefix("dfagent.")
    for path in folder.rglob("*.py"):
        own = package + "."
        bad = {i for i in imports_of(path) if i.startswith(banned) and not i.startswith(own)}
        allowed_core = {
            i for i in bad if package != "dfagent.core" and i.startswith("dfagent.core")
        }
        assert bad - allowed_core == set(), f"{path.relative_to(PACKAGE)} imports {bad}"


def test_dragonfly_speaks_with_the_stdlib_only():
    """dfagent.dragonfly (ids, pieces, Vortex) imports itself, dfagent.errors and the stdlib."""
    for path in (PACKAGE / "dragonfly").rglob("*.py"):
        for name in imports_of(path):
            allowed = name == "dfagent.errors" or name.startswith("dfagent.dragonfly")
            top = name.split(".")[0]
            assert allowed or top in sys.stdlib_module_names, f"{path.name} imports {name}"


def test_every_module_imports_on_its_own():
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    for name in MODULES:
        result = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: {result.stderr}"


def test_every_module_declares_all():
    for name in MODULES:
        path = PACKAGE.joinpath(*name.split(".")[1:])
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        source = path.read_text()
        if path.name == "__init__.py" and "import" not in source:
            continue
        assert "__all__" in source, f"{name} has no __all__"
