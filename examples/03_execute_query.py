"""ManagedConnectionPool: a connection context manager and execute_query(), built in.

Seed pattern (seed 002): a wrapper class whose ``get_connection()`` yields a
connection and always puts it back (rolling back on an error), and whose
``execute_query()`` returns the rows of a query or the row count of a
committed command.

pgreservoir: ``pool.connection()`` (commit on success, roll back on error,
always returned) and ``pool.execute(query, params)``.

Run: python 03_execute_query.py "host=... dbname=... user=..."  (or set PGRESERVOIR_DSN)
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator, List

from pgreservoir import pool

# -- by hand (the seed's wrapper, on the drop-in pool) ------------------------------


class ManagedConnectionPool:
    def __init__(self, minconn: int, maxconn: int, dsn: str) -> None:
        self.pool = pool.ThreadedConnectionPool(minconn, maxconn, dsn)

    @contextlib.contextmanager
    def get_connection(self) -> Iterator[Any]:
        conn = None
        try:
            conn = self.pool.getconn()
            yield conn
        except Exception:
            if conn:
                conn.rollback()
            raise
        finally:
            if conn:
                self.pool.putconn(conn)

    def execute_query(self, query: str, params: Any = None) -> Any:
        with self.get_connection() as conn, conn.cursor() as cur:
            cur.execute(query, params)
            if cur.description:
                return cur.fetchall()
            conn.commit()
            return cur.rowcount

    def close(self) -> None:
        self.pool.closeall()


def by_hand(dsn: str) -> List[Any]:
    managed = ManagedConnectionPool(2, 8, dsn)
    try:
        inserted = managed.execute_query(
            "INSERT INTO logs (message, level) VALUES (%s, %s)", ("Application started", "INFO")
        )
        with managed.get_connection() as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO logs (message, level) VALUES ('in a block', 'DEBUG')")
            conn.commit()
        rows = managed.execute_query("SELECT message, level FROM logs ORDER BY id")
        return [inserted, rows]
    finally:
        managed.close()


# -- pgreservoir -----------------------------------------------------------------------


def with_pgreservoir(dsn: str) -> List[Any]:
    with pool.ThreadedConnectionPool(2, 8, dsn) as db:
        inserted = db.execute(
            "INSERT INTO logs (message, level) VALUES (%s, %s)", ("Application started", "INFO")
        )
        with db.connection() as conn, conn.cursor() as cur:  # committed when the block ends
            cur.execute("INSERT INTO logs (message, level) VALUES ('in a block', 'DEBUG')")
        rows = db.execute("SELECT message, level FROM logs ORDER BY id")
        return [inserted, rows]


def setup(dsn: str) -> None:
    with pool.SimpleConnectionPool(1, 1, dsn) as db:
        db.execute(
            "DROP TABLE IF EXISTS logs;"
            "CREATE TABLE logs (id serial PRIMARY KEY, message text, level text)"
        )


if __name__ == "__main__":
    dsn = sys.argv[1] if len(sys.argv) > 1 else os.environ["PGRESERVOIR_DSN"]
    results = []
    for way in (by_hand, with_pgreservoir):
        setup(dsn)
        results.append(way(dsn))
    assert results[0] == results[1], results
    print("inserted:", results[0][0])
    print("logs:", results[0][1])
