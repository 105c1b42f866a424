"""A drop-in replacement for psycopg_pool (3.3): change
``from psycopg_pool import ConnectionPool`` (or ``AsyncConnectionPool``,
``NullConnectionPool``, ``AsyncNullConnectionPool``) to
``from pgreservoir.psycopg_pool import ...`` and nothing else.

The classes take psycopg_pool's arguments, raise its errors with its
messages and report its statistics; underneath they run on pgreservoir's core,
so they keep pgreservoir's guarantees where psycopg_pool gives none (no dead or
expired connection handed out, every step bounded, cancellation-safe asyncio
pools, ``close()`` complete). Every difference is listed in
``docs/psycopg_pool.md``.
"""

from .errors import PoolClosed, PoolTimeout, TooManyRequests
from .pool import ConnectionPool, NullConnectionPool
from .pool_async import AsyncConnectionPool, AsyncNullConnectionPool

__all__ = [
    "AsyncConnectionPool",
    "AsyncNullConnectionPool",
    "ConnectionPool",
    "NullConnectionPool",
    "PoolClosed",
    "PoolTimeout",
    "TooManyRequests",
]
