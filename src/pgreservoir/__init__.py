"""pgreservoir: a fast, fair, self-healing PostgreSQL connection pool.

``ConnectionPool`` (threads; psycopg2 or psycopg 3) and ``AsyncConnectionPool``
(asyncio; psycopg 3) are the modern interface; ``pgreservoir.pool`` holds
drop-in replacements for the classes of ``psycopg2.pool``.
"""

from __future__ import annotations

from ._metrics import flush_metrics
from ._reset import async_discard_all, discard_all
from .async_connection_pool import AsyncConnectionPool
from .async_routing import AsyncRoutingPool
from .connection_pool import ConnectionPool
from .errors import ConnectParametersError, PoolClosed, PoolError, PoolTimeout, TooManyRequests
from .options import PoolOptions
from .routing import RoutingPool

__all__ = [
    "AsyncConnectionPool",
    "AsyncRoutingPool",
    "ConnectParametersError",
    "ConnectionPool",
    "PoolClosed",
    "PoolError",
    "PoolOptions",
    "PoolTimeout",
    "RoutingPool",
    "TooManyRequests",
    "__version__",
    "async_discard_all",
    "discard_all",
    "flush_metrics",
]

__version__ = "0.1.0"
