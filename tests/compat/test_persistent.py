"""PersistentConnectionPool: psycopg2 removed it in 2.8; pgreservoir.pool brings it back.

psycopg2 2.9 has no such class to compare with, so these tests check the
documented semantics: one connection per thread, keyed by the thread.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List

import psycopg2.pool
import pytest

import pgreservoir.pool

from ._support import DEADLINE, in_use, scalar

MakePool = Callable[..., Any]
PERSISTENT = "PersistentConnectionPool"


def test_signatures() -> None:
    import inspect

    cls = pgreservoir.pool.PersistentConnectionPool
    assert issubclass(cls, pgreservoir.pool.AbstractConnectionPool)
    assert list(inspect.signature(cls.putconn).parameters) == ["self", "conn", "close"]


def test_a_thread_gets_the_same_connection_until_it_puts_it_back(make_ours: MakePool) -> None:
    pool = make_ours(1, 3, cls=PERSISTENT)
    conn = pool.getconn()
    assert pool.getconn() is conn
    assert in_use(pool) == 1
    pool.putconn()  # conn may be omitted: the thread's connection
    assert in_use(pool) == 0
    again = pool.getconn()
    assert again is conn  # LIFO: the same idle connection, freshly assigned
    pool.putconn(again, True)  # psycopg2's positional (conn, close)
    assert again.closed


def test_threads_get_different_connections(make_ours: MakePool) -> None:
    pool = make_ours(0, 4, cls=PERSISTENT)
    seen: Dict[int, List[Any]] = {}
    barrier = threading.Barrier(3)

    def work() -> None:
        first = pool.getconn()
        second = pool.getconn()
        barrier.wait(DEADLINE)  # all three hold their connection at once
        seen[threading.get_ident()] = [first, second, scalar(first, "SELECT pg_backend_pid()")]
        barrier.wait(DEADLINE)
        pool.putconn(first)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
        assert not thread.is_alive()
    assert len(seen) == 3
    assert all(first is second for first, second, _ in seen.values())
    assert len({id(first) for first, _, _ in seen.values()}) == 3
    assert len({pid for _, _, pid in seen.values()}) == 3
    assert in_use(pool) == 0


def test_putconn_without_a_connection_for_this_thread(make_ours: MakePool) -> None:
    pool = make_ours(1, 2, cls=PERSISTENT)
    with pytest.raises(psycopg2.pool.PoolError) as info:
        pool.putconn()
    assert str(info.value) == "trying to put unkeyed connection"


def test_putconn_of_another_threads_connection(make_ours: MakePool) -> None:
    pool = make_ours(1, 2, cls=PERSISTENT)
    mine = pool.getconn()
    taken: Dict[str, Any] = {}
    thread = threading.Thread(target=lambda: taken.setdefault("conn", pool.getconn()))
    thread.start()
    thread.join(DEADLINE)
    with pytest.raises(psycopg2.pool.PoolError):
        pool.putconn(taken["conn"])  # not this thread's connection: untouched
    assert in_use(pool) == 2
    pool.putconn(mine)


def test_getconn_takes_no_key(make_ours: MakePool) -> None:
    pool = make_ours(1, 2, cls=PERSISTENT)
    with pytest.raises(TypeError, match="by thread"):
        pool.getconn("key")


def test_exhausted_and_closed(make_ours: MakePool) -> None:
    pool = make_ours(1, 1, cls=PERSISTENT)
    held = pool.getconn()
    errors: List[BaseException] = []

    def other() -> None:
        try:
            pool.getconn()
        except psycopg2.pool.PoolError as exc:
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(DEADLINE)
    assert [str(e) for e in errors] == ["connection pool exhausted"]
    pool.closeall()
    assert held.closed
    with pytest.raises(psycopg2.pool.PoolError) as info:
        pool.putconn()
    assert str(info.value) == "connection pool is closed"
