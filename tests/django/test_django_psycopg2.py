"""The Django backend's tests again, on psycopg2.

Django's PostgreSQL backend takes psycopg 3 whenever it can import it, and
both are installed here; the only way to give Django psycopg2 is a process
in which ``import psycopg`` fails. This test starts one (a sitecustomize
that blocks the import) and runs test_django_backend.py in it, which checks
that Django really picked psycopg2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BACKEND_TESTS = Path(__file__).parent / "test_django_backend.py"


def test_the_backend_tests_pass_on_psycopg2(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(
        'import sys\nsys.modules["psycopg"] = None  # Django then picks psycopg2\n'
    )
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        PGRESERVOIR_TEST_DJANGO_DRIVER="psycopg2",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(BACKEND_TESTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert " passed" in output, output
    assert "skipped" not in output, output
