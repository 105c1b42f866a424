"""Awaiting something for a bounded time, with the loop's timers (no ``wait_for``).

For awaits the asyncio shell does not run itself: a coroutine function that
computes connection parameters, a replica's health check.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, TypeVar

__all__ = ["Expired", "bounded"]

T = TypeVar("T")


class Expired(Exception):
    """The deadline of :func:`bounded` passed; what it awaited was cancelled."""


async def bounded(awaitable: Awaitable[T], deadline: float) -> T:
    """Await ``awaitable`` until the loop's clock reads ``deadline``; then cancel
    it and raise :class:`Expired`. Cancelling the caller cancels it too."""
    loop = asyncio.get_running_loop()
    task: asyncio.Future[T] = asyncio.ensure_future(awaitable)
    expired = False

    def expire() -> None:
        nonlocal expired
        if not task.done():
            expired = True
            task.cancel()

    timer = loop.call_at(deadline, expire)
    try:
        return await task
    except asyncio.CancelledError:
        current: Any = asyncio.current_task()
        cancelling = getattr(current, "cancelling", None)
        # Our own timer, and nobody cancelling the caller: a timeout.
        if expired and not (cancelling is not None and cancelling()):
            raise Expired() from None
        raise
    finally:
        timer.cancel()
