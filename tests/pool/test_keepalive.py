"""Issue 15: keepalive checks (``check_idle_interval``) on dead links.

The case the option exists for: a NAT or firewall silently dropped the idle
connections' links while the server is fine. Each keepalive ping then waits
``check_timeout``; those checks must run side by side, and a connect the pool
needs meanwhile must not wait for them.

The links are made dead with two proxies and a two-host DSN: the pool's
connections are opened through proxy A while B refuses (libpq moves on to the
next host), then A black-holes its links and B lets new connects through.
"""

from __future__ import annotations

import threading
from typing import Iterator, Tuple

import psycopg2.extensions
import pytest

from pgreservoir import ConnectionPool
from pgreservoir.testing import PostgresServer, TcpProxy
from support import DEADLINE, Flavor, scalar, wait_until

#: Long enough that pings run one after the other would outlast the getconn
#: timeout several times over.
CHECK_TIMEOUT = 4.0


@pytest.fixture
def proxies(postgres_server: PostgresServer) -> Iterator[Tuple[TcpProxy, TcpProxy]]:
    """(a, b): a passes, b refuses; both in front of the session server."""
    with TcpProxy.for_server(postgres_server) as a, TcpProxy.for_server(
        postgres_server, mode="refuse"
    ) as b:
        yield a, b


def reserved(pool: ConnectionPool) -> int:
    """Connections the pool holds for itself (being checked or cleaned)."""
    s = pool.stats()
    return int(s["size"] - s["idle"] - s["in_use"] - s["opening"])


def check_threads(pool: ConnectionPool) -> int:
    return sum(1 for t in threading.enumerate() if t.name == f"pgreservoir-{pool.name}-check")


def test_keepalive_checks_of_dead_links_run_together_and_do_not_delay_a_connect(
    postgres_dsn: str, proxies: Tuple[TcpProxy, TcpProxy], flavor: Flavor
) -> None:
    a, b = proxies
    dsn = psycopg2.extensions.make_dsn(
        postgres_dsn, host=f"{b.host},{a.host}", port=f"{b.port},{a.port}"
    )
    pool = ConnectionPool(
        dsn,
        min_size=3,
        max_size=4,
        check_idle_interval=0.3,
        check_timeout=CHECK_TIMEOUT,
        **flavor.pool_kwargs,
    )
    try:
        pool.wait(DEADLINE)
        assert a.stats()["active"] == 3  # every idle connection goes through a
        b.set_mode("pass")
        a.set_mode("blackhole")  # their links are dead; the server is fine
        # The keepalive checks of all three start, and run side by side.
        wait_until(lambda: reserved(pool) == 3, "the three keepalive checks to start")
        wait_until(lambda: check_threads(pool) == 3, "three keepalive checks at once")
        # A caller now needs a connection: the pool opens one (through b)
        # while the checks are still waiting for their pings.
        conn = pool.getconn(timeout=3)
        try:
            assert reserved(pool) == 3, "the connect waited for the keepalive checks"
            assert scalar(conn, "SELECT 1") == 1
        finally:
            pool.putconn(conn)
        # Then every dead one is found dead and replaced.
        wait_until(
            lambda: pool.stats()["connections_lost"] >= 3 and reserved(pool) == 0,
            "the dead connections to be discarded",
            timeout=DEADLINE + CHECK_TIMEOUT,
        )
        conns = [pool.getconn(timeout=DEADLINE) for _ in range(3)]
        for conn in conns:
            assert scalar(conn, "SELECT 1") == 1
            pool.putconn(conn)
    finally:
        a.set_mode("pass")
        pool.close(0)
