"""The Django integration is an extra: importing pgreservoir must not import Django."""

from __future__ import annotations

import subprocess
import sys


def test_importing_pgreservoir_does_not_import_django() -> None:
    code = (
        "import sys, pgreservoir, pgreservoir.django\n"
        "assert 'django' not in sys.modules, sorted(m for m in sys.modules if 'django' in m)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
