"""The background thread of a blocking pool: housekeeping, and the threads
that open connections.

One maintenance thread per pool runs the core's housekeeping every
``core.interval`` seconds and starts a short-lived thread for each
connection the core wants opened (at most ``num_workers`` at once, one while
connecting fails, with the core's backoff between failures). Connecting in
threads of their own means a connect that hangs (a paused server, a
black-holed network: up to ``connect_timeout``) delays nothing else, and
``close()`` need not wait for it: when it returns, its thread closes what it
got and ends. Keepalive and suspect checks get a short-lived thread each too
(``SyncPool._check_in_threads``): a ping on a dead link waits up to
``check_timeout``, and neither the other checks nor a connect wait for it.

The thread never dies of an exception: every step is guarded, failures are
logged at ERROR and the loop carries on; if it is gone anyway, the next
request for work starts a new one.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Optional

from .._core import Entry

if TYPE_CHECKING:
    from .shell import SyncPool

__all__ = ["Maintainer"]


class Maintainer:
    """The maintenance thread of one pool (see the module notes)."""

    def __init__(self, shell: SyncPool) -> None:
        self._shell = shell
        self._wake = threading.Event()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()

    def start(self) -> None:
        """Start the thread (again, if it is gone)."""
        with self._start_lock:
            if self._stopping or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(
                target=self._run, name=f"pgreservoir-{self._shell.name}", daemon=True
            )
            self._thread.start()

    def wake(self) -> None:
        """There is work (a connection to open): do it now, starting the thread
        if it is gone, or not started yet in a forked child."""
        self._wake.set()
        thread = self._thread
        if (
            (thread is None or not thread.is_alive())
            and not self._stopping
            and self._shell._started
        ):
            self.start()

    def stop(self, wait: float) -> None:
        """Stop the thread; wait up to ``wait`` seconds for it, unless called from it.

        It is between two steps almost always; a step in progress (a
        keepalive ping, a user callback) ends by itself: close() interrupts
        the pool's round trips.
        """
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and wait > 0:
            thread.join(wait)

    @property
    def alive(self) -> bool:
        """Whether the thread is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _run(self) -> None:
        shell = self._shell
        interval = shell.core.interval
        next_housekeeping = time.monotonic() + interval
        while not self._stopping:
            # Clear before looking for work: a wake() from now on makes the
            # wait below return at once, so no request is ever missed.
            self._wake.clear()
            delay: Optional[float] = None
            try:
                now = time.monotonic()
                if now >= next_housekeeping:
                    next_housekeeping = now + interval
                    shell.housekeep()
                delay = self._start_openers()
            except BaseException as exc:  # a bug, or a callback's BaseException
                shell._background_failed("background work", exc)
                delay = interval
            if self._stopping:
                break
            wait = next_housekeeping - time.monotonic()
            if delay is not None:
                wait = min(wait, delay)
            self._wake.wait(max(0.0, wait))

    def _start_openers(self) -> Optional[float]:
        """A thread per connection to open now; seconds until the backoff ends."""
        shell = self._shell
        while not self._stopping:
            got = shell.claim_open()
            if not isinstance(got, Entry):
                return got
            thread = threading.Thread(
                target=shell.open_in_background,
                args=(got,),
                name=f"pgreservoir-{shell.name}-connect",
                daemon=True,
            )
            try:
                thread.start()
            except BaseException as exc:  # e.g. "can't start new thread"
                shell.fail_open(got, exc)
                raise
        return None
