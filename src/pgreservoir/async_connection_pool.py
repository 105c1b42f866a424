"""``AsyncConnectionPool``: the asyncio pool, for psycopg 3's ``AsyncConnection``.

It takes the same options as :class:`~pgreservoir.ConnectionPool` (declared
once in :class:`~pgreservoir.PoolOptions`) and runs on the same core; only
the shell differs: tasks on the pool's event loop instead of threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import weakref
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Optional, Union

from ._async.shell import AsyncPool
from ._core import Core
from ._logging import event_logger
from .connection_pool import bind_pool
from .drivers import make_async_driver
from .options import PoolOptions, check_seconds, check_sizes, keyword_parameters, next_pool_name

__all__ = ["AsyncConnectionPool"]


class AsyncConnectionPool:
    """A fair, self-healing pool of psycopg 3 ``AsyncConnection`` objects.

    ``conninfo`` and the keyword arguments that are not pool options go to
    ``connection_class.connect()`` (default ``psycopg.AsyncConnection``); the
    pool options are those of :class:`~pgreservoir.PoolOptions`, with the
    same defaults and meaning as for :class:`~pgreservoir.ConnectionPool`.
    ``configure``, ``reset`` and ``reconnect_failed`` may be coroutine
    functions. ``conninfo`` and the value of any libpq keyword
    (``password=fetch_token``) may be callables or coroutine functions,
    called at every connect for rotating credentials (docs/credentials.md);
    a coroutine function has the connect_timeout to return, and is
    cancelled with the connect.

    A pool belongs to one event loop: the one it is opened on (at
    construction if a loop is running, else at the first ``await`` on it, or
    ``await pool.open()``). Using it from another loop (``getconn()``,
    ``putconn()`` alike) raises RuntimeError and changes nothing.

    Cancellation is safe everywhere: a task cancelled while it waits in line,
    while its connection is checked or connected for it, while it returns
    one, or in ``wait()`` or ``close()``, always gets its CancelledError (a
    cancelled ``getconn()`` never returns a connection, however late the
    cancel lands), and the pool loses no slot and hands no connection to two
    tasks. The pool never closes a connection one of its tasks is still
    using. Keepalive pings (``check_idle_interval``) run side by side and
    never hold up a connect.
    """

    def __init__(
        self,
        conninfo: Union[str, Callable[[], Union[str, Awaitable[str]]], None] = None,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connection_class: Any = None,
        **kwargs: Any,
    ) -> None:
        options, connect_kwargs = PoolOptions.split(kwargs)
        lo, hi = check_sizes(min_size, max_size)
        name = options.name or next_pool_name()
        driver = make_async_driver(
            conninfo,
            connect_kwargs,
            connection_class=connection_class,
            defaults=options.connect_defaults,
            transaction_pooling=options.transaction_pooling,
        )
        self._options = options
        self._shell = shell = AsyncPool(
            Core(options, name=name, min_size=lo, max_size=hi),
            driver,
            options,
            on_event=event_logger(name),
            reconnect_failed=bind_pool(self, options.reconnect_failed),
        )
        self._conninfo = driver.describe()
        with contextlib.suppress(RuntimeError):  # no running loop: open on first use
            asyncio.get_running_loop()
            shell.start()
        # Garbage-collected while open: a warning, and what can be closed is.
        self._finalizer = weakref.finalize(self, shell.abandon_on_collect)

    # -- attributes ------------------------------------------------------

    @property
    def name(self) -> str:
        """The pool's name, used in errors, logs and stats."""
        return self._shell.name

    @property
    def min_size(self) -> int:
        """Connections kept open."""
        return self._shell.core.min_size

    @property
    def max_size(self) -> int:
        """Most connections open at once."""
        return self._shell.core.max_size

    @property
    def timeout(self) -> float:
        """Default getconn() wait, in seconds."""
        return self._shell.core.timeout

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._shell.core.closed

    @property
    def options(self) -> PoolOptions:
        """The pool's options (sizes aside)."""
        return self._options

    # -- life cycle ------------------------------------------------------

    async def open(self) -> None:
        """Start serving on the running event loop (done for you on first use)."""
        self._shell.start()

    async def wait(self, timeout: float = 30.0) -> None:
        """Wait until ``min_size`` connections are open; PoolTimeout otherwise."""
        await self._shell.wait(check_seconds("timeout", timeout))

    async def close(self, timeout: float = 5.0) -> None:
        """Close the pool: waiters get PoolClosed at once, idle connections close,
        connections in use get ``timeout`` seconds to come back before they are
        closed by force; every task of the pool ends. Idempotent."""
        await self._shell.close(check_seconds("timeout", timeout))
        self._finalizer.detach()

    def resize(self, min_size: int, max_size: int) -> None:
        """Change ``min_size`` and ``max_size`` while the pool runs."""
        lo, hi = check_sizes(min_size, max_size)
        self._shell.resize(lo, hi)

    def drain(self) -> None:
        """Replace every connection: idle ones now, those in use when they come
        back; new ones are made with the parameters of that moment (after a
        password change, to end the old sessions at once)."""
        self._shell.drain()

    async def __aenter__(self) -> AsyncConnectionPool:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- checkout / check-in --------------------------------------------

    async def getconn(self, timeout: Optional[float] = None) -> Any:
        """Take a connection; give it back with :meth:`putconn`.

        Waits in line up to ``timeout`` seconds (``None``: the pool's timeout;
        ``0``: do not wait) and raises PoolTimeout, TooManyRequests or PoolClosed.
        """
        return await self._shell.acquire(timeout)

    async def putconn(self, conn: Any, close: bool = False) -> None:
        """Give back a connection from :meth:`getconn` (rolled back and restored
        if needed; ``close=True`` closes it). Returning a connection twice, or
        one from elsewhere, raises PoolError."""
        await self._shell.release(conn, close)

    @contextlib.asynccontextmanager
    async def connection(self, timeout: Optional[float] = None) -> AsyncIterator[Any]:
        """``async with pool.connection() as conn:`` — commit on success, roll back
        on error or cancellation; the connection always goes back to the pool.
        If the error says the server connection is gone, the connection is
        closed and the idle ones get a round trip before their next use."""
        conn = await self.getconn(timeout)
        try:
            yield conn
        except BaseException as exc:
            shell = self._shell
            lost = shell.driver.is_disconnect(exc, conn) or shell.refused_for_role(exc, conn)
            if lost:
                shell.mark_suspect()
            await self.putconn(conn, lost)
            raise
        try:
            if not conn.closed:
                await conn.commit()
        finally:
            await self.putconn(conn)

    # -- observability ---------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """Gauges (size, idle, in_use, waiting...) and counters since the pool opened."""
        return self._shell.stats()  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self._shell.describe()} ({self._conninfo})>"


AsyncConnectionPool.__init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("conninfo", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
        inspect.Parameter("min_size", inspect.Parameter.KEYWORD_ONLY, default=1),
        inspect.Parameter("max_size", inspect.Parameter.KEYWORD_ONLY, default=10),
        inspect.Parameter("connection_class", inspect.Parameter.KEYWORD_ONLY, default=None),
        *keyword_parameters(),
        inspect.Parameter("connect_kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
)
