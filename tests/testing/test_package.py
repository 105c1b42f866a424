"""The layout of pgreservoir.testing: one module per thing it starts, no import circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

import pgreservoir.testing as pgtesting

PACKAGE = Path(pgtesting.__file__).resolve().parent


def internal_imports(path: Path) -> Set[str]:
    """Modules of the package that ``path`` imports at run time (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: Set[str] = set()

    def visit(nodes: List[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "pgreservoir.testing."
            ):
                found.add((node.module or "").split(".")[2])
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])

    visit(tree.body)
    return found


def test_no_import_circle() -> None:
    graph: Dict[str, Set[str]] = {
        path.stem: internal_imports(path)
        for path in PACKAGE.glob("*.py")
        if path.stem != "__init__"
    }
    assert {"server", "standby", "pgbouncer", "proxy", "plugin"} <= set(graph)
    state: Dict[str, int] = {}

    def walk(name: str, trail: List[str]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, f"import circle: {' -> '.join([*trail, name])}"
        state[name] = 1
        for target in graph.get(name, ()):
            walk(target, [*trail, name])
        state[name] = 2

    for name in graph:
        walk(name, [])
    assert "server" not in graph["proxy"]  # the proxy used to import the server module back


def test_every_public_name_and_lazy_imports() -> None:
    code = (
        "import sys\n"
        "import pgreservoir.testing, pgreservoir.testing.plugin, pgreservoir.testing_plugin\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('pgreservoir.testing.'))\n"
        "print(loaded)\n"
        "from pgreservoir.testing import *\n"
        "from pgreservoir.testing import (PgBouncer, PostgresServer, StandbyServer, TcpProxy,\n"
        "    embedded_bindir, find_bindir, find_pgbouncer, start_server)\n"
        "assert set(pgreservoir.testing.__all__) <= set(dir(pgreservoir.testing))\n"
        "from pgreservoir.testing import plugin\n"
        "assert pgreservoir.testing_plugin.postgres_dsn is plugin.postgres_dsn\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # The pytest plugin, loaded in every test run, pulls in no server module.
    assert result.stdout.strip() == "['pgreservoir.testing.plugin']"


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        getattr(pgtesting, "NoSuchThing")  # noqa: B009
