"""Fixtures of the conformance suite: every test runs against both pool modules.

``impl`` is ``psycopg2.pool`` or ``pgreservoir.pool``; tests where the two
behave alike assert the same thing for both, tests of a documented
difference assert each module's own behaviour (see docs/psycopg2-compat.md).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Iterator, List

import psycopg2.extensions
import psycopg2.pool
import pytest

import pgreservoir.pool
from pgreservoir.testing import PostgresServer


class Impl:
    """One of the two pool modules under test."""

    def __init__(self, name: str, module: ModuleType) -> None:
        self.name = name
        self.module = module

    @property
    def ours(self) -> bool:
        """Whether this is pgreservoir.pool (for asserting documented differences)."""
        return self.module is pgreservoir.pool

    def __repr__(self) -> str:
        return self.name


IMPLS = [Impl("psycopg2", psycopg2.pool), Impl("pgreservoir", pgreservoir.pool)]


@pytest.fixture(params=IMPLS, ids=repr)
def impl(request: pytest.FixtureRequest) -> Impl:
    """The pool module under test."""
    value: Impl = request.param
    return value


@pytest.fixture
def dbname(postgres_dsn: str) -> str:
    """Name of the test's fresh database."""
    return str(psycopg2.extensions.parse_dsn(postgres_dsn)["dbname"])


def _pool_maker(module: Any, dsn: str) -> Iterator[Callable[..., Any]]:
    """Yield ``make(minconn, maxconn, *args, cls=..., **kwargs)`` building pools of
    ``module`` on ``dsn``; close every pool still open afterwards."""
    pools: List[Any] = []

    def make(minconn: Any, maxconn: Any, *args: Any, cls: str = "ThreadedConnectionPool",
             **kwargs: Any) -> Any:
        if not args and "dsn" not in kwargs:
            args = (dsn,)
        pool = getattr(module, cls)(minconn, maxconn, *args, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        if not pool.closed:
            pool.closeall()


@pytest.fixture
def make_pool(impl: Impl, postgres_dsn: str) -> Iterator[Callable[..., Any]]:
    """``make_pool(minconn, maxconn, cls="ThreadedConnectionPool", **kwargs)`` on the
    test's database; every pool still open is closed after the test."""
    yield from _pool_maker(impl.module, postgres_dsn)


@pytest.fixture
def make_ours(postgres_dsn: str) -> Iterator[Callable[..., Any]]:
    """Like ``make_pool`` but always pgreservoir.pool (for features psycopg2 lacks)."""
    yield from _pool_maker(pgreservoir.pool, postgres_dsn)


@pytest.fixture
def server(postgres_server: PostgresServer) -> PostgresServer:
    """The session's server (a shorter name)."""
    return postgres_server
