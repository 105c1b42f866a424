"""configure / check / reset callbacks, conninfo and kwargs callables, connection_class,
reconnect_failed: sync callbacks for the sync pools, async ones (or sync, where
psycopg_pool accepts both) for the async pools."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, List

import psycopg
import pytest

from pgreservoir.testing import PostgresServer

from ._support import (
    DEADLINE,
    UNREACHABLE,
    async_pool,
    await_until,
    counter,
    kill_backend,
    pid,
    wait_until,
)
from .conftest import Impl, run

MakePool = Callable[..., Any]


class MyConnection(psycopg.Connection[Any]):
    """A connection_class, to see it reach the pool's connect."""


class MyAsyncConnection(psycopg.AsyncConnection[Any]):
    """An async connection_class."""


def _setting(conn: Any, name: str) -> str:
    row = conn.execute(f"SHOW {name}").fetchone()
    return str(row[0])


# -- conninfo, kwargs, connection_class ---------------------------------------------------


def test_kwargs_reach_connect(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, kwargs={"application_name": "from-kwargs", "autocommit": True})
    with pool.connection() as conn:
        assert _setting(conn, "application_name") == "from-kwargs"
        assert conn.autocommit is True


def test_conninfo_and_kwargs_callables(make_pool: MakePool, dsn: str) -> None:
    calls: List[str] = []
    lock = threading.Lock()

    def conninfo() -> str:
        with lock:
            calls.append("conninfo")
        return dsn

    def kwargs() -> Any:
        with lock:
            calls.append("kwargs")
        return {"application_name": "computed"}

    pool = make_pool(conninfo=conninfo, kwargs=kwargs, min_size=2)
    # Called for every connection made, not once.
    assert calls.count("conninfo") >= 2
    assert calls.count("kwargs") >= 2
    with pool.connection() as conn:
        assert _setting(conn, "application_name") == "computed"


def test_connection_class(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, connection_class=MyConnection)
    assert pool.connection_class is MyConnection
    with pool.connection() as conn:
        assert type(conn) is MyConnection


# -- configure ------------------------------------------------------------------------------


def test_configure_runs_once_per_new_connection(make_pool: MakePool) -> None:
    configured: List[int] = []

    def configure(conn: Any) -> None:
        configured.append(pid(conn))
        conn.execute("SET application_name = 'configured'")
        conn.commit()

    pool = make_pool(min_size=2, configure=configure)
    assert len(configured) == 2
    for _ in range(4):
        with pool.connection() as conn:
            assert pid(conn) in configured
            assert _setting(conn, "application_name") == "configured"
    assert len(configured) == 2  # not again on reuse


def test_configure_may_set_autocommit(make_pool: MakePool) -> None:
    def configure(conn: Any) -> None:
        conn.autocommit = True

    pool = make_pool(min_size=1, configure=configure)
    with pool.connection() as conn:
        assert conn.autocommit is True


def test_configure_leaving_a_transaction_discards_the_connection(
    impl: Impl, make_pool: MakePool
) -> None:
    def configure(conn: Any) -> None:
        conn.execute("SELECT 1")  # leaves a transaction open

    pool = make_pool(min_size=1, configure=configure, wait=False)
    with pytest.raises(impl.module.PoolTimeout) as info:
        pool.getconn(timeout=0.5)
    assert str(info.value).startswith("couldn't get a connection after 0.50 sec")
    wait_until(lambda: counter(pool.get_stats(), "connections_num") >= 1, "a connect")


# -- check ----------------------------------------------------------------------------------


def test_check_runs_before_every_hand_out(make_pool: MakePool) -> None:
    checked: List[int] = []
    pool = make_pool(min_size=1, check=lambda conn: checked.append(pid(conn)))
    for expected in (1, 2, 3):
        with pool.connection() as conn:
            assert checked == [pid(conn)] * expected


def test_check_connection_as_check_replaces_a_dead_connection(
    impl: Impl, make_pool: MakePool, server: PostgresServer
) -> None:
    pool = make_pool(min_size=1, max_size=1, check=impl.module.ConnectionPool.check_connection)
    with pool.connection() as conn:
        old = pid(conn)
    kill_backend(server, old)
    with pool.connection(timeout=DEADLINE) as conn:
        assert pid(conn) != old
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_failing_check_is_retried_within_the_timeout(impl: Impl, make_pool: MakePool) -> None:
    failures = [1]

    def check(conn: Any) -> None:
        if failures[0]:
            failures[0] -= 1
            raise psycopg.OperationalError("not today")

    pool = make_pool(min_size=2, check=check)
    with pool.connection(timeout=DEADLINE) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert failures == [0]


def test_check_connection(impl: Impl, make_pool: MakePool) -> None:
    pool = make_pool(min_size=1)
    conn = pool.getconn()
    assert impl.module.ConnectionPool.check_connection(conn) is None
    assert conn.autocommit is False  # restored
    pool.putconn(conn)
    other = psycopg.connect(pool.conninfo)
    other.close()
    with pytest.raises(psycopg.OperationalError):
        impl.module.ConnectionPool.check_connection(other)


# -- reset ----------------------------------------------------------------------------------


def test_reset_runs_at_every_return(make_pool: MakePool) -> None:
    resets: List[int] = []

    def reset(conn: Any) -> None:
        resets.append(pid(conn))
        conn.execute("RESET application_name")
        conn.commit()

    pool = make_pool(min_size=1, max_size=1, reset=reset, kwargs={"application_name": "base"})
    with pool.connection() as conn:
        conn.execute("SET application_name = 'dirty'")
        first = pid(conn)
    with pool.connection(timeout=DEADLINE) as conn:  # served after the reset
        assert resets == [first]
        assert pid(conn) == first
        assert _setting(conn, "application_name") == "base"
    wait_until(lambda: len(resets) == 2, "the second reset")


def test_failing_reset_discards_the_connection(make_pool: MakePool) -> None:
    def reset(conn: Any) -> None:
        raise RuntimeError("cannot reset")

    pool = make_pool(min_size=1, max_size=1, reset=reset)
    conn = pool.getconn()
    pool.putconn(conn)
    wait_until(lambda: bool(conn.closed), "the connection to be closed")
    with pool.connection(timeout=DEADLINE) as fresh:
        assert fresh is not conn
        assert fresh.execute("SELECT 1").fetchone() == (1,)


def test_reset_leaving_a_transaction_discards_the_connection(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_size=1, reset=lambda conn: conn.execute("SELECT 1"))
    conn = pool.getconn()
    pool.putconn(conn)
    wait_until(lambda: bool(conn.closed), "the connection to be closed")
    with pool.connection(timeout=DEADLINE) as fresh:
        assert fresh is not conn


# -- reconnect_failed ------------------------------------------------------------------------


def test_reconnect_failed(impl: Impl) -> None:
    called: List[Any] = []
    pool = impl.module.ConnectionPool(
        UNREACHABLE, open=True, min_size=1, reconnect_timeout=0.3,
        reconnect_failed=called.append,
    )
    try:
        wait_until(lambda: bool(called), "reconnect_failed to be called")
        assert called[0] is pool
        assert counter(pool.get_stats(), "connections_errors") >= 1
    finally:
        pool.close()


# -- async ------------------------------------------------------------------------------------


def test_async_callbacks(impl: Impl, dsn: str) -> None:
    calls: List[str] = []

    async def conninfo() -> str:
        calls.append("conninfo")
        return dsn

    async def kwargs() -> Any:
        calls.append("kwargs")
        return {"application_name": "async-kwargs"}

    async def configure(conn: Any) -> None:
        calls.append("configure")
        await conn.set_autocommit(True)

    async def check(conn: Any) -> None:
        calls.append("check")

    async def reset(conn: Any) -> None:
        calls.append("reset")
        await conn.execute("RESET application_name")

    async def body() -> None:
        async with async_pool(
            impl, conninfo, kwargs=kwargs, min_size=1, configure=configure, check=check,
            reset=reset,
        ) as pool:
            assert calls == ["conninfo", "kwargs", "configure"]
            async with pool.connection() as conn:
                assert conn.autocommit is True
                cur = await conn.execute("SHOW application_name")
                assert await cur.fetchone() == ("async-kwargs",)
                assert calls[-1] == "check"
            await await_until(lambda: calls[-1] == "reset", "the reset")

    run(body())


def test_async_pool_accepts_sync_conninfo_and_kwargs_callables(
    impl: Impl, dsn: str
) -> None:
    async def body() -> None:
        async with async_pool(
            impl, lambda: dsn, kwargs=lambda: {"application_name": "sync-kwargs"},
            min_size=1, connection_class=MyAsyncConnection,
        ) as pool, pool.connection() as conn:
            assert type(conn) is MyAsyncConnection
            cur = await conn.execute("SHOW application_name")
            assert await cur.fetchone() == ("sync-kwargs",)

    run(body())


def test_async_check_connection_replaces_a_dead_connection(
    impl: Impl, dsn: str, server: PostgresServer
) -> None:
    check = impl.module.AsyncConnectionPool.check_connection

    async def body() -> None:
        async with async_pool(impl, dsn, min_size=1, max_size=1, check=check) as pool:
            conn = await pool.getconn()
            assert await check(conn) is None
            assert conn.autocommit is False
            old = pid(conn)
            await pool.putconn(conn)
            await asyncio.to_thread(kill_backend, server, old)
            async with pool.connection(timeout=DEADLINE) as fresh:
                assert pid(fresh) != old

    run(body())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_async_reconnect_failed(impl: Impl, kind: str) -> None:
    called: List[Any] = []

    async def async_callback(pool: Any) -> None:
        called.append(pool)

    callback = called.append if kind == "sync" else async_callback

    async def body() -> None:
        async with async_pool(
            impl, UNREACHABLE, wait=False, min_size=1, reconnect_timeout=0.3,
            reconnect_failed=callback,
        ) as pool:
            await await_until(lambda: bool(called), "reconnect_failed to be called")
            assert called[0] is pool

    run(body())
