"""What the next caller inherits, with and without ``reset=discard_all`` (issue 15).

Without a reset, a caller's session state (a SET, a LISTEN, a temporary
table, an advisory lock, a WITH HOLD cursor) survives its return: the pool
only rolls back and restores autocommit and the transaction characteristics.
``discard_all`` ends all of it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Dict, Optional

import psycopg
import psycopg.rows
import pytest

from pgreservoir import AsyncConnectionPool, ConnectionPool, async_discard_all, discard_all
from pgreservoir import pool as psycopg2_pool
from support import DEADLINE, Flavor, backend_pid, scalar

_LEAVE = [
    "SET work_mem = '7MB'",
    "LISTEN reset_test_channel",
    "CREATE TEMP TABLE reset_tmp (x int)",
    "SELECT pg_advisory_lock(4242)",
    "DECLARE reset_held CURSOR WITH HOLD FOR SELECT 1",
]

_LOOK = {
    "work_mem": "SELECT current_setting('work_mem')",
    "listening": "SELECT count(*) FROM pg_listening_channels()",
    "temp_table": "SELECT to_regclass('pg_temp.reset_tmp') IS NOT NULL",
    "advisory_locks": (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    ),
    "held_cursors": "SELECT count(*) FROM pg_cursors WHERE name = 'reset_held'",
}

_LEFT = {
    "work_mem": "7MB",
    "listening": 1,
    "temp_table": True,
    "advisory_locks": 1,
    "held_cursors": 1,
}


def _leave_state(conn: Any) -> None:
    with conn.cursor() as cur:
        for statement in _LEAVE:
            cur.execute(statement)
    # Committed by pool.connection() on exit: all of it outlives the transaction.


def _look(conn: Any) -> Dict[str, Any]:
    seen = {key: scalar(conn, query) for key, query in _LOOK.items()}
    conn.rollback()
    return seen


def _inherited(pool: Any) -> Dict[str, Any]:
    with pool.connection(timeout=DEADLINE) as conn:
        pid = backend_pid(conn)
        _leave_state(conn)
    with pool.connection(timeout=DEADLINE) as conn:
        assert backend_pid(conn) == pid, "not the same connection: nothing proved"
        return _look(conn)


@pytest.mark.parametrize("reset", [None, discard_all], ids=["no-reset", "discard_all"])
def test_what_the_next_caller_inherits(
    postgres_dsn: str, flavor: Flavor, reset: Optional[Any]
) -> None:
    pool = ConnectionPool(
        postgres_dsn, min_size=1, max_size=1, reset=reset, **flavor.pool_kwargs
    )
    try:
        seen = _inherited(pool)
        if reset is None:
            assert seen == _LEFT
        else:
            assert seen["work_mem"] != "7MB"
            assert {k: v for k, v in seen.items() if k != "work_mem"} == {
                "listening": 0,
                "temp_table": False,
                "advisory_locks": 0,
                "held_cursors": 0,
            }
        assert pool.stats()["connections_closed"] == 0  # the same connection, reset
    finally:
        pool.close(0)


def test_discard_all_keeps_autocommit_and_the_dsn_settings(
    postgres_dsn: str, flavor: Flavor
) -> None:
    # RESET ALL goes back to the connection's own defaults, those of its options.
    pool = ConnectionPool(
        postgres_dsn,
        min_size=1,
        max_size=1,
        reset=discard_all,
        options="-c work_mem=5MB",
        **flavor.pool_kwargs,
    )
    try:
        with pool.connection() as conn:
            assert not conn.autocommit
            scalar(conn, "SELECT set_config('work_mem', '9MB', false)")
        with pool.connection() as conn:
            assert not conn.autocommit
            assert scalar(conn, "SHOW work_mem") == "5MB"
    finally:
        pool.close(0)


def test_discard_all_in_the_psycopg2_drop_in(postgres_dsn: str) -> None:
    pool = psycopg2_pool.ThreadedConnectionPool(
        1, 1, postgres_dsn, pool_options=psycopg2_pool.PoolOptions(reset=discard_all)
    )
    try:
        conn = pool.getconn()
        _leave_state(conn)
        conn.commit()
        conn.notices.append("left by the last caller")
        pool.putconn(conn)
        again = pool.getconn()
        assert again is conn
        assert _look(again)["listening"] == 0
        assert not again.notices
        pool.putconn(again)
    finally:
        pool.closeall()


@pytest.mark.parametrize("reset", [None, discard_all], ids=["no-reset", "discard_all"])
def test_psycopg3_client_side_settings(postgres_dsn: str, reset: Optional[Any]) -> None:
    pool = ConnectionPool(
        postgres_dsn,
        min_size=1,
        max_size=1,
        reset=reset,
        connection_class=psycopg.Connection,
    )
    try:
        with pool.connection() as conn:
            conn.row_factory = psycopg.rows.dict_row
            conn.prepare_threshold = 0  # prepared at once, server-side
            for _ in range(2):
                conn.execute("SELECT 42 AS answer").fetchone()
        with pool.connection() as conn:
            if reset is None:
                assert conn.prepare_threshold == 0
                assert conn.execute("SELECT 42 AS answer").fetchone() == {"answer": 42}
            else:
                assert conn.prepare_threshold == 5  # psycopg's default
                # The prepared statement is gone on both sides: it runs again.
                assert conn.execute("SELECT 42 AS answer").fetchone() == (42,)
    finally:
        pool.close(0)


def test_discard_all_refuses_an_async_connection(postgres_dsn: str) -> None:
    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(postgres_dsn)
        try:
            with pytest.raises(TypeError, match="async_discard_all"):
                discard_all(conn)
        finally:
            await conn.close()

    asyncio.run(main())


@pytest.mark.parametrize("reset", [None, async_discard_all], ids=["no-reset", "async"])
def test_async_pool_with_async_discard_all(postgres_dsn: str, reset: Optional[Any]) -> None:
    async def main() -> Dict[str, Any]:
        async with AsyncConnectionPool(postgres_dsn, min_size=1, max_size=1, reset=reset) as pool:
            async with pool.connection() as conn:
                pid = conn.info.backend_pid
                for statement in _LEAVE:
                    await conn.execute(statement)
                conn.row_factory = psycopg.rows.dict_row
            async with pool.connection() as conn:
                assert conn.info.backend_pid == pid
                seen = {}
                for key, query in _LOOK.items():
                    row = await (await conn.execute(query)).fetchone()
                    assert row is not None
                    seen[key] = next(iter(row.values())) if isinstance(row, dict) else row[0]
                seen["dict_rows"] = conn.row_factory is psycopg.rows.dict_row
                return seen

    seen = asyncio.run(asyncio.wait_for(main(), 60))
    if reset is None:
        assert seen == {**_LEFT, "dict_rows": True}
    else:
        assert seen["work_mem"] != "7MB"
        assert seen["dict_rows"] is False
        assert (seen["listening"], seen["temp_table"], seen["advisory_locks"]) == (0, False, 0)
        assert seen["held_cursors"] == 0


def test_discard_all_in_the_psycopg_pool_drop_in(postgres_dsn: str) -> None:
    from pgreservoir.psycopg_pool import ConnectionPool as DropInPool

    with DropInPool(postgres_dsn, min_size=1, max_size=1, reset=discard_all) as pool:
        with pool.connection() as conn:
            _leave_state(conn)
        with pool.connection() as conn:
            assert _look(conn)["held_cursors"] == 0
            assert _look(conn)["advisory_locks"] == 0
