"""The tutorial program, with one import changed; then the same in one line.

Seed pattern (psycopg2 tutorials): build a SimpleConnectionPool, getconn(),
run a query on a cursor, putconn(), closeall().

Run: python 01_drop_in.py "host=... dbname=... user=..."  (or set PGRESERVOIR_DSN)
"""

from __future__ import annotations

import os
import sys
from typing import Any, List

from pgreservoir import pool  # was: from psycopg2 import pool


def setup(dsn: str) -> None:
    db = pool.SimpleConnectionPool(1, 2, dsn)
    db.execute("CREATE TABLE IF NOT EXISTS mobile (id int PRIMARY KEY, model text, price float8)")
    db.execute(
        "INSERT INTO mobile VALUES (1, 'IPhone 12', 800.0), (2, 'Google Pixel 2', 900.0)"
        " ON CONFLICT DO NOTHING"
    )
    db.closeall()


def by_hand(dsn: str) -> List[Any]:
    """The seed's code, unchanged but for the import."""
    postgresql_pool = pool.SimpleConnectionPool(1, 20, dsn)
    connection = postgresql_pool.getconn()
    cursor = connection.cursor()
    cursor.execute("select * from mobile order by id")
    mobile_records = cursor.fetchall()
    cursor.close()
    postgresql_pool.putconn(connection)
    postgresql_pool.closeall()
    return list(mobile_records)


def with_pgreservoir(dsn: str) -> Any:
    """The same, with the helper built into every pgreservoir pool."""
    with pool.SimpleConnectionPool(1, 20, dsn) as db:
        return db.execute("select * from mobile order by id")


if __name__ == "__main__":
    dsn = sys.argv[1] if len(sys.argv) > 1 else os.environ["PGRESERVOIR_DSN"]
    setup(dsn)
    rows = by_hand(dsn)
    assert rows == with_pgreservoir(dsn), "both ways give the same rows"
    for row in rows:
        print(row)
