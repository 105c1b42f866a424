"""RoutingPool (threads, psycopg2 and psycopg 3) against real servers: writes to
the primary, reads spread over the replicas that are up, falling back to the
primary when none is and back to a replica within seconds, lagging replicas
left out until they catch up, connections always returned where they came from."""

from __future__ import annotations

import gc
import threading
import time
from typing import Any, Dict, List, Set, Tuple

import pytest

from pgreservoir import ConnectionPool, PoolClosed, PoolError, RoutingPool
from pgreservoir.testing import PostgresServer, StandbyServer
from support import DEADLINE, Flavor, scalar, wait_until

from .conftest import Servers, served_by

#: Fast health checks: the bounds below are in these units.
CHECKS: Dict[str, Any] = {"replica_check_interval": 0.2, "replica_check_timeout": 1.0}
#: How soon reads must come back to a replica that is up again: a few check
#: intervals plus the replica pool's reconnect backoff (at most 1 s).
BACK_WITHIN = 10.0


def _routing(flavor: Flavor, servers: Servers, **kwargs: Any) -> RoutingPool:
    pool = RoutingPool(
        servers.primary, servers.replicas, connect_timeout=2, **flavor.pool_kwargs,
        **CHECKS, **kwargs,
    )
    pool.wait(DEADLINE)
    return pool


def _read(pool: RoutingPool, timeout: float = DEADLINE) -> str:
    with pool.connection(readonly=True, timeout=timeout) as conn:
        return served_by(conn)


def test_writes_go_to_the_primary_and_reads_spread_over_the_replicas(
    flavor: Flavor, servers: Servers
) -> None:
    with _routing(flavor, servers, min_size=1, max_size=2) as pool:
        assert {_read(pool) for _ in range(6)} == {"replica-1", "replica-2"}
        with pool.connection() as conn:
            assert served_by(conn) == "primary"
        stats = pool.stats()
        assert stats["writes"] == 1
        assert stats["replica_reads"] == 6
        assert stats["fallback_reads"] == 0
        assert [r["reads"] for r in stats["replicas"]] == [3, 3]
        assert all(r["eligible"] and r["up"] for r in stats["replicas"])
        assert stats["in_use"] == 0


def test_connection_commits_on_success_and_rolls_back_on_error(
    flavor: Flavor, servers: Servers
) -> None:
    with _routing(flavor, servers) as pool:
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (n int)")
            cur.execute("INSERT INTO t VALUES (1)")

        def fails() -> None:
            with pool.connection() as conn:
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO t VALUES (2)")
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            fails()
        with pool.connection(readonly=True) as conn:
            assert scalar(conn, "SELECT array_agg(n) FROM t") == [1]


def test_read_only_connections_refuse_writes_even_on_the_primary(flavor: Flavor,
                                                                  servers: Servers) -> None:
    """With no replica, a read falls back to the primary, read-only all the same."""
    with RoutingPool(servers.primary, (), **flavor.pool_kwargs) as pool:
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (n int)")
        conn = pool.getconn(readonly=True)
        assert served_by(conn) == "primary"
        with pytest.raises(flavor.errors.ReadOnlySqlTransaction), conn.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (1)")
        pool.putconn(conn)
        # Given back, the connection is read-write again for the next writer.
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (1)")
        assert pool.stats()["fallback_reads"] == 1


def test_putconn_refuses_a_foreign_connection_and_a_second_return(
    flavor: Flavor, servers: Servers, postgres_dsn: str
) -> None:
    with _routing(flavor, servers) as pool, ConnectionPool(
        postgres_dsn, **flavor.pool_kwargs
    ) as other:
        foreign = other.getconn()
        with pytest.raises(PoolError, match="was not taken from it, or was given back"):
            pool.putconn(foreign)
        other.putconn(foreign)
        conn = pool.getconn(readonly=True)
        pool.putconn(conn)
        with pytest.raises(PoolError, match="was not taken from it, or was given back"):
            pool.putconn(conn)
        stats = pool.stats()
        assert stats["in_use"] == 0
        assert all(r["pool"]["in_use"] == 0 for r in stats["replicas"])
        assert stats["primary"]["in_use"] == 0
    with pytest.raises(PoolClosed):
        pool.getconn()


def test_a_connection_dropped_without_putconn_is_reclaimed(
    flavor: Flavor, servers: Servers
) -> None:
    """The routing pool holds what it hands out weakly: a connection lost by its
    caller goes back to its pool as any lost connection does."""
    with _routing(flavor, servers, min_size=0, max_size=1) as pool:
        conn = pool.getconn(readonly=True)
        assert served_by(conn).startswith("replica-")
        assert pool.stats()["in_use"] == 1
        del conn
        gc.collect()

        def reclaimed() -> bool:
            stats = pool.stats()
            return stats["in_use"] == 0 and all(
                r["pool"]["in_use"] == 0 for r in stats["replicas"]
            )

        wait_until(reclaimed, "the dropped connection reclaimed")
        for _ in range(4):  # both replicas serve again, one connection each
            assert _read(pool, timeout=DEADLINE).startswith("replica-")


def test_the_arguments_are_checked(flavor: Flavor, servers: Servers) -> None:
    with pytest.raises(TypeError, match="not a single str"):
        RoutingPool(servers.primary, servers.replicas[0])
    with pytest.raises(ValueError, match="max_replica_lag"):
        RoutingPool(servers.primary, servers.replicas, max_replica_lag=-1)
    with pytest.raises(ValueError, match="replica_check_interval"):
        RoutingPool(servers.primary, servers.replicas, replica_check_interval=0)


def test_no_replica_up_reads_fall_back_to_the_primary_at_once(
    flavor: Flavor, servers: Servers
) -> None:
    with _routing(flavor, servers, min_size=1, max_size=2) as pool:
        assert _read(pool).startswith("replica-")
        servers.lose(0)
        servers.lose(1)
        # The very first read after the loss: the replicas' pools refuse at
        # once (their connects are refused), the read goes to the primary
        # within its own short timeout.
        assert _read(pool, timeout=2.0) == "primary"
        assert all(_read(pool, timeout=2.0) == "primary" for _ in range(5))
        wait_until(
            lambda: not any(r["eligible"] for r in pool.stats()["replicas"]),
            "the health checks to see both replicas down",
        )
        servers.restore(1)
        wait_until(lambda: _read(pool) == "replica-2", "reads back on replica-2", BACK_WITHIN)
        assert pool.stats()["fallback_reads"] >= 6


class _Workload:
    """Reader threads through a RoutingPool, checking that no connection is ever
    held by two of them and noting who served each read and when."""

    def __init__(self, pool: RoutingPool, flavor: Flavor, threads: int) -> None:
        self.pool = pool
        self.flavor = flavor
        self.lock = threading.Lock()
        self.holding: Set[int] = set()
        self.double: List[int] = []
        self.reads: List[Tuple[float, str]] = []
        self.lost: List[BaseException] = []  # reads in flight on a replica that went
        self.errors: List[BaseException] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                with self.pool.connection(readonly=True, timeout=DEADLINE) as conn:
                    with self.lock:
                        if id(conn) in self.holding:
                            self.double.append(id(conn))
                        self.holding.add(id(conn))
                    try:
                        name = served_by(conn)
                    finally:
                        with self.lock:
                            self.holding.discard(id(conn))
                with self.lock:
                    self.reads.append((time.monotonic(), name))
            except self.flavor.OperationalError as exc:
                self.lost.append(exc)  # the query ran on a connection reset under it
            except Exception as exc:  # a timeout, a refusal: never expected
                self.errors.append(exc)

    def since(self, moment: float) -> List[str]:
        with self.lock:
            return [name for at, name in self.reads if at > moment]

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(DEADLINE)
        assert not any(t.is_alive() for t in self.threads), "a reader hung"
        assert self.double == [], "a connection was handed to two threads"
        assert self.errors == [], self.errors[:3]


def test_threads_read_on_while_replicas_are_lost_and_come_back(
    flavor: Flavor, servers: Servers
) -> None:
    with _routing(flavor, servers, min_size=2, max_size=4) as pool:
        work = _Workload(pool, flavor, threads=6)
        work.start()
        wait_until(lambda: {"replica-1", "replica-2"} <= set(work.since(0)), "both replicas read")

        servers.lose(0)
        lost_at = time.monotonic()
        wait_until(lambda: len(work.since(lost_at + 1.0)) >= 20, "reads go on without replica-1")
        assert "replica-1" not in work.since(lost_at + 1.0)

        servers.lose(1)
        both_at = time.monotonic()
        wait_until(lambda: len(work.since(both_at + 1.0)) >= 20, "reads go on without replicas")
        assert set(work.since(both_at + 1.0)) == {"primary"}

        servers.restore(0)
        back_at = time.monotonic()
        wait_until(lambda: "replica-1" in work.since(back_at), "reads back on replica-1",
                   BACK_WITHIN)
        servers.restore(1)
        back_at = time.monotonic()
        wait_until(lambda: "replica-2" in work.since(back_at), "reads back on replica-2",
                   BACK_WITHIN)
        # Once both are back, the primary serves no more reads.
        settled = time.monotonic() + 1.0
        wait_until(lambda: len(work.since(settled)) >= 20, "reads after both are back")
        assert "primary" not in work.since(settled)
        work.finish()
        stats = pool.stats()
        assert stats["in_use"] == 0
        assert stats["primary"]["in_use"] == 0
        assert all(r["pool"]["in_use"] == 0 for r in stats["replicas"])


def test_a_black_holed_replica_is_dropped_within_the_check_bounds(
    flavor: Flavor, servers: Servers
) -> None:
    """Nothing flows to replica-1 any more (its connects hang, its open
    connections go silent): its health check stops reporting, it is dropped
    within check interval + timeout, and new reads go to replica-2; reads in
    flight on it finish when the network comes back."""
    with _routing(flavor, servers, min_size=1, max_size=3) as pool:
        work = _Workload(pool, flavor, threads=4)
        work.start()
        wait_until(lambda: {"replica-1", "replica-2"} <= set(work.since(0)), "both replicas read")
        servers.proxies[0].set_mode("blackhole")
        held_at = time.monotonic()
        bound = CHECKS["replica_check_interval"] + CHECKS["replica_check_timeout"]
        wait_until(lambda: not pool.stats()["replicas"][0]["eligible"], "replica-1 dropped",
                   bound + 2.0)
        dropped_at = time.monotonic()
        wait_until(lambda: len(work.since(dropped_at)) >= 20, "reads go on on replica-2")
        assert "replica-1" not in work.since(dropped_at + 0.5)
        assert held_at < dropped_at
        servers.restore(0)
        back_at = time.monotonic()
        wait_until(lambda: "replica-1" in work.since(back_at), "reads back on replica-1",
                   BACK_WITHIN)
        work.finish()
        assert work.lost == [], "a black hole delays reads, it loses none"


def test_close_returns_while_a_check_hangs(flavor: Flavor, servers: Servers) -> None:
    pool = _routing(flavor, servers, min_size=1)
    pool._check_timeout = 30.0  # the check on the black hole would hang that long
    servers.proxies[0].set_mode("blackhole")
    checker = pool._checkers[0]  # the replica's health-check pool
    wait_until(lambda: checker.stats()["in_use"] == 1, "a check under way on the black hole")
    began = time.monotonic()
    pool.close(timeout=1.0)
    assert time.monotonic() - began < DEADLINE
    assert not any(t.is_alive() for t in pool._threads), "a check thread left running"


# -- lag, with a real streaming standby -----------------------------------------------


def test_a_lagging_standby_gets_no_reads_until_it_catches_up(
    flavor: Flavor, standby_pair: Tuple[PostgresServer, StandbyServer]
) -> None:
    primary, standby = standby_pair
    primary_dsn = primary.make_dsn(application_name="primary")
    standby_dsn = standby.make_dsn(application_name="standby")
    stop = threading.Event()

    def write() -> None:  # WAL keeps coming, as on a busy primary
        conn = primary.connect()
        try:
            while not stop.wait(0.05):
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO items VALUES (1)")
        finally:
            conn.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    pool = RoutingPool(primary_dsn, [standby_dsn], max_replica_lag=1.0, **CHECKS,
                       **flavor.pool_kwargs)
    try:
        pool.wait(DEADLINE)
        assert _read(pool) == "standby"
        standby.pause_replay()
        try:
            wait_until(lambda: not pool.stats()["replicas"][0]["eligible"],
                       "the paused standby left out for its lag")
            lag = pool.stats()["replicas"][0]["lag"]
            assert lag is not None
            assert lag > 1.0
            assert pool.stats()["replicas"][0]["up"], "lagging, not down"
            assert all(_read(pool) == "primary" for _ in range(5))
        finally:
            standby.resume_replay()
        wait_until(lambda: _read(pool) == "standby", "reads back on the caught-up standby",
                   BACK_WITHIN)
        assert pool.stats()["replicas"][0]["lag"] <= 1.0
    finally:
        stop.set()
        writer.join(DEADLINE)
        pool.close()


def test_an_idle_primary_does_not_make_the_standby_look_late(
    flavor: Flavor, standby_pair: Tuple[PostgresServer, StandbyServer]
) -> None:
    """Nothing written for longer than max_replica_lag: the last replayed
    transaction is old, yet the standby has everything. It keeps its reads,
    and a first write after the quiet spell does not push it out."""
    primary, standby = standby_pair
    pool = RoutingPool(primary.make_dsn(application_name="primary"),
                       [standby.make_dsn(application_name="standby")],
                       max_replica_lag=0.5, **CHECKS, **flavor.pool_kwargs)
    try:
        pool.wait(DEADLINE)
        with primary.connect() as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (2)")
        conn.close()
        standby.wait_caught_up(DEADLINE)

        def replay_age() -> float:
            conn = standby.connect()
            try:
                return float(scalar(conn, "SELECT extract(epoch FROM now() - "
                                          "pg_last_xact_replay_timestamp())"))
            finally:
                conn.close()

        wait_until(lambda: replay_age() > 1.0, "the last replayed transaction to be old")
        checks = pool.stats()["replicas"][0]["checks"]
        wait_until(lambda: pool.stats()["replicas"][0]["checks"] >= checks + 2, "two checks")
        snapshot = pool.stats()["replicas"][0]
        assert snapshot["lag"] == 0.0
        assert snapshot["eligible"]
        assert _read(pool) == "standby"
        with primary.connect() as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (3)")
        conn.close()
        checks = pool.stats()["replicas"][0]["checks"]
        seen: List[bool] = []

        def checked_eligible() -> bool:
            snap = pool.stats()["replicas"][0]
            seen.append(bool(snap["eligible"]))
            return bool(snap["checks"] >= checks + 3)

        wait_until(checked_eligible, "three checks after the write")
        assert all(seen), "the first write after a quiet spell read as lag"
    finally:
        pool.close()


def test_a_stopped_standby_sends_reads_to_the_primary_and_back(
    flavor: Flavor, standby_pair: Tuple[PostgresServer, StandbyServer]
) -> None:
    primary, standby = standby_pair
    pool = RoutingPool(primary.make_dsn(application_name="primary"),
                       [standby.make_dsn(application_name="standby")],
                       **CHECKS, **flavor.pool_kwargs)
    try:
        pool.wait(DEADLINE)
        assert _read(pool) == "standby"
        standby.stop("immediate")
        try:
            wait_until(lambda: _read(pool) == "primary", "reads on the primary")
        finally:
            standby.start()
        standby.wait_streaming()
        wait_until(lambda: _read(pool) == "standby", "reads back on the standby", BACK_WITHIN)
    finally:
        pool.close()
