"""SQLAlchemy on pgreservoir: ``create_engine(url, poolclass=ReservoirPool)``.

Needs the ``sqlalchemy`` extra (``pip install pgreservoir[sqlalchemy]``);
importing :mod:`pgreservoir` alone never imports SQLAlchemy. See
docs/sqlalchemy.md.
"""

from ._pool import ReservoirPool

__all__ = ["ReservoirPool"]
