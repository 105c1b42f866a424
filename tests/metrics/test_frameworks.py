"""The SQLAlchemy and Django pools record the same metrics as every other pool
(issue 17): they are built on the shells, which feed the one recorder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import psycopg2.extensions
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    dsn = sys.argv[1]
    params = psycopg2.extensions.parse_dsn(dsn)
    url = (f"{params.get('user', 'postgres')}@{params['host']}:{params['port']}"
           f"/{params['dbname']}")

    # SQLAlchemy, blocking and asyncio.
    from sqlalchemy import create_engine, text
    from sqlalchemy.ext.asyncio import create_async_engine
    from pgreservoir import PoolOptions
    from pgreservoir.sqlalchemy import AsyncAdaptedReservoirPool, ReservoirPool

    engine = create_engine(f"postgresql+psycopg2://{url}", poolclass=ReservoirPool,
                           pool_options=PoolOptions(name="sqla"))
    for _ in range(2):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    async def use_async():
        engine = create_async_engine(f"postgresql+psycopg://{url}",
                                     poolclass=AsyncAdaptedReservoirPool,
                                     pool_options=PoolOptions(name="sqla-async"))
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        await engine.dispose()

    asyncio.run(use_async())

    # Django, its default alias pooled.
    import django
    from django.conf import settings
    settings.configure(DATABASES={"default": {
        "ENGINE": "pgreservoir.django", "NAME": params["dbname"],
        "USER": params.get("user", "postgres"), "HOST": params["host"],
        "PORT": params["port"], "OPTIONS": {"pool": {"max_size": 2}},
    }})
    django.setup()
    from django.db import connection
    for _ in range(3):
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
        connection.close()  # the request's end: back to the pool

    from pgreservoir import flush_metrics
    flush_metrics()
    seen = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name in ("db.client.connection.use_time",
                              "db.client.connection.create_time"):
                    for p in m.data.data_points:
                        name = p.attributes["db.client.connection.pool.name"]
                        seen[(m.name.rsplit(".", 1)[1], name)] = p.count
    print(sorted(seen.items()))
    """
)


def test_sqlalchemy_and_django_pools_record_to_the_global_provider(
    postgres_dsn: str, tmp_path: Any
) -> None:
    # A process of its own: the global provider and Django's settings are set
    # once per process.
    script = tmp_path / "frameworks_otel.py"
    script.write_text(_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), postgres_dsn],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    seen = dict(eval(out.stdout.strip().splitlines()[-1]))
    # Each checkout returned once: a use time each; at least one connect each.
    assert seen[("use_time", "sqla")] == 2
    assert seen[("use_time", "sqla-async")] == 1
    assert seen[("use_time", "django-default")] == 3
    for name in ("sqla", "sqla-async", "django-default"):
        assert seen[("create_time", name)] >= 1, seen
