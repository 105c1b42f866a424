"""Packaging promises (issue 9 regression tests).

An installed pgreservoir registers its pytest plugin (entry point ``pytest11``)
in every pytest run of every project in that environment, so the plugin must
never break a run, even one where psycopg2 is not importable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_pytest_plugin_does_not_abort_pytest_without_psycopg2(tmp_path: Path) -> None:
    # A directory put first on PYTHONPATH whose psycopg2 cannot be imported.
    blocker = tmp_path / "blocker"
    (blocker / "psycopg2").mkdir(parents=True)
    (blocker / "psycopg2" / "__init__.py").write_text(
        'raise ImportError("psycopg2 is not installed (simulated by the test)")\n'
    )
    # Someone else's project: one trivial test, its own rootdir.
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "test_trivial.py").write_text("def test_nothing():\n    assert True\n")

    env = dict(os.environ)
    for name in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_ADDOPTS", "PYTEST_PLUGINS"):
        env.pop(name, None)
    paths = [str(blocker)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_trivial.py"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
