"""Pools through a real PgBouncer (issue 18, section 2 items 4 and 5, section 3).

Transaction mode: psycopg 3's server-side prepared statements and psycopg2's
session SETs, with and without ``transaction_pooling=True`` (the hazards
reproduced, then gone, and measured); ``getconn(timeout=T)`` through a
``PAUSE`` returns within T even when its checkout check is due. Session
mode: the pool under RECONNECT, PAUSE/RESUME, KILL and a PgBouncer restart.
``pgreservoir bench --dsn`` through PgBouncer.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import psycopg
import psycopg2
import psycopg2.extensions
import pytest

from pgreservoir import AsyncConnectionPool, ConnectionPool, PoolTimeout
from pgreservoir.testing import PgBouncer, PostgresServer
from support import scalar, wait_until

DB = "bouncer"
MARGIN = 1.5  # scheduling noise on a shared 2-core machine, for the timeout bound
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with PostgresServer(settings={"log_statement": "all"}, max_connections=60) as server:
        server.create_database(DB)
        yield server


@pytest.fixture
def tx_bouncer(server: PostgresServer) -> Iterator[PgBouncer]:
    with PgBouncer(server, pool_mode="transaction", default_pool_size=2) as bouncer:
        yield bouncer


@pytest.fixture
def session_bouncer(server: PostgresServer) -> Iterator[PgBouncer]:
    with PgBouncer(server, pool_mode="session", default_pool_size=4) as bouncer:
        yield bouncer


def dsn_of(bouncer: PgBouncer, **params: Any) -> str:
    return bouncer.make_dsn(bouncer.server.make_dsn(DB), connect_timeout=3, **params)


# ---------------------------------------------------------------------------
# Transaction mode: psycopg 3 prepared statements
# ---------------------------------------------------------------------------


def run_prepared_case(pool: ConnectionPool, bouncer: PgBouncer) -> None:
    """A statement run often enough to be prepared on one server connection, then
    run again while that server connection is busy with another client's
    transaction (so PgBouncer gives this client the other one)."""
    conn = pool.getconn()
    try:
        conn.autocommit = True
        for n in range(8):  # psycopg prepares from the 5th execution (prepare_threshold)
            assert conn.execute("SELECT %s::int + 1", (n,)).fetchone() == (n + 1,)
        other = psycopg.connect(dsn_of(bouncer))  # takes the server connection just used
        try:
            other.execute("SELECT 1")  # its transaction stays open: the server conn is held
            assert conn.execute("SELECT %s::int + 1", (41,)).fetchone() == (42,)
        finally:
            other.rollback()
            other.close()
    finally:
        pool.putconn(conn)


def test_psycopg3_prepared_statements_need_transaction_pooling(tx_bouncer: PgBouncer) -> None:
    assert tx_bouncer.version_info < (1, 21)  # Debian's 1.18: no max_prepared_statements
    plain = ConnectionPool(dsn_of(tx_bouncer), max_size=1, connection_class=psycopg.Connection)
    try:
        with pytest.raises(psycopg.errors.InvalidSqlStatementName, match="does not exist"):
            run_prepared_case(plain, tx_bouncer)
    finally:
        plain.close()
    pooled = ConnectionPool(
        dsn_of(tx_bouncer),
        max_size=1,
        connection_class=psycopg.Connection,
        transaction_pooling=True,
    )
    try:
        run_prepared_case(pooled, tx_bouncer)
        conn = pooled.getconn()
        assert conn.prepare_threshold is None
        pooled.putconn(conn)
    finally:
        pooled.close()
    chosen = ConnectionPool(
        dsn_of(tx_bouncer),
        max_size=1,
        connection_class=psycopg.Connection,
        transaction_pooling=True,
        prepare_threshold=3,
    )
    try:
        conn = chosen.getconn()
        assert conn.prepare_threshold == 3  # the user's choice stands
        chosen.putconn(conn)
    finally:
        chosen.close()


def test_pool_pings_are_never_prepared(tx_bouncer: PgBouncer) -> None:
    """The pool's own checkout ping works through transaction pooling without the
    option: it is never prepared server-side (psycopg 3 would after 5 runs)."""
    pool = ConnectionPool(
        dsn_of(tx_bouncer),
        min_size=2,
        max_size=2,
        connection_class=psycopg.Connection,
        check_idle_after=0.0,  # every hand-out pings
    )
    try:
        for _ in range(20):
            a, b = pool.getconn(), pool.getconn()
            pool.putconn(a)
            pool.putconn(b)
        assert pool.stats()["connections_lost"] == 0
        assert pool.stats()["connections_opened"] == 2
    finally:
        pool.close()


# ---------------------------------------------------------------------------
# Transaction mode: psycopg2's session SET leak, measured
# ---------------------------------------------------------------------------


def leak_run(
    server: PostgresServer, bouncer: PgBouncer, transaction_pooling: bool
) -> Dict[str, Any]:
    """Setter threads change isolation_level on autocommit pooled connections while
    observers count how many of their own plain transactions run REPEATABLE READ."""
    pool = ConnectionPool(
        dsn_of(bouncer), min_size=0, max_size=4, transaction_pooling=transaction_pooling
    )
    log_from = server._log_size()
    stop = threading.Event()
    observed: List[str] = []
    errors: List[BaseException] = []

    def setter() -> None:
        try:
            while not stop.is_set():
                conn = pool.getconn(timeout=10)
                try:
                    conn.autocommit = True
                    conn.isolation_level = psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
                    assert (
                        conn.isolation_level == psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ
                    )
                finally:
                    pool.putconn(conn)
        except BaseException as exc:
            errors.append(exc)

    def observer() -> None:
        conn = psycopg2.connect(dsn_of(bouncer))
        try:
            while not stop.is_set():
                observed.append(str(scalar(conn, "SHOW transaction_isolation")))
                conn.rollback()
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=setter) for _ in range(4)]
    threads += [threading.Thread(target=observer) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(observed) >= 1500 or bool(errors), "1500 observations", 60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        pool.close()
    assert not errors, errors
    log = server._log_since(log_from)
    leaked = sum(1 for value in observed if value == "repeatable read")
    return {
        "observations": len(observed),
        "repeatable_read": leaked,
        "share": leaked / len(observed),
        "session_sets": log.count("SET default_transaction_isolation TO 'REPEATABLE READ'"),
    }


def test_psycopg2_session_set_leak_is_prevented(
    server: PostgresServer, tx_bouncer: PgBouncer
) -> None:
    before = leak_run(server, tx_bouncer, transaction_pooling=False)
    # The hazard is real: the session SETs were sent and other clients ran under them.
    assert before["session_sets"] > 0
    assert before["repeatable_read"] > 0
    tx_bouncer.restart()  # fresh server connections, no leftover from the first run
    after = leak_run(server, tx_bouncer, transaction_pooling=True)
    assert after["session_sets"] == 0
    assert after["repeatable_read"] == 0
    print(
        f"[psycopg2 session SET leak] without transaction_pooling: "
        f"{before['share']:.1%} of {before['observations']} other transactions ran "
        f"REPEATABLE READ ({before['session_sets']} session SETs sent); with it: "
        f"{after['share']:.1%} of {after['observations']} ({after['session_sets']} SETs)"
    )


# ---------------------------------------------------------------------------
# getconn(timeout=T) through a PAUSE
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_getconn_timeout_holds_through_pause(tx_bouncer: PgBouncer, driver: str) -> None:
    options: Dict[str, Any] = (
        {"connection_class": psycopg.Connection} if driver == "psycopg" else {}
    )
    pool = ConnectionPool(
        dsn_of(tx_bouncer),
        min_size=2,
        max_size=2,
        check_idle_after=0.0,  # a check is due
        transaction_pooling=True,
        **options,
    )
    try:
        pool.wait(10)
        tx_bouncer.pause()
        try:
            for timeout in (0.5, 1.0):
                started = time.monotonic()
                with pytest.raises(PoolTimeout):
                    pool.getconn(timeout=timeout)
                elapsed = time.monotonic() - started
                assert elapsed < timeout + MARGIN, elapsed
                print(f"[PAUSE, {driver}] getconn(timeout={timeout}) gave up after {elapsed:.2f} s")
        finally:
            tx_bouncer.resume()
        conn = pool.getconn(timeout=10)
        pool.putconn(conn)
        stats = pool.stats()
        assert stats["in_use"] == 0
        assert stats["size"] <= 2
    finally:
        pool.close()


def test_async_getconn_timeout_holds_through_pause(tx_bouncer: PgBouncer) -> None:
    async def main() -> None:
        pool = AsyncConnectionPool(
            dsn_of(tx_bouncer),
            min_size=2,
            max_size=2,
            check_idle_after=0.0,
            transaction_pooling=True,
        )
        try:
            await pool.wait(10)
            tx_bouncer.pause()
            try:
                started = time.monotonic()
                with pytest.raises(PoolTimeout):
                    await pool.getconn(timeout=1.0)
                elapsed = time.monotonic() - started
                assert elapsed < 1.0 + MARGIN, elapsed
                print(f"[PAUSE, asyncio] getconn(timeout=1.0) gave up after {elapsed:.2f} s")
            finally:
                tx_bouncer.resume()
            conn = await pool.getconn(timeout=10)
            await pool.putconn(conn)
            assert pool.stats()["in_use"] == 0
        finally:
            await pool.close()

    asyncio.run(main())


# ---------------------------------------------------------------------------
# Session mode: RECONNECT, PAUSE/RESUME, KILL, restart
# ---------------------------------------------------------------------------


def test_session_mode_faults(session_bouncer: PgBouncer) -> None:
    pool = ConnectionPool(dsn_of(session_bouncer), min_size=2, max_size=4, timeout=10)
    try:

        def write_ok() -> int:
            with pool.connection() as conn, conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                row = cur.fetchone()
                assert row is not None
                return int(row[0])

        before = write_ok()
        # RECONNECT: server connections are renewed once released; the pool's
        # clients (PgBouncer's sessions) stay.
        session_bouncer.reconnect()
        assert write_ok() >= 0
        # PAUSE/RESUME: in session mode PAUSE waits for clients; sent without waiting,
        # the pool's callers wait and then go on.
        session_bouncer.pause(DB, wait=False)
        resumer = threading.Timer(0.5, session_bouncer.resume, args=(DB,))
        resumer.start()
        try:
            assert write_ok() >= 0
        finally:
            resumer.join()
        # KILL: every connection dropped; the pool discards them and reconnects
        # once the database is resumed.
        session_bouncer.kill(DB)
        session_bouncer.resume(DB)
        healed = []
        for _ in range(10):
            try:
                healed.append(write_ok())
                break
            except (psycopg2.Error, PoolTimeout):
                continue
        assert healed
        # A PgBouncer restart: the same.
        session_bouncer.restart()
        healed = []
        for _ in range(10):
            try:
                healed.append(write_ok())
                break
            except (psycopg2.Error, PoolTimeout):
                continue
        assert healed
        stats = pool.stats()
        assert stats["connections_lost"] >= 1
        assert stats["in_use"] == 0
        assert before >= 0
    finally:
        pool.close()


# ---------------------------------------------------------------------------
# pgreservoir bench --dsn through PgBouncer
# ---------------------------------------------------------------------------


def _bench(dsn: str, *options: str) -> subprocess.CompletedProcess[str]:
    """``pgreservoir bench --dsn`` with a short run of ``options``, in a process of its own."""
    paths = [SRC, os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    return subprocess.run(
        [
            sys.executable, "-m", "pgreservoir", "bench", "--dsn", dsn, "--quick",
            "--workloads", "select,async-select",
            "--threads", "8", "--tasks", "16", "--size", "4", "--no-progress",
            *options,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )


def test_bench_through_pgbouncer(server: PostgresServer) -> None:
    # Session mode holds a server connection per client for its lifetime: the
    # bench's pools, its dedicated reference and its sampler all need one, so
    # PgBouncer's default_pool_size must cover them (else queries wait in
    # PgBouncer, up to its query_wait_timeout: the sizing rule of the guide).
    with PgBouncer(server, pool_mode="session", default_pool_size=30) as bouncer:
        done = _bench(dsn_of(bouncer), "--contenders", "pgreservoir,psycopg2,pgreservoir-async")
    assert done.returncode == 0, done.stderr
    assert "(your server)" in done.stdout
    for row in ("select 8/4", "async-select 16/4"):
        assert row in done.stdout
    assert "failed" not in done.stdout, done.stdout


# ---------------------------------------------------------------------------
# configure() / reset() leaving session state: warned about
# ---------------------------------------------------------------------------


def leaky_configure(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SET search_path TO public")
        cur.execute("LISTEN pgreservoir_test")
    conn.commit()


def clean_configure(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SET LOCAL search_path TO public")  # gone at commit
    conn.commit()


def leaky_reset(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(42)")
    conn.commit()


def warnings_of(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_leftover_session_state_is_warned_about(
    server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="pgreservoir")
    # One server connection behind PgBouncer: the pool's question reaches the very
    # server connection the callbacks used.
    with PgBouncer(server, pool_mode="transaction", default_pool_size=1) as bouncer:
        pool = ConnectionPool(
            dsn_of(bouncer),
            min_size=0,
            max_size=1,
            transaction_pooling=True,
            configure=leaky_configure,
            reset=leaky_reset,
            name="leaky",
        )
        try:
            conn = pool.getconn()
            pool.putconn(conn)
            conn = pool.getconn()
            pool.putconn(conn)
        finally:
            pool.close()
        found = warnings_of(caplog)
        assert any("configure() left session state behind (SET search_path)" in m for m in found)
        assert any("(LISTEN pgreservoir_test)" in m for m in found)
        assert any("reset() left session state behind (1 advisory lock(s))" in m for m in found)
        assert all("'leaky'" in m for m in found)
        assert len([m for m in found if "advisory" in m]) == 1  # reported once per pool

        caplog.clear()
        bouncer.restart()  # fresh server connection: nothing left from above
        pool = ConnectionPool(
            dsn_of(bouncer),
            min_size=0,
            max_size=1,
            transaction_pooling=True,
            configure=clean_configure,
        )
        try:
            conn = pool.getconn()
            pool.putconn(conn)
        finally:
            pool.close()
        assert warnings_of(caplog) == []


def test_leftover_session_state_is_warned_about_asyncio(
    server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="pgreservoir")

    async def configure(conn: Any) -> None:
        await conn.execute("SET statement_timeout = '5s'")
        await conn.commit()

    async def main() -> None:
        pool = AsyncConnectionPool(
            server.make_dsn(DB),
            min_size=0,
            max_size=1,
            transaction_pooling=True,
            configure=configure,
            name="leaky-async",
        )
        try:
            conn = await pool.getconn()
            await pool.putconn(conn)
        finally:
            await pool.close()

    asyncio.run(main())
    found = warnings_of(caplog)
    assert len(found) == 1
    assert "configure() left session state behind (SET statement_timeout)" in found[0]


def test_psycopg2_characteristics_go_to_the_next_transaction(server: PostgresServer) -> None:
    """transaction_pooling=True: isolation_level, readonly, deferrable and set_session()
    on an autocommit connection send nothing; the next transaction gets them."""
    import psycopg2.extras

    pool = ConnectionPool(
        server.make_dsn(DB),
        min_size=0,
        max_size=1,
        transaction_pooling=True,
        connection_factory=psycopg2.extras.RealDictConnection,
    )
    try:
        conn = pool.getconn()
        assert isinstance(conn, psycopg2.extras.RealDictConnection)
        log_from = server._log_size()
        conn.autocommit = True
        conn.isolation_level = psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ
        conn.readonly = True
        conn.set_session(deferrable=True)
        assert (conn.isolation_level, conn.readonly, conn.deferrable) == (
            psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ,
            True,
            True,
        )
        assert conn.autocommit is True
        # Only ever back to the defaults (psycopg2 does that when autocommit goes off),
        # which leaves nothing behind; never a session SET of another value.
        sets = [
            line.split("statement: ", 1)[1]
            for line in server._log_since(log_from).splitlines()
            if "statement: SET" in line
        ]
        assert all(statement.endswith("TO DEFAULT") for statement in sets), sets
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute("SHOW transaction_isolation")
            assert cur.fetchone() == {"transaction_isolation": "repeatable read"}
            cur.execute("SHOW transaction_read_only")
            assert cur.fetchone() == {"transaction_read_only": "on"}
        conn.rollback()
        pool.putconn(conn)
        conn = pool.getconn()  # restored at check-in, client-side as well
        assert (conn.isolation_level, conn.readonly, conn.deferrable, conn.autocommit) == (
            None,
            None,
            None,
            False,
        )
        pool.putconn(conn)
    finally:
        pool.close()


def test_bench_through_a_transaction_pooling_pgbouncer(server: PostgresServer) -> None:
    # Transaction mode: psycopg 3's server-side prepared statements would not
    # survive PgBouncer 1.18 handing each transaction to any server connection
    # ("prepared statement ... does not exist"); --transaction-pooling turns
    # them off for every contender, so the psycopg 3 and asyncpg ones run
    # cleanly too.
    contenders = "pgreservoir-psycopg,psycopg_pool,pgreservoir-async,psycopg_pool-async,asyncpg"
    with PgBouncer(server, pool_mode="transaction", default_pool_size=10) as bouncer:
        done = _bench(dsn_of(bouncer), "--transaction-pooling", "--contenders", contenders)
    assert done.returncode == 0, done.stderr
    table = done.stdout.split("ops/s: operations per second")[0]
    # The errors column: every contender's is 0.
    header = next(line for line in table.splitlines() if "errors" in line)
    at = header.index("errors")
    counted = [line[at - 2:at + 8].split() for line in table.splitlines()[2:]
               if len(line) > at and line[at - 2:at + 8].strip().isdigit()]
    assert len(counted) == 5, done.stdout
    assert all(cell == ["0"] for cell in counted), done.stdout
    assert "failed" not in done.stdout, done.stdout
