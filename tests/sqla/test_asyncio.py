"""AsyncAdaptedReservoirPool under create_async_engine (postgresql+psycopg), on a real server."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Dict, List, TypeVar

import pytest
from sqlalchemy import event, exc, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pgreservoir.sqlalchemy import AsyncAdaptedReservoirPool, ReservoirPool
from pgreservoir.testing import PostgresServer

T = TypeVar("T")


def run(make: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
    """Run a coroutine on a fresh loop, failing instead of hanging."""

    async def bounded() -> T:
        return await asyncio.wait_for(make(), timeout)

    return asyncio.run(bounded())


@pytest.fixture
def async_url(postgres_server: PostgresServer, postgres_dsn: str) -> str:
    import psycopg2.extensions

    dbname = psycopg2.extensions.parse_dsn(postgres_dsn)["dbname"]
    server = postgres_server
    return f"postgresql+psycopg://{server.user}@{server.host}:{server.port}/{dbname}"


def _engine(url: str, **kwargs: Any) -> AsyncEngine:
    return create_async_engine(url, poolclass=AsyncAdaptedReservoirPool, **kwargs)


def test_sync_pool_refused_for_async_engine(async_url: str) -> None:
    with pytest.raises(exc.ArgumentError, match="cannot be used with asyncio engine"):
        create_async_engine(async_url, poolclass=ReservoirPool)


def test_events_and_dispose(async_url: str) -> None:
    async def main() -> List[str]:
        engine = _engine(async_url, pool_size=2, max_overflow=0)
        seen: List[str] = []
        for name in ("connect", "checkout", "reset", "checkin", "close"):
            event.listen(engine.sync_engine, name, lambda *a, _n=name: seen.append(_n))
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        await engine.dispose()
        async with engine.connect() as conn:  # usable after dispose
            assert (await conn.execute(text("SELECT 2"))).scalar_one() == 2
        await engine.dispose()
        return seen

    seen = run(main)
    assert seen[:4] == ["connect", "checkout", "reset", "checkin"]
    assert seen[4] == "close"
    assert seen[5:9] == ["connect", "checkout", "reset", "checkin"]


def test_32_tasks_on_8_connections(async_url: str, postgres_server: PostgresServer) -> None:
    dbname = async_url.rsplit("/", 1)[1]

    async def main() -> Dict[int, int]:
        engine = _engine(async_url, pool_size=8, max_overflow=0, pool_timeout=60)
        holders: Dict[int, int] = {}
        errors: List[str] = []
        counts = dict.fromkeys(range(32), 0)
        peak = [0]

        def checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
            if id(dbapi_conn) in holders:
                errors.append("double hand-out")
            holders[id(dbapi_conn)] = 1
            peak[0] = max(peak[0], len(holders))

        event.listen(engine.sync_engine, "checkout", checkout)
        event.listen(engine.sync_engine, "checkin", lambda c, r: holders.pop(id(c), None))
        done = [0]

        async def worker(index: int) -> None:
            while done[0] < 32 * 20:
                done[0] += 1
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT pg_sleep(0.001)"))
                counts[index] += 1

        await asyncio.gather(*(worker(i) for i in range(32)))
        pool: Any = engine.sync_engine.pool
        assert not errors
        assert peak[0] <= 8
        assert pool.checkedout() == 0
        assert not holders
        assert postgres_server.connection_count(dbname) <= 8
        await engine.dispose()
        return counts

    counts = run(main)
    assert sum(counts.values()) == 32 * 20
    assert min(counts.values()) >= 4, sorted(counts.values())  # none starved


def test_timeout_and_server_restart(async_url: str, postgres_server: PostgresServer) -> None:
    async def main() -> None:
        engine = _engine(async_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
        async with engine.connect():
            with pytest.raises(exc.TimeoutError):
                async with engine.connect():
                    pass
        postgres_server.restart(mode="immediate")
        # The dead idle connection is found by the probe: no pre-ping, no user code.
        for _ in range(3):
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        await engine.dispose()

    run(main)


def test_connect_error_reaches_the_caller(async_url: str) -> None:
    async def main() -> None:
        engine = _engine(async_url.rsplit("/", 1)[0] + "/no_such_database")
        with pytest.raises(exc.OperationalError, match="no_such_database"):
            async with engine.connect():
                pass
        await engine.dispose()

    run(main)


def test_timeout_zero_still_opens_a_connection(async_url: str) -> None:
    # As QueuePool: pool_timeout bounds waiting for a returned connection,
    # not the connect made when the pool has room.
    async def main() -> None:
        engine = _engine(async_url, pool_size=1, max_overflow=0, pool_timeout=0)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            with pytest.raises(exc.TimeoutError):
                async with engine.connect():
                    pass
        await engine.dispose()

    run(main)
