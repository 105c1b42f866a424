"""Prometheus metrics (issue 17): PoolCollector on a real /metrics endpoint,
scraped over HTTP, against real PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.request
import uuid
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

import pgreservoir.pool as compat
import pgreservoir.psycopg_pool as pp
from pgreservoir import AsyncConnectionPool, ConnectionPool, PoolTimeout
from pgreservoir.prometheus import PoolCollector
from support import DEADLINE, scalar, wait_until

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def endpoint() -> Iterator[str]:
    """A real /metrics server with a PoolCollector, on a free loopback port."""
    registry = CollectorRegistry()
    registry.register(PoolCollector())
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(DEADLINE)


def scrape(url: str) -> Tuple[str, Samples]:
    with urllib.request.urlopen(url, timeout=DEADLINE) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _name() -> str:
    return f"prom-{uuid.uuid4().hex[:8]}"


def test_scraped_metrics_of_a_connection_pool(postgres_dsn: str, endpoint: str) -> None:
    name = _name()
    pool = ConnectionPool(postgres_dsn, min_size=1, max_size=2, name=name)
    try:
        pool.wait()
        for _ in range(3):
            with pool.connection() as conn:
                scalar(conn, "SELECT pg_sleep(0.02)")
        a, b = pool.getconn(), pool.getconn()
        served: List[Any] = []
        waiter = threading.Thread(target=lambda: served.append(pool.getconn(timeout=DEADLINE)))
        waiter.start()
        pending = "db_client_connection_pending_requests"
        wait_until(
            lambda: get(scrape(endpoint)[1], pending, pool_name=name) == 1,
            "the waiter in pending_requests",
        )
        text, samples = scrape(endpoint)
        assert get(samples, "db_client_connection_count", pool_name=name, state="used") == 2
        assert get(samples, "db_client_connection_count", pool_name=name, state="idle") == 0
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.05)
        pool.putconn(a)
        waiter.join(DEADLINE)
        pool.putconn(served[0])
        pool.putconn(b)
        stats = pool.stats()
        text, samples = scrape(endpoint)
    finally:
        pool.close()

    for family in (
        "# TYPE db_client_connection_count gauge",
        "# TYPE db_client_connection_idle_max gauge",
        "# TYPE db_client_connection_idle_min gauge",
        "# TYPE db_client_connection_max gauge",
        "# TYPE db_client_connection_pending_requests gauge",
        "# TYPE db_client_connection_timeouts_total counter",
        "# TYPE db_client_connection_wait_time_seconds histogram",
        "# TYPE db_client_connection_use_time_seconds histogram",
        "# TYPE db_client_connection_create_time_seconds histogram",
    ):
        assert family in text, family
    labels = {"pool_name": name}
    assert get(samples, "db_client_connection_count", state="idle", **labels) == 2
    assert get(samples, "db_client_connection_count", state="used", **labels) == 0
    assert get(samples, "db_client_connection_idle_min", **labels) == 1
    assert get(samples, "db_client_connection_idle_max", **labels) == 2
    assert get(samples, "db_client_connection_max", **labels) == 2
    assert get(samples, "db_client_connection_pending_requests", **labels) == 0
    assert get(samples, "db_client_connection_timeouts_total", **labels) == 1
    wait_count = get(samples, "db_client_connection_wait_time_seconds_count", **labels)
    assert wait_count == stats["requests"] == 7
    assert get(samples, "db_client_connection_wait_time_seconds_bucket", le="+Inf", **labels) == 7
    assert get(samples, "db_client_connection_wait_time_seconds_sum", **labels) >= 0.05
    assert get(samples, "db_client_connection_use_time_seconds_count", **labels) == 6
    assert get(samples, "db_client_connection_use_time_seconds_sum", **labels) >= 0.06
    # Cumulative buckets: the 20 ms holds are above 10 ms.
    assert get(samples, "db_client_connection_use_time_seconds_bucket", le="0.01", **labels) <= 3
    create = get(samples, "db_client_connection_create_time_seconds_count", **labels)
    assert create == stats["connections_opened"]

    # Closed: gone from the next scrape.
    _, after = scrape(endpoint)
    assert not [key for key in after if ("pool_name", name) in key[1]]


def test_every_kind_of_pool_is_scraped(postgres_dsn: str, endpoint: str) -> None:
    names = {kind: _name() for kind in ("modern", "dropin", "psycopg", "async", "psycopg-async")}

    async def main() -> Samples:
        async with AsyncConnectionPool(
            postgres_dsn, min_size=1, name=names["async"]
        ) as a, pp.AsyncConnectionPool(postgres_dsn, min_size=1, name=names["psycopg-async"]) as b:
            for pool in (a, b):
                async with pool.connection():
                    pass
            # Scraped from the server's thread while this loop runs.
            return (await asyncio.to_thread(scrape, endpoint))[1]

    pools: List[Any] = [
        ConnectionPool(postgres_dsn, min_size=1, name=names["modern"]),
        compat.ThreadedConnectionPool(
            1, 2, postgres_dsn, pool_options=compat.PoolOptions(name=names["dropin"])
        ),
        pp.ConnectionPool(postgres_dsn, min_size=1, name=names["psycopg"], open=True),
    ]
    try:
        for pool in pools:
            pool.putconn(pool.getconn())
        samples = asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        pools[0].close()
        pools[1].closeall()
        pools[2].close()
    for name in names.values():
        assert get(samples, "db_client_connection_use_time_seconds_count", pool_name=name) == 1
        assert get(samples, "db_client_connection_max", pool_name=name) >= 1


def test_pools_sharing_a_name_are_added_up(postgres_dsn: str, endpoint: str) -> None:
    # One series per name: a duplicate series would make the scrape invalid.
    name = _name()
    first = ConnectionPool(postgres_dsn, min_size=1, max_size=2, name=name)
    second = ConnectionPool(postgres_dsn, min_size=1, max_size=3, name=name)
    try:
        first.wait()
        second.wait()
        text, samples = scrape(endpoint)
    finally:
        first.close()
        second.close()
    assert get(samples, "db_client_connection_max", pool_name=name) == 5
    assert text.count(f'db_client_connection_max{{pool_name="{name}"}}') == 1


def test_a_failing_pool_read_leaves_the_scrape_and_the_pool_working(
    postgres_dsn: str, endpoint: str
) -> None:
    name, healthy = _name(), _name()
    pool = ConnectionPool(postgres_dsn, min_size=1, name=name)
    other = ConnectionPool(postgres_dsn, min_size=1, name=healthy)
    try:
        pool.wait()
        other.wait()

        def broken() -> Any:
            raise RuntimeError("figures exploded")

        pool._shell.figures = broken  # type: ignore[method-assign]
        _, samples = scrape(endpoint)
        assert not [key for key in samples if ("pool_name", name) in key[1]]
        assert get(samples, "db_client_connection_max", pool_name=healthy) == 10
        with pool.connection() as conn:
            assert scalar(conn, "SELECT 1") == 1
    finally:
        del pool._shell.figures
        pool.close()
        other.close()
