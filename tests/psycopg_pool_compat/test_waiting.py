"""Waiting in line: timeouts, max_waiting, close() waking waiters, first come first served."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable, Dict, List

import pytest

from ._support import DEADLINE, async_pool, await_until, wait_until
from .conftest import Impl, run

MakePool = Callable[..., Any]


def _waiting(pool: Any) -> int:
    return int(pool.get_stats()["requests_waiting"])


def _waiting_is(pool: Any, count: int) -> Callable[[], bool]:
    return lambda: _waiting(pool) == count


class Waiter:
    """A thread that waits for a connection, keeps the result, and returns the connection
    only when told to."""

    def __init__(self, pool: Any, timeout: float = DEADLINE) -> None:
        self.pool = pool
        self.result: Dict[str, Any] = {}
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(timeout,), daemon=True)
        self.thread.start()

    def _run(self, timeout: float) -> None:
        try:
            conn = self.pool.getconn(timeout=timeout)
        except Exception as exc:
            self.result["error"] = exc
            return
        self.result["conn"] = conn
        self.release.wait(DEADLINE)
        self.pool.putconn(conn)

    def join(self) -> None:
        self.release.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive()


# -- timeouts -----------------------------------------------------------------------------


def test_getconn_timeout(impl: Impl, make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn()
    started = time.monotonic()
    with pytest.raises(impl.module.PoolTimeout) as info:
        pool.getconn(timeout=0.2)
    assert str(info.value) == "couldn't get a connection after 0.20 sec"
    assert time.monotonic() - started < DEADLINE
    with pytest.raises(impl.module.PoolTimeout) as info, pool.connection(timeout=0.1):
        pass
    assert str(info.value) == "couldn't get a connection after 0.10 sec"
    pool.putconn(held)
    assert pool.getconn(timeout=0.2) is held  # nothing lost to the timeouts
    pool.putconn(held)


def test_pool_timeout_is_the_default(impl: Impl, make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, timeout=0.3)
    held = pool.getconn()
    with pytest.raises(impl.module.PoolTimeout) as info:
        pool.getconn()
    assert str(info.value) == "couldn't get a connection after 0.30 sec"
    pool.timeout = 0.1  # a plain attribute: the next default
    with pytest.raises(impl.module.PoolTimeout) as info:
        pool.getconn()
    assert str(info.value) == "couldn't get a connection after 0.10 sec"
    pool.putconn(held)


def test_timeout_counts_in_stats(impl: Impl, make_pool: MakePool) -> None:
    pool = make_pool(min_size=1)
    held = pool.getconn()
    with pytest.raises(impl.module.PoolTimeout):
        pool.getconn(timeout=0.1)
    stats = pool.get_stats()
    assert stats["requests_num"] == 2
    assert stats["requests_queued"] == 1
    assert stats["requests_errors"] == 1
    assert stats["requests_wait_ms"] > 0
    pool.putconn(held)


# -- max_waiting ----------------------------------------------------------------------------


def test_max_waiting(impl: Impl, make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_waiting=1, name="mw", timeout=DEADLINE)
    held = pool.getconn()
    waiter = Waiter(pool)
    wait_until(lambda: _waiting(pool) == 1, "the first waiter to queue")
    started = time.monotonic()
    with pytest.raises(impl.module.TooManyRequests) as info:
        pool.getconn()
    assert str(info.value) == "the pool 'mw' has already 1 requests waiting"
    assert time.monotonic() - started < DEADLINE / 3  # refused at once, not after a wait
    assert pool.get_stats()["requests_errors"] == 1
    pool.putconn(held)
    wait_until(lambda: "conn" in waiter.result, "the waiter to be served")
    assert waiter.result["conn"] is held
    waiter.join()


def test_max_waiting_zero_is_unlimited(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_waiting=0)
    held = pool.getconn()
    waiters = [Waiter(pool) for _ in range(5)]
    wait_until(lambda: _waiting(pool) == 5, "five waiters to queue")
    pool.putconn(held)
    for waiter in waiters:
        waiter.join()
        assert "conn" in waiter.result


# -- order and close ------------------------------------------------------------------------


def test_waiters_are_served_first_come_first_served(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1)
    held = pool.getconn()
    served: List[int] = []
    lock = threading.Lock()

    def take(number: int) -> None:
        conn = pool.getconn(timeout=DEADLINE)
        with lock:
            served.append(number)
        pool.putconn(conn)

    threads = []
    for number in range(4):
        thread = threading.Thread(target=take, args=(number,), daemon=True)
        thread.start()
        threads.append(thread)
        wait_until(_waiting_is(pool, number + 1), "the next waiter to queue")
    pool.putconn(held)
    for thread in threads:
        thread.join(DEADLINE)
    assert served == [0, 1, 2, 3]


def test_close_wakes_waiters(impl: Impl, make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, name="cw")
    held = pool.getconn()
    waiters = [Waiter(pool), Waiter(pool)]
    wait_until(lambda: _waiting(pool) == 2, "two waiters to queue")
    pool.close(timeout=0.5)  # (pgreservoir closes what is still out after the timeout)
    for waiter in waiters:
        waiter.thread.join(DEADLINE)  # woken, not left to time out
        assert not waiter.thread.is_alive()
        error = waiter.result["error"]
        assert isinstance(error, impl.module.PoolClosed)
        assert str(error) == "the pool 'cw' is closed"
    pool.putconn(held)  # no error: closed instead of kept
    wait_until(lambda: bool(held.closed), "the returned connection to close")


# -- async ----------------------------------------------------------------------------------


def test_async_timeout_and_max_waiting(impl: Impl, dsn: str) -> None:
    async def body() -> None:
        async with async_pool(impl, dsn, min_size=1, name="amw", max_waiting=1) as pool:
            held = await pool.getconn()
            with pytest.raises(impl.module.PoolTimeout) as info:
                await pool.getconn(timeout=0.2)
            assert str(info.value) == "couldn't get a connection after 0.20 sec"
            await pool.putconn(held)  # lets the timed-out waiter go in every implementation
            held = await pool.getconn()
            task = asyncio.create_task(pool.getconn(timeout=DEADLINE))
            await await_until(lambda: _waiting(pool) == 1, "the waiter to queue")
            with pytest.raises(impl.module.TooManyRequests) as too_many:
                await pool.getconn()
            assert str(too_many.value) == "the pool 'amw' has already 1 requests waiting"
            await pool.putconn(held)
            assert await task is held
            await pool.putconn(held)

    run(body())


def test_async_close_wakes_waiters(impl: Impl, dsn: str) -> None:
    async def body() -> None:
        async with async_pool(impl, dsn, min_size=1, name="acw") as pool:
            held = await pool.getconn()
            tasks = [asyncio.create_task(pool.getconn(timeout=DEADLINE)) for _ in range(2)]
            await await_until(lambda: _waiting(pool) == 2, "two waiters to queue")
            await pool.close(timeout=0.5)
            for task in tasks:
                with pytest.raises(impl.module.PoolClosed) as info:
                    await task
                assert str(info.value) == "the pool 'acw' is closed"
            await pool.putconn(held)
            await await_until(lambda: bool(held.closed), "the returned connection to close")

    run(body())


def test_async_waiters_are_served_in_order(impl: Impl, dsn: str) -> None:
    async def body() -> None:
        async with async_pool(impl, dsn, min_size=1) as pool:
            held = await pool.getconn()
            served: List[int] = []

            async def take(number: int) -> None:
                conn = await pool.getconn(timeout=DEADLINE)
                served.append(number)
                await pool.putconn(conn)

            tasks = []
            for number in range(3):
                tasks.append(asyncio.create_task(take(number)))
                await await_until(_waiting_is(pool, number + 1), "the next waiter")
            await pool.putconn(held)
            await asyncio.gather(*tasks)
            assert served == [0, 1, 2]

    run(body())


def test_async_cancelled_waiter_loses_nothing(impl: Impl, dsn: str) -> None:
    async def body() -> None:
        async with async_pool(impl, dsn, min_size=1, max_size=1) as pool:
            held = await pool.getconn()
            task = asyncio.create_task(pool.getconn(timeout=DEADLINE))
            await await_until(lambda: _waiting(pool) == 1, "the waiter to queue")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(pool.getconn(), 0.1)
            await pool.putconn(held)
            # The slot went to neither abandoned waiter: the next caller gets it.
            assert await pool.getconn(timeout=DEADLINE) is held
            await pool.putconn(held)
            assert pool.get_stats()["pool_available"] == 1

    run(body())
