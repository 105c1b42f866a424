"""A steady workload for the chaos suite: worker threads through a ConnectionPool
(:class:`Workload`), or tasks through an AsyncConnectionPool (:class:`AsyncWorkload`).

Every worker loops over one short write transaction::

    conn = pool.getconn(timeout=request_timeout)
    INSERT INTO chaos_commits (id, fault) VALUES (<unique id>, <fault>)
    conn.commit()            # the id counts as acknowledged only once this returned
    pool.putconn(conn)

and records every request: when it started, when it got a connection, when
it ended, and how (``ok`` or the error). Around that loop the workload checks
what the pool must never do:

* hand one connection to two callers at once (an ownership map keyed by the
  connection, claimed after getconn and released before putconn);
* break its own gauges (a monitor samples ``stats()``: ``size <= max_size``,
  ``idle + in_use + opening <= size``).

The pool has no query timeout (nor has psycopg2): on a black-holed network a
query on an open connection waits forever, and on a real network only the
kernel (``tcp_user_timeout``) would end it. Through an in-process proxy the
kernel acknowledges everything, so the monitor plays that role: a request
still in a query ``io_timeout`` seconds after it got its connection has the
socket shut down under it (as ``tcp_user_timeout`` would), and the request
fails with ``OperationalError``. Those are counted as ``io_kills``; the chaos
tests expect them only for the black hole.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import socket
import threading
import time
from typing import Any, Callable, Coroutine, Dict, List, Optional, TypeVar

import psycopg
import psycopg2

from pgreservoir import AsyncConnectionPool, PoolClosed, PoolTimeout

T = TypeVar("T")

# Unique ids across every workload of the process (one table per server).
_ids = itertools.count(1)


class Request:
    """What happened to one request (times are time.monotonic())."""

    __slots__ = ("cause", "detail", "killed", "kind", "rid", "t_end", "t_got", "t_start")

    def __init__(self, rid: int, t_start: float) -> None:
        self.rid = rid
        self.t_start = t_start
        self.t_got: Optional[float] = None  # when getconn returned
        self.t_end = t_start
        # ok, PoolTimeout, PoolClosed, OperationalError, DatabaseError or unexpected:<type>
        self.kind = "running"
        self.detail = ""  # exception type and first line of its message
        self.cause = ""  # PoolTimeout's __cause__ (the last connect error), if any
        self.killed = False  # its query outlived io_timeout and was cut off

    @property
    def duration(self) -> float:
        return self.t_end - self.t_start


class _Slot:
    """The connection a worker is using for a query, so the monitor can cut it off."""

    __slots__ = ("conn", "deadline", "killed", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: Any = None
        self.deadline = 0.0
        self.killed = False

    def arm(self, conn: Any, deadline: float) -> None:
        with self.lock:
            self.conn, self.deadline, self.killed = conn, deadline, False

    def disarm(self) -> bool:
        """Stop watching (before the connection goes back); whether it was cut off."""
        with self.lock:
            self.conn = None
            return self.killed

    def cut_off_if_late(self, now: float) -> bool:
        # Under the slot lock, so the connection cannot have been returned
        # (and handed to someone else) meanwhile.
        with self.lock:
            if self.conn is None or self.killed or now < self.deadline:
                return False
            self.killed = True
            try:
                sock = socket.socket(fileno=os.dup(self.conn.fileno()))
            except Exception:  # closed already (psycopg2 or psycopg errors)
                return True
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            finally:
                sock.close()
            return True


class Workload:
    """``threads`` workers running short transactions through ``pool``."""

    def __init__(
        self,
        pool: Any,
        *,
        fault: str,
        threads: int = 12,
        request_timeout: float = 1.5,
        io_timeout: float = 2.5,
        think: float = 0.005,
    ) -> None:
        self.pool = pool
        self.fault = fault
        self.request_timeout = request_timeout
        self.io_timeout = io_timeout
        self._think = think
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        # id(conn) -> worker index, for connections a worker holds right now.
        self._owners: Dict[int, int] = {}
        self.violations: List[str] = []  # double hand-outs, broken gauges
        self.records: List[Request] = []  # finished requests (list.append is atomic)
        self.acked: List[int] = []  # ids whose commit() returned
        self.io_kills = 0
        self.peak_size = 0
        self._slots = [_Slot() for _ in range(threads)]
        self._workers = [
            threading.Thread(target=self._work, args=(i,), name=f"chaos-worker-{i}", daemon=True)
            for i in range(threads)
        ]
        self._monitor = threading.Thread(target=self._watch, name="chaos-monitor", daemon=True)

    # -- control ------------------------------------------------------------

    def start(self) -> None:
        self._monitor.start()
        for worker in self._workers:
            worker.start()

    def stop(self, deadline: float) -> List[str]:
        """Stop the workers and the monitor; names of threads still alive at ``deadline``."""
        self._stopping.set()
        threads = [t for t in [*self._workers, self._monitor] if t.ident is not None]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in threads if t.is_alive()]

    def wait_until(self, predicate: Callable[[], bool], what: str, timeout: float) -> float:
        """Poll ``predicate`` until true (returns the time) or fail after ``timeout`` s."""
        end = time.monotonic() + timeout
        while not predicate():
            now = time.monotonic()
            if now > end:
                raise AssertionError(
                    f"[{self.fault}] timed out after {timeout:.0f} s waiting for {what}; "
                    f"{self.summary_line()}; pool {self.pool.stats()}"
                )
            time.sleep(0.01)
        return time.monotonic()

    # -- queries over the records -------------------------------------------

    def finished(self) -> List[Request]:
        return list(self.records)

    def successes_after(self, when: float) -> int:
        return sum(1 for r in self.finished() if r.kind == "ok" and r.t_end >= when)

    def first_success_after(self, when: float) -> Optional[float]:
        ends = [r.t_end for r in self.finished() if r.kind == "ok" and r.t_end >= when]
        return min(ends) if ends else None

    def failures_after(self, when: float, kind: Optional[str] = None) -> List[Request]:
        return [
            r
            for r in self.finished()
            if r.kind != "ok" and r.t_end >= when and (kind is None or r.kind == kind)
        ]

    def counts(self) -> Dict[str, int]:
        result: Dict[str, int] = {}
        for r in self.finished():
            result[r.kind] = result.get(r.kind, 0) + 1
        return dict(sorted(result.items()))

    def summary_line(self) -> str:
        return f"requests {len(self.records)} {self.counts()} io_kills {self.io_kills}"

    # -- the threads ----------------------------------------------------------

    def _work(self, index: int) -> None:
        slot = self._slots[index]
        rng = random.Random(index)
        while not self._stopping.is_set():
            if self._request(index, slot) == "PoolClosed":
                return  # a closed pool never serves again
            # Pacing (not synchronization): keeps the CPU for the pool and server.
            time.sleep(rng.uniform(0.0, self._think))

    def _finish(self, record: Request, exc: Optional[BaseException]) -> str:
        """Classify how a request ended (``exc`` None: it succeeded) and keep it."""
        if exc is None:
            record.kind = "ok"
        elif isinstance(exc, PoolTimeout):
            record.kind = "PoolTimeout"
            if exc.__cause__ is not None:
                record.cause = _describe(exc.__cause__)
        elif isinstance(exc, PoolClosed):
            record.kind = "PoolClosed"
        elif isinstance(exc, (psycopg2.OperationalError, psycopg.OperationalError)):
            record.kind = "OperationalError"
        else:  # anything else is a finding: kept and reported
            # psycopg2 raises a bare DatabaseError (not OperationalError) for a lost
            # connection when another thread closed it at that moment (its close()
            # clears the libpq handle before the error is classified).
            plain = type(exc) in (psycopg2.DatabaseError, psycopg.DatabaseError)
            record.kind = "DatabaseError" if plain else f"unexpected:{type(exc).__name__}"
        if exc is not None:
            record.detail = _describe(exc)
        record.t_end = time.monotonic()
        self.records.append(record)
        return record.kind

    def _request(self, index: int, slot: _Slot) -> str:
        record = Request(next(_ids), time.monotonic())
        try:
            conn = self.pool.getconn(timeout=self.request_timeout)
            record.t_got = time.monotonic()
            self._claim(conn, index)
            try:
                slot.arm(conn, record.t_got + self.io_timeout)
                try:
                    with conn.cursor() as cur:
                        cur.execute(
                            "INSERT INTO chaos_commits (id, fault) VALUES (%s, %s)",
                            (record.rid, self.fault),
                        )
                    conn.commit()
                finally:
                    record.killed = slot.disarm()
                self.acked.append(record.rid)
            finally:
                self._unclaim(conn, index)
                self.pool.putconn(conn)
        except Exception as exc:
            return self._finish(record, exc)
        return self._finish(record, None)

    def _claim(self, conn: Any, index: int) -> None:
        with self._lock:
            other = self._owners.get(id(conn))
            if other is not None:
                self.violations.append(
                    f"connection {id(conn):#x} handed to worker {index} while worker {other} "
                    "still held it"
                )
            self._owners[id(conn)] = index

    def _unclaim(self, conn: Any, index: int) -> None:
        with self._lock:
            if self._owners.get(id(conn)) == index:
                del self._owners[id(conn)]

    def _watch(self) -> None:
        max_size = self.pool.max_size
        while not self._stopping.wait(0.02):
            now = time.monotonic()
            for slot in self._slots:
                if slot.cut_off_if_late(now):
                    self.io_kills += 1
            stats = self.pool.stats()
            self.peak_size = max(self.peak_size, stats["size"])
            if stats["size"] > max_size:
                self.violations.append(f"pool size {stats['size']} > max_size {max_size}")
            if stats["idle"] + stats["in_use"] + stats["opening"] > stats["size"]:
                self.violations.append(f"gauges do not add up: {stats}")


def _describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


class LoopPool:
    """An AsyncConnectionPool on an event loop of its own (a thread), driven from
    the chaos suite's synchronous code: stats(), wait() and close() block."""

    def __init__(self, dsn: str, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="chaos-aio-loop", daemon=True
        )
        self._thread.start()

        async def make() -> AsyncConnectionPool:
            return AsyncConnectionPool(dsn, **options)

        self.pool = self.call(make())
        self.name = self.pool.name
        self.max_size = self.pool.max_size

    def call(self, coro: Coroutine[Any, Any, T], timeout: Optional[float] = None) -> T:
        """Run ``coro`` on the pool's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stats(self) -> Dict[str, Any]:
        async def read() -> Dict[str, Any]:
            return self.pool.stats()

        return self.call(read())

    def wait(self, timeout: float) -> None:
        self.call(self.pool.wait(timeout))

    def close(self, timeout: float = 5.0) -> None:
        self.call(self.pool.close(timeout))

    def tasks(self) -> int:
        """The pool's tasks still running."""

        async def count() -> int:
            return len(self.pool._shell.tasks)

        return self.call(count())

    def shutdown(self) -> None:
        """Stop the loop and its thread (after close())."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class AsyncWorkload(Workload):
    """The same requests, as ``tasks`` asyncio tasks on the pool's loop."""

    def __init__(self, pool: LoopPool, *, fault: str, threads: int = 12, **kwargs: Any) -> None:
        super().__init__(pool, fault=fault, threads=threads, **kwargs)
        self._loop_pool = pool
        self._main: Optional[Any] = None
        self._workers = []  # tasks, not threads (the monitor stays a thread)

    def start(self) -> None:
        self._monitor.start()
        self._main = asyncio.run_coroutine_threadsafe(self._run(), self._loop_pool.loop)

    def stop(self, deadline: float) -> List[str]:
        self._stopping.set()
        alive = []
        if self._main is not None:
            try:
                self._main.result(max(0.0, deadline - time.monotonic()))
            except Exception:
                alive.append("chaos-aio-workers")
        self._monitor.join(max(0.0, deadline - time.monotonic()))
        if self._monitor.is_alive():
            alive.append(self._monitor.name)
        return alive

    async def _run(self) -> None:
        await asyncio.gather(*(self._awork(i) for i in range(len(self._slots))))

    async def _awork(self, index: int) -> None:
        slot = self._slots[index]
        rng = random.Random(index)
        while not self._stopping.is_set():
            if await self._arequest(index, slot) == "PoolClosed":
                return
            await asyncio.sleep(rng.uniform(0.0, self._think))

    async def _arequest(self, index: int, slot: _Slot) -> str:
        pool = self._loop_pool.pool
        record = Request(next(_ids), time.monotonic())
        try:
            conn = await pool.getconn(timeout=self.request_timeout)
            record.t_got = time.monotonic()
            self._claim(conn, index)
            try:
                slot.arm(conn, record.t_got + self.io_timeout)
                try:
                    await conn.execute(
                        "INSERT INTO chaos_commits (id, fault) VALUES (%s, %s)",
                        (record.rid, self.fault),
                    )
                    await conn.commit()
                finally:
                    record.killed = slot.disarm()
                self.acked.append(record.rid)
            finally:
                self._unclaim(conn, index)
                await pool.putconn(conn)
        except Exception as exc:
            return self._finish(record, exc)
        return self._finish(record, None)
