"""Where pgreservoir.pool behaves exactly like psycopg2.pool: the same tests, run on both."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool
import pytest

from pgreservoir.testing import PostgresServer

from ._support import in_use, kill_backend, scalar
from .conftest import Impl

MakePool = Callable[..., Any]

IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
CLASSES = ("SimpleConnectionPool", "ThreadedConnectionPool")


class MyConnection(psycopg2.extensions.connection):
    """A connection_factory, to see it reach psycopg2.connect()."""


# -- the module's names ----------------------------------------------------------


def test_pool_error_is_a_psycopg2_error(impl: Impl) -> None:
    assert issubclass(impl.module.PoolError, psycopg2.Error)
    assert issubclass(impl.module.PoolError, psycopg2.pool.PoolError)


@pytest.mark.parametrize("cls", CLASSES)
def test_classes_are_abstract_pool_subclasses(impl: Impl, cls: str) -> None:
    assert issubclass(getattr(impl.module, cls), impl.module.AbstractConnectionPool)


@pytest.mark.parametrize("cls", [*CLASSES, "AbstractConnectionPool"])
def test_constructor_signature(impl: Impl, cls: str) -> None:
    params = inspect.signature(getattr(impl.module, cls)).parameters
    shape = [(p.name, p.kind) for p in params.values() if p.name != "pool_options"]
    assert shape == [
        ("minconn", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("maxconn", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("args", inspect.Parameter.VAR_POSITIONAL),
        ("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]


@pytest.mark.parametrize("cls", CLASSES)
def test_method_signatures(impl: Impl, cls: str) -> None:
    klass = getattr(impl.module, cls)
    assert list(inspect.signature(klass.getconn).parameters) == ["self", "key"]
    assert list(inspect.signature(klass.putconn).parameters) == ["self", "conn", "key", "close"]
    assert list(inspect.signature(klass.closeall).parameters) == ["self"]


# -- construction ----------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_minconn_connections_are_opened_by_the_constructor(
    make_pool: MakePool, server: PostgresServer, dbname: str, cls: str
) -> None:
    make_pool(3, 5, cls=cls)
    assert server.connection_count(dbname) == 3


def test_connect_error_propagates_from_the_constructor(impl: Impl) -> None:
    with pytest.raises(psycopg2.OperationalError):
        impl.module.ThreadedConnectionPool(1, 2, "host=127.0.0.1 port=1 dbname=x connect_timeout=5")


def test_connect_error_propagates_from_getconn(impl: Impl) -> None:
    pool = impl.module.ThreadedConnectionPool(0, 1, "host=127.0.0.1 port=1 connect_timeout=5")
    try:
        with pytest.raises(psycopg2.OperationalError):
            pool.getconn()
        with pytest.raises(psycopg2.OperationalError):  # and the slot was not lost
            pool.getconn()
    finally:
        pool.closeall()


def test_sizes_are_coerced_with_int(make_pool: MakePool) -> None:
    pool = make_pool("2", 4.0)
    assert (pool.minconn, pool.maxconn) == (2, 4)
    assert type(pool.minconn) is int
    assert type(pool.maxconn) is int


def test_attributes(make_pool: MakePool) -> None:
    pool = make_pool(1, 3)
    assert (pool.minconn, pool.maxconn, pool.closed) == (1, 3, False)
    pool.closeall()
    assert pool.closed is True


def test_a_pool_is_truthy(make_pool: MakePool) -> None:
    # Tutorials write `if postgresql_pool:` before using it.
    assert make_pool(1, 2)
    assert make_pool(0, 1)


# -- arguments reach psycopg2.connect() unchanged ---------------------------------


def test_keyword_connection_arguments(make_pool: MakePool, postgres_dsn: str) -> None:
    params = psycopg2.extensions.parse_dsn(postgres_dsn)
    database = params.pop("dbname")
    pool = make_pool(1, 2, database=database, application_name="compat-kw", **params)
    conn = pool.getconn()
    assert scalar(conn, "SELECT current_database()") == database
    assert scalar(conn, "SHOW application_name") == "compat-kw"
    pool.putconn(conn)


def test_dsn_keyword_and_extra_keywords(make_pool: MakePool, postgres_dsn: str) -> None:
    pool = make_pool(1, 2, dsn=postgres_dsn, application_name="compat-dsn")
    conn = pool.getconn()
    assert scalar(conn, "SHOW application_name") == "compat-dsn"
    pool.putconn(conn)


def test_libpq_options_keyword_is_a_connection_option(
    make_pool: MakePool, postgres_dsn: str
) -> None:
    pool = make_pool(1, 2, postgres_dsn, options="-c search_path=compat_schema")
    conn = pool.getconn()
    assert scalar(conn, "SHOW search_path") == "compat_schema"
    pool.putconn(conn)


def test_connection_and_cursor_factories(make_pool: MakePool, postgres_dsn: str) -> None:
    pool = make_pool(
        1, 2, postgres_dsn,
        connection_factory=MyConnection,
        cursor_factory=psycopg2.extras.RealDictCursor,
    )
    conn = pool.getconn()
    assert isinstance(conn, MyConnection)
    with conn.cursor() as cur:
        cur.execute("SELECT 1 AS one")
        row: Any = cur.fetchone()
        assert row == {"one": 1}
    pool.putconn(conn)


def test_positional_connection_factory(make_pool: MakePool, postgres_dsn: str) -> None:
    pool = make_pool(1, 2, postgres_dsn, MyConnection)
    conn = pool.getconn()
    assert isinstance(conn, MyConnection)
    pool.putconn(conn)


# -- getconn ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_most_recently_returned_connection_is_reused_first(make_pool: MakePool, cls: str) -> None:
    pool = make_pool(2, 4, cls=cls)
    a, b = pool.getconn(), pool.getconn()
    assert a is not b
    pool.putconn(a)
    pool.putconn(b)
    assert pool.getconn() is b
    assert pool.getconn() is a


@pytest.mark.parametrize("cls", CLASSES)
def test_same_key_gives_the_same_connection(make_pool: MakePool, cls: str) -> None:
    pool = make_pool(1, 3, cls=cls)
    conn = pool.getconn("job-1")
    assert pool.getconn("job-1") is conn
    assert pool.getconn("job-2") is not conn
    assert in_use(pool) == 2
    pool.putconn(conn, "job-1")
    pool.putconn(pool.getconn("job-2"), key="job-2")
    assert in_use(pool) == 0


def test_keyed_connection_can_be_returned_without_its_key(make_pool: MakePool) -> None:
    pool = make_pool(1, 3)
    conn = pool.getconn("k")
    pool.putconn(conn)
    assert in_use(pool) == 0
    again = pool.getconn("k")  # a fresh assignment, the same idle connection (LIFO)
    assert again is conn
    pool.putconn(again, key="k")


@pytest.mark.parametrize("cls", CLASSES)
def test_exhausted_pool_raises_at_once(make_pool: MakePool, cls: str) -> None:
    pool = make_pool(1, 2, cls=cls)
    held = [pool.getconn(), pool.getconn()]
    for catch in (psycopg2.pool.PoolError, psycopg2.Error):
        with pytest.raises(catch) as info:
            pool.getconn()
        assert str(info.value) == "connection pool exhausted"
    pool.putconn(held.pop())
    assert pool.getconn() is not None  # a returned connection is available again


def test_keyed_getconn_on_exhausted_pool(make_pool: MakePool) -> None:
    pool = make_pool(1, 1)
    conn = pool.getconn("a")
    assert pool.getconn("a") is conn  # an assigned key needs no free slot
    with pytest.raises(psycopg2.pool.PoolError) as info:
        pool.getconn("b")
    assert str(info.value) == "connection pool exhausted"


# -- putconn ---------------------------------------------------------------------------


def test_putconn_of_a_foreign_connection(make_pool: MakePool, postgres_dsn: str) -> None:
    pool = make_pool(1, 2)
    stranger = psycopg2.connect(postgres_dsn)
    try:
        with pytest.raises(psycopg2.pool.PoolError) as info:
            pool.putconn(stranger)
        assert str(info.value) == "trying to put unkeyed connection"
    finally:
        stranger.close()


def test_putconn_twice(make_pool: MakePool) -> None:
    pool = make_pool(2, 3)
    conn = pool.getconn()
    pool.putconn(conn)
    with pytest.raises(psycopg2.pool.PoolError) as info:
        pool.putconn(conn)
    assert str(info.value) == "trying to put unkeyed connection"


def test_putconn_nothing(make_pool: MakePool) -> None:
    pool = make_pool(1, 2)
    with pytest.raises(psycopg2.pool.PoolError) as info:
        pool.putconn(None)
    assert str(info.value) == "trying to put unkeyed connection"


def test_open_transaction_is_rolled_back(make_pool: MakePool) -> None:
    pool = make_pool(1, 2)
    conn = pool.getconn()
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE t (x int)")
    conn.commit()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (1)")
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn
    assert again.info.transaction_status == IDLE
    assert scalar(again, "SELECT count(*) FROM t") == 0
    pool.putconn(again)


def test_failed_transaction_is_rolled_back(make_pool: MakePool) -> None:
    pool = make_pool(1, 2)
    conn = pool.getconn()
    with pytest.raises(psycopg2.errors.DivisionByZero), conn.cursor() as cur:
        cur.execute("SELECT 1/0")
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn
    assert scalar(again, "SELECT 42") == 42
    pool.putconn(again)


def test_closed_connection_is_dropped(make_pool: MakePool) -> None:
    pool = make_pool(1, 2)
    conn = pool.getconn()
    conn.close()
    pool.putconn(conn)
    fresh = pool.getconn()
    assert fresh is not conn
    assert not fresh.closed
    assert scalar(fresh, "SELECT 1") == 1
    pool.putconn(fresh)


def test_broken_connection_is_dropped(make_pool: MakePool, server: PostgresServer) -> None:
    pool = make_pool(1, 2)
    conn = pool.getconn()
    kill_backend(server, conn.get_backend_pid())
    with pytest.raises(psycopg2.OperationalError):
        scalar(conn, "SELECT 1")
    pool.putconn(conn)
    fresh = pool.getconn()
    assert fresh is not conn
    assert scalar(fresh, "SELECT 1") == 1
    pool.putconn(fresh)


def test_putconn_close_true_closes_it(make_pool: MakePool) -> None:
    pool = make_pool(1, 2)
    conn = pool.getconn()
    pool.putconn(conn, close=True)
    assert conn.closed
    assert in_use(pool) == 0
    fresh = pool.getconn()
    assert fresh is not conn
    pool.putconn(fresh)


# -- closeall ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_closeall_closes_idle_and_in_use_connections(make_pool: MakePool, cls: str) -> None:
    pool = make_pool(2, 3, cls=cls)
    busy, idle = pool.getconn(), pool.getconn()
    pool.putconn(idle)
    pool.closeall()
    assert busy.closed
    assert idle.closed
    assert pool.closed


def test_closed_pool_refuses_everything(make_pool: MakePool) -> None:
    pool = make_pool(1, 2)
    held = pool.getconn()
    pool.closeall()
    calls = [
        pool.getconn,
        lambda: pool.getconn("key"),
        lambda: pool.putconn(held),
        pool.closeall,  # a second closeall() raises too
    ]
    for call in calls:
        with pytest.raises(psycopg2.pool.PoolError) as info:
            call()
        assert str(info.value) == "connection pool is closed"


def test_simple_pool_serves_a_single_threaded_program(make_pool: MakePool) -> None:
    pool = make_pool(1, 5, cls="SimpleConnectionPool")
    for _ in range(20):
        conn = pool.getconn()
        assert scalar(conn, "SELECT 2") == 2
        conn.commit()
        pool.putconn(conn)
    assert in_use(pool) == 0
