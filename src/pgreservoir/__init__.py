"""pgreservoir: a fast, fair, self-healing PostgreSQL connection pool.

``ConnectionPool`` is the modern interface; ``pgreservoir.pool`` holds
drop-in replacements for the classes of ``psycopg2.pool``.
"""

from __future__ import annotations

from .connection_pool import ConnectionPool
from .errors import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from .options import PoolOptions

__all__ = [
    "ConnectionPool",
    "PoolClosed",
    "PoolError",
    "PoolOptions",
    "PoolTimeout",
    "TooManyRequests",
    "__version__",
]

__version__ = "0.1.0"
