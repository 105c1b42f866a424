"""``ConnectionPool`` and ``NullConnectionPool``: psycopg_pool's sync pools, on
pgreservoir's core and blocking shell."""

from __future__ import annotations

import time
import warnings
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Dict, Generic, Iterator, Optional, Type

import psycopg

from .. import errors as _ours
from .._logging import event_logger
from .._sync.shell import SyncPool
from ..drivers.psycopg_driver import PsycopgDriver
from ._base import CT, UNLIMITED, PoolBase, Self, check_sizes, current_parameters, warn_text

__all__ = ["ConnectionPool", "NullConnectionPool"]

# The default connection_class (typed Any: it stands for any CT when omitted).
_DEFAULT_CLASS: Any = psycopg.Connection


class ConnectionPool(Generic[CT], PoolBase):
    """psycopg_pool's ``ConnectionPool``, with pgreservoir's guarantees: no dead
    or expired connection handed out, every step bounded, a fair line, and
    ``close()`` complete (see docs/psycopg_pool.md for every difference)."""

    def __init__(
        self,
        conninfo: Any = "",
        *,
        connection_class: Type[CT] = _DEFAULT_CLASS,
        kwargs: Optional[Any] = None,
        min_size: int = 4,
        max_size: Optional[int] = None,
        open: Optional[bool] = None,
        configure: Optional[Callable[[CT], None]] = None,
        check: Optional[Callable[[CT], None]] = None,
        reset: Optional[Callable[[CT], None]] = None,
        name: Optional[str] = None,
        close_returns: bool = False,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 60 * 60.0,
        max_idle: float = 10 * 60.0,
        reconnect_timeout: float = 5 * 60.0,
        reconnect_failed: Any = None,
        num_workers: int = 3,
    ) -> None:
        options, core = self._setup(
            conninfo,
            connection_class=connection_class,
            kwargs=kwargs,
            min_size=min_size,
            max_size=max_size,
            configure=configure,
            check=check,
            reset=reset,
            name=name,
            close_returns=close_returns,
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            reconnect_timeout=reconnect_timeout,
            reconnect_failed=reconnect_failed,
            num_workers=num_workers,
        )
        if not (callable(conninfo) or callable(kwargs)):
            # Checked now, so a typo fails here rather than at the first connect.
            PsycopgDriver(conninfo, kwargs or {}, connection_class,
                          defaults=options.connect_defaults)
        conninfo_now, kwargs_now = current_parameters(self)
        driver = PsycopgDriver(
            conninfo_now, kwargs_now, connection_class, defaults=options.connect_defaults
        )
        self._shell = shell = SyncPool(
            core,
            driver,
            options,
            # Weakly: the shell's thread must not keep a dropped pool alive.
            owner=weakref.proxy(self),
            on_event=event_logger(self.name),
            reconnect_failed=self._gave_up,
        )
        self._finalizer = weakref.finalize(self, shell.close, 0.0)
        self._warn_at_first_use = open is None
        if open is None or open:
            self._open()

    # -- life cycle ------------------------------------------------------

    def _open(self) -> None:
        if self._opened:
            if self._core.closed:
                raise self._reopen_error()
            return
        self._opened = True
        self._shell.start()

    def _first_use(self) -> None:
        # psycopg_pool warns once, at the first use of a pool its constructor opened.
        if self._warn_at_first_use:
            self._warn_at_first_use = False
            warnings.warn(warn_text(type(self)), DeprecationWarning, stacklevel=3)

    def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Open the pool (connecting ``min_size`` connections in the background);
        with ``wait``, wait for them as :meth:`wait` does."""
        # (A pool its constructor opened still warns at first use, as in psycopg_pool.)
        self._open()
        if wait:
            self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> None:
        """Wait until ``min_size`` connections are open; after ``timeout`` the pool
        is closed and PoolTimeout raised."""
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        self._first_use()
        try:
            self._shell.wait(max(0.0, float(timeout)))
        except _ours.PoolError:
            self.close()
            raise self._wait_error(timeout) from None

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool: waiters get PoolClosed, idle connections close, and
        connections still in use after ``timeout`` are closed by force."""
        self._opened = True  # a closed pool cannot be opened again
        self._shell.close(max(0.0, float(timeout)))
        self._finalizer.detach()

    def __enter__(self) -> Self:
        self._warn_at_first_use = False
        if self._opened and self._core.closed:
            raise self._reopen_error()
        self._open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- checkout / check-in ---------------------------------------------

    def getconn(self, timeout: Optional[float] = None) -> CT:
        """A connection, waiting in line up to ``timeout`` seconds (None: the
        pool's); give it back with :meth:`putconn`."""
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        self._first_use()
        if timeout is None:
            timeout = self._timeout
        try:
            conn: CT = self._shell.acquire(float(timeout) if timeout > 0 else 0.0)
        except _ours.PoolError as exc:
            raise self._translate(exc, timeout) from None
        conn._pool = self  # type: ignore[assignment]  # psycopg types it as its own pool
        return conn

    def putconn(self, conn: CT) -> None:
        """Give back a connection from :meth:`getconn`: rolled back if needed, and
        closed if the pool is closed or the connection broken."""
        owner = getattr(conn, "_pool", None)
        if owner is not self and not self._core.closed:
            raise self._foreign(conn)
        # (A connection the pool closed by force has lost its _pool: the core
        # knows it, and takes it back.)
        conn._pool = None
        try:
            self._shell.release(conn)
        except _ours.PoolError:
            conn._pool = owner
            raise self._foreign(conn) from None

    @contextmanager
    def connection(self, timeout: Optional[float] = None) -> Iterator[CT]:
        """``with pool.connection() as conn:``: committed at the end of the block,
        rolled back on an exception, always given back."""
        conn = self.getconn(timeout)
        start = time.monotonic()
        try:
            yield conn
            # Committed here as psycopg's `with conn:` would; on an exception
            # the rollback is left to putconn(), which bounds it.
            if not conn.closed and not conn.broken:
                conn.commit()
        finally:
            self._add_usage(time.monotonic() - start)
            self.putconn(conn)

    # -- management ------------------------------------------------------

    def resize(self, min_size: int, max_size: Optional[int] = None) -> None:
        """Change the sizes (checked as the constructor does)."""
        lo, hi = check_sizes(min_size, max_size, self._null)
        self._shell.resize(lo, hi or UNLIMITED)

    def check(self) -> None:
        """Check every idle connection now; the broken ones are replaced."""
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        self._shell.check_idle()

    def drain(self) -> None:
        """Replace every connection: idle ones now, those in use when returned."""
        self._shell.drain()

    @staticmethod
    def check_connection(conn: Any) -> None:
        """A check callback (``check=ConnectionPool.check_connection``): an empty
        query, in autocommit; raises if the connection does not work."""
        autocommit = conn.autocommit
        if not autocommit:
            conn.autocommit = True
        try:
            conn.execute("")
        finally:
            if not autocommit and not conn.closed:
                conn.autocommit = False

    def stats(self) -> Dict[str, Any]:
        """pgreservoir's own statistics (see :mod:`pgreservoir.stats`)."""
        return self._shell.stats()  # type: ignore[no-any-return]


class NullConnectionPool(ConnectionPool[CT]):
    """psycopg_pool's ``NullConnectionPool``: no idle connection kept; each client
    gets a new connection, closed when returned unless a client waits for it."""

    _null = True

    def __init__(
        self,
        conninfo: Any = "",
        *,
        connection_class: Type[CT] = _DEFAULT_CLASS,
        kwargs: Optional[Any] = None,
        min_size: int = 0,
        max_size: Optional[int] = None,
        open: Optional[bool] = None,
        configure: Optional[Callable[[CT], None]] = None,
        check: Optional[Callable[[CT], None]] = None,
        reset: Optional[Callable[[CT], None]] = None,
        name: Optional[str] = None,
        close_returns: bool = False,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 60 * 60.0,
        max_idle: float = 10 * 60.0,
        reconnect_timeout: float = 5 * 60.0,
        reconnect_failed: Any = None,
        num_workers: int = 3,
    ) -> None:
        super().__init__(
            conninfo,
            connection_class=connection_class,
            kwargs=kwargs,
            min_size=min_size,
            max_size=max_size,
            open=open,
            configure=configure,
            check=check,
            reset=reset,
            name=name,
            close_returns=close_returns,
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            reconnect_timeout=reconnect_timeout,
            reconnect_failed=reconnect_failed,
            num_workers=num_workers,
        )

    def wait(self, timeout: float = 30.0) -> None:
        """Check that a connection can be made (it is not kept); after
        ``timeout`` the pool is closed and PoolTimeout raised."""
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        self._first_use()
        # psycopg_pool's wait() is no client request: not counted in requests_num.
        self._uncount()
        try:
            conn = self._shell.acquire(max(0.0, float(timeout)))
        except _ours.PoolError:
            self.close()
            raise self._wait_error(timeout) from None
        self._shell.release(conn, close=True)

    def check(self) -> None:
        """Nothing to do: the pool keeps no connection."""

