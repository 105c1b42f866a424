"""docs/credentials.md's examples run as printed, against a server that checks
passwords, across a real ``ALTER ROLE ... PASSWORD``.

The first two ``python`` blocks of the page are run in one namespace, with
only their placeholders replaced (as tests/test_seeds.py does for the
tutorials): the DSN, the secret file's path, and the token cache's refresh
period (60 s on the page; a fraction of a second here, so the rotation shows
within the test). The rest of the page's blocks need other services (AWS).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from pathlib import Path
from typing import Any, Dict, List

import pytest

from credentials_support import (  # noqa: F401 - the fixtures are used by name
    Role,
    assert_no_secret,
    password_server_fixture,
    role_fixture,
    texts_of,
)
from support import scalar, wait_until

DOC = Path(__file__).resolve().parent.parent / "docs" / "credentials.md"

PLACEHOLDERS = [
    ('"host=db.internal dbname=app user=app"', "{dsn!r}"),
    ('Path("/run/secrets/db-password")', "Path({secret_file!r})"),
    ("refresh_after=60", "refresh_after=0.2"),
]


def _blocks() -> List[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def _prepared(code: str, **values: str) -> str:
    for placeholder, replacement in PLACEHOLDERS:
        code = code.replace(placeholder, replacement.format(**values))
    return code


def test_the_examples_keep_their_placeholders() -> None:
    blocks = _blocks()
    assert len(blocks) >= 3
    runnable = blocks[0] + blocks[1]
    for placeholder, _ in PLACEHOLDERS:
        assert placeholder in runnable, placeholder


def test_the_examples_run_across_a_password_change(
    role: Role, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_file = tmp_path / "db-password"
    secret_file.write_text(role.password + "\n")
    values = {"dsn": role.dsn, "secret_file": str(secret_file)}
    sync_block, async_block = (_prepared(b, **values) for b in _blocks()[:2])

    namespace: Dict[str, Any] = {"__name__": "credentials_example"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(sync_block, f"{DOC}:sync", "exec"), namespace)
    assert out.getvalue() == f"connected as {role.name}\n"
    pool = namespace["pool"]
    try:
        pool.wait(10)
        old = set(role.backend_pids())
        # The operator rotates: the server first, then the secret the agent writes.
        role.alter_password("rotated-" + role.name)
        assert role.refuses(role.passwords[0])
        secret_file.write_text(role.password + "\n")
        with pool.connection() as conn:  # an open connection serves meanwhile
            assert scalar(conn, "SELECT current_user") == role.name
        pool.drain()
        # Until the cache refreshes, connects may still use the old password
        # (refused, retried); then every connection is a new login.
        wait_until(
            lambda: len(role.backend_pids()) >= 2 and not set(role.backend_pids()) & old,
            "connections logged in with the new password",
        )
        with pool.connection() as conn:
            assert scalar(conn, "SELECT current_user") == role.name
        assert_no_secret(role.passwords, texts_of(caplog.records), repr(pool), str(pool.stats()))
    finally:
        pool.close()

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(async_block, f"{DOC}:async", "exec"), namespace)
    assert out.getvalue() == f"connected as {role.name}\n"
    assert_no_secret(role.passwords, texts_of(caplog.records))
