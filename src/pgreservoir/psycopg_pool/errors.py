"""The drop-in's errors: psycopg_pool's classes and messages, and pgreservoir's.

Each class is a ``psycopg.OperationalError`` like psycopg_pool's, a subclass
of psycopg_pool's own class when psycopg_pool is installed (so an
``except psycopg_pool.PoolTimeout`` elsewhere in a program still catches it),
and of pgreservoir's (``pool_name``, ``snapshot``, pickling).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple, Type

import psycopg

from .. import errors as _ours

__all__ = ["PoolClosed", "PoolTimeout", "TooManyRequests"]


def _reference(name: str) -> Tuple[Type[BaseException], ...]:
    try:
        import psycopg_pool
    except ImportError:
        return (psycopg.OperationalError,)
    return (getattr(psycopg_pool, name),)


class _DropInError:
    """Initialises both error hierarchies (psycopg's and pgreservoir's)."""

    def __init__(
        self,
        message: str = "",
        *,
        pool_name: Optional[str] = None,
        snapshot: Optional[Mapping[str, Any]] = None,
    ) -> None:
        _ours.PoolError.__init__(
            self, message, pool_name=pool_name, snapshot=snapshot  # type: ignore[arg-type]
        )
        psycopg.Error.__init__(self, message)  # type: ignore[arg-type]


class PoolTimeout(_DropInError, _ours.PoolTimeout, *_reference("PoolTimeout")):  # type: ignore[misc]
    """No connection within the timeout (psycopg_pool's PoolTimeout)."""


class PoolClosed(_DropInError, _ours.PoolClosed, *_reference("PoolClosed")):  # type: ignore[misc]
    """The pool is not open, or closed (psycopg_pool's PoolClosed)."""


_TooManyBase = _reference("TooManyRequests")


class TooManyRequests(_DropInError, _ours.TooManyRequests, *_TooManyBase):  # type: ignore[misc]
    """The waiting line is full (psycopg_pool's TooManyRequests)."""
