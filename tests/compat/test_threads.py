"""Many threads on one ThreadedConnectionPool: no double hand-out, no leak, no hang."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List

import psycopg2.pool

from ._support import DEADLINE, in_use, open_count, scalar
from .conftest import Impl

MakePool = Callable[..., Any]


class Ledger:
    """Who holds which connection; records any connection handed to two threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: Dict[int, int] = {}
        self.problems: List[str] = []

    def take(self, conn: Any) -> None:
        me = threading.get_ident()
        with self._lock:
            other = self._owner.setdefault(id(conn), me)
            if other != me:
                self.problems.append(f"connection {id(conn):#x} handed to two threads")

    def give_back(self, conn: Any) -> None:
        with self._lock:
            self._owner.pop(id(conn), None)


def run_threads(count: int, work: Callable[[int], None]) -> List[BaseException]:
    """Run ``work(i)`` in ``count`` threads; return their exceptions; fail on a hang."""
    errors: List[BaseException] = []
    start = threading.Barrier(count)

    def body(i: int) -> None:
        try:
            start.wait(DEADLINE)
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    end = time.monotonic() + 60.0
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    hung = sum(thread.is_alive() for thread in threads)
    assert hung == 0, f"{hung} threads still running: a hang"
    return errors


def test_many_threads_retrying_on_exhausted(impl: Impl, make_pool: MakePool) -> None:
    """psycopg2-style use: getconn raises at once when all are busy; callers retry."""
    pool = make_pool(2, 6)
    ledger = Ledger()
    rounds = 60

    def work(i: int) -> None:
        done = 0
        deadline = time.monotonic() + 50.0
        while done < rounds:
            try:
                conn = pool.getconn()
            except psycopg2.pool.PoolError as exc:
                if str(exc) != "connection pool exhausted" or time.monotonic() > deadline:
                    raise
                time.sleep(0)  # yield, then retry
                continue
            ledger.take(conn)
            if done % 10 == 0:
                assert scalar(conn, "SELECT %s", (i,)) == i
            ledger.give_back(conn)
            pool.putconn(conn)
            done += 1

    errors = run_threads(16, work)
    assert errors == []
    assert ledger.problems == []
    assert in_use(pool) == 0
    assert open_count(pool) <= 6


def test_many_threads_waiting_in_line(make_ours: MakePool) -> None:
    """With PoolOptions(timeout=...) callers wait instead: nobody ever fails."""
    pool = make_ours(2, 6, pool_options={"timeout": 30.0})
    ledger = Ledger()

    def work(i: int) -> None:
        for n in range(150):
            conn = pool.getconn()
            ledger.take(conn)
            if n % 25 == 0:
                assert scalar(conn, "SELECT %s", (i,)) == i
            ledger.give_back(conn)
            pool.putconn(conn)

    errors = run_threads(32, work)
    assert errors == []
    assert ledger.problems == []
    stats = pool.stats()
    assert stats["in_use"] == 0
    assert stats["waiting"] == 0
    assert stats["size"] <= 6
    assert stats["timeouts"] == 0


def test_many_threads_with_keys_and_helpers(make_ours: MakePool) -> None:
    """Keyed checkouts, the connection() helper and plain getconn, all at once."""
    pool = make_ours(1, 8, pool_options={"timeout": 30.0})
    ledger = Ledger()

    def work(i: int) -> None:
        for n in range(60):
            if i % 3 == 0:
                key = f"worker-{i}"
                conn = pool.getconn(key)
                assert pool.getconn(key) is conn
                ledger.take(conn)
                ledger.give_back(conn)
                pool.putconn(conn, key=key)
            elif i % 3 == 1:
                with pool.connection() as conn:
                    ledger.take(conn)
                    if n % 20 == 0:
                        assert scalar(conn, "SELECT 1") == 1
                    ledger.give_back(conn)
            else:
                conn = pool.getconn()
                ledger.take(conn)
                ledger.give_back(conn)
                pool.putconn(conn)

    errors = run_threads(24, work)
    assert errors == []
    assert ledger.problems == []
    assert pool.stats()["in_use"] == 0
