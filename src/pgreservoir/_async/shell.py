"""The asyncio shell: carries out the core's decisions with tasks on one event loop.

The same core as the blocking shell makes every decision; this shell only
acts. Calls into the core need no lock: they run on the pool's event loop,
never awaiting in the middle. A waiter is a Future of that loop.

What holds under cancellation. A cancel can land at any ``await`` of a
caller (``acquire``, ``release``, ``wait``, ``close``, ``check_idle``):

* It is always delivered: the cancelled call raises CancelledError, even when
  the cancel lands in the very step its wait ended (a cancelled ``acquire``
  never returns a connection). The shell waits only on futures of its own,
  which nothing but the caller's cancel can cancel (no ``asyncio.shield``,
  no ``asyncio.wait_for``: both can turn a cancel into a result).
* No slot is lost and no connection goes to two callers. Waiting in line, the
  caller leaves the line; a connection handed to it at that very moment goes
  to the next waiter or back to idle. During the checkout check (the
  ``SELECT 1``, the ``check`` callback), which runs in a task of the pool's:
  a check already over hands the connection back (idle, or the next waiter,
  if it passed); one still running has its socket shut, so it fails at once
  (no server-side cancel request to wait for), and the connection is
  discarded when that task has ended. Returning a connection: the clean-up
  (rollback, restore, ``reset()``) goes on in its task and returns or
  discards the connection by itself. ``close()`` cancelled: what is still
  out is closed by force at once, as after its timeout.
* A connection is never closed while a pool task awaits a round trip on it:
  closing its descriptor under the task would leave the event loop with a
  stale registration for that number, breaking the next socket that gets it.
  Whoever gives up on such a task (a cancelled caller, ``close()``, a pool
  collected while open) only shuts the socket; the task closes the
  connection when it ends. Every round trip of the pool's is bounded by
  ``check_timeout`` (then its socket is shut), and a step that goes on
  regardless is cancelled a moment later.

Background work never waits on a round trip: keepalive and suspect checks,
and the ``reconnect_failed`` callback, run in tasks of their own, side by
side, so a connect the core asks for starts at once. Every task the pool
starts is tracked; ``close()`` ends them all, so no task or connection
outlives a closed pool. The pool serves the event loop it was opened on:
``acquire`` and ``release`` from any other loop raise RuntimeError and
change nothing.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import time
import warnings
import weakref
from typing import Any, Awaitable, Callable, Coroutine, Dict, List, Optional, Set, Tuple

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
from .._sync.shell import MIN_CHECK_TIME
from ..drivers import AsyncDriver
from ..drivers._sockets import close_probe, open_fds, stray_sockets
from ..errors import PoolClosed, PoolError, throw
from ..options import PoolOptions, check_seconds

__all__ = ["AsyncPool"]

EventSink = Callable[[str, str], None]

_SHELLS: weakref.WeakSet[AsyncPool] = weakref.WeakSet()
_TRACK_FDS = sys.platform.startswith("linux")


#: How long a pool task may go on after its socket was shut (the step is not
#: waiting on it: a check() or reset() doing something else) before it is
#: cancelled.
_STUCK = 1.0


def _wake(fut: asyncio.Future[None]) -> None:
    # A waiter's future may be cancelled with its task: then nobody waits.
    if not fut.done():
        fut.set_result(None)


class _Signal:
    """Wakes the tasks waiting on it, like asyncio.Event, but waits with a
    future and a timer: a cancel is always delivered (not asyncio.wait_for)."""

    __slots__ = ("_flag", "_loop", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._flag = False
        self._waiters: List[asyncio.Future[None]] = []

    def set(self) -> None:
        self._flag = True
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for fut in waiters:
                _wake(fut)

    def clear(self) -> None:
        self._flag = False

    async def wait(self, timeout: float) -> None:
        """Until set (now or later) or ``timeout`` seconds."""
        if self._flag:
            return
        fut = self._loop.create_future()
        self._waiters.append(fut)
        try:
            await _until_woken(fut, self._loop.call_later(max(0.0, timeout), _wake, fut))
        finally:
            if fut in self._waiters:  # woken by the timer, or cancelled
                self._waiters.remove(fut)


async def _until_woken(fut: asyncio.Future[None], timer: asyncio.TimerHandle) -> None:
    """Await ``fut`` (set by the core's wake or by ``timer``), then drop the timer."""
    try:
        await fut
    finally:
        timer.cancel()


async def _join(task: asyncio.Task[Any]) -> None:
    """Until ``task`` ends. Cancelling the caller cancels only the wait (the
    task goes on) and the CancelledError always reaches the caller: unlike
    asyncio.shield, the task's own end never raises here."""
    fut = task.get_loop().create_future()
    task.add_done_callback(lambda _: _wake(fut))
    await fut


def _succeeded(task: asyncio.Task[Any]) -> bool:
    return not task.cancelled() and task.exception() is None


def _consume(task: asyncio.Task[Any]) -> None:
    # A pool task's failure is reported through the core; never let asyncio
    # log "Task exception was never retrieved" for it.
    if not task.cancelled():
        task.exception()


async def _maybe_await(result: Any) -> None:
    if inspect.isawaitable(result):
        await result


class AsyncPool:
    """The asyncio shell of one pool (see the module notes)."""

    def __init__(
        self,
        core: Core,
        driver: AsyncDriver,
        options: PoolOptions,
        *,
        owner: Any = None,
        on_event: EventSink,
        reconnect_failed: Optional[Callable[[], Any]] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``owner`` is what new connections name as their pool (psycopg's
        ``conn._pool``); callbacks may be plain functions or coroutine functions."""
        self.core = core
        self.name = core.name
        self.driver = driver
        self.clock = clock
        self._on_event = on_event
        self._configure = options.configure
        self._reset = options.reset
        self._state_watch = SessionStateWatch(core.name) if options.transaction_pooling else None
        self._user_check = options.check
        self._check_timeout = options.check_timeout
        self._barge = core.barge_window
        self._reconnect_failed = reconnect_failed
        self._owner = self if owner is None else owner
        self._role = role_check(driver)  # a wanted server role (target_session_attrs)
        self._verdict = role_verdict(driver, self._role)
        self._entry_of = core.in_use.get
        # Bound to the first event loop the pool is used on (open()).
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        # Every task this pool started and that has not ended.
        self._tasks: Set[asyncio.Task[Any]] = set()
        self._maintenance: Optional[asyncio.Task[None]] = None
        self._work: Optional[_Signal] = None  # wakes the maintenance task
        self._changed: Optional[_Signal] = None  # set after each plan carried out
        # id -> connection for those a pool task is awaiting a round trip on
        # for a caller (the checkout check): closed only once that task ends.
        self._busy: Dict[int, Any] = {}
        self._started = False
        _SHELLS.add(self)
        _metrics.track(self, options.meter_provider)

    # ------------------------------------------------------------------
    # The event loop
    # ------------------------------------------------------------------

    @property
    def loop(self) -> Optional[asyncio.AbstractEventLoop]:
        """The event loop the pool belongs to (None until it is opened)."""
        return self._loop

    def bind(self) -> asyncio.AbstractEventLoop:
        """The running loop, which must be the pool's (the first one binds it)."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._work = _Signal(loop)
            self._changed = _Signal(loop)
            self.core.new_handle = loop.create_future
        elif self._loop is not loop:
            raise self._other_loop()
        return loop

    def _other_loop(self) -> RuntimeError:
        return RuntimeError(
            f"pool {self.name!r} belongs to another event loop: an asyncio pool "
            "serves the loop it was opened on; create one pool per event loop"
        )

    def start(self) -> None:
        """Start serving on the running loop: request ``min_size`` connections."""
        loop = self.bind()
        if self._started:
            return
        self._started = True
        plan = self.core.start(self.clock())
        self._maintenance = loop.create_task(self._maintain(), name=f"pgreservoir-{self.name}")
        self.carry_out(plan)

    def _spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        assert self._loop is not None
        task = self._loop.create_task(coro, name=f"pgreservoir-{self.name}-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_consume)
        return task

    def _loop_time(self, at: float) -> float:
        # The core's clock may be a test's; the loop has its own.
        assert self._loop is not None
        return self._loop.time() + (at - self.clock())

    # ------------------------------------------------------------------
    # Checkout
    # ------------------------------------------------------------------

    async def acquire(self, timeout: Optional[float] = None) -> Any:
        """A connection, checked, waiting in line up to ``timeout`` seconds
        (None: the pool's timeout; 0: do not wait)."""
        if self._loop is not asyncio.get_running_loop() or not self._started:
            self.start()
        if timeout is not None and (type(timeout) is not float or not timeout >= 0.0):
            timeout = check_seconds("timeout", timeout)
        now = self.clock()
        got = self.core.checkout(now, timeout)
        if type(got) is Entry:
            # The fast path, with no await: nothing can cancel it half-way.
            if got.vet == PROBE and not got.probe(0):  # type: ignore[misc]
                conn = got.conn
                got.conn = None
                return conn
            return await self._acquire_slow(got, None, now, timeout)
        if type(got) is tuple:  # refused, nothing else to do
            raise self.core.refused(got)  # no local holds it: no cycle (errors.throw)
        return await self._acquire_slow(None, got, now, timeout)  # type: ignore[arg-type]

    async def _acquire_slow(
        self, entry: Optional[Entry], plan: Optional[Plan], now: float, timeout: Optional[float]
    ) -> Any:
        wait = self.core.timeout if timeout is None else timeout
        since, deadline = now, now + wait
        while True:
            if plan is not None:
                self.carry_out(plan)
                if plan.error is not None:
                    throw(plan.take_error())
                entry = plan.entry
                if plan.waiter is not None:
                    entry = await self._wait(plan.waiter, deadline)
            assert entry is not None
            conn = await self._vet(entry, deadline, wait <= 0, since)
            if conn is not None:
                return conn
            # It was dead (and is discarded): try again, at the head of the line.
            now = self.clock()
            got = self.core.checkout(now, max(0.0, deadline - now) if wait > 0 else 0.0, retry=True)
            if type(got) is Entry:
                entry, plan = got, None
            else:
                entry, plan = None, got  # type: ignore[assignment]

    async def _wait(self, waiter: Waiter, deadline: float) -> Entry:
        """Wait in line until served or ``deadline``; PoolTimeout/PoolClosed otherwise."""
        try:
            await self._sleep(waiter, deadline)
        except BaseException:
            # Cancelled (or interrupted), whether or not served already: leave
            # the line; a connection handed to us goes to the next in line.
            self.carry_out(self.core.give_up(waiter, self.clock(), interrupted=True))
            raise
        if waiter.error is not None:
            throw(waiter.take_error())
        if waiter.entry is not None:
            return waiter.entry
        plan = self.core.give_up(waiter, self.clock())  # the timer woke us
        self.carry_out(plan)
        if plan.error is not None:
            throw(plan.take_error())
        assert plan.entry is not None
        return plan.entry

    async def _sleep(self, waiter: Waiter, deadline: float) -> None:
        """Until the core gives ``waiter`` an outcome, or ``deadline``. With a
        barging window, first until the window ends: then claim a connection
        left idle by callers that passed it (see SyncPool._sleep)."""
        loop = self._loop
        assert loop is not None
        window_end = waiter.since + self._barge
        if self._barge and window_end < deadline:
            await _until_woken(
                waiter.handle, loop.call_at(self._loop_time(window_end), _wake, waiter.handle)
            )
            if waiter.entry is not None or waiter.error is not None:
                return
            self.carry_out(self.core.claim(waiter, self.clock()))
            if waiter.entry is not None or waiter.error is not None:
                return
            # The timer completed the old future: the core wakes this one.
            waiter.handle = loop.create_future()
        fut = waiter.handle
        await _until_woken(fut, loop.call_at(self._loop_time(deadline), _wake, fut))

    async def _vet(self, entry: Entry, deadline: float, no_wait: bool, since: float) -> Any:
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
            now = self.clock()
            at = now + self._check_timeout if no_wait else min(deadline, now + self._check_timeout)
            if at - now < MIN_CHECK_TIME:
                plan = self.core.decline(entry, now, since)
                self.carry_out(plan)
                assert plan.error is not None
                raise plan.error
            task, woken, late = self._start_step(conn, at, self._checks(ping), "check")
            try:
                await woken
            except BaseException:
                # Cancelled (only the caller can be: nobody else has ``woken``).
                # The cancel goes on; the connection goes back once the task
                # has let go of it, never under it.
                if not task.done():
                    self.driver.interrupt(conn)  # the round trip fails at once
                    self._hand_back_after(task, entry, CloseReason.INTERRUPTED)
                elif late or not _succeeded(task):
                    self._hand_back(entry, CloseReason.DEAD)
                else:
                    self._hand_back(entry)  # checked and fine: the next taker has it
                raise
            if not task.done():  # overdue: its socket is shut, the task ends soon
                self._hand_back_after(task, entry, CloseReason.DEAD)
                return None
            alive = not late and _succeeded(task)
            # The round trip brought the server's latest parameter statuses.
            if alive and stale(self.driver, self._role, conn):
                self._hand_back(entry, CloseReason.STALE_ROLE)
                return None
        if not alive:
            self._hand_back(entry, CloseReason.DEAD)
            return None
        entry.conn = None
        return conn

    def _checks(self, ping: bool) -> Callable[[Any], Coroutine[Any, Any, None]]:
        """The round trips a hand-out needs: a ping, the user's check(), or both."""
        check = self._user_check
        driver_ping = self.driver.ping

        async def run(conn: Any) -> None:
            if ping:
                await driver_ping(conn)
            if check is not None:
                await _maybe_await(check(conn))

        return run

    def _probe(self, entry: Entry) -> Optional[bool]:
        """Zero-round-trip liveness: True alive, False dead, None unsure (ping it)."""
        probe = entry.probe
        if probe is None or not probe(0):
            return True
        dead = self.driver.after_readable(entry.conn, probe)
        return None if dead is None else not dead

    def _hand_back(self, entry: Entry, reason: Optional[CloseReason] = None) -> None:
        """Give back to the core a connection handed to a caller that will not
        have it: unused (``reason`` None: to the next in line or idle) or to discard."""
        now = self.clock()
        if reason is None:
            plan = self.core.put_back(entry, now)
        else:
            plan = self.core.lose(entry, now, reason)
        self.carry_out(plan)

    def _hand_back_after(self, task: asyncio.Task[Any], entry: Entry, reason: CloseReason) -> None:
        """Discard ``entry`` when ``task`` (a round trip on it) has ended, and
        bound the task: cancelled if its shut socket does not end it."""
        assert self._loop is not None
        task.add_done_callback(lambda _: self._hand_back(entry, reason))
        self._loop.call_later(_STUCK, task.cancel)

    def _start_step(
        self, conn: Any, at: float, step: Callable[[Any], Coroutine[Any, Any, Any]], what: str
    ) -> Tuple[asyncio.Task[Any], asyncio.Future[None], List[bool]]:
        """Start the round trip ``step(conn)`` in a task of the pool's, for a
        caller. The future is woken when the task ends, or at ``at``: then the
        socket is shut (the step fails at once, with no server-side cancel to
        wait for), the list says so (the connection is not to be used even if
        the task ends well) and the task, if it goes on regardless, is
        cancelled after _STUCK. Until the task ends ``conn`` counts as busy:
        close() does not close it by force (its descriptor must not be closed
        under the task)."""
        loop = self._loop
        assert loop is not None
        key = id(conn)
        self._busy[key] = conn
        task = self._spawn(step(conn), what)
        woken: asyncio.Future[None] = loop.create_future()
        late: List[bool] = []

        def overdue() -> None:
            if not task.done():
                late.append(True)
                self.driver.interrupt(conn)
                loop.call_later(_STUCK, task.cancel)
            _wake(woken)

        timer = loop.call_at(self._loop_time(at), overdue)

        def ended(_: object) -> None:
            timer.cancel()
            self._busy.pop(key, None)
            _wake(woken)

        task.add_done_callback(ended)
        return task, woken, late

    async def _round_trip(
        self, conn: Any, at: float, step: Callable[[Any], Awaitable[Any]]
    ) -> bool:
        """Run ``step(conn)`` in this (pool) task, its socket shut at ``at``;
        whether it succeeded in time."""
        assert self._loop is not None
        fired: List[bool] = []

        def interrupt() -> None:
            fired.append(True)
            self.driver.interrupt(conn)

        timer = self._loop.call_at(self._loop_time(at), interrupt)
        try:
            await step(conn)
        except Exception:
            return False
        finally:
            timer.cancel()
        return not fired

    # ------------------------------------------------------------------
    # Check-in
    # ------------------------------------------------------------------

    async def release(self, conn: Any, close: bool = False) -> None:
        """Take back a connection handed out by :meth:`acquire` (see SyncPool.release).

        A clean-up it needs (rollback, restore, ``reset()``) runs in a task of
        the pool's: cancelling the caller does not interrupt it. Only the
        pool's own event loop may return connections (as only it takes them).
        """
        if self._loop is not asyncio.get_running_loop() and self._loop is not None:
            raise self._other_loop()
        now = self.clock()
        entry = self._entry_of(id(conn))
        if entry is None or entry.ref() is not conn:
            entry, verdict = None, BROKEN
        else:
            verdict = self._verdict(conn, entry.baseline)
            if close:
                verdict = BROKEN if verdict == BROKEN else CLOSE
            elif verdict == RESTORE or (verdict == CLEAN and self._reset is not None):
                verdict = DIRTY
        got = self.core.checkin(entry, conn, verdict, now)
        if got is None:
            return
        if type(got) is Waiter:
            _wake(got.handle)
            return
        plan: Plan = got  # type: ignore[assignment]
        self.carry_out(plan)
        if plan.error is not None:
            raise plan.error
        if plan.clean is not None:
            await _join(self._spawn(self._clean(plan.clean), "clean"))

    async def _clean(self, entry: Entry) -> None:
        """Roll back, restore and reset a returned connection, bounded by check_timeout."""
        assert self._loop is not None
        conn = entry.conn
        failure: Optional[str] = None
        fired: List[bool] = []
        task = asyncio.current_task()

        def interrupt() -> None:
            fired.append(True)
            self.driver.interrupt(conn)
            # A reset() not waiting on the socket is not ended by shutting it.
            if task is not None and self._loop is not None:
                self._loop.call_later(_STUCK, task.cancel)

        timer = self._loop.call_at(self._loop_time(self.clock() + self._check_timeout), interrupt)
        try:
            await self.driver.clean(conn, entry.baseline)
            if self._reset is not None:
                await _maybe_await(self._reset(conn))
                if self.driver.in_transaction(conn):
                    raise PoolError("reset() left a transaction open")
                watch = self._state_watch
                if watch is not None and watch.wants_reset_check():
                    await self._watch_state(conn, "reset")
        except BaseException as exc:
            failure = self._describe_error(exc)
            if not isinstance(exc, Exception):  # cancelled by close(), or worse
                timer.cancel()
                self.carry_out(self.core.cleaned(entry, self.clock(), failure))
                raise
        finally:
            timer.cancel()
        if fired:
            failure = f"did not finish within check_timeout={self._check_timeout:g} s"
        self.carry_out(self.core.cleaned(entry, self.clock(), failure))

    def _describe_error(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or "(no message)"
        return self.driver.redact(f"{type(exc).__name__}: {text}")

    # ------------------------------------------------------------------
    # Opening connections
    # ------------------------------------------------------------------

    async def _open(self, ticket: Entry) -> None:
        """Connect, configure and check a new connection for ``ticket`` and tell the core."""
        if _TRACK_FDS:
            ticket.fds_before = open_fds()
        try:
            conn = await self.driver.connect()
        except BaseException as exc:
            self.carry_out(self._open_failed(ticket, exc))
            if not isinstance(exc, Exception):
                raise
            return
        plan = self.core.connected(ticket, conn, self.clock())
        if plan.close:  # the pool closed meanwhile: nothing more for it
            self.carry_out(plan)
            return
        try:
            self.driver.adopt(conn, self._owner)
            if self._configure is not None:
                await _maybe_await(self._configure(conn))
                if self.driver.in_transaction(conn):
                    raise PoolError(
                        f"configure() left a transaction open on a new connection of pool "
                        f"{self.name!r}: commit or roll back inside configure()"
                    )
                if self._state_watch is not None:
                    await self._watch_state(conn, "configure")
            baseline = self.driver.snapshot(conn)
            probe = self.driver.probe(conn)
            if probe(0) and self.driver.after_readable(conn, probe) is True:
                close_probe(probe)
                raise PoolError(
                    f"pool {self.name!r}: a new connection was closed by the server right "
                    "after it was opened"
                )
        except BaseException as exc:
            self.carry_out(self._open_failed(ticket, exc))
            if not isinstance(exc, Exception):
                raise
            return
        self.carry_out(self.core.opened(ticket, baseline, probe, self.clock()))

    def _open_failed(self, ticket: Entry, exc: BaseException) -> Plan:
        return self.core.open_failed(ticket, exc, self.clock(), self._describe_error(exc))

    # ------------------------------------------------------------------
    # Carrying out plans
    # ------------------------------------------------------------------

    def carry_out(self, plan: Plan) -> None:
        """Do what a plan asks, without awaiting: wake, close, interrupt, open, log."""
        for waiter in plan.wake:
            _wake(waiter.handle)
        for entry in plan.close:
            self._close(entry)
        for conn in plan.interrupt:
            self.driver.interrupt(conn)
        for conn in plan.force:
            if id(conn) in self._busy:  # its check task closes it when it ends
                self.driver.interrupt(conn)
            else:
                self.driver.force_close(conn)
        if plan.open and self._work is not None:
            self._work.set()
        for kind, detail in plan.events:
            self._on_event(kind, detail)
        if self._changed is not None:
            self._changed.set()

    def _close(self, entry: Entry) -> None:
        conn = entry.conn
        entry.conn = None
        if conn is not None:
            self.driver.close_now(conn)
        close_probe(entry.probe)
        entry.probe = None

    # ------------------------------------------------------------------
    # Background work
    # ------------------------------------------------------------------

    async def _maintain(self) -> None:
        """The pool's maintenance task: housekeeping, and a task per connect."""
        assert self._work is not None
        interval = self.core.interval
        next_housekeeping = self.clock() + interval
        while not self.core.closed:
            self._work.clear()
            delay: Optional[float] = None
            # Nothing here awaits: checks and callbacks run in tasks of their
            # own, so a connect is never held up behind them.
            try:
                now = self.clock()
                if now >= next_housekeeping:
                    next_housekeeping = now + interval
                    self._housekeep()
                delay = self._start_opens()
            except Exception as exc:  # a bug
                self._background_failed("background work", exc)
                delay = interval
            wait = next_housekeeping - self.clock()
            if delay is not None:
                wait = min(wait, delay)
            await self._work.wait(wait)

    def _start_opens(self) -> Optional[float]:
        while True:
            got = self.core.claim_open(self.clock())
            if not isinstance(got, Entry):
                return got
            task = self._spawn(self._open(got), "connect")
            task.add_done_callback(lambda _: self._work.set() if self._work else None)

    def _housekeep(self) -> None:
        plan = self.core.housekeep(self.clock())
        self.carry_out(plan)
        if plan.reconnect_failed and self._reconnect_failed is not None:
            self._spawn(self._call_reconnect_failed(self._reconnect_failed), "reconnect-failed")
        for entry in plan.check:
            self._spawn(self._check(entry, ping=True), "keepalive")
        found: List[Tuple[Entry, float]] = []
        for entry, taken_at in plan.poll:
            probe = entry.probe
            try:
                if probe is not None and probe(0):
                    found.append((entry, taken_at))
            except (OSError, ValueError):
                continue
        if found:
            suspects = self.core.suspect(found, self.clock())
            self.carry_out(suspects)
            for entry in suspects.check:
                self._spawn(self._check(entry, ping=False), "keepalive")

    async def _call_reconnect_failed(self, callback: Callable[[], Any]) -> None:
        try:
            await _maybe_await(callback())
        except Exception as exc:
            self._background_failed("the reconnect_failed callback", exc)

    async def _check(self, entry: Entry, *, ping: bool) -> None:
        """A background check of an entry the core reserved for it, in a task
        of its own (checks run side by side, never ahead of a connect)."""
        alive: Optional[bool] = True
        try:
            alive = self._probe(entry)
            if alive is None or (alive and ping):
                at = self.clock() + self._check_timeout
                alive = await self._round_trip(entry.conn, at, self.driver.ping)
            wrong = bool(alive) and stale(self.driver, self._role, entry.conn)
        except asyncio.CancelledError:
            self.carry_out(self.core.checked(entry, False, self.clock()))
            raise
        except BaseException as exc:
            alive, wrong = False, False
            self._background_failed("checking an idle connection", exc)
        self.carry_out(self.core.checked(entry, bool(alive), self.clock(), stale=wrong))

    def _background_failed(self, what: str, exc: BaseException) -> None:
        logger.error(
            "pool %r: %s failed: %s; the pool carries on",
            self.name,
            what,
            self._describe_error(exc),
            exc_info=not isinstance(exc, (KeyboardInterrupt, SystemExit)),
        )

    # ------------------------------------------------------------------
    # Whole-pool operations
    # ------------------------------------------------------------------

    async def _until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Wait until ``done()`` (re-checked after every plan) or ``deadline``."""
        assert self._changed is not None
        while not done():
            left = deadline - self.clock()
            if left <= 0:
                return False
            self._changed.clear()
            if done():
                return True
            await self._changed.wait(left)
        return True

    async def wait(self, timeout: float) -> None:
        """Wait until ``min_size`` connections are open, or raise PoolTimeout."""
        if self._loop is not asyncio.get_running_loop() or not self._started:
            self.start()
        deadline = self.clock() + timeout
        core = self.core
        if not await self._until(lambda: core.filled() or core.closed, deadline):
            raise core.fill_error(timeout)
        if core.closed:
            raise PoolClosed(f"pool {self.name!r}: connection pool is closed", pool_name=self.name)

    def resize(self, min_size: int, max_size: int) -> None:
        """New sizes (validated by the caller)."""
        plan = self.core.resize(min_size, max_size, self.clock())
        self.carry_out(plan)
        if plan.error is not None:
            raise plan.error

    async def close(self, timeout: float) -> None:
        """Stop serving; wait up to ``timeout`` for connections in use, then close
        them by force; end every task of the pool. Idempotent."""
        now = self.clock()
        self.carry_out(self.core.close(now))
        if self._loop is None:  # never opened: nothing runs
            return
        self.bind()
        deadline = now + timeout
        try:
            await self._until(self.core.settled, deadline)
        finally:  # cancelled too: what is still out is closed by force at once
            self._abandon()
        pending = [t for t in (*self._tasks, self._maintenance) if t is not None and not t.done()]
        if pending:
            grace = min(1.0, max(0.05, deadline - self.clock()))
            await asyncio.wait(pending, timeout=grace)

    def _abandon(self) -> None:
        """Close by force what is still out; cancel the connects in flight and
        the maintenance task (they end at their next await). The checks and
        clean-ups are not cancelled: their sockets are shut, they end by
        themselves and only then close their connection."""
        self.carry_out(self.core.abandon(self.clock()))
        for task in list(self._tasks):
            if task.get_name().endswith(("-connect", "-reconnect-failed")):
                task.cancel()
        if self._maintenance is not None:
            self._maintenance.cancel()

    def stats(self) -> Any:
        """A consistent snapshot of gauges and counters."""
        return self.core.stats()

    def gauges(self) -> Any:
        """Just the gauges."""
        return self.core.gauges()

    def figures(self) -> Any:
        """What the metrics exporters read (``stats.Figures``). Called from any
        thread: the core reads atomically what it gives (see Core.figures)."""
        return self.core.figures()

    def describe(self) -> str:
        """Short state for repr()."""
        return self.core.describe()

    async def check_idle(self) -> None:
        """Check every idle connection now, with a round trip; replace the dead ones."""
        self.bind()
        plan = self.core.check_all(self.clock())
        self.carry_out(plan)
        # Side by side, in tasks of the pool's: cancelling the caller stops
        # only its wait; each check reports to the core when it ends.
        for task in [self._spawn(self._check(entry, ping=True), "keepalive")
                     for entry in plan.check]:
            await _join(task)

    def drain(self) -> None:
        """Replace every connection: idle ones now, those in use when they come back."""
        self.carry_out(self.core.drain(self.clock()))

    async def _watch_state(self, conn: Any, callback: str) -> None:
        """As SyncPool._watch_state, awaited."""
        watch = self._state_watch
        assert watch is not None
        try:
            state = await self.driver.fetch_value(conn, SESSION_STATE_SQL)
        except Exception:  # best effort (see SyncPool._watch_state)
            return
        watch.found(callback, state)

    def refused_for_role(self, exc: BaseException, conn: Any) -> bool:
        """As :meth:`SyncPool.refused_for_role`."""
        return (
            self._role is not None
            and self.driver.is_read_only_error(exc)
            and not self.driver.client_read_only(conn)
        )

    def mark_suspect(self) -> None:
        """A caller saw a disconnect error: idle connections get a round trip before use."""
        self.core.mark_suspect(self.clock())

    def entry_of(self, conn: Any) -> Optional[Entry]:
        """The entry of a connection this pool has out, else None."""
        entry = self.core.in_use.get(id(conn))
        return entry if entry is not None and entry.ref() is conn else None

    @property
    def tasks(self) -> Set[asyncio.Task[Any]]:
        """The pool's tasks still running (for tests and close())."""
        live = set(self._tasks)
        if self._maintenance is not None and not self._maintenance.done():
            live.add(self._maintenance)
        return live

    def abandon_on_collect(self, warn: bool = True) -> None:
        """The pool was garbage-collected while open: close what can be closed
        without awaiting (its loop may be gone), and say so once (``warn``)."""
        if self.core.closed:
            return
        if warn:
            warnings.warn(
                f"pool {self.name!r} was garbage-collected while open: close it with "
                "`await pool.close()` or use `async with`",
                ResourceWarning,
                stacklevel=2,
            )
        self.carry_out(self.core.close(self.clock()))
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # On the loop's own thread: tasks are cancelled there, and only
            # those close() cancels (see _abandon).
            loop.call_soon_threadsafe(self._abandon)
        else:
            self.carry_out(self.core.abandon(self.clock()))

    # ------------------------------------------------------------------
    # fork()
    # ------------------------------------------------------------------

    def _after_fork_in_child(self, devnull: int) -> None:
        """In a forked child: disown the parent's connections (see SyncPool)."""
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
        # The parent's loop and tasks are not the child's: start afresh on
        # whichever loop the child uses the pool on.
        self._loop = None
        self._tasks = set()
        self._maintenance = None
        self._work = self._changed = None
        self._started = False


def _after_fork_in_child() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for shell in list(_SHELLS):
            shell._after_fork_in_child(devnull)
    finally:
        os.close(devnull)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
