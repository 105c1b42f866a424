"""Prometheus metrics of every open pool: register ``PoolCollector`` once and
serve ``/metrics``. Run it with::

    python prometheus_metrics.py "host=localhost dbname=scratch user=me"

(``pip install 'pgreservoir[binary,prometheus]'``; ``METRICS_PORT``: the port
to serve on, 8000 by default). It prints what Prometheus would scrape.
"""

from __future__ import annotations

import os
import sys
import urllib.request

from prometheus_client import REGISTRY, start_http_server

from pgreservoir import ConnectionPool
from pgreservoir.prometheus import PoolCollector

dsn = sys.argv[1] if len(sys.argv) > 1 else os.environ["PGRESERVOIR_DSN"]
port = int(os.environ.get("METRICS_PORT", "8000"))

REGISTRY.register(PoolCollector())  # every pool of this process, open now or later
start_http_server(port, addr="127.0.0.1")

with ConnectionPool(dsn, min_size=2, max_size=4, name="orders") as pool:
    pool.wait()
    for _ in range(10):
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(0.01)")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
        scraped = response.read().decode()
print("\n".join(line for line in scraped.splitlines() if "db_client_connection" in line))
