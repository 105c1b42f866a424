"""Opening ``min_size`` connections: ``num_workers`` connects run at once.

Each connect is made slow (0.3 s, by a connection class that sleeps before
connecting), so the number of connections open at a given moment tells how
many connects ran side by side: with 4 to open, two workers finish in two
rounds (0.6 s), one worker needs four (1.2 s). They are counted at 0.9 s,
a full round away from both: two workers must be done by then, one worker
cannot be (it has had time for three connects at most).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Type

import psycopg
import pytest

from ._support import DEADLINE, async_pool, await_until, wait_until
from .conftest import Impl, run

#: How long each connect takes, and when the open connections are counted.
CONNECT_DELAY = 0.3
COUNTED_AT = 0.9


def slow_async_connection() -> Type[psycopg.AsyncConnection[Any]]:
    """An AsyncConnection whose connect first sleeps CONNECT_DELAY seconds."""

    class SlowConnection(psycopg.AsyncConnection[Any]):
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(CONNECT_DELAY)
            return await super().connect(*args, **kwargs)

    return SlowConnection


def slow_connection() -> Type[psycopg.Connection[Any]]:
    """A Connection whose connect first sleeps CONNECT_DELAY seconds."""

    class SlowConnection(psycopg.Connection[Any]):
        @classmethod
        def connect(cls, *args: Any, **kwargs: Any) -> Any:
            time.sleep(CONNECT_DELAY)
            return super().connect(*args, **kwargs)

    return SlowConnection


async def async_open_after(impl: Impl, dsn: str, num_workers: int) -> int:
    """How many of 4 connections an async pool has open COUNTED_AT s after open()."""
    async with async_pool(
        impl, dsn, min_size=4, max_size=4, num_workers=num_workers, wait=False,
        connection_class=slow_async_connection(),
    ) as pool:
        await asyncio.sleep(COUNTED_AT)
        # Nobody takes them: every connection open so far is available.
        opened = int(pool.get_stats()["pool_available"])
        # Either way all four open in the end.
        await pool.wait(timeout=DEADLINE)
        await await_until(lambda: pool.get_stats()["pool_available"] == 4, "4 idle")
        return opened


def sync_open_after(make_pool: Callable[..., Any], num_workers: int) -> int:
    """As async_open_after, for the thread pool."""
    pool = make_pool(min_size=4, max_size=4, num_workers=num_workers, wait=False,
                     connection_class=slow_connection())
    time.sleep(COUNTED_AT)
    opened = int(pool.get_stats()["pool_available"])
    pool.wait(timeout=DEADLINE)
    wait_until(lambda: pool.get_stats()["pool_available"] == 4, "4 idle")
    return opened


@pytest.mark.parametrize("num_workers", [2, 4])
def test_async_pool_opens_num_workers_at_a_time(impl: Impl, dsn: str, num_workers: int) -> None:
    assert run(async_open_after(impl, dsn, num_workers)) == 4


def test_async_pool_with_one_worker_opens_one_at_a_time(impl: Impl, dsn: str) -> None:
    assert run(async_open_after(impl, dsn, num_workers=1)) < 4


@pytest.mark.parametrize("num_workers", [2, 4])
def test_pool_opens_num_workers_at_a_time(
    make_pool: Callable[..., Any], num_workers: int
) -> None:
    assert sync_open_after(make_pool, num_workers) == 4


def test_pool_with_one_worker_opens_one_at_a_time(make_pool: Callable[..., Any]) -> None:
    assert sync_open_after(make_pool, num_workers=1) < 4
