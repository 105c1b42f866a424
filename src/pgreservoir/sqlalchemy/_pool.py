"""``ReservoirPool``: a SQLAlchemy ``Pool`` whose line, checks and lifetimes are pgreservoir's.

SQLAlchemy's ``Pool`` base class keeps its whole contract: connection records
(so ``creator=``, ``connect_args``, ``do_connect`` and the dialect's hooks
apply), the events, ``pool_pre_ping``, ``pool_recycle``, invalidation and
``reset_on_return``. This class only decides which record a caller gets and
when: it hands them out through pgreservoir's blocking shell, which gives
SQLAlchemy users the fair line, the zero-round-trip liveness probe before
every hand-out, lifetimes with jitter, leak reports, fork safety and stats.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable, Dict, Optional, Tuple

from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import Pool

from .._core import Core
from .._logging import event_logger
from .._sync.shell import SyncPool
from ..connection_pool import capture_stack
from ..errors import PoolClosed, PoolTimeout
from ..options import PoolOptions, check_int, check_seconds, next_pool_name
from ._records import RecordDriver

__all__ = ["ReservoirPool", "make_options"]

#: Options that take a raw connection in pgreservoir: with SQLAlchemy the
#: pool events do their jobs (``connect``, ``reset``/``checkin``, ``checkout``).
_REFUSED = {"configure": "connect", "reset": "reset", "check": "checkout"}
# Guards making and dropping each pool's shell (rare: the first checkout,
# dispose()); one for all pools, so recreate() copies no per-pool lock.
_SHELL_LOCK = threading.Lock()
# A max_size for "no limit" (max_overflow=-1, or pool_size=0).
_UNBOUNDED = 1 << 30


def pool_events(name: str) -> Callable[[str, str], None]:
    """The shell's event sink: pgreservoir's log lines, but for "forced".

    dispose() closes the shell with connections still checked out; they are
    not closed by force (see RecordDriver.force_close): their holders return
    them, and they are closed then. So that is not worth a warning.
    """
    log = event_logger(name)

    def sink(kind: str, detail: str) -> None:
        if kind != "forced":
            log(kind, detail)

    return sink


def make_options(pool_options: Optional[PoolOptions], name: str) -> PoolOptions:
    """The pgreservoir options of a SQLAlchemy pool: the user's, with this
    integration's defaults where the user kept pgreservoir's."""
    if pool_options is None:
        pool_options = PoolOptions()
    elif not isinstance(pool_options, PoolOptions):
        raise TypeError(f"pool_options must be a pgreservoir.PoolOptions, got {pool_options!r}")
    for option, event in _REFUSED.items():
        if getattr(pool_options, option) is not None:
            raise ValueError(
                f"pool_options.{option} is not used with SQLAlchemy: listen to the pool's "
                f"{event!r} event instead (sqlalchemy.event.listen(engine, {event!r}, fn))"
            )
    changes: Dict[str, Any] = {}
    default = PoolOptions()
    if pool_options.name is None:
        changes["name"] = name
    # QueuePool keeps pool_size connections however long they sit idle.
    if pool_options.max_idle == default.max_idle:
        changes["max_idle"] = math.inf
    return pool_options.replace(**changes) if changes else pool_options


def sizes(pool_size: Any, max_overflow: Any) -> Tuple[int, int]:
    """(pool_size, max_size) from QueuePool's pool_size and max_overflow
    (as QueuePool: a negative max_overflow, or pool_size 0, means no limit)."""
    pool_size = check_int("pool_size", pool_size, 0)
    max_overflow = check_int("max_overflow", max_overflow, -(1 << 62))
    if pool_size == 0 or max_overflow < 0:
        return pool_size, _UNBOUNDED
    return pool_size, pool_size + max_overflow


class _QueueView:
    """What QueuePool's queue tells (``empty()``, ``qsize()``, ``maxsize``,
    ``use_lifo``), read from a ReservoirPool."""

    __slots__ = ("_owner",)

    def __init__(self, owner: ReservoirPool) -> None:
        self._owner = owner

    @property
    def maxsize(self) -> int:
        return self._owner.size()

    @property
    def use_lifo(self) -> bool:
        return self._owner._use_lifo

    def qsize(self) -> int:
        return self._owner.checkedin()

    def empty(self) -> bool:
        return self.qsize() == 0


class ReservoirPool(Pool):
    """A SQLAlchemy pool on pgreservoir: ``create_engine(url, poolclass=ReservoirPool)``.

    Takes QueuePool's arguments (``pool_size``, ``max_overflow``,
    ``timeout``, ``use_lifo``, and the base class's ``recycle``, ``pre_ping``,
    ``reset_on_return``, ``echo``, ``logging_name``...), so every
    ``create_engine(pool_*)`` keyword works as with QueuePool. At most
    ``pool_size + max_overflow`` connections are open (``max_overflow=-1``
    or ``pool_size=0``: no limit); at most ``pool_size`` stay idle.
    ``timeout=None`` waits without limit.

    ``pool_options``: a :class:`pgreservoir.PoolOptions` for pgreservoir's own
    options (``max_lifetime``, ``leak_threshold``, ``barge_window``,
    ``check_idle_after``, ``max_waiting``...), passed as
    ``create_engine(url, poolclass=ReservoirPool, pool_options=PoolOptions(...))``.
    """

    _is_asyncio = False

    def __init__(  # noqa: PLR0917 (QueuePool's signature, read by create_engine)
        self,
        creator: Any,
        pool_size: int = 5,
        max_overflow: int = 10,
        timeout: Optional[float] = 30.0,
        use_lifo: bool = False,
        pool_options: Optional[PoolOptions] = None,
        **kw: Any,
    ) -> None:
        Pool.__init__(self, creator, **kw)
        self._pool_size, self._max_size = sizes(pool_size, max_overflow)
        self._max_overflow = max_overflow
        self._timeout = timeout
        self._wait = math.inf if timeout is None else check_seconds("timeout", timeout)
        self._use_lifo = bool(use_lifo)
        self._given_options = pool_options
        name = kw.get("logging_name") or next_pool_name()
        self._options = make_options(pool_options, name)
        # SyncPool here, the asyncio shell in AsyncAdaptedReservoirPool.
        self._shell: Any = None
        self._traced = self._options.leak_threshold is not None

    # -- the shell, made at the first checkout ----------------------------------

    def _new_shell(self) -> SyncPool:
        options = self._options
        core = Core(
            options,
            name=options.name or next_pool_name(),
            min_size=0,
            max_size=self._max_size,
            # A caller that finds room opens its connection in its own thread,
            # as with QueuePool: thread-local state seen by the creator, its
            # error raised to the caller, no connect queued behind another.
            inline=True,
            lifo=self._use_lifo,
        )
        shell = SyncPool(
            core,
            RecordDriver(self, f"SQLAlchemy pool {type(self).__name__}"),
            options,
            on_event=pool_events(core.name),
        )
        shell.start()
        return shell

    def _current_shell(self) -> Any:
        shell = self._shell
        if shell is None:
            with _SHELL_LOCK:
                shell = self._shell
                if shell is None:
                    shell = self._shell = self._new_shell()
        return shell

    # -- Pool's implementation hooks ----------------------------------------------

    def _do_get(self) -> Any:
        shell = self._current_shell()
        try:
            # First without waiting: an idle connection, or room to open one
            # here; else in line. (A refusal comes back as a tuple: cheap.)
            try:
                record = shell.acquire(0.0, True)
            except PoolTimeout:
                record = ()
            if type(record) is tuple:
                record = shell.acquire(self._wait)
        except PoolTimeout as exc:
            raise self._timed_out(exc) from exc
        except PoolClosed:
            # dispose() raced this checkout: serve it from the next shell.
            return self._do_get()
        record._pgreservoir_shell = shell
        if self._traced:
            entry = shell.entry_of(record)
            if entry is not None:
                entry.trace = capture_stack(4)
                entry.leak_reported = False
        return record

    def _timed_out(self, exc: PoolTimeout) -> BaseException:
        """What a caller whose checkout timed out gets."""
        cause = exc.__cause__
        if cause is not None:
            # Connecting fails: the caller gets the driver's error, as from
            # QueuePool (SQLAlchemy wraps it in a DBAPIError).
            return cause.with_traceback(None)
        return sa_exc.TimeoutError(
            f"{type(self).__name__} limit of size {self._pool_size} overflow {self.overflow()} "
            f"reached, connection timed out, timeout {self._wait:.2f} ({exc})",
            code="3o7r",
        )

    def _keep_idle(self, shell: Any) -> bool:
        """Whether a returned connection may stay idle: QueuePool keeps at most
        pool_size idle, and closes overflow ones on return."""
        if self._pool_size and self._max_size > self._pool_size:
            return bool(shell.gauges()["idle"] < self._pool_size)
        return True

    def _do_return_conn(self, record: Any) -> None:
        shell = self._owns(record)
        if shell is None:
            # Checked out before dispose() (or from elsewhere): not pooled again.
            record.close()
            return
        shell.release(record, not self._keep_idle(shell))

    # -- Pool's public methods --------------------------------------------------------

    def dispose(self) -> None:
        """Close the idle connections; those checked out are closed when returned.

        The pool stays usable: the next checkout opens new connections.
        """
        with _SHELL_LOCK:
            shell, self._shell = self._shell, None
        if shell is not None:
            shell.close(0.0)
        self.logger.info("Pool disposed. %s", self.status())

    def recreate(self) -> ReservoirPool:
        """A new pool with the same arguments and event listeners."""
        self.logger.info("Pool recreating")
        return self.__class__(
            self._creator,
            pool_size=self._pool_size,
            max_overflow=self._max_overflow,
            timeout=self._timeout,
            use_lifo=self._use_lifo,
            pool_options=self._given_options,
            pre_ping=self._pre_ping,
            recycle=self._recycle,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            _dispatch=self.dispatch,
            dialect=self._dialect,
        )

    def _gauge(self, key: str) -> int:
        shell = self._shell
        return 0 if shell is None else int(shell.gauges()[key])

    def status(self) -> str:
        return (
            f"Pool size: {self.size()}  Connections in pool: {self.checkedin()} "
            f"Current Overflow: {self.overflow()} Current Checked out "
            f"connections: {self.checkedout()}"
        )

    def size(self) -> int:
        """``pool_size``: the connections kept open once opened."""
        return self._pool_size

    def timeout(self) -> Optional[float]:
        """``pool_timeout``: seconds a checkout waits (None: no limit)."""
        return self._timeout

    def checkedin(self) -> int:
        """Idle connections."""
        return self._gauge("idle")

    def checkedout(self) -> int:
        """Connections in use."""
        return self._gauge("in_use")

    @property
    def _pool(self) -> _QueueView:
        # QueuePool's queue, which its tests read: a read-only view of ours.
        return _QueueView(self)

    @property
    def _overflow(self) -> int:
        # QueuePool's own counter, which its tests read: the same quantity.
        return self._gauge("size") - self._pool_size

    def overflow(self) -> int:
        """Open connections beyond ``pool_size`` (negative while below it), as QueuePool."""
        return self._gauge("size") - self._pool_size if self._pool_size else 0

    def stats(self) -> Dict[str, Any]:
        """pgreservoir's gauges and counters (:meth:`pgreservoir.ConnectionPool.stats`)."""
        shell = self._current_shell()
        return shell.stats()  # type: ignore[no-any-return]

    def _owns(self, record: Any) -> Any:
        """The current shell, if ``record`` came from it and it is open; else None."""
        shell = self._shell
        if shell is None or shell.core.closed:
            return None
        return shell if getattr(record, "_pgreservoir_shell", None) is shell else None

    @property
    def pool_options(self) -> PoolOptions:
        """The pgreservoir options in effect."""
        return self._options
