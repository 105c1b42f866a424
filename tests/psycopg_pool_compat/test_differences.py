"""Where pgreservoir.psycopg_pool deliberately differs from psycopg_pool.

Each test runs against both modules and asserts each one's own behaviour, so
the suite proves both what psycopg_pool does and what the drop-in does
instead. Every difference is listed at the end of docs/psycopg_pool-spec.md
("Intended differences"): pgreservoir keeps its own guarantees (README, "What
the pool guarantees") behind psycopg_pool's interface.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any, Callable

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from pgreservoir.testing import PostgresServer, TcpProxy

from ._support import DEADLINE, async_pool, await_until, counter, kill_backend, pid, wait_until
from .conftest import Impl, run

MakePool = Callable[..., Any]


# -- no dead connection is handed out ----------------------------------------------------


def test_dead_idle_connection_at_checkout(
    impl: Impl, make_pool: MakePool, server: PostgresServer
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection() as conn:
        old = pid(conn)
    kill_backend(server, old)
    conn = pool.getconn(timeout=DEADLINE)
    if impl.ours:
        # Probed before hand-out: a working connection, without error.
        assert pid(conn) != old
        assert conn.execute("SELECT 1").fetchone() == (1,)
        pool.putconn(conn)
    else:
        # psycopg_pool hands the dead connection out; the caller's query fails.
        assert pid(conn) == old
        assert not conn.closed
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        pool.putconn(conn)
        wait_until(lambda: counter(pool.get_stats(), "returns_bad") == 1, "returns_bad")
    with pool.connection(timeout=DEADLINE) as fresh:  # either way, then a working one
        assert fresh.execute("SELECT 1").fetchone() == (1,)


def test_async_dead_idle_connection_at_checkout(
    impl: Impl, dsn: str, server: PostgresServer
) -> None:
    async def body() -> None:
        async with async_pool(impl, dsn, min_size=1, max_size=1) as pool:
            async with pool.connection() as conn:
                old = pid(conn)
            await asyncio.to_thread(kill_backend, server, old)
            conn = await pool.getconn(timeout=DEADLINE)
            try:
                if impl.ours:
                    assert pid(conn) != old
                    await conn.execute("SELECT 1")
                else:
                    assert pid(conn) == old
                    with pytest.raises(psycopg.OperationalError):
                        await conn.execute("SELECT 1")
            finally:
                await pool.putconn(conn)

    run(body())


def test_expired_idle_connection_at_checkout(impl: Impl, make_pool: MakePool) -> None:
    lifetime = 0.3
    pool = make_pool(min_size=1, max_size=1, max_lifetime=lifetime)
    with pool.connection() as conn:
        old = pid(conn)
    past = time.monotonic() + lifetime  # the connection was born before now
    wait_until(lambda: time.monotonic() > past, "the lifetime to pass")
    conn = pool.getconn(timeout=DEADLINE)
    if impl.ours:
        assert pid(conn) != old  # an expired connection is replaced at checkout
        pool.putconn(conn)
    else:
        # psycopg_pool looks at lifetimes only at return (and in check()).
        assert pid(conn) == old
        pool.putconn(conn)
        wait_until(lambda: bool(conn.closed), "the expired connection to close at return")


# -- waiters who gave up are gone -----------------------------------------------------------


def test_timed_out_waiters_leave_the_line(impl: Impl, make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_waiting=1, name="stale")
    held = pool.getconn()
    with pytest.raises(impl.module.PoolTimeout):
        pool.getconn(timeout=0.1)
    if impl.ours:
        assert pool.get_stats()["requests_waiting"] == 0
        with pytest.raises(impl.module.PoolTimeout):
            pool.getconn(timeout=0.1)  # allowed to wait: nobody else does
    else:
        # psycopg_pool leaves the timed-out waiter in its queue until a connection is
        # returned: it is counted as waiting and fills the max_waiting line.
        assert pool.get_stats()["requests_waiting"] == 1
        with pytest.raises(impl.module.TooManyRequests) as info:
            pool.getconn(timeout=0.1)
        assert str(info.value) == "the pool 'stale' has already 1 requests waiting"
    pool.putconn(held)
    assert pool.get_stats()["requests_waiting"] == 0
    assert pool.getconn(timeout=DEADLINE) is held
    pool.putconn(held)


def test_getconn_timeout_zero_with_an_idle_connection(impl: Impl, make_pool: MakePool) -> None:
    pool = make_pool(min_size=1)
    if impl.ours:
        conn = pool.getconn(timeout=0)  # 0: do not wait in line; an idle one is served
        pool.putconn(conn)
    else:
        # psycopg_pool refuses any timeout <= 0 before looking at its idle connections.
        with pytest.raises(impl.module.PoolTimeout) as info:
            pool.getconn(timeout=0)
        assert str(info.value) == "couldn't get a connection after 0.00 sec"
    assert pool.get_stats()["pool_available"] == 1


# -- every step at return is bounded --------------------------------------------------------


def test_rollback_at_return_is_bounded(
    impl: Impl, make_pool: MakePool, server: PostgresServer
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn()
    conn.execute("SELECT 1")  # a transaction for putconn to roll back
    backend = pid(conn)
    returned = threading.Event()

    def give_back() -> None:
        pool.putconn(conn)
        returned.set()

    thread = threading.Thread(target=give_back, daemon=True)
    os.kill(backend, signal.SIGSTOP)  # the backend cannot answer the ROLLBACK
    try:
        thread.start()
        if impl.ours:
            # The rollback gets check_timeout (5 s): then the connection is closed,
            # its slot freed, and a new connection serves the next caller.
            assert returned.wait(DEADLINE)
            wait_until(lambda: bool(conn.closed), "the unanswered connection to close")
            with pool.connection(timeout=DEADLINE) as fresh:
                assert pid(fresh) != backend
        else:
            # psycopg_pool waits for the ROLLBACK as long as the server takes.
            wait_until(
                lambda: conn.pgconn.transaction_status == TransactionStatus.ACTIVE,
                "the ROLLBACK to be sent",
            )
            assert not returned.is_set()
            assert thread.is_alive()
    finally:
        os.kill(backend, signal.SIGCONT)
    thread.join(DEADLINE)
    assert not thread.is_alive()


# -- close is complete --------------------------------------------------------------------


def test_close_and_connections_still_in_use(impl: Impl, make_pool: MakePool) -> None:
    pool = make_pool(min_size=1)
    conn = pool.getconn()
    started = time.monotonic()
    pool.close(timeout=0.5)
    assert time.monotonic() - started < DEADLINE
    if impl.ours:
        # What is still out when the timeout ends is force-closed.
        wait_until(lambda: bool(conn.closed), "the connection still out to be closed")
    else:
        # psycopg_pool leaves it to its user: usable until given back.
        assert not conn.closed
        assert conn.execute("SELECT 1").fetchone() == (1,)
    pool.putconn(conn)  # either way no error, and the connection ends closed
    wait_until(lambda: bool(conn.closed), "the returned connection to close")


def test_async_close_and_connections_still_in_use(impl: Impl, dsn: str) -> None:
    async def body() -> None:
        async with async_pool(impl, dsn, min_size=1) as pool:
            conn = await pool.getconn()
            await pool.close(timeout=0.5)
        if impl.ours:
            await await_until(lambda: bool(conn.closed), "the connection still out to close")
        else:
            assert not conn.closed
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
        await pool.putconn(conn)
        await await_until(lambda: bool(conn.closed), "the returned connection to close")

    run(body())


# -- connection(): the rollback after an exception is bounded ------------------------------

#: The drop-in's bound on the rollback at return (pgreservoir's check_timeout, 5 s),
#: with a margin for a loaded machine. psycopg_pool's rollback has no bound at all.
ROLLBACK_BOUND = 5.0 + 20.0
#: How long psycopg_pool's rollback is watched (past the drop-in's 5 s) to see it stuck.
STUCK_AFTER = 5.0 + 3.0


class _Boom(Exception):
    pass


def test_connection_block_raising_on_a_black_holed_link(
    impl: Impl, server: PostgresServer
) -> None:
    with TcpProxy.for_server(server) as proxy:
        pool = impl.module.ConnectionPool(
            proxy.dsn_for(server), min_size=1, max_size=1, open=True
        )
        try:
            pool.wait(timeout=DEADLINE)
            entered = threading.Event()
            outcome: list[BaseException] = []

            def client() -> None:
                try:
                    with pool.connection(timeout=DEADLINE) as conn:
                        conn.execute("SELECT 1")  # a transaction is open
                        proxy.set_mode("blackhole")
                        entered.set()
                        raise _Boom
                except BaseException as exc:
                    outcome.append(exc)

            thread = threading.Thread(target=client, daemon=True)
            thread.start()
            assert entered.wait(DEADLINE)
            thread.join(ROLLBACK_BOUND if impl.ours else STUCK_AFTER)
            if impl.ours:
                # The rollback ran bounded in putconn(): the block raised its own error.
                assert not thread.is_alive(), "connection() did not return within its bound"
                assert len(outcome) == 1
                assert isinstance(outcome[0], _Boom)
                proxy.set_mode("pass")
                with pool.connection(timeout=DEADLINE) as conn:  # its slot was freed
                    assert conn.execute("SELECT 1").fetchone() == (1,)
            else:
                # psycopg_pool rolls back in `with conn:`, unbounded: still stuck.
                assert thread.is_alive()
                proxy.set_mode("reset")  # the connection fails: the block ends
                thread.join(DEADLINE)
                assert not thread.is_alive()
        finally:
            proxy.set_mode("pass")
            pool.close()


def test_async_connection_block_raising_on_a_black_holed_link(
    impl: Impl, server: PostgresServer
) -> None:
    async def body() -> None:
        with TcpProxy.for_server(server) as proxy:
            async with async_pool(impl, proxy.dsn_for(server), min_size=1, max_size=1) as pool:

                async def client() -> None:
                    async with pool.connection(timeout=DEADLINE) as conn:
                        await conn.execute("SELECT 1")
                        await asyncio.to_thread(proxy.set_mode, "blackhole")
                        raise _Boom

                task = asyncio.ensure_future(client())
                bound = ROLLBACK_BOUND if impl.ours else STUCK_AFTER
                done, _ = await asyncio.wait({task}, timeout=bound)
                try:
                    if impl.ours:
                        assert done, "connection() did not return within its bound"
                        assert isinstance(task.exception(), _Boom)
                        await asyncio.to_thread(proxy.set_mode, "pass")
                        async with pool.connection(timeout=DEADLINE) as conn:
                            await conn.execute("SELECT 1")
                    else:
                        assert not done  # psycopg_pool: still rolling back, unbounded
                        await asyncio.to_thread(proxy.set_mode, "reset")
                        await asyncio.wait({task}, timeout=DEADLINE)
                        assert task.done()
                        task.exception()  # (retrieved)
                finally:
                    await asyncio.to_thread(proxy.set_mode, "pass")

    run(body())
