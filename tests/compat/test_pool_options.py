"""pgreservoir features on the psycopg2-compatible classes, through ``pool_options``.

psycopg2.pool has none of this, so these tests run on pgreservoir.pool only.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable, Dict, List

import psycopg2
import psycopg2.pool
import pytest

import pgreservoir
from pgreservoir.pool import PoolOptions, ThreadedConnectionPool

from ._support import DEADLINE, open_count, scalar, wait_until

MakePool = Callable[..., Any]


# -- the option-passing design ---------------------------------------------------


def test_pool_options_is_not_a_connection_keyword(make_ours: MakePool) -> None:
    pool = make_ours(1, 2, pool_options=PoolOptions(name="kw-test"))
    conn = pool.getconn()
    assert "pool_options" not in conn.dsn
    assert pool.name == "kw-test"
    pool.putconn(conn)


def test_pool_options_as_a_dict(make_ours: MakePool) -> None:
    pool = make_ours(1, 2, pool_options={"timeout": 2.5, "name": "from-config"})
    assert pool.name == "from-config"


def test_unknown_pool_option_is_refused(postgres_dsn: str) -> None:
    with pytest.raises(TypeError, match=r"unknown pool option.*'timeoutt'.*accepted: "):
        ThreadedConnectionPool(1, 2, postgres_dsn, pool_options={"timeoutt": 1})
    with pytest.raises(TypeError, match="pool_options must be"):
        ThreadedConnectionPool(1, 2, postgres_dsn, pool_options=5)  # type: ignore[arg-type]


def test_pool_option_given_as_a_connection_keyword_is_refused(postgres_dsn: str) -> None:
    with pytest.raises(TypeError, match=r"'timeout'.*pool_options=PoolOptions\(timeout=\.\.\.\)"):
        ThreadedConnectionPool(1, 2, postgres_dsn, timeout=5)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("timeout", -1, ValueError),
        ("timeout", "5", TypeError),
        ("max_waiting", -1, ValueError),
        ("max_lifetime", 0, ValueError),
        ("max_idle", float("nan"), ValueError),
        ("check_idle_after", -2, ValueError),
        ("configure", "not callable", TypeError),
        ("reset", 3, TypeError),
        ("name", 7, TypeError),
        ("connect_defaults", ["keepalives"], TypeError),
    ],
)
def test_pool_options_are_validated_where_written(field: str, value: Any, error: type) -> None:
    with pytest.raises(error, match=field):
        PoolOptions(**{field: value})


def test_pool_options_are_immutable_and_replaceable() -> None:
    base = PoolOptions(timeout=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.timeout = 2.0  # type: ignore[misc]
    assert dataclasses.replace(base, timeout=3.0).timeout == 3.0
    assert PoolOptions().timeout == 0.0  # psycopg2's behaviour by default


@pytest.mark.parametrize(
    ("minconn", "maxconn", "message"),
    [(-1, 2, "minconn must be >= 0"), (0, 0, "maxconn must be >= 1"), ("x", 2, "invalid literal")],
)
def test_bad_sizes_are_refused(
    postgres_dsn: str, minconn: Any, maxconn: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ThreadedConnectionPool(minconn, maxconn, postgres_dsn)


# -- waiting instead of "connection pool exhausted" --------------------------------------


def test_waiting_caller_gets_the_returned_connection(make_ours: MakePool) -> None:
    pool = make_ours(1, 1, pool_options=PoolOptions(timeout=DEADLINE))
    held = pool.getconn()
    got: Dict[str, Any] = {}
    thread = threading.Thread(target=lambda: got.setdefault("conn", pool.getconn()))
    thread.start()
    wait_until(lambda: pool.stats()["waiting"] == 1, "the caller to wait")
    pool.putconn(held)
    thread.join(DEADLINE)
    assert got["conn"] is held
    pool.putconn(held)


def test_waiting_times_out_with_the_exhausted_message(make_ours: MakePool) -> None:
    pool = make_ours(1, 1, pool_options=PoolOptions(timeout=0.05))
    held = pool.getconn()
    with pytest.raises(psycopg2.pool.PoolError) as info:
        pool.getconn()
    assert isinstance(info.value, pgreservoir.PoolTimeout)
    assert str(info.value) == "connection pool exhausted"
    assert pool.stats()["timeouts"] == 1
    pool.putconn(held)


def test_max_waiting_turns_callers_away(make_ours: MakePool) -> None:
    pool = make_ours(1, 1, pool_options=PoolOptions(timeout=DEADLINE, max_waiting=1))
    held = pool.getconn()
    got: Dict[str, Any] = {}
    thread = threading.Thread(target=lambda: got.setdefault("conn", pool.getconn()))
    thread.start()
    wait_until(lambda: pool.stats()["waiting"] == 1, "the first caller to wait")
    with pytest.raises(pgreservoir.TooManyRequests) as info:
        pool.getconn()
    assert str(info.value) == "connection pool exhausted"
    pool.putconn(held)
    thread.join(DEADLINE)
    pool.putconn(got["conn"])


def test_closeall_wakes_waiting_callers(make_ours: MakePool) -> None:
    pool = make_ours(1, 1, pool_options=PoolOptions(timeout=DEADLINE))
    pool.getconn()
    errors: List[BaseException] = []

    def wait() -> None:
        try:
            pool.getconn()
        except psycopg2.pool.PoolError as exc:
            errors.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    wait_until(lambda: pool.stats()["waiting"] == 1, "the caller to wait")
    pool.closeall()
    thread.join(DEADLINE)
    assert [str(e) for e in errors] == ["connection pool is closed"]


# -- health, lifetime, hooks ------------------------------------------------------------


def test_max_lifetime_replaces_connections(make_ours: MakePool) -> None:
    pool = make_ours(1, 2, pool_options=PoolOptions(max_lifetime=0.05))
    conn = pool.getconn()
    pid = conn.get_backend_pid()
    pool.putconn(conn)
    wait_until(lambda: conn.closed != 0, "the expired connection to be retired")
    fresh = pool.getconn()
    assert fresh.get_backend_pid() != pid
    pool.putconn(fresh)


def test_max_idle_zero_closes_surplus_like_psycopg2(make_ours: MakePool) -> None:
    pool = make_ours(1, 3, pool_options=PoolOptions(max_idle=0))
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a)
    pool.putconn(b)
    wait_until(lambda: open_count(pool) == 1, "the surplus idle connection to close")


def test_configure_and_reset_hooks(make_ours: MakePool) -> None:
    resets: List[Any] = []

    def configure(conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SET application_name = 'configured'")
        conn.commit()

    pool = make_ours(1, 2, pool_options=PoolOptions(configure=configure, reset=resets.append))
    conn = pool.getconn()
    assert scalar(conn, "SHOW application_name") == "configured"
    conn.rollback()
    pool.putconn(conn)
    assert resets == [conn]


def test_stats_and_repr(make_ours: MakePool) -> None:
    pool = make_ours(2, 5, pool_options=PoolOptions(name="reporting"))
    conn = pool.getconn()
    stats = pool.stats()
    assert (stats["size"], stats["in_use"], stats["idle"], stats["max_size"]) == (2, 1, 1, 5)
    assert "reporting" in repr(pool)
    assert "in_use=1" in repr(pool)
    assert "password" not in repr(pool) or "***" in repr(pool)
    pool.putconn(conn)


def test_connect_defaults_can_be_turned_off_or_overridden(
    make_ours: MakePool, postgres_server: Any, postgres_dsn: str
) -> None:
    dbname = psycopg2.extensions.parse_dsn(postgres_dsn)["dbname"]
    bare = postgres_server.make_dsn(dbname, connect_timeout=None)
    pool = make_ours(1, 1, bare, pool_options=PoolOptions(connect_defaults={}))
    conn = pool.getconn()
    assert "keepalives_idle" not in conn.get_dsn_parameters()
    pool.putconn(conn)
    url = f"postgresql://{postgres_server.user}@{postgres_server.host}:{postgres_server.port}/{dbname}"
    pool = make_ours(1, 1, url + "?connect_timeout=5", keepalives_idle=60)
    params = pool.getconn().get_dsn_parameters()
    assert params["keepalives_idle"] == "60"  # the caller's value wins
    assert params["connect_timeout"] == "5"  # also when set in the DSN
    assert params["keepalives_count"] == "5"  # the other defaults still apply


# -- attributes and life cycle --------------------------------------------------------


def test_minconn_and_maxconn_can_be_changed(make_ours: MakePool) -> None:
    pool = make_ours(1, 2)
    pool.maxconn = 4
    pool.minconn = 3
    assert (pool.minconn, pool.maxconn) == (3, 4)
    wait_until(lambda: open_count(pool) == 3, "the pool to grow to the new minconn")
    with pytest.raises(ValueError, match="must not exceed"):
        pool.maxconn = 2


def test_with_block_closes_the_pool(postgres_dsn: str) -> None:
    with ThreadedConnectionPool(1, 2, postgres_dsn) as pool:
        conn = pool.getconn()
    assert pool.closed
    assert conn.closed
    with ThreadedConnectionPool(1, 2, postgres_dsn) as pool:
        pool.closeall()  # closing inside the block is fine too
    assert pool.closed


def test_subclass_locking_around_the_private_methods(postgres_dsn: str) -> None:
    # Code written against psycopg2's AbstractConnectionPool adds its own lock
    # around _getconn/_putconn/_closeall.
    class Locked(pgreservoir.pool.AbstractConnectionPool):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._lock = threading.Lock()

        def getconn(self, key: Any = None) -> Any:
            with self._lock:
                return self._getconn(key)

        def putconn(self, conn: Any = None, key: Any = None, close: bool = False) -> None:
            with self._lock:
                self._putconn(conn, key, close)

        def closeall(self) -> None:
            with self._lock:
                self._closeall()

    pool = Locked(1, 2, postgres_dsn)
    conn = pool.getconn("k")
    assert pool.getconn("k") is conn
    pool.putconn(conn, "k")
    pool.closeall()
    assert conn.closed


def test_resilience_options_reach_the_engine(postgres_dsn: str) -> None:
    """fail_fast, leak_threshold... are accepted by PoolOptions and drive the engine."""
    import logging

    from pgreservoir import pool as pgpool

    options = pgpool.PoolOptions(
        fail_fast=True, reconnect_timeout=5.0, leak_threshold=0.1, check_idle_interval=0.5
    )
    p = pgpool.ThreadedConnectionPool(1, 2, postgres_dsn, pool_options=options)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign,assignment]
    logging.getLogger("pgreservoir").addHandler(handler)
    try:
        conn = p.getconn()
        deadline = time.monotonic() + 15
        while p.stats()["connections_leaked"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert p.stats()["connections_leaked"] == 1
        assert any("test_resilience_options_reach_the_engine" in r.getMessage() for r in records)
        p.putconn(conn)
        with pytest.raises(TypeError, match="fail_fast must be True or False"):
            pgpool.PoolOptions(fail_fast="yes")  # type: ignore[arg-type]
    finally:
        logging.getLogger("pgreservoir").removeHandler(handler)
        p.closeall()
