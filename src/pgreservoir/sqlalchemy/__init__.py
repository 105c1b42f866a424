"""SQLAlchemy on pgreservoir: ``create_engine(url, poolclass=ReservoirPool)``.

``ReservoirPool`` for ``create_engine()``; ``AsyncAdaptedReservoirPool`` for
``create_async_engine()``. Needs the ``sqlalchemy`` extra (``pip install
pgreservoir[sqlalchemy]``; asyncio engines also need greenlet); importing
:mod:`pgreservoir` alone never imports SQLAlchemy. See docs/sqlalchemy.md.
"""

from typing import Any

from ._pool import ReservoirPool

__all__ = ["AsyncAdaptedReservoirPool", "ReservoirPool"]


def __getattr__(name: str) -> Any:
    # The asyncio pool imports greenlet's bridge: only when asked for.
    if name == "AsyncAdaptedReservoirPool":
        from ._async_pool import AsyncAdaptedReservoirPool

        return AsyncAdaptedReservoirPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
