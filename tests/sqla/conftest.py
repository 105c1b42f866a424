"""Fixtures of the SQLAlchemy tests: engines on ReservoirPool, per driver, on a fresh database."""

from __future__ import annotations

from typing import Any, Callable, Iterator, List

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from pgreservoir.sqlalchemy import ReservoirPool
from pgreservoir.testing import PostgresServer

DRIVERS = ("psycopg2", "psycopg")


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    """The SQLAlchemy PostgreSQL driver of this test (psycopg2, psycopg 3)."""
    value: str = request.param
    return value


@pytest.fixture
def url(driver: str, postgres_server: PostgresServer, postgres_dsn: str) -> str:
    """A SQLAlchemy URL for the fresh database of ``postgres_dsn``."""
    import psycopg2.extensions

    dbname = psycopg2.extensions.parse_dsn(postgres_dsn)["dbname"]
    server = postgres_server
    return f"postgresql+{driver}://{server.user}@{server.host}:{server.port}/{dbname}"


@pytest.fixture
def make_engine(url: str) -> Iterator[Callable[..., Engine]]:
    """``make_engine(**kwargs)``: an engine on ReservoirPool (disposed after the test)."""
    engines: List[Engine] = []

    def make(**kwargs: Any) -> Engine:
        kwargs.setdefault("poolclass", ReservoirPool)
        engine = create_engine(url, **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()
