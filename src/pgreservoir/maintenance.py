"""Background work of a pool: opening connections, refilling, retiring.

One daemon thread per pool does it all, one step at a time, so a struggling
server never sees more than one connection attempt from a pool at once, and
the pool lock is never held while connecting. When connecting fails the thread
backs off exponentially (with jitter) before the next attempt, and it recovers
by itself as soon as an attempt succeeds.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Callable, Optional

__all__ = ["BACKOFF_INITIAL", "BACKOFF_MAX", "Maintainer"]

#: First delay (seconds) before retrying after a failed connection attempt.
BACKOFF_INITIAL = 0.05
#: Longest delay between attempts while the server is unreachable; short
#: enough that callers get connections within ~2 s of the server coming back.
BACKOFF_MAX = 1.0


class Maintainer:
    """The background thread of one pool.

    ``open_one()`` opens one requested connection: it returns None when none is
    requested, True on success, False on failure. ``housekeep()`` retires
    expired and surplus idle connections and returns nothing. ``interval`` is
    how often housekeeping runs.
    """

    def __init__(
        self,
        name: str,
        open_one: Callable[[], Optional[bool]],
        housekeep: Callable[[], None],
        interval: float,
    ) -> None:
        self._open_one = open_one
        self._housekeep = housekeep
        self._interval = interval
        self._wake = threading.Event()
        self._stopping = False
        self._backoff = 0.0
        self._thread = threading.Thread(
            target=self._run, name=f"pgreservoir-{name}", daemon=True
        )

    def start(self) -> None:
        """Start the thread (once)."""
        self._thread.start()

    def wake(self) -> None:
        """Tell the thread there is work (a connection to open)."""
        self._wake.set()

    def stop(self, timeout: float) -> bool:
        """Stop the thread; wait up to ``timeout`` for it; return whether it ended."""
        self._stopping = True
        self._wake.set()
        if self._thread.ident is None or self._thread is threading.current_thread():
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        """Whether the thread is running."""
        return self._thread.is_alive()

    def _run(self) -> None:
        next_housekeeping = time.monotonic() + self._interval
        while not self._stopping:
            now = time.monotonic()
            if now >= next_housekeeping:
                self._housekeep()
                next_housekeeping = now + self._interval
            # Clear before looking for work: a wake() from now on makes the
            # wait below return at once, so no request is ever missed.
            self._wake.clear()
            result = self._open_one()
            if self._stopping:
                break
            if result is False:
                # Failed: wait out the backoff (a wake() does not cut it short,
                # so a burst of callers cannot turn into a connect storm).
                self._backoff = min(BACKOFF_MAX, max(BACKOFF_INITIAL, self._backoff * 2))
                delay = self._backoff * random.uniform(0.8, 1.2)
                self._sleep(delay)
                continue
            if result is True:
                self._backoff = 0.0
                continue  # maybe more to open
            # Nothing to open: sleep until woken or until housekeeping is due.
            self._wake.wait(max(0.0, next_housekeeping - time.monotonic()))

    def _sleep(self, delay: float) -> None:
        deadline = time.monotonic() + delay
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.wait(left)
            self._wake.clear()
