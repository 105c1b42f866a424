"""OpenTelemetry metrics (issue 17): every pool records the semantic conventions
for connection pools to the meter ``pgreservoir``, read back through the SDK's
in-memory reader, against real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from typing import Any, List

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import pgreservoir.pool as compat
from pgreservoir import AsyncConnectionPool, ConnectionPool, PoolTimeout
from pgreservoir._metrics import ticker
from pgreservoir.stats import BUCKETS
from support import DEADLINE, FLAVORS, Flavor, scalar, wait_until

from ._support import EXPECTED, POOL, Collected


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> Any:
    mp = MeterProvider(metric_readers=[reader])
    yield mp
    mp.shutdown()


def _name() -> str:
    return f"otel-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("flavor", FLAVORS, ids=repr)
def test_connection_pool_records_every_metric(
    postgres_dsn: str, flavor: Flavor, reader: InMemoryMetricReader, provider: Any
) -> None:
    name = _name()
    pool = ConnectionPool(
        postgres_dsn, min_size=1, max_size=2, name=name, meter_provider=provider,
        **flavor.pool_kwargs,
    )
    try:
        pool.wait()
        for _ in range(3):  # each held for a 20 ms query: use time
            with pool.connection() as conn:
                scalar(conn, "SELECT pg_sleep(0.02)")
        a, b = pool.getconn(), pool.getconn()
        got = Collected(reader)
        assert got.value("db.client.connection.count", name, state="used") == 2
        assert got.value("db.client.connection.count", name, state="idle") == 0
        # A caller in line: pending_requests, then a wait time of its own.
        served: List[Any] = []
        waiter = threading.Thread(target=lambda: served.append(pool.getconn(timeout=DEADLINE)))
        waiter.start()
        wait_until(
            lambda: Collected(reader).value(
                "db.client.connection.pending_requests", name
            )
            == 1,
            "the waiter to show in pending_requests",
        )
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.05)  # a timeout, counted
        pool.putconn(a)
        waiter.join(DEADLINE)
        assert served
        pool.putconn(served[0])
        pool.putconn(b)
        stats = pool.stats()
        got = Collected(reader)
    finally:
        pool.close()

    assert "pgreservoir" in got.scopes
    for metric, (unit, kind) in EXPECTED.items():
        assert metric in got.metrics, metric
        assert got.metrics[metric][:2] == (unit, kind), metric
        for attributes, _ in got.metrics[metric][3]:
            assert attributes[POOL] == name
    assert got.metrics["db.client.connection.timeouts"][2] is True  # a monotonic counter
    assert got.metrics["db.client.connection.count"][2] is False  # an up-down counter
    assert got.value("db.client.connection.count", name, state="idle") == 2
    assert got.value("db.client.connection.count", name, state="used") == 0
    assert got.value("db.client.connection.idle.min", name) == 1
    assert got.value("db.client.connection.idle.max", name) == 2
    assert got.value("db.client.connection.max", name) == 2
    assert got.value("db.client.connection.pending_requests", name) == 0
    assert got.value("db.client.connection.timeouts", name) == stats["timeouts"] == 1

    # Histograms: one value per checkout, return and connect, in seconds.
    wait = got.point("db.client.connection.wait_time", name)
    use = got.point("db.client.connection.use_time", name)
    create = got.point("db.client.connection.create_time", name)
    assert list(wait.explicit_bounds) == list(BUCKETS)
    assert wait.count == stats["requests"] == 7  # 3 + 2 + the waiter + the timed out one
    assert use.count == 6  # 3 + a + b + the waiter's
    assert use.sum >= 3 * 0.02
    assert use.sum == pytest.approx(stats["use_ms_total"] / 1000.0, abs=1e-5)
    assert wait.sum == pytest.approx(stats["wait_ms_total"] / 1000.0, abs=1e-5)
    assert wait.sum >= 0.05  # the timed out caller's wait at least
    assert create.count == stats["connections_opened"] >= 2
    assert create.sum == pytest.approx(stats["connect_ms_total"] / 1000.0, abs=1e-5)
    assert sum(use.bucket_counts) == use.count

    # Closed: its points are gone from the next collection.
    after = Collected(reader)
    assert name not in after.pools("db.client.connection.count")


def test_the_psycopg2_drop_in_records_through_pool_options(
    postgres_dsn: str, reader: InMemoryMetricReader, provider: Any
) -> None:
    name = _name()
    pool = compat.ThreadedConnectionPool(
        1, 2, postgres_dsn, pool_options=compat.PoolOptions(name=name, meter_provider=provider)
    )
    try:
        a, b = pool.getconn(), pool.getconn()
        with pytest.raises(compat.PoolError, match="exhausted"):
            pool.getconn()
        got = Collected(reader)
        assert got.value("db.client.connection.count", name, state="used") == 2
        assert got.value("db.client.connection.timeouts", name) == 1
        pool.putconn(a)
        pool.putconn(b)
        got = Collected(reader)
        assert got.point("db.client.connection.use_time", name).count == 2
        assert got.point("db.client.connection.create_time", name).count == 2
    finally:
        pool.closeall()


def test_async_pool_records_every_metric(
    postgres_dsn: str, reader: InMemoryMetricReader, provider: Any
) -> None:
    name = _name()

    async def main() -> None:
        async with AsyncConnectionPool(
            postgres_dsn, min_size=1, max_size=1, name=name, meter_provider=provider
        ) as pool:
            await pool.wait()
            conn = await pool.getconn()
            waiter = asyncio.ensure_future(pool.getconn(timeout=DEADLINE))
            while pool.stats()["waiting"] == 0:
                await asyncio.sleep(0.002)
            # Collected from another thread, as an exporter's would be.
            box: List[Collected] = []
            reading = threading.Thread(target=lambda: box.append(Collected(reader)))
            reading.start()
            while reading.is_alive():
                await asyncio.sleep(0.002)
            got = box[0]
            assert got.value("db.client.connection.pending_requests", name) == 1
            assert got.value("db.client.connection.count", name, state="used") == 1
            await pool.putconn(conn)
            other = await waiter
            await other.execute("SELECT pg_sleep(0.02)")
            await other.rollback()
            await pool.putconn(other)
            stats = pool.stats()
            got = Collected(reader)
            assert got.value("db.client.connection.count", name, state="idle") == 1
            assert got.value("db.client.connection.pending_requests", name) == 0
            use = got.point("db.client.connection.use_time", name)
            assert use.count == 2
            assert use.sum >= 0.02
            wait = got.point("db.client.connection.wait_time", name)
            assert wait.count == stats["requests"] == 2
            assert wait.sum > 0
            assert got.point("db.client.connection.create_time", name).count == 1

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_failing_metrics_read_never_breaks_the_pool(
    postgres_dsn: str,
    reader: InMemoryMetricReader,
    provider: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name, healthy = _name(), _name()
    pool = ConnectionPool(postgres_dsn, min_size=1, name=name, meter_provider=provider)
    other = ConnectionPool(postgres_dsn, min_size=1, name=healthy, meter_provider=provider)
    try:
        pool.wait()
        other.wait()

        def broken() -> Any:
            raise RuntimeError("figures exploded")

        pool._shell.figures = broken  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="pgreservoir"):
            got = Collected(reader)
        assert "reading its metrics failed" in caplog.text
        assert name not in got.pools("db.client.connection.count")
        assert got.value("db.client.connection.count", healthy, state="idle") == 1
        with pool.connection() as conn:  # the pool serves on
            assert scalar(conn, "SELECT 1") == 1
    finally:
        del pool._shell.figures
        pool.close()
        other.close()


class _BrokenProvider:
    def get_meter(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no meter today")


def test_a_broken_meter_provider_is_logged_and_the_pool_works(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pgreservoir"):
        pool = ConnectionPool(postgres_dsn, min_size=1, meter_provider=_BrokenProvider())
    try:
        assert "could not register its OpenTelemetry metrics" in caplog.text
        with pool.connection() as conn:
            assert scalar(conn, "SELECT 1") == 1
    finally:
        pool.close()


def test_the_metrics_thread_ends_with_the_last_pool(
    postgres_dsn: str, reader: InMemoryMetricReader, provider: Any
) -> None:
    pool = ConnectionPool(postgres_dsn, min_size=1, meter_provider=provider)
    try:
        assert ticker.running
        with pool.connection():
            pass
        wait_until(
            lambda: Collected(reader).point("db.client.connection.use_time", pool.name).count
            == 1,
            "the use time to be recorded",
        )
    finally:
        pool.close()
    wait_until(lambda: not ticker.running, "the pgreservoir-metrics thread to end")
    # A new pool starts it again.
    again = ConnectionPool(postgres_dsn, min_size=1, meter_provider=provider)
    try:
        assert ticker.running
    finally:
        again.close()


def test_values_past_the_replay_budget_are_dropped_and_logged(
    postgres_dsn: str,
    reader: InMemoryMetricReader,
    provider: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pgreservoir import _otel

    monkeypatch.setattr(_otel, "MAX_REPLAY", 5)
    name = _name()
    pool = ConnectionPool(postgres_dsn, min_size=1, name=name, meter_provider=provider)
    try:
        pool.wait()
        with caplog.at_level(logging.WARNING, logger="pgreservoir"):
            Collected(reader)  # the connect, within budget
            for _ in range(8):
                pool.putconn(pool.getconn())
            got = Collected(reader)
        assert got.point("db.client.connection.use_time", name).count == 5
        assert "3 histogram values not sent to OpenTelemetry" in caplog.text
        # The next ones are sent again.
        pool.putconn(pool.getconn())
        assert Collected(reader).point("db.client.connection.use_time", name).count == 6
    finally:
        pool.close()


def test_meter_provider_is_validated() -> None:
    with pytest.raises(TypeError, match="meter_provider must be an OpenTelemetry MeterProvider"):
        ConnectionPool("dbname=x", meter_provider="global")


def test_collecting_while_threads_churn_neither_deadlocks_nor_loses_a_value(
    postgres_dsn: str,
    reader: InMemoryMetricReader,
    provider: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Collections (SDK lock, then the pool's), replays and checkouts at once;
    # no value may be lost to a race (the replay budget is another matter).
    from pgreservoir import _otel

    monkeypatch.setattr(_otel, "MAX_REPLAY", 10**9)
    name = _name()
    pool = ConnectionPool(postgres_dsn, min_size=2, max_size=2, name=name, meter_provider=provider)
    stop = threading.Event()
    done: List[int] = []

    def churn() -> None:
        n = 0
        while not stop.is_set():
            conn = pool.getconn(timeout=DEADLINE)
            pool.putconn(conn)
            n += 1
        done.append(n)

    def collect() -> None:
        while not stop.is_set():
            Collected(reader)

    threads = [threading.Thread(target=churn) for _ in range(4)]
    threads += [threading.Thread(target=collect) for _ in range(2)]
    try:
        pool.wait()
        for t in threads:
            t.start()
        wait_until(lambda: pool.stats()["requests"] >= 2000, "2000 checkouts")
        stop.set()
        for t in threads:
            t.join(DEADLINE)
            assert not t.is_alive(), "a thread hung"
        got = Collected(reader)
        assert got.point("db.client.connection.use_time", name).count == sum(done)
        assert got.point("db.client.connection.wait_time", name).count == sum(done)
        pool._shell.core.check_invariants()
    finally:
        stop.set()
        pool.close()


def test_no_password_in_any_attribute(
    postgres_dsn: str, reader: InMemoryMetricReader, provider: Any
) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex[:6]
    pool = ConnectionPool(
        postgres_dsn + f" password={secret}", min_size=1, meter_provider=provider
    )
    try:
        pool.wait()
        with pool.connection():
            pass
        got = Collected(reader)
    finally:
        pool.close()
    assert got.pools("db.client.connection.count")
    for _, _, _, points in got.metrics.values():
        for attributes, _ in points:
            assert secret not in repr(attributes)


_GLOBAL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    import pgreservoir.pool
    import pgreservoir.psycopg_pool as pp
    from pgreservoir import AsyncConnectionPool, ConnectionPool

    dsn = sys.argv[1]
    # Built before the app configures OpenTelemetry: it records all the same.
    early = ConnectionPool(dsn, min_size=1, name="early")
    with early.connection():
        pass
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.set_meter_provider(provider)
    pools = [
        early,
        ConnectionPool(dsn, min_size=1, name="modern"),
        # The global provider named explicitly as well: recorded once, not lost.
        ConnectionPool(dsn, min_size=1, name="explicit", meter_provider=provider),
        pgreservoir.pool.ThreadedConnectionPool(1, 2, dsn),
        pp.ConnectionPool(dsn, min_size=1, name="psycopg-pool"),
    ]
    for pool in pools[1:]:
        conn = pool.getconn()
        pool.putconn(conn)

    async def use_async():
        async with pp.AsyncConnectionPool(dsn, min_size=1, name="psycopg-pool-async") as p:
            async with p.connection():
                pass
            async with AsyncConnectionPool(dsn, min_size=1, name="async") as q:
                async with q.connection():
                    pass
                return reader.get_metrics_data()

    data = asyncio.run(use_async())
    seen = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == "db.client.connection.use_time":
                    for p in m.data.data_points:
                        seen[p.attributes["db.client.connection.pool.name"]] = p.count
    print(sorted(seen.items()))
    """
)


def test_every_pool_records_to_the_global_provider(postgres_dsn: str, tmp_path: Any) -> None:
    # In a process of its own: the global provider can be set once per process.
    script = tmp_path / "global_otel.py"
    script.write_text(_GLOBAL_SCRIPT)
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
    assert seen.pop("early") == 1
    assert seen.pop("modern") == 1
    assert seen.pop("explicit") == 1
    assert seen.pop("psycopg-pool") == 1
    assert seen.pop("psycopg-pool-async") == 1
    assert seen.pop("async") == 1
    (dropin,) = seen  # the psycopg2 drop-in's default name
    assert dropin.startswith("pool-")
    assert seen[dropin] == 1


_NO_OTEL_SCRIPT = textwrap.dedent(
    """
    import sys

    class NotInstalled:
        # As if opentelemetry and prometheus_client were not installed.
        tried = []
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("opentelemetry", "prometheus_client"):
                self.tried.append(name)
                raise ModuleNotFoundError(name)
            return None

    blocker = NotInstalled()
    sys.meta_path.insert(0, blocker)
    import pgreservoir
    assert not blocker.tried, blocker.tried  # importing pgreservoir tries nothing
    pool = pgreservoir.ConnectionPool(sys.argv[1], min_size=1)
    with pool.connection() as conn:
        conn.cursor().execute("SELECT 1")
    stats = pool.stats()
    assert stats["use_ms_total"] > 0, stats
    pool.close()
    loaded = [m for m in sys.modules if m.startswith(("opentelemetry", "prometheus_client"))]
    assert not loaded, loaded
    assert "pgreservoir._otel" not in sys.modules
    import threading
    assert not [t for t in threading.enumerate() if t.name == "pgreservoir-metrics"]
    print("ok")
    """
)


def test_without_opentelemetry_nothing_is_imported_or_started(postgres_dsn: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _NO_OTEL_SCRIPT, postgres_dsn],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_importing_pgreservoir_imports_no_metrics_package() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, pgreservoir, pgreservoir.pool, pgreservoir.psycopg_pool; "
            "print([m for m in sys.modules if m.startswith(('opentelemetry', 'prometheus'))])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "[]"

