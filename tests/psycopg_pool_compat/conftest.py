"""Fixtures of the psycopg_pool conformance suite: every test runs against both modules.

``impl`` is ``psycopg_pool`` (the reference, psycopg_pool 3.3) or
``pgreservoir.psycopg_pool`` (the drop-in). Tests where the two must behave
alike assert the same thing for both; tests of an intended difference assert
each module's own behaviour, selected by ``impl.ours`` (the list is at the end
of docs/psycopg_pool-spec.md).

The drop-in is imported with ``importlib`` when a test first asks for it, so
the reference half of the suite runs even while the drop-in does not exist
(its half then errors with ``ModuleNotFoundError``, loudly, never skipped).

Development switch: ``PGR_CONFORMANCE_ONLY_REFERENCE=1`` runs the suite
against psycopg_pool alone (to check the tests themselves). Unset, both run.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import uuid
from types import ModuleType
from typing import Any, Callable, Coroutine, Iterator, List, Optional, TypeVar

import psycopg
import pytest

from pgreservoir.testing import PostgresServer

from ._support import DEADLINE

T = TypeVar("T")

REFERENCE = "psycopg_pool"
DROP_IN = "pgreservoir.psycopg_pool"


class Impl:
    """One of the two pool modules under test, imported on first use."""

    def __init__(self, name: str, module_name: str) -> None:
        self.name = name
        self.module_name = module_name
        self._module: Optional[ModuleType] = None

    @property
    def module(self) -> Any:
        """The module (``Any``: tests reach its classes by attribute)."""
        if self._module is None:
            self._module = importlib.import_module(self.module_name)
        return self._module

    @property
    def ours(self) -> bool:
        """Whether this is pgreservoir.psycopg_pool (for asserting intended differences)."""
        return self.module_name == DROP_IN

    def __repr__(self) -> str:
        return self.name


def _impls() -> List[Impl]:
    impls = [Impl("psycopg_pool", REFERENCE)]
    if os.environ.get("PGR_CONFORMANCE_ONLY_REFERENCE") != "1":
        impls.append(Impl("pgreservoir", DROP_IN))
    return impls


IMPLS = _impls()


@pytest.fixture(params=IMPLS, ids=repr)
def impl(request: pytest.FixtureRequest) -> Impl:
    """The pool module under test (imported here, so a missing module fails the test)."""
    value: Impl = request.param
    value.module  # noqa: B018 - import now: a missing drop-in errors in set-up, plainly
    return value


@pytest.fixture
def server(postgres_server: PostgresServer) -> PostgresServer:
    """The session's server (a shorter name)."""
    return postgres_server


# One database serves the whole suite: a fresh database per test (the plugin's
# ``postgres_dsn``) costs ~0.25 s to create, more than most tests here take. Each
# test is told apart instead by a unique ``application_name`` in its DSN (to count
# its connections) and uses tables named after it.


@pytest.fixture(scope="session")
def suite_database(postgres_server: PostgresServer) -> Iterator[str]:
    """Name of the database the suite's tests share, dropped at the end of the run."""
    name = f"pgpool_{uuid.uuid4().hex[:12]}"
    postgres_server.create_database(name)
    yield name
    postgres_server.drop_database(name)


@pytest.fixture
def tag() -> str:
    """A name unique to the test: its connections' application_name, its table's name."""
    return f"pgpc_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def table(tag: str) -> str:
    """A table name no other test uses (not created)."""
    return tag


@pytest.fixture
def dsn(postgres_server: PostgresServer, suite_database: str, tag: str) -> str:
    """DSN of the suite's database, with the test's own application_name."""
    return postgres_server.make_dsn(suite_database, application_name=tag)


Connections = Callable[[], int]


@pytest.fixture
def connections(postgres_server: PostgresServer, tag: str) -> Connections:
    """``connections()``: how many server connections the test's DSN has open now."""

    def count() -> int:
        with psycopg.connect(postgres_server.make_dsn(), autocommit=True) as admin:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (tag,)
            ).fetchone()
        assert row is not None
        return int(row[0])

    return count


@pytest.fixture
def make_pool(impl: Impl, dsn: str) -> Iterator[Callable[..., Any]]:
    """``make_pool(cls="ConnectionPool", conninfo=<dsn>, wait=..., **kwargs)``: a
    sync pool of ``impl``, opened (``open=True`` unless given) and, for pools with
    ``min_size > 0``, waited for; every pool is closed after the test."""
    pools: List[Any] = []

    def make(cls: str = "ConnectionPool", conninfo: Any = None, *, wait: Optional[bool] = None,
             **kwargs: Any) -> Any:
        kwargs.setdefault("open", True)
        pool = getattr(impl.module, cls)(
            dsn if conninfo is None else conninfo, **kwargs
        )
        pools.append(pool)
        if wait is None:
            wait = bool(kwargs["open"]) and pool.min_size > 0
        if wait:
            pool.wait(timeout=DEADLINE)
        return pool

    yield make
    for pool in pools:
        pool.close()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run an async test body on a fresh event loop, bounded so a hang fails the test."""
    return asyncio.run(asyncio.wait_for(coro, 4 * DEADLINE))
