"""Small helpers of the conformance suite (deadlines instead of sleeps).

The general ones (waiting on a condition, one-value queries) live in
tests/support.py and are re-exported here for the compat modules.
"""

from __future__ import annotations

from typing import Any

from support import DEADLINE, scalar, wait_until

__all__ = ["DEADLINE", "in_use", "kill_backend", "open_count", "scalar", "wait_until"]


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
