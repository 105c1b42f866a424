"""The contenders: how each pool is opened, driven and closed by the benchmark.

Every contender is reduced to the same two calls per operation, ``acquire()``
and ``release(handle)``, bound as directly as the pool's API allows (no wrapper
where the pool's own methods fit), so the benchmark measures the pools and not
adapters. Where a pool's users must write code around it (the retry loop around
``psycopg2.pool``'s "connection pool exhausted"), that code is part of the
contender, as it is part of their programs.

Every connection is in autocommit mode, set once when it is opened (a
``connection_factory`` for psycopg2, ``autocommit=True`` for psycopg 3): a
``SELECT 1`` is then one round trip and no pool pays for a rollback on return.
Every connection carries the run's ``application_name``, which is how the
server-side sampler counts a contender's connections (and only those).

The asyncio contenders (``is_async``) are the same idea on an event loop: an
async opener returns an :class:`AsyncSession` whose ``acquire()`` and
``release(conn)`` are awaited. They run only the asyncio workloads, and the
thread contenders only the thread workloads.

Each contender names the ``driver`` of its connections (psycopg2, psycopg 3,
psycopg 3's ``AsyncConnection``, asyncpg): its ``x ded`` is measured against
the dedicated reference of that driver (:data:`DEDICATED`), and the asyncio
workloads pick their work for it (asyncpg's API is not psycopg's).

Peers are optional imports, loaded with :func:`importlib.import_module` when a
contender is opened, so the package does not depend on them.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import itertools
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, Union

import psycopg2
import psycopg2.extensions
import psycopg2.pool

__all__ = [
    "CONTENDERS",
    "DEDICATED",
    "PSYCOPG2_RETRY_DELAY",
    "AsyncSession",
    "Contender",
    "Session",
    "Target",
    "autocommit_connection_class",
    "contender_versions",
]

#: How long the psycopg2.pool retry loop sleeps after "connection pool
#: exhausted" before trying again. Users write anything from a busy loop (which
#: starves the connection holders of the GIL) to the seeds' 0.1 s backoff (which
#: idles the pool); 1 ms is the usual compromise.
PSYCOPG2_RETRY_DELAY = 0.001

#: Acquisition timeout given to pools that wait: far above any wait the
#: benchmark expects, so a timeout means a stuck pool and shows up as errors.
ACQUIRE_TIMEOUT = 60.0

Acquire = Callable[[], Any]
Release = Callable[[Any], Any]
AsyncAcquire = Callable[[], Awaitable[Any]]
AsyncRelease = Callable[[Any], Awaitable[Any]]

#: libpq options that only tune the client side of the socket or the encoding
#: and that asyncpg has no equivalent for: left out of asyncpg's connect
#: arguments (anything else it does not know it would send as a server setting).
_NOT_FOR_ASYNCPG = frozenset({
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
    "tcp_user_timeout", "fallback_application_name", "client_encoding",
})


@dataclass(frozen=True)
class Target:
    """Where a run's connections go: the server and the run's ``application_name``.

    ``transaction_pooling``: the server is a transaction-pooling proxy
    (PgBouncer ``pool_mode=transaction``): no server-side prepared statement
    may outlive a transaction, so psycopg 3's and asyncpg's are turned off.
    """

    dsn: str
    application_name: str
    transaction_pooling: bool = False

    def psycopg2_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``psycopg2.connect()`` (autocommit, tagged)."""
        return {
            "connection_factory": autocommit_connection_class(),
            "application_name": self.application_name,
        }

    def psycopg2_connect(self) -> Any:
        """A new autocommit psycopg2 connection tagged with the run's name."""
        return psycopg2.connect(self.dsn, **self.psycopg2_kwargs())

    def psycopg_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for psycopg 3's ``connect()`` (autocommit, tagged)."""
        kwargs: Dict[str, Any] = {"autocommit": True, "application_name": self.application_name}
        if self.transaction_pooling:
            kwargs["prepare_threshold"] = None
        return kwargs

    def psycopg_connect(self) -> Any:
        """A new autocommit psycopg 3 connection tagged with the run's name."""
        psycopg: Any = importlib.import_module("psycopg")
        return psycopg.connect(self.dsn, **self.psycopg_kwargs())

    async def psycopg_async_connect(self) -> Any:
        """A new autocommit psycopg 3 ``AsyncConnection`` tagged with the run's name."""
        psycopg: Any = importlib.import_module("psycopg")
        return await psycopg.AsyncConnection.connect(self.dsn, **self.psycopg_kwargs())

    def asyncpg_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``asyncpg.connect()``/``create_pool()``, tagged.

        asyncpg has its own connection code and takes a URL, not a libpq
        ``key=value`` string: the DSN is parsed by libpq (through psycopg2) and
        passed as a URL; ``connect_timeout`` becomes ``timeout``. asyncpg runs
        no query in a transaction unless asked, so it needs no autocommit.
        """
        params = psycopg2.extensions.parse_dsn(self.dsn)
        kwargs: Dict[str, Any] = {
            "server_settings": {"application_name": self.application_name},
        }
        if self.transaction_pooling:
            kwargs["statement_cache_size"] = 0
        params.pop("application_name", None)
        timeout = params.pop("connect_timeout", None)
        if timeout is not None and float(timeout) > 0:
            kwargs["timeout"] = float(timeout)
        query = {k: v for k, v in params.items() if k not in _NOT_FOR_ASYNCPG}
        kwargs["dsn"] = "postgresql://?" + urllib.parse.urlencode(query)
        return kwargs

    async def asyncpg_connect(self) -> Any:
        """A new asyncpg connection tagged with the run's name."""
        asyncpg: Any = importlib.import_module("asyncpg")
        return await asyncpg.connect(**self.asyncpg_kwargs())


@dataclass
class Session:
    """One opened contender, ready for a run.

    ``acquire``/``release`` are shared by all threads, unless ``per_thread``
    gives each worker thread its own pair (the dedicated reference).
    ``max_threads`` caps the worker threads (dedicated: one per connection).
    """

    acquire: Acquire
    release: Release
    close: Callable[[], None]
    retries: Callable[[], int] = lambda: 0
    per_thread: Optional[Callable[[int], Tuple[Acquire, Release]]] = None
    max_threads: Optional[int] = None
    # Connections to open before the timed run (checked out together, returned).
    warm: int = 0
    # The pair to use when a single thread runs, if it differs (psycopg2.pool's
    # bare methods: one thread never sees "exhausted", so no retry loop).
    alone: Optional[Tuple[Acquire, Release]] = None

    def callables(self, index: int, alone: bool = False) -> Tuple[Acquire, Release]:
        """The acquire/release pair for worker thread ``index``."""
        if self.per_thread is not None:
            return self.per_thread(index)
        if alone and self.alone is not None:
            return self.alone
        return self.acquire, self.release


@dataclass
class AsyncSession:
    """One opened asyncio contender, ready for a run on the loop it was opened on.

    As :class:`Session`, with coroutines: ``await acquire()``, ``await
    release(conn)``, ``await close()``; ``per_task`` gives each task its own
    pair (the dedicated references) and ``max_tasks`` caps the tasks.
    """

    acquire: AsyncAcquire
    release: AsyncRelease
    close: Callable[[], Awaitable[Any]]
    per_task: Optional[Callable[[int], Tuple[AsyncAcquire, AsyncRelease]]] = None
    max_tasks: Optional[int] = None
    # Connections to open before the timed run (checked out together, returned).
    warm: int = 0

    def callables(self, index: int) -> Tuple[AsyncAcquire, AsyncRelease]:
        """The acquire/release pair for worker task ``index``."""
        if self.per_task is not None:
            return self.per_task(index)
        return self.acquire, self.release


@dataclass(frozen=True)
class Contender:
    """A pool (or reference) the benchmark can run."""

    key: str  # used on the command line and in JSON
    label: str  # shown in the table
    kind: str  # "pgreservoir", "peer" or "reference"
    requires: Tuple[str, ...]  # importable modules it needs
    # Returns a Session; for an asyncio contender, a coroutine of an AsyncSession.
    opener: Callable[[Target, int], Union[Session, Awaitable[AsyncSession]]] = field(repr=False)
    note: str = ""
    # One connection per worker thread or task (dedicated): opened with
    # min(size, workers).
    per_thread: bool = False
    # The driver of its connections; ratios to dedicated use the dedicated
    # reference of the same driver (DEDICATED), and the asyncio workloads
    # their work for it.
    driver: str = "psycopg2"
    # Driven by tasks on an event loop (open_async), in the asyncio workloads only.
    is_async: bool = False
    # Run when no --contenders are given; else only when named.
    in_default: bool = True

    def missing(self) -> Optional[str]:
        """None when it can run here, else what to install."""
        for module in self.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return f"needs {module}"
        return None

    def open(self, target: Target, size: int) -> Session:
        """Open it with ``size`` connections (fewer for the references)."""
        if self.is_async:
            raise TypeError(f"{self.key} is an asyncio contender: use open_async()")
        session = self.opener(target, size)
        assert isinstance(session, Session)
        return session

    async def open_async(self, target: Target, size: int) -> AsyncSession:
        """Open an asyncio contender on the running event loop."""
        if not self.is_async:
            raise TypeError(f"{self.key} is not an asyncio contender: use open()")
        opened = self.opener(target, size)
        assert not isinstance(opened, Session)
        return await opened


# ---------------------------------------------------------------------------
# psycopg2 connections in autocommit mode
# ---------------------------------------------------------------------------


@functools.cache
def autocommit_connection_class() -> type:
    """A psycopg2 connection class that starts in autocommit mode."""

    class BenchConnection(psycopg2.extensions.connection):
        """A psycopg2 connection switched to autocommit when it opens."""

        __slots__ = ()

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.autocommit = True

    return BenchConnection


class _Counter:
    """A thread-safe counter, for events off the fast path (retries)."""

    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self) -> None:
        with self._lock:
            self.value += 1

    def get(self) -> int:
        return self.value


# ---------------------------------------------------------------------------
# pgreservoir
# ---------------------------------------------------------------------------


def _open_pgreservoir(
    target: Target, size: int, *, psycopg3: bool = False, strict: bool = False
) -> Session:
    from ..connection_pool import ConnectionPool

    if psycopg3:
        psycopg: Any = importlib.import_module("psycopg")
        connect: Dict[str, Any] = {
            "connection_class": psycopg.Connection, **target.psycopg_kwargs()
        }
    else:
        connect = target.psycopg2_kwargs()
    # Health and lifetime checks stay at their defaults (on), as the targets say.
    pool = ConnectionPool(
        target.dsn,
        min_size=size,
        max_size=size,
        timeout=ACQUIRE_TIMEOUT,
        name="bench-psycopg" if psycopg3 else "bench",
        **({"barge_window": 0.0} if strict else {}),
        **connect,
    )
    pool.wait(ACQUIRE_TIMEOUT)
    return Session(pool.getconn, pool.putconn, pool.close, warm=size)


def _open_pgreservoir_otel(target: Target, size: int) -> Session:
    # As "pgreservoir", recording to an OpenTelemetry SDK that collects every
    # second (replaying the histograms, reading the gauges) into an exporter
    # that drops the data: the cost of metrics on, exporters included.
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        PeriodicExportingMetricReader,
    )

    from ..connection_pool import ConnectionPool

    class Discard(MetricExporter):
        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> Any:
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            return None

    provider = MeterProvider(
        metric_readers=[PeriodicExportingMetricReader(Discard(), export_interval_millis=1000)]
    )
    pool = ConnectionPool(
        target.dsn,
        min_size=size,
        max_size=size,
        timeout=ACQUIRE_TIMEOUT,
        name="bench-otel",
        meter_provider=provider,
        **target.psycopg2_kwargs(),
    )
    pool.wait(ACQUIRE_TIMEOUT)

    def close() -> None:
        pool.close()
        provider.shutdown()

    return Session(pool.getconn, pool.putconn, close, warm=size)


def _open_pgreservoir_threaded(target: Target, size: int) -> Session:
    # The psycopg2.pool drop-in with its waiting switched on: by default it
    # raises "connection pool exhausted" at once, as psycopg2 does; with
    # PoolOptions(timeout=...) callers wait in a fair line instead.
    module: Any = importlib.import_module("pgreservoir.pool")
    pool = module.ThreadedConnectionPool(
        size,
        size,
        target.dsn,
        pool_options=module.PoolOptions(timeout=ACQUIRE_TIMEOUT),
        **target.psycopg2_kwargs(),
    )
    return Session(pool.getconn, pool.putconn, pool.closeall, warm=size)


# ---------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------


def _retrying(getconn: Acquire, retries: _Counter) -> Acquire:
    """The loop psycopg2.pool users write: ``getconn`` raises "connection pool
    exhausted" at once when every connection is out, so they sleep and retry."""
    count = retries.add
    exhausted = psycopg2.pool.PoolError
    sleep = time.sleep

    def acquire() -> Any:
        while True:
            try:
                return getconn()
            except exhausted:
                count()
                sleep(PSYCOPG2_RETRY_DELAY)

    return acquire


def _open_psycopg2(target: Target, size: int) -> Session:
    pool = psycopg2.pool.ThreadedConnectionPool(
        size, size, target.dsn, **target.psycopg2_kwargs()
    )
    retries = _Counter()
    return Session(_retrying(pool.getconn, retries), pool.putconn, pool.closeall,
                   retries=retries.get, warm=size, alone=(pool.getconn, pool.putconn))


def _open_pgreservoir_dropin(target: Target, size: int) -> Session:
    # The drop-in exactly as an import swap leaves it: psycopg2's defaults
    # (no waiting) under the same retry loop as psycopg2.pool.
    module: Any = importlib.import_module("pgreservoir.pool")
    pool = module.ThreadedConnectionPool(size, size, target.dsn, **target.psycopg2_kwargs())
    retries = _Counter()
    return Session(_retrying(pool.getconn, retries), pool.putconn, pool.closeall,
                   retries=retries.get, warm=size, alone=(pool.getconn, pool.putconn))


def _open_psycopg_pool(target: Target, size: int) -> Session:
    psycopg_pool: Any = importlib.import_module("psycopg_pool")
    pool = psycopg_pool.ConnectionPool(
        target.dsn,
        min_size=size,
        max_size=size,
        timeout=ACQUIRE_TIMEOUT,
        kwargs=target.psycopg_kwargs(),
        name="bench",
        open=True,
    )
    pool.wait(ACQUIRE_TIMEOUT)
    return Session(pool.getconn, pool.putconn, pool.close, warm=size)


def _open_sqlalchemy(target: Target, size: int) -> Session:
    sqlalchemy_pool: Any = importlib.import_module("sqlalchemy.pool")
    # The pool layer of create_engine(), over psycopg2, without the engine.
    pool = sqlalchemy_pool.QueuePool(
        target.psycopg2_connect, pool_size=size, max_overflow=0, timeout=ACQUIRE_TIMEOUT
    )
    # A checked-out connection is a proxy ("fairy"); its close() returns it.
    release = sqlalchemy_pool.base._ConnectionFairy.close
    return Session(pool.connect, release, pool.dispose, warm=size)


def _open_reservoir_sqlalchemy(target: Target, size: int) -> Session:
    sqlalchemy_pool: Any = importlib.import_module("sqlalchemy.pool")
    reservoir: Any = importlib.import_module("pgreservoir.sqlalchemy")
    # The same pool layer as the "sqlalchemy" contender, with ReservoirPool.
    pool = reservoir.ReservoirPool(
        target.psycopg2_connect, pool_size=size, max_overflow=0, timeout=ACQUIRE_TIMEOUT
    )
    release = sqlalchemy_pool.base._ConnectionFairy.close
    return Session(pool.connect, release, pool.dispose, warm=size)


def _open_dbutils(target: Target, size: int) -> Session:
    pooled_db: Any = importlib.import_module("dbutils.pooled_db")
    pool = pooled_db.PooledDB(
        psycopg2,
        mincached=size,
        maxcached=size,
        maxshared=0,
        maxconnections=size,
        blocking=True,
        dsn=target.dsn,
        **target.psycopg2_kwargs(),
    )
    release = pooled_db.PooledDedicatedDBConnection.close
    return Session(pool.connection, release, pool.close, warm=size)


# ---------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------


def _open_unpooled(target: Target, size: int) -> Session:
    # A new connection per operation, as code without a pool does.
    connect = functools.partial(psycopg2.connect, target.dsn, **target.psycopg2_kwargs())
    return Session(connect, psycopg2.extensions.connection.close, lambda: None)


def _open_dedicated(target: Target, size: int) -> Session:
    return _dedicated(target.psycopg2_connect, size)


def _open_dedicated_psycopg(target: Target, size: int) -> Session:
    return _dedicated(target.psycopg_connect, size)


def _dedicated(connect: Callable[[], Any], size: int) -> Session:
    # One private connection per thread and `size` threads: the throughput
    # limit of `size` connections. acquire/release are C callables that cost
    # next to nothing, so "time above dedicated" is the pool's whole cost.
    conns: List[Any] = []
    try:
        for _ in range(size):
            conns.append(connect())
    except BaseException:
        for conn in conns:
            conn.close()
        raise

    def per_thread(index: int) -> Tuple[Acquire, Release]:
        return itertools.repeat(conns[index]).__next__, id

    def close() -> None:
        for conn in conns:
            conn.close()

    acquire, release = per_thread(0)
    return Session(acquire, release, close, per_thread=per_thread, max_threads=size)


# ---------------------------------------------------------------------------
# asyncio
# ---------------------------------------------------------------------------


async def _open_pgreservoir_async(target: Target, size: int) -> AsyncSession:
    from ..async_connection_pool import AsyncConnectionPool

    # Health and lifetime checks at their defaults (on), as for the thread pool.
    pool = AsyncConnectionPool(
        target.dsn,
        min_size=size,
        max_size=size,
        timeout=ACQUIRE_TIMEOUT,
        name="bench-async",
        **target.psycopg_kwargs(),
    )
    try:
        await pool.wait(ACQUIRE_TIMEOUT)
    except BaseException:
        await pool.close()
        raise
    return AsyncSession(pool.getconn, pool.putconn, pool.close, warm=size)


async def _open_psycopg_pool_async(target: Target, size: int) -> AsyncSession:
    psycopg_pool: Any = importlib.import_module("psycopg_pool")
    # Opened on the running loop (opening in the constructor is deprecated).
    pool = psycopg_pool.AsyncConnectionPool(
        target.dsn,
        min_size=size,
        max_size=size,
        timeout=ACQUIRE_TIMEOUT,
        kwargs=target.psycopg_kwargs(),
        name="bench-async",
        open=False,
    )
    try:
        await pool.open(wait=True, timeout=ACQUIRE_TIMEOUT)
    except BaseException:
        await pool.close()
        raise
    return AsyncSession(pool.getconn, pool.putconn, pool.close, warm=size)


async def _open_asyncpg(target: Target, size: int) -> AsyncSession:
    asyncpg: Any = importlib.import_module("asyncpg")
    # Its defaults otherwise: among them, release() runs asyncpg's reset query
    # (one round trip: RESET ALL, UNLISTEN *, ...) on every returned connection.
    pool = await asyncpg.create_pool(min_size=size, max_size=size, **target.asyncpg_kwargs())
    # acquire() waits without a timeout by default; a stuck pool shows up as
    # a run that does not end (HANG_GRACE), as for the others.
    return AsyncSession(pool.acquire, pool.release, pool.close, warm=size)


async def _open_dedicated_async(target: Target, size: int) -> AsyncSession:
    return await _dedicated_async(target.psycopg_async_connect, size)


async def _open_dedicated_asyncpg(target: Target, size: int) -> AsyncSession:
    return await _dedicated_async(target.asyncpg_connect, size)


async def _dedicated_async(connect: Callable[[], Awaitable[Any]], size: int) -> AsyncSession:
    # One private connection per task and `size` tasks, as _dedicated(). The
    # pair costs next to nothing and never suspends: acquire() returns a future
    # that is already done (awaiting it does not yield to the loop) and
    # release() another (next(repeat(done), conn) is `done`, in C).
    conns: List[Any] = []
    try:
        for _ in range(size):
            conns.append(await connect())
    except BaseException:
        for conn in conns:
            await conn.close()
        raise
    loop = asyncio.get_running_loop()
    released = loop.create_future()
    released.set_result(None)
    give_back = functools.partial(next, itertools.repeat(released))

    def per_task(index: int) -> Tuple[AsyncAcquire, AsyncRelease]:
        handed: asyncio.Future[Any] = loop.create_future()
        handed.set_result(conns[index])
        return itertools.repeat(handed).__next__, give_back

    async def close() -> None:
        for conn in conns:
            await conn.close()

    acquire, release = per_task(0)
    return AsyncSession(acquire, release, close, per_task=per_task, max_tasks=size)


CONTENDERS: Tuple[Contender, ...] = (
    Contender(
        "pgreservoir",
        "pgreservoir",
        "pgreservoir",
        (),
        _open_pgreservoir,
        "pgreservoir.ConnectionPool (getconn/putconn), health checks on",
    ),
    Contender(
        "pgreservoir-fifo",
        "pgreservoir fifo",
        "pgreservoir",
        (),
        functools.partial(_open_pgreservoir, strict=True),
        "pgreservoir.ConnectionPool with barge_window=0: strict first come, first served "
        "(see docs/fairness.md)",
    ),
    Contender(
        "pgreservoir-otel",
        "pgreservoir +otel",
        "pgreservoir",
        ("opentelemetry.sdk",),
        _open_pgreservoir_otel,
        "pgreservoir.ConnectionPool recording to an OpenTelemetry SDK that collects every "
        "second (run only when named: compare it with pgreservoir for the cost of metrics)",
        in_default=False,
    ),
    Contender(
        "pgreservoir-psycopg",
        "pgreservoir (psycopg 3)",
        "pgreservoir",
        ("psycopg",),
        functools.partial(_open_pgreservoir, psycopg3=True),
        "pgreservoir.ConnectionPool(connection_class=psycopg.Connection), health checks on",
        driver="psycopg",
    ),
    Contender(
        "pgreservoir-threaded",
        "pgreservoir.pool",
        "pgreservoir",
        ("pgreservoir.pool",),
        _open_pgreservoir_threaded,
        "pgreservoir.pool.ThreadedConnectionPool (psycopg2 drop-in), "
        "pool_options=PoolOptions(timeout=60)",
    ),
    Contender(
        "pgreservoir-dropin",
        "pgreservoir.pool+retry",
        "pgreservoir",
        ("pgreservoir.pool",),
        _open_pgreservoir_dropin,
        "pgreservoir.pool.ThreadedConnectionPool at psycopg2's defaults (no waiting) "
        f"+ the same retry loop (sleep {PSYCOPG2_RETRY_DELAY * 1000:g} ms)",
    ),
    Contender(
        "psycopg2",
        "psycopg2.pool",
        "peer",
        (),
        _open_psycopg2,
        "psycopg2.pool.ThreadedConnectionPool + retry loop on PoolError "
        f"(sleep {PSYCOPG2_RETRY_DELAY * 1000:g} ms)",
    ),
    Contender(
        "psycopg_pool",
        "psycopg_pool",
        "peer",
        ("psycopg_pool",),
        _open_psycopg_pool,
        "psycopg_pool.ConnectionPool (psycopg 3)",
        driver="psycopg",
    ),
    Contender(
        "pgreservoir-sqlalchemy",
        "pgreservoir.sqlalchemy",
        "pgreservoir",
        ("sqlalchemy",),
        _open_reservoir_sqlalchemy,
        "pgreservoir.sqlalchemy.ReservoirPool over psycopg2 (max_overflow=0), the pool "
        "layer of create_engine(poolclass=ReservoirPool)",
    ),
    Contender(
        "sqlalchemy",
        "sqlalchemy",
        "peer",
        ("sqlalchemy",),
        _open_sqlalchemy,
        "sqlalchemy.pool.QueuePool over psycopg2 (max_overflow=0)",
    ),
    Contender(
        "dbutils",
        "dbutils",
        "peer",
        ("dbutils",),
        _open_dbutils,
        "dbutils.pooled_db.PooledDB over psycopg2 (blocking=True)",
    ),
    Contender(
        "unpooled",
        "unpooled",
        "reference",
        (),
        _open_unpooled,
        "reference: a new connection per operation",
    ),
    Contender(
        "dedicated",
        "dedicated",
        "reference",
        (),
        _open_dedicated,
        "reference: one private connection per thread, as many threads as connections",
        per_thread=True,
    ),
    Contender(
        "dedicated-psycopg",
        "dedicated (psycopg 3)",
        "reference",
        ("psycopg",),
        _open_dedicated_psycopg,
        "reference: the same with psycopg 3 connections (the psycopg 3 pools' limit)",
        per_thread=True,
        driver="psycopg",
    ),
    Contender(
        "pgreservoir-async",
        "pgreservoir (asyncio)",
        "pgreservoir",
        ("psycopg",),
        _open_pgreservoir_async,
        "pgreservoir.AsyncConnectionPool over psycopg.AsyncConnection (getconn/putconn), "
        "health checks on",
        driver="psycopg-async",
        is_async=True,
    ),
    Contender(
        "psycopg_pool-async",
        "psycopg_pool (asyncio)",
        "peer",
        ("psycopg_pool",),
        _open_psycopg_pool_async,
        "psycopg_pool.AsyncConnectionPool (getconn/putconn)",
        driver="psycopg-async",
        is_async=True,
    ),
    Contender(
        "asyncpg",
        "asyncpg",
        "peer",
        ("asyncpg",),
        _open_asyncpg,
        "asyncpg.create_pool (acquire/release; its own driver, reset query on release)",
        driver="asyncpg",
        is_async=True,
    ),
    Contender(
        "dedicated-async",
        "dedicated (asyncio)",
        "reference",
        ("psycopg",),
        _open_dedicated_async,
        "reference: one private psycopg.AsyncConnection per task, as many tasks as "
        "connections (the psycopg asyncio pools' limit)",
        per_thread=True,
        driver="psycopg-async",
        is_async=True,
    ),
    Contender(
        "dedicated-asyncpg",
        "dedicated (asyncpg)",
        "reference",
        ("asyncpg",),
        _open_dedicated_asyncpg,
        "reference: one private asyncpg connection per task, as many tasks as connections "
        "(the asyncpg pool's limit)",
        per_thread=True,
        driver="asyncpg",
        is_async=True,
    ),
)

#: The dedicated reference of each driver: what "x ded" is measured against
#: (the contender with one private connection per worker, of that driver).
DEDICATED: Dict[str, str] = {c.driver: c.key for c in CONTENDERS if c.per_thread}


def contender_versions() -> Dict[str, str]:
    """Installed versions of pgreservoir, psycopg2 and the peers."""
    from importlib import metadata

    versions: Dict[str, str] = {}
    for dist in ("pgreservoir", "psycopg2-binary", "psycopg2", "psycopg", "psycopg-pool",
                 "SQLAlchemy", "DBUtils", "asyncpg"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    if "pgreservoir" not in versions:
        from .. import __version__

        versions["pgreservoir"] = __version__
    return versions
