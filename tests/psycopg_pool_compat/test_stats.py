"""get_stats() / pop_stats() counting: what counts as a request, nothing lost
between two readings, exact sums under many threads."""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from typing import Any, Callable, List

import pytest

from ._support import DEADLINE, async_pool, counter
from .conftest import Impl, run

MakePool = Callable[..., Any]


def test_null_pool_wait_is_no_request(make_pool: MakePool) -> None:
    pool = make_pool("NullConnectionPool", max_size=2)
    pool.wait(timeout=DEADLINE)
    assert counter(pool.get_stats(), "requests_num") == 0
    for _ in range(3):
        with pool.connection(timeout=DEADLINE):
            pass
    assert counter(pool.get_stats(), "requests_num") == 3


def test_async_null_pool_wait_is_no_request(impl: Impl, dsn: str) -> None:
    async def body() -> None:
        async with async_pool(impl, dsn, "AsyncNullConnectionPool", max_size=2) as pool:
            await pool.wait(timeout=DEADLINE)
            assert counter(pool.get_stats(), "requests_num") == 0
            for _ in range(3):
                async with pool.connection(timeout=DEADLINE):
                    pass
            assert counter(pool.get_stats(), "requests_num") == 3

    run(body())


def test_event_during_pop_stats_is_reported_next(
    impl: Impl, make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    # A checkout that lands while pop_stats() is reading: injected right after
    # the implementation's first reading of its counters (psycopg_pool swaps its
    # counters, then reads its measures; the drop-in reads the core's statistics).
    if impl.ours:
        target, name = pool._core, "stats"
    else:
        target, name = pool, "_get_measures"
    original = getattr(target, name)
    injected: List[bool] = []

    def reading() -> Any:
        result = original()
        if not injected:
            injected.append(True)
            with pool.connection(timeout=DEADLINE):
                pass
        return result

    monkeypatch.setattr(target, name, reading)
    popped = pool.pop_stats()
    monkeypatch.setattr(target, name, original)
    assert injected
    # The request came after the reading pop_stats() reported: it is the next's.
    assert counter(popped, "requests_num") == 0
    assert counter(pool.get_stats(), "requests_num") == 1


def test_usage_ms_adds_up_across_threads(impl: Impl, make_pool: MakePool) -> None:
    threads, blocks = 16, 50
    pool = make_pool(min_size=4, max_size=4)
    inside: List[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(blocks):
            with pool.connection(timeout=DEADLINE):
                start = time.monotonic()
                time.sleep(0.002)
                spent = time.monotonic() - start
            with lock:
                inside.append(spent)

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: a lost update shows
    try:
        workers = [threading.Thread(target=worker) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(DEADLINE * 4)
        assert not any(t.is_alive() for t in workers)
    finally:
        sys.setswitchinterval(previous)
    assert len(inside) == threads * blocks
    # Each block's time inside the pool's measure is at least the time the
    # worker measured within it; a lost update would make the sum smaller.
    usage = counter(pool.get_stats(), "usage_ms")
    if impl.ours:
        assert usage >= math.floor(sum(inside) * 1000.0)
    else:
        # psycopg_pool truncates each block to whole milliseconds (and adds
        # without a lock): its sum is not exact. Not asserted.
        assert usage >= 0


def test_null_pool_queues_only_callers_the_pool_cannot_grow_for(make_pool: MakePool) -> None:
    # A null pool below max_size connects for the caller: that caller did not
    # queue. Only one that finds max_size connections out waits in line.
    pool = make_pool("NullConnectionPool", max_size=2)
    pool.wait(timeout=DEADLINE)
    for _ in range(3):
        with pool.connection(timeout=DEADLINE):
            pass
    assert counter(pool.get_stats(), "requests_queued") == 0
    held = [pool.getconn(timeout=DEADLINE) for _ in range(2)]
    assert counter(pool.get_stats(), "requests_queued") == 0
    got: List[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool.getconn(timeout=DEADLINE)))
    waiter.start()
    deadline = time.monotonic() + DEADLINE
    while pool.get_stats().get("requests_waiting", 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    pool.putconn(held.pop())
    waiter.join(DEADLINE)
    assert got
    assert counter(pool.get_stats(), "requests_queued") == 1
    for conn in (*held, *got):
        pool.putconn(conn)


def test_async_null_pool_queues_only_callers_the_pool_cannot_grow_for(
    impl: Impl, dsn: str
) -> None:
    async def body() -> None:
        async with async_pool(impl, dsn, "AsyncNullConnectionPool", max_size=2) as pool:
            for _ in range(3):
                async with pool.connection(timeout=DEADLINE):
                    pass
            assert counter(pool.get_stats(), "requests_queued") == 0
            held = [await pool.getconn(timeout=DEADLINE) for _ in range(2)]
            task = asyncio.ensure_future(pool.getconn(timeout=DEADLINE))
            deadline = time.monotonic() + DEADLINE
            while pool.get_stats().get("requests_waiting", 0) == 0:
                assert time.monotonic() < deadline, "the third caller never waited"
                await asyncio.sleep(0.01)
            await pool.putconn(held.pop())
            held.append(await task)
            assert counter(pool.get_stats(), "requests_queued") == 1
            for conn in held:
                await pool.putconn(conn)

    run(body())
