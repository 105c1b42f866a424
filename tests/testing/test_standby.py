"""pgreservoir.testing.StandbyServer: a real streaming standby of a real primary (no mocks)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator, List

import psycopg2
import psycopg2.errors
import pytest

from pgreservoir.testing import PostgresServer, StandbyServer
from support import scalar, wait_until


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[PostgresServer, StandbyServer]]:
    """A primary and a synchronous standby, shared by the tests that leave them as found."""
    with PostgresServer() as primary, StandbyServer(primary, synchronous=True) as standby:
        standby.wait_streaming()
        with primary.connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE items (n int)")
        yield primary, standby


def insert(server: PostgresServer, n: int) -> None:
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (%s)", (n,))
    finally:
        conn.close()


def count(server: PostgresServer, n: int) -> int:
    conn = server.connect()
    try:
        return int(scalar(conn, "SELECT count(*) FROM items WHERE n = %s", (n,)))
    finally:
        conn.close()


def test_standby_streams_and_is_read_only(pair: tuple[PostgresServer, StandbyServer]) -> None:
    primary, standby = pair
    assert standby.in_recovery()
    assert not primary.in_recovery()
    assert standby.primary is primary
    assert standby.port != primary.port
    insert(primary, 1)
    standby.wait_caught_up(timeout=10)
    assert count(standby, 1) == 1
    assert standby.lag_bytes() == 0
    conn = standby.connect()
    try:
        assert conn.get_parameter_status("in_hot_standby") == "on"
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction), conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (0)")
    finally:
        conn.close()


def test_synchronous_commit_waits_for_the_standby(
    pair: tuple[PostgresServer, StandbyServer],
) -> None:
    primary, standby = pair
    assert primary.synchronous_standbys == [standby.name]
    conn = primary.connect()
    done: List[BaseException | None] = []
    standby.stop()  # nobody acknowledges the primary's WAL now
    try:
        backend = conn.get_backend_pid()

        def commit() -> None:
            try:
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO items VALUES (2)")
                done.append(None)
            except BaseException as exc:  # reported to the test thread
                done.append(exc)

        thread = threading.Thread(target=commit, daemon=True)
        thread.start()

        def waiting_for_sync_rep() -> bool:
            with primary.connect() as admin, admin.cursor() as cur:
                cur.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (backend,))
                row = cur.fetchone()
                return row is not None and row[0] == "SyncRep"

        wait_until(waiting_for_sync_rep, "the commit to wait for the synchronous standby")
        assert not done
    finally:
        standby.start()
    thread.join(timeout=15)
    assert done == [None]
    conn.close()
    standby.wait_caught_up(timeout=10)
    assert count(standby, 2) == 1


def test_replay_pause_and_resume(pair: tuple[PostgresServer, StandbyServer]) -> None:
    primary, standby = pair
    standby.pause_replay()
    try:
        assert standby.replay_paused
        insert(primary, 3)
        standby.wait_caught_up(timeout=10, received=True)  # WAL still arrives ...
        assert standby.lag_bytes() > 0  # ... but is not applied
        assert count(standby, 3) == 0
        with pytest.raises(TimeoutError, match="replay is paused"):
            standby.wait_caught_up(timeout=0.3)
    finally:
        standby.resume_replay()
    standby.wait_caught_up(timeout=10)
    assert not standby.replay_paused
    assert count(standby, 3) == 1


def test_promote_after_the_primary_is_killed() -> None:
    with PostgresServer() as primary, StandbyServer(primary, synchronous=True) as standby:
        standby.wait_streaming()
        with primary.connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE items (n int)")
            cur.execute("INSERT INTO items SELECT generate_series(1, 100)")
        # Synchronous: what the primary acknowledged is on the standby before it dies.
        reader = standby.connect()
        primary.kill()
        assert not primary.running
        standby.promote(timeout=20)
        assert standby.promoted
        assert not standby.in_recovery()
        conn = standby.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO items VALUES (101)")
                cur.execute("SELECT count(*) FROM items")
                assert cur.fetchone() == (101,)
        finally:
            conn.close()
        # A session opened before the promotion is told its role changed, with its
        # next message (parameter status), without asking.
        scalar(reader, "SELECT 1")
        assert reader.get_parameter_status("in_hot_standby") == "off"
        reader.close()

        # The old primary comes back as a standby of the new one, at its old address.
        old_port = primary.port
        back = StandbyServer.replace(primary, standby)
        try:
            assert back.port == old_port
            assert back.in_recovery()
            back.wait_streaming()
            with standby.connect() as conn2, conn2.cursor() as cur:
                cur.execute("INSERT INTO items VALUES (102)")
            back.wait_caught_up(timeout=10)
            assert count(back, 102) == 1
        finally:
            back.cleanup()


def test_fault_controls_of_a_standby() -> None:
    with PostgresServer() as primary, StandbyServer(primary) as standby:
        standby.wait_streaming()
        conn = standby.connect()
        standby.kill()
        assert not standby.running
        with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.close()
        standby.start()
        standby.wait_streaming()
        standby.restart(mode="immediate")
        standby.wait_streaming()
        standby.pause()
        try:
            with pytest.raises(psycopg2.OperationalError):
                psycopg2.connect(standby.make_dsn(connect_timeout=1))
        finally:
            standby.resume()
        with primary.connect() as conn2, conn2.cursor() as cur:
            cur.execute("CREATE TABLE t (n int)")
        standby.wait_caught_up(timeout=10)
        standby.stop()
        assert not standby.running
        standby.start()
        assert standby.in_recovery()
        slot = standby.name
    # Cleaning the standby up drops its slot on the primary (the primary is gone
    # too here: checked on a live primary below).
    assert slot.startswith("pgr_standby_")


def test_cleanup_takes_the_standby_off_the_primary() -> None:
    with PostgresServer() as primary:
        standby = StandbyServer(primary, synchronous=True, name="leaving").start()
        standby.wait_streaming()
        assert primary.synchronous_standbys == ["leaving"]
        standby.cleanup()
        assert primary.synchronous_standbys == []
        conn = primary.connect()
        try:
            assert scalar(conn, "SHOW synchronous_standby_names") == ""
            assert scalar(conn, "SELECT count(*) FROM pg_replication_slots") == 0
            with conn.cursor() as cur:  # commits no longer wait for anyone
                cur.execute("CREATE TABLE t (n int)")
        finally:
            conn.close()


def test_standby_of_a_server_with_a_password() -> None:
    with PostgresServer(password="s3cret pass'word") as primary, StandbyServer(primary) as standby:
        standby.wait_streaming()
        assert standby.password == primary.password
        with psycopg2.connect(standby.dsn) as conn:
            assert scalar(conn, "SELECT pg_is_in_recovery()") is True
        auto = Path(standby.datadir, "postgresql.auto.conf").read_text(encoding="utf-8")
        assert "s3cret" not in auto


def test_server_kill_and_fence() -> None:
    with PostgresServer() as server:
        conn = server.connect()
        server.kill()
        assert not server.running
        with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
            cur.execute("SELECT 1")
        server.start()  # crash recovery
        conn = server.connect()
        server.fence()
        try:
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction), conn.cursor() as cur:
                cur.execute("CREATE TABLE t (n int)")
            assert conn.get_parameter_status("default_transaction_read_only") == "on"
        finally:
            server.unfence()
        wait_until(
            lambda: scalar(conn, "SHOW default_transaction_read_only") == "off",
            "the fence to be lifted",
        )
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (n int)")
        conn.close()
