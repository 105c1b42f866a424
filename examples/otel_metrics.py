"""OpenTelemetry metrics of a pool: set the SDK up as any app does, and the pool
records to it by itself (meter ``pgreservoir``, the ``db.client.connection.*``
metrics). Run it with::

    python otel_metrics.py "host=localhost dbname=scratch user=me"

(``pip install opentelemetry-sdk 'pgreservoir[binary,otel]'``). It prints what
the console exporter exports, as JSON; use an OTLP exporter in production.
"""

from __future__ import annotations

import os
import sys

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

from pgreservoir import ConnectionPool

dsn = sys.argv[1] if len(sys.argv) > 1 else os.environ["PGRESERVOIR_DSN"]

# The app's usual OpenTelemetry set-up: nothing pgreservoir-specific.
reader = PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=60_000)
provider = MeterProvider(metric_readers=[reader])
metrics.set_meter_provider(provider)

with ConnectionPool(dsn, min_size=2, max_size=4, name="orders") as pool:
    pool.wait()
    for _ in range(10):
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(0.01)")
    # Export now, while the pool is open (an app leaves it to the interval).
    provider.force_flush()
provider.shutdown()
