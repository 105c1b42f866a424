"""Timed runs: worker threads hammer one contender, then the numbers are reduced.

How one run works
-----------------
The contender is opened and warmed (all its connections opened and returned),
then ``threads`` worker threads start together at a barrier and loop::

    t0 = clock(); conn = acquire(); t1 = clock()   # t1 - t0: acquisition wait
    work(conn); release(conn)                       # one operation

until ``duration`` seconds have passed (or, with an operation budget, until the
budget is spent: a shared ticket counter, no clock involved). An operation
counts if its connection was acquired before the deadline; a wait that ends
after it still counts as a wait (so a starved thread's wait is not lost).
Throughput is counted operations over the time from the start to the end of
the last counted operation.

Per run: operations/s, each thread's count (fairness = least-served /
most-served), acquisition wait mean/p50/p99/max, errors, the contender's own
retries and the peak number of server connections carrying the run's
``application_name`` (sampled from a side connection every 20 ms).

Across rounds the contenders run interleaved (the order rotates each round) and
the median round value of each figure is reported; errors are summed and the
peak connections are the highest seen.

The asyncio workloads (``async-*``) run the asyncio contenders the same way,
with tasks on a fresh event loop instead of threads (:mod:`.async_runner`);
their results are the same :class:`RunResult` objects ("threads" = tasks).
Each scenario runs the contenders of its kind only: thread contenders the
thread workloads, asyncio contenders the asyncio ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import math
import os
import random
import statistics
import sys
import threading
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence

import psycopg2

from .contenders import DEDICATED, Contender, Target

__all__ = [
    "SAMPLE_INTERVAL",
    "WORKLOADS",
    "AsyncWork",
    "BenchError",
    "RunResult",
    "Scenario",
    "ScenarioResult",
    "Summary",
    "Workload",
    "percentile",
    "run_once",
    "run_suite",
    "spread",
    "summarize",
    "summarize_scenario",
]

#: Seconds between two counts of the server's connections during a run.
SAMPLE_INTERVAL = 0.02

#: Seconds a run may overrun its duration before the benchmark declares the
#: contender stuck (its threads are daemons and are abandoned).
HANG_GRACE = 60.0

#: With an operation budget there is no duration: a run still stops being
#: waited for after this many seconds.
BUDGET_RUN_LIMIT = 600.0

#: Server-side time of one short transaction (the ``transaction`` workload).
TRANSACTION_SLEEP = 0.002

#: The table the ``write`` workload updates (created for the run, dropped after).
WRITE_TABLE = "pgreservoir_bench_write"

#: Rows in it: enough that 32 threads rarely update the same row at once.
WRITE_ROWS = 10_000

#: Rounds below which the targets are only indicative (medians of fewer
#: rounds follow one noisy round).
MIN_ROUNDS = 3


class BenchError(Exception):
    """The benchmark could not run (bad options, no server, a stuck contender)."""


# ---------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------


def _select_one(conn: Any) -> None:
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchone()
    cur.close()


_SLEEP_QUERY = f"SELECT pg_sleep({TRANSACTION_SLEEP})"


def _short_transaction(conn: Any) -> None:
    # Three round trips, the connection held ~2 ms by the server: a typical
    # short web transaction. The client thread releases the GIL throughout.
    cur = conn.cursor()
    cur.execute("BEGIN")
    cur.execute(_SLEEP_QUERY)
    cur.fetchone()
    cur.execute("COMMIT")
    cur.close()


_WRITE_QUERY = (
    f"UPDATE {WRITE_TABLE} SET hits = hits + 1 FROM pg_sleep({TRANSACTION_SLEEP}) "
    "WHERE id = %s"
)


def _short_write(conn: Any, _row: Callable[[int, int], int] = random.randint) -> None:
    # BEGIN, an UPDATE of a random row that holds the connection ~2 ms on
    # the server (pg_sleep in the same statement), COMMIT: three round trips,
    # a row lock and a commit, as a web request that writes.
    cur = conn.cursor()
    cur.execute("BEGIN")
    cur.execute(_WRITE_QUERY, (_row(1, WRITE_ROWS),))
    cur.execute("COMMIT")
    cur.close()


_WRITE_SETUP = (
    f"DROP TABLE IF EXISTS {WRITE_TABLE}",
    f"CREATE TABLE {WRITE_TABLE} (id integer PRIMARY KEY, hits bigint NOT NULL DEFAULT 0)",
    f"INSERT INTO {WRITE_TABLE} (id) SELECT generate_series(1, {WRITE_ROWS})",
)
_WRITE_TEARDOWN = (f"DROP TABLE IF EXISTS {WRITE_TABLE}",)


# The asyncio workloads: the same work through each asyncio driver's API.


async def _yield_once(conn: Any) -> None:
    # Hold the connection across one turn of the event loop. Without it a
    # task whose acquire and release never suspend (the pools' fast paths do
    # not) would loop alone until the deadline while the other tasks never
    # ran: there would be no contention to measure, only one task's overhead.
    await asyncio.sleep(0)


async def _select_one_psycopg(conn: Any) -> None:
    cur = conn.cursor()
    await cur.execute("SELECT 1")
    await cur.fetchone()
    await cur.close()


async def _select_one_asyncpg(conn: Any) -> None:
    await conn.fetchval("SELECT 1")


async def _short_transaction_psycopg(conn: Any) -> None:
    # As _short_transaction: three round trips, ~2 ms held by the server.
    cur = conn.cursor()
    await cur.execute("BEGIN")
    await cur.execute(_SLEEP_QUERY)
    await cur.fetchone()
    await cur.execute("COMMIT")
    await cur.close()


async def _short_transaction_asyncpg(conn: Any) -> None:
    # BEGIN, the query, COMMIT: three round trips, as with psycopg.
    async with conn.transaction():
        await conn.fetchval(_SLEEP_QUERY)


#: The work of an asyncio workload for one driver: awaited with the connection.
AsyncWork = Callable[[Any], Awaitable[Any]]


@dataclass(frozen=True)
class Workload:
    """What a worker does with each connection it acquires."""

    key: str
    description: str
    # Called with the acquired connection; ``id`` (a C no-op) for checkout-only.
    # None for the asyncio workloads.
    work: Optional[Callable[[Any], Any]] = field(repr=False)
    # Run by one thread (or task) whatever --threads (--tasks) says: the
    # pure-overhead workloads.
    single_thread: bool = False
    # The asyncio workloads: the work for each driver's connections (their
    # APIs differ), None where there is nothing to do; None for thread workloads.
    async_work: Optional[Mapping[str, Optional[AsyncWork]]] = field(default=None, repr=False)
    # SQL run on a side connection before the workload's scenario (its
    # table) and after it (dropping the table), for the ``write`` workload.
    setup: Sequence[str] = field(default=(), repr=False)
    teardown: Sequence[str] = field(default=(), repr=False)

    @property
    def is_async(self) -> bool:
        """Run by asyncio tasks, through the asyncio contenders."""
        return self.async_work is not None

    def work_for(self, driver: str) -> Optional[AsyncWork]:
        """The asyncio work for connections of ``driver`` (None: nothing to do)."""
        if self.async_work is None or driver not in self.async_work:
            raise BenchError(f"workload {self.key!r} has no asyncio work for {driver!r}")
        return self.async_work[driver]


WORKLOADS: Dict[str, Workload] = {
    w.key: w
    for w in (
        Workload("overhead", "checkout + return only, one thread", id, single_thread=True),
        Workload("checkout", "checkout + return only", id),
        Workload("select", "SELECT 1 per checkout", _select_one),
        Workload(
            "transaction",
            f"BEGIN; SELECT pg_sleep({TRANSACTION_SLEEP}); COMMIT per checkout",
            _short_transaction,
        ),
        Workload(
            "write",
            f"BEGIN; UPDATE of a random row of {WRITE_ROWS:,} with "
            f"pg_sleep({TRANSACTION_SLEEP}); COMMIT per checkout",
            _short_write,
            setup=_WRITE_SETUP,
            teardown=_WRITE_TEARDOWN,
        ),
        Workload(
            "async-overhead",
            "asyncio: checkout + return only, one task",
            None,
            single_thread=True,
            async_work={"psycopg-async": None, "asyncpg": None},
        ),
        Workload(
            "async-checkout",
            "asyncio: checkout, one turn of the event loop, return",
            None,
            async_work={"psycopg-async": _yield_once, "asyncpg": _yield_once},
        ),
        Workload(
            "async-select",
            "asyncio: SELECT 1 per checkout",
            None,
            async_work={"psycopg-async": _select_one_psycopg, "asyncpg": _select_one_asyncpg},
        ),
        Workload(
            "async-transaction",
            f"asyncio: BEGIN; SELECT pg_sleep({TRANSACTION_SLEEP}); COMMIT per checkout",
            None,
            async_work={
                "psycopg-async": _short_transaction_psycopg,
                "asyncpg": _short_transaction_asyncpg,
            },
        ),
    )
}


@dataclass(frozen=True)
class Scenario:
    """A workload at a thread count and pool size."""

    workload: Workload
    threads: int
    size: int

    @property
    def title(self) -> str:
        unit = "task" if self.workload.is_async else "thread"
        threads = f"1 {unit}" if self.threads == 1 else f"{self.threads} {unit}s"
        return f"{self.workload.key} ({threads}, {self.size} connections)"

    def runs(self, contender: Contender) -> bool:
        """Whether ``contender`` takes part (thread or asyncio, as the workload)."""
        return contender.is_async == self.workload.is_async


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass
class RunResult:
    """One contender, one round."""

    contender: str
    round: int
    threads: int
    ops: int = 0
    elapsed: float = 0.0
    thread_ops: List[int] = field(default_factory=list)
    wait_mean_ms: float = 0.0
    wait_p50_ms: float = 0.0
    wait_p99_ms: float = 0.0
    wait_max_ms: float = 0.0
    errors: int = 0
    first_error: Optional[str] = None
    retries: int = 0
    peak_connections: Optional[int] = None
    # Set when the contender could not be opened or got stuck: nothing measured.
    failed: Optional[str] = None

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def fairness(self) -> float:
        """Least-served thread's operations / most-served thread's (1 = even)."""
        if not self.thread_ops or max(self.thread_ops) == 0:
            return 0.0
        return min(self.thread_ops) / max(self.thread_ops)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "round": self.round,
            "threads": self.threads,
            "ops": self.ops,
            "elapsed_s": round(self.elapsed, 6),
            "ops_per_s": round(self.ops_per_s, 1),
            "fairness": round(self.fairness, 4),
            "thread_ops": self.thread_ops,
            "wait_ms": {
                "mean": self.wait_mean_ms,
                "p50": self.wait_p50_ms,
                "p99": self.wait_p99_ms,
                "max": self.wait_max_ms,
            },
            "errors": self.errors,
            "first_error": self.first_error,
            "retries": self.retries,
            "peak_server_connections": self.peak_connections,
            "failed": self.failed,
        }


@dataclass
class Summary:
    """One contender in one scenario: the median over its rounds."""

    contender: Contender
    runs: List[RunResult]
    ops_per_s: float = 0.0
    ratio_to_dedicated: Optional[float] = None
    overhead_us: Optional[float] = None
    fairness: float = 0.0
    least_served_ops: int = 0
    most_served_ops: int = 0
    wait_mean_ms: float = 0.0
    wait_p50_ms: float = 0.0
    wait_p99_ms: float = 0.0
    wait_max_ms: float = 0.0
    errors: int = 0
    retries: int = 0
    peak_connections: Optional[int] = None
    failed: Optional[str] = None
    # How much the rounds differed: (max - min) / median of their ops/s
    # (None with fewer than two measured rounds).
    spread: Optional[float] = None

    @property
    def measured_rounds(self) -> int:
        """Rounds that measured something (not failed)."""
        return sum(1 for run in self.runs if run.failed is None)

    def as_dict(self) -> Dict[str, Any]:
        def rounded(value: Optional[float], digits: int) -> Optional[float]:
            return None if value is None else round(value, digits)

        return {
            "contender": self.contender.key,
            "label": self.contender.label,
            "kind": self.contender.kind,
            "description": self.contender.note,
            "ops_per_s": round(self.ops_per_s, 1),
            "spread": rounded(self.spread, 4),
            "ratio_to_dedicated": rounded(self.ratio_to_dedicated, 4),
            "overhead_us_per_op": rounded(self.overhead_us, 3),
            "fairness": round(self.fairness, 4),
            "least_served_ops": self.least_served_ops,
            "most_served_ops": self.most_served_ops,
            "wait_ms": {
                "mean": self.wait_mean_ms,
                "p50": self.wait_p50_ms,
                "p99": self.wait_p99_ms,
                "max": self.wait_max_ms,
            },
            "errors": self.errors,
            "retries": self.retries,
            "peak_server_connections": self.peak_connections,
            "failed": self.failed,
            "rounds": [run.as_dict() for run in self.runs],
        }


@dataclass
class ScenarioResult:
    """Every contender's summary for one scenario, in contender order."""

    scenario: Scenario
    summaries: List[Summary]

    def get(self, key: str) -> Optional[Summary]:
        """The summary of contender ``key``, if it ran and did not fail."""
        for summary in self.summaries:
            if summary.contender.key == key and summary.failed is None:
                return summary
        return None

    def as_dict(self) -> Dict[str, Any]:
        return {
            "workload": self.scenario.workload.key,
            "description": self.scenario.workload.description,
            "asyncio": self.scenario.workload.is_async,
            # Worker threads, or tasks for the asyncio workloads.
            "threads": self.scenario.threads,
            "size": self.scenario.size,
            "results": [summary.as_dict() for summary in self.summaries],
        }


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank ``q`` quantile (0..1] of an ascending sequence (0 if empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def spread(values: Sequence[float]) -> Optional[float]:
    """(max - min) / median: how far apart the rounds of one contender are
    (None for fewer than two values or a zero median)."""
    if len(values) < 2:
        return None
    middle = float(statistics.median(values))
    if middle <= 0:
        return None
    return (max(values) - min(values)) / middle


def summarize(
    contender: Contender, runs: List[RunResult], dedicated: Optional[Summary]
) -> Summary:
    """Reduce a contender's rounds to medians (errors summed, peak maximised)."""
    summary = Summary(contender, runs)
    good = [run for run in runs if run.failed is None]
    if not good:
        summary.failed = runs[0].failed if runs else "did not run"
        return summary

    def median(values: Sequence[float]) -> float:
        return float(statistics.median(values))

    summary.ops_per_s = median([run.ops_per_s for run in good])
    summary.spread = spread([run.ops_per_s for run in good])
    summary.fairness = median([run.fairness for run in good])
    # The least/most-served counts come from the median-throughput round.
    middle = sorted(good, key=lambda run: run.ops_per_s)[(len(good) - 1) // 2]
    summary.least_served_ops = min(middle.thread_ops, default=0)
    summary.most_served_ops = max(middle.thread_ops, default=0)
    summary.wait_mean_ms = round(median([run.wait_mean_ms for run in good]), 4)
    summary.wait_p50_ms = round(median([run.wait_p50_ms for run in good]), 4)
    summary.wait_p99_ms = round(median([run.wait_p99_ms for run in good]), 4)
    summary.wait_max_ms = round(median([run.wait_max_ms for run in good]), 4)
    summary.errors = sum(run.errors for run in runs)
    summary.retries = int(median([run.retries for run in good]))
    peaks = [run.peak_connections for run in good if run.peak_connections is not None]
    summary.peak_connections = max(peaks) if peaks else None
    if dedicated is not None and dedicated.ops_per_s > 0 and summary.ops_per_s > 0:
        summary.ratio_to_dedicated = summary.ops_per_s / dedicated.ops_per_s
        summary.overhead_us = 1e6 / summary.ops_per_s - 1e6 / dedicated.ops_per_s
    return summary


# ---------------------------------------------------------------------------
# Counting server connections
# ---------------------------------------------------------------------------


class ConnectionSampler:
    """Counts, from a side connection, the server connections of one run.

    Connections are recognised by their ``application_name``, so other clients
    of a shared server are not counted.
    """

    def __init__(self, dsn: str, interval: float = SAMPLE_INTERVAL) -> None:
        self._conn = psycopg2.connect(dsn, application_name="pgreservoir-bench-sampler")
        self._conn.autocommit = True
        self._interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._name = ""
        self.peak = 0

    def count(self) -> int:
        """Connections with the current run's name, now."""
        with self._lock, self._conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (self._name,),
            )
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def _sample(self) -> None:
        # A missed sample only lowers the peak we report.
        with contextlib.suppress(psycopg2.Error):
            self.peak = max(self.peak, self.count())

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def begin(self, application_name: str) -> None:
        """Start sampling the connections named ``application_name``."""
        self._name = application_name
        self.peak = 0
        self._sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)
        self._thread.start()

    def end(self) -> int:
        """Stop sampling; the highest count seen."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._sample()
        return self.peak

    def close(self) -> None:
        self._stop.set()
        self._conn.close()


# ---------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------


class _ThreadResult:
    __slots__ = ("end", "errors", "first_error", "ops", "waits")

    def __init__(
        self, ops: int, waits: array[float], errors: int, first_error: Optional[str], end: float
    ) -> None:
        self.ops = ops
        self.waits = waits
        self.errors = errors
        self.first_error = first_error
        self.end = end


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _release_quietly(release: Callable[[Any], Any], conn: Any) -> None:
    with contextlib.suppress(Exception):
        release(conn)


class _RunSpec:
    """What every worker thread of one run shares."""

    __slots__ = ("budget", "duration", "gate", "results", "take_ticket", "work")

    def __init__(self, work: Callable[[Any], Any], threads: int, duration: float,
                 budget: int) -> None:
        self.work = work
        self.gate = threading.Barrier(threads + 1)
        self.duration = duration
        self.take_ticket = itertools.count().__next__
        self.budget = budget
        self.results: List[Optional[_ThreadResult]] = [None] * threads


def _worker(
    acquire: Callable[[], Any], release: Callable[[Any], Any], spec: _RunSpec, index: int
) -> None:
    # The hot loop: everything it touches is a local. Two clock reads per
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
    try:
        spec.gate.wait()
    except threading.BrokenBarrierError:
        return  # the run was called off before it started
    t0 = perf()
    deadline = t0 + spec.duration
    while t0 < deadline and take_ticket() < budget:
        try:
            conn = acquire()
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
            _release_quietly(release, conn)
            break
        try:
            work(conn)
        except Exception as exc:
            errors += 1
            if first_error is None:
                first_error = _describe(exc)
            _release_quietly(release, conn)
        else:
            try:
                release(conn)
                done += 1
            except Exception as exc:
                errors += 1
                if first_error is None:
                    first_error = _describe(exc)
        t0 = perf()
    spec.results[index] = _ThreadResult(done, waits, errors, first_error, t0)


def _warm(
    acquire: Callable[[], Any], release: Callable[[Any], Any], count: int, label: str
) -> None:
    """Have the pool open all its connections before the clock starts.

    In a daemon thread, waited for HANG_GRACE seconds at most: a pool that
    cannot hand out all its connections at once is called stuck (BenchError),
    as the asyncio runner does, instead of hanging the benchmark.
    """
    failure: List[BaseException] = []

    def warm() -> None:
        try:
            held = [acquire() for _ in range(count)]
            for conn in held:
                release(conn)
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=warm, name=f"bench-warm-{label}", daemon=True)
    thread.start()
    thread.join(HANG_GRACE)
    if thread.is_alive():
        raise BenchError(
            f"{label}: the warm-up (taking all {count} connections at once) did not "
            f"finish within {HANG_GRACE:g} s; the pool looks stuck"
        )
    if failure:
        raise failure[0]


def run_once(
    contender: Contender,
    scenario: Scenario,
    target: Target,
    *,
    round_no: int = 0,
    duration: Optional[float] = 1.0,
    ops: Optional[int] = None,
    sampler: Optional[ConnectionSampler] = None,
) -> RunResult:
    """Run ``contender`` on ``scenario`` for ``duration`` seconds or ``ops`` operations.

    Raises whatever opening the contender raises, and BenchError if its threads
    do not finish. An asyncio scenario is run by :func:`.async_runner.run_once_async`.
    """
    if (duration is None) == (ops is None):
        raise BenchError("give exactly one of duration and ops")
    if contender.is_async or scenario.workload.is_async:
        from .async_runner import run_once_async

        return run_once_async(contender, scenario, target, round_no=round_no,
                              duration=duration, ops=ops, sampler=sampler)
    assert scenario.workload.work is not None
    threads = 1 if scenario.workload.single_thread else scenario.threads
    session = contender.open(
        target, min(scenario.size, threads) if contender.per_thread else scenario.size
    )
    try:
        if session.max_threads is not None:
            threads = min(threads, session.max_threads)
        if session.warm:
            _warm(session.acquire, session.release, min(session.warm, scenario.size),
                  contender.label)
        spec = _RunSpec(
            scenario.workload.work,
            threads,
            math.inf if duration is None else duration,
            sys.maxsize if ops is None else ops,
        )
        workers = []
        for index in range(threads):
            acquire, release = session.callables(index, alone=threads == 1)
            worker = threading.Thread(
                target=_worker,
                args=(acquire, release, spec, index),
                name=f"bench-{contender.key}-{index}",
                daemon=True,
            )
            worker.start()
            workers.append(worker)
        gc.collect()
        try:
            if sampler is not None:
                sampler.begin(target.application_name)
            spec.gate.wait()
        except BaseException:
            spec.gate.abort()  # let the workers go instead of waiting forever
            raise
        start = time.perf_counter()
        limit = start + (BUDGET_RUN_LIMIT if duration is None else duration + HANG_GRACE)
        for worker in workers:
            worker.join(max(0.0, limit - time.perf_counter()))
        peak = sampler.end() if sampler is not None else None
        if any(worker.is_alive() for worker in workers):
            raise BenchError(
                f"{contender.label}: worker threads still running "
                f"{limit - start:.0f} s after the start; the pool looks stuck"
            )
        retries = session.retries()
    finally:
        session.close()
    run = _reduce(contender, round_no, start, spec.results)
    run.retries = retries
    run.peak_connections = peak
    return run


def _reduce(
    contender: Contender, round_no: int, start: float, results: List[Optional[_ThreadResult]]
) -> RunResult:
    done = [r for r in results if r is not None]
    waits: array[float] = array("d")
    for r in done:
        waits.extend(r.waits)
    ordered = sorted(waits)
    run = RunResult(contender.key, round_no, len(results))
    run.thread_ops = [r.ops for r in done]
    run.ops = sum(run.thread_ops)
    run.elapsed = max((r.end for r in done), default=start) - start
    if ordered:
        run.wait_mean_ms = round(math.fsum(ordered) / len(ordered) * 1000.0, 4)
        run.wait_p50_ms = round(percentile(ordered, 0.50) * 1000.0, 4)
        run.wait_p99_ms = round(percentile(ordered, 0.99) * 1000.0, 4)
        run.wait_max_ms = round(ordered[-1] * 1000.0, 4)
    run.errors = sum(r.errors for r in done)
    run.first_error = next((r.first_error for r in done if r.first_error), None)
    return run


# ---------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------

Progress = Callable[[str], None]


def run_suite(
    dsn: str,
    scenarios: Sequence[Scenario],
    contenders: Sequence[Contender],
    *,
    rounds: int = 3,
    duration: Optional[float] = 1.0,
    ops: Optional[int] = None,
    progress: Optional[Progress] = None,
    sample_connections: bool = True,
    transaction_pooling: bool = False,
) -> List[ScenarioResult]:
    """Run every contender on every scenario, ``rounds`` times, interleaved.

    ``transaction_pooling``: ``dsn`` is a transaction-pooling proxy (see Target).

    ``progress(text)`` is called before each run. A contender that fails to
    open or gets stuck is reported as failed; the others carry on. A scenario
    runs the contenders of its kind (thread or asyncio) only, and none is
    reported when there are none.
    """
    if rounds < 1:
        raise BenchError("rounds must be >= 1")
    sampler = ConnectionSampler(dsn) if sample_connections else None
    serial = itertools.count(1)
    results: List[ScenarioResult] = []
    try:
        for scenario in scenarios:
            taking_part = [c for c in contenders if scenario.runs(c)]
            if not taking_part:
                continue
            runs: Dict[str, List[RunResult]] = {c.key: [] for c in taking_part}
            _run_sql(dsn, scenario.workload.setup)
            try:
                _rounds(dsn, scenario, taking_part, runs, rounds=rounds, duration=duration,
                        ops=ops, progress=progress, sampler=sampler, serial=serial.__next__,
                        transaction_pooling=transaction_pooling)
            finally:
                _run_sql(dsn, scenario.workload.teardown)
            results.append(summarize_scenario(scenario, taking_part, runs))
    finally:
        if sampler is not None:
            sampler.close()
    return results


def _run_sql(dsn: str, statements: Sequence[str]) -> None:
    """Run a workload's setup or teardown on a side connection (autocommit)."""
    if not statements:
        return
    try:
        conn = psycopg2.connect(dsn, application_name="pgreservoir-bench-setup")
    except psycopg2.Error as exc:
        raise BenchError(f"cannot connect to set up a workload: {str(exc).strip()}") from exc
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    except psycopg2.Error as exc:
        raise BenchError(
            f"a workload's setup failed ({str(exc).strip()}): the write workload needs "
            "a user that may create a table"
        ) from exc
    finally:
        conn.close()


def _rounds(
    dsn: str,
    scenario: Scenario,
    taking_part: Sequence[Contender],
    runs: Dict[str, List[RunResult]],
    *,
    rounds: int,
    duration: Optional[float],
    ops: Optional[int],
    progress: Optional[Progress],
    sampler: Optional[ConnectionSampler],
    serial: Callable[[], int],
    transaction_pooling: bool,
) -> None:
    """The rounds of one scenario, the contenders interleaved."""
    for round_no in range(rounds):
        # Rotate the order each round: nobody always runs first or last.
        shift = round_no % len(taking_part)
        order = [*taking_part[shift:], *taking_part[:shift]]
        for contender in order:
            if progress is not None:
                progress(f"{scenario.workload.key} | {contender.label} | "
                         f"round {round_no + 1}/{rounds}")
            name = f"pgreservoir-bench-{os.getpid()}-{serial()}"
            target = Target(dsn, name, transaction_pooling)
            try:
                run = run_once(contender, scenario, target, round_no=round_no,
                               duration=duration, ops=ops, sampler=sampler)
            except Exception as exc:
                run = RunResult(contender.key, round_no, 0, failed=_describe(exc))
            runs[contender.key].append(run)


def summarize_scenario(
    scenario: Scenario, contenders: Sequence[Contender], runs: Mapping[str, List[RunResult]]
) -> ScenarioResult:
    """Each contender's rounds summarized, in contender order, each compared
    with the dedicated reference of its driver (DEDICATED) when that ran."""
    references: Dict[str, Optional[Summary]] = {}
    for driver, key in DEDICATED.items():
        reference = None
        if runs.get(key):
            reference = summarize(_contender_by_key(contenders, key), runs[key], None)
            if reference.failed is not None:
                reference = None
        references[driver] = reference
    summaries = [summarize(c, runs[c.key], references.get(c.driver)) for c in contenders]
    return ScenarioResult(scenario, summaries)


def _contender_by_key(contenders: Sequence[Contender], key: str) -> Contender:
    for contender in contenders:
        if contender.key == key:
            return contender
    raise KeyError(key)
