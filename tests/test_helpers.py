"""The built-in helpers (connection, cursor, execute, health_check, stats), on every pool class.

Each test runs on ConnectionPool and on the three psycopg2-compatible classes:
the helpers are one mixin, so they must behave the same everywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from typing import Any, Callable, Iterator, List

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import pytest

import pgreservoir
import pgreservoir.pool
from pgreservoir import ConnectionPool
from pgreservoir.testing import PostgresServer

DEADLINE = 15.0
KINDS = [
    "ConnectionPool",
    "SimpleConnectionPool",
    "ThreadedConnectionPool",
    "PersistentConnectionPool",
]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def build(kind: str, dsn: str, minconn: int = 1, **kwargs: Any) -> Any:
    """A pool of ``kind`` with ``minconn``..4 connections."""
    if kind == "ConnectionPool":
        pool = ConnectionPool(dsn, min_size=minconn, max_size=4, timeout=DEADLINE, **kwargs)
        pool.wait(DEADLINE)
        return pool
    return getattr(pgreservoir.pool, kind)(minconn, 4, dsn, **kwargs)


def close(pool: Any) -> None:
    if isinstance(pool, ConnectionPool):
        pool.close()
    elif not pool.closed:
        pool.closeall()


@pytest.fixture(params=KINDS)
def make(request: pytest.FixtureRequest, postgres_dsn: str) -> Iterator[Callable[..., Any]]:
    """``make(**kwargs)`` builds a pool of the parametrized class; all closed afterwards."""
    pools: List[Any] = []

    def factory(dsn: str = postgres_dsn, **kwargs: Any) -> Any:
        pool = build(request.param, dsn, **kwargs)
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        close(pool)


@pytest.fixture
def pool(make: Callable[..., Any]) -> Any:
    """A pool with a table ``items(id serial, name text)``."""
    p = make()
    p.execute("CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)")
    return p


def count(pool: Any) -> int:
    rows = pool.execute("SELECT count(*) FROM items")
    assert isinstance(rows, list)
    return int(rows[0][0])


# -- connection() ---------------------------------------------------------------------


def test_connection_commits_on_success(pool: Any) -> None:
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO items (name) VALUES ('a')")
    assert count(pool) == 1
    assert pool.stats()["in_use"] == 0


def test_connection_rolls_back_on_error(pool: Any) -> None:
    def fail() -> None:
        with pool.connection() as conn:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO items (name) VALUES ('a')")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail()
    assert count(pool) == 0
    assert pool.stats()["in_use"] == 0


def test_connection_returns_a_connection_whose_commit_fails(pool: Any) -> None:
    pool.execute(
        "CREATE TABLE parent (id int PRIMARY KEY);"
        "CREATE TABLE child (pid int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)"
    )
    def fail() -> None:
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO child VALUES (1)")  # fails only at commit

    with pytest.raises(psycopg2.errors.ForeignKeyViolation):
        fail()
    assert pool.stats()["in_use"] == 0
    assert pool.execute("SELECT 1") == [(1,)]


# -- cursor() ---------------------------------------------------------------------------


def test_cursor_row_types(pool: Any) -> None:
    pool.execute("INSERT INTO items (name) VALUES ('a')")
    with pool.cursor() as cur:
        cur.execute("SELECT id, name FROM items")
        assert cur.fetchall() == [(1, "a")]
    with pool.cursor(rows="dict") as cur:
        cur.execute("SELECT id, name FROM items")
        assert cur.fetchall() == [{"id": 1, "name": "a"}]
    with pool.cursor(rows="namedtuple") as cur:
        cur.execute("SELECT id, name FROM items")
        assert cur.fetchone().name == "a"
    with pool.cursor(cursor_factory=psycopg2.extras.DictCursor) as cur:
        cur.execute("SELECT id, name FROM items")
        assert cur.fetchone()["name"] == "a"


def test_cursor_is_a_transaction_by_default(pool: Any) -> None:
    with pool.cursor() as cur:
        cur.execute("INSERT INTO items (name) VALUES ('kept')")
    def fail() -> None:
        with pool.cursor() as cur:
            cur.execute("INSERT INTO items (name) VALUES ('lost')")
            cur.execute("INSERT INTO items (name) VALUES (NULL)")

    with pytest.raises(psycopg2.errors.NotNullViolation):
        fail()
    assert pool.execute("SELECT name FROM items") == [("kept",)]


def test_cursor_autocommit_commits_each_statement(pool: Any) -> None:
    def fail() -> None:
        with pool.cursor(autocommit=True) as cur:
            assert cur.connection.autocommit is True
            cur.execute("INSERT INTO items (name) VALUES ('kept')")
            cur.execute("INSERT INTO items (name) VALUES (NULL)")

    with pytest.raises(psycopg2.errors.NotNullViolation):
        fail()
    assert pool.execute("SELECT name FROM items") == [("kept",)]


def test_cursor_settings_are_restored(pool: Any) -> None:
    with pool.cursor(autocommit=True) as cur:
        conn = cur.connection
    assert pool.stats()["in_use"] == 0
    with pool.connection() as again:
        assert again is conn  # the same connection (LIFO)...
        assert again.autocommit is False  # ...back in its original mode


def test_cursor_argument_checks(pool: Any) -> None:
    with pytest.raises(ValueError, match="rows must be one of"), pool.cursor(rows="list"):
        pass
    with pytest.raises(TypeError, match="either rows= or cursor_factory="), pool.cursor(
        rows="dict", cursor_factory=psycopg2.extras.DictCursor
    ):
        pass
    assert pool.stats()["in_use"] == 0


# -- execute() ----------------------------------------------------------------------------


def test_execute_returns_rows_or_rowcount(pool: Any) -> None:
    assert pool.execute("INSERT INTO items (name) VALUES (%s), (%s)", ("a", "b")) == 2
    assert pool.execute("SELECT name FROM items ORDER BY id") == [("a",), ("b",)]
    assert pool.execute("SELECT name FROM items WHERE id = %(id)s", {"id": 2}, rows="dict") == [
        {"name": "b"}
    ]
    assert pool.execute("UPDATE items SET name = 'c' WHERE false") == 0
    assert pool.execute("INSERT INTO items (name) VALUES ('d') RETURNING id") == [(3,)]


def test_execute_commits(pool: Any, postgres_dsn: str) -> None:
    pool.execute("INSERT INTO items (name) VALUES ('visible')")
    other = psycopg2.connect(postgres_dsn)
    try:
        with other.cursor() as cur:
            cur.execute("SELECT name FROM items")
            assert cur.fetchall() == [("visible",)]
    finally:
        other.close()


def test_execute_error_rolls_back_and_raises(pool: Any) -> None:
    with pytest.raises(psycopg2.errors.UndefinedTable):
        pool.execute("SELECT * FROM no_such_table")
    assert pool.stats()["in_use"] == 0
    assert pool.execute("SELECT 1") == [(1,)]


# -- health_check() and stats() --------------------------------------------------------------


def test_health_check_healthy(pool: Any) -> None:
    healthy, message = pool.health_check()
    assert healthy is True
    assert message.startswith("healthy: PostgreSQL ")
    assert f"pool {pool.name!r}" in message
    assert pool.stats()["in_use"] == 0


def test_health_check_after_the_server_dropped_connections(
    pool: Any, postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    dbname = psycopg2.extensions.parse_dsn(postgres_dsn)["dbname"]
    postgres_server.terminate_backends(dbname=dbname)
    healthy, message = pool.health_check()  # the dead connection is replaced, not reported
    assert healthy, message


def test_health_check_unreachable_server(make: Callable[..., Any]) -> None:
    pool = make("host=127.0.0.1 port=1 connect_timeout=5", minconn=0)
    healthy, message = pool.health_check(timeout=0.2)
    assert healthy is False
    assert message.startswith("unhealthy: ")
    assert "port 1 failed" in message, message  # libpq's own words, via __cause__ or directly


def test_health_check_closed_pool(make: Callable[..., Any]) -> None:
    pool = make()
    close(pool)
    healthy, message = pool.health_check()
    assert healthy is False
    assert "closed" in message


def test_stats_keys(pool: Any) -> None:
    from pgreservoir.stats import COUNTER_KEYS, GAUGE_KEYS

    stats = pool.stats()
    assert set(GAUGE_KEYS) | set(COUNTER_KEYS) <= set(stats)
    assert stats["max_size"] == 4


# -- connection defaults and interpreter exit ------------------------------------------------


def test_tcp_keepalives_on_by_default(make: Callable[..., Any]) -> None:
    pool = make()
    with pool.connection() as conn:
        params = conn.get_dsn_parameters()
    assert (params["keepalives"], params["keepalives_idle"]) == ("1", "30")
    assert (params["keepalives_interval"], params["keepalives_count"]) == ("10", "5")


def test_callers_keepalive_settings_win(make: Callable[..., Any]) -> None:
    pool = make(keepalives_idle=120, tcp_user_timeout=9000)
    with pool.connection() as conn:
        params = conn.get_dsn_parameters()
    assert params["keepalives_idle"] == "120"
    assert params["tcp_user_timeout"] == "9000"
    assert params["keepalives_interval"] == "10"


@pytest.mark.parametrize("kind", KINDS)
def test_pool_left_open_is_closed_at_exit(kind: str, postgres_dsn: str) -> None:
    # An atexit hook registered before the pool exists runs after the pool's
    # own exit hook: it sees the pool closed, and a closeall() there (the
    # seeds' DBHelper pattern) must not raise.
    program = textwrap.dedent(
        """
        import atexit, sys
        import pgreservoir.pool
        from pgreservoir import ConnectionPool

        state = {}

        def report():
            pool, conn = state["pool"], state["conn"]
            print("closed", pool.closed, "conn closed", bool(conn.closed))
            if hasattr(pool, "closeall"):
                pool.closeall()
            print("shutdown hook ok")

        atexit.register(report)
        kind, dsn = sys.argv[1], sys.argv[2]
        if kind == "ConnectionPool":
            pool = ConnectionPool(dsn, min_size=1)
            pool.wait(10)
        else:
            pool = getattr(pgreservoir.pool, kind)(1, 2, dsn)
        state["pool"], state["conn"] = pool, pool.getconn()
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [sys.executable, "-c", program, kind, postgres_dsn],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "closed True conn closed True" in result.stdout
    assert "shutdown hook ok" in result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert "Error" not in result.stderr, result.stderr
