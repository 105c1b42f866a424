"""What the four drop-in classes share: psycopg_pool's constructor, checks,
attributes, statistics and error messages, mapped onto pgreservoir's options
and core. The pools themselves are in ``pool.py`` (threads) and
``pool_async.py`` (asyncio).
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

from .. import errors as _ours
from .._core import Core
from ..options import PoolOptions, next_pool_name
from .errors import PoolClosed, PoolTimeout, TooManyRequests

if sys.version_info >= (3, 13):
    from typing import TypeVar
else:  # a TypeVar with a default (psycopg depends on typing_extensions before 3.13)
    from typing_extensions import TypeVar
if sys.version_info >= (3, 11):
    from typing import Self
else:
    from typing_extensions import Self

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

__all__ = ["ACT", "CT", "PoolBase", "Self", "check_sizes"]

#: The connection class of a sync pool, as in psycopg_pool: a type checker
#: infers it from ``connection_class`` (``ConnectionPool[psycopg.Connection[DictRow]]``).
CT = TypeVar("CT", bound="psycopg.Connection[Any]", default="psycopg.Connection[TupleRow]")
#: The connection class of an asyncio pool.
ACT = TypeVar(
    "ACT", bound="psycopg.AsyncConnection[Any]", default="psycopg.AsyncConnection[TupleRow]"
)

# psycopg_pool's stats keys (its get_stats()), from pgreservoir's counters.
_GAUGES = ("pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting")
_COUNTERS = (
    "requests_num",
    "requests_queued",
    "requests_wait_ms",
    "requests_errors",
    "usage_ms",
    "returns_bad",
    "connections_num",
    "connections_ms",
    "connections_errors",
    "connections_lost",
)

#: A null pool's max_size 0 means no limit: the core gets this instead.
UNLIMITED = sys.maxsize


def check_sizes(min_size: int, max_size: Optional[int], null: bool) -> Tuple[int, int]:
    """psycopg_pool's size rules and messages; ``max_size`` None means min_size
    (0, no limit, for a null pool)."""
    if null:
        if min_size != 0:
            raise ValueError("null pools must have min_size = 0")
        if max_size is None:
            max_size = 0
    elif max_size is None:
        max_size = min_size
    if min_size < 0:
        raise ValueError("min_size cannot be negative")
    if max_size < min_size:
        raise ValueError("max_size must be greater or equal than min_size")
    if min_size == max_size == 0 and not null:
        raise ValueError("if min_size is 0 max_size must be greater than 0")
    return min_size, max_size


class PoolBase:
    """psycopg_pool's constructor and attributes, on pgreservoir's options and core."""

    _null = False
    _core: Core

    def _setup(
        self,
        conninfo: Any,
        *,
        connection_class: Any,
        kwargs: Any,
        min_size: int,
        max_size: Optional[int],
        configure: Any,
        check: Any,
        reset: Any,
        name: Optional[str],
        close_returns: bool,
        timeout: float,
        max_waiting: int,
        max_lifetime: float,
        max_idle: float,
        reconnect_timeout: float,
        reconnect_failed: Any,
        num_workers: int,
    ) -> Tuple[PoolOptions, Core]:
        """Check the arguments as psycopg_pool does; the options and the core."""
        min_size, max_size = check_sizes(min_size, max_size, self._null)
        if num_workers < 1:
            raise ValueError("num_workers must be at least 1")
        self.conninfo = conninfo
        self.kwargs = kwargs
        self.connection_class = connection_class
        self.name: str = name or next_pool_name()
        self.close_returns = False if self._null else close_returns
        self.max_waiting = max_waiting
        self.max_lifetime = max_lifetime
        self.max_idle = max_idle
        self.reconnect_timeout = reconnect_timeout
        self.num_workers = num_workers
        ref = weakref.ref(self)

        def gave_up() -> Any:
            # The shell calls it with no argument; psycopg_pool passes the pool.
            pool = ref()
            return None if pool is None or reconnect_failed is None else reconnect_failed(pool)

        #: What the shell calls when connecting has failed for reconnect_timeout.
        self._gave_up: Optional[Callable[[], Any]] = gave_up if reconnect_failed else None

        options = PoolOptions(
            name=self.name,
            timeout=float(timeout) if timeout > 0 else 0.0,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            configure=configure,
            check=check,
            reset=reset,
            reconnect_timeout=reconnect_timeout,
            reconnect_failed=reconnect_failed,
            num_workers=num_workers,
            # psycopg_pool hands a returned connection to the first waiter,
            # always; its callers may rely on that order (and its signature
            # has no place for the option).
            barge_window=0.0,
        )
        core = Core(
            options,
            name=self.name,
            min_size=min_size,
            max_size=max_size or UNLIMITED,
            lifo=False,  # psycopg_pool hands idle connections out in turn
            keep_idle=not self._null,
        )
        self._core = core
        self._timeout = float(timeout)
        self._opened = False  # open() was called
        self._usage = 0.0  # seconds inside connection() blocks
        self._popped: Dict[str, float] = {}  # counters at the last pop_stats()
        self._uncounted = 0  # checkouts of a null pool's wait(): no request for psycopg_pool
        # Guards _usage (added to by every thread leaving a connection() block)
        # and _popped (read and replaced by pop_stats()); reentrant, as a
        # callback run while the statistics are read may use the pool.
        self._stats_lock = threading.RLock()
        return options, core

    # -- attributes ------------------------------------------------------

    @property
    def min_size(self) -> int:
        """Connections kept open."""
        return self._core.min_size

    @property
    def max_size(self) -> int:
        """Most connections open at once (0 in a null pool: no limit)."""
        size = self._core.max_size
        return 0 if size == UNLIMITED else size

    @property
    def closed(self) -> bool:
        """True before open() and after close()."""
        return not self._opened or self._core.closed

    @property
    def timeout(self) -> float:
        """The default getconn() timeout (assignable, as in psycopg_pool)."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._timeout = value
        self._core.timeout = float(value) if value > 0 else 0.0

    # -- checks and errors -------------------------------------------------

    def _refusal(self) -> Optional[BaseException]:
        """Why a client cannot be served now (not open, or closed), if so."""
        if not self._opened:
            return PoolClosed(f"the pool {self.name!r} is not open yet", pool_name=self.name)
        if self._core.closed:
            return PoolClosed(f"the pool {self.name!r} is already closed", pool_name=self.name)
        return None

    def _reopen_error(self) -> PoolClosed:
        return PoolClosed(
            "pool has already been opened/closed and cannot be reused", pool_name=self.name
        )

    def _translate(self, exc: _ours.PoolError, timeout: float) -> BaseException:
        """pgreservoir's error as psycopg_pool's class, with psycopg_pool's message."""
        snapshot = exc.snapshot
        if isinstance(exc, _ours.TooManyRequests):
            waiting = snapshot.get("waiting", 0)
            err: BaseException = TooManyRequests(
                f"the pool {self.name!r} has already {waiting} requests waiting",
                pool_name=self.name,
                snapshot=snapshot,
            )
        elif isinstance(exc, _ours.PoolTimeout):
            err = PoolTimeout(
                f"couldn't get a connection after {timeout:.2f} sec",
                pool_name=self.name,
                snapshot=snapshot,
            )
        elif isinstance(exc, _ours.PoolClosed):
            err = PoolClosed(f"the pool {self.name!r} is closed", pool_name=self.name)
        else:
            err = ValueError(str(exc))
        err.__cause__ = exc.__cause__  # the connect error, when connecting failed
        return err

    def _foreign(self, conn: Any) -> ValueError:
        other = getattr(conn, "_pool", None)
        if other is not None and other is not self:
            where = f"it comes from pool {getattr(other, 'name', other)!r}"
        else:
            where = "it doesn't come from any pool"
        return ValueError(f"can't return connection to pool {self.name!r}, {where}: {conn}")

    def _wait_error(self, timeout: float) -> PoolTimeout:
        return PoolTimeout(
            f"pool initialization incomplete after {timeout} sec", pool_name=self.name
        )

    # -- statistics --------------------------------------------------------

    def _stats(self) -> Tuple[Dict[str, int], Dict[str, float]]:
        s = self._core.stats()
        max_size = self.max_size
        gauges = {
            "pool_min": s["min_size"],
            "pool_max": max_size,
            "pool_size": s["size"],
            "pool_available": s["idle"],
            "requests_waiting": s["waiting"],
        }
        queued = s["requests_waited"]
        counters = {
            "requests_num": float(s["requests"] - self._uncounted),
            # A null pool below max_size connects for its caller (in the
            # background here, in the caller's thread in psycopg_pool): that
            # caller did not queue, in psycopg_pool's terms.
            "requests_queued": float(s["requests_waited_full"] if self._null else queued),
            "requests_wait_ms": float(s["wait_ms_total"]),
            "requests_errors": float(s["timeouts"] + s["rejected"] + s["requests_cancelled"]),
            "usage_ms": self._usage * 1000.0,
            "returns_bad": float(s["returns_broken"] + s["returns_closed"]),
            "connections_num": float(s["connections_opened"] + s["connect_errors"]),
            "connections_ms": float(s["connect_ms_total"]),
            "connections_errors": float(s["connect_errors"]),
            "connections_lost": float(s["connections_lost"] - s["returns_broken"]),
        }
        return gauges, counters

    def _add_usage(self, seconds: float) -> None:
        """Count ``seconds`` spent inside a connection() block."""
        with self._stats_lock:
            self._usage += seconds

    def _uncount(self) -> None:
        """The next checkout is no request in psycopg_pool's statistics."""
        with self._stats_lock:
            self._uncounted += 1

    def _since_popped(self, pop: bool) -> Dict[str, int]:
        # One reading of the counters serves the result and, with ``pop``, the
        # new baseline: an event between two readings would never be reported.
        with self._stats_lock:
            gauges, counters = self._stats()
            popped = self._popped
            if pop:
                self._popped = counters
        result: Dict[str, int] = dict(gauges)
        for key in _COUNTERS:
            result[key] = round(counters[key] - popped.get(key, 0.0))
        return result

    def get_stats(self) -> Dict[str, int]:
        """psycopg_pool's statistics: gauges, and counters since the last pop_stats()."""
        return self._since_popped(pop=False)

    def pop_stats(self) -> Dict[str, int]:
        """get_stats(), and the counters start again from zero."""
        return self._since_popped(pop=True)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__module__}.{type(self).__name__} {self.name!r} "
            f"{self._core.describe() if self._opened else 'not open'} at 0x{id(self):x}>"
        )


def current_parameters(pool: PoolBase) -> Tuple[Callable[[], Any], Callable[[], Any]]:
    """What the driver calls before every connect: the pool's ``conninfo`` and
    ``kwargs`` as they are then (psycopg_pool reads them at every connect, so a
    program may change them, then drain(), to rotate credentials). Each is
    resolved if it is a callable; a coroutine function's awaitable is awaited
    by the asyncio driver. The pool is held weakly."""
    ref = weakref.ref(pool)

    def resolve(name: str) -> Any:
        target = ref()
        if target is None:
            raise RuntimeError("the pool was garbage-collected")
        value = getattr(target, name)
        if name == "kwargs" and value is None:
            return {}
        return value() if callable(value) else value

    def conninfo() -> Any:
        return resolve("conninfo")

    def kwargs() -> Any:
        return resolve("kwargs")

    # How the driver names the parameters' source in repr() and errors.
    conninfo.__qualname__ = f"{type(pool).__name__}.conninfo"
    kwargs.__qualname__ = f"{type(pool).__name__}.kwargs"
    return conninfo, kwargs


def warn_text(cls: type) -> str:
    """psycopg_pool's DeprecationWarning for a sync pool opened by its constructor."""
    name = cls.__name__
    return (
        f"the default for the {name} 'open' parameter will become 'False' in a future "
        f"release. Please use open={{True|False}} explicitly, or use the pool as context "
        f"manager using: `with {name}(...) as pool: ...`"
    )


def async_warn_text(cls: type) -> str:
    """psycopg_pool's RuntimeWarning for an async pool opened by its constructor."""
    name = cls.__name__
    return (
        f"opening the async pool {name} in the constructor is deprecated and will not be "
        f"supported anymore in a future release. Please use `await pool.open()`, or use "
        f"the pool as context manager using: `async with {name}(...) as pool: `..."
    )


Callback = Optional[Callable[..., Any]]
