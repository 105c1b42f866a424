"""Helpers shared by the test modules: waiting on conditions, tiny query shortcuts."""

from __future__ import annotations

import time
from typing import Any, Callable

#: Upper bound for any single wait in the tests; generous for noisy 2-core VMs.
DEADLINE = 15.0


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll ``predicate`` until true, failing with ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def backend_pid(conn: Any) -> int:
    """The server process serving ``conn``."""
    return int(conn.get_backend_pid())


def scalar(conn: Any, query: str, params: Any = None) -> Any:
    """Run ``query`` and return the first column of its first row."""
    with conn.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone()
        assert row is not None, f"no row from {query!r}"
        return row[0]


def select_one(dsn: str, **connect_kwargs: Any) -> int:
    """Open a fresh connection to ``dsn``, run ``SELECT 1`` and close it."""
    import psycopg2

    conn = psycopg2.connect(dsn, **connect_kwargs)
    try:
        return int(scalar(conn, "SELECT 1"))
    finally:
        conn.close()
