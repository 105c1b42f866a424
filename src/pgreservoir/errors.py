"""Exceptions raised by pgreservoir pools.

Every pool error is a :class:`PoolError`. When psycopg2 is installed,
``PoolError`` subclasses ``psycopg2.pool.PoolError`` (and therefore
``psycopg2.Error``), so existing ``except psycopg2.pool.PoolError`` and
``except psycopg2.Error`` clauses keep catching everything pgreservoir raises.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, NoReturn, Optional, Tuple, Type, TypeVar

from .stats import GAUGE_KEYS

try:  # psycopg2 is the driver today, but the error hierarchy must not require it.
    from psycopg2.pool import PoolError as _Base
except ImportError:  # pragma: no cover - exercised only without psycopg2
    _Base = Exception  # type: ignore[misc,assignment]

__all__ = ["ConnectParametersError", "PoolClosed", "PoolError", "PoolTimeout", "TooManyRequests"]

_E = TypeVar("_E", bound="PoolError")


class PoolError(_Base):
    """Base class of every error a pgreservoir pool raises.

    ``pool_name`` names the pool; ``snapshot`` holds its gauges (size, idle,
    in_use, waiting...) at the moment of the error, for logs and post-mortems.
    """

    # Class-level defaults: an exception's attribute dict costs more than the
    # exception itself, and a refusal (the psycopg2 drop-in's "connection pool
    # exhausted") is raised in a loop by the callers that retry it. The
    # snapshot and the notes of a refusal are built when first read.
    pool_name: Optional[str] = None
    _snapshot: Optional[Dict[str, Any]] = None
    _gauges: Tuple[int, ...] = ()  # values in GAUGE_KEYS order, until snapshot is read
    _note: Optional[Tuple[Callable[..., List[str]], Tuple[Any, ...]]] = None  # deferred notes
    _notes: Optional[List[str]] = None

    def __init__(
        self,
        message: str = "",
        *,
        pool_name: Optional[str] = None,
        snapshot: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(message)
        if pool_name is not None:
            self.pool_name = pool_name
        if snapshot is not None:
            self._snapshot = dict(snapshot)

    @classmethod
    def _deferred(
        cls: Type[_E],
        message: str,
        pool_name: str,
        gauges: Tuple[int, ...],
        notes: Callable[..., List[str]],
        notes_args: Tuple[Any, ...],
    ) -> _E:
        """An error whose snapshot (from ``gauges``) and notes
        (``notes(*notes_args)``) are made only if someone reads them."""
        err = cls.__new__(cls, message)  # BaseException.__new__ sets args; no __init__ needed
        err.pool_name = pool_name
        err._gauges = gauges
        err._note = (notes, notes_args)
        return err

    @property
    def snapshot(self) -> Dict[str, Any]:
        """The pool's gauges when the error was raised (see ``stats.GAUGE_KEYS``)."""
        snapshot = self._snapshot
        if snapshot is None:
            snapshot = self._snapshot = dict(zip(GAUGE_KEYS, self._gauges))
        return snapshot

    @snapshot.setter
    def snapshot(self, value: Mapping[str, Any]) -> None:
        self._snapshot = dict(value)

    @property
    def __notes__(self) -> List[str]:
        """Notes printed under the traceback (``add_note()`` appends here)."""
        notes = self._notes
        if notes is None:
            notes = self._notes = []
            deferred = self._note
            if deferred is not None:
                render, args = deferred
                notes.extend(render(*args))
        return notes

    @__notes__.setter
    def __notes__(self, value: List[str]) -> None:
        self._notes = list(value)

    def __reduce__(self) -> Any:
        # psycopg2.Error pickles its own fields only; keep ours across processes.
        return (
            _rebuild,
            (type(self), str(self), self.pool_name, self.snapshot, self.__notes__),
        )


def _rebuild(
    cls: type[PoolError],
    message: str,
    pool_name: Optional[str],
    snapshot: dict[str, Any],
    notes: Optional[List[str]] = None,
) -> PoolError:
    err = cls(message, pool_name=pool_name, snapshot=snapshot)
    if notes:
        err.__notes__ = notes
    return err


class PoolTimeout(PoolError):
    """No connection became available within the caller's timeout.

    The message names the pool and its state; when connecting was failing,
    ``__cause__`` is the last connection error.
    """


class PoolClosed(PoolError):
    """The pool is closed (or closing): it hands out no more connections."""


class TooManyRequests(PoolError):
    """The waiting line is full (``max_waiting``): the caller was turned away at once."""


class ConnectParametersError(PoolError):
    """A callable given for the DSN or a connect keyword (rotating credentials)
    raised, returned the wrong type, or (asyncio) did not return within the
    connect_timeout. The connect fails: the pool counts it as a connect error
    and retries with its backoff; a caller waiting for that connection gets
    PoolTimeout with this error as ``__cause__``. The message names the
    callable and the type it returned, never the value."""


def throw(error: BaseException) -> NoReturn:
    """Raise ``error``, keeping no reference to it in the raising frame.

    A frame that holds the exception it raises (in a local, or through a
    plan or waiter) is reached again by that exception's traceback: a
    reference cycle, freed only by the garbage collector. Errors raised in a
    loop (a retried "connection pool exhausted") must not make garbage.
    Callers pass the error straight from the object that carried it, after
    clearing that object's reference.
    """
    try:
        raise error
    finally:
        del error
