"""ResilientPool: retries, backoff, validation and pool re-creation, not needed.

Seed pattern (seed 002): a wrapper that retries ``getconn()`` on "connection
pool exhausted" with a growing sleep, runs ``SELECT 1`` on each connection
and re-creates the whole pool on ``OperationalError``, and rolls back before
returning a connection.

pgreservoir does each of these by itself:
* a connection whose server side went away (server restart, idle-session
  kill, pg_terminate_backend) is detected before hand-out and replaced;
* ``PoolOptions(timeout=...)`` makes ``getconn()`` wait in a fair line for a
  connection instead of failing at once and sleeping;
* a connection returned in a transaction is rolled back.

Here every pooled connection is killed on the server, and the pool keeps
serving; then all connections are taken and a second thread waits for one.

Run: python 05_resilience.py "host=... dbname=... user=..."  (or set PGRESERVOIR_DSN)
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Optional

import psycopg2

from pgreservoir import pool
from pgreservoir.pool import PoolError, PoolOptions

APP = "pgreservoir-example-05"

# -- by hand (the seed's wrapper, shortened, on the drop-in pool) --------------------


class ResilientPool:
    def __init__(self, minconn: int, maxconn: int, dsn: str) -> None:
        self.args = (minconn, maxconn, dsn)
        self.pool: Optional[Any] = None
        self._create_pool()

    def _create_pool(self) -> None:
        if self.pool:
            self.pool.closeall()
        self.pool = pool.ThreadedConnectionPool(*self.args, application_name=APP)

    def get_connection(self, retry_count: int = 3) -> Any:
        for attempt in range(retry_count):
            try:
                assert self.pool is not None
                conn = self.pool.getconn()
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                return conn
            except PoolError:
                if attempt == retry_count - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
            except psycopg2.OperationalError:
                if attempt == retry_count - 1:
                    raise
                self._create_pool()
        raise AssertionError("unreachable")

    def return_connection(self, conn: Any) -> None:
        if conn.status != psycopg2.extensions.STATUS_READY:
            conn.rollback()
        assert self.pool is not None
        self.pool.putconn(conn)


def by_hand(dsn: str) -> Any:
    resilient = ResilientPool(1, 5, dsn)
    conn = resilient.get_connection()
    resilient.return_connection(conn)
    kill_pool_connections(dsn)
    conn = resilient.get_connection()  # SELECT 1 fails, the pool is re-created, retried
    with conn.cursor() as cur:
        cur.execute("SELECT name FROM users ORDER BY id LIMIT 1")
        result = cur.fetchone()
    resilient.return_connection(conn)
    assert resilient.pool is not None
    resilient.pool.closeall()
    return result


# -- pgreservoir -----------------------------------------------------------------------


def with_pgreservoir(dsn: str) -> Any:
    options = PoolOptions(timeout=10.0)  # wait up to 10 s instead of "exhausted" at once
    with pool.ThreadedConnectionPool(1, 5, dsn, application_name=APP, pool_options=options) as db:
        db.putconn(db.getconn())
        kill_pool_connections(dsn)
        conn = db.getconn()  # the dead connection is noticed and replaced
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM users ORDER BY id LIMIT 1")
            result = cur.fetchone()
        db.putconn(conn)  # rolled back by the pool

        # All five connections taken: another thread waits in line, no retry loop.
        held = [db.getconn() for _ in range(5)]
        got = []
        waiter = threading.Thread(target=lambda: got.append(db.getconn()))
        waiter.start()
        db.putconn(held.pop())
        waiter.join(10.0)
        assert got, "the waiting thread got the returned connection"
        for conn in held + got:
            db.putconn(conn)
        return result


# -- plumbing ----------------------------------------------------------------------------


def kill_pool_connections(dsn: str) -> None:
    """Terminate this example's server sessions, as a restart or an idle timeout would."""
    admin = psycopg2.connect(dsn, application_name="admin")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (APP,),
            )
            deadline = time.monotonic() + 10.0
            while True:  # wait until they are gone
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                            (APP,))
                row = cur.fetchone()
                if row is not None and row[0] == 0:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError("sessions did not end")
                time.sleep(0.01)
    finally:
        admin.close()


def setup(dsn: str) -> None:
    with pool.SimpleConnectionPool(1, 1, dsn) as db:
        db.execute(
            "DROP TABLE IF EXISTS users;"
            "CREATE TABLE users (id serial PRIMARY KEY, name text);"
            "INSERT INTO users (name) VALUES ('Ann'), ('Bob')"
        )


if __name__ == "__main__":
    dsn = sys.argv[1] if len(sys.argv) > 1 else os.environ["PGRESERVOIR_DSN"]
    setup(dsn)
    first, second = by_hand(dsn), with_pgreservoir(dsn)
    assert first == second, (first, second)
    print("query result after the server dropped every connection:", second)
