"""Small helpers of the conformance suite (deadlines instead of sleeps)."""

from __future__ import annotations

import time
from typing import Any, Callable

DEADLINE = 15.0


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def scalar(conn: Any, query: str, params: Any = None) -> Any:
    """The first column of the first row of ``query``."""
    with conn.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone()
        assert row is not None
        return row[0]


def in_use(pool: Any) -> int:
    """Connections the pool has handed out (psycopg2: its private map; ours: stats)."""
    if hasattr(pool, "stats"):
        return int(pool.stats()["in_use"])
    return len(pool._used)


def open_count(pool: Any) -> int:
    """Connections the pool holds open, idle or in use."""
    if hasattr(pool, "stats"):
        stats = pool.stats()
        return int(stats["size"] - stats["opening"])
    return len(pool._pool) + len(pool._used)


def kill_backend(server: Any, pid: int) -> None:
    """Terminate one backend and wait until it has exited (its socket is then at EOF)."""
    admin = server.connect()
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))

            def gone() -> bool:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
                row = cur.fetchone()
                return row is not None and row[0] == 0

            wait_until(gone, f"backend {pid} to exit")
    finally:
        admin.close()
