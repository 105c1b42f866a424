"""DBHelper.get_resource(): a cursor with dict rows and autocommit, by hand and built in.

Seed pattern (seed 001): a helper class that creates the pool lazily, hands
out ``(cursor, conn)`` with ``RealDictCursor`` rows and autocommit on, puts
the connection back afterwards, and closes the pool from an ``atexit`` hook.

pgreservoir: ``pool.cursor(rows="dict", autocommit=True)``; the connection's
autocommit is restored when it goes back, and pools still open at exit are
closed at exit without a hook.

Run: python 02_cursor_helper.py "host=... dbname=... user=..."  (or set PGRESERVOIR_DSN)
"""

from __future__ import annotations

import atexit
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator, List, Tuple

from psycopg2.extras import RealDictCursor

from pgreservoir import pool

# -- by hand (the seed's helper, on the drop-in pool) ------------------------------


class DBHelper:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._connection_pool: Any = None

    @contextmanager
    def get_resource(self, autocommit: bool = True) -> Iterator[Tuple[Any, Any]]:
        if self._connection_pool is None:
            self._connection_pool = pool.ThreadedConnectionPool(1, 3, self._dsn)
        conn = self._connection_pool.getconn()
        conn.autocommit = autocommit
        cursor = conn.cursor(cursor_factory=RealDictCursor)
        try:
            yield cursor, conn
        finally:
            cursor.close()
            self._connection_pool.putconn(conn)

    def shutdown_connection_pool(self) -> None:
        if self._connection_pool is not None:
            self._connection_pool.closeall()


def by_hand(dsn: str) -> List[Any]:
    db_helper = DBHelper(dsn)
    atexit.register(db_helper.shutdown_connection_pool)
    with db_helper.get_resource() as (cursor, _):
        cursor.execute("select * from users order by id")
        names = [record["name"] for record in cursor.fetchall()]
    with db_helper.get_resource(autocommit=False) as (cursor, conn):
        try:
            cursor.execute("update users set name = %s where id = %s", ("new_name", 1))
            cursor.execute("delete from orders where user_id = %s", (1,))
            conn.commit()
        except Exception:
            conn.rollback()
            raise
    return names


# -- pgreservoir -----------------------------------------------------------------------


def with_pgreservoir(dsn: str) -> List[Any]:
    db = pool.ThreadedConnectionPool(1, 3, dsn)  # closed at exit if you never close it
    with db.cursor(rows="dict", autocommit=True) as cur:
        cur.execute("select * from users order by id")
        names = [record["name"] for record in cur.fetchall()]
    with db.cursor(rows="dict") as cur:  # one transaction: commit, or roll back on error
        cur.execute("update users set name = %s where id = %s", ("new_name", 1))
        cur.execute("delete from orders where user_id = %s", (1,))
    return names


def setup(dsn: str) -> None:
    with pool.SimpleConnectionPool(1, 1, dsn) as db, db.cursor() as cur:
        cur.execute(
            "DROP TABLE IF EXISTS users, orders;"
            "CREATE TABLE users (id serial PRIMARY KEY, name text);"
            "INSERT INTO users (name) VALUES ('Ann'), ('Bob');"
            "CREATE TABLE orders (id serial PRIMARY KEY, user_id int, item text);"
            "INSERT INTO orders (user_id, item) VALUES (1, 'book'), (2, 'pen');"
        )


def state(dsn: str) -> Any:
    with pool.SimpleConnectionPool(1, 1, dsn) as db:
        return db.execute(
            "select (select array_agg(name order by id) from users),"
            " (select count(*) from orders)"
        )


if __name__ == "__main__":
    dsn = sys.argv[1] if len(sys.argv) > 1 else os.environ["PGRESERVOIR_DSN"]
    results = []
    for way in (by_hand, with_pgreservoir):
        setup(dsn)
        names = way(dsn)
        results.append((names, state(dsn)))
    assert results[0] == results[1], results
    print("names:", results[0][0])
    print("after the transaction:", results[0][1])
