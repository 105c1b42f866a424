"""AsyncRoutingPool against real servers: the routing of RoutingPool for asyncio
tasks, with health checks as tasks bounded by the loop's timers."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Dict, List, Set, Tuple

import psycopg
import pytest

from pgreservoir import AsyncConnectionPool, AsyncRoutingPool, PoolClosed, PoolError
from pgreservoir.testing import PostgresServer, StandbyServer
from support import DEADLINE

from .conftest import Servers, run, until

CHECKS: Dict[str, Any] = {"replica_check_interval": 0.2, "replica_check_timeout": 1.0}
BACK_WITHIN = 10.0


async def _served_by(conn: Any) -> str:
    cur = await conn.execute("SHOW application_name")
    row = await cur.fetchone()
    return str(row[0])


async def _read(pool: AsyncRoutingPool, timeout: float = DEADLINE) -> str:
    async with pool.connection(readonly=True, timeout=timeout) as conn:
        return await _served_by(conn)


def _routing(servers: Servers, **kwargs: Any) -> AsyncRoutingPool:
    return AsyncRoutingPool(servers.primary, servers.replicas, connect_timeout=2,
                            **{**CHECKS, **kwargs})


def test_writes_to_the_primary_reads_over_the_replicas(servers: Servers) -> None:
    async def body() -> None:
        async with _routing(servers, min_size=1, max_size=2) as pool:
            await pool.wait(DEADLINE)
            assert {await _read(pool) for _ in range(6)} == {"replica-1", "replica-2"}
            async with pool.connection() as conn:
                assert await _served_by(conn) == "primary"
                await conn.execute("CREATE TABLE t (n int)")
                await conn.execute("INSERT INTO t VALUES (1)")

            async def fails() -> None:
                async with pool.connection() as conn:
                    await conn.execute("INSERT INTO t VALUES (2)")
                    raise ZeroDivisionError

            with pytest.raises(ZeroDivisionError):
                await fails()
            async with pool.connection(readonly=True) as conn:
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    await conn.execute("INSERT INTO t VALUES (3)")
            async with pool.connection(readonly=True) as conn:
                cur = await conn.execute("SELECT array_agg(n) FROM t")
                assert await cur.fetchone() == ([1],)
            stats = pool.stats()
            assert stats["writes"] == 2
            assert stats["replica_reads"] == 8
            assert stats["in_use"] == 0

    run(body())


def test_a_fallback_read_is_read_only_and_putconn_refuses_strangers(
    servers: Servers, postgres_dsn: str
) -> None:
    async def body() -> None:
        async with AsyncRoutingPool(servers.primary) as pool, AsyncConnectionPool(
            postgres_dsn
        ) as other:
            async with pool.connection() as conn:
                await conn.execute("CREATE TABLE t (n int)")
            conn = await pool.getconn(readonly=True)
            assert await _served_by(conn) == "primary"
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                await conn.execute("INSERT INTO t VALUES (1)")
            await pool.putconn(conn)
            with pytest.raises(PoolError, match="was not taken from it, or was given back"):
                await pool.putconn(conn)
            foreign = await other.getconn()
            with pytest.raises(PoolError, match="was not taken from it"):
                await pool.putconn(foreign)
            await other.putconn(foreign)
            async with pool.connection() as conn:  # read-write again for the next writer
                await conn.execute("INSERT INTO t VALUES (1)")
            assert pool.stats()["fallback_reads"] == 1
        with pytest.raises(PoolClosed):
            await pool.getconn()

    run(body())


class _Tasks:
    """Reader tasks through an AsyncRoutingPool: no connection held by two at
    once, who served each read and when."""

    def __init__(self, pool: AsyncRoutingPool, count: int) -> None:
        self.pool = pool
        self.holding: Set[int] = set()
        self.double: List[int] = []
        self.reads: List[Tuple[float, str]] = []
        self.lost: List[BaseException] = []
        self.errors: List[BaseException] = []
        self.stop = asyncio.Event()
        self.tasks = [asyncio.ensure_future(self._run()) for _ in range(count)]

    async def _run(self) -> None:
        while not self.stop.is_set():
            try:
                async with self.pool.connection(readonly=True, timeout=DEADLINE) as conn:
                    if id(conn) in self.holding:
                        self.double.append(id(conn))
                    self.holding.add(id(conn))
                    try:
                        name = await _served_by(conn)
                    finally:
                        self.holding.discard(id(conn))
                self.reads.append((time.monotonic(), name))
            except psycopg.OperationalError as exc:
                self.lost.append(exc)  # the query ran on a connection reset under it
            except Exception as exc:
                self.errors.append(exc)
            await asyncio.sleep(0)

    def since(self, moment: float) -> List[str]:
        return [name for at, name in self.reads if at > moment]

    async def finish(self) -> None:
        self.stop.set()
        _, pending = await asyncio.wait(self.tasks, timeout=DEADLINE)
        assert not pending, "a reader task hung"
        assert self.double == [], "a connection was handed to two tasks"
        assert self.errors == [], self.errors[:3]


def test_tasks_read_on_while_replicas_are_lost_and_come_back(servers: Servers) -> None:
    async def body() -> None:
        async with _routing(servers, min_size=2, max_size=4) as pool:
            await pool.wait(DEADLINE)
            work = _Tasks(pool, 12)
            await until(lambda: {"replica-1", "replica-2"} <= set(work.since(0)), "both read")

            await asyncio.to_thread(servers.lose, 0)
            lost_at = time.monotonic()
            await until(lambda: len(work.since(lost_at + 1.0)) >= 20, "reads without replica-1")
            assert "replica-1" not in work.since(lost_at + 1.0)

            await asyncio.to_thread(servers.lose, 1)
            both_at = time.monotonic()
            await until(lambda: len(work.since(both_at + 1.0)) >= 20, "reads without replicas")
            assert set(work.since(both_at + 1.0)) == {"primary"}

            await asyncio.to_thread(servers.restore, 0)
            back_at = time.monotonic()
            await until(lambda: "replica-1" in work.since(back_at), "back on replica-1",
                        BACK_WITHIN)
            await asyncio.to_thread(servers.restore, 1)
            back_at = time.monotonic()
            await until(lambda: "replica-2" in work.since(back_at), "back on replica-2",
                        BACK_WITHIN)
            settled = time.monotonic() + 1.0
            await until(lambda: len(work.since(settled)) >= 20, "reads after both are back")
            assert "primary" not in work.since(settled)
            await work.finish()
            stats = pool.stats()
            assert stats["in_use"] == 0
            assert stats["primary"]["in_use"] == 0
            assert all(r["pool"]["in_use"] == 0 for r in stats["replicas"])

    run(body())


def test_a_black_holed_replica_check_is_cancelled_at_its_timeout(servers: Servers) -> None:
    async def body() -> None:
        async with _routing(servers, min_size=1, max_size=3) as pool:
            await pool.wait(DEADLINE)
            work = _Tasks(pool, 6)
            await until(lambda: {"replica-1", "replica-2"} <= set(work.since(0)), "both read")
            await asyncio.to_thread(servers.proxies[0].set_mode, "blackhole")
            bound = CHECKS["replica_check_interval"] + CHECKS["replica_check_timeout"]
            await until(lambda: not pool.stats()["replicas"][0]["eligible"], "replica-1 dropped",
                        bound + 2.0)
            # The check itself ended (cancelled at its timeout), not just went stale.
            await until(
                lambda: "no answer within 1 s" in str(pool.stats()["replicas"][0]["last_error"]),
                "the hung check cancelled",
            )
            dropped_at = time.monotonic()
            await until(lambda: len(work.since(dropped_at)) >= 20, "reads go on on replica-2")
            assert "replica-1" not in work.since(dropped_at + 0.5)
            await asyncio.to_thread(servers.restore, 0)
            back_at = time.monotonic()
            await until(lambda: "replica-1" in work.since(back_at), "back on replica-1",
                        BACK_WITHIN)
            await work.finish()

    run(body())


def test_close_returns_while_a_check_hangs(servers: Servers) -> None:
    async def body() -> None:
        pool = _routing(servers, min_size=1, replica_check_interval=0.1,
                        replica_check_timeout=30.0)
        await pool.wait(DEADLINE)
        await asyncio.to_thread(servers.proxies[0].set_mode, "blackhole")
        checker = pool._checkers[0]  # the replica's health-check pool
        await until(lambda: checker.stats()["in_use"] == 1, "a check under way on the black hole")
        loop = asyncio.get_running_loop()
        began = loop.time()
        await pool.close(timeout=1.0)
        assert loop.time() - began < DEADLINE
        assert pool.closed

    run(body())


def test_a_lagging_standby_gets_no_reads_until_it_catches_up(
    standby_pair: Tuple[PostgresServer, StandbyServer]
) -> None:
    primary, standby = standby_pair

    async def body() -> None:
        async def write(stop: asyncio.Event) -> None:
            async with await psycopg.AsyncConnection.connect(
                primary.make_dsn(), autocommit=True
            ) as conn:
                while not stop.is_set():
                    await conn.execute("INSERT INTO items VALUES (1)")
                    await asyncio.sleep(0.05)

        stop = asyncio.Event()
        writer = asyncio.ensure_future(write(stop))
        pool = AsyncRoutingPool(primary.make_dsn(application_name="primary"),
                                [standby.make_dsn(application_name="standby")],
                                max_replica_lag=1.0, **CHECKS)
        try:
            await pool.wait(DEADLINE)
            assert await _read(pool) == "standby"
            await asyncio.to_thread(standby.pause_replay)
            try:
                await until(lambda: not pool.stats()["replicas"][0]["eligible"],
                            "the paused standby left out for its lag")
                snapshot = pool.stats()["replicas"][0]
                assert snapshot["up"]
                assert snapshot["lag"] > 1.0
                assert [await _read(pool) for _ in range(3)] == ["primary"] * 3
            finally:
                await asyncio.to_thread(standby.resume_replay)
            end = time.monotonic() + BACK_WITHIN
            while await _read(pool) != "standby":
                assert time.monotonic() < end, "reads back on the caught-up standby"
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await writer
            await pool.close()

    run(body())
