"""Multi-host DSNs and failover (issue 18, section 2 item 1), against real servers.

``target_session_attrs`` and ``load_balance_hosts`` are libpq's: the pool
passes them through, with psycopg2 and psycopg 3 alike. The failover: a
primary with a synchronous standby is killed (SIGKILL, as a machine dies),
the standby is promoted, and workers writing through a pool whose DSN lists
both servers with ``target_session_attrs=read-write`` must write again within
seconds with no code of their own, lose no acknowledged commit, and never be
handed a connection to the dead server once writes succeed again.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, List, Set, Tuple

import pytest

from pgreservoir import ConnectionPool
from pgreservoir.testing import PostgresServer, StandbyServer

from ._support import (
    LEGITIMATE,
    PHASE_DEADLINE,
    committed_ids,
    make_pool,
    make_workload,
    multi_host_dsn,
    pair,
    report,
)

WARM_UP = 50
STEADY = 100
RECOVERY_BOUND = 10.0  # a deadline for the condition, not a speed claim
DRIVERS = ["psycopg2", "psycopg"]


@pytest.fixture(scope="module")
def servers() -> Iterator[Tuple[PostgresServer, StandbyServer]]:
    with pair(synchronous=False) as both:
        yield both


def pool_for(dsn: str, driver: str, **options: Any) -> ConnectionPool:
    if driver == "psycopg":
        import psycopg

        options["connection_class"] = psycopg.Connection
    return ConnectionPool(dsn, **options)


def ports_of(pool: ConnectionPool, count: int) -> List[int]:
    conns = [pool.getconn(timeout=10) for _ in range(count)]
    try:
        return [int(conn.info.port) for conn in conns]
    finally:
        for conn in conns:
            pool.putconn(conn)


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize(
    ("attrs", "where"),
    [
        ("read-write", "primary"),
        ("primary", "primary"),
        ("standby", "standby"),
        ("read-only", "standby"),
    ],
)
def test_target_session_attrs_pass_through(
    servers: Tuple[PostgresServer, StandbyServer], driver: str, attrs: str, where: str
) -> None:
    primary, standby = servers
    # The wanted server listed second: libpq skips the other.
    order = (standby, primary) if where == "primary" else (primary, standby)
    pool = pool_for(multi_host_dsn(*order, target_session_attrs=attrs), driver, max_size=4)
    try:
        expected = primary.port if where == "primary" else standby.port
        assert set(ports_of(pool, 4)) == {expected}
    finally:
        pool.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_load_balance_hosts_pass_through(
    servers: Tuple[PostgresServer, StandbyServer], driver: str
) -> None:
    primary, standby = servers
    dsn = multi_host_dsn(primary, standby, load_balance_hosts="random")
    pool = pool_for(dsn, driver, max_size=24)
    try:
        seen: Set[int] = set(ports_of(pool, 24))
        # random order per connection: 24 landing on one server is a 2**-23 chance
        assert seen == {primary.port, standby.port}
    finally:
        pool.close()
    pool = pool_for(multi_host_dsn(primary, standby), driver, max_size=6)  # default: in order
    try:
        assert set(ports_of(pool, 6)) == {primary.port}
    finally:
        pool.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["threads", "asyncio"])
def test_failover_with_synchronous_replication(mode: str) -> None:
    with pair() as (primary, standby):
        dsn = multi_host_dsn(primary, standby, target_session_attrs="read-write")
        pool = make_pool(dsn, mode, f"failover-{mode}")
        workload = make_workload(pool, mode, f"failover-{mode}")
        try:
            workload.start()
            workload.wait_until(lambda: workload.successes_after(0) >= WARM_UP, "warm-up", 30)
            assert workload.ports_after(0) == {primary.port}

            killed_at = time.monotonic()
            primary.kill()
            standby.promote()
            promoted_at = time.monotonic()
            first_ok_at = workload.wait_until(
                lambda: workload.first_success_after(promoted_at) is not None,
                "a write to succeed after the failover",
                PHASE_DEADLINE,
            )
            first_ok = workload.first_success_after(promoted_at)
            assert first_ok is not None
            assert first_ok - killed_at < RECOVERY_BOUND
            steady_from = time.monotonic()
            workload.wait_until(
                lambda: workload.successes_after(steady_from) >= STEADY, "steady writes", 30
            )
            # No connection to the dead server was handed out once writes worked again.
            assert workload.ports_after(first_ok) == {standby.port}
            assert not workload.failures_after(steady_from)
            hung = workload.stop(time.monotonic() + 15)
            assert hung == []
            assert workload.violations == []
            assert workload.kinds() <= LEGITIMATE, workload.counts()
            # Synchronous replication: nothing the dead primary acknowledged is lost.
            committed = committed_ids(standby)
            lost = set(workload.acked) - committed
            assert not lost, f"{len(lost)} acknowledged commits lost"
            failures = workload.failures_after(killed_at)
            last_failure = max((r.t_end for r in failures), default=killed_at)
            report(
                f"failover, {mode}",
                {
                    "kill to promoted": promoted_at - killed_at,
                    "kill to first write": first_ok - killed_at,
                    "writes failed for": last_failure - killed_at,
                    "seen at": first_ok_at - killed_at,
                },
                workload,
            )
            print(f"[failover, {mode}] acknowledged {len(workload.acked)}, lost 0")
        finally:
            workload.stop(time.monotonic() + 15)
            pool.close()
            if mode == "asyncio":
                pool.shutdown()
