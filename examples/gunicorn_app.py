"""A WSGI app on ``pgreservoir.ConnectionPool`` under gunicorn, with Prometheus
metrics of every worker's pool on ``/metrics``.

prometheus_client's multiprocess mode takes no custom collectors, so each
worker writes its pools' figures to a file of its own in the multiprocess
directory (``share_pools``), and ``PoolCollector(directory=...)`` reads them
all, one ``pid`` label per worker, in whichever worker serves the scrape.
Run it with::

    mkdir -p /tmp/app-metrics && rm -f /tmp/app-metrics/*
    PROMETHEUS_MULTIPROC_DIR=/tmp/app-metrics PGRESERVOIR_DSN="dbname=app" \\
        gunicorn --workers 4 gunicorn_app:app

(from this directory; ``pip install gunicorn 'pgreservoir[binary,prometheus]'``).
Without ``--preload`` each worker imports this module, so each builds its
own pool and shares it; with ``--preload``, call ``share_pools`` in
gunicorn's ``post_fork`` hook instead (a forked child also keeps writing).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from pgreservoir import ConnectionPool
from pgreservoir.prometheus import PoolCollector, share_pools

METRICS_DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"]

pool = ConnectionPool(os.environ["PGRESERVOIR_DSN"], min_size=1, max_size=4, name="web")
share_pools(METRICS_DIR)  # this worker's pools, written there every 0.5 s

# The app's own metric, in prometheus_client's multiprocess mode.
QUERIES = Counter("app_queries", "Queries the app served")


def metrics() -> bytes:
    """Every worker's metrics: the app's own, and every worker's pools."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(PoolCollector(directory=METRICS_DIR))
    return generate_latest(registry)


def app(environ: Any, start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``/metrics``: the metrics; anything else: a query, answered with our pid."""
    if environ.get("PATH_INFO") == "/metrics":
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [metrics()]
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchone()
    QUERIES.inc()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{os.getpid()}\n".encode()]
