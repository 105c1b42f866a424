"""What the scale-out tests share: a primary + standby pair, multi-host DSNs, and the
chaos suite's workload (threads or asyncio tasks) noting which server served each
request."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple, Union

from chaos.workload import AsyncWorkload, LoopPool, Workload
from pgreservoir import ConnectionPool
from pgreservoir.testing import PostgresServer, StandbyServer

__all__ = [
    "AsyncServedWorkload",
    "LoopPool",
    "ServedWorkload",
    "make_pool",
    "multi_host_dsn",
    "pair",
    "report",
]

THREADS = 8
MIN_SIZE = 2
MAX_SIZE = 6
REQUEST_TIMEOUT = 1.5
CONNECT_TIMEOUT = 2
PHASE_DEADLINE = 30.0
# Ways a request may end while the servers change roles: a write refused by
# the fenced server (25006), no server accepting writes for a moment
# (PoolTimeout, OperationalError), a connection lost under it.
LEGITIMATE = {
    "ok",
    "PoolTimeout",
    "OperationalError",
    "DatabaseError",
    "unexpected:ReadOnlySqlTransaction",
}


@contextlib.contextmanager
def pair(*, synchronous: bool = True) -> Iterator[Tuple[PostgresServer, StandbyServer]]:
    """A primary with durable commits and a (synchronous) standby, and the workload's table."""
    with contextlib.ExitStack() as stack:
        primary = stack.enter_context(
            PostgresServer(settings={"synchronous_commit": "on"}, max_connections=60)
        )
        standby = stack.enter_context(StandbyServer(primary, synchronous=synchronous))
        standby.wait_streaming()
        conn = primary.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "CREATE TABLE chaos_commits (id bigint PRIMARY KEY, fault text NOT NULL)"
                )
        finally:
            conn.close()
        standby.wait_caught_up()
        yield primary, standby


def multi_host_dsn(*servers: PostgresServer, **params: Any) -> str:
    """One libpq DSN listing every server (``host=a,b port=p,q``), plus ``params``."""
    first = servers[0]
    return first.make_dsn(
        host=",".join(s.host for s in servers),
        port=",".join(str(s.port) for s in servers),
        connect_timeout=CONNECT_TIMEOUT,
        **params,
    )


def make_pool(dsn: str, mode: str, name: str, **options: Any) -> Any:
    settings: Dict[str, Any] = {
        "min_size": MIN_SIZE,
        "max_size": MAX_SIZE,
        "timeout": REQUEST_TIMEOUT,
        "name": name,
        **options,
    }
    return LoopPool(dsn, **settings) if mode == "asyncio" else ConnectionPool(dsn, **settings)


class _Served:
    """Notes (time, server port) of every connection handed to a worker."""

    served: List[Tuple[float, int]]

    def _note(self, conn: Any) -> None:
        self.served.append((time.monotonic(), int(conn.info.port)))

    def ports_after(self, when: float) -> Set[int]:
        return {port for at, port in list(self.served) if at >= when}

    def kinds(self) -> Set[str]:
        return set(self.counts())  # type: ignore[attr-defined]


class ServedWorkload(_Served, Workload):
    def __init__(self, pool: Any, **kwargs: Any) -> None:
        super().__init__(pool, **kwargs)
        self.served = []

    def _claim(self, conn: Any, index: int) -> None:
        super()._claim(conn, index)
        self._note(conn)


class AsyncServedWorkload(_Served, AsyncWorkload):
    def __init__(self, pool: Any, **kwargs: Any) -> None:
        super().__init__(pool, **kwargs)
        self.served = []

    def _claim(self, conn: Any, index: int) -> None:
        super()._claim(conn, index)
        self._note(conn)


def make_workload(pool: Any, mode: str, fault: str) -> Union[ServedWorkload, AsyncServedWorkload]:
    if mode == "asyncio":
        return AsyncServedWorkload(
            pool, fault=fault, threads=THREADS, request_timeout=REQUEST_TIMEOUT
        )
    return ServedWorkload(pool, fault=fault, threads=THREADS, request_timeout=REQUEST_TIMEOUT)


def committed_ids(server: PostgresServer, dbname: Optional[str] = None) -> Set[int]:
    conn = server.connect(dbname)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM chaos_commits")
            return {int(row[0]) for row in cur.fetchall()}
    finally:
        conn.close()


def report(label: str, figures: Dict[str, Optional[float]], workload: Workload) -> str:
    """One printed line of measured figures (the guide quotes them)."""
    parts = [
        f"{key} {value:.2f} s" if value is not None else f"{key} -"
        for key, value in figures.items()
    ]
    line = f"[{label}] " + ", ".join(parts) + f"; {workload.summary_line()}"
    print(line)
    return line
