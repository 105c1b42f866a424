"""ENGINE "pgreservoir.django" end to end: a small Django project on a real PostgreSQL.

Django picks psycopg 3 when it is installed (as here); test_django_psycopg2.py
runs this same module again in a process where ``import psycopg`` fails, so
everything below is proven on psycopg2 too.
"""

from __future__ import annotations

import copy
import gc
import multiprocessing
import threading
import wsgiref.util
from typing import Any, Callable, Dict, Iterator, List, cast

import _django_project as project
import pytest
from _django_project import wait_until
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.wsgi import WSGIHandler
from django.db import DatabaseError, connections, transaction
from django.db.backends.postgresql.psycopg_any import is_psycopg3
from django.db.backends.signals import connection_created
from django.db.utils import load_backend
from django.test import Client, override_settings

from pgreservoir.django.base import DatabaseWrapper, DjangoConnectionPool
from pgreservoir.testing import PostgresServer


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """The project's own server (restarted by a test), configured once per process."""
    with PostgresServer() as srv:
        project.configure(srv)
        try:
            yield srv
        finally:
            connections.close_all()
            for alias in connections:
                _db(alias).close_pool()


@pytest.fixture
def admin(server: PostgresServer) -> Iterator[Any]:
    conn = project.connect_admin(server)
    yield conn
    conn.close()


@pytest.fixture(autouse=True)
def _no_connection_left(server: PostgresServer) -> Iterator[None]:
    yield
    connections.close_all()


def _pid(alias: str = "default") -> int:
    with connections[alias].cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return int(cur.fetchone()[0])


def _db(alias: str) -> DatabaseWrapper:
    return cast(DatabaseWrapper, connections[alias])


def _pool(alias: str = "default") -> DjangoConnectionPool:
    pool = _db(alias).pool
    assert isinstance(pool, DjangoConnectionPool)
    return pool


def _in_threads(count: int, work: Callable[[int], object]) -> List[BaseException]:
    errors: List[BaseException] = []

    def run(index: int) -> None:
        try:
            work(index)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    return errors


class _Sampler:
    """Counts the server's backends on the project's database while threads run."""

    def __init__(self, admin: Any) -> None:
        self.admin = admin
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, project.backends(self.admin, app=project.APP_NAME))
            self.samples += 1

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _wsgi_get(app: WSGIHandler, url: str) -> bytes:
    environ: Dict[str, Any] = {"PATH_INFO": url, "REQUEST_METHOD": "GET"}
    wsgiref.util.setup_testing_defaults(environ)
    statuses: List[str] = []
    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)

    response: Any = app(environ, start_response)
    try:
        body = b"".join(response)
    finally:
        response.close()  # request_finished: close_old_connections returns the connection
    assert statuses == ["200 OK"], statuses
    return body


def test_django_uses_the_expected_driver(server: PostgresServer) -> None:
    assert is_psycopg3 is (project.DRIVER == "psycopg")
    connections["default"].ensure_connection()
    module = type(connections["default"].connection).__module__
    assert module.split(".")[0] == project.DRIVER


def test_one_pool_per_alias_shared_by_copies_and_threads(server: PostgresServer) -> None:
    pool = _pool()
    assert _db("default").copy().pool is pool
    assert _pool("small") is not pool
    seen: List[Any] = []
    assert not _in_threads(2, lambda i: seen.append(_db("default").pool))
    assert seen == [pool, pool]
    assert pool.max_size == project.MAX_SIZE


def test_client_under_16_threads_stays_within_max_size(
    server: PostgresServer, admin: Any
) -> None:
    pool = _pool()
    zones: List[str] = []

    def work(index: int) -> None:
        client = Client()
        for _ in range(5):
            response = client.get("/pid")
            assert response.status_code == 200
            zones.append(response.content.decode().split()[1])
        # The test client keeps the thread's connection across requests (so
        # TestCase transactions work): give it back as a thread's end does.

    with _Sampler(admin) as sampler:
        errors = _in_threads(16, work)
    assert not errors, errors
    assert len(zones) == 80
    assert set(zones) == {"Asia/Tokyo"}
    assert sampler.samples > 0
    assert 1 <= sampler.peak <= project.MAX_SIZE
    stats = pool.stats()
    assert stats["size"] <= project.MAX_SIZE
    assert stats["in_use"] == 0, stats


def test_connections_return_to_the_pool_at_request_end(
    server: PostgresServer, admin: Any
) -> None:
    pool = _pool()
    app = WSGIHandler()
    before = pool.stats()["requests"]
    held_after: List[Any] = []

    def work(index: int) -> None:
        for _ in range(10):
            _wsgi_get(app, "/pid")
            held_after.append(connections["default"].connection)

    with _Sampler(admin) as sampler:
        errors = _in_threads(16, work)
    assert not errors, errors
    assert held_after == [None] * 160  # closed by close_old_connections each time
    assert sampler.peak <= project.MAX_SIZE
    stats = pool.stats()
    assert stats["requests"] - before == 160
    assert stats["in_use"] == 0
    assert stats["size"] <= project.MAX_SIZE


def test_server_restart_is_survived(server: PostgresServer) -> None:
    app = WSGIHandler()
    first = _wsgi_get(app, "/pid")
    _in_threads(4, lambda i: _wsgi_get(app, "/pid"))  # several idle connections now
    server.restart()
    for _ in range(5):
        body = _wsgi_get(app, "/pid")
        assert body.split()[0] != first.split()[0]
    assert _pool().stats()["in_use"] == 0


def test_connection_returned_in_a_transaction_is_rolled_back(server: PostgresServer) -> None:
    conn = connections["small"]  # max_size 1: the next checkout gets the same backend
    with transaction.atomic(using="small"):
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items (name) VALUES ('kept?')")
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        conn.close()  # handed back in the middle of the transaction
    assert conn.connection is None
    assert _pid("small") == pid
    assert conn.get_autocommit()
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM items WHERE name = 'kept?'")
        assert cur.fetchone()[0] == 0


def test_connection_returned_in_error_is_reset(server: PostgresServer) -> None:
    conn = connections["small"]
    conn.set_autocommit(False)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
        with pytest.raises(DatabaseError):
            cur.execute("SELECT * FROM no_such_table")
    conn.close()  # in a failed transaction
    assert _pid("small") == pid
    assert conn.get_autocommit()
    raw = conn.connection
    status = raw.info.transaction_status
    assert int(status) == 0  # idle: no transaction, no error


def test_health_checks_and_a_killed_backend(server: PostgresServer, admin: Any) -> None:
    assert _pool("small").options.check is not None  # CONN_HEALTH_CHECKS: a round trip
    assert _pool().options.check is None
    pid = _pid("small")
    connections["small"].close()
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", [pid])
    assert _pid("small") != pid  # the dead one is never handed out


def test_time_zone_and_role_are_set_once_per_new_connection(server: PostgresServer) -> None:
    created: List[Any] = []

    def count(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias == "role":
            created.append(connection)

    connection_created.connect(count)
    try:
        for _ in range(6):
            with connections["role"].cursor() as cur:
                cur.execute("SELECT current_user, current_setting('TimeZone')")
                assert cur.fetchone() == (project.ROLE, "Asia/Tokyo")
            connections["role"].close()
    finally:
        connection_created.disconnect(count)
    assert len(created) == 6  # connection_created on every checkout
    opened = _pool("role").stats()["connections_opened"]
    assert 1 <= opened <= 2
    assert project.configure_calls() == opened  # configure once per new connection


def test_time_zone_change_replaces_the_pool_without_breaking_a_holder(
    server: PostgresServer,
) -> None:
    conn = connections["default"]
    conn.ensure_connection()
    old = _pool()
    with override_settings(TIME_ZONE="Europe/Paris"):
        assert old.closed
        with conn.cursor() as cur:  # the held connection still works, in the new zone
            cur.execute("SELECT current_setting('TimeZone')")
            assert cur.fetchone()[0] == "Europe/Paris"
        conn.close()  # back to the retired pool, which closes it
        wait_until(lambda: old.stats()["size"] == 0, "the retired pool to empty")
        assert _pool() is not old
        zones: List[str] = []
        assert not _in_threads(1, lambda i: zones.append(_zone()))
        assert zones == ["Europe/Paris"]
    assert _zone() == "Asia/Tokyo"


def _zone() -> str:
    with connections["default"].cursor() as cur:
        cur.execute("SELECT current_setting('TimeZone')")
        return str(cur.fetchone()[0])


def test_close_pool_frees_the_database_for_create_database(
    server: PostgresServer, admin: Any
) -> None:
    _in_threads(3, lambda i: _pid("tmpl"))
    assert project.backends(admin, project.TEMPLATE_DB) >= 1
    _db("tmpl").close_pool()
    with admin.cursor() as cur:
        # PostgreSQL refuses a template with sessions on it.
        cur.execute(f"CREATE DATABASE django_copy TEMPLATE {project.TEMPLATE_DB}")
        cur.execute("DROP DATABASE django_copy")


def test_pool_false_connects_directly(server: PostgresServer, admin: Any) -> None:
    conn = _db("direct")
    assert conn.pool is None
    first = _pid("direct")
    conn.close()
    wait_until(lambda: not _alive(admin, first), "the direct connection's backend to exit")
    assert _pid("direct") != first


def _alive(admin: Any, pid: int) -> bool:
    with admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        return bool(cur.fetchone()[0])


def _wrapper(alias: str, **changes: Any) -> Any:
    settings_dict = copy.deepcopy(connections.settings["default"])
    settings_dict.update(changes)
    return load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, alias)


def test_conn_max_age_with_a_pool_is_refused(server: PostgresServer) -> None:
    conn = _wrapper("aged", CONN_MAX_AGE=60)
    with pytest.raises(ImproperlyConfigured, match=r"persistent connections.*CONN_MAX_AGE"):
        conn.ensure_connection()
    assert conn.connection is None


def test_unknown_pool_option_is_refused(server: PostgresServer) -> None:
    options = {"pool": {"max_sise": 3}}
    conn = _wrapper("typo", OPTIONS=options)
    with pytest.raises(ImproperlyConfigured, match=r"unknown key 'max_sise'.*max_size"):
        conn.ensure_connection()
    conn = _wrapper("open", OPTIONS={"pool": {"open": True}})
    with pytest.raises(ImproperlyConfigured, match="remove 'open'"):
        conn.ensure_connection()
    conn = _wrapper("badsize", OPTIONS={"pool": {"max_size": "10"}})
    with pytest.raises(ImproperlyConfigured, match=r"'badsize': max_size must be an int"):
        conn.ensure_connection()
    conn = _wrapper("badcheck", OPTIONS={"pool": {"check": "SELECT 1"}})
    with pytest.raises(ImproperlyConfigured, match=r'\["check"\] .* must be a callable'):
        conn.ensure_connection()
    conn = _wrapper("misplaced", OPTIONS={"pool": True, "max_lifetime": 60})
    with pytest.raises(ImproperlyConfigured, match=r"max_lifetime in OPTIONS is a pool option"):
        conn.ensure_connection()


def test_the_settings_example_in_the_docs_works(server: PostgresServer) -> None:
    example = project.docs_example()["default"]
    assert example["ENGINE"] == "pgreservoir.django"
    conn = _db("docs")  # the example, with the test server's address (see _django_project)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    pool = _pool("docs")
    assert (pool.min_size, pool.max_size, pool.timeout) == (2, 10, 10.0)
    assert pool.options.check is None  # CONN_HEALTH_CHECKS False


def _in_child(results: Any) -> None:
    try:
        inherited = DatabaseWrapper._reservoir_registry.get("default")
        pool = _pool()
        results.put((inherited is not None, pool is not inherited, _pid() > 0))
    except BaseException as exc:
        results.put(repr(exc))
    finally:
        connections.close_all()


def test_a_forked_child_builds_its_own_pool(server: PostgresServer) -> None:
    # Django's parallel test runner forks its workers after setting up the
    # databases: a child must not use the pool (and sockets) of its parent.
    _pid()
    connections.close_all()
    context = multiprocessing.get_context("fork")
    results = context.SimpleQueue()
    child = context.Process(target=_in_child, args=(results,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert results.get() == (True, True, True)
    assert _pid() > 0  # the parent's pool still works


def test_settings_changed_in_place_get_a_new_pool(server: PostgresServer) -> None:
    # As Django does when a parallel test worker switches to its clone.
    conn = _db("tmpl")
    old = _pool("tmpl")
    saved = conn.settings_dict["NAME"]
    conn.settings_dict["NAME"] = project.DBNAME
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            assert cur.fetchone()[0] == project.DBNAME
        assert _pool("tmpl") is not old
        assert old.closed
    finally:
        conn.close()
        conn.settings_dict["NAME"] = saved


def test_a_thread_that_ends_without_closing_loses_no_slot(server: PostgresServer) -> None:
    pool = _pool()
    before = pool.stats()["connections_leaked"]
    # No close_all(): Django's connections of a finished thread are dropped
    # with its thread-local storage (freed by the garbage collector: Django's
    # wrappers are reference cycles), and the pool takes the slots back.
    threads = [threading.Thread(target=_pid) for _ in range(project.MAX_SIZE)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    gc.collect()  # (it may have run already, for some of them)
    wait_until(lambda: pool.stats()["in_use"] == 0, "the dropped connections' slots back")
    assert pool.stats()["connections_leaked"] - before == project.MAX_SIZE
    assert _pid() > 0
