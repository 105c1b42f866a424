"""The pools are generic over their connection class, as psycopg_pool's are:
subscriptable at run time, and a type checker infers the connection type from
``connection_class``. The ``assert_type`` lines are checked by the repository's
``mypy --strict`` run (tests are in its files); at run time they do nothing."""

from __future__ import annotations

import sys
from typing import Any

import psycopg
import pytest
from psycopg.rows import DictRow, TupleRow

from pgreservoir.psycopg_pool import (
    AsyncConnectionPool,
    AsyncNullConnectionPool,
    ConnectionPool,
    NullConnectionPool,
)

from ._support import DEADLINE, async_pool
from .conftest import Impl, run

if sys.version_info >= (3, 11):
    from typing import assert_type
else:
    from typing_extensions import assert_type


class DictConnection(psycopg.Connection[DictRow]):
    """A connection class whose rows are dicts."""


class AsyncDictConnection(psycopg.AsyncConnection[DictRow]):
    """An asyncio connection class whose rows are dicts."""


def test_pools_are_subscriptable(impl: Impl, dsn: str) -> None:
    module = impl.module
    for cls in ("ConnectionPool", "NullConnectionPool"):
        pool = getattr(module, cls)[psycopg.Connection[DictRow]](
            dsn, open=True, kwargs={"row_factory": psycopg.rows.dict_row}
        )
        try:
            with pool.connection(timeout=DEADLINE) as conn:
                assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
        finally:
            pool.close()

    async def body() -> None:
        for cls in ("AsyncConnectionPool", "AsyncNullConnectionPool"):
            generic = getattr(module, cls)[psycopg.AsyncConnection[Any]]
            assert generic(dsn, open=False).closed
            async with (
                async_pool(impl, dsn, cls, min_size=0, max_size=1) as pool,
                pool.connection(timeout=DEADLINE) as conn,
            ):
                await conn.execute("SELECT 1")

    run(body())


def _sync_types(dsn: str) -> None:
    # Checked by mypy: the connection type follows connection_class.
    default = ConnectionPool(dsn, open=False)
    assert_type(default.getconn(), psycopg.Connection[TupleRow])
    dicts = ConnectionPool(dsn, connection_class=DictConnection, open=False)
    assert_type(dicts.getconn(), DictConnection)
    with dicts.connection() as conn:
        assert_type(conn, DictConnection)
    null = NullConnectionPool(dsn, connection_class=DictConnection, open=False)
    assert_type(null.getconn(), DictConnection)
    explicit = ConnectionPool[psycopg.Connection[DictRow]](dsn, open=False)
    assert_type(explicit.getconn(), psycopg.Connection[DictRow])
    with ConnectionPool(dsn, connection_class=DictConnection) as entered:
        assert_type(entered, ConnectionPool[DictConnection])

    def configure(conn: DictConnection) -> None:
        assert_type(conn, DictConnection)

    ConnectionPool(dsn, connection_class=DictConnection, configure=configure, open=False)


async def _async_types(dsn: str) -> None:
    default = AsyncConnectionPool(dsn, open=False)
    assert_type(await default.getconn(), psycopg.AsyncConnection[TupleRow])
    dicts = AsyncConnectionPool(dsn, connection_class=AsyncDictConnection, open=False)
    assert_type(await dicts.getconn(), AsyncDictConnection)
    async with dicts.connection() as conn:
        assert_type(conn, AsyncDictConnection)
    null = AsyncNullConnectionPool(dsn, connection_class=AsyncDictConnection, open=False)
    assert_type(await null.getconn(), AsyncDictConnection)
    async with AsyncConnectionPool(dsn, connection_class=AsyncDictConnection) as entered:
        assert_type(entered, AsyncConnectionPool[AsyncDictConnection])


@pytest.mark.parametrize("check", [_sync_types, _async_types])
def test_typed_code_is_valid(check: Any) -> None:
    # The functions above exist for mypy; they must at least be real functions.
    assert callable(check)
