"""The pool engine: every checkout and check-in decision of every pool class.

Design notes
------------
* **One lock, short critical sections.** All mutable state below is guarded by
  ``_lock``. Under it the engine only moves entries between containers and
  bumps counters; connecting, closing, rolling back, liveness checks and user
  callbacks all run outside it, on connections the engine has first marked
  RESERVED (or on slots counted in ``_opening``), so no other caller can touch
  them meanwhile.
* **Fair line, direct hand-off.** A caller that finds no idle connection joins
  ``_waiters`` (FIFO). A connection that comes back while someone waits is
  assigned to the oldest waiter inside the same critical section, and the
  waiter's private lock is released: the returning thread cannot take it back
  and a newcomer cannot barge past the line, because idle connections and
  waiters never coexist. Ownership is recorded before the waiter wakes, so a
  waiter that times out at the same moment finds, under the lock, that it was
  served after all; nothing is handed out twice and nothing is lost.
* **Growth in the background.** While callers wait and the pool is below
  ``max_size``, slots are reserved and the maintenance thread opens
  connections one at a time; each new connection goes to the oldest waiter.
  A waiter is therefore served by whichever comes first: a returned
  connection or a new one, and a slow connect never blocks the lock. The
  psycopg2-compatible classes use ``open_inline``: a caller that finds room
  opens its own connection synchronously, as psycopg2.pool does.
* **Cheap fast path.** One clock read and one lock acquisition per checkout
  and per check-in; no allocation when a connection is idle; the zero-round-
  trip liveness check (a ``select`` on the socket, ~0.7-1.5 us measured) is
  skipped for a connection returned less than ``LIVENESS_SKIP`` seconds ago.
"""

from __future__ import annotations

import functools
import math
import os
import random
import sys
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, Type, Union

from ._config import PoolConfig, check_sizes
from ._entry import CloseReason, Entry, State, Waiter
from .driver import BROKEN, CLEAN, DIRTY, Driver
from .errors import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from .maintenance import Maintainer
from .stats import WaitHistogram

__all__ = ["LIFETIME_JITTER", "LIVENESS_SKIP", "Engine"]

# Every live engine, so that a fork can reset them in the child.
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()

#: A connection returned to the pool less than this many seconds ago is handed
#: out again without the socket check (it was working a moment ago). Longer
#: idle connections get a zero-round-trip check before every hand-out.
LIVENESS_SKIP = 0.001

#: max_lifetime is shortened by a random fraction up to this much per
#: connection, so connections opened together do not all expire together.
LIFETIME_JITTER = 0.05

# Release verdicts beyond the driver's CLEAN / DIRTY / BROKEN.
_CLOSE = 3  # the caller asked for it to be closed
_EXPIRE = 4  # past max_lifetime

_IDLE = State.IDLE
_IN_USE = State.IN_USE
_RESERVED = State.RESERVED
_CLOSED = State.CLOSED

EventSink = Callable[[str, str], None]

# What _take_locked() hands to the slow path: an entry to vet, a place in
# line, or None (a slot reserved for the caller to open inline).
_Taken = Union[Entry, Waiter, None]


def _no_events(kind: str, detail: str) -> None:
    pass


class Engine:
    """Connection bookkeeping shared by ConnectionPool and the psycopg2-compatible pools."""

    def __init__(
        self,
        driver: Driver,
        config: PoolConfig,
        *,
        open_inline: bool = False,
        clock: Callable[[], float] = time.monotonic,
        on_event: EventSink = _no_events,
    ) -> None:
        self._driver = driver
        self._verdict = driver.verdict  # bound once: called on every check-in
        self.name = config.name
        self._clock = clock
        self._on_event = on_event
        self._open_inline = open_inline
        self._timeout = config.timeout
        self._max_waiting = config.max_waiting
        self._max_lifetime = config.max_lifetime
        self._max_idle = config.max_idle
        self._check_idle_after = config.check_idle_after
        self._configure = config.configure
        self._reset = config.reset
        self._fail_fast = config.fail_fast
        self._reconnect_timeout = config.reconnect_timeout
        self._reconnect_failed = config.reconnect_failed
        self._leak_threshold = config.leak_threshold
        self._check_idle_interval = config.check_idle_interval

        self._lock = threading.Lock()
        # Signalled (rarely) when connections finish opening or closing, for
        # wait() and close(); never touched on the fast path.
        self._changed = threading.Condition(self._lock)

        # --- State, all guarded by _lock -----------------------------------
        # _idle     free connections, most recently returned last (LIFO reuse;
        #           the oldest sit at the front and are the first to retire)
        # _in_use   id(conn) -> entry, for connections a caller holds
        # _waiters  callers in line, oldest first; non-empty only while _idle
        #           is empty (every arrival is handed to the oldest waiter)
        # _reserved entries the pool holds (being vetted, cleaned or closed)
        # _opening  slots reserved for connections being opened
        # _pending  of those, opens requested from the maintenance thread
        # _to_open  of those, opens the maintenance thread has not started
        # Invariant: _size == len(_idle) + len(_in_use) + _reserved + _opening,
        # and _size <= _max_size except after resize() shrank the pool (the
        # surplus is closed as it comes back).
        self._idle: List[Entry] = []
        self._in_use: Dict[int, Entry] = {}
        self._waiters: Deque[Waiter] = deque()
        self._reserved = 0
        self._opening = 0
        self._pending = 0
        self._to_open = 0
        self._size = 0
        self._min_size = config.min_size
        self._max_size = config.max_size
        # Whether close() was called. A plain attribute, not a property, as
        # the facades read it on their check-in paths; only close() sets it.
        self.closed = False
        # Connections still out when close() gave up waiting; closed by force.
        # A late putconn() of one of them is accepted silently.
        self._forced: Dict[int, Entry] = {}
        self._last_error: Optional[BaseException] = None
        self._connect_failing = False
        self._failing_since = 0.0  # start of the current run of failed connects
        self._gave_up = False  # reconnect_failed already called for this run
        # Idle connections returned before this time get a round-trip check
        # before hand-out: set when a connection turns out dead, because its
        # siblings probably died with it (server restart, network reset).
        self._suspect_before = -math.inf
        # Keys of handed-out connections that were garbage-collected. Filled
        # by weakref callbacks, which may run anywhere (even inside our own
        # critical section, when a collection triggers): list.append is atomic
        # and takes no lock, and maintenance drains it.
        self._collected: List[int] = []
        # Every connection this engine opened and that still exists, wherever
        # it is (idle, in use, being checked): what a forked child must disown.
        self._every_conn: weakref.WeakSet[Any] = weakref.WeakSet()
        self._started = False
        # Counters since the pool opened.
        self._requests = 0
        self._requests_waited = 0
        self._timeouts = 0
        self._rejected = 0
        self._opened = 0
        self._closed_count = 0
        self._connect_errors = 0
        self._lost = 0
        self._leaked = 0
        self._waits = WaitHistogram()

        periods = [config.max_idle, config.max_lifetime]
        periods += [p for p in (config.leak_threshold, config.check_idle_interval) if p]
        self._interval = min(1.0, max(0.05, min(periods) / 2.0))
        self._maintainer = self._new_maintainer()
        _ENGINES.add(self)

    def _new_maintainer(self) -> Maintainer:
        return Maintainer(self.name, self._open_one, self.housekeep, self._interval)

    # ------------------------------------------------------------------
    # Life cycle
    # ------------------------------------------------------------------

    def start(self) -> None:
        """Request ``min_size`` connections in the background and start maintenance."""
        with self._lock:
            self._started = True
            self._maybe_refill()
        self._maintainer.start()

    def fill_inline(self) -> None:
        """Open ``min_size`` connections now, in this thread (psycopg2.pool semantics).

        A connection error propagates; connections opened so far are closed.
        """
        opened: List[Entry] = []
        try:
            for _ in range(self._min_size):
                with self._lock:
                    self._size += 1
                    self._opening += 1
                opened.append(self._open_reserved())
        except BaseException:
            for entry in opened:
                self._driver.close(entry.conn)
            with self._lock:  # the failed slot was released by _open_reserved
                self._size -= len(opened)
                self._opening -= len(opened)
            raise
        with self._lock:
            self._opening -= len(opened)
            for entry in opened:
                entry.state = _IDLE
                self._idle.append(entry)
            self._opened += len(opened)

    @property
    def min_size(self) -> int:
        """Connections kept open."""
        return self._min_size

    @property
    def max_size(self) -> int:
        """Most connections the pool opens at once."""
        return self._max_size

    @property
    def timeout(self) -> float:
        """Default wait for getconn(), in seconds."""
        return self._timeout

    # ------------------------------------------------------------------
    # Checkout
    # ------------------------------------------------------------------

    def acquire(self, timeout: Optional[float] = None) -> Any:
        """Hand out a connection, waiting in line up to ``timeout`` seconds.

        ``None`` means the pool's timeout; ``0`` means do not wait.
        """
        now = self._clock()
        # -- critical section: the fast path (an idle connection, just used).
        # acquire()/try/finally rather than `with`: on CPython 3.11 the
        # context-manager protocol of a Lock costs twice the lock itself, and
        # this section runs on every checkout.
        lock = self._lock
        lock.acquire()
        try:
            self._requests += 1
            idle = self._idle
            if idle:
                entry = idle[-1]
                if entry.expires > now and now - entry.last_used < LIVENESS_SKIP:
                    idle.pop()
                    entry.state = _IN_USE
                    entry.taken_at = now
                    self._in_use[entry.key] = entry
                    conn = entry.conn
                    entry.conn = None
                    return conn
            # Off the fast path: close() empties _idle in the critical section
            # that sets closed, and nothing is added to it afterwards.
            if self.closed:
                self._requests -= 1
                raise self._closed_error()
            taken = self._take_locked(now, timeout)
        finally:
            lock.release()
        return self._acquire_slow(taken, now, timeout)

    def _take_locked(self, now: float, timeout: Optional[float]) -> _Taken:
        """Under the lock: pop an idle entry to vet, reserve an inline slot, or line up."""
        if self._idle:
            entry = self._idle.pop()
            entry.state = _RESERVED
            self._reserved += 1
            return entry
        if self._open_inline and not self._waiters:
            if self._size < self._max_size:
                self._size += 1
                self._opening += 1
                return None
            if self._to_open:
                # The free slot is held only by a background open that has not
                # started: open it in this thread instead, as psycopg2.pool would,
                # rather than time out a caller of a pool with nothing in use.
                self._to_open -= 1
                self._pending -= 1
                return None
        if timeout is None:
            timeout = self._timeout
        if timeout <= 0 or (self._fail_fast and self._connect_failing):
            self._timeouts += 1
            raise self._timeout_error(0.0)
        if self._max_waiting and len(self._waiters) >= self._max_waiting:
            self._rejected += 1
            raise self._error(
                TooManyRequests,
                f"{len(self._waiters)} callers already waiting (max_waiting="
                f"{self._max_waiting}); retry later or raise max_waiting",
            )
        waiter = Waiter(threading.Lock(), now)
        waiter.lock.acquire()
        self._waiters.append(waiter)
        self._requests_waited += 1
        self._maybe_grow()
        return waiter

    def _acquire_slow(self, taken: _Taken, now: float, timeout: Optional[float]) -> Any:
        deadline = now + (self._timeout if timeout is None else timeout)
        while isinstance(taken, Entry):
            conn = self._vet(taken, now)
            if conn is not None:
                return conn
            now = self._clock()
            with self._lock:
                if self.closed:
                    raise self._closed_error()
                taken = self._take_locked(now, max(0.0, deadline - now))
        if taken is None:
            return self._open_for_caller()
        return self._wait(taken, now, deadline)

    def _vet(self, entry: Entry, now: float) -> Any:
        """Check a RESERVED idle entry; hand it out (return conn) or discard it (None)."""
        reason: Optional[CloseReason] = None
        if entry.expires <= now:
            reason = CloseReason.EXPIRED
        else:
            idle_for = now - entry.last_used
            if idle_for >= LIVENESS_SKIP:
                if self._driver.looks_dead(entry.conn):
                    reason = CloseReason.DEAD
                elif entry.last_used <= self._suspect_before or (
                    self._check_idle_after is not None and idle_for >= self._check_idle_after
                ):
                    try:
                        self._driver.ping(entry.conn)
                    except Exception:
                        reason = CloseReason.DEAD
        if reason is None:
            with self._lock:
                if not self.closed:
                    self._reserved -= 1
                    entry.state = _IN_USE
                    entry.taken_at = now
                    self._in_use[entry.key] = entry
                    conn = entry.conn
                    entry.conn = None
                    return conn
            reason = CloseReason.POOL_CLOSED
        self._discard(entry, reason)
        return None

    def _wait(self, waiter: Waiter, now: float, deadline: float) -> Any:
        remaining = deadline - now
        served = remaining > 0 and waiter.lock.acquire(True, min(remaining, threading.TIMEOUT_MAX))
        if not served:
            with self._lock:
                if waiter.entry is None and waiter.error is None:
                    # Still in line, so nobody was handed anything for us.
                    self._waiters.remove(waiter)
                    self._timeouts += 1
                    waited = self._clock() - waiter.since
                    self._waits.record(waited)
                    raise self._timeout_error(waited)
            # Served at the very moment we gave up: keep what we were given.
        if waiter.error is not None:
            raise waiter.error
        entry = waiter.entry
        assert entry is not None
        # The entry is ours now: nobody else touches it until we return it.
        conn = entry.conn
        now = self._clock()
        if now - entry.taken_at >= LIVENESS_SKIP and self._driver.looks_dead(conn):
            # We woke long after the hand-off (a busy machine) and the server
            # side died meanwhile: discard it and try again in the time left.
            with self._lock:
                del self._in_use[entry.key]
                entry.state = _RESERVED
                self._reserved += 1
            self._discard(entry, CloseReason.DEAD)
            with self._lock:
                if self.closed:
                    raise self._closed_error()
                taken = self._take_locked(now, max(0.0, deadline - now))
            return self._acquire_slow(taken, now, max(0.0, deadline - now))
        entry.conn = None
        return conn

    def _open_for_caller(self) -> Any:
        """Open a connection in the calling thread on a slot reserved for it."""
        entry = self._open_reserved()
        now = self._clock()
        with self._lock:
            self._opening -= 1
            self._opened += 1
            if not self.closed:
                entry.state = _IN_USE
                entry.taken_at = now
                self._in_use[entry.key] = entry
                conn = entry.conn
                entry.conn = None
                return conn
            entry.state = _RESERVED
            self._reserved += 1
        self._discard(entry, CloseReason.POOL_CLOSED)
        with self._lock:
            raise self._closed_error()

    # ------------------------------------------------------------------
    # Check-in
    # ------------------------------------------------------------------

    def release(self, conn: Any, close: bool = False) -> None:
        """Take back a connection handed out by :meth:`acquire`.

        A clean connection goes to the oldest waiter or to the idle stack; one
        in a transaction or with changed settings is cleaned first; a broken,
        expired or ``close=True`` one is closed and its slot freed.
        """
        now = self._clock()
        # The unlocked lookup is only a pre-check (dict reads are atomic); the
        # pop under the lock below is what decides ownership.
        entry = self._in_use.get(id(conn))
        if entry is None or entry.ref() is not conn:
            self._reject_return(conn)
            return
        if close:
            verdict = _CLOSE
        elif entry.expires <= now:
            verdict = _EXPIRE
        else:
            verdict = self._verdict(conn, entry.baseline)
            if verdict == CLEAN:
                if self._reset is not None:
                    verdict = DIRTY
                elif now - entry.taken_at >= LIVENESS_SKIP and self._driver.looks_dead(conn):
                    # Its backend died while it was out, after the holder's last
                    # query. The next hand-out may skip the checkout check (to
                    # a waiter, or within LIVENESS_SKIP): that skip relies on
                    # "returned" meaning "alive within the last LIVENESS_SKIP",
                    # which only holds if a long-held connection is checked here.
                    verdict = BROKEN
        # -- critical section: check-in fast path (no `with`: see acquire())
        lock = self._lock
        lock.acquire()
        try:
            if self._in_use.pop(entry.key, None) is not entry:
                raise self._error(PoolError, "connection returned twice at the same time")
            entry.conn = conn
            if verdict == CLEAN and not self.closed and self._size <= self._max_size:
                entry.last_used = now
                if self._waiters:
                    self._hand_off_locked(entry, now)
                else:
                    entry.state = _IDLE
                    self._idle.append(entry)
                return
            entry.state = _RESERVED
            self._reserved += 1
        finally:
            lock.release()
        self._release_slow(entry, verdict, now)

    def _reject_return(self, conn: Any) -> None:
        with self._lock:
            if self._forced.pop(id(conn), None) is not None:
                return  # closed by close() after its timeout; nothing left to do
        raise self._error(
            PoolError,
            "trying to put unkeyed connection: this connection was not handed out "
            "by this pool, or it was already returned",
        )

    def _release_slow(self, entry: Entry, verdict: int, now: float) -> None:
        reason: Optional[CloseReason] = None
        if verdict == BROKEN:
            reason = CloseReason.BROKEN
        elif verdict == _CLOSE:
            reason = CloseReason.CALLER
        elif verdict == _EXPIRE:
            reason = CloseReason.EXPIRED
        elif self.closed:
            reason = CloseReason.POOL_CLOSED
        elif self._size > self._max_size:
            reason = CloseReason.RESIZED
        elif verdict == DIRTY:
            try:
                self._driver.clean(entry.conn, entry.baseline)
                if self._reset is not None:
                    self._reset(entry.conn)
                    if self._driver.in_transaction(entry.conn):
                        raise PoolError("reset() left a transaction open")
            except Exception as exc:
                reason = CloseReason.RESET_FAILED
                self._on_event("reset_failed", f"{type(exc).__name__}: {exc}")
        if reason is None:
            with self._lock:
                if not self.closed:
                    self._reserved -= 1
                    entry.last_used = now
                    if self._waiters:
                        self._hand_off_locked(entry, self._clock())
                    else:
                        entry.state = _IDLE
                        self._idle.append(entry)
                    return
            reason = CloseReason.POOL_CLOSED
        self._discard(entry, reason)

    def _hand_off_locked(self, entry: Entry, now: float) -> None:
        """Under the lock: give ``entry`` to the oldest waiter and wake it."""
        waiter = self._waiters.popleft()
        entry.state = _IN_USE
        entry.taken_at = now
        self._in_use[entry.key] = entry
        self._waits.record(now - waiter.since)
        waiter.entry = entry
        waiter.lock.release()

    def _place_locked(self, entry: Entry, now: float) -> None:
        """Under the lock: a ready connection goes to the oldest waiter, else to idle."""
        if self._waiters:
            self._hand_off_locked(entry, now)
        else:
            entry.state = _IDLE
            self._idle.append(entry)

    def _discard(self, entry: Entry, reason: CloseReason) -> None:
        """Close a RESERVED entry and free its slot (outside the lock)."""
        self._driver.close(entry.conn)
        entry.ref = None  # no "garbage-collected" report for a connection we closed
        with self._lock:
            entry.state = _CLOSED
            self._reserved -= 1
            self._size -= 1
            self._closed_count += 1
            if reason is CloseReason.DEAD or reason is CloseReason.BROKEN:
                self._lost += 1
                self._suspect_before = self._clock()
            self._maybe_refill()
            self._maybe_grow()
            self._changed.notify_all()
        if reason is not CloseReason.POOL_CLOSED:
            self._on_event("closed", reason.value)

    # ------------------------------------------------------------------
    # Opening connections
    # ------------------------------------------------------------------

    def _maybe_refill(self) -> None:
        """Under the lock: request background opens up to ``min_size``."""
        if self.closed:
            return
        need = self._min_size - self._size
        if need > 0:
            self._request_opens(need)

    def _maybe_grow(self) -> None:
        """Under the lock: request one background open per waiter not yet covered."""
        if self.closed:
            return
        need = min(len(self._waiters) - self._pending, self._max_size - self._size)
        if need > 0:
            self._request_opens(need)

    def _request_opens(self, count: int) -> None:
        self._size += count
        self._opening += count
        self._pending += count
        self._to_open += count
        self._maintainer.wake()

    def _new_entry(self) -> Entry:
        """Connect and configure a new connection (outside the lock)."""
        conn = self._driver.connect()
        try:
            if self._configure is not None:
                self._configure(conn)
                if self._driver.in_transaction(conn):
                    raise PoolError(
                        f"configure() left a transaction open on a new connection of pool "
                        f"{self.name!r}: commit or roll back inside configure()"
                    )
            baseline = self._driver.snapshot(conn)
            # A backend terminated while our connect was finishing (its FATAL
            # arriving right after ReadyForQuery) must not go to a waiter.
            if self._driver.looks_dead(conn):
                raise PoolError(
                    f"pool {self.name!r}: a new connection was closed by the server "
                    "right after it was opened"
                )
        except BaseException:
            self._driver.close(conn)
            raise
        now = self._clock()
        lifetime = self._max_lifetime * (1.0 - LIFETIME_JITTER * random.random())
        entry = Entry(conn, now, now + lifetime, baseline)
        on_collected = functools.partial(_note_collected, self._collected, entry.key)
        entry.ref = weakref.ref(conn, on_collected)
        self._every_conn.add(conn)
        return entry

    def _open_reserved(self, background: bool = False) -> Entry:
        """Open a connection on a slot already counted in ``_opening``.

        On failure the slot is released, the error recorded (for PoolTimeout's
        cause), what is still needed is requested again, and the error re-raised.
        """
        try:
            return self._new_entry()
        except BaseException as exc:
            with self._lock:
                self._opening -= 1
                self._size -= 1
                if background:
                    self._pending -= 1
                self._connect_errors += 1
                self._last_error = exc
                if not self._connect_failing:
                    self._connect_failing = True
                    self._failing_since = self._clock()
                if self._fail_fast:
                    self._fail_waiters_locked()
                self._maybe_refill()
                self._maybe_grow()
                self._changed.notify_all()
            raise

    def _fail_waiters_locked(self) -> None:
        """Under the lock: fail_fast — every waiter gets PoolTimeout with the connect error."""
        while self._waiters:
            waiter = self._waiters.popleft()
            self._timeouts += 1
            waiter.error = self._timeout_error(self._clock() - waiter.since)
            waiter.lock.release()

    def _open_one(self) -> Optional[bool]:
        """Maintenance thread: open one requested connection (None: nothing requested)."""
        with self._lock:
            if self._to_open == 0:
                return None
            self._to_open -= 1
            # The slot stays counted in _pending until the attempt ends, so
            # _maybe_grow does not request a second open for the same waiter.
        try:
            entry = self._open_reserved(background=True)
        except Exception as exc:
            self._on_event("connect_error", f"{type(exc).__name__}: {str(exc).strip()}")
            self._maybe_give_up()
            return False
        now = self._clock()
        with self._lock:
            self._opening -= 1
            self._pending -= 1
            self._opened += 1
            recovered = self._connect_failing
            self._connect_failing = False
            self._gave_up = False
            if not self.closed:
                self._place_locked(entry, now)
                self._changed.notify_all()
        if recovered:
            self._on_event("reconnected", f"after {now - self._failing_since:.1f} s of failures")
        if not self.closed:
            return True
        with self._lock:
            entry.state = _RESERVED
            self._reserved += 1
        self._discard(entry, CloseReason.POOL_CLOSED)
        return True

    def _maybe_give_up(self) -> None:
        """Maintenance thread: call reconnect_failed once per run of failures that lasts."""
        with self._lock:
            due = (
                self._connect_failing
                and not self._gave_up
                and self._clock() - self._failing_since >= self._reconnect_timeout
            )
            if due:
                self._gave_up = True
        if due:
            self._on_event(
                "reconnect_failed",
                f"no connection for {self._reconnect_timeout:.0f} s; still retrying",
            )
            if self._reconnect_failed is not None:
                try:
                    self._reconnect_failed()
                except Exception as exc:
                    self._on_event("callback_error", f"reconnect_failed raised {exc!r}")

    # ------------------------------------------------------------------
    # Maintenance
    # ------------------------------------------------------------------

    def housekeep(self) -> None:
        """Periodic work: free abandoned slots, report leaks, check and retire idle ones."""
        if self._collected:
            self._reap_collected()
        if self._leak_threshold is not None:
            self._report_leaks()
        if self._check_idle_interval is not None:
            self._check_idle()
        self._retire_idle()

    def _retire_idle(self) -> None:
        """Retire expired idle connections and idle surplus above ``min_size``."""
        now = self._clock()
        doomed: List[Tuple[Entry, CloseReason]] = []
        with self._lock:
            if self.closed or not self._idle:
                return
            surplus = self._size - self._min_size
            keep: List[Entry] = []
            for entry in self._idle:  # oldest first
                if entry.expires <= now:
                    doomed.append((entry, CloseReason.EXPIRED))
                    surplus -= 1
                elif surplus > 0 and now - entry.last_used >= self._max_idle:
                    doomed.append((entry, CloseReason.IDLE_SURPLUS))
                    surplus -= 1
                else:
                    keep.append(entry)
            if not doomed:
                return
            self._idle[:] = keep
            for entry, _ in doomed:
                entry.state = _RESERVED
            self._reserved += len(doomed)
        for entry, reason in doomed:
            self._discard(entry, reason)

    def _reap_collected(self) -> None:
        """Free the slots of connections garbage-collected while handed out."""
        keys, self._collected[:] = self._collected[:], []
        reaped: List[Entry] = []
        with self._lock:
            for key in keys:
                entry = self._in_use.get(key)
                # The id may already belong to a new connection: check the ref.
                if entry is not None and entry.ref is not None and entry.ref() is None:
                    del self._in_use[key]
                    entry.state = _CLOSED
                    self._size -= 1
                    self._closed_count += 1
                    self._leaked += 1
                    reaped.append(entry)
            if reaped:
                self._maybe_refill()
                self._maybe_grow()
                self._changed.notify_all()
        for entry in reaped:
            where = f"; it was taken at:\n{_format_stack(entry.trace)}" if entry.trace else ""
            self._on_event(
                "leak",
                "a connection was garbage-collected without being returned; "
                f"its slot is free again{where}",
            )

    def _report_leaks(self) -> None:
        """Report (once per checkout) connections held longer than leak_threshold."""
        assert self._leak_threshold is not None
        now = self._clock()
        found: List[Tuple[float, Any]] = []
        with self._lock:
            for entry in self._in_use.values():
                if not entry.leak_reported and now - entry.taken_at >= self._leak_threshold:
                    entry.leak_reported = True
                    self._leaked += 1
                    found.append((now - entry.taken_at, entry.trace))
        for held, trace in found:
            self._on_event(
                "leak",
                f"a connection has been held for {held:.1f} s (leak_threshold="
                f"{self._leak_threshold:g}); it was taken at:\n{_format_stack(trace)}",
            )

    def _check_idle(self) -> None:
        """Keepalive: ping connections idle longer than check_idle_interval, one by one."""
        assert self._check_idle_interval is not None
        now = self._clock()
        with self._lock:
            if self.closed:
                return
            due = [
                e
                for e in self._idle
                if now - max(e.last_used, e.checked_at) >= self._check_idle_interval
            ]
        for entry in due:
            with self._lock:
                if self.closed or entry.state is not _IDLE:
                    continue
                self._idle.remove(entry)
                entry.state = _RESERVED
                self._reserved += 1
            try:
                dead = self._driver.looks_dead(entry.conn)
                if not dead:
                    self._driver.ping(entry.conn)
            except Exception:
                dead = True
            if dead:
                self._discard(entry, CloseReason.DEAD)
                continue
            entry.checked_at = self._clock()
            with self._lock:
                if not self.closed:
                    self._reserved -= 1
                    if self._waiters:
                        self._hand_off_locked(entry, entry.checked_at)
                    else:
                        # Back at the cold end, keeping LIFO order for the others.
                        entry.state = _IDLE
                        self._idle.insert(0, entry)
                    continue
            self._discard(entry, CloseReason.POOL_CLOSED)

    # ------------------------------------------------------------------
    # Facade hooks (leak tracing, disconnect hints)
    # ------------------------------------------------------------------

    def trace_checkout(self, conn: Any) -> None:
        """Record where ``conn`` was taken (leak detection on); call right after acquire()."""
        entry = self._in_use.get(id(conn))
        if entry is not None:
            entry.trace = _capture_stack(2)
            entry.leak_reported = False

    def was_reported_leak(self, conn: Any) -> Optional[float]:
        """If ``conn`` was reported as held too long, how long it has been out."""
        entry = self._in_use.get(id(conn))
        if entry is None or not entry.leak_reported:
            return None
        return self._clock() - entry.taken_at

    def mark_suspect(self) -> None:
        """A caller saw a disconnect error: round-trip check idle connections before use."""
        self._suspect_before = self._clock()

    # ------------------------------------------------------------------
    # fork()
    # ------------------------------------------------------------------

    def _after_fork_in_child(self, devnull: int) -> None:
        """In a forked child: disown the parent's connections, start afresh.

        The parent's sockets are shared with the child. Closing a connection
        (even psycopg2's dealloc) would send a Terminate message and kill the
        parent's session, and any query would interleave with the parent's
        traffic. So each inherited descriptor is pointed at /dev/null: the
        child can no longer reach the parent's sockets at all (a stray use
        fails with "server closed the connection"), and the parent's
        connections keep working. Only the forking thread survives a fork, so
        the lock and the background thread are replaced too.
        """
        for conn in list(self._every_conn):
            try:
                fd = conn.fileno()
            except Exception:
                continue
            if fd >= 0:
                os.dup2(devnull, fd, inheritable=False)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # A late putconn() of an inherited connection is accepted and ignored.
        self._forced = dict(self._in_use)
        self._idle = []
        self._in_use = {}
        self._waiters = deque()
        self._collected[:] = []
        self._reserved = self._opening = self._pending = self._to_open = self._size = 0
        self._every_conn = weakref.WeakSet()
        self._maintainer = self._new_maintainer()
        if self._started and not self.closed:
            with self._lock:
                self._maybe_refill()
            self._maintainer.start()

    # ------------------------------------------------------------------
    # Whole-pool operations
    # ------------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        """Block until ``min_size`` connections are open, or raise PoolTimeout."""
        deadline = self._clock() + timeout
        with self._changed:
            while self._size - self._opening < self._min_size:
                if self.closed:
                    raise self._closed_error()
                left = deadline - self._clock()
                if left <= 0 or not self._changed.wait(min(left, threading.TIMEOUT_MAX)):
                    if self._size - self._opening >= self._min_size:
                        break
                    raise self._error(
                        PoolTimeout,
                        f"{self._size - self._opening} of min_size={self._min_size} "
                        f"connections open after {timeout:.2f} s",
                        cause=self._last_error if self._connect_failing else None,
                    )

    def resize(self, min_size: int, max_size: int) -> None:
        """Change the sizes; surplus idle connections close now, busy ones on return."""
        min_size, max_size = check_sizes(min_size, max_size)
        doomed: List[Entry] = []
        with self._lock:
            if self.closed:
                raise self._closed_error()
            self._min_size = min_size
            self._max_size = max_size
            while self._size - len(doomed) > max_size and self._idle:
                entry = self._idle.pop(0)  # oldest first
                entry.state = _RESERVED
                doomed.append(entry)
            self._reserved += len(doomed)
            self._maybe_refill()
            self._maybe_grow()
        for entry in doomed:
            self._discard(entry, CloseReason.RESIZED)

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving; wait up to ``timeout`` for connections in use, then force them closed.

        Waiters are woken with PoolClosed; idle connections close at once;
        connections in use close as they come back. Idempotent.
        """
        with self._lock:
            if self.closed:
                return
            self.closed = True
            waiters = list(self._waiters)
            self._waiters.clear()
            for waiter in waiters:
                waiter.error = self._closed_error()
                waiter.lock.release()
            idle = self._idle[:]
            self._idle.clear()
            for entry in idle:
                entry.state = _RESERVED
            self._reserved += len(idle)
            # Opens requested but not started are cancelled.
            unstarted = self._to_open
            self._to_open = 0
            self._pending -= unstarted
            self._opening -= unstarted
            self._size -= unstarted
        self._maintainer.stop(0.0)
        for entry in idle:
            self._discard(entry, CloseReason.POOL_CLOSED)
        deadline = self._clock() + timeout
        with self._changed:
            while self._in_use or self._reserved or self._opening:
                left = deadline - self._clock()
                if left <= 0:
                    break
                self._changed.wait(min(left, threading.TIMEOUT_MAX))
            forced = list(self._in_use.values())
            self._in_use.clear()
            for entry in forced:
                entry.state = _CLOSED
                self._forced[entry.key] = entry
            self._size -= len(forced)
            self._closed_count += len(forced)
        for entry in forced:
            conn = entry.ref() if entry.ref is not None else None
            if conn is not None:
                self._driver.force_close(conn)
        if forced:
            self._on_event("forced", f"{len(forced)} connections still in use were closed")
        self._maintainer.stop(max(0.0, min(1.0, deadline - self._clock())))

    # ------------------------------------------------------------------
    # Observability
    # ------------------------------------------------------------------

    def _gauges_locked(self) -> Dict[str, int]:
        return {
            "min_size": self._min_size,
            "max_size": self._max_size,
            "size": self._size,
            "idle": len(self._idle),
            "in_use": len(self._in_use),
            "waiting": len(self._waiters),
            "opening": self._opening,
        }

    def stats(self) -> Dict[str, Any]:
        """A consistent snapshot of gauges and counters (see :mod:`pgreservoir.stats`)."""
        with self._lock:
            result: Dict[str, Any] = dict(self._gauges_locked())
            unwaited = self._requests - self._waits.recorded
            result.update(
                requests=self._requests,
                requests_waited=self._requests_waited,
                timeouts=self._timeouts,
                rejected=self._rejected,
                connections_opened=self._opened,
                connections_closed=self._closed_count,
                connect_errors=self._connect_errors,
                connections_lost=self._lost,
                connections_leaked=self._leaked,
                wait_ms_p50=self._waits.percentile_ms(0.50, unwaited),
                wait_ms_p99=self._waits.percentile_ms(0.99, unwaited),
                wait_ms_max=round(self._waits.max_seconds * 1000.0, 3),
            )
            return result

    def gauges(self) -> Dict[str, int]:
        """Just the gauges (size, idle, in_use, waiting...)."""
        with self._lock:
            return self._gauges_locked()

    def describe(self) -> str:
        """Short state for repr(): ``size=3/10 idle=1 in_use=2 waiting=0``."""
        g = self.gauges()
        state = "closed" if self.closed else "open"
        return (
            f"{state} size={g['size']}/{g['max_size']} idle={g['idle']} "
            f"in_use={g['in_use']} waiting={g['waiting']}"
        )

    # ------------------------------------------------------------------
    # Errors
    # ------------------------------------------------------------------

    def _error(
        self,
        cls: Type[PoolError],
        what: str,
        *,
        cause: Optional[BaseException] = None,
        locked: bool = True,
    ) -> PoolError:
        gauges = self._gauges_locked() if locked else {}
        err = cls(f"pool {self.name!r}: {what}", pool_name=self.name, snapshot=gauges)
        if cause is not None:
            err.__cause__ = cause
        return err

    def _closed_error(self) -> PoolError:
        return self._error(PoolClosed, "connection pool is closed")

    def _timeout_error(self, waited: float) -> PoolError:
        g = self._gauges_locked()
        what = (
            f"no connection available after {waited:.2f} s "
            f"(size {g['size']}/{g['max_size']}, idle {g['idle']}, in use {g['in_use']}, "
            f"{g['waiting']} waiting)"
        )
        cause = self._last_error if self._connect_failing else None
        if cause is not None:
            what += f"; connecting is failing: {type(cause).__name__}: {str(cause).strip()}"
        return self._error(PoolTimeout, what, cause=cause)

    def __repr__(self) -> str:
        return f"<Engine {self.name!r} {self.describe()}>"


def _note_collected(collected: List[int], key: int, ref: Any) -> None:
    """Weakref callback: a handed-out connection was garbage-collected (no lock taken)."""
    collected.append(key)


def _capture_stack(skip: int) -> List[Tuple[str, int, str]]:
    """Where the caller is: (file, line, function) of up to 16 frames (~2 us)."""
    frame: Any = sys._getframe(skip)
    stack: List[Tuple[str, int, str]] = []
    while frame is not None and len(stack) < 16:
        code = frame.f_code
        stack.append((code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    return stack


def _format_stack(stack: Any) -> str:
    if not stack:
        return "  (not recorded)"
    return "".join(f'  File "{f}", line {n}, in {name}\n' for f, n, name in reversed(stack))


def _after_fork_in_child() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for engine in list(_ENGINES):
            engine._after_fork_in_child(devnull)
    finally:
        os.close(devnull)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
