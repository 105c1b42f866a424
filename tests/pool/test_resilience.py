"""Self-healing behaviour against real faults: restarts, terminations, leaks, fork."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from typing import Any, Iterator, List

import pytest

from pgreservoir import ConnectionPool, PoolTimeout
from pgreservoir.testing import PostgresServer
from support import DEADLINE, Flavor, backend_pid, scalar, wait_until


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """A server of this module's own: these tests stop and restart it."""
    with PostgresServer() as srv:
        yield srv


@pytest.fixture
def running(server: PostgresServer) -> Iterator[PostgresServer]:
    """The module's server, guaranteed running and resumed before and after each test."""
    if server.paused:
        server.resume()
    if not server.running:
        server.start()
    yield server
    if server.paused:
        server.resume()
    if not server.running:
        server.start()


def test_reconnects_with_backoff_and_recovers(running: PostgresServer, flavor: Flavor) -> None:
    pool = ConnectionPool(
        running.dsn,
        **flavor.pool_kwargs,
        min_size=2,
        max_size=4,
        timeout=DEADLINE,
    )
    try:
        pool.wait(DEADLINE)
        running.stop(mode="immediate")
        # Twenty callers wait while the server is down: no storm of connects.
        failures: List[BaseException] = []
        threads = [
            threading.Thread(target=lambda: _expect_timeout(pool, 1.5, failures))
            for _ in range(20)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
        assert len(failures) == 20
        assert all("Connection refused" in str(f) or "connect" in str(f) for f in failures)
        errors = pool.stats()["connect_errors"]
        # One attempt at a time with exponential backoff: a handful in ~1.5 s,
        # not one per waiter per retry.
        assert 1 <= errors <= 12, errors
        running.start()
        back = time.monotonic()
        with pool.connection(timeout=DEADLINE) as conn:
            assert scalar(conn, "SELECT 1") == 1
        recovery = time.monotonic() - back
        print(f"recovered {recovery:.2f} s after the server came back")
        assert recovery < 10.0  # the target is < 2 s; generous bound for noisy VMs
        pool.wait(DEADLINE)
    finally:
        pool.close(0)


def _expect_timeout(pool: ConnectionPool, timeout: float, out: List[BaseException]) -> None:
    try:
        pool.putconn(pool.getconn(timeout=timeout))
    except PoolTimeout as exc:
        out.append(exc)


def test_timeout_carries_the_connect_error(running: PostgresServer, flavor: Flavor) -> None:
    running.stop(mode="fast")
    pool = ConnectionPool(running.dsn, **flavor.pool_kwargs, min_size=1, max_size=2)
    try:
        with pytest.raises(PoolTimeout, match="Connection refused") as info:
            pool.getconn(timeout=1.0)
        assert isinstance(info.value.__cause__, flavor.OperationalError)
        assert "connecting is failing" in str(info.value)
    finally:
        pool.close(0)


def test_fail_fast_while_the_server_is_unreachable(running: PostgresServer, flavor: Flavor) -> None:
    running.stop(mode="fast")
    pool = ConnectionPool(
        running.dsn,
        **flavor.pool_kwargs,
        min_size=1,
        max_size=2,
        fail_fast=True,
        timeout=60,
    )
    try:
        wait_until(lambda: pool.stats()["connect_errors"] >= 1, "a failed connect")
        start = time.monotonic()
        with pytest.raises(PoolTimeout, match="Connection refused") as info:
            pool.getconn()  # would wait 60 s without fail_fast
        assert time.monotonic() - start < 30
        assert isinstance(info.value.__cause__, flavor.OperationalError)
        running.start()
        wait_until(lambda: _serves(pool), "recovery")
    finally:
        pool.close(0)


def _serves(pool: ConnectionPool) -> bool:
    try:
        with pool.connection(timeout=0.5) as conn:
            return bool(scalar(conn, "SELECT 1") == 1)
    except PoolTimeout:
        return False


def test_reconnect_failed_called_once_with_the_pool(
    running: PostgresServer, flavor: Flavor
) -> None:
    running.stop(mode="fast")
    called: List[Any] = []
    pool = ConnectionPool(
        running.dsn,
        min_size=1,
        reconnect_timeout=0.3,
        reconnect_failed=called.append,
        **flavor.pool_kwargs,
    )
    try:
        wait_until(lambda: len(called) >= 1, "the give-up callback")
        errors = pool.stats()["connect_errors"]
        wait_until(lambda: pool.stats()["connect_errors"] > errors, "more attempts: still retrying")
        assert called == [pool]
    finally:
        pool.close(0)


def test_connect_hanging_on_a_paused_server_does_not_hold_callers(
    running: PostgresServer, flavor: Flavor
) -> None:
    pool = ConnectionPool(
        running.dsn,
        **flavor.pool_kwargs,
        min_size=0,
        max_size=2,
        connect_timeout=1,
    )
    try:
        running.pause()
        start = time.monotonic()
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=2.0)
        assert time.monotonic() - start < 2.0 + 5.0
        wait_until(lambda: pool.stats()["connect_errors"] >= 1, "connect_timeout to fire")
        # While connecting fails, a refusal carries the last connect error.
        with pytest.raises(PoolTimeout) as refused:
            pool.getconn(timeout=0)
        assert "timeout" in str(refused.value.__cause__).lower()
        running.resume()
        wait_until(lambda: _serves(pool), "recovery after resume")
    finally:
        pool.close(0)


def test_disconnect_error_discards_and_checks_siblings(
    running: PostgresServer, flavor: Flavor
) -> None:
    pool = ConnectionPool(
        running.dsn,
        **flavor.pool_kwargs,
        min_size=3,
        max_size=3,
        check_idle_after=None,
    )
    try:
        pool.wait(DEADLINE)
        conn = pool.getconn()
        pid = backend_pid(conn)
        pool.putconn(conn)
        running.terminate_backends()

        def use_dead_connection() -> None:
            with pool.connection() as conn:
                scalar(conn, "SELECT 1")

        # Everything idle is dead; the pool detects it before hand-out.
        use_dead_connection()
        with pool.connection() as conn:
            assert backend_pid(conn) != pid
        # A disconnect raised inside connection() discards that connection.
        taken: List[Any] = []

        def killed_mid_use() -> None:
            with pool.connection() as conn:
                taken.append(conn)
                running.terminate_backends()
                scalar(conn, "SELECT 1")

        with pytest.raises(flavor.OperationalError):
            killed_mid_use()
        assert taken[0].closed
        assert pool.stats()["connections_lost"] >= 3
        for _ in range(3):
            use_dead_connection()
    finally:
        pool.close(0)


def test_is_disconnect_classification(running: PostgresServer, flavor: Flavor) -> None:
    pool = ConnectionPool(running.dsn, **flavor.pool_kwargs, min_size=1)
    try:
        driver = pool._shell.driver
        with pool.connection() as conn:
            with pytest.raises(flavor.Error) as syntax:
                scalar(conn, "SELEC 1")
            assert not driver.is_disconnect(syntax.value, conn)
            conn.rollback()
            running.terminate_backends()
            with pytest.raises(flavor.OperationalError) as lost:
                scalar(conn, "SELECT 1")
            assert driver.is_disconnect(lost.value, conn)
        assert not driver.is_disconnect(ValueError("x"), None)
    finally:
        pool.close(0)


def test_leak_reported_with_stack_and_on_return(
    running: PostgresServer, caplog: pytest.LogCaptureFixture, flavor: Flavor
) -> None:
    caplog.set_level(logging.WARNING, logger="pgreservoir")
    pool = ConnectionPool(
        running.dsn,
        **flavor.pool_kwargs,
        min_size=1,
        leak_threshold=0.2,
        name="leaky",
    )
    try:
        conn = pool.getconn()  # this line should appear in the report
        wait_until(lambda: pool.stats()["connections_leaked"] == 1, "the leak report")
        reports = [r.getMessage() for r in caplog.records if "held for" in r.getMessage()]
        assert len(reports) == 1
        assert "'leaky'" in reports[0]
        assert "test_leak_reported_with_stack_and_on_return" in reports[0]
        pool.putconn(conn)
        assert any("came back after" in r.getMessage() for r in caplog.records)
        assert pool.stats()["connections_leaked"] == 1  # reported once
    finally:
        pool.close(0)


def test_garbage_collected_connection_frees_its_slot(
    running: PostgresServer, caplog: pytest.LogCaptureFixture, flavor: Flavor
) -> None:
    caplog.set_level(logging.WARNING, logger="pgreservoir")
    pool = ConnectionPool(
        running.dsn,
        **flavor.pool_kwargs,
        min_size=1,
        max_size=1,
        leak_threshold=60,
    )

    def take_and_forget() -> None:
        conn = pool.getconn()
        scalar(conn, "SELECT 1")

    try:
        take_and_forget()
        gc.collect()
        assert pool.stats()["in_use"] in (0, 1)
        wait_until(lambda: pool.stats()["in_use"] == 0, "the slot to be freed")
        with pool.connection(timeout=DEADLINE) as conn:  # the only slot works again
            assert scalar(conn, "SELECT 1") == 1
        assert pool.stats()["connections_leaked"] == 1
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert "garbage-collected without being returned" in messages
        assert "take_and_forget" in messages
    finally:
        pool.close(0)


def test_background_check_replaces_idle_connections_killed_server_side(
    running: PostgresServer, flavor: Flavor
) -> None:
    pool = ConnectionPool(
        running.dsn,
        **flavor.pool_kwargs,
        min_size=2,
        max_size=2,
        check_idle_interval=0.2,
    )
    try:
        pool.wait(DEADLINE)
        old = set(running.backend_pids())
        assert running.terminate_backends() == 2
        # Nobody checks a connection out: the pool notices and replaces them.
        wait_until(lambda: pool.stats()["connections_lost"] == 2, "the dead ones noticed")
        wait_until(
            lambda: len(set(running.backend_pids()) - old) == 2, "two fresh backends"
        )
        assert pool.stats()["requests"] == 0
    finally:
        pool.close(0)


def test_fork_child_opens_its_own_connections_parent_unaffected(
    running: PostgresServer, flavor: Flavor
) -> None:
    pool = ConnectionPool(running.dsn, **flavor.pool_kwargs, min_size=2, max_size=2)
    try:
        pool.wait(DEADLINE)
        held = pool.getconn()  # in use across the fork
        parent_pids = set(running.backend_pids())
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report the backend it got, then exit at once
            code = 1
            try:
                os.close(read_end)
                with pool.connection(timeout=DEADLINE) as conn:
                    child_pid = backend_pid(conn)
                os.write(write_end, f"{child_pid}\n".encode())
                pool.close(1)  # closes only the child's own connections
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end) as reader:
            child_backend = int(reader.readline() or "0")
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status)
        assert os.WEXITSTATUS(status) == 0
        assert child_backend not in parent_pids
        assert child_backend != 0
        # The parent's connections were not touched: same backends, still working.
        assert parent_pids <= set(running.backend_pids())
        assert scalar(held, "SELECT 1") == 1
        pool.putconn(held)
        with pool.connection() as conn:
            assert backend_pid(conn) in parent_pids
        assert pool.stats()["connections_lost"] == 0
    finally:
        pool.close(0)


def test_fork_via_multiprocessing(running: PostgresServer, flavor: Flavor) -> None:
    import multiprocessing

    pool = ConnectionPool(running.dsn, **flavor.pool_kwargs, min_size=1, max_size=2, name="forked")
    try:
        pool.wait(DEADLINE)
        _FORK_POOL[:] = [pool]  # inherited by the forked workers, not pickled
        context = multiprocessing.get_context("fork")
        with context.Pool(2) as workers:
            results = workers.map(_child_query, range(4))
        assert results == [0, 1, 2, 3]
        with pool.connection() as conn:
            assert scalar(conn, "SELECT 1") == 1
        assert pool.stats()["connections_lost"] == 0
    finally:
        pool.close(0)


_FORK_POOL: List[ConnectionPool] = []


def _child_query(value: int) -> int:
    with _FORK_POOL[0].connection(timeout=DEADLINE) as conn:
        return int(scalar(conn, "SELECT %s", (value,)))
