"""pytest plugin for SQLAlchemy's own test suite: every engine on ReservoirPool.

Load it with ``-p shim`` (this directory on PYTHONPATH). With the
environment variable ``RESERVOIR_POOL=1`` every ``create_engine()`` call
for a PostgreSQL URL that names no ``poolclass`` or ``pool`` of its own (and
so would get QueuePool) gets ``poolclass=ReservoirPool`` instead; otherwise
the plugin does nothing, so the stock run has the same set-up. Asyncio
engines (an asyncio dialect, such as ``postgresql+psycopg_async``) get
``AsyncAdaptedReservoirPool``.
"""

from __future__ import annotations

import os
from typing import Any

if os.environ.get("RESERVOIR_POOL") == "1":
    import sqlalchemy
    import sqlalchemy.engine
    import sqlalchemy.engine.create
    from sqlalchemy.engine.url import make_url
    from sqlalchemy.pool import QueuePool

    from pgreservoir import sqlalchemy as reservoir

    _create_engine = sqlalchemy.engine.create.create_engine

    def create_engine(url: Any, **kwargs: Any) -> Any:
        free = "poolclass" not in kwargs and "pool" not in kwargs
        if free and make_url(url).get_backend_name() == "postgresql":
            u = make_url(url)
            dialect: Any = u.get_dialect()
            # Only where the engine would get QueuePool (or its asyncio twin).
            if issubclass(dialect.get_pool_class(u), QueuePool):
                if dialect.is_async:
                    kwargs["poolclass"] = reservoir.AsyncAdaptedReservoirPool
                else:
                    kwargs["poolclass"] = reservoir.ReservoirPool
        return _create_engine(url, **kwargs)

    sqlalchemy.create_engine = create_engine
    sqlalchemy.engine.create_engine = create_engine
    sqlalchemy.engine.create.create_engine = create_engine

    def pytest_collection_finish(session: Any) -> None:
        """Tests marked ``requires.queue_pool`` ("the target database is using
        QueuePool") test the pool's behaviour: run them on ReservoirPool too.
        The requirement checks ``isinstance(config.db.pool, QueuePool)`` with
        its module's global at run time."""
        from sqlalchemy.testing import requirements

        requirements.QueuePool = (QueuePool, reservoir.ReservoirPool)  # type: ignore[attr-defined,assignment]
