"""A fake driver and a manual clock, to test the core and the blocking shell
without a server."""

from __future__ import annotations

import itertools
import threading
import weakref
from typing import Any, Dict, List, Optional

from pgreservoir._core import BROKEN, CLEAN, DIRTY, RESTORE, Core
from pgreservoir._sync.shell import SyncPool
from pgreservoir.options import PoolOptions, check_sizes


class FakeConn:
    """Just the state the shell's driver reads: closed flag, transaction, settings."""

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self._ids)
        self.closed = 0
        self.in_transaction = False
        self.autocommit = False
        self.dead = False  # the server side went away (its socket is readable)
        self.hang = threading.Event()  # set: round trips block until interrupted
        self.interrupted = threading.Event()

    def __repr__(self) -> str:
        return f"<FakeConn {self.id}>"


class FakeDriver:
    """Implements pgreservoir.drivers.Driver on FakeConn objects."""

    server_ports = (5432,)

    def __init__(self) -> None:
        # Weak: a test may drop a connection to see the pool reap it.
        self.opened: weakref.WeakSet[FakeConn] = weakref.WeakSet()
        self.fail_connect: Optional[BaseException] = None
        self.fail_clean = False
        self.connect_gate: Optional[threading.Event] = None  # block connects until set
        self.cleaned = 0
        self.restored = 0
        self.pings = 0
        self.probes = 0
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
        self.interrupt(conn)
        conn.closed = 1

    def interrupt(self, conn: Any) -> None:
        conn.dead = True
        conn.interrupted.set()

    def fileno(self, conn: Any) -> int:
        return -1

    def probe(self, conn: Any) -> Any:
        ref = weakref.ref(conn)  # a real probe does not keep its connection alive

        def probe(timeout: int) -> List[Any]:
            self.probes += 1
            target = ref()
            return [1] if target is None or target.dead else []

        return probe

    def adopt(self, conn: Any, owner: Any) -> None:
        conn.pool = owner

    def snapshot(self, conn: Any) -> Any:
        return (conn.autocommit,)

    def verdict(self, conn: Any, baseline: Any) -> int:
        if conn.closed:
            return BROKEN
        if conn.in_transaction:
            return DIRTY
        if conn.autocommit != baseline[0]:
            return RESTORE
        return CLEAN

    def restore(self, conn: Any, baseline: Any) -> None:
        self.restored += 1
        conn.autocommit = baseline[0]

    def _round_trip(self, conn: Any) -> None:
        if conn.hang.is_set():
            conn.interrupted.wait(30)
        if conn.dead or conn.closed:
            raise RuntimeError("server closed the connection")

    def clean(self, conn: Any, baseline: Any) -> None:
        self.cleaned += 1
        self._round_trip(conn)
        if self.fail_clean:
            raise RuntimeError("rollback failed")
        conn.in_transaction = False
        conn.autocommit = baseline[0]

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.in_transaction)

    def after_readable(self, conn: Any, probe: Any) -> Optional[bool]:
        return bool(conn.dead)

    def ping(self, conn: Any) -> None:
        self.pings += 1
        self._round_trip(conn)

    def describe(self) -> str:
        return "fake"

    def redact(self, text: str) -> str:
        return text.replace("s3cret", "***")

    def is_disconnect(self, exc: BaseException, conn: Any) -> bool:
        return bool(conn is not None and (conn.closed or conn.dead))

    def cursor_kwargs(self, rows: Optional[str], cursor_factory: Any) -> Dict[str, Any]:
        return {}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


_DEFAULTS: Dict[str, Any] = {
    "name": "test",
    "timeout": 5.0,
    "check_idle_after": None,
    # Strict FIFO, which most tests spell out step by step; the barging
    # tests set a window of their own.
    "barge_window": 0.0,
}


def make_core(
    *, min_size: int = 0, max_size: int = 4, inline: bool = False, lifo: bool = True,
    keep_idle: bool = True, **options: Any,
) -> Core:
    """A Core with test-friendly defaults and no jitter."""
    opts = PoolOptions(**{**_DEFAULTS, **options})
    return Core(
        opts,
        name=opts.name or "test",
        min_size=min_size,
        max_size=max_size,
        inline=inline,
        lifo=lifo,
        keep_idle=keep_idle,
        rng=lambda: 0.5,
    )


def make_shell(
    driver: Optional[FakeDriver] = None,
    *,
    clock: Any = None,
    start: bool = True,
    inline: bool = False,
    min_size: int = 0,
    max_size: int = 4,
    **options: Any,
) -> SyncPool:
    """A blocking shell over a FakeDriver with test-friendly defaults."""
    opts = PoolOptions(**{**_DEFAULTS, **options})
    lo, hi = check_sizes(min_size, max_size)
    core = Core(opts, name=opts.name or "test", min_size=lo, max_size=hi, inline=inline)
    events: List[Any] = []
    shell = SyncPool(
        core,
        driver or FakeDriver(),  # type: ignore[arg-type]
        opts,
        on_event=lambda kind, detail: events.append((kind, detail)),
        **({"clock": clock} if clock is not None else {}),
    )
    shell.events = events  # type: ignore[attr-defined]
    if start:
        shell.start()
    return shell


def check_invariant(shell: SyncPool) -> None:
    """The core's invariants, under the shell's lock."""
    with shell._lock:
        shell.core.check_invariants()
