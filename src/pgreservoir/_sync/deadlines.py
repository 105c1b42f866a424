"""Deadlines for blocking round trips: one process-wide watchdog thread.

A thread blocked in libpq (a rollback, a ping, a ``reset()`` query on a
black-holed network or behind a paused PgBouncer) cannot be woken by anything
in Python. What can wake it is its socket: shut down from another thread, the
blocked call fails at once. So before a bounded step the shell arms a
deadline with the way to interrupt it, and disarms it after; if the deadline
passes first, the watchdog interrupts the step and the shell, seeing the
deadline fired, discards the connection.

One daemon thread serves every pool of the process. It sleeps until the
earliest armed deadline, so arming a deadline later than that one costs a
heap push and no wake-up.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import threading
import time
from typing import Callable, List, Optional, Tuple

__all__ = ["Deadline", "watchdog"]


class Deadline:
    """One armed deadline (see :meth:`Watchdog.arm`)."""

    __slots__ = ("at", "fired", "interrupt", "live")

    def __init__(self, at: float, interrupt: Callable[[], None]) -> None:
        self.at = at
        self.interrupt = interrupt
        self.live = True  # armed and not yet fired nor disarmed
        self.fired = False


class Watchdog:
    """Interrupts steps whose deadline passed (see the module notes)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # Guarded by _lock: a heap of (at, seq, deadline); disarmed entries
        # stay until they surface (lazy deletion), _live counts the others.
        self._heap: List[Tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._live = 0
        self._thread: Optional[threading.Thread] = None
        self._sleeping_until = float("inf")

    def arm(self, at: float, interrupt: Callable[[], None]) -> Deadline:
        """Call ``interrupt()`` at monotonic time ``at`` unless disarmed before."""
        deadline = Deadline(at, interrupt)
        with self._lock:
            heapq.heappush(self._heap, (at, next(self._seq), deadline))
            self._live += 1
            if len(self._heap) > 64 and len(self._heap) > 4 * self._live:
                self._compact()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="pgreservoir-deadlines", daemon=True
                )
                self._thread.start()
            elif at < self._sleeping_until:
                self._wake.notify()
        return deadline

    def disarm(self, deadline: Deadline) -> bool:
        """Cancel ``deadline``; return whether it fired (the step was interrupted)."""
        with self._lock:
            if deadline.live:
                deadline.live = False
                self._live -= 1
            return deadline.fired

    def _compact(self) -> None:
        self._heap = [item for item in self._heap if item[2].live]
        heapq.heapify(self._heap)

    def _run(self) -> None:
        with self._lock:
            while True:
                now = self._clock()
                while self._heap and (not self._heap[0][2].live or self._heap[0][0] <= now):
                    _, _, deadline = heapq.heappop(self._heap)
                    if deadline.live:
                        # Interrupt under the lock: a disarm() racing with us
                        # then sees fired=True and discards the connection.
                        deadline.live = False
                        deadline.fired = True
                        self._live -= 1
                        with contextlib.suppress(BaseException):
                            deadline.interrupt()
                self._sleeping_until = self._heap[0][0] if self._heap else float("inf")
                timeout = None if not self._heap else max(0.0, self._sleeping_until - now)
                self._wake.wait(None if timeout is None else min(timeout, threading.TIMEOUT_MAX))

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap = []
        self._live = 0
        self._thread = None
        self._sleeping_until = float("inf")


#: The process-wide watchdog.
watchdog = Watchdog()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=watchdog._after_fork_in_child)
