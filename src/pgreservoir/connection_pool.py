"""``ConnectionPool``: the modern pool facade over the engine."""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Dict, Iterator, Optional

from ._config import PoolConfig, check_seconds
from ._core import Engine
from ._helpers import PoolHelpers
from ._logging import event_logger
from ._logging import logger as _logger
from .driver import DEFAULT_CONNECT_OPTIONS, Psycopg2Driver

__all__ = ["ConnectionPool"]


def _bind_pool(
    pool: ConnectionPool, callback: Optional[Callable[[ConnectionPool], None]]
) -> Optional[Callable[[], None]]:
    """Give the engine a no-argument callback that calls ``callback(pool)``.

    Holds the pool weakly, so the engine does not keep the pool alive.
    """
    if callback is None:
        return None
    if not callable(callback):
        raise TypeError(f"reconnect_failed must be a callable taking the pool, got {callback!r}")
    ref = weakref.ref(pool)

    def call() -> None:
        target = ref()
        if target is not None:
            callback(target)

    return call


class ConnectionPool(PoolHelpers):
    """A fair, self-healing pool of psycopg2 connections.

    ``dsn`` and ``**connect_kwargs`` are passed to ``psycopg2.connect()`` (and
    validated now: an unknown option raises ``ValueError``). Unless you set
    them, ``connect_timeout=10`` and TCP keepalives (idle 30 s, interval 10 s,
    count 5) are added; see :data:`pgreservoir.driver.DEFAULT_CONNECT_OPTIONS`.

    Sizes: ``min_size`` connections are opened in the background at once and
    kept open; the pool grows towards ``max_size`` only while callers wait,
    and closes surplus connections idle for ``max_idle`` seconds.

    Waiting: when every connection is in use, :meth:`getconn` waits in a FIFO
    line up to ``timeout`` seconds, then raises :class:`~pgreservoir.PoolTimeout`.
    ``max_waiting > 0`` caps the line (:class:`~pgreservoir.TooManyRequests`).

    Health: connections older than ``max_lifetime`` (minus up to 5% jitter)
    are replaced; an idle connection whose server side has gone is detected
    without a round trip and replaced; one idle longer than
    ``check_idle_after`` seconds also gets a ``SELECT 1`` before hand-out
    (``None`` disables that round trip).

    Hooks: ``configure(conn)`` runs once on each new connection, ``reset(conn)``
    on each return; if either raises or leaves a transaction open the
    connection is discarded.

    Resilience: when connecting fails the pool retries in the background with
    exponential backoff (one attempt at a time); waiting callers get a
    PoolTimeout carrying the last connection error, or, with
    ``fail_fast=True``, get it at once while the server is unreachable.
    ``reconnect_failed(pool)`` is called once after ``reconnect_timeout``
    seconds of failures (the pool keeps retrying). ``leak_threshold``
    reports connections held longer than that, with where they were taken.
    ``check_idle_interval`` pings idle connections in the background so that
    ones killed by a firewall or ``idle_session_timeout`` are replaced early.
    """

    def __init__(
        self,
        dsn: Optional[str] = None,
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 3600.0,
        max_idle: float = 600.0,
        check_idle_after: Optional[float] = 60.0,
        configure: Optional[Callable[[Any], None]] = None,
        reset: Optional[Callable[[Any], None]] = None,
        name: Optional[str] = None,
        fail_fast: bool = False,
        reconnect_timeout: float = 300.0,
        reconnect_failed: Optional[Callable[[ConnectionPool], None]] = None,
        leak_threshold: Optional[float] = None,
        check_idle_interval: Optional[float] = None,
        **connect_kwargs: Any,
    ) -> None:
        config = PoolConfig.build(
            name=name,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            check_idle_after=check_idle_after,
            configure=configure,
            reset=reset,
            fail_fast=fail_fast,
            reconnect_timeout=reconnect_timeout,
            reconnect_failed=_bind_pool(self, reconnect_failed),
            leak_threshold=leak_threshold,
            check_idle_interval=check_idle_interval,
        )
        driver = Psycopg2Driver(dsn, connect_kwargs, defaults=DEFAULT_CONNECT_OPTIONS)
        self._driver = driver
        self._engine = engine = Engine(driver, config, on_event=event_logger(config.name))
        self._conninfo = driver.describe()
        # Leak tracing costs a stack walk per checkout: only pay it when asked.
        self._acquire = engine.acquire if leak_threshold is None else self._acquire_traced
        self._release = engine.release if leak_threshold is None else self._release_traced
        # putconn() is exactly the engine's release (same arguments and errors):
        # bind it per instance and save a Python frame on every check-in.
        self.putconn = self._release  # type: ignore[method-assign]
        engine.start()
        # Close the pool (and stop its thread) when it is garbage-collected or,
        # if still open, at interpreter exit. The callback holds the engine, not
        # the pool, so it does not keep the pool alive.
        self._finalizer = weakref.finalize(self, engine.close, 0.0)

    # -- attributes ------------------------------------------------------

    @property
    def name(self) -> str:
        """The pool's name, used in errors, logs and stats."""
        return self._engine.name

    @property
    def min_size(self) -> int:
        """Connections kept open."""
        return self._engine.min_size

    @property
    def max_size(self) -> int:
        """Most connections open at once."""
        return self._engine.max_size

    @property
    def timeout(self) -> float:
        """Default getconn() wait, in seconds."""
        return self._engine.timeout

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._engine.closed

    # -- checkout / check-in --------------------------------------------

    def getconn(self, timeout: Optional[float] = None) -> Any:
        """Take a connection; you must give it back with :meth:`putconn`.

        Waits in line up to ``timeout`` seconds (``None``: the pool's timeout;
        ``0``: do not wait) and raises PoolTimeout, TooManyRequests or PoolClosed.
        """
        if timeout is not None:
            timeout = check_seconds("timeout", timeout)
        return self._acquire(timeout)

    def putconn(self, conn: Any, close: bool = False) -> None:
        """Give back a connection from :meth:`getconn`.

        It is rolled back if a transaction is open and its session settings are
        restored; ``close=True`` (or a broken connection) closes it instead.
        Returning a connection twice, or one from elsewhere, raises PoolError.
        """
        self._release(conn, close)

    def _acquire_traced(self, timeout: Optional[float]) -> Any:
        conn = self._engine.acquire(timeout)
        self._engine.trace_checkout(conn)
        return conn

    def _release_traced(self, conn: Any, close: bool = False) -> None:
        held = self._engine.was_reported_leak(conn)
        self._engine.release(conn, close)
        if held is not None:
            _logger.warning(
                "pool %r: a connection reported as leaked came back after %.1f s", self.name, held
            )

    @contextlib.contextmanager
    def connection(self, timeout: Optional[float] = None) -> Iterator[Any]:
        """``with pool.connection() as conn:`` — commit on success, roll back on error.

        The connection always goes back to the pool, even if commit fails.
        """
        conn = self.getconn(timeout)
        try:
            yield conn
        except BaseException as exc:
            # The engine rolls back whatever is left open when it takes it back.
            lost = self._driver.is_disconnect(exc, conn)
            if lost:
                self._engine.mark_suspect()
            self._release(conn, lost)
            raise
        try:
            if not conn.closed:
                conn.commit()
        finally:
            self._release(conn)

    # -- management ------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """Gauges (size, idle, in_use, waiting...) and counters since the pool opened."""
        return self._engine.stats()

    def wait(self, timeout: float = 30.0) -> None:
        """Block until ``min_size`` connections are open; PoolTimeout otherwise.

        Call it at start-up to fail fast when the database is unreachable.
        """
        self._engine.wait(check_seconds("timeout", timeout))

    def resize(self, min_size: int, max_size: int) -> None:
        """Change ``min_size`` and ``max_size`` while the pool runs."""
        self._engine.resize(min_size, max_size)

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool: no new checkouts; in-use connections get ``timeout`` s to return.

        Waiters get PoolClosed at once; idle connections close at once;
        connections still in use after ``timeout`` are closed by force.
        Idempotent.
        """
        self._engine.close(check_seconds("timeout", timeout))
        self._finalizer.detach()

    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name!r} {self._engine.describe()} "
            f"({self._conninfo})>"
        )
