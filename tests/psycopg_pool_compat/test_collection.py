"""A pool dropped without close() is garbage-collected, silently, and lets go of
its connections, its threads and its tasks (as psycopg_pool's pools do)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import warnings
import weakref
from typing import Dict, List, Set

import pytest

from ._support import DEADLINE, await_until, wait_until
from .conftest import Connections, Impl, run


def _small(cls: str) -> Dict[str, int]:
    return {"max_size": 2} if "Null" in cls else {"min_size": 2}


def _pool_warnings(record: List[warnings.WarningMessage]) -> List[str]:
    return [str(w.message) for w in record if "pool" in str(w.message).lower()]


@pytest.mark.parametrize("cls", ["ConnectionPool", "NullConnectionPool"])
def test_dropped_pool_is_collected_silently(
    impl: Impl, dsn: str, connections: Connections, cls: str
) -> None:
    threads_before: Set[threading.Thread] = set(threading.enumerate())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pool = getattr(impl.module, cls)(dsn, open=False, **_small(cls))
        pool.open()
        with pool.connection(timeout=DEADLINE) as conn:
            conn.execute("SELECT 1")
        pool.wait(timeout=DEADLINE)
        threads = set(threading.enumerate()) - threads_before
        ref = weakref.ref(pool)
        del pool, conn
        gc.collect()
        assert ref() is None, "the dropped pool is still alive"
        wait_until(
            lambda: not any(t.is_alive() for t in threads), "the pool's threads to end"
        )
        wait_until(lambda: connections() == 0, "the pool's connections to close")
        gc.collect()
    assert _pool_warnings(record) == []


@pytest.mark.parametrize("cls", ["AsyncConnectionPool", "AsyncNullConnectionPool"])
def test_async_dropped_pool_is_collected_silently(
    impl: Impl, dsn: str, connections: Connections, cls: str
) -> None:
    async def body() -> None:
        tasks_before = asyncio.all_tasks()
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            pool = getattr(impl.module, cls)(dsn, open=False, **_small(cls))
            await pool.open()
            async with pool.connection(timeout=DEADLINE) as conn:
                await conn.execute("SELECT 1")
            await pool.wait(timeout=DEADLINE)
            tasks = asyncio.all_tasks() - tasks_before
            ref = weakref.ref(pool)
            del pool, conn
            gc.collect()
            assert ref() is None, "the dropped pool is still alive"
            if impl.ours:
                await await_until(
                    lambda: all(t.done() for t in tasks), "the pool's tasks to end"
                )
                end = time.monotonic() + DEADLINE
                while await asyncio.to_thread(connections):  # (blocking query: in a thread)
                    assert time.monotonic() < end, "timed out waiting for connections to close"
                    await asyncio.sleep(0.02)
            else:
                # psycopg_pool's asyncio pool has no finalizer: its tasks (and so
                # its connections) run on until the loop ends.
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            gc.collect()
        assert _pool_warnings(record) == []

    run(body())
