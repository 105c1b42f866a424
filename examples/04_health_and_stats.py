"""MonitoredPool: counters and a health check, built in.

Seed pattern (seed 002): a wrapper that counts borrowed/returned connections
under its own lock, runs ``SELECT 1`` on every checkout, and has a
``health_check()`` returning ``(ok, "Pool healthy - <version>")``.

pgreservoir: ``pool.stats()`` (a consistent snapshot of gauges and counters,
kept by the pool itself) and ``pool.health_check()`` (a real round trip;
``(ok, message)`` with the server version or the error). Dead idle
connections are never handed out, so no ``SELECT 1`` per checkout.

Run: python 04_health_and_stats.py "host=... dbname=... user=..."  (or set PGRESERVOIR_DSN)
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Dict, Tuple

from pgreservoir import pool
from pgreservoir.pool import PoolOptions

# -- by hand (the seed's wrapper, shortened, on the drop-in pool) --------------------


class MonitoredPool:
    def __init__(self, minconn: int, maxconn: int, dsn: str) -> None:
        self.pool = pool.ThreadedConnectionPool(minconn, maxconn, dsn)
        self.stats = {"connections_borrowed": 0, "connections_returned": 0}
        self._lock = threading.Lock()

    def getconn(self) -> Any:
        with self._lock:
            self.stats["connections_borrowed"] += 1
        conn = self.pool.getconn()
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.rollback()
        return conn

    def putconn(self, conn: Any) -> None:
        self.pool.putconn(conn)
        with self._lock:
            self.stats["connections_returned"] += 1

    def health_check(self) -> Tuple[bool, str]:
        try:
            conn = self.pool.getconn()
            with conn.cursor() as cur:
                cur.execute("SELECT version()")
                version = cur.fetchone()[0]
            self.pool.putconn(conn)
            return True, f"Pool healthy - {version}"
        except Exception as e:
            return False, f"Pool unhealthy - {e}"


def by_hand(dsn: str) -> Tuple[Dict[str, int], bool, str]:
    monitored = MonitoredPool(2, 6, dsn)
    for _ in range(10):
        monitored.putconn(monitored.getconn())
    healthy, message = monitored.health_check()
    monitored.pool.closeall()
    return monitored.stats, healthy, message


# -- pgreservoir -----------------------------------------------------------------------


def with_pgreservoir(dsn: str) -> Tuple[Dict[str, Any], bool, str]:
    with pool.ThreadedConnectionPool(2, 6, dsn, pool_options=PoolOptions(name="app")) as db:
        for _ in range(10):
            db.putconn(db.getconn())
        healthy, message = db.health_check()
        return db.stats(), healthy, message


if __name__ == "__main__":
    dsn = sys.argv[1] if len(sys.argv) > 1 else os.environ["PGRESERVOIR_DSN"]
    counts, healthy, message = by_hand(dsn)
    stats, ok, text = with_pgreservoir(dsn)
    assert healthy, message
    assert ok, text
    assert counts["connections_borrowed"] == 10
    assert stats["requests"] == 11  # 10 checkouts + the health check's
    assert stats["in_use"] == 0
    print("by hand:", counts, message.split(" on ")[0])
    print("pgreservoir:", {k: stats[k] for k in ("size", "idle", "in_use", "requests")})
    print("health:", text.split(" on ")[0])
