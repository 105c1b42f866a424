"""A steady multi-threaded workload for the chaos suite.

Every worker thread loops over one short write transaction::

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

import itertools
import os
import random
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import psycopg2

from pgreservoir import ConnectionPool, PoolClosed, PoolTimeout

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
            except (OSError, ValueError, psycopg2.Error):
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
        pool: ConnectionPool,
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
                record.kind = "ok"
            finally:
                self._unclaim(conn, index)
                self.pool.putconn(conn)
        except PoolTimeout as exc:
            record.kind = "PoolTimeout"
            record.detail = _describe(exc)
            if exc.__cause__ is not None:
                record.cause = _describe(exc.__cause__)
        except PoolClosed as exc:
            record.kind = "PoolClosed"
            record.detail = _describe(exc)
        except psycopg2.OperationalError as exc:
            record.kind = "OperationalError"
            record.detail = _describe(exc)
        except Exception as exc:  # anything else is a finding: kept and reported
            # psycopg2 raises a bare DatabaseError (not OperationalError) for a lost
            # connection when another thread closed it at that moment (its close()
            # clears the libpq handle before the error is classified).
            plain = type(exc) is psycopg2.DatabaseError
            record.kind = "DatabaseError" if plain else f"unexpected:{type(exc).__name__}"
            record.detail = _describe(exc)
        record.t_end = time.monotonic()
        self.records.append(record)
        return record.kind

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
