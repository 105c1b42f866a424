"""resize, check, drain, stats, max_lifetime, max_idle, num_workers."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable, List

import pytest

from pgreservoir.testing import PostgresServer

from ._support import (
    COUNTERS,
    DEADLINE,
    GAUGES,
    async_pool,
    await_until,
    backend_alive,
    counter,
    kill_backend,
    pid,
    wait_until,
)
from .conftest import Connections, Impl, run

MakePool = Callable[..., Any]


def _idle_pids(pool: Any, count: int) -> List[int]:
    """Backend pids of ``count`` connections taken from ``pool`` and given back."""
    conns = [pool.getconn(timeout=DEADLINE) for _ in range(count)]
    pids = [pid(conn) for conn in conns]
    for conn in conns:
        pool.putconn(conn)
    return pids


# -- resize ---------------------------------------------------------------------------------


def test_resize_grows_to_the_new_min_size(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_size=2)
    pool.resize(3, 5)
    assert (pool.min_size, pool.max_size) == (3, 5)
    stats = pool.get_stats()
    assert (stats["pool_min"], stats["pool_max"]) == (3, 5)
    wait_until(lambda: pool.get_stats()["pool_available"] == 3, "the pool to grow to 3")
    pool.resize(2)  # max_size None: the same as min_size
    assert (pool.min_size, pool.max_size) == (2, 2)


def test_resize_validates_like_the_constructor(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_size=2)
    with pytest.raises(ValueError, match=r"^max_size must be greater or equal than min_size$"):
        pool.resize(3, 2)
    with pytest.raises(ValueError, match=r"^min_size cannot be negative$"):
        pool.resize(-1)
    with pytest.raises(ValueError, match=r"^if min_size is 0 max_size must be greater than 0$"):
        pool.resize(0)
    assert (pool.min_size, pool.max_size) == (1, 2)  # unchanged


def test_pool_grows_for_waiting_clients_up_to_max_size(
    impl: Impl, make_pool: MakePool
) -> None:
    pool = make_pool(min_size=1, max_size=3)
    conns = [pool.getconn(timeout=DEADLINE) for _ in range(3)]
    assert len({id(conn) for conn in conns}) == 3
    assert pool.get_stats()["pool_size"] == 3
    with pytest.raises(impl.module.PoolTimeout):
        pool.getconn(timeout=0.2)  # never past max_size
    for conn in conns:
        pool.putconn(conn)
    assert pool.get_stats()["pool_available"] == 3


# -- check ----------------------------------------------------------------------------------


def test_check_replaces_dead_idle_connections(make_pool: MakePool, server: PostgresServer) -> None:
    pool = make_pool(min_size=2)
    pids = _idle_pids(pool, 2)
    kill_backend(server, pids[0])
    pool.check()
    wait_until(lambda: pool.get_stats()["pool_available"] == 2, "the pool to refill")
    assert counter(pool.get_stats(), "connections_lost") == 1
    now = _idle_pids(pool, 2)
    assert pids[0] not in now
    assert pids[1] in now
    assert all(backend_alive(server, backend) for backend in now)


def test_check_leaves_connections_in_use_alone(make_pool: MakePool) -> None:
    pool = make_pool(min_size=2)
    conn = pool.getconn()
    conn.execute("SELECT 1")  # in a transaction: check() must not touch it
    pool.check()
    assert conn.execute("SELECT 2").fetchone() == (2,)
    pool.putconn(conn)
    wait_until(lambda: pool.get_stats()["pool_available"] == 2, "both back")


# -- drain ----------------------------------------------------------------------------------


def test_drain_replaces_every_connection(make_pool: MakePool, server: PostgresServer) -> None:
    pool = make_pool(min_size=2)
    out = pool.getconn()
    idle = pool.getconn()
    old = {pid(out), pid(idle)}
    pool.putconn(idle)
    pool.drain()
    wait_until(lambda: bool(idle.closed), "the idle connection to close")
    assert not out.closed  # in use: closed when it comes back
    assert out.execute("SELECT 1").fetchone() == (1,)
    pool.putconn(out)
    wait_until(lambda: bool(out.closed), "the returned connection to close")
    wait_until(lambda: pool.get_stats()["pool_available"] == 2, "the pool to refill")
    assert not old & set(_idle_pids(pool, 2))


# -- stats ----------------------------------------------------------------------------------


def test_stats_keys_and_gauges(make_pool: MakePool) -> None:
    pool = make_pool(min_size=2, max_size=3)
    stats = pool.get_stats()
    assert set(stats) >= GAUGES
    assert set(stats) <= GAUGES | COUNTERS
    assert stats["pool_min"] == 2
    assert stats["pool_max"] == 3
    assert stats["pool_size"] == 2
    assert stats["pool_available"] == 2
    assert stats["requests_waiting"] == 0
    assert counter(stats, "connections_num") == 2
    assert counter(stats, "requests_num") == 0
    assert all(isinstance(value, int) for value in stats.values())
    conn = pool.getconn()
    stats = pool.get_stats()
    assert (stats["pool_size"], stats["pool_available"]) == (2, 1)
    assert counter(stats, "requests_num") == 1
    pool.putconn(conn)


def test_pop_stats_resets_the_counters(impl: Impl, make_pool: MakePool) -> None:
    pool = make_pool(min_size=1)
    with pool.connection():
        pass
    held = pool.getconn()
    with pytest.raises(impl.module.PoolTimeout):
        pool.getconn(timeout=0.1)
    pool.putconn(held)
    popped = pool.pop_stats()
    assert set(popped) >= GAUGES
    assert set(popped) <= GAUGES | COUNTERS
    assert counter(popped, "requests_num") == 3
    assert counter(popped, "requests_queued") == 1
    assert counter(popped, "requests_errors") == 1
    assert counter(popped, "requests_wait_ms") > 0
    assert counter(popped, "connections_num") == 1
    assert "usage_ms" in popped
    after = pool.get_stats()
    assert all(counter(after, key) == 0 for key in COUNTERS)
    assert after["pool_min"] == 1
    assert after["pool_available"] == 1  # gauges are not reset
    pool.putconn(pool.getconn())
    assert counter(pool.get_stats(), "requests_num") == 1


def test_requests_waiting_is_a_gauge(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1)
    held = pool.getconn()
    got: List[Any] = []
    thread = threading.Thread(target=lambda: got.append(pool.getconn(timeout=DEADLINE)))
    thread.start()
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 1, "the waiter")
    pool.putconn(held)
    thread.join(DEADLINE)
    assert got == [held]
    assert pool.get_stats()["requests_waiting"] == 0
    assert counter(pool.get_stats(), "requests_queued") == 1
    pool.putconn(held)


# -- lifetimes ------------------------------------------------------------------------------


def test_max_lifetime_expired_connection_is_replaced_at_return(make_pool: MakePool) -> None:
    lifetime = 0.3
    pool = make_pool(min_size=1, max_size=1, max_lifetime=lifetime)
    conn = pool.getconn()
    born = time.monotonic()  # the connection is at least this old from here on
    first = pid(conn)
    wait_until(lambda: time.monotonic() > born + lifetime, "the lifetime to pass")
    pool.putconn(conn)
    wait_until(lambda: bool(conn.closed), "the expired connection to close")
    with pool.connection(timeout=DEADLINE) as fresh:
        assert pid(fresh) != first


def test_max_idle_shrinks_back_to_min_size(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_size=3, max_idle=0.2)
    conns = [pool.getconn(timeout=DEADLINE) for _ in range(3)]
    for conn in conns:
        pool.putconn(conn)
    wait_until(lambda: pool.get_stats()["pool_size"] == 1, "the pool to shrink to min_size")
    # (The size counts a connection out as its close begins: wait for the closes.)
    wait_until(lambda: sum(bool(conn.closed) for conn in conns) == 2, "two connections closed")
    assert pool.get_stats()["pool_available"] == 1


def test_min_size_is_kept(make_pool: MakePool, connections: Connections) -> None:
    pool = make_pool(min_size=2, max_size=2)
    conn = pool.getconn()
    conn.close()
    pool.putconn(conn)  # a lost connection is replaced
    wait_until(lambda: pool.get_stats()["pool_available"] == 2, "the pool to refill")
    wait_until(lambda: connections() == 2, "the closed connection's backend to exit")


@pytest.mark.parametrize("workers", [1, 5])
def test_num_workers(make_pool: MakePool, workers: int) -> None:
    pool = make_pool(min_size=3, num_workers=workers)
    assert pool.num_workers == workers
    assert pool.get_stats()["pool_available"] == 3


# -- async ----------------------------------------------------------------------------------


def test_async_resize_check_drain(impl: Impl, dsn: str, server: PostgresServer) -> None:
    async def body() -> None:
        async with async_pool(impl, dsn, min_size=1, max_size=2) as pool:
            await pool.resize(2, 4)
            assert (pool.min_size, pool.max_size) == (2, 4)
            with pytest.raises(ValueError, match=r"^min_size cannot be negative$"):
                await pool.resize(-1)
            await pool.resize(2)  # (psycopg_pool's check() grows a pool below max_size)
            assert (pool.min_size, pool.max_size) == (2, 2)
            await await_until(lambda: pool.get_stats()["pool_available"] == 2, "growth")
            conns = [await pool.getconn(), await pool.getconn()]
            pids = [pid(conn) for conn in conns]
            for conn in conns:
                await pool.putconn(conn)
            await asyncio.to_thread(kill_backend, server, pids[0])
            await pool.check()
            await await_until(lambda: pool.get_stats()["pool_available"] == 2, "the refill")
            assert counter(pool.get_stats(), "connections_lost") == 1
            idle = await pool.getconn()
            await pool.putconn(idle)
            assert pid(idle) != pids[0]
            await pool.drain()
            await await_until(lambda: bool(idle.closed), "the drained connection to close")
            await await_until(lambda: pool.get_stats()["pool_available"] == 2, "the refill")

    run(body())


def test_async_stats(impl: Impl, dsn: str) -> None:
    async def body() -> None:
        async with async_pool(impl, dsn, min_size=1) as pool:
            async with pool.connection():
                pass
            popped = pool.pop_stats()
            assert GAUGES <= set(popped) <= GAUGES | COUNTERS
            assert counter(popped, "requests_num") == 1
            assert counter(popped, "connections_num") == 1
            after = pool.get_stats()
            assert all(counter(after, key) == 0 for key in COUNTERS)
            assert after["pool_available"] == 1

    run(body())


def test_async_max_lifetime(impl: Impl, dsn: str) -> None:
    lifetime = 0.3

    async def body() -> None:
        async with async_pool(impl, dsn, min_size=1, max_lifetime=lifetime) as pool:
            conn = await pool.getconn()
            born = time.monotonic()
            await await_until(lambda: time.monotonic() > born + lifetime, "the lifetime")
            await pool.putconn(conn)
            await await_until(lambda: bool(conn.closed), "the expired connection to close")
            async with pool.connection(timeout=DEADLINE) as fresh:
                assert fresh is not conn

    run(body())
