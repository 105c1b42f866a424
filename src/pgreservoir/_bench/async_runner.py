"""asyncio runs: tasks on one event loop hammer an asyncio contender.

The twin of :func:`.runner.run_once`, measured the same way so that the
figures mean the same: the contender is opened and warmed (all its
connections opened and returned) before the clock starts, then ``tasks``
worker tasks start together and loop::

    t0 = clock(); conn = await acquire(); t1 = clock()   # t1 - t0: acquisition wait
    await work(conn); await release(conn)                 # one operation

until ``duration`` seconds have passed (or the shared ticket counter reaches
the operation budget). An operation counts if its connection was acquired
before the deadline; a wait that ends after it still counts as a wait. The
results are the thread runner's (:class:`~.runner.RunResult`, one entry per
task), so medians, fairness and waits are reduced by the same code.

What differs, and why:

* Each run gets a fresh event loop (:func:`asyncio.run`): the contender is
  opened, run and closed on it, so nothing one contender leaves on a loop
  (tasks, callbacks, a slower scheduler) touches the next.
* The tasks wait for a gate (an :class:`asyncio.Event`) and share one
  deadline, the moment it opens + ``duration``. Threads each read the clock
  as they leave their barrier, microseconds apart; a task only starts when
  the loop gets to it, which after a task that never suspends could be the
  end of the run.
* The work is awaited only when the workload has some (``async-overhead``
  has none): the same branch for every contender.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import math
import sys
import time
from array import array
from typing import Any, Awaitable, Callable, List, Optional

from .contenders import Contender, Target
from .runner import (
    BUDGET_RUN_LIMIT,
    HANG_GRACE,
    AsyncWork,
    BenchError,
    ConnectionSampler,
    RunResult,
    Scenario,
    _describe,
    _reduce,
    _ThreadResult,
)

__all__ = ["CLOSE_LIMIT", "run_once_async"]

#: Seconds an asyncio contender may take to close after a run (asyncpg's
#: close() waits for every connection to come back, with no limit of its own).
CLOSE_LIMIT = 30.0

#: Seconds given to the tasks of a stuck run to end once cancelled.
CANCEL_GRACE = 5.0

AsyncAcquire = Callable[[], Awaitable[Any]]
AsyncRelease = Callable[[Any], Awaitable[Any]]


class _AsyncRunSpec:
    """What every worker task of one run shares."""

    __slots__ = ("budget", "deadline", "gate", "results", "take_ticket", "work")

    def __init__(self, work: Optional[AsyncWork], tasks: int, budget: int) -> None:
        self.work = work
        self.gate = asyncio.Event()
        self.deadline = math.inf  # set when the gate opens
        self.take_ticket = itertools.count().__next__
        self.budget = budget
        self.results: List[Optional[_ThreadResult]] = [None] * tasks


async def _within(awaitable: Awaitable[Any], seconds: float) -> Any:
    """``await awaitable``, cancelled after ``seconds`` (then asyncio.TimeoutError).
    Not asyncio.wait_for, which can swallow the caller's cancel on Python < 3.12."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait([task], timeout=seconds)
    except BaseException:
        task.cancel()
        raise
    if not done:
        task.cancel()
        await asyncio.wait([task], timeout=CANCEL_GRACE)
        raise asyncio.TimeoutError
    return task.result()


async def _release_quietly(release: AsyncRelease, conn: Any) -> None:
    with contextlib.suppress(Exception):
        await release(conn)


async def _worker(
    acquire: AsyncAcquire, release: AsyncRelease, spec: _AsyncRunSpec, index: int
) -> None:
    # The hot loop, as runner._worker: locals only, two clock reads per
    # operation (around acquire) and one ticket, for every contender alike.
    perf = time.perf_counter
    work = spec.work
    take_ticket = spec.take_ticket
    budget = spec.budget
    waits: array[float] = array("d")
    record = waits.append
    done = 0
    errors = 0
    first_error: Optional[str] = None
    await spec.gate.wait()
    deadline = spec.deadline
    t0 = perf()
    while t0 < deadline and take_ticket() < budget:
        try:
            conn = await acquire()
        except Exception as exc:
            errors += 1
            if first_error is None:
                first_error = _describe(exc)
            t0 = perf()
            continue
        t1 = perf()
        record(t1 - t0)
        if t1 >= deadline:
            # Acquired too late: the wait counts, the operation does not.
            await _release_quietly(release, conn)
            break
        try:
            if work is not None:
                await work(conn)
        except Exception as exc:
            errors += 1
            if first_error is None:
                first_error = _describe(exc)
            await _release_quietly(release, conn)
        else:
            try:
                await release(conn)
                done += 1
            except Exception as exc:
                errors += 1
                if first_error is None:
                    first_error = _describe(exc)
        t0 = perf()
    spec.results[index] = _ThreadResult(done, waits, errors, first_error, t0)


async def _warm(acquire: AsyncAcquire, release: AsyncRelease, count: int) -> None:
    """Have the pool open all its connections before the clock starts."""
    held = [await acquire() for _ in range(count)]
    for conn in held:
        await release(conn)


def run_once_async(
    contender: Contender,
    scenario: Scenario,
    target: Target,
    *,
    round_no: int = 0,
    duration: Optional[float] = 1.0,
    ops: Optional[int] = None,
    sampler: Optional[ConnectionSampler] = None,
) -> RunResult:
    """Run asyncio ``contender`` on asyncio ``scenario`` on a fresh event loop,
    for ``duration`` seconds or ``ops`` operations.

    Raises whatever opening the contender raises, and BenchError if its tasks
    do not finish or it does not close.
    """
    if (duration is None) == (ops is None):
        raise BenchError("give exactly one of duration and ops")
    if not contender.is_async or not scenario.workload.is_async:
        raise BenchError(
            f"{contender.label} on {scenario.workload.key}: an asyncio run needs an "
            "asyncio contender and an asyncio workload"
        )
    return asyncio.run(_run(contender, scenario, target, round_no=round_no,
                            duration=duration, ops=ops, sampler=sampler))


async def _run(
    contender: Contender,
    scenario: Scenario,
    target: Target,
    *,
    round_no: int,
    duration: Optional[float],
    ops: Optional[int],
    sampler: Optional[ConnectionSampler],
) -> RunResult:
    loop = asyncio.get_running_loop()
    tasks = 1 if scenario.workload.single_thread else scenario.threads
    work = scenario.workload.work_for(contender.driver)
    session = await contender.open_async(
        target, min(scenario.size, tasks) if contender.per_thread else scenario.size
    )
    workers: List[asyncio.Task[None]] = []
    try:
        if session.max_tasks is not None:
            tasks = min(tasks, session.max_tasks)
        if session.warm:
            warm = _warm(session.acquire, session.release, min(session.warm, scenario.size))
            try:
                await _within(warm, HANG_GRACE)
            except asyncio.TimeoutError:
                raise BenchError(
                    f"{contender.label}: the warm-up (taking all {scenario.size} connections "
                    f"at once) did not finish within {HANG_GRACE:g} s; the pool looks stuck"
                ) from None
        spec = _AsyncRunSpec(work, tasks, sys.maxsize if ops is None else ops)
        for index in range(tasks):
            acquire, release = session.callables(index)
            workers.append(loop.create_task(_worker(acquire, release, spec, index),
                                            name=f"bench-{contender.key}-{index}"))
        await asyncio.sleep(0)  # every task waits at the gate
        gc.collect()
        if sampler is not None:
            sampler.begin(target.application_name)
        start = time.perf_counter()
        spec.deadline = start + (math.inf if duration is None else duration)
        spec.gate.set()
        limit = start + (BUDGET_RUN_LIMIT if duration is None else duration + HANG_GRACE)
        _, pending = await asyncio.wait(workers, timeout=max(0.0, limit - time.perf_counter()))
        peak = sampler.end() if sampler is not None else None
        if pending:
            raise BenchError(
                f"{contender.label}: worker tasks still running {limit - start:.0f} s "
                "after the start; the pool looks stuck"
            )
        for worker in workers:
            failure = worker.exception()
            if failure is not None:  # a bug in the runner, not a pool error
                raise failure
    finally:
        # Whatever happened, no worker outlives the run and the contender closes.
        unfinished = [worker for worker in workers if not worker.done()]
        for worker in unfinished:
            worker.cancel()
        if unfinished:
            await asyncio.wait(unfinished, timeout=CANCEL_GRACE)
        try:
            await _within(session.close(), CLOSE_LIMIT)
        except asyncio.TimeoutError:
            raise BenchError(  # noqa: B904 (chained to what failed first, if anything)
                f"{contender.label}: close() did not return within {CLOSE_LIMIT:g} s"
            )
    run = _reduce(contender, round_no, start, spec.results)
    run.peak_connections = peak
    return run
