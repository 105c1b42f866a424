"""Where pgreservoir.pool deliberately differs from psycopg2.pool.

Each test runs against both modules and asserts each one's own behaviour, so
the suite proves both what psycopg2.pool does and what we do instead; every
difference has a line in docs/psycopg2-compat.md ("Differences from
psycopg2.pool"). The first tests are regression tests of psycopg2.pool bugs,
named after the bug.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Callable, Dict

import psycopg2
import psycopg2.extensions
import psycopg2.pool
import pytest

from pgreservoir.testing import PostgresServer

from ._support import DEADLINE, in_use, kill_backend, open_count, scalar, wait_until
from .conftest import Impl

MakePool = Callable[..., Any]


# -- psycopg2.pool bugs, fixed ------------------------------------------------------


def test_failed_rollback_in_putconn_does_not_leak_the_slot(
    impl: Impl, make_pool: MakePool, server: PostgresServer
) -> None:
    pool = make_pool(1, 1)
    conn = pool.getconn()
    scalar(conn, "SELECT 1")  # leaves a transaction open for putconn to roll back
    kill_backend(server, conn.get_backend_pid())  # so the rollback fails
    if impl.ours:
        pool.putconn(conn)  # the connection is discarded, its slot freed
        assert in_use(pool) == 0
        fresh = pool.getconn()
        assert fresh is not conn
        assert scalar(fresh, "SELECT 1") == 1
        pool.putconn(fresh)
    else:
        with pytest.raises(psycopg2.OperationalError):
            pool.putconn(conn)
        assert in_use(pool) == 1  # the slot is lost for good
        with pytest.raises(psycopg2.pool.PoolError) as info:
            pool.getconn()
        assert str(info.value) == "connection pool exhausted"


def test_putconn_with_a_wrong_key_leaves_the_pool_untouched(
    impl: Impl, make_pool: MakePool
) -> None:
    pool = make_pool(2, 4)
    conn = pool.getconn("a")
    if impl.ours:
        with pytest.raises(psycopg2.pool.PoolError) as info:
            pool.putconn(conn, key="nope")
        assert str(info.value) == "trying to put unkeyed connection"
        assert pool.getconn("a") is conn  # still assigned to "a"
        assert in_use(pool) == 1
        other = pool.getconn()
        assert other is not conn
        pool.putconn(other)
        pool.putconn(conn, key="a")
        assert in_use(pool) == 0
    else:
        with pytest.raises(KeyError):
            pool.putconn(conn, key="nope")
        # The connection went back to the idle list while still assigned to
        # "a": the next caller gets a connection that is in use.
        assert pool.getconn() is conn
        assert pool.getconn("a") is conn


def test_putconn_with_another_connections_key_is_refused(make_ours: MakePool) -> None:
    pool = make_ours(2, 4)
    a, b = pool.getconn("a"), pool.getconn("b")
    with pytest.raises(psycopg2.pool.PoolError) as info:
        pool.putconn(a, key="b")
    assert str(info.value) == "trying to put unkeyed connection"
    assert pool.getconn("a") is a
    assert pool.getconn("b") is b
    pool.putconn(a, "a")
    pool.putconn(b, "b")
    assert in_use(pool) == 0


def test_auto_keys_do_not_collide_with_user_integer_keys(
    impl: Impl, make_pool: MakePool
) -> None:
    pool = make_pool(1, 3)
    unkeyed = pool.getconn()  # psycopg2 assigns it the hidden key 1
    keyed = pool.getconn(1)
    if impl.ours:
        assert keyed is not unkeyed
        assert in_use(pool) == 2
    else:
        assert keyed is unkeyed  # one connection handed to two owners


def test_minconn_greater_than_maxconn_is_refused(impl: Impl, make_pool: MakePool) -> None:
    if impl.ours:
        with pytest.raises(ValueError, match=r"minconn \(3\) must not exceed maxconn \(1\)"):
            make_pool(3, 1)
    else:
        pool = make_pool(3, 1)
        conns = [pool.getconn() for _ in range(5)]  # maxconn is never enforced
        assert len({id(conn) for conn in conns}) == 5


def test_pool_refills_to_minconn(impl: Impl, make_pool: MakePool) -> None:
    pool = make_pool(2, 3)
    pool.putconn(pool.getconn(), close=True)
    if impl.ours:
        wait_until(lambda: open_count(pool) == 2, "the pool to refill to minconn")
    else:
        assert open_count(pool) == 1
        pool.putconn(pool.getconn())  # using it does not refill it either
        assert open_count(pool) == 1


def test_connect_runs_outside_the_pool_lock(
    impl: Impl, make_pool: MakePool, server: PostgresServer
) -> None:
    pool = make_pool(1, 2)
    first = pool.getconn()
    taken: Dict[str, Any] = {}
    # Needs a new connection, whose connect hangs while the postmaster is paused.
    thread = threading.Thread(target=lambda: taken.setdefault("conn", pool.getconn()))
    thread.daemon = True
    server.pause()
    try:
        thread.start()
        if impl.ours:
            wait_until(lambda: pool.stats()["opening"] == 1, "the connect to start")
            # The pool lock is free: other callers are served meanwhile.
            pool.putconn(first)
            again = pool.getconn()
            assert again is first
            pool.putconn(again)
            assert thread.is_alive()  # still connecting
        else:
            # psycopg2 connects while holding the lock every getconn/putconn needs.
            wait_until(pool._lock.locked, "psycopg2 to take its lock")
            assert thread.is_alive()
            assert pool._lock.locked()
    finally:
        server.resume()
    thread.join(DEADLINE)
    assert not thread.is_alive()
    pool.putconn(taken["conn"])


def test_rollback_runs_outside_the_pool_lock(impl: Impl, make_pool: MakePool) -> None:
    pool = make_pool(2, 2)
    a, b = pool.getconn(), pool.getconn()
    scalar(a, "SELECT 1")  # a transaction for putconn to roll back
    pid = a.get_backend_pid()
    thread = threading.Thread(target=pool.putconn, args=(a,), daemon=True)
    os.kill(pid, signal.SIGSTOP)  # the backend cannot answer the ROLLBACK
    try:
        thread.start()
        if impl.ours:
            wait_until(lambda: pool.stats()["in_use"] == 1, "putconn to take it back")
            pool.putconn(b)
            assert pool.getconn() is b
            pool.putconn(b)
            assert thread.is_alive()  # the rollback still waits for the server
        else:
            wait_until(pool._lock.locked, "psycopg2 to take its lock")
            assert thread.is_alive()
            assert pool._lock.locked()
    finally:
        os.kill(pid, signal.SIGCONT)
    thread.join(DEADLINE)
    assert not thread.is_alive()


# -- other documented differences --------------------------------------------------


@pytest.mark.parametrize("minconn", [0, 1])
def test_idle_connections_above_minconn_are_kept_for_reuse(
    impl: Impl, make_pool: MakePool, minconn: int
) -> None:
    pool = make_pool(minconn, 3)
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a)
    pool.putconn(b)
    if impl.ours:
        # Kept until idle for PoolOptions.max_idle (600 s by default).
        assert not a.closed
        assert not b.closed
        assert open_count(pool) == 2
        assert pool.getconn() is b
    else:
        # Closed the moment they come back, beyond minconn idle ones.
        assert b.closed
        assert open_count(pool) == minconn


def test_dead_idle_connection_is_not_handed_out(
    impl: Impl, make_pool: MakePool, server: PostgresServer
) -> None:
    pool = make_pool(1, 2)
    conn = pool.getconn()
    pool.putconn(conn)
    kill_backend(server, conn.get_backend_pid())
    got = pool.getconn()
    if impl.ours:
        assert got is not conn
        assert scalar(got, "SELECT 1") == 1
    else:
        assert got is conn
        with pytest.raises(psycopg2.OperationalError):
            scalar(got, "SELECT 1")
    pool.putconn(got)


def test_putconn_with_only_a_key(impl: Impl, make_pool: MakePool) -> None:
    pool = make_pool(1, 2)
    conn = pool.getconn("k")
    if impl.ours:
        pool.putconn(key="k")
        assert in_use(pool) == 0
        assert pool.getconn() is conn
    else:
        with pytest.raises(AttributeError):
            pool.putconn(key="k")


def test_keepalives_and_connect_timeout_by_default(
    impl: Impl, make_pool: MakePool, server: PostgresServer, dbname: str
) -> None:
    pool = make_pool(1, 2, server.make_dsn(dbname, connect_timeout=None))
    conn = pool.getconn()
    params = conn.get_dsn_parameters()
    if impl.ours:
        assert params["keepalives"] == "1"
        assert params["keepalives_idle"] == "30"
        assert params["keepalives_interval"] == "10"
        assert params["keepalives_count"] == "5"
        assert params["connect_timeout"] == "10"
    else:
        assert "keepalives_idle" not in params
        assert "connect_timeout" not in params
    pool.putconn(conn)


def test_unknown_connection_option(impl: Impl, make_pool: MakePool, postgres_dsn: str) -> None:
    if impl.ours:  # refused when the pool is built, even with minconn=0
        with pytest.raises(ValueError, match="invalid connection option"):
            make_pool(0, 2, postgres_dsn, no_such_option=1)
    else:  # refused by the first connect
        with pytest.raises(psycopg2.ProgrammingError, match="invalid connection option"):
            make_pool(1, 2, postgres_dsn, no_such_option=1)


def test_closeall_interrupts_a_query_in_progress(
    make_ours: MakePool, server: PostgresServer, dbname: str
) -> None:
    # psycopg2's closeall() would wait for the query to finish (60 s here).
    pool = make_ours(1, 2)
    conn = pool.getconn()
    pid = conn.get_backend_pid()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            scalar(conn, "SELECT pg_sleep(60)")
        except psycopg2.Error as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    admin = server.connect()
    try:
        wait_until(
            lambda: scalar(
                admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active'",
                (pid,),
            ) == 1,
            "the query to start",
        )
    finally:
        admin.close()
    pool.closeall()
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert len(errors) == 1
    # Usually OperationalError; psycopg2 raises a plain DatabaseError when the
    # close lands while it classifies the error (see docs/resilience.md).
    assert isinstance(errors[0], psycopg2.DatabaseError)
    assert "server closed the connection" in str(errors[0])
    assert conn.closed


def test_errors_are_pgreservoir_errors_with_details(make_ours: MakePool) -> None:
    import pgreservoir
    import pgreservoir.pool

    assert pgreservoir.pool.PoolError is psycopg2.pool.PoolError
    pool = make_ours(1, 1, pool_options={"name": "orders"})
    conn = pool.getconn()
    with pytest.raises(pgreservoir.PoolTimeout) as info:
        pool.getconn()
    err = info.value
    assert str(err) == "connection pool exhausted"
    assert err.pool_name == "orders"
    assert err.snapshot["in_use"] == 1
    assert err.snapshot["max_size"] == 1
    notes = getattr(err, "__notes__", [])
    assert any("pool 'orders'" in note for note in notes)
    assert any("PoolOptions(timeout=" in note for note in notes)
    pool.putconn(conn)
    pool.closeall()
    with pytest.raises(pgreservoir.PoolClosed) as closed:
        pool.getconn()
    assert str(closed.value) == "connection pool is closed"
    assert closed.value.pool_name == "orders"


def test_session_settings_are_restored_on_putconn(impl: Impl, make_pool: MakePool) -> None:
    pool = make_pool(1, 1)
    conn = pool.getconn()
    conn.autocommit = True
    conn.readonly = True
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn
    if impl.ours:
        assert again.autocommit is False
        assert again.readonly is None  # psycopg2's "server default"
    else:  # the next user inherits them
        assert again.autocommit is True
        assert again.readonly is True
    pool.putconn(again)


def test_getconn_right_after_a_drop_in_a_full_pool(impl: Impl, make_pool: MakePool) -> None:
    # minconn == maxconn: the only slot is re-opened in the background after
    # the drop; getconn() must not call a pool with nothing in use "exhausted".
    pool = make_pool(1, 1)
    for _ in range(3):
        conn = pool.getconn()
        pool.putconn(conn, close=True)
        fresh = pool.getconn()
        assert fresh is not conn
        assert scalar(fresh, "SELECT 1") == 1
        pool.putconn(fresh)


def test_connect_timeout_zero_means_wait_forever_again(
    make_ours: MakePool, server: PostgresServer, dbname: str
) -> None:
    pool = make_ours(1, 1, server.make_dsn(dbname, connect_timeout=None), connect_timeout=0)
    conn = pool.getconn()
    assert conn.get_dsn_parameters()["connect_timeout"] == "0"
    pool.putconn(conn)
