"""Drop-in replacements for the classes of ``psycopg2.pool``.

Change ``from psycopg2 import pool`` to ``from pgreservoir import pool`` (or
``from psycopg2.pool import X`` to ``from pgreservoir.pool import X``) and
nothing else: the classes take the same arguments, return the same
connections, raise the same errors with the same messages. Underneath they
are thin facades over pgreservoir's core, so they also fix psycopg2.pool's
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
from typing import Any, Callable, Dict, Mapping, NoReturn, Optional, Tuple, Union

from psycopg2.pool import PoolError

from . import options as _options
from ._core import Core
from ._helpers import PoolHelpers
from ._logging import event_logger
from ._sync.shell import SyncPool
from .connection_pool import bind_pool, capture_stack
from .drivers import make_driver
from .errors import PoolClosed, PoolTimeout, TooManyRequests
from .errors import PoolError as _PoolError
from .options import check_seconds, next_pool_name

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
class PoolOptions(_options.PoolOptions):
    """pgreservoir's options for the psycopg2-compatible pools: the same as
    :class:`pgreservoir.PoolOptions` (declared there, with their meaning),
    except that ``timeout`` defaults to ``0``: "connection pool exhausted" at
    once, as psycopg2 does. Pass it as ``pool_options=`` (or a dict with the
    same keys). The sizes are ``minconn`` and ``maxconn``.

    ``timeout > 0`` makes ``getconn()`` wait in a fair (FIFO) line instead;
    on expiry it raises :class:`PoolTimeout`, still with the message
    "connection pool exhausted". ``max_idle``: psycopg2 closes a connection
    above ``minconn`` the moment it is returned; use ``0`` to come close to
    that. ``reconnect_failed`` is called with the pool.
    """

    timeout: float = _options.with_default("timeout", 0.0)

    @classmethod
    def coerce(cls, value: Union[_options.PoolOptions, Mapping[str, Any], None]) -> PoolOptions:
        """``value`` as PoolOptions: None gives the defaults, a dict its keys."""
        if value is None:
            return cls()
        if isinstance(value, PoolOptions):
            return value
        if isinstance(value, _options.PoolOptions):
            # The generic class (timeout defaults to 30 s there): take it as given.
            return cls(**{f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - _options.OPTION_NAMES)
            if unknown:
                sizes = {"min_size", "max_size"} & set(unknown)
                hint = " (the sizes are minconn and maxconn)" if sizes else ""
                raise TypeError(
                    f"unknown pool option(s) {', '.join(map(repr, unknown))}{hint}; "
                    f"accepted: {', '.join(sorted(_options.OPTION_NAMES))}"
                )
            return cls(**value)
        raise TypeError(
            f"pool_options must be a PoolOptions, a dict or None, got {type(value).__name__}"
        )


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
    """The shell's log sink, except that closing connections in use is routine here.

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
        mistaken = sorted(_options.OPTION_NAMES.intersection(kwargs))
        if mistaken:
            raise TypeError(
                f"{type(self).__name__}() got {', '.join(map(repr, mistaken))} as keyword "
                "argument(s), which go to psycopg2.connect(); pass pool settings as "
                f"pool_options=PoolOptions({mistaken[0]}=...)"
            )
        dsn = kwargs.pop("dsn", None)
        name = options.name or next_pool_name()
        driver = make_driver(
            dsn,
            kwargs,
            defaults=options.connect_defaults,
            args=args,
            transaction_pooling=options.transaction_pooling,
        )
        # Timeouts carry psycopg2's message from the core on: no second error
        # to build for each "exhausted" that a retry loop asks for again.
        refusal = (EXHAUSTED_MESSAGE, _NOTE_WAIT if options.timeout == 0 else "")
        core = Core(options, name=name, min_size=lo, max_size=hi, inline=True, refusal=refusal)
        shell = SyncPool(
            core,
            driver,
            options,
            on_event=_compat_events(name),
            reconnect_failed=bind_pool(self, options.reconnect_failed),
        )
        shell.fill()  # psycopg2: minconn connections now; errors propagate
        shell.start()  # then refill to minconn and retire old connections in the background
        self._shell = shell
        self._options = options
        # Leak tracing walks the stack per checkout: only when asked for.
        self._checkout = shell.acquire if options.leak_threshold is None else self._traced
        self._timeout = options.timeout
        self._conninfo = driver.describe()
        # Keys are this facade's business: the core tracks connections, not
        # keys. Guarded by _keys_lock: key -> conn, id(conn) -> key, and
        # whether the caller closed the pool (closeall() twice must raise).
        # Connections taken without a key are not in these maps at all.
        self._keys_lock = threading.Lock()
        self._by_key: Dict[Any, Any] = {}
        self._key_of: Dict[int, Any] = {}
        self._closed_by_caller = False
        # Close the pool when it is garbage-collected or, still open, at
        # interpreter exit. The callback holds the shell, not the pool.
        self._finalizer = weakref.finalize(self, shell.close, 0.0)

    # -- psycopg2's attributes ---------------------------------------------

    @property
    def minconn(self) -> int:
        """Connections kept open (setting it resizes the pool)."""
        return self._shell.core.min_size

    @minconn.setter
    def minconn(self, value: Any) -> None:
        lo, hi = _check_conn_sizes(value, self._shell.core.max_size)
        self._shell.resize(lo, hi)

    @property
    def maxconn(self) -> int:
        """Most connections open at once (setting it resizes the pool)."""
        return self._shell.core.max_size

    @maxconn.setter
    def maxconn(self, value: Any) -> None:
        lo, hi = _check_conn_sizes(self._shell.core.min_size, value)
        self._shell.resize(lo, hi)

    @property
    def closed(self) -> bool:
        """Whether the pool is closed (by :meth:`closeall`, or at interpreter exit)."""
        return self._shell.core.closed

    @property
    def name(self) -> str:
        """The pool's name, used in errors, logs and stats."""
        return self._shell.name

    @property
    def options(self) -> PoolOptions:
        """The pool's options (:class:`PoolOptions`)."""
        return self._options

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
            # The fast path, inlined: one call into the shell, which hands a
            # plain refusal back as the pool's gauges rather than raising it.
            # Threads retrying "exhausted" in a loop spend the GIL on refusals:
            # their cost decides how fast the threads holding connections go.
            try:
                got = self._checkout(self._timeout, True)
            except _PoolError as exc:
                return self._acquire_failed(exc, self._timeout)
            if type(got) is tuple:
                return self._refused(got)
            return got
        return self._getconn_keyed(key)

    def _refused(self, gauges: Tuple[int, ...]) -> Any:
        """psycopg2's "connection pool exhausted" (the core's refusal, already in
        its words), unless a slot is being re-opened (see _acquire_failed)."""
        core = self._shell.core
        if self._refilling(gauges):
            return self._acquire_failed(core.refused(gauges), 0.0)
        # Raised as made: no local holds it, so no cycle (see errors.throw).
        raise core.refused(gauges)

    def _refilling(self, gauges: Tuple[int, ...]) -> bool:
        """Not exhausted in psycopg2's sense: a slot is being re-opened by the
        background refill (the pool dropped a broken connection just now)."""
        _, max_size, _, _, in_use, _, opening = gauges
        return in_use < max_size and opening > 0 and not self._shell.core.closed

    def _traced(self, timeout: Optional[float], refusal: bool = False) -> Any:
        conn = self._shell.acquire(timeout, refusal)
        if type(conn) is tuple:
            return conn
        entry = self._shell.entry_of(conn)
        if entry is not None:
            entry.trace = capture_stack(3)
            entry.leak_reported = False
        return conn

    def _acquire(self, timeout: float) -> Any:
        try:
            return self._checkout(timeout)
        except _PoolError as exc:
            return self._acquire_failed(exc, timeout)

    def _acquire_failed(self, exc: _PoolError, timeout: float) -> Any:
        """Translate a checkout error, or wait for a slot the refill is re-opening."""
        shell = self._shell
        if type(exc) is PoolTimeout and timeout == 0 and exc._gauges:
            if self._refilling(exc._gauges):
                # psycopg2 would connect in this thread; wait for the refill's
                # connection instead, and fail as psycopg2 would if
                # connecting fails.
                try:
                    return shell.acquire(REFILL_WAIT)
                except PoolTimeout as waited:
                    if waited.__cause__ is not None:
                        raise waited.__cause__ from None
                    exc = waited
                except _PoolError as other:
                    exc = other
            else:
                try:  # already in psycopg2's words (the core's refusal)
                    raise exc
                finally:
                    del exc  # no cycle through this frame (see errors.throw)
        raise self._compat_error(exc, EXHAUSTED_MESSAGE) from exc.__cause__

    def _getconn_keyed(self, key: Any) -> Any:
        if self._shell.core.closed:
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
        self._shell.release(conn)
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
        shell = self._shell
        if key is None and conn is not None and not self._key_of:
            # The fast path (no keyed connections out), inlined. On a closed
            # pool the core forgets the connection (closeall() closed it),
            # then we raise as psycopg2 does.
            try:
                shell.release(conn, close)
            except _PoolError as exc:
                if shell.core.closed:
                    raise self._closed_error() from None
                raise self._compat_error(exc, UNKEYED_MESSAGE) from exc.__cause__
            if shell.core.closed:
                raise self._closed_error()
            return
        if shell.core.closed:
            self._put_after_close(conn)
        self._release(self._unmap(conn, key), close)

    def _release(self, conn: Any, close: Any) -> None:
        try:
            self._shell.release(conn, bool(close))
        except _PoolError as exc:
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
        # psycopg2 raises here. Let the core forget a connection it closed
        # by force, then say the pool is closed.
        if conn is not None:
            with contextlib.suppress(_PoolError):
                self._shell.release(conn)
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
        self._shell.close(0.0)
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

    def _helper_release(self, conn: Any, close: bool = False) -> None:
        self._release(conn, close)

    # -- errors --------------------------------------------------------------

    def _compat_error(self, exc: _PoolError, default: str) -> _PoolError:
        """The core's error with psycopg2's message; the core's text becomes a note."""
        if type(exc) is PoolTimeout and exc.args == (EXHAUSTED_MESSAGE,):
            return exc  # the core's refusal: psycopg2's message already
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

    def _closed_error(self) -> _PoolError:
        err = PoolClosed(CLOSED_MESSAGE, pool_name=self.name)
        _add_notes(err, f"pgreservoir: pool {self.name!r} was closed")
        return err

    def _unkeyed_error(self, why: str) -> _PoolError:
        err = _PoolError(UNKEYED_MESSAGE, pool_name=self.name)
        _add_notes(err, f"pgreservoir: pool {self.name!r}: {why}")
        return err

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self._shell.describe()} ({self._conninfo})>"


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
        if self._shell.core.closed:
            self._put_after_close(conn)
        self._release(self._unmap(conn, threading.get_ident()), close)
