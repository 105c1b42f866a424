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

Peers are optional imports, loaded with :func:`importlib.import_module` when a
contender is opened, so the package does not depend on them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import psycopg2
import psycopg2.extensions
import psycopg2.pool

__all__ = [
    "CONTENDERS",
    "DEDICATED",
    "PSYCOPG2_RETRY_DELAY",
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


@dataclass(frozen=True)
class Target:
    """Where a run's connections go: the server and the run's ``application_name``."""

    dsn: str
    application_name: str

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
        return {"autocommit": True, "application_name": self.application_name}

    def psycopg_connect(self) -> Any:
        """A new autocommit psycopg 3 connection tagged with the run's name."""
        psycopg: Any = importlib.import_module("psycopg")
        return psycopg.connect(self.dsn, **self.psycopg_kwargs())


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


@dataclass(frozen=True)
class Contender:
    """A pool (or reference) the benchmark can run."""

    key: str  # used on the command line and in JSON
    label: str  # shown in the table
    kind: str  # "pgreservoir", "peer" or "reference"
    requires: Tuple[str, ...]  # importable modules it needs
    opener: Callable[[Target, int], Session] = field(repr=False)
    note: str = ""
    # One connection per worker thread (dedicated): opened with min(size, threads).
    per_thread: bool = False
    # The driver of its connections; ratios to dedicated use the dedicated
    # reference of the same driver (DEDICATED).
    driver: str = "psycopg2"

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
        return self.opener(target, size)


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


def _open_pgreservoir(target: Target, size: int, *, psycopg3: bool = False) -> Session:
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
        **connect,
    )
    pool.wait(ACQUIRE_TIMEOUT)
    return Session(pool.getconn, pool.putconn, pool.close, warm=size)


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
)

#: The dedicated reference of each driver: what "x ded" is measured against
#: (the contender with one private connection per worker, of that driver).
DEDICATED: Dict[str, str] = {c.driver: c.key for c in CONTENDERS if c.per_thread}


def contender_versions() -> Dict[str, str]:
    """Installed versions of pgreservoir, psycopg2 and the peers."""
    from importlib import metadata

    versions: Dict[str, str] = {}
    for dist in ("pgreservoir", "psycopg2-binary", "psycopg2", "psycopg", "psycopg-pool",
                 "SQLAlchemy", "DBUtils"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    if "pgreservoir" not in versions:
        from .. import __version__

        versions["pgreservoir"] = __version__
    return versions
