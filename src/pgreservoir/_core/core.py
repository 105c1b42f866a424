"""The pool core: every decision of every pool, and no I/O.

Design notes
------------
* **Decisions only.** The core holds the pool's state and decides everything:
  checkout, check-in, hand-off, timeouts, growth, refill, retirement, backoff,
  fail-fast, close. It never connects, closes, sleeps, waits, logs or calls
  user code, and it never reads the clock: it is given ``now``. Each call
  returns what to do (a :class:`Plan`), and the shells (threads, asyncio)
  carry that out. Because a decision and the state change it implies happen
  in one call, no shell can act on state that changed in between.
* **Serialised calls.** The core has no lock of its own: the blocking shell
  calls it under one lock, the asyncio shell from its event loop. Calls are
  short and do no I/O, so the lock is never held across a round trip.
* **Every slot has a state** (:class:`State`), changed only here, in the same
  call that decides its fate; a slot is freed exactly once (entry CLOSED), so
  a connection can be closed only once and ``size`` cannot drift.
* **Fair line, acknowledged hand-off.** A caller that finds no idle
  connection joins ``_waiters`` (FIFO). A connection handed to the line goes
  to the oldest waiter in the same call, before the waiter runs. A waiter
  that gives up (timeout, exception, cancellation) asks the core, which
  tells it whether it was served meanwhile and re-routes what it was given.
* **Bounded barging** (``barge_window``). Handing a connection from one
  thread to another costs two wake-ups; the thread that returns a
  connection usually wants the next one at once. So a returned connection
  goes to idle, for whoever asks first, while the line's head has waited
  less than the window and the connection has not been kept from the line
  longer than its share of it, nor for more than a few checkouts
  (``_PACE``); otherwise to the line. Waiters
  never pass each other, and a waiter whose window ends takes any
  connection left idle (``claim``): so a connection never sits idle while
  someone has waited longer than the window. With a window of 0, idle
  connections and waiters never coexist (strict FIFO).
* **Claims only where they can matter** (``lazy_claims``, the blocking
  shell). Waking every waiter at the end of its window costs a timed wait,
  a wake-up and the lock per checkout once waits outgrow the window (many
  threads on few connections), almost always to find nothing to claim. So a
  waiter that joins a line whose head has already waited out its window is
  not woken at its own window's end (``Waiter.timed`` False), and a
  connection is only left idle while callers wait if the line's head will
  be woken to claim it: with an untimed head, a returned connection goes to
  the line and any idle one is handed to it (``_cover``). A waiter can only
  be passed while the head is within its window, and the head is never
  younger than those behind it: so once a waiter's window is over, nothing
  goes idle while it waits, and an untimed waiter loses nothing.
* **Every hand-out is checked by the receiver.** The core hands a connection
  to one caller (IN_USE) and marks how much checking it needs (``vet``); the
  receiving thread probes its socket (zero round trips) and, if asked, pings
  it, before use. A dead one is reported back (``lose``) and the caller
  retries at the head of the line.
* **Growth in the background.** While callers wait and the pool is below
  ``max_size``, the core requests opens; workers claim them one ticket at a
  time (``claim_open``), at most ``num_workers`` at once and a single one
  while connecting fails, with exponential backoff between failures.
"""

from __future__ import annotations

import math
import random
import sys
import weakref
from bisect import bisect_left as _bisect
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple, Type, Union

from ..errors import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from ..options import PoolOptions
from ..stats import BUCKETS as _BUCKETS
from ..stats import GAUGE_KEYS, DurationHistogram, Figures, WaitHistogram
from .plan import Plan
from .records import CHECK, PING, PROBE, CloseReason, Entry, State, Waiter

__all__ = [
    "BACKOFF_INITIAL",
    "BACKOFF_MAX",
    "BROKEN",
    "CLEAN",
    "CLOSE",
    "DIRTY",
    "HOLDER_CLOSED",
    "LIFETIME_JITTER",
    "STALE_ROLE",
    "Core",
]

#: max_lifetime is shortened by a random fraction up to this much per
#: connection, so connections opened together do not all expire together.
LIFETIME_JITTER = 0.05
#: First delay (seconds) before retrying after a failed connection attempt.
BACKOFF_INITIAL = 0.05
#: Longest delay between attempts while the server is unreachable: short
#: enough that callers get connections within ~1 s of the server coming back.
BACKOFF_MAX = 1.0

# Verdicts on a returned connection, made by the driver without I/O, in
# increasing order of work; CLOSE is the caller's own putconn(close=True).
CLEAN = 0  # idle, settings unchanged: straight back to the pool
DIRTY = 1  # in a transaction, in error, or settings changed: clean it first
BROKEN = 2  # closed, broken or in an unknown state: discard
CLOSE = 3
# From a driver to the shell only: idle, and only client-side settings
# changed (autocommit, isolation level...). The shell puts them back, which
# needs no round trip, and checks the connection in as CLEAN.
RESTORE = 4
# Closed by its holder (conn.close()): a quiet discard. Not a lost
# connection: nothing says its siblings are dead.
HOLDER_CLOSED = 5
# From a shell whose pool wants a server role (see roles.py): the server
# reported it is no longer in it (promoted elsewhere, fenced read-only). A
# discard, and its siblings get a round trip before use: they are on the same
# server, and the round trip brings their new parameter status.
STALE_ROLE = 6

_OPENING = State.OPENING
_IDLE = State.IDLE
_IN_USE = State.IN_USE
_RESERVED = State.RESERVED
_CLOSED = State.CLOSED

# Barging pace: while callers wait, a returned connection goes to the line
# once it has been kept from it for barge_window * max_size / waiting * _PACE
# seconds. With n waiting on m connections the line then moves on n / (m *
# that) per second: a newcomer at its tail waits about _PACE * barge_window,
# and the window itself is the backstop. Each connection goes to the line on
# a steady beat, rather than whenever the head happens to run out of time,
# so every thread gets connections for like spells: measured on 32 threads
# and 8 connections, that keeps the spread of work between threads close to
# strict FIFO's while most checkouts need no hand-off between threads.
_PACE = 0.5
# ... and at the latest once it has been taken straight back this many times
# in a row. Spells of time alone give a thread that the OS deschedules mid-
# spell fewer checkouts than the others: under CPU contention that spread the
# threads' shares to 0.2-0.5 over short runs. A count bounds each spell in
# checkouts too, whatever the scheduler does.
_SPELL = 4

# Most log lines kept for the next housekeeping (discards are bursts: a
# server restart discards every connection at once).
_LATER_MAX = 64
# Discards that are routine, so not worth a log line.
_QUIET = (
    CloseReason.POOL_CLOSED,
    CloseReason.ABANDONED,
    CloseReason.NOT_KEPT,
    CloseReason.HOLDER_CLOSED,
)


class Core:
    """The state and the decisions of one pool (see the module notes)."""

    def __init__(
        self,
        options: PoolOptions,
        *,
        name: str,
        min_size: int,
        max_size: int,
        inline: bool = False,
        lifo: bool = True,
        keep_idle: bool = True,
        refusal: Optional[Tuple[str, str]] = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        """``min_size``/``max_size`` validated by the caller. ``inline``: a caller
        that does not wait and finds room opens its own connection (psycopg2.pool
        semantics); ``lifo``: reuse the most recently returned connection first
        (else in turn, oldest first); ``keep_idle=False``: a connection nobody
        waits for is closed (a null pool: min_size 0, no idle connections);
        ``refusal``: (message, hint) of every PoolTimeout, the core's own account
        and the hint becoming notes made only if read (the psycopg2 drop-in's
        "connection pool exhausted", which callers retry in a loop);
        ``rng`` jitters lifetimes and backoff."""
        self.name = name
        self._keep_idle = keep_idle
        self._refusal = refusal
        #: Makes a waiter's wake-up primitive (``Waiter.handle``); the shell
        #: that drives this core sets it: a held Lock, a Future...
        self.new_handle: Callable[[], Any] = lambda: None
        #: Whether waiters that join behind a head past its window are left
        #: untimed (see the module notes); the blocking shell sets it (an
        #: event loop's timers cost next to nothing, its waiters stay timed).
        self.lazy_claims = False
        self._inline = inline
        self._lifo = lifo
        # A null pool keeps no idle connection a waiter could be passed by.
        self._barge = self.barge_window = options.barge_window if keep_idle else 0.0
        self._pace = self._barge * max_size * _PACE
        self._random = rng
        self.timeout = options.timeout
        self._max_waiting = options.max_waiting
        self._max_lifetime = options.max_lifetime
        self._max_idle = options.max_idle
        # What every hand-out needs at least: the probe, and check() if given.
        self._vet = PROBE if options.check is None else CHECK
        ping_after = options.check_idle_after
        self._ping_after = math.inf if ping_after is None else ping_after
        self._fail_fast = options.fail_fast
        self._reconnect_timeout = options.reconnect_timeout
        self._leak_threshold = options.leak_threshold
        self._keepalive = options.check_idle_interval
        self._num_workers = options.num_workers
        periods = [options.max_idle, options.max_lifetime]
        periods += [p for p in (options.leak_threshold, options.check_idle_interval) if p]
        #: How often the shell should call housekeep(), in seconds. It also
        #: bounds how long an idle connection killed server-side stays
        #: counted before the background probe finds it.
        self.interval = min(0.5, max(0.05, min(periods) / 2.0))

        # --- State. Guarded by the shell's lock (threads) or owned by the
        # event loop (asyncio); changed only by the methods below.
        # _idle      free connections. LIFO: most recently returned last, the
        #            oldest at the front (retired first). Round-robin: the
        #            front is the next one handed out.
        # _in_use    key -> entry for connections a caller holds
        # _reserved  entries the pool itself holds (being cleaned or checked)
        # _opening   tickets: connects (and configure) in flight, background
        #            or inline; _bg_opening counts the background ones
        # _to_open   opens requested and not yet claimed by a worker
        # _waiters   callers in line, oldest first
        # Invariants (check_invariants() asserts them):
        #   _size == len(_idle) + len(_in_use) + len(_reserved) + len(_opening) + _to_open
        #   _size <= _max_size, except after resize() shrank the pool
        #   _waiters non-empty => _idle empty, unless within the barging window
        #   (with barge_window 0, every return goes to the line's head) and
        #   the line's head is timed (woken at its window's end to claim)
        # The containers are never replaced, only changed in place: the
        # shells bind their methods once.
        self._idle: List[Entry] = []
        self.in_use: Dict[int, Entry] = {}
        self._reserved: Set[Entry] = set()
        self._opening: Set[Entry] = set()
        self._bg_opening = 0
        self._to_open = 0
        self._waiters: Deque[Waiter] = deque()
        self._size = 0
        self.min_size = min_size
        self.max_size = max_size
        #: Whether close() was called; only close() sets it.
        self.closed = False
        self._started = False  # start() was called: background opens may be requested
        # A forked child's pool: no opens (min_size refill included) until its
        # first checkout, so that workers that never use it open nothing.
        self._dormant = False
        # Connections handed out and then closed by the pool (close() gave up
        # waiting, or a fork disowned them): a late putconn() is accepted.
        self._forced: Dict[int, Entry] = {}
        # Keys of handed-out connections that were garbage-collected. Filled
        # by weakref callbacks, which may run at any time (even in the middle
        # of a core call, when a collection triggers): list.append is atomic
        # and needs no lock; housekeep() drains it.
        self._collected: List[Any] = []  # their KeyedRefs (or keys: note_collected)
        # Connecting: failure run, backoff, fail-fast probe.
        self._last_error: Optional[BaseException] = None
        self._last_detail = ""  # its text, as the shell described it (secrets masked)
        self._failing = False
        self._failing_since = 0.0
        self._attempts = 0  # consecutive failed connects
        self._next_attempt_at = -math.inf
        self._gave_up = False  # reconnect_failed already due for this run
        self._probe_wanted = False  # a fail-fast refusal wants a connect attempt
        # Idle connections returned before this time get a round trip before
        # hand-out: set when a connection turns out dead, because its
        # siblings probably died with it (server restart, network reset).
        self._suspect_before = -math.inf
        # Log lines of discards, decided on whichever path (a caller's return
        # or checkout too), carried out by the next housekeeping (the pool's
        # own thread or task) so that no caller's thread logs; at most
        # _LATER_MAX, then only counted.
        self._later: List[Tuple[str, str]] = []
        self._later_dropped = 0
        # Counters since the pool opened.
        self._requests = 0
        self._requests_waited = 0
        self._requests_waited_full = 0  # of those, callers that found max_size open
        self._timeouts = 0
        # Refusals decided by refuse_unlocked(), without the lock: requests
        # and timeouts both (see there for why a lost increment is tolerated).
        self._refused_unlocked = 0
        self._rejected = 0
        self._opened = 0
        self._closed_count = 0
        self._connect_errors = 0
        self._lost = 0
        self._returns_broken = 0  # returned broken or in an unknown state
        self._returns_closed = 0  # returned closed by their holder
        self._stale_roles = 0  # discarded for a server in the wrong role
        self._cancelled = 0  # waiters that left the line interrupted or cancelled
        self._connect_seconds = 0.0  # spent in connects that succeeded
        self._leaked = 0
        self._waits = WaitHistogram()
        # Durations for the metrics (see stats.Figures) and stats(): waits in
        # line (callers served at once are only counted, in _at_once, as
        # zero waits), time held between hand-out and return (recorded at
        # every check-in, which reads the clock anyway), connect times.
        self._at_once = 0
        self._wait_time = DurationHistogram()
        self._use_time = DurationHistogram()
        self._create_time = DurationHistogram()

    # ------------------------------------------------------------------
    # Checkout
    # ------------------------------------------------------------------

    def checkout(
        self, now: float, timeout: Optional[float] = None, *, retry: bool = False
    ) -> Union[Entry, Plan, Tuple[int, ...]]:
        """A caller wants a connection (``timeout``: None for the pool's, 0: do not wait).

        Returns the entry handed to the caller (the fast path: nothing else
        to do); or, for a plain refusal of a caller that does not wait, the
        gauges (a tuple: raise ``refused(gauges)``, made outside the lock);
        or a Plan whose ``entry``, ``waiter``, ``ticket`` or ``error`` says
        what the caller gets. ``retry``: the caller's last connection turned
        out dead; it goes back to the head of the line.
        """
        idle = self._idle
        # Waiters and idle connections coexist only within the barging window:
        # while the line's head has waited less than it, a caller takes an
        # idle connection ahead of the line.
        if idle and (not self._waiters or now - self._waiters[0].since < self._barge):
            entry = idle.pop() if self._lifo else idle.pop(0)
            if entry.expires > now:
                if not retry:
                    self._requests += 1
                self._at_once += 1
                # _give(), inlined: this is every checkout's path.
                entry.state = _IN_USE
                entry.taken_at = now
                last_used = entry.last_used
                if last_used < self._suspect_before or now - last_used >= self._ping_after:
                    entry.vet = PING
                else:
                    entry.vet = self._vet
                self.in_use[entry.key] = entry
                return entry
            # Expired: put it back where it was; the slow path retires it.
            if self._lifo:
                idle.append(entry)
            else:
                idle.insert(0, entry)
        elif (
            (timeout == 0.0 or (timeout is None and self.timeout == 0.0))
            and not retry
            and not idle
            and not self._failing
            and not self.closed
            and self._started
            and (
                self._waiters
                or not self._inline
                or (self._size >= self.max_size and not self._to_open)
            )
        ):
            # A refusal (psycopg2.pool's "exhausted", retried in a loop by its
            # users): counted here, its error built by refused() outside the
            # shell's lock, so that a refusing thread preempted while holding
            # the lock does not stall the threads returning connections.
            self._requests += 1
            self._timeouts += 1
            return self._gauges()
        return self._checkout_slow(now, timeout, retry)

    def refuse_unlocked(self) -> Optional[Tuple[int, ...]]:
        """Lock-free: the gauges of a plain refusal of a caller that does not
        wait, as checkout() would refuse it, or None (take the lock and call
        checkout()). The only core method that may be called without the lock.

        For the drop-in's "exhausted" under its users' retry loops: refusing
        threads that queue on the lock slow the threads returning connections
        down. Each read here is one atomic load, so the answer holds for the
        moment it was read: a connection checked in an instant ago may be
        refused once (the retry takes it), never one that has sat idle for
        longer. The counter's increment is unlocked: under the GIL it does not
        lose counts in practice, and a lost one would only make stats() low.
        """
        if self._idle or self._failing or self.closed or not self._started:
            return None
        if not (
            self._waiters
            or not self._inline
            or (self._size >= self.max_size and not self._to_open)
        ):
            return None
        self._refused_unlocked += 1
        return self._gauges()

    def refused(self, gauges: Tuple[int, ...]) -> PoolError:
        """The PoolTimeout of a checkout that checkout() refused with ``gauges``
        (call it without the lock: it reads nothing that changes)."""
        refusal = self._refusal
        if refusal is not None:  # the drop-in's "exhausted", retried in loops: direct
            args = (self.name, 0.0, gauges, "", refusal[1])
            return PoolTimeout._deferred(refusal[0], self.name, gauges, _timeout_notes, args)
        return self._timeout_from(0.0, gauges, None, "")

    def _give(self, entry: Entry, now: float) -> None:
        """Hand ``entry`` to a caller: IN_USE, with the checks it needs first."""
        entry.state = _IN_USE
        entry.taken_at = now
        # Idle long, or its siblings died: a round trip too. (A connection
        # just opened has last_used == created: it is not pinged.)
        last_used = entry.last_used
        if last_used < self._suspect_before or now - last_used >= self._ping_after:
            entry.vet = PING
        else:
            entry.vet = self._vet
        self.in_use[entry.key] = entry

    def _checkout_slow(self, now: float, timeout: Optional[float], retry: bool) -> Plan:
        plan = Plan()
        if not retry:
            self._requests += 1
        if self._dormant:
            # A forked child's first checkout: serve from now on, min_size too.
            self._dormant = False
            self._started = True
            self._maybe_open(now, plan)
        if self._waiters and self._idle:
            self._serve_overdue(now, plan)
        entry = self._pop_idle(now, plan)
        if entry is not None:
            self._at_once += 1
            self._give(entry, now)
            plan.entry = entry
            self._maybe_open(now, plan)
            return plan
        if self.closed:
            plan.error = self._error(PoolClosed, "connection pool is closed")
            return plan
        if timeout is None:
            timeout = self.timeout
        # psycopg2.pool semantics: a caller that does not wait (timeout 0) and
        # finds room connects in its own thread, and gets the connect error.
        # A caller with a deadline waits for a background connect instead: a
        # connect in its thread could not be bounded by that deadline.
        if self._inline and timeout <= 0 and not self._waiters:
            if self._size < self.max_size:
                self._size += 1
                plan.ticket = self._new_ticket(now, inline=True, for_caller=True)
                return plan
            if self._to_open:
                # The free slot is held only by a background open nobody has
                # started: open it in this thread instead, as psycopg2.pool
                # would, rather than time out a caller of an unused pool.
                self._to_open -= 1
                plan.ticket = self._new_ticket(now, inline=True, for_caller=True)
                return plan
        if timeout <= 0 or (self._fail_fast and self._failing):
            if self._failing:
                # Keep trying to connect while refusing callers, or fail-fast
                # would refuse forever once nobody waits.
                self._probe_wanted = True
                self._maybe_open(now, plan)
            self._timeouts += 1
            plan.error = self._timeout_error(0.0)
            return plan
        if self._max_waiting and len(self._waiters) >= self._max_waiting:
            self._rejected += 1
            plan.error = self._error(
                TooManyRequests,
                f"{len(self._waiters)} callers already waiting (max_waiting="
                f"{self._max_waiting}); retry later or raise max_waiting",
            )
            return plan
        waiters = self._waiters
        # A retry goes to the head of the line, dated as the head it passes:
        # the barging window runs from the oldest wait in line, so those
        # behind it are not passed for longer than their own window.
        since = min(now, waiters[0].since) if retry and waiters else now
        # Timed unless it joins behind a head that has waited out its window
        # (see lazy_claims); a retry goes to the head, timed if its window runs.
        timed = (
            not self.lazy_claims
            or not waiters
            or now - (since if retry else waiters[0].since) < self._barge
        )
        waiter = Waiter(since, timed)
        waiter.handle = self.new_handle()
        if retry:
            waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
            self._requests_waited += 1
            if self._size >= self.max_size:  # no room to open one for it
                self._requests_waited_full += 1
        plan.waiter = waiter
        self._maybe_open(now, plan)
        return plan

    def give_up(self, waiter: Waiter, now: float, *, interrupted: bool = False) -> Plan:
        """A waiter stopped waiting without being woken: its time ran out
        (``interrupted=False``) or an exception or cancellation stopped it.

        Served meanwhile: a waiter whose time ran out keeps the connection
        (``plan.entry``); an interrupted one gives it back, to the next in
        line or to idle. Failed meanwhile: ``plan.error``. Otherwise it leaves
        the line (a PoolTimeout in ``plan.error`` unless interrupted).
        """
        entry = waiter.entry
        if entry is not None:
            if interrupted:
                waiter.entry = None
                return self.put_back(entry, now)
            plan = Plan()
            plan.entry = entry
            return plan
        plan = Plan()
        if waiter.error is not None:
            if not interrupted:
                plan.error = waiter.error
            return plan
        # (Out of line already if an exception cut short the call serving it:
        # see _recover. It times out all the same.)
        in_line = waiter in self._waiters
        if not interrupted and self._idle and in_line:
            # Passed within the barging window until its time ran out: it is
            # served (after anyone older) rather than timed out.
            self._serve_idle(waiter, now, plan)
            if waiter.entry is not None:
                plan.entry = waiter.entry
                return plan
        if in_line:
            self._waiters.remove(waiter)
            if self._idle:
                self._cover(now, plan)
        waited = now - waiter.since
        self._waits.record(waited)
        self._wait_time.record(waited)
        if interrupted:
            self._cancelled += 1
        else:
            self._timeouts += 1
            plan.error = self._timeout_error(waited)
        return plan

    def claim(self, waiter: Waiter, now: float) -> Plan:
        """``waiter``'s barging window ran out: connections left idle by callers
        that passed it go to the line, oldest first, until it is served. The
        shell then reads ``waiter.entry`` (served; it is not woken) or
        ``waiter.error``, or waits on; ``plan`` wakes the older ones served."""
        plan = Plan()
        if waiter.entry is None and waiter.error is None and waiter in self._waiters:
            self._serve_idle(waiter, now, plan)
        return plan

    def _serve_idle(self, waiter: Waiter, now: float, plan: Plan) -> None:
        """Hand idle connections to the line's head until ``waiter`` (in line,
        running, so not woken) is served or none is left."""
        while waiter.entry is None:
            entry = self._pop_idle(now, plan)
            if entry is None:
                return
            served = self._hand_off(entry, now)
            if served is not waiter:
                plan.add("wake", served)
        self._cover(now, plan)

    def _serve_overdue(self, now: float, plan: Plan, *, everyone: bool = False) -> None:
        """Idle connections go to the waiters at the line's head whose barging
        window has run out (they would be woken for them anyway); to any
        waiter, in order, if ``everyone``."""
        waiters, barge = self._waiters, self._barge
        while waiters and (everyone or not barge or now - waiters[0].since >= barge):
            entry = self._pop_idle(now, plan)
            if entry is None:
                return
            plan.add("wake", self._hand_off(entry, now))
        self._cover(now, plan)

    def _cover(self, now: float, plan: Plan) -> None:
        """Idle connections go to the line while its head is untimed: nobody
        would wake to claim them at the end of its window (see lazy_claims)."""
        waiters = self._waiters
        while waiters and not waiters[0].timed:
            entry = self._pop_idle(now, plan)
            if entry is None:
                return
            plan.add("wake", self._hand_off(entry, now))

    def _pop_idle(self, now: float, plan: Plan) -> Optional[Entry]:
        """The next idle connection to hand out (retiring expired ones on the
        way), or None if none is left."""
        idle = self._idle
        while idle:
            entry = idle.pop() if self._lifo else idle.pop(0)
            if entry.expires > now:
                return entry
            self._discard(entry, CloseReason.EXPIRED, now, plan)
        return None

    def put_back(self, entry: Entry, now: float) -> Plan:
        """A caller hands back, unused, a connection it was just given (it was
        interrupted before it could check or use it): to the next in line or idle."""
        plan = Plan()
        if entry.state is _CLOSED:  # closed by close() meanwhile: the caller closes it
            self._forced.pop(entry.key, None)
            plan.add("close", entry)
        else:
            del self.in_use[entry.key]
            self._return(entry, now, plan, entry.last_used)
        return plan

    def decline(self, entry: Entry, now: float, since: float) -> Plan:
        """The caller has no time left for the round trip ``entry`` needs: it goes
        back unchanged (the next taker checks it) and the caller times out.

        ``since``: when the caller's checkout began (its timeout runs from
        there), so the PoolTimeout says how long it really waited, not how
        long it held ``entry`` (a moment, when it was served at its deadline).
        """
        plan = self.put_back(entry, now)
        self._timeouts += 1
        plan.error = self._timeout_error(max(0.0, now - since))
        return plan

    def mark_suspect(self, now: float) -> None:
        """A caller saw a disconnect error: idle connections get a round trip before use."""
        self._suspect_before = now

    def lose(self, entry: Entry, now: float, reason: CloseReason = CloseReason.DEAD) -> Plan:
        """The caller that was handed ``entry`` found it dead (or was interrupted
        while checking it): free its slot; the caller may retry."""
        plan = Plan()
        if entry.state is _CLOSED:  # closed by close() meanwhile: the caller closes it
            self._forced.pop(entry.key, None)
            plan.add("close", entry)
        else:
            del self.in_use[entry.key]
            self._discard(entry, reason, now, plan)
        return plan

    # ------------------------------------------------------------------
    # Check-in
    # ------------------------------------------------------------------

    def checkin(
        self, entry: Optional[Entry], conn: Any, verdict: int, now: float
    ) -> Union[Waiter, Plan, None]:
        """A caller gives back ``conn`` with the driver's verdict.

        ``entry`` is what the shell found in ``in_use`` for ``conn`` (a
        pre-check without the lock; None if nothing): popping it here decides
        ownership. Returns None (it went idle), the waiter it was handed to
        (wake it), or a Plan: a connection to clean (``plan.clean``), or to
        close, or an error for a connection this pool does not have out.
        """
        if entry is None or self.in_use.pop(entry.key, None) is not entry:
            return self._bad_return(conn)
        entry.conn = conn
        # self._use_time.record(), inlined: this is every check-in's path.
        held = now - entry.taken_at
        uses = self._use_time
        index = _bisect(_BUCKETS, held)
        uses.counts[index] += 1
        uses.sums[index] += held
        if held > uses.max_seconds:  # noqa: PLR1730 (a compare is cheaper than max())
            uses.max_seconds = held
        if (
            verdict == CLEAN
            and entry.expires > now
            and not self.closed
            and self._size <= self.max_size
        ):
            entry.last_used = now
            waiters = self._waiters
            # To the line if its head has waited out the barging window, or
            # if this connection has been kept from the line for its share of
            # the window or its spell of checkouts (see _PACE); otherwise
            # idle, for whoever asks first: usually this thread, back for its
            # next checkout without blocking.
            if waiters and (
                not self._barge
                or now - waiters[0].since >= self._barge
                or (now - entry.leased) * len(waiters) >= self._pace
                or entry.spell >= _SPELL
                or not waiters[0].timed  # nobody would claim it: see _cover
            ):
                served = self._hand_off(entry, now)
                if not self._idle:
                    return served
                # The new head may be untimed: hand it any connection left idle.
                plan = Plan()
                plan.add("wake", served)
                self._cover(now, plan)
                return plan
            if waiters:
                entry.spell += 1  # one more checkout kept from the line
            if self._keep_idle:
                entry.state = _IDLE
                self._idle.append(entry)
                return None
        return self._checkin_slow(entry, verdict, now)

    def _bad_return(self, conn: Any) -> Plan:
        plan = Plan()
        forced = self._forced.pop(id(conn), None)
        if forced is not None:
            # Closed by close() after its timeout (or disowned after a fork):
            # nothing left to do but close our side.
            forced.conn = conn
            plan.add("close", forced)
            return plan
        plan.error = self._error(
            PoolError,
            "trying to put unkeyed connection: this connection was not handed out "
            "by this pool, or it was already returned",
        )
        return plan

    def _checkin_slow(self, entry: Entry, verdict: int, now: float) -> Plan:
        plan = Plan()
        if self.closed:
            self._discard(entry, CloseReason.POOL_CLOSED, now, plan)
        elif verdict == BROKEN:
            self._returns_broken += 1
            self._discard(entry, CloseReason.BROKEN, now, plan)
        elif verdict == HOLDER_CLOSED:
            self._returns_closed += 1
            self._discard(entry, CloseReason.HOLDER_CLOSED, now, plan)
        elif verdict == STALE_ROLE:
            self._discard(entry, CloseReason.STALE_ROLE, now, plan)
        elif verdict == CLOSE:
            self._discard(entry, CloseReason.CALLER, now, plan)
        elif entry.expires <= now:
            self._discard(entry, CloseReason.EXPIRED, now, plan)
        elif self._size > self.max_size:
            self._discard(entry, CloseReason.RESIZED, now, plan)
        elif verdict == CLEAN:  # a null pool and nobody waits
            self._discard(entry, CloseReason.NOT_KEPT, now, plan)
        else:  # DIRTY: the caller cleans it, bounded, then calls cleaned()
            entry.state = _RESERVED
            self._reserved.add(entry)
            plan.clean = entry
        return plan

    def cleaned(self, entry: Entry, now: float, failure: Optional[str] = None) -> Plan:
        """The clean-up of a returned connection finished (``failure``: why it failed)."""
        plan = Plan()
        if entry.state is _CLOSED:  # closed by close() meanwhile: the cleaner closes it
            plan.add("close", entry)
            return plan
        self._reserved.discard(entry)
        if failure is not None:
            self._log_later("reset_failed", failure)
            self._discard(entry, CloseReason.RESET_FAILED, now, plan)
        else:
            self._return(entry, now, plan, now)
        return plan

    def _return(self, entry: Entry, now: float, plan: Plan, last_used: float) -> None:
        """A usable connection the pool holds goes to a waiter or to idle, unless retired."""
        if self.closed:
            self._discard(entry, CloseReason.POOL_CLOSED, now, plan)
        elif entry.expires <= now:
            self._discard(entry, CloseReason.EXPIRED, now, plan)
        elif self._size > self.max_size:
            self._discard(entry, CloseReason.RESIZED, now, plan)
        else:
            entry.last_used = last_used
            self._place(entry, now, plan)

    def _place(self, entry: Entry, now: float, plan: Plan) -> None:
        if self._waiters:
            plan.add("wake", self._hand_off(entry, now))
            if self._idle:
                self._cover(now, plan)
        elif self._keep_idle:
            entry.state = _IDLE
            self._idle.append(entry)
        else:
            self._discard(entry, CloseReason.NOT_KEPT, now, plan)

    def _hand_off(self, entry: Entry, now: float) -> Waiter:
        """Give ``entry`` to the oldest waiter; the shell must wake it."""
        waiter = self._waiters.popleft()
        self._give(entry, now)
        entry.leased = now
        entry.spell = 0
        waited = now - waiter.since
        self._waits.record(waited)
        self._wait_time.record(waited)
        waiter.entry = entry
        return waiter

    def _discard(self, entry: Entry, reason: CloseReason, now: float, plan: Plan) -> None:
        """Free the slot of ``entry`` (already out of every container); the shell closes it."""
        entry.state = _CLOSED
        entry.ref = None  # closed by us: not to be reported as garbage-collected
        self._size -= 1
        self._closed_count += 1
        plan.add("close", entry)
        if reason is CloseReason.DEAD or reason is CloseReason.BROKEN:
            self._lost += 1
            self._suspect_before = now
        elif reason is CloseReason.STALE_ROLE:
            self._stale_roles += 1
            self._suspect_before = now
        if reason not in _QUIET:
            self._log_later("closed", reason.value)
        self._maybe_open(now, plan)

    def _log_later(self, kind: str, detail: str) -> None:
        """An event for the next housekeeping to log (see ``_later``)."""
        if len(self._later) < _LATER_MAX:
            self._later.append((kind, detail))
        else:
            self._later_dropped += 1

    def _flush_later(self, plan: Plan) -> None:
        """Move the events kept for later into ``plan``."""
        if self._later:
            for event in self._later:
                plan.add("events", event)
            self._later.clear()
        if self._later_dropped:
            plan.add("events", ("closed", f"{self._later_dropped} more connections"))
            self._later_dropped = 0

    # ------------------------------------------------------------------
    # Opening connections
    # ------------------------------------------------------------------

    def _new_ticket(self, now: float, *, inline: bool, for_caller: bool = False) -> Entry:
        ticket = Entry(now, inline=inline, for_caller=for_caller)
        self._opening.add(ticket)
        return ticket

    def _maybe_open(self, now: float, plan: Plan) -> None:
        """Request the opens still needed: refill to min_size, one per waiter not
        covered by an open under way, a probe while fail-fast refuses callers."""
        if self.closed or not self._started:
            return
        underway = self._to_open + self._bg_opening
        need = max(
            self.min_size - self._size,
            len(self._waiters) - underway - len(self._idle),
            1 if self._probe_wanted and underway == 0 else 0,
        )
        need = min(need, self.max_size - self._size)
        if need > 0:
            self._size += need
            self._to_open += need
            plan.open += need

    def claim_open(self, now: float) -> Union[Entry, float, None]:
        """A background worker asks for work: a ticket to open, or how many
        seconds until the backoff allows the next attempt, or None."""
        if self.closed or not self._to_open:
            return None
        if self._bg_opening >= (1 if self._failing else self._num_workers):
            return None
        if now < self._next_attempt_at:
            return self._next_attempt_at - now
        self._to_open -= 1
        self._bg_opening += 1
        return self._new_ticket(now, inline=False)

    def connected(self, ticket: Entry, conn: Any, now: float) -> Plan:
        """The connect of ``ticket`` returned ``conn``; configure may follow.

        ``plan.close`` holds the ticket if the pool no longer wants it (closed
        meanwhile): close it and do nothing more for this pool.
        """
        plan = Plan()
        ticket.conn = conn
        ticket.key = id(conn)
        if ticket.state is _CLOSED:
            plan.add("close", ticket)
            if ticket.for_caller:
                plan.error = self._error(PoolClosed, "connection pool is closed")
        return plan

    def opened(self, ticket: Entry, baseline: Any, probe: Any, now: float) -> Plan:
        """``ticket``'s connection is connected, configured and checked.

        Background: it goes to the oldest waiter or to idle. Inline: it is
        the caller's (``plan.entry``).
        """
        plan = Plan()
        if ticket.state is _CLOSED:  # abandoned by close() while configuring
            plan.add("close", ticket)
            return plan
        self._end_open(ticket)
        took = max(0.0, now - ticket.created)
        self._connect_seconds += took
        self._create_time.record(took)
        if self._collected:
            # A connection handed out and then garbage-collected may have left
            # its entry under the id this new connection now has: free that
            # slot before the new entry can take the key.
            self._reap_collected(now, plan)
        self._opened += 1
        if self._failing:
            plan.add(
                "events", ("reconnected", f"after {now - self._failing_since:.1f} s of failures")
            )
        self._failing = False
        self._attempts = 0
        self._next_attempt_at = -math.inf
        self._gave_up = False
        self._probe_wanted = False
        ticket.baseline = baseline
        ticket.probe = probe
        lifetime = self._max_lifetime * (1.0 - LIFETIME_JITTER * self._random())
        ticket.expires = now + lifetime
        ticket.last_used = ticket.checked_at = ticket.created = now
        # The callback is a C method, so no signal handler can run (and raise)
        # inside it: the note that frees the slot cannot be lost.
        ticket.ref = weakref.KeyedRef(ticket.conn, self._collected.append, ticket.key)
        if self.closed:
            self._discard(ticket, CloseReason.POOL_CLOSED, now, plan)
            if ticket.for_caller:
                plan.error = self._error(PoolClosed, "connection pool is closed")
        elif ticket.for_caller:
            # The caller opened it in its own thread: that was its wait.
            self._wait_time.record(took)
            self._give(ticket, now)
            ticket.vet = self._vet
            plan.entry = ticket
        else:
            self._place(ticket, now, plan)
        self._maybe_open(now, plan)
        return plan

    def open_failed(
        self, ticket: Entry, error: BaseException, now: float, detail: Optional[str] = None
    ) -> Plan:
        """The connect (or configure, or the first check) of ``ticket`` failed.

        ``detail`` is the error as text for logs and messages (the shell masks
        secrets in it); by default ``TypeName: message``.
        """
        plan = Plan()
        if ticket.conn is not None:
            plan.add("close", ticket)
        if ticket.state is _CLOSED:  # abandoned meanwhile: its slot is free already
            return plan
        self._end_open(ticket)
        ticket.state = _CLOSED
        self._size -= 1
        self._connect_errors += 1
        if detail is None:
            detail = f"{type(error).__name__}: {' '.join(str(error).split()) or '(no message)'}"
        self._last_error = error
        self._last_detail = detail
        self._attempts += 1
        if not self._failing:
            self._failing = True
            self._failing_since = now
        delay = min(BACKOFF_MAX, BACKOFF_INITIAL * 2.0 ** (self._attempts - 1))
        self._next_attempt_at = now + delay * (0.8 + 0.4 * self._random())
        if not ticket.inline:
            plan.add("events", ("connect_error", detail))
        if self._fail_fast:
            # Everybody waiting gets the error now, but for those a connection
            # left idle within the barging window serves; keep one attempt going.
            self._serve_overdue(now, plan, everyone=True)
            while self._waiters:
                waiter = self._waiters.popleft()
                self._timeouts += 1
                waiter.error = self._timeout_error(now - waiter.since)
                plan.add("wake", waiter)
            self._probe_wanted = True
        self._maybe_open(now, plan)
        return plan

    def _end_open(self, ticket: Entry) -> None:
        self._opening.discard(ticket)
        if not ticket.inline:
            self._bg_opening -= 1

    # ------------------------------------------------------------------
    # Background work
    # ------------------------------------------------------------------

    def housekeep(self, now: float) -> Plan:
        """Periodic work (every ``interval`` s): reap abandoned slots, report
        leaks, retire idle connections, keepalive pings, the idle-socket
        probe, refill, and the reconnect_failed deadline; log what was decided
        since the last time (discards)."""
        plan = Plan()
        if self.closed:
            self._flush_later(plan)
            return plan
        self._recover(now, plan)
        if self._collected:
            self._reap_collected(now, plan)
        if self._leak_threshold is not None:
            self._report_leaks(now, plan)
        self._retire_idle(now, plan)
        if self._keepalive is not None:
            due = [e for e in self._idle if now - max(e.last_used, e.checked_at) >= self._keepalive]
            for entry in due:
                self._idle.remove(entry)
                self._reserve(entry)
                plan.add("check", entry)
        plan.poll = [(entry, entry.taken_at) for entry in self._idle]
        failing_for = now - self._failing_since
        if self._failing and not self._gave_up and failing_for >= self._reconnect_timeout:
            self._gave_up = True
            plan.reconnect_failed = True
            plan.add(
                "events",
                (
                    "reconnect_failed",
                    f"no connection for {self._reconnect_timeout:.0f} s; still retrying",
                ),
            )
        self._maybe_open(now, plan)
        # Last, so that what this pass discarded is logged by it too.
        self._flush_later(plan)
        return plan

    def _reserve(self, entry: Entry) -> None:
        entry.state = _RESERVED
        self._reserved.add(entry)

    def check_all(self, now: float) -> Plan:
        """Reserve every idle connection for a round-trip check now (``plan.check``;
        report each with checked()). Connections in use are not touched."""
        plan = Plan()
        if self.closed:
            return plan
        idle = self._idle[:]
        self._idle.clear()
        for entry in idle:
            self._reserve(entry)
        plan.check = idle
        return plan

    def drain(self, now: float) -> Plan:
        """Replace every connection: idle ones now, those in use when they come back."""
        plan = Plan()
        if self.closed:
            return plan
        for entry in self.in_use.values():
            entry.expires = min(entry.expires, now)
        idle = self._idle[:]
        self._idle.clear()
        for entry in idle:
            self._discard(entry, CloseReason.DRAINED, now, plan)
        self._maybe_open(now, plan)
        return plan

    def suspect(self, found: Sequence[Tuple[Entry, float]], now: float) -> Plan:
        """The background probe saw data on these idle sockets: reserve the ones
        still idle and not handed out since (same ``taken_at``), for a full
        check (``plan.check``)."""
        plan = Plan()
        for entry, taken_at in found:
            if entry.state is _IDLE and entry.taken_at == taken_at and not self.closed:
                self._idle.remove(entry)
                self._reserve(entry)
                plan.add("check", entry)
        return plan

    def checked(self, entry: Entry, alive: bool, now: float, *, stale: bool = False) -> Plan:
        """A background check of ``entry`` (from ``plan.check``) finished (``stale``:
        it works, but its server left the role the pool wants)."""
        plan = Plan()
        if entry.state is _CLOSED:  # closed by close() meanwhile: the checker closes it
            plan.add("close", entry)
            return plan
        self._reserved.discard(entry)
        if not alive or stale:
            self._discard(entry, CloseReason.STALE_ROLE if stale else CloseReason.DEAD, now, plan)
            return plan
        entry.checked_at = now
        if self._waiters or self.closed or entry.expires <= now or self._size > self.max_size:
            self._return(entry, now, plan, entry.last_used)
        else:
            # Back at the cold end, keeping the order of the others.
            entry.state = _IDLE
            if self._lifo:
                self._idle.insert(0, entry)
            else:
                self._idle.append(entry)
        return plan

    def _retire_idle(self, now: float, plan: Plan) -> None:
        """Retire expired idle connections and idle surplus above ``min_size``."""
        if not self._idle:
            return
        surplus = self._size - self.min_size
        keep: List[Entry] = []
        doomed: List[Tuple[Entry, CloseReason]] = []
        # Oldest first: for LIFO the front, for round-robin any order will do.
        for entry in self._idle:
            if entry.expires <= now:
                doomed.append((entry, CloseReason.EXPIRED))
                surplus -= 1
            elif surplus > 0 and now - entry.last_used >= self._max_idle:
                doomed.append((entry, CloseReason.IDLE_SURPLUS))
                surplus -= 1
            else:
                keep.append(entry)
        if doomed:
            self._idle[:] = keep
            for entry, reason in doomed:
                self._discard(entry, reason, now, plan)

    def _reap_collected(self, now: float, plan: Plan) -> None:
        """Free the slots of connections garbage-collected while handed out."""
        notes, self._collected[:] = self._collected[:], []
        for note in notes:
            key = note if type(note) is int else note.key
            entry = self.in_use.get(key)
            # The id may already belong to a new connection: check the ref.
            if entry is not None and entry.ref is not None and entry.ref() is None:
                del self.in_use[key]
                self._leaked += 1
                where = f"; it was taken at:\n{format_stack(entry.trace)}" if entry.trace else ""
                plan.add(
                    "events",
                    (
                        "leak",
                        "a connection was garbage-collected without being returned; "
                        f"its slot is free again{where}",
                    ),
                )
                # Nothing to close: the connection object is gone.
                entry.state = _CLOSED
                entry.ref = None
                self._size -= 1
                self._closed_count += 1
        self._maybe_open(now, plan)

    def _recover(self, now: float, plan: Plan) -> None:
        """Free what an exception raised asynchronously (a signal handler's) stranded.

        Such an exception can cut short a shell's step, or a core call itself,
        at almost any point; whatever that step held is then referenced by
        nothing but the core (once the exception and its traceback are gone).
        Housekeeping runs between core calls, when every invariant must hold:
        so a connection handed out and collected without its note, an entry or
        ticket nobody holds, a waiter whose thread left, and a count that no
        container backs are each a stranded slot, freed here.
        """
        # (A comprehension: a loop variable of this frame still bound during a
        # scan below would count as a holder of its entry. Those of the loops
        # below hold only entries already freed.)
        self._collected.extend(  # _reap_collected frees them
            [e.key for e in self.in_use.values() if e.conn is None and e.ref and e.ref() is None]
        )
        if _unheld is not None:
            for entry in _unheld([e for e in self.in_use.values() if e.conn is not None], 1):
                del self.in_use[entry.key]
                self._discard(entry, CloseReason.INTERRUPTED, now, plan)
            for entry in _unheld(list(self._reserved), 1):
                self._reserved.discard(entry)
                self._discard(entry, CloseReason.INTERRUPTED, now, plan)
            for ticket in _unheld(list(self._opening), 1):
                self._end_open(ticket)
                if ticket.conn is not None:
                    plan.add("close", ticket)
                ticket.state = _CLOSED
                self._size -= 1
            for waiter in _unheld(list(self._waiters), 1):
                self._waiters.remove(waiter)
                self._cancelled += 1
        held = (
            len(self._idle)
            + len(self.in_use)
            + len(self._reserved)
            + len(self._opening)
            + self._to_open
        )
        self._size = min(self._size, held)  # lower if lost from every container mid-call
        self._bg_opening = sum(1 for t in self._opening if not t.inline)
        self._maybe_open(now, plan)

    def _report_leaks(self, now: float, plan: Plan) -> None:
        """Report (once per checkout) connections held longer than leak_threshold."""
        assert self._leak_threshold is not None
        for entry in self.in_use.values():
            held = now - entry.taken_at
            if not entry.leak_reported and held >= self._leak_threshold:
                entry.leak_reported = True
                self._leaked += 1
                plan.add(
                    "events",
                    (
                        "leak",
                        f"a connection has been held for {held:.1f} s (leak_threshold="
                        f"{self._leak_threshold:g}); it was taken at:\n"
                        f"{format_stack(entry.trace)}",
                    ),
                )

    # ------------------------------------------------------------------
    # Whole-pool operations
    # ------------------------------------------------------------------

    def resize(self, min_size: int, max_size: int, now: float) -> Plan:
        """New sizes (validated by the caller); surplus idle connections close now,
        busy ones when they come back."""
        plan = Plan()
        if self.closed:
            plan.error = self._error(PoolClosed, "connection pool is closed")
            return plan
        self.min_size = min_size
        self.max_size = max_size
        self._pace = self._barge * max_size * _PACE
        # Requested opens nobody started are the first to go.
        cancel = min(self._to_open, max(0, self._size - max_size))
        self._to_open -= cancel
        self._size -= cancel
        while self._size > max_size and self._idle:
            entry = self._idle.pop(0) if self._lifo else self._idle.pop()
            self._discard(entry, CloseReason.RESIZED, now, plan)
        self._maybe_open(now, plan)
        return plan

    def close(self, now: float) -> Plan:
        """Stop serving: waiters get PoolClosed, idle connections close,
        requested and in-flight connects are abandoned. Connections in use,
        being cleaned or configured close as they come back, or when the
        shell gives up waiting (abandon()). Idempotent."""
        plan = Plan()
        if self.closed:
            return plan
        self.closed = True
        self._flush_later(plan)
        while self._waiters:
            waiter = self._waiters.popleft()
            waiter.error = self._error(PoolClosed, "connection pool is closed")
            plan.add("wake", waiter)
        idle = self._idle[:]
        self._idle.clear()
        for entry in idle:
            self._discard(entry, CloseReason.POOL_CLOSED, now, plan)
        self._size -= self._to_open
        self._to_open = 0
        for ticket in list(self._opening):
            if ticket.conn is None:  # still in connect(): nobody waits for it
                self._end_open(ticket)
                ticket.state = _CLOSED
                self._size -= 1
        return plan

    def settled(self) -> bool:
        """After close(): nothing is in use, being cleaned, checked or configured."""
        return not self.in_use and not self._reserved and not self._opening

    def abandon(self, now: float) -> Plan:
        """close() waited long enough: close by force whatever is still out.

        In use: ``plan.force`` (their holder's next query fails; a late
        putconn() is accepted). Being cleaned, checked or configured by a pool
        thread: ``plan.interrupt``; that thread closes it when its step ends.
        """
        plan = Plan()
        self._flush_later(plan)
        forced = 0
        for key, entry in list(self.in_use.items()):
            del self.in_use[key]
            entry.state = _CLOSED
            self._forced[key] = entry
            conn = entry.ref() if entry.ref is not None else entry.conn
            if conn is not None:
                plan.add("force", conn)
            forced += 1
        for entry in list(self._reserved) + [t for t in self._opening if t.conn is not None]:
            self._reserved.discard(entry)
            if entry in self._opening:
                self._end_open(entry)
            entry.state = _CLOSED
            plan.add("interrupt", entry.conn)
            forced += 1
        self._size -= forced
        self._closed_count += forced
        if forced:
            plan.add("events", ("forced", f"{forced} connections still in use were closed"))
        return plan

    def after_fork(self) -> Tuple[List[Any], List[Entry]]:
        """In a forked child: forget every connection and start afresh, opening
        nothing until the first checkout (then ``min_size`` are requested, in
        the plan of that checkout).

        Returns the connections the parent had (the child must make their
        sockets unreachable, not close them) and the tickets whose connect was
        in flight (their socket may exist in the child with no owner).
        """
        conns: List[Any] = []
        for entry in [*self._idle, *self._reserved, *self.in_use.values(), *self._opening]:
            conn = entry.conn if entry.conn is not None else (entry.ref() if entry.ref else None)
            if conn is not None:
                conns.append(conn)
        tickets = [t for t in self._opening if t.conn is None]
        # A late putconn() of a connection taken before the fork is accepted.
        self._forced = dict(self.in_use)
        for entry in self._forced.values():
            entry.state = _CLOSED
            entry.ref = None
        # Emptied in place: a shell may hold bound methods of these.
        self._idle.clear()
        self.in_use.clear()
        self._reserved = set()
        self._opening = set()
        self._waiters = deque()
        self._collected[:] = []
        self._bg_opening = self._to_open = self._size = 0
        if self._started and not self.closed:
            self._started = False
            self._dormant = True
        return conns, tickets

    def filled(self) -> bool:
        """Whether ``min_size`` connections are open (for wait()); a forked child's
        pool before its first checkout opens nothing, so has nothing to wait for."""
        return self._dormant or self._size - len(self._opening) - self._to_open >= self.min_size

    def fill_error(self, waited: float) -> PoolError:
        """The PoolTimeout of a wait() that ran out."""
        open_now = self._size - len(self._opening) - self._to_open
        return self._error(
            PoolTimeout,
            f"{open_now} of min_size={self.min_size} connections open after {waited:.2f} s",
            cause=self._last_error if self._failing else None,
        )

    def reserve(self, now: float) -> Entry:
        """A ticket to open a connection for the pool in the calling thread, before
        start() (psycopg2.pool opens ``minconn`` in its constructor); once open
        it goes to idle. The caller must have checked there is room."""
        self._size += 1
        return self._new_ticket(now, inline=True)

    def start(self, now: float) -> Plan:
        """The pool starts serving in the background: request ``min_size`` connections.
        Until then nothing is requested (a facade may fill the pool itself first)."""
        plan = Plan()
        self._started = True
        self._dormant = False
        self._maybe_open(now, plan)
        return plan

    # ------------------------------------------------------------------
    # Observability
    # ------------------------------------------------------------------

    def gauges(self) -> Dict[str, int]:
        """The pool's state now: sizes, idle, in use, waiting, opening."""
        return {
            "min_size": self.min_size,
            "max_size": self.max_size,
            "size": self._size,
            "idle": len(self._idle),
            "in_use": len(self.in_use),
            "waiting": len(self._waiters),
            "opening": len(self._opening) + self._to_open,
        }

    def stats(self) -> Dict[str, Any]:
        """Gauges and counters (see :mod:`pgreservoir.stats`)."""
        result: Dict[str, Any] = self.gauges()
        requests = self._requests + self._refused_unlocked
        unwaited = requests - self._waits.recorded
        result.update(
            requests=requests,
            requests_waited=self._requests_waited,
            requests_waited_full=self._requests_waited_full,
            timeouts=self._timeouts + self._refused_unlocked,
            rejected=self._rejected,
            connections_opened=self._opened,
            connections_closed=self._closed_count,
            connect_errors=self._connect_errors,
            connections_lost=self._lost,
            connections_leaked=self._leaked,
            requests_cancelled=self._cancelled,
            wait_ms_total=round(self._waits.total_seconds * 1000.0, 3),
            connect_ms_total=round(self._connect_seconds * 1000.0, 3),
            returns_broken=self._returns_broken,
            returns_closed=self._returns_closed,
            connections_stale_role=self._stale_roles,
            wait_ms_p50=self._waits.percentile_ms(0.50, unwaited),
            wait_ms_p99=self._waits.percentile_ms(0.99, unwaited),
            wait_ms_max=round(self._waits.max_seconds * 1000.0, 3),
            use_ms_total=round(self._use_time.total_seconds * 1000.0, 3),
            use_ms_p50=self._use_time.quantile_ms(0.50),
            use_ms_p99=self._use_time.quantile_ms(0.99),
            use_ms_max=round(self._use_time.max_seconds * 1000.0, 3),
            connect_ms_p50=self._create_time.quantile_ms(0.50),
            connect_ms_p99=self._create_time.quantile_ms(0.99),
            connect_ms_max=round(self._create_time.max_seconds * 1000.0, 3),
        )
        return result

    def figures(self) -> Figures:
        """What the metrics exporters read (see :class:`~pgreservoir.stats.Figures`).

        Reads only counters, lengths and list copies, each atomic under the
        GIL: the asyncio shell's core may be read from another thread (an
        exporter's) without stopping its event loop, at worst a few
        operations out of step between fields.
        """
        waits = self._wait_time.counts[:]
        waits[0] += self._at_once  # served at once: zero waits
        return Figures(
            self.name,
            len(self._idle),
            len(self.in_use) + len(self._reserved),
            len(self._waiters),
            self.min_size,
            self.max_size if self._keep_idle else 0,
            self.max_size,
            self._timeouts + self._refused_unlocked,
            tuple(waits),
            tuple(self._wait_time.sums),
            tuple(self._use_time.counts),
            tuple(self._use_time.sums),
            tuple(self._create_time.counts),
            tuple(self._create_time.sums),
        )

    def describe(self) -> str:
        """Short state for repr(): ``open size=3/10 idle=1 in_use=2 waiting=0``."""
        g = self.gauges()
        return (
            f"{'closed' if self.closed else 'open'} size={g['size']}/{g['max_size']} "
            f"idle={g['idle']} in_use={g['in_use']} waiting={g['waiting']}"
        )

    def check_invariants(self) -> None:
        """Assert the invariants written above the state (for tests)."""
        total = (
            len(self._idle)
            + len(self.in_use)
            + len(self._reserved)
            + len(self._opening)
            + self._to_open
        )
        assert self._size == total, f"size {self._size} != {total} ({self.gauges()})"
        assert self._size >= 0
        assert self._barge or not (self._waiters and self._idle), (
            "waiters and idle connections coexist without a barging window"
        )
        assert not (self._waiters and self._idle) or self._waiters[0].timed, (
            "connections idle while the line's head is not woken to claim them"
        )
        assert all(e.state is _IDLE for e in self._idle)
        assert all(e.state is _IN_USE for e in self.in_use.values())
        assert all(e.state is _RESERVED for e in self._reserved)
        assert all(e.state is _OPENING for e in self._opening)
        bg = sum(1 for t in self._opening if not t.inline)
        assert bg == self._bg_opening, f"background opens {bg} != {self._bg_opening}"

    # ------------------------------------------------------------------
    # Errors
    # ------------------------------------------------------------------

    def _error(
        self, cls: Type[PoolError], what: str, *, cause: Optional[BaseException] = None
    ) -> PoolError:
        err = cls(f"pool {self.name!r}: {what}", pool_name=self.name, snapshot=self.gauges())
        if cause is not None:
            err.__cause__ = cause
        return err

    def _gauges(self) -> Tuple[int, ...]:
        """gauges() as a tuple in GAUGE_KEYS order (cheap: no dict)."""
        return (
            self.min_size,
            self.max_size,
            self._size,
            len(self._idle),
            len(self.in_use),
            len(self._waiters),
            len(self._opening) + self._to_open,
        )

    def _timeout_error(self, waited: float) -> PoolError:
        cause = self._last_error if self._failing else None
        detail = self._last_detail if cause is not None else ""
        return self._timeout_from(waited, self._gauges(), cause, detail)

    def _timeout_from(
        self,
        waited: float,
        gauges: Tuple[int, ...],
        cause: Optional[BaseException],
        detail: str,
    ) -> PoolError:
        if self._refusal is None:
            err = PoolTimeout(
                _timeout_text(self.name, waited, gauges, detail),
                pool_name=self.name,
                snapshot=dict(zip(GAUGE_KEYS, gauges)),
            )
        else:
            message, hint = self._refusal
            notes_args = (self.name, waited, gauges, detail, hint)
            err = PoolTimeout._deferred(message, self.name, gauges, _timeout_notes, notes_args)
        if cause is not None:
            err.__cause__ = cause
        return err

    def __repr__(self) -> str:
        return f"<Core {self.name!r} {self.describe()}>"


def _timeout_text(name: str, waited: float, gauges: Tuple[int, ...], detail: str) -> str:
    """The account of a PoolTimeout (``gauges`` in GAUGE_KEYS order)."""
    _, max_size, size, idle, in_use, waiting, _ = gauges
    text = (
        f"pool {name!r}: no connection available after {waited:.2f} s "
        f"(size {size}/{max_size}, idle {idle}, in use {in_use}, {waiting} waiting)"
    )
    if detail:
        text += f"; connecting is failing: {detail}"
    return text


def _timeout_notes(
    name: str, waited: float, gauges: Tuple[int, ...], detail: str, hint: str
) -> List[str]:
    """The notes of a PoolTimeout with a ``refusal`` message."""
    notes = [f"pgreservoir: {_timeout_text(name, waited, gauges, detail)}"]
    if hint:
        notes.append(hint)
    return notes


def format_stack(stack: Any) -> str:
    """A captured stack (file, line, function tuples, innermost first) as text."""
    if not stack:
        return "  (not recorded)"
    return "".join(f'  File "{f}", line {n}, in {name}\n' for f, n, name in reversed(stack))


def _refcounts(items: List[Any]) -> List[int]:
    return [sys.getrefcount(item) for item in items]


def _find_unheld(items: List[Any], holders: int) -> List[Any]:
    """The items of ``items`` that nothing references but ``holders`` containers
    (the list passed in aside)."""
    limit = _BASE + holders
    return [item for item in items if sys.getrefcount(item) <= limit]


# What sys.getrefcount reports, in _find_unheld, for an item that only the list
# passed in references (measured: it varies between CPython versions).
_BASE = max(_refcounts([object()]))
#: None where reference counts are not available (not CPython).
_unheld: Optional[Callable[[List[Any], int], List[Any]]] = (
    _find_unheld if hasattr(sys, "getrefcount") else None
)
