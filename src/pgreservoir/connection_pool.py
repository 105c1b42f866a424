"""``ConnectionPool``: the modern pool facade over the engine."""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Dict, Iterator, Optional

from ._config import PoolConfig, check_seconds
from ._core import Engine
from ._logging import event_logger
from .driver import DEFAULT_CONNECT_OPTIONS, Psycopg2Driver

__all__ = ["ConnectionPool"]


class ConnectionPool:
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
        )
        driver = Psycopg2Driver(dsn, connect_kwargs, defaults=DEFAULT_CONNECT_OPTIONS)
        self._engine = engine = Engine(driver, config, on_event=event_logger(config.name))
        self._conninfo = driver.describe()
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
        return self._engine.acquire(timeout)

    def putconn(self, conn: Any, close: bool = False) -> None:
        """Give back a connection from :meth:`getconn`.

        It is rolled back if a transaction is open and its session settings are
        restored; ``close=True`` (or a broken connection) closes it instead.
        Returning a connection twice, or one from elsewhere, raises PoolError.
        """
        self._engine.release(conn, close)

    @contextlib.contextmanager
    def connection(self, timeout: Optional[float] = None) -> Iterator[Any]:
        """``with pool.connection() as conn:`` — commit on success, roll back on error.

        The connection always goes back to the pool, even if commit fails.
        """
        conn = self.getconn(timeout)
        try:
            yield conn
        except BaseException:
            # The engine rolls back whatever is left open when it takes it back.
            self._engine.release(conn)
            raise
        try:
            if not conn.closed:
                conn.commit()
        finally:
            self._engine.release(conn)

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
