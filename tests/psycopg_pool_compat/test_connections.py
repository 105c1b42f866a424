"""Getting and returning connections: connection(), getconn/putconn, the connection protocol."""

from __future__ import annotations

import re
from typing import Any, Callable, List

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from pgreservoir.testing import PostgresServer

from ._support import DEADLINE, async_pool, await_until, counter, kill_backend, pid, wait_until
from .conftest import Impl, run

MakePool = Callable[..., Any]

IDLE = TransactionStatus.IDLE


def _foreign_message(pool: str, origin: str, conn: Any) -> str:
    return f"can't return connection to pool {pool!r}, {origin}: {conn}"


# -- connection() ---------------------------------------------------------------------


def test_connection_commits_on_success(make_pool: MakePool, table: str) -> None:
    pool = make_pool(min_size=1)
    with pool.connection() as conn:
        conn.execute(f"CREATE TABLE {table} (x int)")
        conn.execute(f"INSERT INTO {table} VALUES (1)")
    with pool.connection() as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)


def test_connection_rolls_back_on_error(make_pool: MakePool, table: str) -> None:
    pool = make_pool(min_size=1)
    with pool.connection() as conn:
        conn.execute(f"CREATE TABLE {table} (x int)")

    def insert_then_fail() -> None:
        with pool.connection() as conn:
            conn.execute(f"INSERT INTO {table} VALUES (1)")
            raise KeyError("boom")

    with pytest.raises(KeyError):
        insert_then_fail()
    with pool.connection() as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    assert pool.get_stats()["pool_available"] == 1


def test_connection_returns_the_connection(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1)
    with pool.connection() as conn:
        assert conn._pool is pool  # how psycopg knows the connection is pooled
        assert pool.get_stats()["pool_available"] == 0
    assert not conn.closed
    assert getattr(conn, "_pool", None) is None
    assert pool.get_stats()["pool_available"] == 1
    with pool.connection() as again:
        assert again is conn


def test_connection_with_a_dead_backend(make_pool: MakePool, server: PostgresServer) -> None:
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection() as conn:
        kill_backend(server, pid(conn))
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    # The broken connection is discarded and replaced.
    wait_until(lambda: counter(pool.get_stats(), "returns_bad") == 1, "returns_bad")
    with pool.connection(timeout=DEADLINE) as fresh:
        assert fresh is not conn
        assert fresh.execute("SELECT 1").fetchone() == (1,)


# -- getconn / putconn ------------------------------------------------------------------


def test_getconn_putconn(make_pool: MakePool) -> None:
    pool = make_pool(min_size=2)
    a = pool.getconn()
    b = pool.getconn()
    assert a is not b
    assert a._pool is pool
    assert isinstance(b, psycopg.Connection)
    assert a.info.transaction_status == IDLE
    assert pool.get_stats()["pool_available"] == 0
    pool.putconn(a)
    pool.putconn(b)
    assert pool.get_stats()["pool_available"] == 2
    assert getattr(a, "_pool", "missing") is None


def test_putconn_of_a_foreign_connection(make_pool: MakePool, dsn: str) -> None:
    pool = make_pool(min_size=1, name="mine")
    foreign = psycopg.connect(dsn)
    try:
        with pytest.raises(ValueError, match="doesn't come from any pool") as info:
            pool.putconn(foreign)
        assert str(info.value) == _foreign_message(
            "mine", "it doesn't come from any pool", foreign
        )
        assert not foreign.closed
    finally:
        foreign.close()
    assert pool.get_stats()["pool_available"] == 1


def test_putconn_of_another_pools_connection(make_pool: MakePool) -> None:
    mine = make_pool(min_size=1, name="mine")
    theirs = make_pool(min_size=1, name="theirs")
    conn = theirs.getconn()
    with pytest.raises(ValueError, match="it comes from pool 'theirs'") as info:
        mine.putconn(conn)
    assert str(info.value) == _foreign_message("mine", "it comes from pool 'theirs'", conn)
    assert conn._pool is theirs
    theirs.putconn(conn)


def test_putconn_twice(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, name="twice")
    conn = pool.getconn()
    pool.putconn(conn)
    with pytest.raises(ValueError, match=re.escape(
        "can't return connection to pool 'twice', it doesn't come from any pool: "
    )):
        pool.putconn(conn)
    assert pool.get_stats()["pool_available"] == 1
    assert pool.getconn() is conn
    pool.putconn(conn)


def test_with_conn_inside_the_pool_does_not_close_it(make_pool: MakePool, table: str) -> None:
    pool = make_pool(min_size=1)
    with pool.connection() as conn:
        with conn:
            conn.execute(f"CREATE TABLE {table} (x int)")
        assert not conn.closed  # committed, not closed
        assert conn.info.transaction_status == IDLE
        with conn:
            conn.execute(f"INSERT INTO {table} VALUES (1)")
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
    conn = pool.getconn()
    with conn:
        conn.execute("SELECT 1")
    assert not conn.closed
    pool.putconn(conn)
    assert pool.get_stats()["pool_available"] == 1


# -- what comes back --------------------------------------------------------------------


def test_returned_in_transaction_is_rolled_back_and_kept(make_pool: MakePool, table: str) -> None:
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection() as conn:
        conn.execute(f"CREATE TABLE {table} (x int)")
    conn = pool.getconn()
    conn.execute(f"INSERT INTO {table} VALUES (1)")
    assert conn.info.transaction_status == TransactionStatus.INTRANS
    pool.putconn(conn)
    again = pool.getconn(timeout=DEADLINE)
    assert again is conn
    assert again.info.transaction_status == IDLE
    assert again.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    pool.putconn(again)


def test_returned_in_error_is_rolled_back_and_kept(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn()
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute("SELECT 1 / 0")
    assert conn.info.transaction_status == TransactionStatus.INERROR
    pool.putconn(conn)
    again = pool.getconn(timeout=DEADLINE)
    assert again is conn
    assert again.info.transaction_status == IDLE
    pool.putconn(again)
    assert counter(pool.get_stats(), "returns_bad") == 0


def test_returned_closed_is_discarded(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn()
    conn.close()  # close_returns is off: this really closes it
    assert conn.closed
    pool.putconn(conn)
    wait_until(lambda: counter(pool.get_stats(), "returns_bad") == 1, "returns_bad")
    fresh = pool.getconn(timeout=DEADLINE)
    assert fresh is not conn
    assert fresh.execute("SELECT 1").fetchone() == (1,)
    pool.putconn(fresh)


def test_returned_broken_is_discarded(make_pool: MakePool, server: PostgresServer) -> None:
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn()
    old = pid(conn)
    kill_backend(server, old)
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    assert conn.broken
    pool.putconn(conn)
    wait_until(lambda: counter(pool.get_stats(), "returns_bad") == 1, "returns_bad")
    fresh = pool.getconn(timeout=DEADLINE)
    assert pid(fresh) != old
    pool.putconn(fresh)


# -- close_returns ------------------------------------------------------------------------


def test_close_returns(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_size=1, close_returns=True)
    assert pool.close_returns is True
    conn = pool.getconn()
    conn.execute("SELECT 1")  # a transaction: rolled back on the way back
    conn.close()
    assert not conn.closed
    assert getattr(conn, "_pool", None) is None
    again = pool.getconn(timeout=DEADLINE)
    assert again is conn
    assert again.info.transaction_status == IDLE
    pool.putconn(again)


def test_close_returns_to_a_closed_pool_closes(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, close_returns=True)
    conn = pool.getconn()
    pool.close(timeout=0.5)  # (pgreservoir closes what is still out after the timeout)
    conn.close()
    wait_until(lambda: bool(conn.closed), "the connection to close")


def test_close_without_close_returns_closes(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1)
    conn = pool.getconn()
    conn.close()
    assert conn.closed
    pool.putconn(conn)


# -- order --------------------------------------------------------------------------------


def test_idle_connections_are_handed_out_in_turn(make_pool: MakePool) -> None:
    pool = make_pool(min_size=3)
    served: List[int] = []
    for _ in range(6):
        with pool.connection() as conn:
            served.append(pid(conn))
    assert len(set(served[:3])) == 3
    assert served[3:] == served[:3]  # round robin: the longest idle goes first


def test_returned_connections_queue_at_the_back(make_pool: MakePool) -> None:
    pool = make_pool(min_size=3)
    a, b, c = pool.getconn(), pool.getconn(), pool.getconn()
    for conn in (c, a, b):
        pool.putconn(conn)
    assert [pool.getconn(), pool.getconn(), pool.getconn()] == [c, a, b]
    for conn in (a, b, c):
        pool.putconn(conn)


# -- async ----------------------------------------------------------------------------------


def test_async_connection_commit_and_rollback(impl: Impl, dsn: str, table: str) -> None:
    async def body() -> None:
        async with async_pool(impl, dsn, min_size=1) as pool:
            async with pool.connection() as conn:
                assert conn._pool is pool
                await conn.execute(f"CREATE TABLE {table} (x int)")
                await conn.execute(f"INSERT INTO {table} VALUES (1)")
            assert getattr(conn, "_pool", None) is None
            assert isinstance(conn, psycopg.AsyncConnection)

            async def insert_then_fail() -> None:
                async with pool.connection() as conn:
                    await conn.execute(f"INSERT INTO {table} VALUES (2)")
                    raise KeyError("boom")

            with pytest.raises(KeyError):
                await insert_then_fail()
            async with pool.connection() as conn:
                cur = await conn.execute(f"SELECT x FROM {table}")
                assert await cur.fetchall() == [(1,)]
            assert pool.get_stats()["pool_available"] == 1

    run(body())


def test_async_getconn_putconn_and_foreign(impl: Impl, dsn: str) -> None:
    async def body() -> None:
        async with async_pool(impl, dsn, min_size=2, name="amine") as pool:
            a = await pool.getconn()
            b = await pool.getconn()
            assert a is not b
            assert pool.get_stats()["pool_available"] == 0
            await pool.putconn(a)
            await pool.putconn(b)
            assert pool.get_stats()["pool_available"] == 2
            foreign = await psycopg.AsyncConnection.connect(dsn)
            try:
                with pytest.raises(ValueError, match="doesn't come from any pool") as info:
                    await pool.putconn(foreign)
                assert str(info.value) == _foreign_message(
                    "amine", "it doesn't come from any pool", foreign
                )
            finally:
                await foreign.close()
            with pytest.raises(ValueError, match="it doesn't come from any pool"):
                await pool.putconn(a)  # twice

    run(body())


def test_async_returned_in_transaction_is_rolled_back(impl: Impl, dsn: str) -> None:
    async def body() -> None:
        async with async_pool(impl, dsn, min_size=1) as pool:
            conn = await pool.getconn()
            async with conn:  # pooled: committed, not closed
                await conn.execute("SELECT 1")
            assert not conn.closed
            await conn.execute("SELECT 1")
            assert conn.info.transaction_status == TransactionStatus.INTRANS
            await pool.putconn(conn)
            again = await pool.getconn(timeout=DEADLINE)
            assert again is conn
            assert again.info.transaction_status == IDLE
            await pool.putconn(again)

    run(body())


def test_async_close_returns(impl: Impl, dsn: str) -> None:
    async def body() -> None:
        async with async_pool(impl, dsn, min_size=1, close_returns=True) as pool:
            conn = await pool.getconn()
            await conn.close()
            assert not conn.closed
            await await_until(lambda: pool.get_stats()["pool_available"] == 1, "the return")
            assert await pool.getconn(timeout=DEADLINE) is conn
            await pool.putconn(conn)

    run(body())


def test_async_idle_connections_are_handed_out_in_turn(impl: Impl, dsn: str) -> None:
    async def body() -> None:
        async with async_pool(impl, dsn, min_size=3) as pool:
            served: List[int] = []
            for _ in range(6):
                async with pool.connection() as conn:
                    served.append(pid(conn))
            assert len(set(served[:3])) == 3
            assert served[3:] == served[:3]

    run(body())


# -- connection parameters read at every connect ----------------------------------------


def _application_name(conn: Any) -> str:
    row = conn.execute("SHOW application_name").fetchone()
    assert row is not None
    return str(row[0])


def test_conninfo_changed_then_drain(make_pool: MakePool, dsn: str) -> None:
    # Credential rotation as psycopg_pool users do it: change, then drain().
    pool = make_pool(min_size=1, max_size=1)
    pool.conninfo = f"{dsn} application_name=rotated"
    pool.drain()
    wait_until(lambda: pool.get_stats()["pool_available"] == 1, "the replacement connection")
    with pool.connection(timeout=DEADLINE) as conn:
        assert _application_name(conn) == "rotated"


def test_kwargs_changed_then_drain(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_size=1, kwargs={"application_name": "before"})
    with pool.connection(timeout=DEADLINE) as conn:
        assert _application_name(conn) == "before"
    pool.kwargs = {"application_name": "after"}
    pool.drain()
    wait_until(lambda: pool.get_stats()["pool_available"] == 1, "the replacement connection")
    with pool.connection(timeout=DEADLINE) as conn:
        assert _application_name(conn) == "after"


def test_async_conninfo_and_kwargs_changed_then_drain(impl: Impl, dsn: str) -> None:
    async def name(pool: Any) -> str:
        async with pool.connection(timeout=DEADLINE) as conn:
            cur = await conn.execute("SHOW application_name")
            row = await cur.fetchone()
            return str(row[0])

    async def body() -> None:
        async with async_pool(impl, dsn, min_size=1, max_size=1) as pool:
            pool.conninfo = f"{dsn} application_name=rotated"
            await pool.drain()
            await await_until(lambda: pool.get_stats()["pool_available"] == 1, "a new one")
            assert await name(pool) == "rotated"
            pool.kwargs = {"application_name": "from_kwargs"}
            await pool.drain()
            await await_until(lambda: pool.get_stats()["pool_available"] == 1, "a new one")
            assert await name(pool) == "from_kwargs"

    run(body())
