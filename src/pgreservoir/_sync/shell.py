"""The blocking shell: carries out the core's decisions with threads.

Every public method here follows one pattern: read the clock, call the core
under ``_lock`` (one short critical section, no I/O), release the lock, then
carry out exactly the plan the core returned. The shell never decides
anything on its own and never acts on state it reads later.

Exceptions (a signal handler's, KeyboardInterrupt, a soft time limit) can
land anywhere in a caller's thread: CPython runs signal handlers in the main
thread after a C call returns, at a function's start and at loop jumps.
The lock is only ever taken with ``with`` (which checks for none between
taking the lock and entering the block, and releases it whatever happens),
so it is never left held. Whatever the caller holds (a place in line, a
connection being checked, a slot being opened or a connection being cleaned)
is handed back to the core before the exception propagates; a core answer is
stored before the lock is released, inside the try that gives it back. What
remains (an exception at the entry of a step, inside a core call, or inside
the handler itself) strands a slot that nothing but the core references: the
core's housekeeping frees it (``Core._recover``), so no slot is lost for
longer than one housekeeping interval after the exception is gone.

Every round trip the pool makes on its own account (checkout ping, rollback
at return, ``reset()``, keepalive) is bounded: by the caller's deadline and
by ``check_timeout``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
import weakref
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from .. import _metrics
from .._core import (
    BROKEN,
    CLEAN,
    CLOSE,
    DIRTY,
    PING,
    PROBE,
    RESTORE,
    CloseReason,
    Core,
    Entry,
    Plan,
    Waiter,
)
from .._logging import logger
from .._role import role_check, role_verdict, stale
from .._session_state import SESSION_STATE_SQL, SessionStateWatch
from ..drivers import Driver
from ..drivers._sockets import close_probe, open_fds, stray_sockets
from ..errors import PoolError, throw
from ..options import PoolOptions, check_seconds
from .background import Maintainer
from .deadlines import Deadline, watchdog

__all__ = ["MIN_CHECK_TIME", "SyncPool", "held_lock"]

#: A caller with less time left than this (seconds) does not start the round
#: trip a connection needs before hand-out: the connection goes back
#: unchanged and the caller times out, rather than the connection being
#: closed because the caller had no time.
MIN_CHECK_TIME = 0.005

EventSink = Callable[[str, str], None]

# Every live shell, so that a fork can reset them in the child.
_SHELLS: weakref.WeakSet[SyncPool] = weakref.WeakSet()

# Whether to note the descriptors open before each connect (Linux): what a
# forked child needs to find the socket of a connect that was in flight.
_TRACK_FDS = sys.platform.startswith("linux")


def held_lock() -> Any:
    """A waiter's wake-up primitive: a Lock created held, released by the waker."""
    lock = threading.Lock()
    lock.acquire()
    return lock


class SyncPool:
    """The blocking shell of one pool (see the module notes)."""

    def __init__(
        self,
        core: Core,
        driver: Driver,
        options: PoolOptions,
        *,
        owner: Any = None,
        on_event: EventSink,
        reconnect_failed: Optional[Callable[[], None]] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``owner`` is what new psycopg 3 connections name as their pool;
        ``reconnect_failed()`` is the user's callback, already bound to the facade."""
        self.core = core
        core.new_handle = held_lock  # waiters block on a held Lock, released to wake them
        # A timed wait that ends only to claim nothing costs a wake-up and the
        # lock per checkout once the line outgrows the window: see the core.
        core.lazy_claims = True
        # Bound once: called on every checkout and check-in. (A fork resets
        # the core in place, so these stay valid.)
        self._checkout = core.checkout
        self._checkin = core.checkin
        self._entry_of = core.in_use.get
        self._idle = core._idle  # read unlocked: is a refusal even possible?
        self.name = core.name
        self.driver = driver
        # Bound once: called on every check-in. A pool that wants a server role
        # (target_session_attrs) also reads the role its server reported.
        self._role = role_check(driver)
        self._verdict = role_verdict(driver, self._role)
        self._clock = self.clock = clock
        self._on_event = on_event
        self._configure = options.configure
        self._reset = options.reset
        # transaction_pooling: what configure()/reset() leave behind is reported.
        self._state_watch = SessionStateWatch(core.name) if options.transaction_pooling else None
        self._user_check = options.check
        self._check_timeout = options.check_timeout
        self._barge = core.barge_window
        self._reconnect_failed = reconnect_failed
        self._owner = self if owner is None else owner
        self._lock = threading.Lock()
        # Signalled after a plan is carried out while someone waits in wait()
        # or close() (counted in _watchers, both under _lock).
        self._changed = threading.Condition(self._lock)
        self._watchers = 0
        self._started = False
        self._maintainer = Maintainer(self)
        _SHELLS.add(self)
        _metrics.track(self, options.meter_provider)

    # ------------------------------------------------------------------
    # Life cycle
    # ------------------------------------------------------------------

    def start(self) -> None:
        """Request ``min_size`` connections and start the background thread."""
        self._started = True
        with self._lock:
            plan = self.core.start(self._clock())
        self._maintainer.start()
        self.carry_out(plan)

    def fill(self) -> None:
        """Open ``min_size`` connections now, in this thread, before start()
        (psycopg2.pool's constructor). A connection error propagates, after
        the pool is closed."""
        try:
            for _ in range(self.core.min_size):
                with self._lock:
                    ticket = self.core.reserve(self._clock())
                plan, error = self.open(ticket)
                self.carry_out(plan)
                if error is not None:
                    raise error
        except BaseException:
            self.close(0.0)
            raise

    # ------------------------------------------------------------------
    # Checkout
    # ------------------------------------------------------------------

    def acquire(self, timeout: Optional[float] = None, refusal: bool = False) -> Any:
        """A connection, checked, waiting in line up to ``timeout`` seconds
        (None: the pool's timeout; 0: do not wait). ``refusal``: a plain
        refusal of a caller that does not wait is returned (the core's gauges,
        a tuple) instead of raised, for a facade that raises it in its own
        words: raising once instead of twice is most of its cost."""
        if timeout is not None and (type(timeout) is not float or not timeout >= 0.0):
            timeout = check_seconds("timeout", timeout)
        if refusal and timeout == 0.0 and not self._idle:
            # Refused without the lock (and without the clock): threads that
            # retry in a loop must not queue on it with those returning.
            gauges = self.core.refuse_unlocked()
            if gauges is not None:
                return gauges
        now = self._clock()
        got: Any = None
        try:
            # `with`, never acquire() then try: a signal handler raising in
            # between would leave the lock held for good. The core's answer is
            # stored before the lock is released, so an exception from here on
            # gives back what we were handed (see the module notes).
            with self._lock:
                got = self._checkout(now, timeout)
            # The fast path: an idle connection. One system call tells whether
            # the server has hung up on it since it came back.
            if type(got) is Entry and got.vet == PROBE and not got.probe(0):  # type: ignore[misc]
                conn = got.conn
                got.conn = None  # ours no more: held by the caller (weakref only)
                return conn
        except BaseException:
            self._abandon_answer(got)
            raise
        if type(got) is Entry:
            return self._acquire_slow(got, None, now, timeout)
        if type(got) is tuple:  # refused, nothing else to do
            if refusal:
                return got
            raise self.core.refused(got)  # no local holds it: no cycle (errors.throw)
        return self._acquire_slow(None, got, now, timeout)

    def _abandon_answer(self, got: Any) -> None:
        """An exception landed before we acted on checkout()'s answer: give it back."""
        if type(got) is Entry:
            if got.conn is not None:  # not yet handed to the caller
                self._hand_back(got)
        elif type(got) is Plan:
            self._abandon_checkout(got)
            self.carry_out(got)

    def _acquire_slow(
        self, entry: Optional[Entry], plan: Optional[Plan], now: float, timeout: Optional[float]
    ) -> Any:
        wait = self.core.timeout if timeout is None else timeout
        since, deadline = now, now + wait
        while True:
            if plan is not None:
                entry = self._take(plan, deadline)
                if entry is None:  # opened by this thread (psycopg2 semantics)
                    assert plan.ticket is not None
                    return self._open_inline(plan.ticket)
            assert entry is not None
            conn = self._vet(entry, deadline, wait <= 0, since)
            if conn is not None:
                return conn
            # It was dead (and is discarded): try again, at the head of the line.
            now = self._clock()
            with self._lock:
                got = self.core.checkout(
                    now, max(0.0, deadline - now) if wait > 0 else 0.0, retry=True
                )
            if type(got) is Entry:
                entry, plan = got, None
            else:
                entry, plan = None, got  # type: ignore[assignment]

    def _take(self, plan: Plan, deadline: float) -> Optional[Entry]:
        """Carry out a checkout plan; the entry the caller got (None: a ticket to open)."""
        try:
            self.carry_out(plan)
        except BaseException:
            self._abandon_checkout(plan)
            raise
        if plan.error is not None:
            throw(plan.take_error())
        if plan.waiter is not None:
            return self._wait(plan.waiter, deadline)
        return plan.entry

    def _abandon_checkout(self, plan: Plan) -> None:
        """The caller is leaving with an exception: give back what the plan gave it."""
        now = self._clock()
        with self._lock:
            if plan.entry is not None:
                back = self.core.put_back(plan.entry, now)
            elif plan.waiter is not None:
                back = self.core.give_up(plan.waiter, now, interrupted=True)
            elif plan.ticket is not None:
                back = self.core.open_failed(plan.ticket, PoolError("interrupted"), now)
            else:
                return
        self.carry_out(back)

    def _wait(self, waiter: Waiter, deadline: float) -> Entry:
        """Wait in line until served or ``deadline``; PoolTimeout/PoolClosed otherwise."""
        try:
            woken = self._sleep(waiter, deadline)
        except BaseException:
            # Interrupted (a signal handler, a soft time limit...), whether or
            # not served already: leave the line; what we were handed goes to
            # the next in line or back to idle.
            with self._lock:
                plan = self.core.give_up(waiter, self._clock(), interrupted=True)
            self.carry_out(plan)
            raise
        if woken:
            if waiter.error is not None:
                throw(waiter.take_error())
            assert waiter.entry is not None
            return waiter.entry
        with self._lock:
            plan = self.core.give_up(waiter, self._clock())
        self.carry_out(plan)
        if plan.error is not None:
            throw(plan.take_error())
        assert plan.entry is not None  # served at the very moment we gave up
        return plan.entry

    def _sleep(self, waiter: Waiter, deadline: float) -> bool:
        """Block until the core gives ``waiter`` an outcome (True) or ``deadline`` (False).

        With a barging window, a timed waiter first sleeps only until its
        window ends, then claims any connection left idle by callers that
        passed it: so no connection sits idle for longer than the window while
        it waits. An untimed one (it joined behind a head past its window)
        has nothing to claim: the core never leaves a connection idle for it.
        """
        handle = waiter.handle
        now = self._clock()
        window = waiter.since + self._barge - now
        if self._barge and waiter.timed and window < deadline - now:
            if window > 0 and handle.acquire(True, window):
                return True
            # Nothing idle now (an atomic read), nothing to claim: from the end
            # of its window on, nothing goes idle while it is in line (the
            # head, older, is past its window too), so it need not look again.
            if self._idle:
                with self._lock:
                    plan = self.core.claim(waiter, self._clock())
                self.carry_out(plan)
            if waiter.entry is not None or waiter.error is not None:
                return True  # served (or failed) now, or meanwhile
            now = self._clock()
        left = deadline - now
        return left > 0 and handle.acquire(True, min(left, threading.TIMEOUT_MAX))

    def _vet(self, entry: Entry, deadline: float, no_wait: bool, since: float) -> Any:
        """Check a connection handed to us; return it, or None if it was dead.
        (``since``: when the checkout began.)"""
        conn = entry.conn
        try:
            alive = self._probe(entry)
        except BaseException:
            self._hand_back(entry, CloseReason.INTERRUPTED)
            raise
        ping = alive is None or (alive and entry.vet == PING)
        if alive is not False and (ping or entry.vet != PROBE):
            # A round trip and/or the user's check(), within the caller's time
            # (unless it said "do not wait in line") and check_timeout.
            now = self._clock()
            at = now + self._check_timeout if no_wait else min(deadline, now + self._check_timeout)
            if at - now < MIN_CHECK_TIME:
                with self._lock:
                    plan = self.core.decline(entry, now, since)
                self.carry_out(plan)
                assert plan.error is not None
                raise plan.error
            try:
                alive = self._bounded(conn, at, self._checks(ping))
            except BaseException:
                self._hand_back(entry, CloseReason.INTERRUPTED)
                raise
            # The round trip brought the server's latest parameter statuses.
            if alive and stale(self.driver, self._role, conn):
                self._hand_back(entry, CloseReason.STALE_ROLE)
                return None
        if not alive:
            self._hand_back(entry, CloseReason.DEAD)
            return None
        entry.conn = None  # ours no more: held by the caller (weakref only)
        return conn

    def _checks(self, ping: bool) -> Callable[[Any], None]:
        """The round trips a hand-out needs: a ping, the user's check(), or both."""
        check = self._user_check
        if check is None:
            return self.driver.ping
        if not ping:
            return check
        driver_ping = self.driver.ping

        def both(conn: Any) -> None:
            driver_ping(conn)
            check(conn)

        return both

    def _probe(self, entry: Entry) -> Optional[bool]:
        """Zero-round-trip liveness: True alive, False dead, None unsure (ping it)."""
        probe = entry.probe
        if probe is None or not probe(0):
            return True
        dead = self.driver.after_readable(entry.conn, probe)
        return None if dead is None else not dead

    def _hand_back(self, entry: Entry, reason: Optional[CloseReason] = None) -> None:
        """Give back an entry this caller was handed: unused, or lost (``reason``)."""
        now = self._clock()
        with self._lock:
            if reason is None:
                plan = self.core.put_back(entry, now)
            else:
                plan = self.core.lose(entry, now, reason)
        self.carry_out(plan)

    def _arm(self, conn: Any, at: float) -> Deadline:
        """Interrupt ``conn``'s round trip at ``at`` (our clock) unless disarmed."""
        # The watchdog runs on the monotonic clock; ours may be a test's.
        real_at = time.monotonic() + (at - self._clock())
        return watchdog.arm(real_at, functools.partial(self.driver.interrupt, conn))

    def _bounded(self, conn: Any, at: float, step: Callable[[Any], Any]) -> bool:
        """Run ``step(conn)``, a round trip, interrupted at ``at``; whether it succeeded."""
        deadline = self._arm(conn, at)
        try:
            step(conn)
            ok = True
        except Exception:
            ok = False
        finally:
            fired = watchdog.disarm(deadline)
        return ok and not fired

    # ------------------------------------------------------------------
    # Check-in
    # ------------------------------------------------------------------

    def release(self, conn: Any, close: bool = False) -> None:
        """Take back a connection handed out by :meth:`acquire`.

        A clean one goes to the oldest waiter or to idle; one in a transaction
        or with changed settings is cleaned first (bounded by check_timeout);
        a broken, expired or ``close=True`` one is closed and its slot freed.
        """
        now = self._clock()
        # The unlocked lookup is only a pre-check (a dict read is atomic); the
        # core decides ownership under the lock.
        entry = self._entry_of(id(conn))
        if entry is None or entry.ref() is not conn:
            entry, verdict = None, BROKEN
        else:
            verdict = self._verdict(conn, entry.baseline)
            if close:
                # A broken one is a lost one (counted; its siblings get checked).
                verdict = BROKEN if verdict == BROKEN else CLOSE
            elif verdict == RESTORE:
                verdict = self._restore(conn, entry.baseline)
            elif verdict == CLEAN and self._reset is not None:
                verdict = DIRTY
        got: Any = None
        try:
            with self._lock:  # never acquire() then try: see acquire()
                got = self._checkin(entry, conn, verdict, now)
            if got is None:
                return
            if type(got) is Waiter:
                got.handle.release()
                return
        except BaseException:
            if type(got) is Waiter:
                with contextlib.suppress(RuntimeError):  # already released
                    got.handle.release()
            elif type(got) is Plan:
                if got.clean is not None:
                    self._finish_clean(got.clean, "interrupted")
                self.carry_out(got)
            raise
        self._release_slow(got)

    def _restore(self, conn: Any, baseline: Any) -> int:
        """Settings changed on an idle connection: put them back here (no I/O,
        so no watchdog) rather than on the clean-up path; DIRTY if that fails
        or reset() must run anyway."""
        if self._reset is not None:
            return DIRTY
        try:
            self.driver.restore(conn, baseline)
        except Exception:
            return DIRTY  # the clean-up tries again and discards it if it fails
        return CLEAN

    def _release_slow(self, plan: Plan) -> None:
        entry = plan.clean
        try:
            self.carry_out(plan)
        except BaseException:
            if entry is not None:
                self._finish_clean(entry, "interrupted")
            raise
        if plan.error is not None:
            raise plan.error
        if entry is not None:
            self._clean(entry)

    def _clean(self, entry: Entry) -> None:
        """Roll back, restore settings and run reset() on a returned connection,
        bounded by check_timeout; discard it if anything fails."""
        conn = entry.conn
        failure: Optional[str] = None
        deadline = self._arm(conn, self._clock() + self._check_timeout)
        try:
            try:
                self.driver.clean(conn, entry.baseline)
                if self._reset is not None:
                    self._reset(conn)
                    if self.driver.in_transaction(conn):
                        raise PoolError("reset() left a transaction open")
                    if self._state_watch is not None and self._state_watch.wants_reset_check():
                        self._watch_state(conn, "reset")
            except Exception as exc:
                failure = self._describe_error(exc)
            finally:
                if watchdog.disarm(deadline):
                    failure = f"did not finish within check_timeout={self._check_timeout:g} s"
        except BaseException as exc:
            # KeyboardInterrupt or the like in reset(): the connection is in an
            # unknown state. Discard it, then let the exception go on.
            self._finish_clean(entry, self._describe_error(exc))
            raise
        self._finish_clean(entry, failure)

    def _watch_state(self, conn: Any, callback: str) -> None:
        """One round trip: the session state ``callback`` left (see _session_state)."""
        watch = self._state_watch
        assert watch is not None
        try:
            state = self.driver.fetch_value(conn, SESSION_STATE_SQL)
        except Exception:  # best effort: a proxy that refuses the question changes nothing
            return
        watch.found(callback, state)

    def _finish_clean(self, entry: Entry, failure: Optional[str]) -> None:
        with self._lock:
            plan = self.core.cleaned(entry, self._clock(), failure)
        self.carry_out(plan)

    def _describe_error(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or "(no message)"
        return self.driver.redact(f"{type(exc).__name__}: {text}")

    # ------------------------------------------------------------------
    # Opening connections
    # ------------------------------------------------------------------

    def _open_inline(self, ticket: Entry) -> Any:
        """Open a connection in the calling thread, for the caller."""
        plan, error = self.open(ticket)
        try:
            self.carry_out(plan)
        except BaseException:
            if plan.entry is not None:
                self._hand_back(plan.entry)
            raise
        if error is not None:
            raise error
        if plan.error is not None:
            raise plan.error
        entry = plan.entry
        assert entry is not None
        conn = entry.conn
        entry.conn = None
        return conn

    def open(self, ticket: Entry) -> Tuple[Plan, Optional[BaseException]]:
        """Connect, configure and check a new connection for ``ticket``.

        Returns the core's plan (``opened`` or ``open_failed``) and the error
        that made it fail, if any. The slot is always accounted for: whatever
        happens, the core hears of it before this returns.
        """
        if _TRACK_FDS:
            ticket.fds_before = open_fds()
        try:
            conn = self.driver.connect()
        except BaseException as exc:
            return self._open_failed(ticket, exc), exc
        with self._lock:
            plan = self.core.connected(ticket, conn, self._clock())
        if plan.close:  # the pool closed meanwhile: do nothing more for it
            return plan, None
        try:
            self.driver.adopt(conn, self._owner)
            if self._configure is not None:
                self._configure(conn)
                if self.driver.in_transaction(conn):
                    raise PoolError(
                        f"configure() left a transaction open on a new connection of pool "
                        f"{self.name!r}: commit or roll back inside configure()"
                    )
                if self._state_watch is not None:
                    self._watch_state(conn, "configure")
            baseline = self.driver.snapshot(conn)
            probe = self.driver.probe(conn)
        except BaseException as exc:
            return self._open_failed(ticket, exc), exc
        # A backend terminated while our connect was finishing must not go to
        # a waiter: check the new socket as every hand-out does.
        try:
            dead = bool(probe(0)) and self.driver.after_readable(conn, probe) is True
        except BaseException:
            dead = True
        if dead:
            close_probe(probe)
            error = PoolError(
                f"pool {self.name!r}: a new connection was closed by the server right "
                "after it was opened"
            )
            return self._open_failed(ticket, error), error
        with self._lock:
            return self.core.opened(ticket, baseline, probe, self._clock()), None

    def _open_failed(self, ticket: Entry, exc: BaseException) -> Plan:
        detail = self._describe_error(exc)
        with self._lock:
            return self.core.open_failed(ticket, exc, self._clock(), detail)

    def fail_open(self, ticket: Entry, exc: BaseException) -> None:
        """A ticket could not even be attempted (no thread to open it)."""
        self.carry_out(self._open_failed(ticket, exc))

    def open_in_background(self, ticket: Entry) -> None:
        """A worker thread's job: open ``ticket`` and place the connection."""
        try:
            plan, _ = self.open(ticket)
            self.carry_out(plan)
        except BaseException as exc:  # never let a background thread die silently
            self._background_failed("opening a connection", exc)
        finally:
            self._maintainer.wake()

    # ------------------------------------------------------------------
    # Carrying out plans
    # ------------------------------------------------------------------

    def carry_out(self, plan: Plan) -> None:
        """Do the I/O a plan asks for: wake, close, interrupt, request opens, log."""
        for waiter in plan.wake:
            waiter.handle.release()
        for entry in plan.close:
            self._close(entry)
        for conn in plan.interrupt:
            self.driver.interrupt(conn)
        for conn in plan.force:
            self.driver.force_close(conn)
        if plan.open:
            self._maintainer.wake()
        for kind, detail in plan.events:
            self._on_event(kind, detail)
        if self._watchers:
            with self._lock:
                self._changed.notify_all()

    def _close(self, entry: Entry) -> None:
        conn = entry.conn
        entry.conn = None
        if conn is not None:
            self.driver.close(conn)
        close_probe(entry.probe)
        entry.probe = None

    def _background_failed(self, what: str, exc: BaseException) -> None:
        logger.error(
            "pool %r: %s failed: %s; the pool carries on",
            self.name,
            what,
            self._describe_error(exc),
            exc_info=not isinstance(exc, (KeyboardInterrupt, SystemExit)),
        )

    # ------------------------------------------------------------------
    # Background work (called by the maintenance thread)
    # ------------------------------------------------------------------

    def claim_open(self) -> Union[Entry, float, None]:
        """A ticket to open, seconds until the backoff ends, or None."""
        with self._lock:
            return self.core.claim_open(self._clock())

    def housekeep(self) -> None:
        """Retire, reap, report leaks; probe idle sockets; keepalive pings."""
        with self._lock:
            plan = self.core.housekeep(self._clock())
        self.carry_out(plan)
        if plan.reconnect_failed and self._reconnect_failed is not None:
            try:
                self._reconnect_failed()
            except BaseException as exc:
                self._background_failed("the reconnect_failed callback", exc)
        self._check_in_threads(plan.check, ping=True)  # keepalive: a round trip each
        found = [(e, taken_at) for e, taken_at in plan.poll if self._readable(e)]
        if found:
            with self._lock:
                suspects = self.core.suspect(found, self._clock())
            self.carry_out(suspects)
            self._check_in_threads(suspects.check, ping=False)

    def _check_in_threads(self, entries: Sequence[Entry], *, ping: bool) -> List[threading.Thread]:
        """Check each entry in a thread of its own; the threads started.

        A ping on a dead link (a NAT or firewall that dropped it) waits up to
        check_timeout: run one after the other in the maintenance thread, the
        checks would add up, and the connects that thread starts would wait
        for all of them.
        """
        threads = []
        for entry in entries:
            thread = threading.Thread(
                target=self._check,
                args=(entry,),
                kwargs={"ping": ping},
                name=f"pgreservoir-{self.name}-check",
                daemon=True,
            )
            try:
                thread.start()
            except RuntimeError:  # "can't start new thread": check it here
                self._check(entry, ping=ping)
            else:
                threads.append(thread)
        return threads

    @staticmethod
    def _readable(entry: Entry) -> bool:
        # Unlocked: the entry may have been handed out meanwhile (its socket is
        # then busy, and suspect() ignores it); probing a socket changes nothing.
        probe = entry.probe
        try:
            return probe is not None and bool(probe(0))
        except (OSError, ValueError):
            return False

    def _check(self, entry: Entry, *, ping: bool) -> None:
        """A background check of an entry the core reserved for it."""
        alive: Optional[bool] = True
        try:
            alive = self._probe(entry)
            if alive is None or (alive and ping):
                at = self._clock() + self._check_timeout
                alive = self._bounded(entry.conn, at, self.driver.ping)
            wrong = bool(alive) and stale(self.driver, self._role, entry.conn)
        except BaseException as exc:
            alive, wrong = False, False
            self._background_failed("checking an idle connection", exc)
        with self._lock:
            plan = self.core.checked(entry, bool(alive), self._clock(), stale=wrong)
        self.carry_out(plan)

    # ------------------------------------------------------------------
    # Whole-pool operations
    # ------------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        """Block until ``min_size`` connections are open, or raise PoolTimeout."""
        deadline = self._clock() + timeout
        with self._changed:
            self._watchers += 1
            try:
                while not self.core.filled():
                    if self.core.closed:
                        raise PoolError(f"pool {self.name!r}: connection pool is closed")
                    left = deadline - self._clock()
                    if left <= 0:
                        raise self.core.fill_error(timeout)
                    self._changed.wait(min(left, threading.TIMEOUT_MAX))
            finally:
                self._watchers -= 1

    def resize(self, min_size: int, max_size: int) -> None:
        """New sizes (validated by the caller)."""
        with self._lock:
            plan = self.core.resize(min_size, max_size, self._clock())
        self.carry_out(plan)
        if plan.error is not None:
            raise plan.error

    def close(self, timeout: float) -> None:
        """Stop serving; wait up to ``timeout`` for connections in use, then
        close them by force. Connects still in libpq are not waited for: they
        do nothing more for the pool when they return. Idempotent."""
        now = self._clock()
        with self._lock:
            plan = self.core.close(now)
        self.carry_out(plan)
        deadline = now + timeout
        with self._changed:
            self._watchers += 1
            try:
                while not self.core.settled():
                    left = deadline - self._clock()
                    if left <= 0:
                        break
                    self._changed.wait(min(left, threading.TIMEOUT_MAX))
            finally:
                self._watchers -= 1
            plan = self.core.abandon(self._clock())
        self.carry_out(plan)
        # A moment for the thread to end (it is between two steps almost always).
        self._maintainer.stop(min(1.0, max(0.05, deadline - self._clock())))

    def check_idle(self) -> None:
        """Check every idle connection now, with a round trip; replace the dead ones."""
        with self._lock:
            plan = self.core.check_all(self._clock())
        self.carry_out(plan)
        # Side by side, as keepalives: each is bounded by check_timeout.
        for thread in self._check_in_threads(plan.check, ping=True):
            thread.join()

    def drain(self) -> None:
        """Replace every connection: idle ones now, those in use when they come back."""
        with self._lock:
            plan = self.core.drain(self._clock())
        self.carry_out(plan)

    def refused_for_role(self, exc: BaseException, conn: Any) -> bool:
        """Whether ``exc``, raised while using ``conn``, is a write refused because its
        server left the role this pool wants (SQLSTATE 25006; servers before
        PostgreSQL 14 report no parameter status, so the error is the only sign)."""
        return (
            self._role is not None
            and self.driver.is_read_only_error(exc)
            and not self.driver.client_read_only(conn)
        )

    def mark_suspect(self) -> None:
        """A caller saw a disconnect error: idle connections get a round trip before use."""
        with self._lock:
            self.core.mark_suspect(self._clock())

    def stats(self) -> Any:
        """A consistent snapshot of gauges and counters."""
        with self._lock:
            return self.core.stats()

    def gauges(self) -> Any:
        """Just the gauges (size, idle, in_use, waiting...)."""
        with self._lock:
            return self.core.gauges()

    def figures(self) -> Any:
        """What the metrics exporters read (``stats.Figures``), under the lock."""
        with self._lock:
            return self.core.figures()

    def describe(self) -> str:
        """Short state for repr()."""
        with self._lock:
            return self.core.describe()

    def entry_of(self, conn: Any) -> Optional[Entry]:
        """The entry of a connection this pool has out (for leak tracing), else None."""
        entry = self.core.in_use.get(id(conn))
        return entry if entry is not None and entry.ref() is conn else None

    @property
    def background_alive(self) -> bool:
        """Whether the maintenance thread runs (for tests)."""
        return self._maintainer.alive

    # ------------------------------------------------------------------
    # fork()
    # ------------------------------------------------------------------

    def _after_fork_in_child(self, devnull: int) -> None:
        """In a forked child: disown the parent's connections, start afresh.

        The parent's sockets are shared with the child. Closing a connection
        (even psycopg2's dealloc) would send a Terminate message and end the
        parent's session, and any query would interleave with the parent's
        traffic. So each inherited descriptor is pointed at /dev/null: the
        child cannot reach the parent's sockets at all (a stray use fails
        with "server closed the connection"), and the parent's connections
        keep working. A connect in flight at the fork had no connection
        object yet; its socket is found among the descriptors it created.
        Only the forking thread survives a fork: the lock and the background
        thread are replaced too. Nothing is opened and no thread started until
        the child's first checkout (the core's plan then asks for opens, and
        waking the new maintainer starts its thread).
        """
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._watchers = 0
        conns, tickets = self.core.after_fork()
        for conn in conns:
            try:
                fd = self.driver.fileno(conn)
            except Exception:
                continue
            if fd >= 0:
                os.dup2(devnull, fd, inheritable=False)
        for ticket in tickets:
            if ticket.fds_before is not None:
                for fd in stray_sockets(ticket.fds_before, self.driver.server_ports):
                    os.dup2(devnull, fd, inheritable=False)
        self._maintainer = Maintainer(self)


def _after_fork_in_child() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for shell in list(_SHELLS):
            shell._after_fork_in_child(devnull)
    finally:
        os.close(devnull)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
