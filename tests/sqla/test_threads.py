"""32 threads on 8 connections, SQLAlchemy Core and ORM: invariants hold, every thread served."""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List

import pytest
from sqlalchemy import Integer, String, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from pgreservoir.testing import PostgresServer

THREADS = 32
SIZE = 8
#: Operations in all (the run ends on a count, never on a clock).
TOTAL = 32 * 40


class _Base(DeclarativeBase):
    pass


class Item(_Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(32))


class _Ledger:
    """Who holds which DBAPI connection, from the pool's own events."""

    def __init__(self, engine: Engine) -> None:
        self.lock = threading.Lock()
        self.holders: Dict[int, str] = {}
        self.errors: List[str] = []
        self.peak = 0
        event.listen(engine, "checkout", self.checkout)
        event.listen(engine, "checkin", self.checkin)

    def checkout(self, dbapi_conn: Any, record: Any, proxy: Any) -> None:
        me = threading.current_thread().name
        with self.lock:
            other = self.holders.get(id(dbapi_conn))
            if other is not None:
                self.errors.append(f"handed to {me} while {other} held it")
            self.holders[id(dbapi_conn)] = me
            self.peak = max(self.peak, len(self.holders))

    def checkin(self, dbapi_conn: Any, record: Any) -> None:
        with self.lock:
            self.holders.pop(id(dbapi_conn), None)


def _run(work: Callable[[], None]) -> List[int]:
    """Run ``work`` in THREADS threads until TOTAL operations are done; ops per thread."""
    counts = [0] * THREADS
    done = [0]
    lock = threading.Lock()
    failures: List[BaseException] = []

    def loop(index: int) -> None:
        try:
            while True:
                with lock:
                    if done[0] >= TOTAL:
                        return
                    done[0] += 1
                work()
                counts[index] += 1
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=loop, args=(i,), name=f"worker-{i}") for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert not failures, failures[:3]
    return counts


def _check(
    engine: Engine, ledger: _Ledger, counts: List[int], server: PostgresServer, dbname: str
) -> None:
    assert not ledger.errors, ledger.errors[:3]
    assert sum(counts) == TOTAL
    # Every thread got its turns: none starved (QueuePool leaves most at 0 here).
    mean = TOTAL / THREADS
    assert min(counts) >= 0.2 * mean, sorted(counts)
    assert ledger.peak <= SIZE
    pool: Any = engine.pool
    assert pool.checkedout() == 0  # no slot lost
    assert not ledger.holders
    stats = pool.stats()
    assert stats["in_use"] == 0
    assert stats["size"] <= SIZE
    assert server.connection_count(dbname) <= SIZE


@pytest.mark.parametrize("api", ["core", "orm"])
def test_32_threads_on_8_connections(
    make_engine: Callable[..., Engine], postgres_server: PostgresServer, url: str, api: str
) -> None:
    engine = make_engine(pool_size=SIZE, max_overflow=0, pool_timeout=60)
    _Base.metadata.create_all(engine)
    ledger = _Ledger(engine)
    dbname = url.rsplit("/", 1)[1]

    def core() -> None:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1

    def orm() -> None:
        with Session(engine) as session, session.begin():
            session.add(Item(owner=threading.current_thread().name))
            session.flush()
            assert session.query(Item).count() >= 1

    counts = _run(core if api == "core" else orm)
    _check(engine, ledger, counts, postgres_server, dbname)
    if api == "orm":
        with Session(engine) as session:
            assert session.query(Item).count() == TOTAL
