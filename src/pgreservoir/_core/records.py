"""What the core keeps about each connection and each caller in line."""

from __future__ import annotations

import enum
from typing import Any, Callable, List, Optional


class State(enum.Enum):
    """Where a connection slot is in its life; changed only by the core."""

    OPENING = "opening"  # a connect (and configure) in flight for this slot
    IDLE = "idle"  # in the idle list, free for the next caller
    IN_USE = "in_use"  # handed to a caller (who checks it before use)
    RESERVED = "reserved"  # held by the pool itself: being cleaned or checked
    CLOSED = "closed"  # discarded; its slot is free


class CloseReason(enum.Enum):
    """Why the pool closed a connection (in logs and stats)."""

    EXPIRED = "max_lifetime reached"
    IDLE_SURPLUS = "idle longer than max_idle above min_size"
    BROKEN = "returned broken or in an unknown state"
    HOLDER_CLOSED = "closed by its holder"
    DEAD = "found dead before hand-out"
    RESET_FAILED = "rollback, reset or settings restore failed"
    CALLER = "returned with close=True"
    POOL_CLOSED = "pool closed"
    RESIZED = "pool shrunk by resize()"
    INTERRUPTED = "a check or clean-up of it was interrupted"
    ABANDONED = "connect finished after the pool no longer needed it"
    DRAINED = "the pool was drained"
    NOT_KEPT = "returned to a pool that keeps no idle connections, and nobody waited"
    STALE_ROLE = "its server is no longer in the role the pool wants (standby or read-only)"


# How much checking a connection needs in the receiving thread before use.
PROBE = 0  # the zero-round-trip socket probe
CHECK = 1  # the probe, then the user's check() callback
PING = 2  # the probe, a round trip (idle long, or its siblings died), then check() if any


class Entry:
    """One connection slot: the connection and the core's bookkeeping for it.

    An entry is created when the core hands out an open (state OPENING, no
    connection yet) and lives until the slot is freed (CLOSED). psycopg2
    connections have no instance ``__dict__``, so everything the pool knows
    about a connection lives here, found by ``id(conn)``.
    """

    __slots__ = (
        "baseline",
        "checked_at",
        "conn",
        "created",
        "expires",
        "fds_before",
        "for_caller",
        "inline",
        "key",
        "last_used",
        "leak_reported",
        "leased",
        "probe",
        "ref",
        "spell",
        "state",
        "taken_at",
        "trace",
        "vet",
    )

    def __init__(self, now: float, *, inline: bool = False, for_caller: bool = False) -> None:
        # The pool holds the connection strongly while it has it (idle or
        # reserved); while a caller has it only through ``ref`` (a weakref),
        # so an abandoned connection can be garbage-collected and its slot freed.
        self.conn: Any = None
        self.ref: Any = None
        self.key = 0  # id(conn), once connected
        # Zero-round-trip liveness probe (set by the shell: returns a non-empty
        # list when the socket is readable, i.e. the server sent something).
        self.probe: Optional[Callable[[int], List[Any]]] = None
        self.state = State.OPENING
        self.inline = inline  # opened by the caller's own thread (psycopg2 semantics)
        self.for_caller = for_caller  # once open, it is that caller's (else placed)
        self.created = now
        self.expires = now  # retirement deadline (jittered), set once connected
        self.last_used = now  # when it last came back to the pool (or was opened)
        self.taken_at = now  # when it was last handed out
        self.leased = now  # when it was last handed to a caller in line
        self.spell = 0  # checkouts kept from the line since (barging)
        self.checked_at = now  # last background check
        self.vet = PROBE  # what the receiving thread must check before use
        self.baseline: Any = None  # session settings restored at check-in
        self.trace: Any = None  # where it was taken (leak detection)
        self.leak_reported = False
        # File descriptors open before this entry's connect started (fork safety).
        self.fds_before: Any = None

    def __repr__(self) -> str:
        return f"<Entry {self.key:#x} {self.state.value}>"


class Waiter:
    """A caller in line. The core sets ``entry`` or ``error`` and removes it
    from the line in the same step, then tells the shell to wake it.

    Ownership is therefore decided before the waiter runs: a waiter that gives
    up at the same moment learns from the core that it was served after all,
    so nothing is handed out twice and nothing is lost. ``handle`` is the
    shell's wake-up primitive (a held Lock, a Future); the core never touches it.
    """

    __slots__ = ("entry", "error", "handle", "since", "timed")

    def __init__(self, since: float, timed: bool = True) -> None:
        self.since = since
        self.entry: Optional[Entry] = None
        self.error: Optional[BaseException] = None
        self.handle: Any = None
        #: Whether the shell wakes it when its barging window ends, to claim
        #: connections left idle (see ``Core.lazy_claims``). Set once, in line.
        self.timed = timed

    def take_error(self) -> BaseException:
        """The error it was woken with, no longer referenced here (see ``errors.throw``)."""
        error = self.error
        assert error is not None
        self.error = None
        return error
