"""Exceptions raised by pgreservoir pools.

Every pool error is a :class:`PoolError`. When psycopg2 is installed,
``PoolError`` subclasses ``psycopg2.pool.PoolError`` (and therefore
``psycopg2.Error``), so existing ``except psycopg2.pool.PoolError`` and
``except psycopg2.Error`` clauses keep catching everything pgreservoir raises.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

try:  # psycopg2 is the driver today, but the error hierarchy must not require it.
    from psycopg2.pool import PoolError as _Base
except ImportError:  # pragma: no cover - exercised only without psycopg2
    _Base = Exception  # type: ignore[misc,assignment]

__all__ = ["PoolClosed", "PoolError", "PoolTimeout", "TooManyRequests"]


class PoolError(_Base):
    """Base class of every error a pgreservoir pool raises.

    ``pool_name`` names the pool; ``snapshot`` holds its gauges (size, idle,
    in_use, waiting...) at the moment of the error, for logs and post-mortems.
    """

    def __init__(
        self,
        message: str = "",
        *,
        pool_name: Optional[str] = None,
        snapshot: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(message)
        self.pool_name = pool_name
        self.snapshot: dict[str, Any] = dict(snapshot or {})

    def __reduce__(self) -> Any:
        # psycopg2.Error pickles its own fields only; keep ours across processes.
        return (
            _rebuild,
            (type(self), str(self), self.pool_name, self.snapshot),
        )


def _rebuild(
    cls: type[PoolError], message: str, pool_name: Optional[str], snapshot: dict[str, Any]
) -> PoolError:
    return cls(message, pool_name=pool_name, snapshot=snapshot)


class PoolTimeout(PoolError):
    """No connection became available within the caller's timeout.

    The message names the pool and its state; when connecting was failing,
    ``__cause__`` is the last connection error.
    """


class PoolClosed(PoolError):
    """The pool is closed (or closing): it hands out no more connections."""


class TooManyRequests(PoolError):
    """The waiting line is full (``max_waiting``): the caller was turned away at once."""
