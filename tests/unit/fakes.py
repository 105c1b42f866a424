"""A fake driver and a manual clock, to test the engine's bookkeeping without a server."""

from __future__ import annotations

import itertools
import threading
import weakref
from typing import Any, Optional

from pgreservoir._config import PoolConfig
from pgreservoir._core import Engine
from pgreservoir.driver import BROKEN, CLEAN, DIRTY


class FakeConn:
    """Just the state the engine's driver reads: closed flag, transaction, settings."""

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self._ids)
        self.closed = 0
        self.in_transaction = False
        self.autocommit = False
        self.dead = False  # the server side went away

    def __repr__(self) -> str:
        return f"<FakeConn {self.id}>"


class FakeDriver:
    """Implements pgreservoir.driver.Driver on FakeConn objects."""

    def __init__(self) -> None:
        # Weak: a test may drop a connection to see the pool reap it.
        self.opened: weakref.WeakSet[FakeConn] = weakref.WeakSet()
        self.fail_connect: Optional[BaseException] = None
        self.fail_clean = False
        self.connect_gate: Optional[threading.Event] = None  # block connects until set
        self.cleaned = 0
        self.pings = 0
        self._lock = threading.Lock()

    def connect(self) -> FakeConn:
        if self.connect_gate is not None:
            self.connect_gate.wait(10)
        if self.fail_connect is not None:
            raise self.fail_connect
        conn = FakeConn()
        with self._lock:
            self.opened.add(conn)
        return conn

    def open_count(self) -> int:
        with self._lock:
            return sum(1 for c in self.opened if not c.closed)

    def close(self, conn: Any) -> None:
        conn.closed = 1

    def force_close(self, conn: Any) -> None:
        conn.closed = 1

    def snapshot(self, conn: Any) -> Any:
        return (conn.autocommit,)

    def verdict(self, conn: Any, baseline: Any) -> int:
        if conn.closed or conn.dead:
            return BROKEN
        if conn.in_transaction or conn.autocommit != baseline[0]:
            return DIRTY
        return CLEAN

    def clean(self, conn: Any, baseline: Any) -> None:
        self.cleaned += 1
        if self.fail_clean:
            raise RuntimeError("rollback failed")
        conn.in_transaction = False
        conn.autocommit = baseline[0]

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.in_transaction)

    def looks_dead(self, conn: Any) -> bool:
        return bool(conn.closed or conn.dead)

    def ping(self, conn: Any) -> None:
        self.pings += 1
        if conn.dead:
            raise RuntimeError("server closed the connection")

    def describe(self) -> str:
        return "fake"

    def is_disconnect(self, exc: BaseException, conn: Any) -> bool:
        return bool(conn is not None and (conn.closed or conn.dead))


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_engine(
    driver: Optional[FakeDriver] = None,
    *,
    clock: Any = None,
    start: bool = True,
    open_inline: bool = False,
    **options: Any,
) -> Engine:
    """An Engine over a FakeDriver with test-friendly defaults."""
    settings: dict[str, Any] = {
        "name": "test",
        "min_size": 0,
        "max_size": 4,
        "timeout": 5.0,
        "max_waiting": 0,
        "max_lifetime": 3600.0,
        "max_idle": 600.0,
        "check_idle_after": None,
        "configure": None,
        "reset": None,
    }
    settings.update(options)
    engine = Engine(
        driver or FakeDriver(),
        PoolConfig.build(**settings),
        open_inline=open_inline,
        **({"clock": clock} if clock is not None else {}),
    )
    if start:
        engine.start()
    return engine


def check_invariant(engine: Engine) -> None:
    """size == idle + in_use + reserved + opening, and every container agrees with states."""
    with engine._lock:
        total = len(engine._idle) + len(engine._in_use) + engine._reserved + engine._opening
        assert engine._size == total, (engine._size, total)
        assert engine._pending <= engine._opening
        assert engine._to_open <= engine._pending
        assert not (engine._idle and engine._waiters), "idle connections while callers wait"
        idle_ids = [e.key for e in engine._idle]
        assert len(set(idle_ids)) == len(idle_ids), "an entry is idle twice"
        assert not set(idle_ids) & set(engine._in_use), "an entry is both idle and in use"
