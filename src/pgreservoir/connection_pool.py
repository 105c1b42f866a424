"""``ConnectionPool``: the modern pool facade, for psycopg2 or psycopg 3 connections."""

from __future__ import annotations

import inspect
import sys
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ._core import Core
from ._helpers import PoolHelpers
from ._logging import event_logger
from ._logging import logger as _logger
from ._sync.shell import SyncPool
from .drivers import make_driver
from .options import PoolOptions, check_seconds, check_sizes, keyword_parameters, next_pool_name

__all__ = ["ConnectionPool"]


def bind_pool(
    pool: Any, callback: Optional[Callable[[Any], None]]
) -> Optional[Callable[[], None]]:
    """A no-argument callable that calls ``callback(pool)``, holding the pool weakly
    (so the shell does not keep its facade alive)."""
    if callback is None:
        return None
    ref = weakref.ref(pool)

    def call() -> None:
        target = ref()
        if target is not None:
            callback(target)

    return call


def capture_stack(skip: int) -> List[Tuple[str, int, str]]:
    """Where the caller is: (file, line, function) of up to 16 frames (~2 us)."""
    frame: Any = sys._getframe(skip)
    stack: List[Tuple[str, int, str]] = []
    while frame is not None and len(stack) < 16:
        code = frame.f_code
        stack.append((code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    return stack


class ConnectionPool(PoolHelpers):
    """A fair, self-healing pool of psycopg2 or psycopg 3 connections.

    ``dsn`` and the keyword arguments that are not pool options go to
    ``psycopg2.connect()``, or with ``connection_class=`` (psycopg_pool's
    spelling, e.g. ``psycopg.Connection``) to ``connection_class.connect()``.
    They are validated now: an unknown option raises ``ValueError``.
    ``dsn`` and the value of any libpq keyword (``password=fetch_token``)
    may be callables, called at every connect, for rotating credentials
    (docs/credentials.md). Unless
    you set them, ``connect_timeout=10`` and TCP keepalives are added (the
    ``connect_defaults`` option; see :data:`pgreservoir.options.DEFAULT_CONNECT_OPTIONS`).

    Sizes: ``min_size`` connections are opened in the background at once and
    kept open; the pool grows towards ``max_size`` only while callers wait,
    and closes surplus connections idle for ``max_idle`` seconds.

    Every other keyword is a pool option (:class:`~pgreservoir.PoolOptions`
    declares them all, with their defaults and meaning): ``timeout``,
    ``max_waiting``, ``max_lifetime``, ``max_idle``, ``check_idle_after``,
    ``check_timeout``, ``configure``, ``reset``, ``name``, ``fail_fast``,
    ``reconnect_timeout``, ``reconnect_failed`` (called with the pool),
    ``leak_threshold``, ``check_idle_interval``, ``num_workers``,
    ``connect_defaults``, ``transaction_pooling``.
    """

    def __init__(
        self,
        dsn: Union[str, Callable[[], str], None] = None,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connection_class: Any = None,
        **kwargs: Any,
    ) -> None:
        options, connect_kwargs = PoolOptions.split(kwargs)
        lo, hi = check_sizes(min_size, max_size)
        name = options.name or next_pool_name()
        driver = make_driver(
            dsn,
            connect_kwargs,
            connection_class=connection_class,
            defaults=options.connect_defaults,
            transaction_pooling=options.transaction_pooling,
        )
        core = Core(options, name=name, min_size=lo, max_size=hi)
        self._options = options
        self._shell = shell = SyncPool(
            core,
            driver,
            options,
            on_event=event_logger(name),
            reconnect_failed=bind_pool(self, options.reconnect_failed),
        )
        self._conninfo = driver.describe()
        if options.leak_threshold is not None:
            # Leak tracing walks the stack per checkout: only when asked for.
            self._acquire = self._acquire_traced
            self._release = self._release_traced
        else:
            self._acquire = shell.acquire
            self._release = shell.release
            # getconn() and putconn() are exactly the shell's acquire and
            # release (same arguments, checks and errors): bound per instance
            # they save a Python frame each. Not when a subclass overrides them.
            if type(self).getconn is ConnectionPool.getconn:
                self.getconn = shell.acquire  # type: ignore[method-assign]
            if type(self).putconn is ConnectionPool.putconn:
                self.putconn = shell.release  # type: ignore[method-assign]
        shell.start()
        # Close the pool (and stop its thread) when it is garbage-collected or,
        # if still open, at interpreter exit. The callback holds the shell, not
        # the pool, so it does not keep the pool alive.
        self._finalizer = weakref.finalize(self, shell.close, 0.0)

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

    # -- checkout / check-in --------------------------------------------

    def getconn(self, timeout: Optional[float] = None) -> Any:
        """Take a connection; you must give it back with :meth:`putconn`.

        Waits in line up to ``timeout`` seconds (``None``: the pool's timeout;
        ``0``: do not wait) and raises PoolTimeout, TooManyRequests or PoolClosed.
        """
        return self._acquire(timeout)

    def putconn(self, conn: Any, close: bool = False) -> None:
        """Give back a connection from :meth:`getconn`.

        It is rolled back if a transaction is open and its session settings are
        restored; ``close=True`` (or a broken connection) closes it instead.
        Returning a connection twice, or one from elsewhere, raises PoolError.
        """
        self._release(conn, close)

    def _helper_acquire(self, timeout: Optional[float]) -> Any:
        return self.getconn(timeout)

    def _helper_release(self, conn: Any, close: bool = False) -> None:
        self.putconn(conn, close)

    def _acquire_traced(self, timeout: Optional[float]) -> Any:
        conn = self._shell.acquire(timeout)
        entry = self._shell.entry_of(conn)
        if entry is not None:
            entry.trace = capture_stack(3)
            entry.leak_reported = False
        return conn

    def _release_traced(self, conn: Any, close: bool = False) -> None:
        entry = self._shell.entry_of(conn)
        held = None
        if entry is not None and entry.leak_reported:
            held = self._shell.clock() - entry.taken_at
        self._shell.release(conn, close)
        if held is not None:
            _logger.warning(
                "pool %r: a connection reported as leaked came back after %.1f s", self.name, held
            )

    # -- management ------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """Gauges (size, idle, in_use, waiting...) and counters since the pool opened."""
        return self._shell.stats()  # type: ignore[no-any-return]

    def wait(self, timeout: float = 30.0) -> None:
        """Block until ``min_size`` connections are open; PoolTimeout otherwise.

        Call it at start-up to fail fast when the database is unreachable.
        """
        self._shell.wait(check_seconds("timeout", timeout))

    def resize(self, min_size: int, max_size: int) -> None:
        """Change ``min_size`` and ``max_size`` while the pool runs."""
        lo, hi = check_sizes(min_size, max_size)
        self._shell.resize(lo, hi)

    def drain(self) -> None:
        """Replace every connection: idle ones now, those in use when they come back.

        New connections are made with the parameters of that moment: after a
        password change that must end the old sessions at once (connections
        already open stay authenticated otherwise).
        """
        self._shell.drain()

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool: no new checkouts; in-use connections get ``timeout`` s to return.

        Waiters get PoolClosed at once; idle connections close at once;
        connections still in use after ``timeout`` are closed by force.
        Connects in progress are not waited for. Idempotent.
        """
        self._shell.close(check_seconds("timeout", timeout))
        self._finalizer.detach()

    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self._shell.describe()} ({self._conninfo})>"


# help(ConnectionPool) and IDEs that read signatures see every option.
ConnectionPool.__init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("dsn", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
        inspect.Parameter("min_size", inspect.Parameter.KEYWORD_ONLY, default=1),
        inspect.Parameter("max_size", inspect.Parameter.KEYWORD_ONLY, default=10),
        inspect.Parameter("connection_class", inspect.Parameter.KEYWORD_ONLY, default=None),
        *keyword_parameters(),
        inspect.Parameter("connect_kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
)
