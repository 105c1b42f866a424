"""Helpers of the psycopg_pool conformance suite: conditions with deadlines, async pools.

The general helpers (waiting on a condition) live in tests/support.py.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Dict

import psycopg

from pgreservoir.testing import PostgresServer
from support import DEADLINE, wait_until

__all__ = [
    "COUNTERS",
    "DEADLINE",
    "GAUGES",
    "UNREACHABLE",
    "async_pool",
    "await_until",
    "backend_alive",
    "counter",
    "kill_backend",
    "pid",
    "wait_until",
]

#: A DSN nothing listens on: connects are refused at once.
UNREACHABLE = "host=127.0.0.1 port=1 dbname=nowhere connect_timeout=5"

#: get_stats() keys always present: measures of the moment.
GAUGES = frozenset({"pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting"})

#: get_stats() keys counted since the pool opened (or the last pop_stats()); a
#: counter that never moved may be missing (psycopg_pool) or zero.
COUNTERS = frozenset({
    "requests_num", "requests_queued", "requests_wait_ms", "requests_errors", "usage_ms",
    "returns_bad", "connections_num", "connections_ms", "connections_errors",
    "connections_lost",
})


def counter(stats: Dict[str, int], key: str) -> int:
    """A counter of ``stats``, zero when absent."""
    assert key in COUNTERS, key
    return stats.get(key, 0)


def pid(conn: Any) -> int:
    """The server process serving ``conn``."""
    return int(conn.info.backend_pid)


def backend_alive(server: PostgresServer, backend: int) -> bool:
    """Whether server process ``backend`` is still listed in pg_stat_activity."""
    return backend in server.backend_pids()


def kill_backend(server: PostgresServer, backend: int) -> None:
    """Terminate one backend and wait until it has exited (its socket is then at EOF)."""
    admin = psycopg.connect(server.make_dsn(), autocommit=True)
    try:
        admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        wait_until(lambda: not backend_alive(server, backend), f"backend {backend} to exit")
    finally:
        admin.close()


async def await_until(
    predicate: Callable[[], bool], what: str, timeout: float = DEADLINE
) -> None:
    """Async ``wait_until``: poll ``predicate`` on the loop, fail after ``timeout`` s."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@asynccontextmanager
async def async_pool(
    impl: Any, conninfo: Any, cls: str = "AsyncConnectionPool", *, wait: bool = True,
    **kwargs: Any,
) -> AsyncIterator[Any]:
    """An async pool of ``impl`` built inside the running loop with ``open=False``,
    then opened (and, with ``wait`` and ``min_size > 0``, waited for); closed on exit."""
    pool = getattr(impl.module, cls)(conninfo, open=False, **kwargs)
    await pool.open()
    try:
        if wait and pool.min_size > 0:
            await pool.wait(timeout=DEADLINE)
        yield pool
    finally:
        await pool.close()
