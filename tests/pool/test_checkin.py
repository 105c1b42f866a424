"""What a return and a cut-short checkout tell: issue 15.

A connection its holder closed is a quiet discard, not a lost one; a caller
served at its deadline, with no time left to check the connection, is told
how long it waited.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, List

import pytest

from pgreservoir import ConnectionPool, PoolTimeout
from pgreservoir.testing import PostgresServer
from support import DEADLINE, Flavor, backend_pid, scalar, wait_until


def _last_query(server: PostgresServer, pid: int) -> str:
    admin = server.connect()
    try:
        return str(scalar(admin, "SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)))
    finally:
        admin.close()


def test_close_by_its_holder_is_a_quiet_discard(
    postgres_server: PostgresServer,
    postgres_dsn: str,
    flavor: Flavor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pgreservoir")
    pool = ConnectionPool(postgres_dsn, min_size=2, max_size=2, **flavor.pool_kwargs)
    try:
        pool.wait(DEADLINE)
        with pool.connection() as conn:
            sibling = pool.getconn()
            sibling_pid = backend_pid(sibling)
            sibling.autocommit = True  # no ROLLBACK after it: the marker stays its last query
            assert scalar(sibling, "SELECT 'sibling-marker'") == "sibling-marker"
            pool.putconn(sibling)  # idle while the other is closed
            conn.close()  # deliberate: the holder is done with this one
        wait_until(lambda: pool.stats()["idle"] == 2, "the closed one replaced")
        # The sibling is not suspected: handed out without a round trip.
        taken = [pool.getconn(), pool.getconn()]
        assert sibling_pid in [backend_pid(c) for c in taken]
        assert "sibling-marker" in _last_query(postgres_server, sibling_pid)
        for c in taken:
            pool.putconn(c)
        stats = pool.stats()
        assert stats["connections_lost"] == 0
        assert stats["returns_broken"] == 0
        assert stats["returns_closed"] == 1
        assert not [r for r in caplog.records if "returned broken" in r.getMessage()]
        assert not [r for r in caplog.records if "closed by its holder" in r.getMessage()]
    finally:
        pool.close(0)


def test_a_broken_return_still_counts_as_lost(
    postgres_server: PostgresServer, postgres_dsn: str, flavor: Flavor
) -> None:
    pool = ConnectionPool(postgres_dsn, min_size=1, max_size=1, **flavor.pool_kwargs)
    try:
        conn = pool.getconn(timeout=DEADLINE)
        assert postgres_server.terminate_backends(dbname=conn.info.dbname) == 1
        with pytest.raises(flavor.OperationalError):
            scalar(conn, "SELECT 1")
        pool.putconn(conn)
        stats = pool.stats()
        assert stats["returns_broken"] == 1
        assert stats["returns_closed"] == 0
        assert stats["connections_lost"] == 1
    finally:
        pool.close(0)


def test_timeout_at_the_deadline_reports_the_whole_wait(
    postgres_dsn: str, flavor: Flavor
) -> None:
    # The waiter is served at its very deadline (a connection returned within
    # its barging window waits for it idle), and that connection needs a round
    # trip (check_idle_after=0) it has no time left for: it times out, after
    # having waited all of its timeout.
    pool = ConnectionPool(
        postgres_dsn,
        min_size=1,
        max_size=1,
        barge_window=1000.0,
        check_idle_after=0,
        **flavor.pool_kwargs,
    )
    timeout = 0.3
    try:
        held = pool.getconn(timeout=DEADLINE)
        errors: List[BaseException] = []
        got: List[Any] = []

        def waiter() -> None:
            try:
                got.append(pool.getconn(timeout=timeout))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=waiter)
        thread.start()
        wait_until(lambda: pool.stats()["waiting"] == 1, "the waiter in line")
        pool.putconn(held)
        thread.join(DEADLINE)
        assert not thread.is_alive()
        assert not got, "served although its check had no time"
        assert len(errors) == 1
        assert isinstance(errors[0], PoolTimeout), errors
        match = re.search(r"after (\d+\.\d+) s", str(errors[0]))
        assert match, str(errors[0])
        # It waited its whole timeout (a lower bound, whatever the machine).
        assert float(match.group(1)) >= timeout - 0.02, str(errors[0])
        # The connection went back unchanged, for the next caller.
        with pool.connection(timeout=DEADLINE) as conn:
            assert scalar(conn, "SELECT 1") == 1
    finally:
        pool.close(0)


def test_a_broken_return_is_logged_by_the_pool_not_by_the_caller(
    postgres_server: PostgresServer,
    postgres_dsn: str,
    flavor: Flavor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pgreservoir")
    pool = ConnectionPool(postgres_dsn, min_size=1, max_size=1, **flavor.pool_kwargs)
    try:
        conn = pool.getconn(timeout=DEADLINE)
        assert postgres_server.terminate_backends(dbname=conn.info.dbname) == 1
        with pytest.raises(flavor.OperationalError):
            scalar(conn, "SELECT 1")
        pool.putconn(conn)

        def discards() -> List[logging.LogRecord]:
            return [r for r in caplog.records if "returned broken" in r.getMessage()]

        wait_until(lambda: bool(discards()), "the discard logged")
        assert [r.threadName for r in discards()] != [threading.current_thread().name]
        assert all(str(r.threadName).startswith("pgreservoir-") for r in discards())
    finally:
        pool.close(0)
