"""pgreservoir.testing.PgBouncer: the real PgBouncer program in front of a real server."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, Iterator, List

import psycopg2
import pytest

from pgreservoir.testing import PgBouncer, PostgresServer, find_pgbouncer
from support import scalar, select_one, wait_until


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        server.create_database("bouncerdb")
        yield server


@pytest.fixture
def transaction_bouncer(server: PostgresServer) -> Iterator[PgBouncer]:
    with PgBouncer(server, pool_mode="transaction", default_pool_size=1) as bouncer:
        yield bouncer


def pool_of(bouncer: PgBouncer, database: str) -> dict[str, object]:
    rows = [row for row in bouncer.pools() if row["database"] == database]
    assert rows, f"no pool for {database} in {bouncer.pools()}"
    return rows[0]


def connect(bouncer: PgBouncer, **params: Any) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(bouncer.make_dsn(dbname="bouncerdb", **params))
    conn.autocommit = True
    return conn


def test_session_mode_reaches_the_server(server: PostgresServer) -> None:
    with PgBouncer(server) as bouncer:
        assert bouncer.pool_mode == "session"
        assert bouncer.port != server.port
        assert bouncer.version_info >= (1, 12)
        assert bouncer.admin("SHOW VERSION")
        conn = connect(bouncer)
        try:
            assert scalar(conn, "SELECT current_database()") == "bouncerdb"
            assert scalar(conn, "SELECT inet_server_port()") == server.port
            row = pool_of(bouncer, "bouncerdb")
            assert row["cl_active"] == 1
            assert row["pool_mode"] == "session"
        finally:
            conn.close()


def test_runs_as_the_server_account_when_root(server: PostgresServer) -> None:
    with PgBouncer(server) as bouncer:
        pid = bouncer.pid
        assert pid is not None
        status = Path(f"/proc/{pid}/status").read_text()
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        if os.geteuid() == 0:
            assert uid != 0
            assert pwd.getpwuid(uid).pw_name in ("postgres", "pgreservoir")
        else:
            assert uid == os.geteuid()


def test_transaction_mode_shares_server_connections(transaction_bouncer: PgBouncer) -> None:
    first, second = connect(transaction_bouncer), connect(transaction_bouncer)
    try:
        pid = scalar(first, "SELECT pg_backend_pid()")
        assert scalar(second, "SELECT pg_backend_pid()") == pid  # default_pool_size=1
        # The hazard transaction pooling is known for: a session SET stays on the
        # shared server connection, and another client runs under it.
        with first.cursor() as cur:
            cur.execute("SET application_name = 'leaked'")
        assert scalar(second, "SHOW application_name") == "leaked"
    finally:
        first.close()
        second.close()


def test_pause_holds_queries_until_resume(transaction_bouncer: PgBouncer) -> None:
    conn = connect(transaction_bouncer)
    results: List[object] = []
    try:
        assert scalar(conn, "SELECT 1") == 1
        transaction_bouncer.pause()
        thread = threading.Thread(target=lambda: results.append(scalar(conn, "SELECT 2")))
        thread.start()
        wait_until(
            lambda: pool_of(transaction_bouncer, "bouncerdb")["cl_waiting"] == 1,
            "the query to wait in PgBouncer",
        )
        assert not results
        transaction_bouncer.resume()
        thread.join(timeout=15)
        assert results == [2]
    finally:
        conn.close()


def test_pause_without_waiting_in_session_mode(server: PostgresServer) -> None:
    with PgBouncer(server) as bouncer:
        conn = connect(bouncer)  # holds its server connection: PAUSE cannot complete
        results: List[object] = []
        try:
            assert scalar(conn, "SELECT 1") == 1
            bouncer.pause("bouncerdb", wait=False)
            wait_until(
                lambda: any(
                    row["paused"] for row in bouncer.show("DATABASES") if row["name"] == "bouncerdb"
                ),
                "the database to be paused",
            )
            newcomer = connect(bouncer, connect_timeout=15)  # logs in, then its query waits
            thread = threading.Thread(target=lambda: results.append(scalar(newcomer, "SELECT 2")))
            thread.start()
            wait_until(
                lambda: pool_of(bouncer, "bouncerdb")["cl_waiting"] == 1,
                "the newcomer's query to wait in PgBouncer",
            )
            bouncer.resume("bouncerdb")
            thread.join(timeout=15)
            assert results == [2]
            newcomer.close()
            assert scalar(conn, "SELECT 3") == 3
        finally:
            conn.close()


def test_reconnect_renews_server_connections(transaction_bouncer: PgBouncer) -> None:
    conn = connect(transaction_bouncer)
    try:
        before = scalar(conn, "SELECT pg_backend_pid()")
        transaction_bouncer.reconnect()
        wait_until(
            lambda: scalar(conn, "SELECT pg_backend_pid()") != before,
            "a new server connection after RECONNECT",
        )
    finally:
        conn.close()


def test_kill_drops_clients_until_resume(transaction_bouncer: PgBouncer) -> None:
    conn = connect(transaction_bouncer)
    assert scalar(conn, "SELECT 1") == 1
    transaction_bouncer.kill("bouncerdb")
    with pytest.raises(psycopg2.OperationalError):
        scalar(conn, "SELECT 1")
    conn.close()
    transaction_bouncer.resume("bouncerdb")
    again = connect(transaction_bouncer)
    try:
        assert scalar(again, "SELECT 1") == 1
    finally:
        again.close()


def test_restart_and_crash_keep_the_port(transaction_bouncer: PgBouncer) -> None:
    port = transaction_bouncer.port
    for fault in (transaction_bouncer.restart, transaction_bouncer.crash):
        conn = connect(transaction_bouncer)
        assert scalar(conn, "SELECT 1") == 1
        fault()
        with pytest.raises(psycopg2.OperationalError):
            scalar(conn, "SELECT 1")
        conn.close()
        transaction_bouncer.start()  # after restart a no-op, after crash a start
        assert transaction_bouncer.port == port
        assert select_one(transaction_bouncer.make_dsn(dbname="bouncerdb")) == 1


def test_server_with_a_password() -> None:
    with PostgresServer(password="bouncer-secret") as server, PgBouncer(server) as bouncer:
        dsn = bouncer.make_dsn()
        assert "bouncer-secret" in dsn  # the server's DSN, with its password
        assert select_one(dsn) == 1
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(bouncer.make_dsn(password="wrong"))


def test_settings_and_reload(server: PostgresServer) -> None:
    with PgBouncer(server, settings={"server_idle_timeout": "123"}) as bouncer:
        rows = {row["key"]: row["value"] for row in bouncer.show("CONFIG")}
        assert rows["server_idle_timeout"] == "123"
        bouncer.set(server_idle_timeout=77)
        rows = {row["key"]: row["value"] for row in bouncer.show("CONFIG")}
        assert rows["server_idle_timeout"] == "77"
    with pytest.raises(ValueError, match="pool_mode"):
        PgBouncer(server, pool_mode="bogus")


def test_find_pgbouncer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    program = find_pgbouncer()
    assert os.access(program, os.X_OK)
    monkeypatch.setenv("PGBOUNCER", program)
    assert find_pgbouncer() == program
    monkeypatch.setenv("PGBOUNCER", str(tmp_path / "nothing"))
    with pytest.raises(RuntimeError, match="PGBOUNCER"):
        find_pgbouncer()


def test_watchdog_stops_pgbouncer_after_sigkill(server: PostgresServer) -> None:
    import pgreservoir.testing as pgtesting

    src = str(Path(pgtesting.__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    script = textwrap.dedent(
        f"""
        import json, sys
        from pgreservoir.testing import PgBouncer, PostgresServer
        server = PostgresServer(port={server.port})
        server._basedir = "unused"  # only host and port are read
        bouncer = PgBouncer(server).start()
        print(json.dumps({{"pid": bouncer.pid, "basedir": bouncer.basedir}}), flush=True)
        sys.stdin.read()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, "child failed to start PgBouncer"
        info = json.loads(line)
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    def gone(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
        except (OSError, IndexError):
            return True
        return state == "Z"

    wait_until(lambda: gone(info["pid"]), "PgBouncer to exit", 30)
    wait_until(lambda: not os.path.exists(info["basedir"]), "its directory to be removed", 30)
