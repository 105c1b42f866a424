"""NullConnectionPool and AsyncNullConnectionPool: a connection per client, kept only
to hand straight to a client already waiting."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, List

import pytest
from psycopg.pq import TransactionStatus

from ._support import DEADLINE, UNREACHABLE, async_pool, await_until, counter, pid, wait_until
from .conftest import Connections, Impl, run

MakePool = Callable[..., Any]

NULL = "NullConnectionPool"
ANULL = "AsyncNullConnectionPool"


def test_each_client_gets_a_new_connection_closed_at_return(
    make_pool: MakePool, connections: Connections
) -> None:
    pool = make_pool(NULL)
    assert connections() == 0  # opening connects nothing
    first = pool.getconn()
    assert first._pool is pool
    stats = pool.get_stats()
    assert (stats["pool_size"], stats["pool_available"]) == (1, 0)
    first.execute("SELECT 1")  # returned in a transaction: closed all the same
    pool.putconn(first)
    wait_until(lambda: bool(first.closed), "the returned connection to close")
    stats = pool.get_stats()
    assert (stats["pool_size"], stats["pool_available"]) == (0, 0)
    with pool.connection() as second:
        assert second is not first
        assert second.execute("SELECT 1").fetchone() == (1,)
    wait_until(lambda: bool(second.closed), "the returned connection to close")
    wait_until(lambda: connections() == 0, "no connection left")
    assert counter(pool.get_stats(), "connections_num") == 2


def test_no_limit_by_default(make_pool: MakePool) -> None:
    pool = make_pool(NULL)
    assert pool.max_size == 0
    conns = [pool.getconn(timeout=DEADLINE) for _ in range(5)]
    assert len({pid(conn) for conn in conns}) == 5
    assert pool.get_stats()["pool_size"] == 5
    for conn in conns:
        pool.putconn(conn)
    wait_until(lambda: pool.get_stats()["pool_size"] == 0, "every connection closed")


def test_max_size_makes_clients_wait(impl: Impl, make_pool: MakePool) -> None:
    pool = make_pool(NULL, max_size=1, name="null1")
    held = pool.getconn()
    with pytest.raises(impl.module.PoolTimeout) as info:
        pool.getconn(timeout=0.2)
    assert str(info.value) == "couldn't get a connection after 0.20 sec"
    pool.putconn(held)
    wait_until(lambda: bool(held.closed), "the connection to close (nobody waits now)")
    got: List[Any] = []
    again = pool.getconn(timeout=DEADLINE)
    thread = threading.Thread(target=lambda: got.append(pool.getconn(timeout=DEADLINE)))
    thread.start()
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 1, "the waiter to queue")
    again.execute("SELECT 1")
    pool.putconn(again)  # a client waits: handed over, cleaned, not closed
    thread.join(DEADLINE)
    assert got == [again]
    assert not again.closed
    assert again.info.transaction_status == TransactionStatus.IDLE
    pool.putconn(again)


def test_max_waiting(impl: Impl, make_pool: MakePool) -> None:
    pool = make_pool(NULL, max_size=1, max_waiting=1, name="nmw")
    held = pool.getconn()
    got: List[Any] = []
    thread = threading.Thread(target=lambda: got.append(pool.getconn(timeout=DEADLINE)))
    thread.start()
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 1, "the waiter to queue")
    with pytest.raises(impl.module.TooManyRequests) as info:
        pool.getconn()
    assert str(info.value) == "the pool 'nmw' has already 1 requests waiting"
    pool.putconn(held)
    thread.join(DEADLINE)
    pool.putconn(got[0])


def test_wait_checks_connectivity_without_keeping_a_connection(
    make_pool: MakePool, connections: Connections
) -> None:
    pool = make_pool(NULL)
    pool.wait(timeout=DEADLINE)
    stats = pool.get_stats()
    assert (stats["pool_size"], stats["pool_available"]) == (0, 0)
    assert counter(stats, "connections_num") == 1
    wait_until(lambda: connections() == 0, "the test connection to close")


def test_wait_on_an_unreachable_server(impl: Impl) -> None:
    pool = impl.module.NullConnectionPool(UNREACHABLE, open=True)
    try:
        with pytest.raises(impl.module.PoolTimeout) as info:
            pool.wait(timeout=0.5)
        assert str(info.value) == "pool initialization incomplete after 0.5 sec"
        assert pool.closed
    finally:
        pool.close()


def test_resize_changes_max_size_only(make_pool: MakePool) -> None:
    pool = make_pool(NULL, max_size=2)
    pool.resize(0, 5)
    assert (pool.min_size, pool.max_size) == (0, 5)
    with pytest.raises(ValueError, match=r"^null pools must have min_size = 0$"):
        pool.resize(1, 5)
    assert (pool.min_size, pool.max_size) == (0, 5)


def test_check_and_drain_are_harmless(make_pool: MakePool) -> None:
    pool = make_pool(NULL, max_size=2)
    held = pool.getconn()
    pool.check()
    pool.drain()
    assert held.execute("SELECT 1").fetchone() == (1,)
    pool.putconn(held)
    with pool.connection(timeout=DEADLINE) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_callbacks_run_per_connection(make_pool: MakePool) -> None:
    configured: List[int] = []
    checked: List[int] = []
    pool = make_pool(
        NULL, configure=lambda conn: configured.append(pid(conn)),
        check=lambda conn: checked.append(pid(conn)),
    )
    for _ in range(2):
        with pool.connection() as conn:
            assert configured[-1] == pid(conn)
            assert checked[-1] == pid(conn)
    assert len(set(configured)) == 2


def test_close_wakes_waiters(impl: Impl, make_pool: MakePool) -> None:
    pool = make_pool(NULL, max_size=1, name="ncw")
    held = pool.getconn()
    errors: List[BaseException] = []

    def take() -> None:
        try:
            pool.getconn(timeout=DEADLINE)
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=take)
    thread.start()
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 1, "the waiter to queue")
    pool.close(timeout=0.5)
    thread.join(DEADLINE)
    assert len(errors) == 1
    assert isinstance(errors[0], impl.module.PoolClosed)
    assert str(errors[0]) == "the pool 'ncw' is closed"
    pool.putconn(held)
    wait_until(lambda: bool(held.closed), "the connection to close")


# -- async ------------------------------------------------------------------------------------


def test_async_null_pool(impl: Impl, dsn: str) -> None:
    async def body() -> None:
        async with async_pool(impl, dsn, ANULL, max_size=1, name="anull") as pool:
            assert (pool.min_size, pool.max_size) == (0, 1)
            first = await pool.getconn()
            assert first._pool is pool
            with pytest.raises(impl.module.PoolTimeout) as info:
                await pool.getconn(timeout=0.2)
            assert str(info.value) == "couldn't get a connection after 0.20 sec"
            await pool.putconn(first)
            await await_until(lambda: bool(first.closed), "the connection to close")
            assert pool.get_stats()["pool_size"] == 0
            held = await pool.getconn()
            task = asyncio.create_task(pool.getconn(timeout=DEADLINE))
            await await_until(lambda: pool.get_stats()["requests_waiting"] == 1, "the waiter")
            await pool.putconn(held)
            assert await task is held  # handed over, not closed
            assert not held.closed
            await pool.putconn(held)
            await pool.wait(timeout=DEADLINE)
            await pool.resize(0, 3)
            assert pool.max_size == 3
            with pytest.raises(ValueError, match=r"^null pools must have min_size = 0$"):
                await pool.resize(2, 3)
            await pool.check()

    run(body())


def test_async_null_pool_no_limit(impl: Impl, dsn: str) -> None:
    async def body() -> None:
        async with async_pool(impl, dsn, ANULL) as pool:
            assert pool.max_size == 0
            conns = [await pool.getconn(timeout=DEADLINE) for _ in range(3)]
            assert len({pid(conn) for conn in conns}) == 3
            for conn in conns:
                await pool.putconn(conn)
            await await_until(lambda: all(conn.closed for conn in conns), "all closed")

    run(body())
