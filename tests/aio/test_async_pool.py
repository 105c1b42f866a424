"""AsyncConnectionPool against a real PostgreSQL server: the same core as the
thread pools, on one event loop, safe under cancellation at every await.

Each test runs its coroutine with ``run()`` (asyncio.run with an overall
deadline, so a hang fails the test instead of the suite).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import random
import warnings
from typing import Any, Awaitable, Callable, List, Optional, Set, TypeVar

import psycopg
import pytest

from pgreservoir import AsyncConnectionPool, PoolClosed, PoolError, PoolTimeout, TooManyRequests
from pgreservoir.testing import PostgresServer, TcpProxy
from support import DEADLINE

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    """Run ``coro`` on a new event loop; fail (instead of hanging) after ``timeout``."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def until(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Wait (yielding to the loop) until ``predicate()``; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def scalar(conn: Any, query: str, params: Any = None) -> Any:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    assert row is not None
    return row[0]


def _gauge_at_least(pool: AsyncConnectionPool, key: str, value: int) -> bool:
    return bool(pool.stats()[key] >= value)


def _gauge_equals(pool: AsyncConnectionPool, key: str, value: int) -> bool:
    return bool(pool.stats()[key] == value)


def consistent(pool: AsyncConnectionPool) -> bool:
    """No slot lost: every counted connection is idle, in use or being opened."""
    s = pool.stats()
    return bool(s["size"] == s["idle"] + s["in_use"] + s["opening"])


# ---------------------------------------------------------------------------
# Basics
# ---------------------------------------------------------------------------


def test_connection_getconn_putconn_stats_and_close(postgres_dsn: str) -> None:
    async def main() -> None:
        async with AsyncConnectionPool(postgres_dsn, min_size=2, max_size=3, name="aio") as pool:
            await pool.wait(DEADLINE)
            assert (pool.name, pool.min_size, pool.max_size, pool.closed) == ("aio", 2, 3, False)
            async with pool.connection() as conn:
                assert isinstance(conn, psycopg.AsyncConnection)
                await conn.execute("CREATE TABLE t (x int)")

            async def insert_then_fail() -> None:
                async with pool.connection() as conn:
                    await conn.execute("INSERT INTO t VALUES (1)")
                    raise ZeroDivisionError

            with pytest.raises(ZeroDivisionError):
                await insert_then_fail()
            conn = await pool.getconn()
            assert await scalar(conn, "SELECT count(*) FROM t") == 0  # rolled back
            await pool.putconn(conn)
            stats = pool.stats()
            assert stats["size"] == 2
            assert stats["in_use"] == 0
            assert stats["requests"] == 3
            assert "'aio'" in repr(pool)
            assert "size=2/3" in repr(pool)
        assert pool.closed
        await pool.close()  # idempotent
        with pytest.raises(PoolClosed):
            await pool.getconn()

    run(main())


def test_pool_created_outside_a_loop_opens_on_first_use(postgres_dsn: str) -> None:
    pool = AsyncConnectionPool(postgres_dsn, min_size=1)  # no running loop here

    async def main() -> None:
        async with pool.connection() as conn:
            assert await scalar(conn, "SELECT 1") == 1
        await pool.close()

    run(main())


def test_a_pool_belongs_to_one_event_loop(postgres_dsn: str) -> None:
    pool = AsyncConnectionPool(postgres_dsn, min_size=0)

    async def use() -> None:
        async with pool.connection() as conn:
            await scalar(conn, "SELECT 1")

    run(use())
    with pytest.raises(RuntimeError, match="belongs to another event loop"):
        run(use())

    async def close() -> None:
        await pool.close()

    with pytest.raises(RuntimeError, match="belongs to another event loop"):
        run(close())


def test_timeout_and_max_waiting(postgres_dsn: str) -> None:
    async def main() -> None:
        async with AsyncConnectionPool(
            postgres_dsn, min_size=1, max_size=1, max_waiting=1, name="busy"
        ) as pool:
            held = await pool.getconn()
            with pytest.raises(PoolTimeout, match=r"'busy'.*size 1/1"):
                await pool.getconn(timeout=0.05)
            waiter = asyncio.create_task(pool.getconn(timeout=DEADLINE))
            await until(lambda: pool.stats()["waiting"] == 1, "a waiter")
            with pytest.raises(TooManyRequests):
                await pool.getconn()
            await pool.putconn(held)
            assert await waiter is held  # the waiter got it, in line
            await pool.putconn(held)
            assert pool.options.timeout == 30.0  # bounded by default

    run(main())


def test_bad_input_is_refused_and_changes_nothing(postgres_dsn: str) -> None:
    with pytest.raises(ValueError, match="min_size"):
        AsyncConnectionPool(postgres_dsn, min_size=3, max_size=2)
    with pytest.raises(ValueError, match="invalid connection option"):
        AsyncConnectionPool(postgres_dsn, bogus=1)

    async def main() -> None:
        async with AsyncConnectionPool(postgres_dsn, min_size=1) as pool:
            conn = await pool.getconn()
            before = pool.stats()
            with pytest.raises(ValueError, match="timeout must be >= 0"):
                await pool.getconn(timeout=-1)
            stray = await psycopg.AsyncConnection.connect(postgres_dsn)
            try:
                with pytest.raises(PoolError, match="not handed out by this pool"):
                    await pool.putconn(stray)
            finally:
                await stray.close()
            assert pool.stats() == before
            await pool.putconn(conn)
            with pytest.raises(PoolError, match="already returned"):
                await pool.putconn(conn)

    run(main())


def test_returned_connections_are_rolled_back_and_restored(postgres_dsn: str) -> None:
    async def main() -> None:
        async with AsyncConnectionPool(postgres_dsn, min_size=1, max_size=1) as pool:
            conn = await pool.getconn()
            pid = conn.info.backend_pid
            await conn.set_autocommit(True)
            await conn.set_read_only(True)
            await conn.execute("BEGIN")  # explicit, in autocommit mode
            await pool.putconn(conn)
            conn = await pool.getconn()
            assert conn.info.backend_pid == pid  # kept
            assert conn.autocommit is False  # restored
            assert conn.read_only is None
            assert conn.info.transaction_status == 0  # rolled back
            await pool.putconn(conn)

    run(main())


def test_configure_and_reset_may_be_coroutines(postgres_dsn: str) -> None:
    calls: List[str] = []

    async def configure(conn: Any) -> None:
        await conn.set_autocommit(True)  # the baseline: reset() opens no transaction
        await conn.execute("SET application_name = 'configured'")
        calls.append("configure")

    async def reset(conn: Any) -> None:
        await conn.execute("RESET search_path")
        calls.append("reset")

    async def main() -> None:
        async with AsyncConnectionPool(
            postgres_dsn, min_size=1, max_size=1, configure=configure, reset=reset
        ) as pool:
            for _ in range(2):
                async with pool.connection() as conn:
                    assert conn.autocommit is True
                    assert await scalar(conn, "SHOW application_name") == "configured"
        assert calls == ["configure", "reset", "reset"]

    run(main())


# ---------------------------------------------------------------------------
# Cancellation, at every point a task can be cancelled
# ---------------------------------------------------------------------------


def test_cancelled_while_waiting_and_at_the_moment_of_hand_off(postgres_dsn: str) -> None:
    async def main() -> None:
        async with AsyncConnectionPool(postgres_dsn, min_size=4, max_size=4) as pool:
            await pool.wait(DEADLINE)
            for round_ in range(20):
                held = [await pool.getconn() for _ in range(4)]
                tasks = [asyncio.create_task(pool.getconn(timeout=DEADLINE)) for _ in range(12)]
                await until(lambda: pool.stats()["waiting"] == 12, "twelve waiters")
                rng = random.Random(round_)
                doomed = set(rng.sample(range(12), 6))
                for i in doomed:
                    tasks[i].cancel()
                # Returned before the cancelled tasks run: some connections are
                # handed to waiters whose cancellation is already on its way,
                # and must go on to the next waiters.
                for conn in held:
                    await pool.putconn(conn)
                live = [t for i, t in enumerate(tasks) if i not in doomed]
                for i in doomed:
                    with pytest.raises(asyncio.CancelledError):
                        await tasks[i]
                first = [await t for t in live[:4]]
                assert len({id(c) for c in first}) == 4, "one connection handed to two tasks"
                assert not live[4].done()  # still in line: nothing left to give
                for conn in first:
                    await pool.putconn(conn)
                rest = [await t for t in live[4:]]
                assert len({id(c) for c in rest}) == 2
                for conn in rest:
                    await pool.putconn(conn)
                await until(lambda: pool.stats()["idle"] == 4, "every connection back")
                assert pool.stats()["waiting"] == 0
                assert consistent(pool)

    run(main(), timeout=120)


def test_wait_for_and_timeout_around_acquire_never_leak(postgres_dsn: str) -> None:
    async def main() -> None:
        async with AsyncConnectionPool(postgres_dsn, min_size=2, max_size=2) as pool:
            await pool.wait(DEADLINE)
            held = [await pool.getconn(), await pool.getconn()]
            for _ in range(50):
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(pool.getconn(), 0.001)
                if hasattr(asyncio, "timeout"):
                    with pytest.raises(TimeoutError):
                        async with asyncio.timeout(0.001):
                            await pool.getconn()
            assert pool.stats()["waiting"] == 0
            for conn in held:
                await pool.putconn(conn)
            # Expiring at the very moment a connection comes back.
            for _ in range(50):
                conn = await pool.getconn()
                other = await pool.getconn()
                fetch = asyncio.ensure_future(asyncio.wait_for(pool.getconn(), 0.01))
                await asyncio.sleep(0.009)
                await pool.putconn(conn)
                try:
                    got = await fetch
                except asyncio.TimeoutError:
                    pass
                else:
                    await pool.putconn(got)
                await pool.putconn(other)
                await until(lambda: pool.stats()["idle"] == 2, "both back")
            assert consistent(pool)

    run(main(), timeout=120)


def test_cancelled_while_the_pool_connects_for_it(postgres_server: PostgresServer) -> None:
    async def main() -> None:
        with TcpProxy.for_server(postgres_server, latency=0.05) as proxy:
            for _ in range(5):
                # A fresh, empty pool each round: every task needs a new connection.
                pool = AsyncConnectionPool(
                    proxy.dsn_for(postgres_server), min_size=0, max_size=4, num_workers=4
                )
                try:
                    tasks = [asyncio.create_task(pool.getconn(timeout=DEADLINE))
                             for _ in range(4)]
                    opening = functools.partial(_gauge_at_least, pool, "opening", 1)
                    await until(opening, "connects under way")
                    for task in tasks:
                        task.cancel()
                    for task in tasks:
                        with pytest.raises(asyncio.CancelledError):
                            await task
                    # The connects finish for nobody: the connections go idle.
                    idle = functools.partial(_gauge_equals, pool, "opening", 0)
                    await until(idle, "the connects to end")
                    stats = pool.stats()
                    assert stats["in_use"] == 0
                    assert stats["idle"] == stats["size"] == stats["connections_opened"]
                    async with pool.connection() as conn:
                        assert await scalar(conn, "SELECT 1") == 1
                finally:
                    await pool.close()

    run(main(), timeout=120)


def test_cancelled_during_the_checkout_check(postgres_server: PostgresServer) -> None:
    async def main() -> None:
        with TcpProxy.for_server(postgres_server) as proxy:
            # check_idle_after=0: every checkout makes a round trip first.
            pool = AsyncConnectionPool(
                proxy.dsn_for(postgres_server), min_size=2, max_size=2, check_idle_after=0
            )
            try:
                await pool.wait(DEADLINE)
                proxy.set_latency(0.5)  # the check's round trip now takes a second
                for _ in range(3):
                    task = asyncio.create_task(pool.getconn(timeout=DEADLINE))
                    await asyncio.sleep(0.1)  # inside the check by now (it takes 1 s)
                    loop = asyncio.get_running_loop()
                    cancelled_at = loop.time()
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
                    # The cancel reached the task at once: no server-side cancel awaited.
                    assert loop.time() - cancelled_at < 0.5
                    await until(lambda: consistent(pool) and pool.stats()["in_use"] == 0,
                                "the slot back")
                proxy.set_latency(0.0)
                async with pool.connection() as conn:
                    assert await scalar(conn, "SELECT 1") == 1
            finally:
                await pool.close()

    run(main(), timeout=120)


def test_cancelled_while_the_returned_connection_is_cleaned(
    postgres_server: PostgresServer,
) -> None:
    async def main() -> None:
        with TcpProxy.for_server(postgres_server) as proxy:
            pool = AsyncConnectionPool(proxy.dsn_for(postgres_server), min_size=1, max_size=1)
            try:
                for _ in range(3):
                    conn = await pool.getconn()
                    await conn.execute("SELECT 1")  # in a transaction: needs a rollback
                    proxy.set_latency(0.3)
                    returning = asyncio.create_task(pool.putconn(conn))
                    await asyncio.sleep(0.05)  # the rollback is under way
                    returning.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await returning
                    proxy.set_latency(0.0)
                    # The clean-up ends in the background; the slot comes back.
                    again = await pool.getconn(timeout=DEADLINE)
                    assert again.info.transaction_status == 0
                    await pool.putconn(again)
                    assert consistent(pool)
            finally:
                await pool.close()

    run(main(), timeout=120)


def test_cancelled_inside_a_connection_block(postgres_dsn: str) -> None:
    async def main() -> None:
        async with AsyncConnectionPool(postgres_dsn, min_size=1, max_size=1) as pool:
            async with pool.connection() as conn:
                await conn.execute("CREATE TABLE t (x int)")
            started = asyncio.Event()

            async def work() -> None:
                async with pool.connection() as conn:
                    await conn.execute("INSERT INTO t VALUES (1)")
                    started.set()
                    await asyncio.sleep(60)

            for _ in range(5):
                started.clear()
                task = asyncio.create_task(work())
                await started.wait()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                async with pool.connection(timeout=DEADLINE) as conn:
                    assert await scalar(conn, "SELECT count(*) FROM t") == 0  # rolled back
            assert pool.stats()["connections_opened"] == 1  # returned, not replaced

    run(main())


def test_cancellation_storm_keeps_every_invariant(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgreservoir")

    async def main() -> None:
        async with AsyncConnectionPool(
            postgres_dsn, min_size=2, max_size=6, timeout=DEADLINE, max_idle=0.2
        ) as pool:
            owners: Set[int] = set()
            rng = random.Random(7)
            done = 0

            async def worker() -> None:
                nonlocal done
                while True:
                    async with pool.connection() as conn:
                        assert id(conn) not in owners, "one connection used by two tasks"
                        owners.add(id(conn))
                        try:
                            await conn.execute("SELECT 1")
                            if rng.random() < 0.3:
                                await conn.execute("SELECT pg_sleep(0.001)")
                        finally:
                            owners.discard(id(conn))
                    done += 1

            tasks: List[asyncio.Task[None]] = []
            loop = asyncio.get_running_loop()
            end = loop.time() + 4.0
            while loop.time() < end:
                while len(tasks) < 24:
                    tasks.append(asyncio.create_task(worker()))
                await asyncio.sleep(rng.random() * 0.01)
                victim = tasks.pop(rng.randrange(len(tasks)))
                victim.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await victim
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await until(lambda: pool.stats()["in_use"] == 0, "every connection back")
            assert consistent(pool)
            assert pool.stats()["waiting"] == 0
            assert done > 100
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], (
            "a cancellation was logged as an error"
        )

    run(main(), timeout=120)


# ---------------------------------------------------------------------------
# Fairness, dead connections, closing
# ---------------------------------------------------------------------------


def test_256_tasks_on_8_connections_all_progress(postgres_dsn: str) -> None:
    async def main() -> None:
        async with AsyncConnectionPool(postgres_dsn, min_size=8, max_size=8) as pool:
            await pool.wait(DEADLINE)
            counts = [0] * 256
            stop = asyncio.Event()

            async def worker(i: int) -> None:
                while not stop.is_set():
                    async with pool.connection() as conn:
                        await conn.execute("SELECT 1")
                    counts[i] += 1

            tasks = [asyncio.create_task(worker(i)) for i in range(256)]
            await until(lambda: min(counts) >= 3, "every task to make progress", timeout=60)
            stop.set()
            await asyncio.gather(*tasks)
            assert min(counts) * 5 >= max(counts), (min(counts), max(counts))
            assert pool.stats()["size"] == 8

    run(main(), timeout=120)


def test_a_connection_left_idle_goes_to_the_waiter_when_its_window_ends(
    postgres_dsn: str,
) -> None:
    async def main() -> None:
        # A long window: the returned connection idles (the returner could
        # take it back), and only the waiter's own claim at the end of its
        # window can serve it, long before its timeout.
        async with AsyncConnectionPool(
            postgres_dsn, min_size=1, max_size=1, barge_window=2.0, timeout=60.0
        ) as pool:
            held = await pool.getconn()
            task = asyncio.create_task(pool.getconn())
            await until(lambda: pool.stats()["waiting"] == 1, "the waiter in line")
            await pool.putconn(held)
            assert pool.stats()["idle"] == 1  # not handed over: within the window
            assert await asyncio.wait_for(task, DEADLINE) is held
            assert pool.stats()["timeouts"] == 0
            await pool.putconn(held)
            assert consistent(pool)

    run(main())


def test_cancelled_within_the_window_or_as_it_ends(postgres_dsn: str) -> None:
    async def main() -> None:
        async with AsyncConnectionPool(
            postgres_dsn, min_size=1, max_size=1, barge_window=0.05
        ) as pool:
            for delay in (0.0, 0.01, 0.049, 0.05, 0.051, 0.06):
                held = await pool.getconn()
                task = asyncio.create_task(pool.getconn(timeout=DEADLINE))
                await until(lambda: pool.stats()["waiting"] == 1, "the waiter in line")
                await pool.putconn(held)  # idle: the waiter claims it at 50 ms
                await asyncio.sleep(delay)
                task.cancel()
                try:
                    conn = await task
                except asyncio.CancelledError:
                    pass
                else:  # served before the cancellation landed
                    await pool.putconn(conn)
                await until(lambda: pool.stats()["idle"] == 1, "the connection back")
                assert pool.stats()["waiting"] == 0
                assert consistent(pool)

    run(main())


def test_a_busy_task_cannot_starve_the_line(postgres_dsn: str) -> None:
    async def main() -> None:
        async with AsyncConnectionPool(
            postgres_dsn, min_size=1, max_size=1, barge_window=0.005, timeout=DEADLINE
        ) as pool:
            stop = asyncio.Event()
            busy_rounds = 0

            async def busy() -> None:
                nonlocal busy_rounds
                while not stop.is_set():
                    async with pool.connection() as conn:
                        await conn.execute("SELECT 1")
                    busy_rounds += 1

            served = [0, 0, 0]

            async def patient(i: int) -> None:
                for _ in range(10):
                    async with pool.connection() as conn:
                        await conn.execute("SELECT 1")
                    served[i] += 1

            hog = asyncio.create_task(busy())
            await until(lambda: busy_rounds > 20, "the busy task running")
            await asyncio.gather(*(patient(i) for i in range(3)))
            stop.set()
            await hog
            assert served == [10, 10, 10]
            assert pool.stats()["timeouts"] == 0
            assert consistent(pool)

    run(main())


def test_terminated_backends_are_never_handed_out(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    dbname = str(psycopg.conninfo.conninfo_to_dict(postgres_dsn)["dbname"])

    async def main() -> None:
        async with AsyncConnectionPool(postgres_dsn, min_size=2, max_size=2) as pool:
            await pool.wait(DEADLINE)
            old = set(postgres_server.backend_pids(dbname))
            assert postgres_server.terminate_backends(dbname) == 2
            for _ in range(4):
                async with pool.connection() as conn:
                    assert await scalar(conn, "SELECT 1") == 1
                    assert conn.info.backend_pid not in old
            # And idle ones killed server-side are replaced without a caller.
            old = set(postgres_server.backend_pids(dbname))
            requests = pool.stats()["requests"]
            postgres_server.terminate_backends(dbname)

            def replaced() -> bool:
                now = set(postgres_server.backend_pids(dbname))
                return len(now) == 2 and not now & old

            await until(replaced, "two fresh backends")
            assert pool.stats()["requests"] == requests

    run(main(), timeout=120)


def test_close_waits_then_forces_and_ends_every_task(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    dbname = str(psycopg.conninfo.conninfo_to_dict(postgres_dsn)["dbname"])

    async def main() -> None:
        pool = AsyncConnectionPool(postgres_dsn, min_size=2, max_size=2)
        await pool.wait(DEADLINE)
        held = await pool.getconn()
        await pool.getconn()
        waiter = asyncio.create_task(pool.getconn(timeout=DEADLINE))
        await until(lambda: pool.stats()["waiting"] == 1, "a waiter")
        closing = asyncio.create_task(pool.close(timeout=0.3))
        with pytest.raises(PoolClosed):
            await waiter  # woken at once
        await pool.putconn(held)  # returned during close: closed
        assert held.closed
        await closing  # the other one was forced after 0.3 s
        assert pool._shell.tasks == set()  # no task outlives the pool
        await until(lambda: postgres_server.connection_count(dbname) == 0, "all closed")
        assert pool.stats()["size"] == 0

    run(main())


def test_a_pool_collected_while_open_warns_once_and_cleans_up(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    dbname = str(psycopg.conninfo.conninfo_to_dict(postgres_dsn)["dbname"])

    async def main() -> None:
        pool: Optional[AsyncConnectionPool] = AsyncConnectionPool(postgres_dsn, min_size=2)
        assert pool is not None
        await pool.wait(DEADLINE)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pool = None
            gc.collect()
        assert len([w for w in caught if issubclass(w.category, ResourceWarning)]) == 1
        await until(lambda: postgres_server.connection_count(dbname) == 0, "all closed")

    run(main())


def test_refusals_and_timeouts_make_no_garbage(postgres_dsn: str) -> None:
    # Callers retry refusals in loops: each must not leave a reference cycle
    # (exception -> traceback -> frame -> exception) for the collector.
    async def main() -> int:
        async with AsyncConnectionPool(postgres_dsn, min_size=1, max_size=1) as pool:
            await pool.wait(30)
            held = await pool.getconn()
            gc.collect()
            gc.disable()
            try:
                for timeout in [0.0] * 100 + [0.001] * 10:
                    with pytest.raises(PoolTimeout):
                        await pool.getconn(timeout=timeout)
                garbage = gc.collect()
            finally:
                gc.enable()
            await pool.putconn(held)
            return garbage

    assert run(main()) == 0
