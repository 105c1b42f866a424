"""The observability examples (docs/observability.md) run as written, against
real PostgreSQL, and show the pool's metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

from .test_prometheus import free_port

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


def run(example: str, dsn: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / example), dsn],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=False,
        cwd=EXAMPLES,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def exports(text: str) -> List[Dict[str, Any]]:
    """The JSON documents the console exporter printed, one per export."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        doc, at = decoder.raw_decode(text, at)
        found.append(doc)
    return found


def test_the_otel_example_exports_the_pools_metrics(postgres_dsn: str) -> None:
    first = exports(run("otel_metrics.py", postgres_dsn))[0]
    metrics = {
        m["name"]: m
        for rm in first["resource_metrics"]
        for sm in rm["scope_metrics"]
        if sm["scope"]["name"] == "pgreservoir"
        for m in sm["metrics"]
    }
    use = metrics["db.client.connection.use_time"]
    (point,) = use["data"]["data_points"]
    assert point["attributes"] == {"db.client.connection.pool.name": "orders"}
    assert point["count"] == 10
    assert point["sum"] >= 0.1  # ten 10 ms queries
    assert use["unit"] == "s"
    states = {
        p["attributes"]["db.client.connection.state"]: p["value"]
        for p in metrics["db.client.connection.count"]["data"]["data_points"]
    }
    assert states == {"idle": 2, "used": 0}


def test_the_prometheus_example_serves_the_pools_metrics(postgres_dsn: str) -> None:
    out = run("prometheus_metrics.py", postgres_dsn, METRICS_PORT=str(free_port()))
    lines = out.splitlines()
    assert 'db_client_connection_use_time_seconds_count{pool_name="orders"} 10.0' in lines
    assert 'db_client_connection_count{pool_name="orders",state="idle"} 2.0' in lines
    assert 'db_client_connection_max{pool_name="orders"} 4.0' in lines
