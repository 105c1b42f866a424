"""Stale roles noticed and healed (issue 18, section 2 item 2), against real servers.

A switchover as it is done in production: the primary is fenced read-only
(``ALTER SYSTEM SET default_transaction_read_only = on`` and a reload), the
synchronous standby catches up and is promoted, and later the old primary
comes back as a standby of the new one, at its old address. The pool's DSN
lists both servers with ``target_session_attrs=read-write``. Workers keep
writing throughout, with no code of their own for any of this: the pool
must discard the connections on the fenced server (SQLSTATE 25006, or the
``default_transaction_read_only`` / ``in_hot_standby`` parameter statuses the
server reports), revalidate the others, and serve writes again within
seconds, losing no acknowledged commit and never handing one connection to
two workers.
"""

from __future__ import annotations

import time
from typing import Any, Dict

import pytest

from pgreservoir import ConnectionPool, PoolTimeout
from pgreservoir.testing import StandbyServer

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

pytestmark = pytest.mark.slow

WARM_UP = 50
STEADY = 100
RECOVERY_BOUND = 10.0  # a deadline for the condition, not a speed claim


@pytest.mark.parametrize("mode", ["threads", "asyncio"])
def test_switchover_with_a_fenced_primary(mode: str) -> None:
    with pair() as (primary, standby):
        dsn = multi_host_dsn(primary, standby, target_session_attrs="read-write")
        pool = make_pool(dsn, mode, f"stale-role-{mode}")
        workload = make_workload(pool, mode, f"stale-role-{mode}")
        try:
            workload.start()
            workload.wait_until(lambda: workload.successes_after(0) >= WARM_UP, "warm-up", 30)
            assert workload.ports_after(0) == {primary.port}

            # Switchover: fence, let the standby catch up, promote.
            fenced_at = time.monotonic()
            primary.fence()
            standby.wait_caught_up(timeout=PHASE_DEADLINE)
            standby.promote()
            promoted_at = time.monotonic()

            def healed() -> bool:
                # Writes after the promotion only: those in flight before the
                # fence reached the sessions may still have succeeded.
                since = max(promoted_at, time.monotonic() - 0.5)
                return workload.successes_after(since) >= 20 and not workload.failures_after(since)

            healed_at = workload.wait_until(
                healed, "writes to succeed again after the switchover", PHASE_DEADLINE
            )
            first_ok = workload.first_success_after(promoted_at)
            failures = workload.failures_after(fenced_at)
            last_failure = max((r.t_end for r in failures), default=None)
            assert first_ok is not None
            assert first_ok - promoted_at < RECOVERY_BOUND
            steady_from = time.monotonic()
            workload.wait_until(
                lambda: workload.successes_after(steady_from) >= STEADY, "steady writes", 30
            )
            assert workload.ports_after(steady_from) == {standby.port}
            assert not workload.failures_after(steady_from)

            # The old primary comes back, as a standby of the new one, at its address.
            back_at = time.monotonic()
            back = StandbyServer.replace(primary, standby)
            try:
                back.wait_streaming()
                settled = time.monotonic()
                workload.wait_until(
                    lambda: workload.successes_after(settled) >= STEADY,
                    "writes with the old primary back as a standby",
                    PHASE_DEADLINE,
                )
                assert workload.ports_after(settled) == {standby.port}
                assert not workload.failures_after(settled)
            finally:
                hung = workload.stop(time.monotonic() + 15)
                back.cleanup()
            assert hung == []
            assert workload.violations == []
            assert workload.kinds() <= LEGITIMATE, workload.counts()
            # Synchronous replication: every acknowledged commit is on the new primary.
            assert set(workload.acked) <= committed_ids(standby)
            stats = pool.stats()
            assert stats["connections_stale_role"] >= 1
            report(
                f"stale role, {mode}",
                {
                    "first write after promotion": first_ok - promoted_at,
                    "writes failed for": (last_failure - fenced_at) if last_failure else 0.0,
                    "clean writes again after fence": healed_at - fenced_at,
                    "old primary rejoined in": settled - back_at,
                },
                workload,
            )
        finally:
            workload.stop(time.monotonic() + 15)
            pool.close()
            if mode == "asyncio":
                pool.shutdown()


def test_default_target_session_attrs_checks_no_role() -> None:
    """Without target_session_attrs the pool keeps a connection on a read-only server:
    reconnecting could land on the same server, so discarding would heal nothing."""
    with pair(synchronous=False) as (primary, _standby):
        pool = ConnectionPool(primary.dsn, min_size=1, max_size=1)
        try:
            conn = pool.getconn()
            backend = conn.get_backend_pid()
            pool.putconn(conn)
            primary.fence()
            try:
                conn = pool.getconn()
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                assert conn.get_parameter_status("default_transaction_read_only") == "on"
                pool.putconn(conn)
                conn = pool.getconn()
                assert conn.get_backend_pid() == backend  # kept
                pool.putconn(conn)
                assert pool.stats()["connections_stale_role"] == 0
            finally:
                primary.unfence()
        finally:
            pool.close()


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_read_write_pool_discards_a_fenced_connection_at_check_in(driver: str) -> None:
    options: Dict[str, Any] = {}
    if driver == "psycopg":
        import psycopg

        options["connection_class"] = psycopg.Connection
    with pair(synchronous=False) as (primary, standby):
        dsn = multi_host_dsn(primary, standby, target_session_attrs="read-write")
        pool = ConnectionPool(dsn, min_size=0, max_size=2, **options)
        try:
            first, second = pool.getconn(), pool.getconn()
            first_pid = first.info.backend_pid
            pool.putconn(second)  # idle: it will be revalidated before its next use
            primary.fence()
            with first.cursor() as cur:
                cur.execute("SELECT 1")  # brings the new parameter status
            first.rollback()
            pool.putconn(first)
            assert pool.stats()["connections_stale_role"] == 1
            # The idle sibling is pinged, found fenced too, and discarded; with no
            # writable server left the checkout times out.
            with pytest.raises(PoolTimeout):
                pool.getconn(timeout=2)
            assert pool.stats()["connections_stale_role"] == 2
            primary.unfence()
            conn = pool.getconn(timeout=10)
            assert conn.info.backend_pid != first_pid
            assert conn.info.parameter_status("default_transaction_read_only") == "off"
            pool.putconn(conn)
        finally:
            pool.close()
