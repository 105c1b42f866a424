"""ConnectionPool against a real PostgreSQL server started by the test suite.

Every test that takes ``make_pool`` runs twice: on psycopg2 connections and on
psycopg 3 connections (``connection_class=psycopg.Connection``), with the
same assertions: the guarantees do not depend on the driver.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator, List, Optional

import psycopg
import psycopg2
import psycopg2.extensions
import pytest

from pgreservoir import ConnectionPool, PoolClosed, PoolError, PoolTimeout, TooManyRequests
from pgreservoir.testing import PostgresServer
from support import DEADLINE, Flavor, backend_pid, scalar, wait_until


@pytest.fixture
def make_pool(postgres_dsn: str, flavor: Flavor) -> Iterator[Callable[..., ConnectionPool]]:
    """Build pools on a fresh database; every pool is closed after the test."""
    pools: List[ConnectionPool] = []

    def make(**options: Any) -> ConnectionPool:
        options.setdefault("timeout", DEADLINE)
        pool = ConnectionPool(postgres_dsn, **{**flavor.pool_kwargs, **options})
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close(0)


def db_connections(server: PostgresServer, dsn: str) -> int:
    dbname: str = psycopg2.extensions.parse_dsn(dsn)["dbname"]
    return server.connection_count(dbname)


# ---------------------------------------------------------------------------
# Basics
# ---------------------------------------------------------------------------


def test_getconn_putconn_and_context_managers(make_pool: Callable[..., ConnectionPool]) -> None:
    with make_pool(min_size=1, max_size=2, name="basic") as pool:
        assert pool.name == "basic"
        assert (pool.min_size, pool.max_size, pool.closed) == (1, 2, False)
        conn = pool.getconn()
        assert scalar(conn, "SELECT 1") == 1
        pool.putconn(conn)
        with pool.connection() as conn:
            assert scalar(conn, "SELECT 2") == 2
        assert "basic" in repr(pool)
        assert "size=" in repr(pool)
    assert pool.closed


def test_connection_block_commits_on_success_and_rolls_back_on_error(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (x int)")
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (1)")
    def insert_then_fail() -> None:
        with pool.connection() as conn:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO t VALUES (2)")
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        insert_then_fail()
    with pool.connection() as conn:
        assert scalar(conn, "SELECT array_agg(x) FROM t") == [1]
    assert pool.stats()["in_use"] == 0


def test_stats_keys(make_pool: Callable[..., ConnectionPool]) -> None:
    pool = make_pool(min_size=2, max_size=3)
    pool.wait(DEADLINE)
    with pool.connection():
        pass
    stats = pool.stats()
    for key in [
        "min_size", "max_size", "size", "idle", "in_use", "waiting", "requests",
        "requests_waited", "timeouts", "rejected", "connections_opened",
        "connections_closed", "connect_errors", "connections_lost",
        "wait_ms_p50", "wait_ms_p99", "wait_ms_max",
    ]:
        assert key in stats, key
    assert stats["min_size"] == 2
    assert stats["size"] == 2
    assert stats["requests"] == 1
    assert stats["connections_opened"] == 2


# ---------------------------------------------------------------------------
# Waiting, fairness
# ---------------------------------------------------------------------------


def test_timeout_when_all_in_use(make_pool: Callable[..., ConnectionPool]) -> None:
    pool = make_pool(min_size=1, max_size=1, name="busy")
    held = pool.getconn()
    start = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.getconn(timeout=0.2)
    assert time.monotonic() - start >= 0.2
    assert "'busy'" in str(info.value)
    assert "size 1/1" in str(info.value)
    assert "waiting" in str(info.value)
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0)
    pool.putconn(held)
    assert pool.stats()["timeouts"] == 2


def test_fifo_hand_off_and_no_barging(make_pool: Callable[..., ConnectionPool]) -> None:
    pool = make_pool(min_size=1, max_size=1, barge_window=0)  # strict first come, first served
    first = pool.getconn()
    served: List[int] = []
    lock = threading.Lock()

    def waiter(index: int) -> None:
        conn = pool.getconn()
        with lock:
            served.append(index)
        pool.putconn(conn)

    threads = []
    for i in range(6):
        thread = threading.Thread(target=waiter, args=(i,))
        thread.start()
        threads.append(thread)
        wait_until(_waiting_is(pool, i + 1), f"waiter {i} in line")
    pool.putconn(first)
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0)  # it went to the oldest waiter, not back to us
    for thread in threads:
        thread.join(DEADLINE)
    assert served == list(range(6))


def test_max_waiting_turns_callers_away(make_pool: Callable[..., ConnectionPool]) -> None:
    pool = make_pool(min_size=1, max_size=1, max_waiting=1)
    held = pool.getconn()
    waiter = threading.Thread(target=lambda: pool.putconn(pool.getconn()))
    waiter.start()
    wait_until(lambda: pool.stats()["waiting"] == 1, "a waiter")
    with pytest.raises(TooManyRequests):
        pool.getconn()
    assert pool.stats()["rejected"] == 1
    pool.putconn(held)
    waiter.join(DEADLINE)


@pytest.mark.parametrize("window", [None, 0.0, 0.05], ids=["default-window", "fifo", "50ms"])
def test_32_threads_on_8_connections_all_progress_no_double_hand_out(
    make_pool: Callable[..., ConnectionPool],
    postgres_server: PostgresServer,
    postgres_dsn: str,
    window: Optional[float],
) -> None:
    options = {} if window is None else {"barge_window": window}
    pool = make_pool(min_size=8, max_size=8, **options)
    pool.wait(DEADLINE)
    owners: dict[int, int] = {}
    guard = threading.Lock()
    counts = [0] * 32
    errors: List[BaseException] = []
    stop = threading.Event()
    # Everyone starts together: otherwise the first threads run alone while the
    # rest are still being created, and the counts measure start-up, not fairness.
    start = threading.Barrier(32)

    def worker(index: int) -> None:
        try:
            start.wait(DEADLINE)
            while not stop.is_set():
                with pool.connection() as conn:
                    with guard:
                        assert id(conn) not in owners, "connection handed to two threads"
                        owners[id(conn)] = index
                    scalar(conn, "SELECT 1")
                    with guard:
                        del owners[id(conn)]
                counts[index] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    # Run until every thread has done some work (with a deadline), then a bit more.
    wait_until(lambda: min(counts) >= 20, "every thread to make progress", timeout=60)
    stop.set()
    for thread in threads:
        thread.join(DEADLINE)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert errors == []
    # Fair: in strict order the least-served thread did at least a fifth of
    # the best-served one. A window lets threads reuse connections for spells
    # that even out only over longer runs than this one (which stops once
    # the slowest thread has done 20): a tenth with the default window. A
    # long window promises only that nobody is passed once it has waited the
    # window, so that every thread progresses (above).
    if window == 0.0:
        assert min(counts) * 5 >= max(counts), counts
    elif window is None:
        assert min(counts) * 10 >= max(counts), counts
    stats = pool.stats()
    assert stats["in_use"] == 0
    assert stats["size"] == 8
    assert stats["requests_waited"] > 0
    assert db_connections(postgres_server, postgres_dsn) == 8


# ---------------------------------------------------------------------------
# Sizing
# ---------------------------------------------------------------------------


def test_min_size_refilled_after_losses(
    make_pool: Callable[..., ConnectionPool], postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    pool = make_pool(min_size=3, max_size=5)
    pool.wait(DEADLINE)
    assert db_connections(postgres_server, postgres_dsn) == 3
    dbname = psycopg2.extensions.parse_dsn(postgres_dsn)["dbname"]
    old = set(postgres_server.backend_pids(dbname))
    assert postgres_server.terminate_backends(dbname) == 3
    wait_until(lambda: not set(postgres_server.backend_pids(dbname)) & old, "backends gone")
    # Each dead connection is noticed at checkout and replaced.
    held = [pool.getconn() for _ in range(3)]
    assert all(scalar(conn, "SELECT 1") == 1 for conn in held)
    for conn in held:
        pool.putconn(conn)
    assert pool.stats()["connections_lost"] == 3
    wait_until(lambda: db_connections(postgres_server, postgres_dsn) == 3, "three open again")
    assert pool.stats()["size"] == 3


def test_grows_while_waiting_and_shrinks_after_max_idle(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool(min_size=1, max_size=4, max_idle=0.3)
    pool.wait(DEADLINE)
    held = [pool.getconn() for _ in range(4)]
    assert pool.stats()["size"] == 4
    for conn in held:
        pool.putconn(conn)
    wait_until(lambda: pool.stats()["size"] == 1, "shrink back to min_size")
    assert pool.stats()["connections_closed"] == 3


def test_slow_connect_does_not_block_others(
    postgres_server: PostgresServer, postgres_dsn: str, flavor: Flavor
) -> None:
    # A waiter triggers a connect that hangs (postmaster paused); meanwhile
    # another thread returns a connection, which the waiter gets at once.
    pool = ConnectionPool(
        postgres_dsn, min_size=1, max_size=2, connect_timeout=30, **flavor.pool_kwargs
    )
    try:
        pool.wait(DEADLINE)
        held = pool.getconn()
        postgres_server.pause()
        try:
            result: List[Any] = []
            waiter = threading.Thread(target=lambda: result.append(pool.getconn(DEADLINE)))
            waiter.start()
            wait_until(lambda: pool.stats()["opening"] == 1, "a hanging connect")
            start = time.monotonic()
            pool.putconn(held)
            waiter.join(DEADLINE)
            assert result == [held]
            assert time.monotonic() - start < DEADLINE
            pool.putconn(result[0])
            # Getting and returning keep working while the connect hangs.
            for _ in range(3):
                with pool.connection() as conn:
                    assert scalar(conn, "SELECT 1") == 1
            assert pool.stats()["opening"] == 1
        finally:
            postgres_server.resume()
        wait_until(lambda: pool.stats()["opening"] == 0, "the connect to finish")
    finally:
        pool.close(0)


# ---------------------------------------------------------------------------
# Lifecycle, return and reset
# ---------------------------------------------------------------------------


def test_max_lifetime_replaces_connections(make_pool: Callable[..., ConnectionPool]) -> None:
    pool = make_pool(min_size=1, max_size=1, max_lifetime=0.3)
    with pool.connection() as conn:
        first_pid = backend_pid(conn)
    # Checked at checkout (and by housekeeping): a new backend serves us.
    wait_until(lambda: _pid_changed(pool, first_pid), "the connection to expire")
    # Checked at return: a connection held past its lifetime is closed on return.
    conn = pool.getconn()
    taken = time.monotonic()
    wait_until(lambda: time.monotonic() - taken > 0.35, "the lifetime to pass while held")
    closed_before = pool.stats()["connections_closed"]
    pool.putconn(conn)
    assert conn.closed
    assert pool.stats()["connections_closed"] == closed_before + 1


def _pid_changed(pool: ConnectionPool, pid: int) -> bool:
    with pool.connection() as conn:
        return backend_pid(conn) != pid


def test_returned_in_transaction_or_error_is_rolled_back(
    make_pool: Callable[..., ConnectionPool], flavor: Flavor
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (x int)")
    conn = pool.getconn()
    pid = backend_pid(conn)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (1)")
    pool.putconn(conn)  # uncommitted
    conn = pool.getconn()
    assert backend_pid(conn) == pid  # kept, not replaced
    assert flavor.idle(conn)
    assert scalar(conn, "SELECT count(*) FROM t") == 0
    with pytest.raises(flavor.errors.DivisionByZero), conn.cursor() as cur:
        cur.execute("SELECT 1/0")
    pool.putconn(conn)  # in error
    with pool.connection() as conn:
        assert backend_pid(conn) == pid
        assert scalar(conn, "SELECT 1") == 1


def test_statement_timeout_cancels_a_query_and_keeps_the_connection(
    make_pool: Callable[..., ConnectionPool], flavor: Flavor
) -> None:
    # What the README recommends for bounding queries: the server cancels,
    # the connection is rolled back on return and served again, not replaced.
    pool = make_pool(min_size=1, max_size=1, options="-c statement_timeout=200ms")
    conn = pool.getconn()
    pid = backend_pid(conn)
    with pytest.raises(flavor.errors.QueryCanceled), conn.cursor() as cur:
        cur.execute("SELECT pg_sleep(30)")
    pool.putconn(conn)  # in error: rolled back and kept
    with pool.connection() as conn:
        assert backend_pid(conn) == pid
        assert scalar(conn, "SHOW statement_timeout") == "200ms"
    stats = pool.stats()
    assert (stats["connections_opened"], stats["connections_closed"]) == (1, 0)


def test_explicit_begin_in_autocommit_is_rolled_back(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn()
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("CREATE TABLE t (x int)")
    pool.putconn(conn)
    with pool.connection() as conn:
        assert conn.autocommit is False
        assert scalar(conn, "SELECT to_regclass('t') IS NULL") is True


def test_broken_and_closed_connections_are_replaced(
    make_pool: Callable[..., ConnectionPool],
    postgres_server: PostgresServer,
    postgres_dsn: str,
    flavor: Flavor,
) -> None:
    pool = make_pool(min_size=2, max_size=2)
    pool.wait(DEADLINE)
    conn = pool.getconn()
    conn.close()
    pool.putconn(conn)
    conn = pool.getconn()
    pid = backend_pid(conn)
    postgres_server.terminate_backends(psycopg2.extensions.parse_dsn(postgres_dsn)["dbname"])
    with pytest.raises(flavor.OperationalError):
        scalar(conn, "SELECT 1")
    pool.putconn(conn)  # broken: discarded
    with pool.connection() as new:
        assert backend_pid(new) != pid
        assert scalar(new, "SELECT 1") == 1
    pool.wait(DEADLINE)
    assert pool.stats()["connections_lost"] >= 1


def test_failed_rollback_discards_and_frees_the_slot(
    make_pool: Callable[..., ConnectionPool], postgres_server: PostgresServer
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn()
    scalar(conn, "SELECT 1")  # opens a transaction
    pid = backend_pid(conn)
    with postgres_server.connect() as admin, admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_until(lambda: pid not in postgres_server.backend_pids(), "the backend to exit")
    # The client has not noticed: the connection still says "in transaction".
    assert not conn.closed
    pool.putconn(conn)  # rollback fails -> discarded
    assert conn.closed
    with pool.connection(timeout=DEADLINE) as new:  # the slot was freed
        assert scalar(new, "SELECT 1") == 1


def test_session_settings_restored_on_return(
    make_pool: Callable[..., ConnectionPool], flavor: Flavor
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn()
    baseline = flavor.settings(conn)
    flavor.change_settings(conn)
    assert flavor.settings(conn) != baseline
    pool.putconn(conn)
    conn = pool.getconn()
    assert flavor.settings(conn) == baseline
    assert scalar(conn, "SHOW transaction_isolation") == "read committed"
    assert scalar(conn, "SHOW transaction_read_only") == "off"
    pool.putconn(conn)


class CountingConnection(psycopg2.extensions.connection):
    """Counts rollback() calls, to prove a clean return costs no round trip."""

    rollbacks = 0

    def rollback(self) -> None:
        type(self).rollbacks += 1
        super().rollback()


class CountingConnection3(psycopg.Connection[Any]):
    """The same for psycopg 3 (a connection_class)."""

    rollbacks = 0

    def rollback(self) -> None:
        type(self).rollbacks += 1
        super().rollback()


def test_clean_return_costs_no_round_trip(
    make_pool: Callable[..., ConnectionPool], flavor: Flavor
) -> None:
    counting: Any
    if flavor.name == "psycopg2":
        counting = CountingConnection
        pool = make_pool(min_size=1, max_size=1, connection_factory=counting)
    else:
        counting = CountingConnection3
        pool = make_pool(min_size=1, max_size=1, connection_class=counting)
    counting.rollbacks = 0
    for _ in range(5):
        conn = pool.getconn()
        assert isinstance(conn, counting)
        pool.putconn(conn)
    assert counting.rollbacks == 0
    conn = pool.getconn()
    scalar(conn, "SELECT 1")
    pool.putconn(conn)
    assert counting.rollbacks == 1


def test_configure_once_per_connection_and_reset_on_every_return(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    configured: List[int] = []
    resets: List[int] = []

    def configure(conn: Any) -> None:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET application_name = 'configured'")
        configured.append(backend_pid(conn))

    def reset(conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("RESET search_path")
        resets.append(backend_pid(conn))

    pool = make_pool(min_size=1, max_size=1, configure=configure, reset=reset)
    for _ in range(3):
        with pool.connection() as conn:
            assert conn.autocommit is True  # configure's settings are the baseline
            assert scalar(conn, "SHOW application_name") == "configured"
            with conn.cursor() as cur:
                cur.execute("SET search_path = nowhere")
    assert len(configured) == 1
    assert resets == configured * 3


def test_failing_configure_or_reset_discards(make_pool: Callable[..., ConnectionPool]) -> None:
    def bad_configure(conn: Any) -> None:
        raise RuntimeError("configure failed")

    pool = make_pool(min_size=0, max_size=1, configure=bad_configure)
    with pytest.raises(PoolTimeout) as info:
        pool.getconn(timeout=0.5)
    assert "configure failed" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)

    def leaves_transaction(conn: Any) -> None:
        scalar(conn, "SELECT 1")

    pool = make_pool(min_size=1, max_size=1, reset=leaves_transaction)
    conn = pool.getconn()
    pool.putconn(conn)
    assert conn.closed
    with pool.connection() as conn:
        assert scalar(conn, "SELECT 1") == 1


def test_foreign_and_double_return_raise_and_change_nothing(
    make_pool: Callable[..., ConnectionPool], postgres_dsn: str, flavor: Flavor
) -> None:
    pool = make_pool(min_size=1, max_size=2)
    other = make_pool(min_size=1, max_size=1)
    conn = pool.getconn()
    before = pool.stats()
    stray = flavor.connect(postgres_dsn)
    try:
        with pytest.raises(PoolError, match="not handed out by this pool"):
            pool.putconn(stray)
        foreign = other.getconn()
        with pytest.raises(PoolError):
            pool.putconn(foreign)
        other.putconn(foreign)
    finally:
        stray.close()
    assert pool.stats() == before
    pool.putconn(conn)
    before = pool.stats()
    with pytest.raises(PoolError, match="already returned"):
        pool.putconn(conn)
    assert pool.stats() == before


# ---------------------------------------------------------------------------
# Dead connections
# ---------------------------------------------------------------------------


def test_terminated_idle_backend_is_never_handed_out(
    make_pool: Callable[..., ConnectionPool], postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    pool = make_pool(min_size=2, max_size=2, check_idle_after=None)
    pool.wait(DEADLINE)
    dbname = psycopg2.extensions.parse_dsn(postgres_dsn)["dbname"]
    old = set(postgres_server.backend_pids(dbname))
    assert postgres_server.terminate_backends(dbname) == 2
    wait_until(lambda: not set(postgres_server.backend_pids(dbname)) & old, "backends gone")
    for _ in range(4):  # no error, ever, and only fresh backends
        with pool.connection() as conn:
            assert scalar(conn, "SELECT 1") == 1
            assert backend_pid(conn) not in old
    assert pool.stats()["connections_lost"] == 2


def test_server_restart_is_invisible_to_callers(flavor: Flavor) -> None:
    with PostgresServer() as server:
        pool = ConnectionPool(
            server.dsn, min_size=3, max_size=3, timeout=DEADLINE, **flavor.pool_kwargs
        )
        try:
            pool.wait(DEADLINE)
            server.restart(mode="fast")
            for _ in range(6):
                with pool.connection() as conn:
                    assert scalar(conn, "SELECT 1") == 1
            server.stop(mode="immediate")
            server.start()
            for _ in range(6):
                with pool.connection() as conn:
                    assert scalar(conn, "SELECT 1") == 1
            assert pool.stats()["connections_lost"] >= 3
        finally:
            pool.close(0)


# ---------------------------------------------------------------------------
# Close
# ---------------------------------------------------------------------------


def pool_threads(pool: ConnectionPool) -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"pgreservoir-{pool.name}"]


def test_close_lifecycle(
    make_pool: Callable[..., ConnectionPool], postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    pool = make_pool(min_size=2, max_size=2)
    pool.wait(DEADLINE)
    assert pool_threads(pool)
    held = pool.getconn()
    pool.getconn()  # two in use, none idle
    outcome: List[Any] = []
    waiter = threading.Thread(target=lambda: _capture(outcome, pool.getconn))
    waiter.start()
    wait_until(lambda: pool.stats()["waiting"] == 1, "a waiter")
    closer = threading.Thread(target=pool.close, kwargs={"timeout": 0.5})
    closer.start()
    waiter.join(DEADLINE)
    assert isinstance(outcome[0], PoolClosed)  # woken at once
    with pytest.raises(PoolClosed):
        pool.getconn()
    pool.putconn(held)  # returned during close: closed on return
    assert held.closed
    closer.join(DEADLINE)  # the other one is force-closed after 0.5 s
    assert not closer.is_alive()
    wait_until(lambda: db_connections(postgres_server, postgres_dsn) == 0, "all closed server-side")
    assert not pool_threads(pool)
    pool.close()  # idempotent
    assert pool.stats()["size"] == 0


def _query_running(server: PostgresServer, pid: int) -> bool:
    with server.connect() as admin, admin.cursor() as cur:
        cur.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = cur.fetchone()
    admin.close()
    return row is not None and row[0] == "active"


def test_close_interrupts_a_query_in_progress_when_forced(
    make_pool: Callable[..., ConnectionPool], postgres_server: PostgresServer, flavor: Flavor
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn()
    outcome: List[Any] = []
    runner = threading.Thread(target=lambda: _capture(outcome, scalar, conn, "SELECT pg_sleep(60)"))
    runner.start()
    pid = backend_pid(conn)
    wait_until(lambda: _query_running(postgres_server, pid), "the query to run on the server")
    pool.close(timeout=0.2)
    runner.join(DEADLINE)
    assert not runner.is_alive()
    assert isinstance(outcome[0], flavor.Error)
    assert conn.closed


def _capture(out: List[Any], fn: Callable[..., Any], *args: Any) -> None:
    try:
        out.append(fn(*args))
    except BaseException as exc:
        out.append(exc)


def test_interpreter_exit_does_not_hang_on_an_open_pool(postgres_dsn: str) -> None:
    code = (
        "import sys; from pgreservoir import ConnectionPool\n"
        "pool = ConnectionPool(sys.argv[1], min_size=2, max_size=4)\n"
        "pool.wait(10)\n"
        "held = pool.getconn()\n"
        "print('ok')\n"
    )
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", code, postgres_dsn],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"min_size": -1}, ValueError, "min_size must be >= 0"),
        ({"max_size": 0}, ValueError, "max_size must be >= 1"),
        ({"min_size": 3, "max_size": 2}, ValueError, "min_size .3. must not exceed max_size .2."),
        ({"timeout": -0.5}, ValueError, "timeout must be >= 0"),
        ({"max_idle": -1}, ValueError, "max_idle"),
        ({"bogus_option": 1}, ValueError, "invalid connection option"),
    ],
)
def test_bad_input_rejected_at_construction(
    postgres_dsn: str, options: dict[str, Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        ConnectionPool(postgres_dsn, **options)


def test_bad_call_arguments_leave_the_pool_untouched(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool(min_size=1, max_size=2)
    pool.wait(DEADLINE)
    before = pool.stats()
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        pool.getconn(timeout=-1)
    with pytest.raises(ValueError, match="must not exceed"):
        pool.resize(3, 2)
    with pytest.raises(ValueError, match="timeout"):
        pool.close(timeout=-1)
    assert pool.stats() == before
    assert not pool.closed


def test_password_never_in_repr_or_errors(postgres_server: PostgresServer) -> None:
    with pytest.raises(ValueError, match="invalid connection option") as info:
        ConnectionPool(postgres_server.dsn, password="s3cret-pw", bogus=1)
    assert "s3cret-pw" not in str(info.value)
    pool = ConnectionPool(postgres_server.dsn, password="s3cret-pw", min_size=0)
    try:
        assert "s3cret-pw" not in repr(pool)
        assert "password=***" in repr(pool)
    finally:
        pool.close()


def _waiting_is(target: Any, count: int) -> Callable[[], bool]:
    return lambda: bool(target.stats()["waiting"] == count)


def test_check_runs_before_every_hand_out_and_a_failure_replaces_the_connection(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    checked: List[int] = []
    refuse: List[int] = []

    def check(conn: Any) -> None:
        pid = backend_pid(conn)
        checked.append(pid)
        if pid in refuse:
            raise RuntimeError("not this one")

    pool = make_pool(min_size=1, max_size=1, check=check)
    with pool.connection() as conn:
        first = backend_pid(conn)
    with pool.connection() as conn:
        assert backend_pid(conn) == first
    assert checked == [first, first]
    refuse.append(first)
    with pool.connection() as conn:  # the check fails: discarded, another one comes
        second = backend_pid(conn)
    assert second != first
    assert checked[-2:] == [first, second]
    stats = pool.stats()
    assert stats["connections_lost"] == 1
    assert stats["size"] == 1
