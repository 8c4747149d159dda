"""The package's folders are layers and imports only point down (read with ``ast``, no imports run).

Layers, bottom up: ``core`` (pure: the standard library, jinja2 and ``core`` itself), then
``storage``, ``llm`` and ``sandbox`` (each on ``core`` only, not on each other), then ``daemon`` and
``report`` (on anything below, not on each other), then ``cli`` (on anything below but the daemon: it talks to
the daemon through the socket). The package root's own modules may use any layer.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "daydreamd"

ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset({"core"}),
    "storage": frozenset({"core", "storage"}),
    "llm": frozenset({"core", "llm"}),
    "sandbox": frozenset({"core", "sandbox"}),
    "daemon": frozenset({"core", "storage", "llm", "sandbox", "daemon"}),
    "report": frozenset({"core", "storage", "report"}),
    "cli": frozenset({"core", "storage", "llm", "sandbox", "report", "cli"}),
}
"""For each layer, the layers of ``daydreamd`` its modules may import."""

CORE_THIRD_PARTY = frozenset({"jinja2"})
"""What the pure core may import besides the standard library and itself."""


def imported_modules(source: str) -> Iterator[tuple[int, str]]:
    """Every absolute module name ``source`` imports, with its line (relative imports are refused)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                yield node.lineno, "." * node.level + (node.module or "")
            elif node.module == "daydreamd":
                for alias in node.names:
                    yield node.lineno, f"daydreamd.{alias.name}"
            elif node.module:
                yield node.lineno, node.module


def violations(package: Path) -> list[str]:
    """One line per import that points up or sideways, or leaves the core's allowed set."""
    found: list[str] = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).parts
        if len(parts) < 2:
            continue  # the package root's own modules compose the layers
        layer = parts[0]
        allowed = ALLOWED.get(layer)
        where = f"{path.relative_to(package.parent)}"
        if allowed is None:
            found.append(f"{where}: folder {layer!r} is not a known layer; add it to ALLOWED")
            continue
        for line, name in imported_modules(path.read_text(encoding="utf-8")):
            problem = _check(layer, allowed, name)
            if problem:
                found.append(f"{where}:{line}: {problem}")
    return found


def _check(layer: str, allowed: frozenset[str], name: str) -> str | None:
    if name.startswith("."):
        return f"relative import {name!r}; write daydreamd.<layer>.<module>"
    top = name.split(".")[0]
    if top == "daydreamd":
        parts = name.split(".")
        target = parts[1] if len(parts) > 1 else ""
        if target == "__version__":
            return None  # the package root's version, looked up lazily, belongs to every layer
        if target not in allowed:
            return f"{layer} imports {name} (layer {target or 'daydreamd'!r} is not below {layer!r})"
        return None
    if layer == "core" and top not in sys.stdlib_module_names and top not in CORE_THIRD_PARTY:
        return f"core imports {name}; the core may use only the standard library and jinja2"
    return None


def test_every_import_points_down() -> None:
    assert violations(PACKAGE) == []


def test_every_layer_folder_is_a_package() -> None:
    for layer in ALLOWED:
        assert (PACKAGE / layer / "__init__.py").is_file(), layer


@pytest.mark.parametrize(
    ("layer", "module", "source", "expected"),
    [
        (
            "core",
            "leak.py",
            "from daydreamd.storage.gens import GensStore\n",
            "core imports daydreamd.storage",
        ),
        ("core", "leak.py", "import aiohttp\n", "core imports aiohttp"),
        ("storage", "leak.py", "from daydreamd.llm import calls\n", "storage imports daydreamd.llm"),
        ("llm", "leak.py", "import daydreamd.daemon.pool\n", "llm imports daydreamd.daemon.pool"),
        ("report", "leak.py", "from daydreamd import daemon\n", "report imports daydreamd.daemon"),
        ("cli", "leak.py", "from daydreamd.daemon.service import Service\n", "cli imports daydreamd.daemon"),
        ("daemon", "leak.py", "from . import pool\n", "relative import"),
        ("web", "page.py", "import json\n", "folder 'web' is not a known layer"),
    ],
)
def test_an_upward_import_is_reported(
    tmp_path: Path, layer: str, module: str, source: str, expected: str
) -> None:
    """The test of the test: a temporary package with one bad module fails, naming file and line."""
    package = tmp_path / "daydreamd"
    for name in ALLOWED:
        (package / name).mkdir(parents=True)
        (package / name / "__init__.py").write_text("")
    (package / "core" / "fine.py").write_text("import re\nimport jinja2\nfrom daydreamd.core import fine\n")
    (package / "daemon" / "fine.py").write_text("from daydreamd.storage import gens\nimport aiohttp\n")
    (package / layer).mkdir(parents=True, exist_ok=True)
    (package / layer / module).write_text(source)
    found = violations(package)
    assert len(found) == 1, found
    assert f"daydreamd/{layer}/{module}" in found[0]
    assert expected in found[0]
