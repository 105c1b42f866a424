"""Pool options are declared once (pgreservoir.PoolOptions) and every facade
takes all of them; connection() is one implementation (issue 9)."""

from __future__ import annotations

import dataclasses
import inspect
import threading
from typing import Any, Callable, List

import psycopg2
import pytest

import pgreservoir.pool as compat
from pgreservoir import ConnectionPool, PoolOptions
from pgreservoir.options import DEFAULT_CONNECT_OPTIONS, OPTION_NAMES
from pgreservoir.testing import PostgresServer, TcpProxy
from support import DEADLINE, backend_pid, scalar, wait_until


def test_connection_pool_signature_lists_every_option() -> None:
    params = inspect.signature(ConnectionPool).parameters
    for field in dataclasses.fields(PoolOptions):
        assert field.name in params, field.name
        assert params[field.name].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["timeout"].default == 30.0
    assert params["connect_defaults"].default == dict(DEFAULT_CONNECT_OPTIONS)
    assert {"min_size", "max_size", "connection_class"} <= set(params)


def test_the_drop_in_options_are_the_same_declaration() -> None:
    assert issubclass(compat.PoolOptions, PoolOptions)
    assert {f.name for f in dataclasses.fields(compat.PoolOptions)} == OPTION_NAMES
    assert compat.PoolOptions().timeout == 0.0  # psycopg2's "exhausted at once"
    assert PoolOptions().timeout == 30.0
    # Validated by the one declaration, whichever class is built.
    for cls in (PoolOptions, compat.PoolOptions):
        with pytest.raises(ValueError, match="check_timeout must be > 0"):
            cls(check_timeout=0)
        with pytest.raises(TypeError, match="num_workers must be an int"):
            cls(num_workers=1.5)  # type: ignore[arg-type]


def test_sizes_in_the_drop_in_options_are_refused_with_a_hint(postgres_dsn: str) -> None:
    with pytest.raises(TypeError, match="the sizes are minconn and maxconn"):
        compat.ThreadedConnectionPool(1, 2, postgres_dsn, pool_options={"max_size": 5})


def test_the_drop_in_takes_reconnect_failed(postgres_server: PostgresServer) -> None:
    # Missing from the drop-in before issue 9: declared once, it is everywhere.
    called: List[Any] = []
    with TcpProxy.for_server(postgres_server, mode="refuse") as proxy:
        pool = compat.ThreadedConnectionPool(
            0,
            1,
            proxy.dsn_for(postgres_server),
            pool_options=compat.PoolOptions(
                reconnect_timeout=0.2, reconnect_failed=called.append
            ),
        )
        try:
            with pytest.raises(psycopg2.OperationalError):
                pool.getconn()  # opened inline, as psycopg2 does: the error is the caller's
            pool.minconn = 1  # now the background keeps trying, and gives up loudly
            wait_until(lambda: called == [pool], "reconnect_failed(pool)")
        finally:
            pool.closeall()


def test_connection_pool_takes_connect_defaults(postgres_dsn: str) -> None:
    # Missing from ConnectionPool before issue 9.
    defaults = {"application_name": "from-defaults"}
    pool = ConnectionPool(postgres_dsn, min_size=1, connect_defaults=defaults)
    try:
        assert "application_name=from-defaults" in repr(pool)
        assert "keepalives" not in repr(pool)  # the built-in defaults are replaced
        with pool.connection() as conn:
            assert scalar(conn, "SHOW application_name") == "from-defaults"
    finally:
        pool.close()


def test_an_option_name_is_never_a_connection_keyword(postgres_dsn: str) -> None:
    with pytest.raises(ValueError, match="invalid connection option"):
        ConnectionPool(postgres_dsn, max_sise=3)
    with pytest.raises(TypeError, match="pool_options=PoolOptions"):
        compat.ThreadedConnectionPool(1, 2, postgres_dsn, check_timeout=1.0)


@pytest.mark.parametrize("make", ["ConnectionPool", "ThreadedConnectionPool"])
def test_connection_block_behaves_the_same_in_both_facades(
    make: str, postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    # One connection() for both: commit on success, roll back on error, and
    # a disconnect inside the block closes that connection and makes the
    # idle ones get a round trip before their next use.
    factories: dict[str, Callable[[], Any]] = {
        "ConnectionPool": lambda: ConnectionPool(postgres_dsn, min_size=2, max_size=2),
        "ThreadedConnectionPool": lambda: compat.ThreadedConnectionPool(
            2, 2, postgres_dsn, pool_options=compat.PoolOptions(timeout=DEADLINE)
        ),
    }
    pool = factories[make]()
    try:
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (x int)")

        def insert_then_fail() -> None:
            with pool.connection() as conn:
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO t VALUES (1)")
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            insert_then_fail()
        with pool.connection() as conn:
            assert scalar(conn, "SELECT count(*) FROM t") == 0
        lost = threading.Event()
        pid = 0

        def lose_the_backend_inside() -> None:
            nonlocal conn, pid
            with pool.connection() as conn:
                pid = backend_pid(conn)
                with postgres_server.connect() as admin, admin.cursor() as cur:
                    cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
                wait_until(lambda: pid not in postgres_server.backend_pids(), "backend gone")
                lost.set()
                scalar(conn, "SELECT 1")

        with pytest.raises(psycopg2.OperationalError):
            lose_the_backend_inside()
        assert lost.is_set()
        assert conn.closed  # closed by the pool, not put back
        assert pool.stats()["connections_lost"] == 1
        with pool.connection() as conn:
            assert backend_pid(conn) != pid
    finally:
        if make == "ConnectionPool":
            pool.close()
        else:
            pool.closeall()
