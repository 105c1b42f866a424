"""The example of docs/sqlalchemy.md runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "sqlalchemy.md"


def _example() -> str:
    text = DOC.read_text()
    section = text.split("## Example", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "no python block under '## Example' in docs/sqlalchemy.md"
    return found.group(1)


def test_docs_example_runs(url: str) -> None:
    env = {**os.environ, "DATABASE_URL": url}
    done = subprocess.run(
        [sys.executable, "-c", _example()],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "1"
    assert lines[1] == url.rsplit("/", 1)[1]
    assert lines[2].startswith("Pool size: 8")
    assert lines[3] == "1 connection(s) open"
