"""The memory check: a million checkouts must not leave memory behind.

For each pool, after a warm-up (so lazily created structures already exist),
:mod:`tracemalloc` is started and the pool serves ``checkouts`` checkout/return
pairs: most of them by one thread (the fast path), the rest by several threads
sharing fewer connections (the waiting path: a waiter per wait, hand-offs).
Memory allocated during that time and still alive at the end is the growth; a
leak of even one byte per checkout would show as a megabyte. Growth is also
recorded at checkpoints, so a trend is visible in the JSON.

An asyncio pool gets the same check on a fresh event loop, with tasks for
threads; on the contended path each task holds its connection across one turn
of the loop, so that the others wait in line (an asyncio pool's fast path never
suspends: without it there would be no waiting at all).

This is a measurement, not a timed test: nothing here depends on speed.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import tracemalloc
from array import array
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

from .contenders import Contender, Target

__all__ = ["GROWTH_LIMIT", "MemoryResult", "memory_check"]

#: Bytes of growth tolerated over the whole check, whatever the checkout count:
#: a few interpreter-internal allocations (free lists, specialisation caches)
#: can appear once, but nothing per checkout.
GROWTH_LIMIT = 64 * 1024

#: Share of the checkouts made by several threads on fewer connections.
CONTENDED_SHARE = 0.1
CONTENDED_THREADS = 8
CONTENDED_SIZE = 2
CHECKPOINTS = 10


@dataclass
class MemoryResult:
    """Traced memory growth of one pool over ``checkouts`` checkouts."""

    contender: str
    label: str
    checkouts: int
    growth_bytes: int = 0
    peak_bytes: int = 0
    limit_bytes: int = GROWTH_LIMIT
    # (checkouts so far, traced bytes above the baseline)
    checkpoints: List[Tuple[int, int]] = field(default_factory=list)
    failed: Optional[str] = None

    @property
    def ok(self) -> Optional[bool]:
        if self.failed is not None:
            return None
        return self.growth_bytes <= self.limit_bytes

    def as_dict(self) -> Dict[str, Any]:
        return {
            "contender": self.contender,
            "label": self.label,
            "checkouts": self.checkouts,
            "growth_bytes": self.growth_bytes,
            "peak_bytes": self.peak_bytes,
            "limit_bytes": self.limit_bytes,
            "checkpoints": [list(point) for point in self.checkpoints],
            "ok": self.ok,
            "failed": self.failed,
        }


def _churn(acquire: Callable[[], Any], release: Callable[[Any], Any], count: int) -> None:
    for _ in range(count):
        release(acquire())


def _contended(
    acquire: Callable[[], Any], release: Callable[[Any], Any], count: int, threads: int
) -> None:
    tickets = itertools.count().__next__

    def worker() -> None:
        while tickets() < count:
            release(acquire())

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()


def _traced_growth(baseline: int) -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0] - baseline


def memory_check(
    dsn: str,
    contenders: Sequence[Contender],
    *,
    checkouts: int = 1_000_000,
    progress: Optional[Callable[[str], None]] = None,
    transaction_pooling: bool = False,
) -> List[MemoryResult]:
    """Run the memory check on each of ``contenders`` (pools, not references);
    ``transaction_pooling``: ``dsn`` is a transaction-pooling proxy (see Target)."""
    results = []
    for contender in contenders:
        if progress is not None:
            progress(f"memory | {contender.label}")
        result = MemoryResult(contender.key, contender.label, checkouts)
        target = Target(dsn, "pgreservoir-bench-memory", transaction_pooling)
        try:
            if contender.is_async:
                asyncio.run(_measure_async(contender, target, checkouts, result))
            else:
                _measure(contender, target, checkouts, result)
        except Exception as exc:
            result.failed = f"{type(exc).__name__}: {exc}"
        results.append(result)
    return results


def _measure(contender: Contender, target: Target, checkouts: int, result: MemoryResult) -> None:
    session = contender.open(target, CONTENDED_SIZE)
    acquire, release = session.acquire, session.release
    contended = int(checkouts * CONTENDED_SHARE)
    single = checkouts - contended
    was_tracing = tracemalloc.is_tracing()
    try:
        # Warm-up: both paths, so every lazily built structure exists.
        _churn(acquire, release, 20_000)
        _contended(acquire, release, 2_000, CONTENDED_THREADS)
        # Checkpoints go into an array allocated before tracing starts, so the
        # bookkeeping itself does not show up as growth.
        step = max(1, single // CHECKPOINTS)
        marks = array("q", [0] * (2 * (CHECKPOINTS + 2)))
        points = 0
        gc.collect()
        tracemalloc.start()
        tracemalloc.reset_peak()
        baseline = tracemalloc.get_traced_memory()[0]
        done = 0
        while done < single:
            chunk = min(step, single - done)
            _churn(acquire, release, chunk)
            done += chunk
            marks[2 * points] = done
            marks[2 * points + 1] = _traced_growth(baseline)
            points += 1
        if contended:
            _contended(acquire, release, contended, CONTENDED_THREADS)
            done += contended
            marks[2 * points] = done
            marks[2 * points + 1] = _traced_growth(baseline)
            points += 1
        result.growth_bytes = _traced_growth(baseline)
        result.peak_bytes = tracemalloc.get_traced_memory()[1] - baseline
        result.checkpoints = [(marks[2 * i], marks[2 * i + 1]) for i in range(points)]
    finally:
        if not was_tracing:
            tracemalloc.stop()
        session.close()


# ---------------------------------------------------------------------------
# asyncio pools
# ---------------------------------------------------------------------------

AsyncAcquire = Callable[[], Awaitable[Any]]
AsyncRelease = Callable[[Any], Awaitable[Any]]


async def _churn_async(acquire: AsyncAcquire, release: AsyncRelease, count: int) -> None:
    for _ in range(count):
        await release(await acquire())


async def _contended_async(
    acquire: AsyncAcquire, release: AsyncRelease, count: int, tasks: int
) -> None:
    tickets = itertools.count().__next__

    async def worker() -> None:
        while tickets() < count:
            conn = await acquire()
            await asyncio.sleep(0)  # hold it across a turn: the others wait in line
            await release(conn)

    await asyncio.gather(*(worker() for _ in range(tasks)))


async def _measure_async(
    contender: Contender, target: Target, checkouts: int, result: MemoryResult
) -> None:
    # _measure() on the running loop: same warm-up, checkpoints and figures.
    session = await contender.open_async(target, CONTENDED_SIZE)
    acquire, release = session.acquire, session.release
    contended = int(checkouts * CONTENDED_SHARE)
    single = checkouts - contended
    was_tracing = tracemalloc.is_tracing()
    try:
        await _churn_async(acquire, release, 20_000)
        await _contended_async(acquire, release, 2_000, CONTENDED_THREADS)
        step = max(1, single // CHECKPOINTS)
        marks = array("q", [0] * (2 * (CHECKPOINTS + 2)))
        points = 0
        gc.collect()
        tracemalloc.start()
        tracemalloc.reset_peak()
        baseline = tracemalloc.get_traced_memory()[0]
        done = 0
        while done < single:
            chunk = min(step, single - done)
            await _churn_async(acquire, release, chunk)
            done += chunk
            marks[2 * points] = done
            marks[2 * points + 1] = _traced_growth(baseline)
            points += 1
        if contended:
            await _contended_async(acquire, release, contended, CONTENDED_THREADS)
            done += contended
            marks[2 * points] = done
            marks[2 * points + 1] = _traced_growth(baseline)
            points += 1
        result.growth_bytes = _traced_growth(baseline)
        result.peak_bytes = tracemalloc.get_traced_memory()[1] - baseline
        result.checkpoints = [(marks[2 * i], marks[2 * i + 1]) for i in range(points)]
    finally:
        if not was_tracing:
            tracemalloc.stop()
        await session.close()
