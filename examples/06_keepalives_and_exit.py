"""TCP keepalives and closing at exit: what seed 001 sets by hand, on by default.

Seed pattern (seed 001): pass ``keepalives=1, keepalives_idle=30,
keepalives_interval=10, keepalives_count=5`` to every pool so dead peers are
noticed in about a minute instead of two hours, and register an ``atexit``
hook that calls ``closeall()``.

pgreservoir: those keepalive values (and ``connect_timeout=10``) are the
default for every pool unless you pass your own, as a keyword or in the DSN;
``tcp_user_timeout`` (milliseconds) is worth adding when a network can
silently drop packets: keepalives alone do not end a query that waits for a
reply that never comes. Pools still open at interpreter exit are closed then.

Run: python 06_keepalives_and_exit.py "host=... dbname=... user=..."  (or set PGRESERVOIR_DSN)
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Dict

from pgreservoir import pool

KEEPALIVES = ("keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count")


def by_hand(dsn: str) -> Dict[str, str]:
    db = pool.ThreadedConnectionPool(
        1, 3, dsn, keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=5
    )
    atexit.register(db.closeall)
    conn = db.getconn()
    params = conn.get_dsn_parameters()
    db.putconn(conn)
    return {k: params[k] for k in KEEPALIVES}


def with_pgreservoir(dsn: str) -> Dict[str, str]:
    db = pool.ThreadedConnectionPool(1, 3, dsn)  # no atexit hook: closed at exit anyway
    conn = db.getconn()
    params = conn.get_dsn_parameters()
    db.putconn(conn)
    return {k: params[k] for k in KEEPALIVES}


def your_own_values(dsn: str) -> Dict[str, str]:
    db = pool.ThreadedConnectionPool(1, 1, dsn, keepalives_idle=60, tcp_user_timeout=30000)
    with db, db.connection() as conn:
        params = conn.get_dsn_parameters()
    return {k: params[k] for k in ("keepalives_idle", "keepalives_count", "tcp_user_timeout")}


if __name__ == "__main__":
    dsn = sys.argv[1] if len(sys.argv) > 1 else os.environ["PGRESERVOIR_DSN"]
    assert by_hand(dsn) == with_pgreservoir(dsn)
    print("defaults:", with_pgreservoir(dsn))
    print("yours win:", your_own_values(dsn))
