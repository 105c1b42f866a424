"""Drop-in replacements for the classes of ``psycopg2.pool``.

Change ``from psycopg2 import pool`` to ``from pgreservoir import pool`` (or
``from psycopg2.pool import X`` to ``from pgreservoir.pool import X``) and
nothing else: the classes take the same arguments, return the same
connections, raise the same errors with the same messages. Underneath they
are thin facades over pgreservoir's engine, so they also fix psycopg2.pool's
bugs (see ``docs/psycopg2-compat.md``, "Differences from psycopg2.pool"):

* a failed rollback in ``putconn()`` no longer leaks the slot;
* ``putconn(conn, key=<wrong key>)`` raises and leaves the pool untouched;
* connections taken without a key never collide with your integer keys;
* ``minconn > maxconn`` is refused instead of making the pool unbounded;
* the pool refills itself to ``minconn`` after dropping broken connections;
* connecting and rolling back happen outside the pool lock, so one slow
  connect does not stall every other thread.

pgreservoir's own features are reached through one extra keyword argument,
``pool_options``, which is never passed to ``psycopg2.connect()`` (and no
connection keyword is ever read as a pool option)::

    from pgreservoir import pool

    db = pool.ThreadedConnectionPool(
        2, 20, "dbname=app",
        pool_options=pool.PoolOptions(timeout=5.0, max_lifetime=1800),
    )

and through methods psycopg2's classes do not have: ``connection()``,
``cursor()``, ``execute()``, ``health_check()`` and ``stats()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import weakref
from typing import Any, Callable, Dict, Mapping, NoReturn, Optional, Union

from psycopg2.pool import PoolError

from ._config import PoolConfig, check_callback, check_flag, check_seconds, check_size
from ._core import Engine
from ._helpers import PoolHelpers
from ._logging import event_logger
from .driver import DEFAULT_CONNECT_OPTIONS, Psycopg2Driver
from .errors import PoolClosed, PoolTimeout, TooManyRequests
from .errors import PoolError as _EngineError

__all__ = [
    "CLOSED_MESSAGE",
    "EXHAUSTED_MESSAGE",
    "REFILL_WAIT",
    "UNKEYED_MESSAGE",
    "AbstractConnectionPool",
    "PersistentConnectionPool",
    "PoolClosed",
    "PoolError",
    "PoolOptions",
    "PoolTimeout",
    "SimpleConnectionPool",
    "ThreadedConnectionPool",
    "TooManyRequests",
]

# psycopg2's exact texts: code in the wild compares or searches them, so
# str(error) is exactly one of these. The details (pool name, sizes, what to
# do) are in the error's attributes and in a note shown in tracebacks.
#: ``str()`` of the error raised when no connection is free (PoolTimeout).
EXHAUSTED_MESSAGE = "connection pool exhausted"
#: ``str()`` of the error raised by a closed pool (PoolClosed).
CLOSED_MESSAGE = "connection pool is closed"
#: ``str()`` of the error raised by ``putconn()`` of a connection this pool
#: does not have out (foreign, already returned, or a wrong key).
UNKEYED_MESSAGE = "trying to put unkeyed connection"

#: Longest time ``getconn()`` with the default ``timeout=0`` waits for a
#: connection the pool is re-opening in the background (after it dropped a
#: broken one) when that connection is the only one that can be had:
#: psycopg2 would be connecting in the caller's thread at that point.
#: Longer than the default ``connect_timeout`` (10 s).
REFILL_WAIT = 15.0

_NOTE_WAIT = (
    "to wait for a free connection instead of failing at once, pass "
    "pool_options=PoolOptions(timeout=<seconds>)"
)


@dataclasses.dataclass(frozen=True)
class PoolOptions:
    """pgreservoir features for the psycopg2-compatible pools.

    Pass it as ``pool_options=`` (or a dict with the same keys). The defaults
    keep psycopg2's behaviour where it is observable and add the health
    features that cost nothing when things are fine.

    ``timeout``
        Seconds ``getconn()`` waits in a fair (FIFO) line when all ``maxconn``
        connections are in use. ``0`` (default): raise "connection pool
        exhausted" at once, as psycopg2 does. On expiry: :class:`PoolTimeout`,
        still with the message "connection pool exhausted".
    ``max_waiting``
        Most callers waiting at once (``0``: no limit); beyond it
        :class:`TooManyRequests` (message "connection pool exhausted").
    ``max_lifetime``
        Seconds after which a connection is replaced (minus up to 5% jitter),
        when it is next idle or returned.
    ``max_idle``
        Seconds an idle connection above ``minconn`` is kept before it is
        closed (psycopg2 closes it the moment it is returned: use ``0`` to
        come close to that).
    ``check_idle_after``
        A connection idle longer than this gets a ``SELECT 1`` before it is
        handed out (``None``: never). Connections whose server went away are
        detected without a round trip whatever this is.
    ``configure`` / ``reset``
        ``configure(conn)`` runs once on every new connection, ``reset(conn)``
        on every returned one; a connection for which either raises (or leaves
        a transaction open) is discarded.
    ``name``
        The pool's name in errors, logs and stats (default ``pool-N``).
    ``connect_defaults``
        libpq options added to every connect unless you set them yourself (as
        a keyword or in the DSN). Default: ``connect_timeout=10`` and TCP
        keepalives (``keepalives=1, keepalives_idle=30,
        keepalives_interval=10, keepalives_count=5``); ``{}`` adds nothing.
    ``fail_fast``, ``reconnect_timeout``, ``leak_threshold``, ``check_idle_interval``
        As for :class:`pgreservoir.ConnectionPool`: fail waiting callers at
        once while connecting fails; log an error after that many seconds of
        failed reconnects; report connections held longer than that (with
        where they were taken); ping idle connections in the background.
    """

    timeout: float = 0.0
    max_waiting: int = 0
    max_lifetime: float = 3600.0
    max_idle: float = 600.0
    check_idle_after: Optional[float] = 60.0
    configure: Optional[Callable[[Any], None]] = None
    reset: Optional[Callable[[Any], None]] = None
    name: Optional[str] = None
    connect_defaults: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_CONNECT_OPTIONS)
    )
    fail_fast: bool = False
    reconnect_timeout: float = 300.0
    leak_threshold: Optional[float] = None
    check_idle_interval: Optional[float] = None

    def __post_init__(self) -> None:
        # Validate here, so a bad value fails where it is written.
        check_seconds("timeout", self.timeout)
        check_size("max_waiting", self.max_waiting, 0)
        check_seconds("max_lifetime", self.max_lifetime, positive=True)
        check_seconds("max_idle", self.max_idle)
        check_seconds("check_idle_after", self.check_idle_after, allow_none=True)
        check_callback("configure", self.configure)
        check_callback("reset", self.reset)
        check_flag("fail_fast", self.fail_fast)
        check_seconds("reconnect_timeout", self.reconnect_timeout)
        check_seconds("leak_threshold", self.leak_threshold, allow_none=True, positive=True)
        check_seconds(
            "check_idle_interval", self.check_idle_interval, allow_none=True, positive=True
        )
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"name must be a str or None, got {self.name!r}")
        if not isinstance(self.connect_defaults, Mapping):
            raise TypeError(
                f"connect_defaults must be a mapping of libpq options, "
                f"got {self.connect_defaults!r}"
            )

    @classmethod
    def coerce(cls, value: Union[PoolOptions, Mapping[str, Any], None]) -> PoolOptions:
        """``value`` as PoolOptions: None gives the defaults, a dict its keys."""
        if value is None:
            return cls()
        if isinstance(value, PoolOptions):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - _OPTION_NAMES)
            if unknown:
                raise TypeError(
                    f"unknown pool option(s) {', '.join(map(repr, unknown))}; "
                    f"accepted: {', '.join(sorted(_OPTION_NAMES))}"
                )
            return cls(**value)
        raise TypeError(
            f"pool_options must be a PoolOptions, a dict or None, got {type(value).__name__}"
        )


_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(PoolOptions))


def _check_conn_sizes(minconn: Any, maxconn: Any) -> tuple[int, int]:
    """psycopg2 coerces with int(); then refuse what would make no sense."""
    lo, hi = int(minconn), int(maxconn)
    if lo < 0:
        raise ValueError(f"minconn must be >= 0, got {lo}")
    if hi < 1:
        raise ValueError(f"maxconn must be >= 1, got {hi}")
    if lo > hi:
        # psycopg2.pool accepts this and then never enforces maxconn.
        raise ValueError(
            f"minconn ({lo}) must not exceed maxconn ({hi}): "
            "psycopg2.pool would silently have no limit at all; "
            "raise maxconn or lower minconn"
        )
    return lo, hi


def _compat_events(pool_name: str) -> Callable[[str, str], None]:
    """The engine's log sink, except that closing connections in use is routine here.

    closeall() closing connections still in use is what psycopg2.pool does and
    what its users expect; log it at DEBUG instead of WARNING.
    """
    log = event_logger(pool_name)

    def on_event(kind: str, detail: str) -> None:
        log("closeall" if kind == "forced" else kind, detail)

    return on_event


def _add_notes(err: BaseException, *notes: str) -> None:
    # Python 3.11+ prints __notes__ under the traceback; older versions keep
    # them as an attribute. (BaseException.add_note does just this.)
    existing = list(getattr(err, "__notes__", ()))
    err.__notes__ = existing + [n for n in notes if n]


class AbstractConnectionPool(PoolHelpers):
    """Key-based pool of psycopg2 connections; the base of the classes below.

    ``minconn`` connections are opened now, in this thread (a connection
    error propagates); at most ``maxconn`` are open at once. ``*args`` and
    ``**kwargs`` go to ``psycopg2.connect()`` unchanged (a DSN, libpq keywords,
    ``connection_factory``, ``cursor_factory``...) except ``pool_options``,
    which configures the pool (:class:`PoolOptions`).

    Unlike psycopg2's own base class this one is complete and thread-safe:
    every method works on it, and :class:`SimpleConnectionPool` and
    :class:`ThreadedConnectionPool` are the same pool under two names.
    """

    def __init__(
        self,
        minconn: Any,
        maxconn: Any,
        *args: Any,
        pool_options: Union[PoolOptions, Mapping[str, Any], None] = None,
        **kwargs: Any,
    ) -> None:
        options = PoolOptions.coerce(pool_options)
        lo, hi = _check_conn_sizes(minconn, maxconn)
        mistaken = sorted(_OPTION_NAMES.intersection(kwargs))
        if mistaken:
            raise TypeError(
                f"{type(self).__name__}() got {', '.join(map(repr, mistaken))} as keyword "
                "argument(s), which go to psycopg2.connect(); pass pool settings as "
                f"pool_options=PoolOptions({mistaken[0]}=...)"
            )
        dsn = kwargs.pop("dsn", None)
        config = PoolConfig.build(
            name=options.name,
            min_size=lo,
            max_size=hi,
            timeout=options.timeout,
            max_waiting=options.max_waiting,
            max_lifetime=options.max_lifetime,
            max_idle=options.max_idle,
            check_idle_after=options.check_idle_after,
            configure=options.configure,
            reset=options.reset,
            fail_fast=options.fail_fast,
            reconnect_timeout=options.reconnect_timeout,
            leak_threshold=options.leak_threshold,
            check_idle_interval=options.check_idle_interval,
        )
        driver = Psycopg2Driver(dsn, kwargs, defaults=options.connect_defaults, args=args)
        engine = Engine(driver, config, open_inline=True, on_event=_compat_events(config.name))
        engine.fill_inline()  # psycopg2: minconn connections now; errors propagate
        engine.start()  # then refill to minconn and retire old connections in the background
        self._engine = engine
        # Leak tracing walks the stack per checkout: only when asked for.
        self._checkout = engine.acquire if options.leak_threshold is None else self._traced
        self._timeout = config.timeout
        self._conninfo = driver.describe()
        # Keys are this facade's business: the engine tracks connections, not
        # keys. Guarded by _keys_lock: key -> conn, id(conn) -> key, and
        # whether the caller closed the pool (closeall() twice must raise).
        # Connections taken without a key are not in these maps at all.
        self._keys_lock = threading.Lock()
        self._by_key: Dict[Any, Any] = {}
        self._key_of: Dict[int, Any] = {}
        self._closed_by_caller = False
        # Close the pool when it is garbage-collected or, still open, at
        # interpreter exit. The callback holds the engine, not the pool.
        self._finalizer = weakref.finalize(self, engine.close, 0.0)

    # -- psycopg2's attributes ---------------------------------------------

    @property
    def minconn(self) -> int:
        """Connections kept open (setting it resizes the pool)."""
        return self._engine.min_size

    @minconn.setter
    def minconn(self, value: Any) -> None:
        lo, hi = _check_conn_sizes(value, self._engine.max_size)
        self._engine.resize(lo, hi)

    @property
    def maxconn(self) -> int:
        """Most connections open at once (setting it resizes the pool)."""
        return self._engine.max_size

    @maxconn.setter
    def maxconn(self, value: Any) -> None:
        lo, hi = _check_conn_sizes(self._engine.min_size, value)
        self._engine.resize(lo, hi)

    @property
    def closed(self) -> bool:
        """Whether the pool is closed (by :meth:`closeall`, or at interpreter exit)."""
        return self._engine.closed

    @property
    def name(self) -> str:
        """The pool's name, used in errors, logs and stats."""
        return self._engine.name

    # -- checkout ----------------------------------------------------------

    def getconn(self, key: Any = None) -> Any:
        """Take a connection; give it back with :meth:`putconn`.

        With a ``key``, the connection is assigned to it and, until it is put
        back, ``getconn(key)`` returns that same connection. Raises PoolError
        "connection pool exhausted" when ``maxconn`` connections are in use
        (after waiting up to ``PoolOptions.timeout``, 0 by default) and
        "connection pool is closed" after :meth:`closeall`; a connect error
        propagates as psycopg2's own error.
        """
        if key is None:
            # The fast path, inlined: one call into the engine.
            try:
                return self._checkout(self._timeout)
            except _EngineError as exc:
                return self._acquire_failed(exc, self._timeout)
        return self._getconn_keyed(key)

    def _traced(self, timeout: Optional[float]) -> Any:
        conn = self._engine.acquire(timeout)
        self._engine.trace_checkout(conn)
        return conn

    def _acquire(self, timeout: float) -> Any:
        try:
            return self._checkout(timeout)
        except _EngineError as exc:
            return self._acquire_failed(exc, timeout)

    def _acquire_failed(self, exc: _EngineError, timeout: float) -> Any:
        """Translate a checkout error, or wait for a slot the refill is re-opening."""
        engine = self._engine
        if isinstance(exc, PoolTimeout) and timeout == 0 and not engine.closed:
            gauges = engine.gauges()
            if gauges["in_use"] < gauges["max_size"] and gauges["opening"] > 0:
                # Not exhausted in psycopg2's sense: a slot is being re-opened
                # by the background refill (the pool dropped a broken
                # connection just now). psycopg2 would connect in this thread;
                # wait for that connection instead, and fail as psycopg2
                # would if connecting fails.
                try:
                    return engine.acquire(REFILL_WAIT)
                except PoolTimeout as waited:
                    if waited.__cause__ is not None:
                        raise waited.__cause__ from None
                    exc = waited
                except _EngineError as other:
                    exc = other
        raise self._compat_error(exc, EXHAUSTED_MESSAGE) from exc.__cause__

    def _getconn_keyed(self, key: Any) -> Any:
        if self._engine.closed:
            raise self._closed_error()
        with self._keys_lock:
            conn = self._by_key.get(key)
        if conn is not None:
            return conn
        conn = self._acquire(self._timeout)
        with self._keys_lock:
            existing = self._by_key.get(key)
            if existing is None:
                self._by_key[key] = conn
                self._key_of[id(conn)] = key
                return conn
        # Another thread took a connection for the same key meanwhile.
        self._engine.release(conn)
        return existing

    # -- check-in ----------------------------------------------------------

    def putconn(self, conn: Any = None, key: Any = None, close: bool = False) -> None:
        """Give back a connection from :meth:`getconn`.

        One left in a transaction (or in error) is rolled back and kept; one
        whose session settings changed (autocommit, isolation level...) has
        them restored; a closed or broken one, or any with ``close=True``, is
        closed and its slot freed. ``conn`` may be omitted when ``key`` is
        given. Raises PoolError "trying to put unkeyed connection" for a
        connection this pool did not hand out, one already returned, or a key
        that does not match it; the pool is left untouched then.
        """
        engine = self._engine
        if key is None and conn is not None and not self._key_of:
            # The fast path (no keyed connections out), inlined. On a closed
            # pool the engine forgets the connection (closeall() closed it),
            # then we raise as psycopg2 does.
            try:
                engine.release(conn, close)
            except _EngineError as exc:
                if engine.closed:
                    raise self._closed_error() from None
                raise self._compat_error(exc, UNKEYED_MESSAGE) from exc.__cause__
            if engine.closed:
                raise self._closed_error()
            return
        if engine.closed:
            self._put_after_close(conn)
        self._release(self._unmap(conn, key), close)

    def _release(self, conn: Any, close: Any) -> None:
        try:
            self._engine.release(conn, bool(close))
        except _EngineError as exc:
            raise self._compat_error(exc, UNKEYED_MESSAGE) from exc.__cause__

    def _unmap(self, conn: Any, key: Any) -> Any:
        """Remove ``conn``'s key assignment (checking ``key`` matches); return the conn."""
        with self._keys_lock:
            if key is None:
                if conn is None:
                    raise self._unkeyed_error("no connection and no key given")
                mapped = self._key_of.pop(id(conn), None)
                if mapped is not None:
                    del self._by_key[mapped]
                return conn
            owned = self._by_key.get(key)
            if owned is None:
                raise self._unkeyed_error(f"no connection is checked out with key {key!r}")
            if conn is not None and owned is not conn:
                raise self._unkeyed_error(
                    f"key {key!r} belongs to another connection; "
                    "pass the key this connection was taken with, or no key"
                )
            del self._by_key[key]
            del self._key_of[id(owned)]
            return owned

    def _put_after_close(self, conn: Any) -> NoReturn:
        # psycopg2 raises here. Let the engine forget a connection it closed
        # by force, then say the pool is closed.
        if conn is not None:
            with contextlib.suppress(_EngineError):
                self._engine.release(conn)
        raise self._closed_error()

    # -- closing -----------------------------------------------------------

    def closeall(self) -> None:
        """Close every connection, idle and in use; the pool serves no more.

        Queries running on connections in use are interrupted. A second call
        raises PoolError "connection pool is closed", as with psycopg2 (unless
        the first close happened at interpreter exit or garbage collection).
        """
        with self._keys_lock:
            if self._closed_by_caller:
                raise self._closed_error()
            self._closed_by_caller = True
            self._by_key.clear()
            self._key_of.clear()
        self._engine.close(0.0)
        self._finalizer.detach()

    def __enter__(self) -> AbstractConnectionPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """``with pool:`` closes every connection at the end of the block."""
        with self._keys_lock:
            if self._closed_by_caller:
                return
        self.closeall()

    # Names psycopg2's base class gives these operations, for subclasses that
    # add their own locking around them (SimpleConnectionPool binds them).
    _getconn = getconn
    _putconn = putconn
    _closeall = closeall

    # -- helpers (see PoolHelpers) -------------------------------------------

    def _helper_acquire(self, timeout: Optional[float]) -> Any:
        if timeout is None:
            return self._acquire(self._timeout)
        return self._acquire(check_seconds("timeout", timeout))

    def _helper_release(self, conn: Any) -> None:
        self._release(conn, False)

    # -- errors --------------------------------------------------------------

    def _compat_error(self, exc: _EngineError, default: str) -> _EngineError:
        """The engine's error with psycopg2's message; the engine's text becomes a note."""
        if isinstance(exc, PoolClosed):
            text = CLOSED_MESSAGE
        elif isinstance(exc, (PoolTimeout, TooManyRequests)):
            text = EXHAUSTED_MESSAGE
        else:
            text = default
        err = type(exc)(text, pool_name=exc.pool_name, snapshot=exc.snapshot)
        hint = _NOTE_WAIT if text == EXHAUSTED_MESSAGE and self._timeout == 0 else ""
        _add_notes(err, f"pgreservoir: {exc}", hint)
        return err

    def _closed_error(self) -> _EngineError:
        err = PoolClosed(CLOSED_MESSAGE, pool_name=self.name)
        _add_notes(err, f"pgreservoir: pool {self.name!r} was closed")
        return err

    def _unkeyed_error(self, why: str) -> _EngineError:
        err = _EngineError(UNKEYED_MESSAGE, pool_name=self.name)
        _add_notes(err, f"pgreservoir: pool {self.name!r}: {why}")
        return err

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name!r} {self._engine.describe()} "
            f"({self._conninfo})>"
        )


class SimpleConnectionPool(AbstractConnectionPool):
    """psycopg2's pool for single-threaded programs (this one is thread-safe too)."""


class ThreadedConnectionPool(AbstractConnectionPool):
    """psycopg2's pool for multi-threaded programs."""


class PersistentConnectionPool(AbstractConnectionPool):
    """One connection per thread: ``getconn()`` returns the calling thread's
    connection until the thread gives it back with ``putconn()``.

    psycopg2 removed this class in 2.8; it is back with the same interface
    (keyed by ``threading.get_ident()``). A thread that ends without calling
    ``putconn()`` keeps its connection out, as with psycopg2.
    """

    def getconn(self, key: Any = None) -> Any:
        """The calling thread's connection (the same one until it is put back)."""
        if key is not None:
            raise TypeError("PersistentConnectionPool keys connections by thread: call getconn()")
        return self._getconn_keyed(threading.get_ident())

    # psycopg2's signature: the second positional argument is ``close``.
    def putconn(self, conn: Any = None, close: bool = False) -> None:  # type: ignore[override]
        """Give back the calling thread's connection (``conn`` may be omitted)."""
        if self._engine.closed:
            self._put_after_close(conn)
        self._release(self._unmap(conn, threading.get_ident()), close)
