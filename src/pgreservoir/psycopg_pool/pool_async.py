"""``AsyncConnectionPool`` and ``AsyncNullConnectionPool``: psycopg_pool's
asyncio pools, on pgreservoir's core and asyncio shell."""

from __future__ import annotations

import asyncio
import time
import warnings
import weakref
from contextlib import asynccontextmanager
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Generic,
    Optional,
    Type,
)

import psycopg

from .. import errors as _ours
from .._async.shell import AsyncPool
from .._logging import event_logger
from ..drivers.psycopg_driver import AsyncPsycopgDriver
from ._base import (
    ACT,
    UNLIMITED,
    PoolBase,
    Self,
    async_warn_text,
    check_sizes,
    current_parameters,
)

__all__ = ["AsyncConnectionPool", "AsyncNullConnectionPool"]

# The default connection_class (typed Any: it stands for any ACT when omitted).
_DEFAULT_CLASS: Any = psycopg.AsyncConnection


def _abandon_silently(shell: AsyncPool) -> None:
    """A dropped pool's finalizer: close what can be closed without awaiting and
    cancel the pool's tasks, without the ResourceWarning pgreservoir's own pools
    give (psycopg_pool collects a dropped pool silently)."""
    shell.abandon_on_collect(warn=False)


def _running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class AsyncConnectionPool(Generic[ACT], PoolBase):
    """psycopg_pool's ``AsyncConnectionPool``, with pgreservoir's guarantees: safe
    under cancellation at every await, no dead or expired connection handed
    out, every step bounded, ``close()`` complete."""

    def __init__(
        self,
        conninfo: Any = "",
        *,
        connection_class: Type[ACT] = _DEFAULT_CLASS,
        kwargs: Optional[Any] = None,
        min_size: int = 4,
        max_size: Optional[int] = None,
        open: Optional[bool] = None,
        configure: Optional[Callable[[ACT], Awaitable[None]]] = None,
        check: Optional[Callable[[ACT], Awaitable[None]]] = None,
        reset: Optional[Callable[[ACT], Awaitable[None]]] = None,
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
            AsyncPsycopgDriver(conninfo, kwargs or {}, connection_class,
                               defaults=options.connect_defaults)
        conninfo_now, kwargs_now = current_parameters(self)
        driver = AsyncPsycopgDriver(
            conninfo_now, kwargs_now, connection_class, defaults=options.connect_defaults
        )
        self._shell = shell = AsyncPool(
            core,
            driver,
            options,
            # Weakly: the shell's tasks must not keep a dropped pool alive.
            owner=weakref.proxy(self),
            on_event=event_logger(self.name),
            reconnect_failed=self._gave_up,
        )
        self._finalizer = weakref.finalize(self, _abandon_silently, shell)
        self._warn_at_first_use = False
        if open:
            warnings.warn(async_warn_text(type(self)), RuntimeWarning, stacklevel=2)
        if open is None or open:
            if not _running():
                raise RuntimeError(f"{type(self).__name__} open with no running loop")
            self._warn_at_first_use = open is None
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
        if self._warn_at_first_use:
            self._warn_at_first_use = False
            warnings.warn(async_warn_text(type(self)), RuntimeWarning, stacklevel=3)

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Open the pool on the running loop; with ``wait``, wait as :meth:`wait`."""
        # (A pool its constructor opened still warns at first use, as in psycopg_pool.)
        self._open()
        if wait:
            await self.wait(timeout)

    async def wait(self, timeout: float = 30.0) -> None:
        """Wait until ``min_size`` connections are open; after ``timeout`` the pool
        is closed and PoolTimeout raised."""
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        self._first_use()
        try:
            await self._shell.wait(max(0.0, float(timeout)))
        except _ours.PoolError:
            await self.close()
            raise self._wait_error(timeout) from None

    async def close(self, timeout: float = 5.0) -> None:
        """Close the pool: waiters get PoolClosed, idle connections close, and
        connections still in use after ``timeout`` are closed by force; every
        task of the pool ends."""
        self._opened = True  # a closed pool cannot be opened again
        await self._shell.close(max(0.0, float(timeout)))
        self._finalizer.detach()

    async def __aenter__(self) -> Self:
        self._warn_at_first_use = False
        if self._opened and self._core.closed:
            raise self._reopen_error()
        self._open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- checkout / check-in ---------------------------------------------

    async def getconn(self, timeout: Optional[float] = None) -> ACT:
        """A connection, waiting in line up to ``timeout`` seconds (None: the pool's)."""
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        self._first_use()
        if timeout is None:
            timeout = self._timeout
        try:
            conn: ACT = await self._shell.acquire(float(timeout) if timeout > 0 else 0.0)
        except _ours.PoolError as exc:
            raise self._translate(exc, timeout) from None
        conn._pool = self  # type: ignore[assignment]  # psycopg types it as its own pool
        return conn

    async def putconn(self, conn: ACT) -> None:
        """Give back a connection from :meth:`getconn`."""
        owner = getattr(conn, "_pool", None)
        if owner is not self and not self._core.closed:
            raise self._foreign(conn)
        # (A connection the pool closed by force has lost its _pool: the core
        # knows it, and takes it back.)
        conn._pool = None
        try:
            await self._shell.release(conn)
        except _ours.PoolError:
            conn._pool = owner
            raise self._foreign(conn) from None
        except RuntimeError:  # from another event loop: refused before anything changed
            conn._pool = owner
            raise

    @asynccontextmanager
    async def connection(self, timeout: Optional[float] = None) -> AsyncIterator[ACT]:
        """``async with pool.connection() as conn:``: committed at the end of the
        block, rolled back on an exception or cancellation, always given back."""
        conn = await self.getconn(timeout)
        start = time.monotonic()
        try:
            yield conn
            # Committed here as psycopg's `async with conn:` would; on an
            # exception or cancellation the rollback is left to putconn(),
            # which bounds it.
            if not conn.closed and not conn.broken:
                await conn.commit()
        finally:
            self._add_usage(time.monotonic() - start)
            await self.putconn(conn)

    # -- management ------------------------------------------------------

    async def resize(self, min_size: int, max_size: Optional[int] = None) -> None:
        """Change the sizes (checked as the constructor does)."""
        lo, hi = check_sizes(min_size, max_size, self._null)
        self._shell.resize(lo, hi or UNLIMITED)

    async def check(self) -> None:
        """Check every idle connection now; the broken ones are replaced."""
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        await self._shell.check_idle()

    async def drain(self) -> None:
        """Replace every connection: idle ones now, those in use when returned."""
        self._shell.drain()

    @staticmethod
    async def check_connection(conn: Any) -> None:
        """A check callback: an empty query, in autocommit; raises if the connection
        does not work."""
        autocommit = conn.autocommit
        if not autocommit:
            await conn.set_autocommit(True)
        try:
            await conn.execute("")
        finally:
            if not autocommit and not conn.closed:
                await conn.set_autocommit(False)

    def stats(self) -> Dict[str, Any]:
        """pgreservoir's own statistics (see :mod:`pgreservoir.stats`)."""
        return self._shell.stats()  # type: ignore[no-any-return]


class AsyncNullConnectionPool(AsyncConnectionPool[ACT]):
    """psycopg_pool's ``AsyncNullConnectionPool``: no idle connection kept."""

    _null = True

    def __init__(
        self,
        conninfo: Any = "",
        *,
        connection_class: Type[ACT] = _DEFAULT_CLASS,
        kwargs: Optional[Any] = None,
        min_size: int = 0,
        max_size: Optional[int] = None,
        open: Optional[bool] = None,
        configure: Optional[Callable[[ACT], Awaitable[None]]] = None,
        check: Optional[Callable[[ACT], Awaitable[None]]] = None,
        reset: Optional[Callable[[ACT], Awaitable[None]]] = None,
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

    async def wait(self, timeout: float = 30.0) -> None:
        """Check that a connection can be made (it is not kept)."""
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        self._first_use()
        # psycopg_pool's wait() is no client request: not counted in requests_num.
        self._uncount()
        try:
            conn = await self._shell.acquire(max(0.0, float(timeout)))
        except _ours.PoolError:
            await self.close()
            raise self._wait_error(timeout) from None
        await self._shell.release(conn, close=True)

    async def check(self) -> None:
        """Nothing to do: the pool keeps no connection."""
