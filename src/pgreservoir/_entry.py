"""The pool's record of one connection: its state and its timestamps."""

from __future__ import annotations

import enum
from typing import Any, Optional


class State(enum.Enum):
    """Where a connection is in its life; changed only under the pool lock."""

    IDLE = "idle"  # in the idle stack, free for the next caller
    IN_USE = "in_use"  # handed to a caller
    RESERVED = "reserved"  # held by the pool itself: being checked, reset or rolled back
    CLOSED = "closed"  # discarded; its slot is free


class CloseReason(enum.Enum):
    """Why the pool closed a connection (used in stats and logs)."""

    EXPIRED = "max_lifetime reached"
    IDLE_SURPLUS = "idle longer than max_idle above min_size"
    BROKEN = "returned broken, closed or in an unknown state"
    DEAD = "found dead before hand-out"
    RESET_FAILED = "rollback, reset or settings restore failed"
    CALLER = "returned with close=True"
    POOL_CLOSED = "pool closed"
    RESIZED = "pool shrunk by resize()"


class Entry:
    """One pooled connection and the pool's bookkeeping for it.

    psycopg2 connections have no instance ``__dict__``, so everything the pool
    knows about a connection lives here, found by ``id(conn)``.
    """

    __slots__ = (
        "baseline",
        "checked_at",
        "conn",
        "created",
        "expires",
        "key",
        "last_used",
        "leak_reported",
        "ref",
        "state",
        "taken_at",
        "trace",
    )

    def __init__(self, conn: Any, created: float, expires: float, baseline: Any) -> None:
        # The pool holds the connection strongly only while it has it (idle or
        # reserved); while a caller has it, only ``ref`` (a weakref, so an
        # abandoned connection can be garbage-collected and its slot freed).
        self.conn = conn
        self.ref: Any = None
        self.key = id(conn)
        self.state = State.RESERVED
        self.created = created
        # Deadline (monotonic) after which the connection is retired; jittered.
        self.expires = expires
        # When the connection last came back to the pool (or was opened).
        self.last_used = created
        # When it was last handed out (for leak reports and wait accounting).
        self.taken_at = created
        # Session settings to restore at check-in (driver-specific tuple).
        self.baseline = baseline
        # Last background liveness check (maintenance keepalive).
        self.checked_at = created
        # Leak detection: where it was taken (when enabled), and whether the
        # current checkout was already reported as held too long.
        self.trace: Any = None
        self.leak_reported = False

    def __repr__(self) -> str:
        return f"<Entry {self.key:#x} {self.state.value}>"


class Waiter:
    """A caller waiting in line for a connection.

    ``lock`` is created held and used as a binary semaphore: the pool assigns
    ``entry`` (or ``error``) under the pool lock, removes the waiter from the
    line and only then releases ``lock``. Ownership is therefore decided at
    hand-off time, so a waiter that times out can tell under the pool lock
    whether it was served meanwhile: nobody can be handed a connection that
    then gets lost. A plain Lock is cheaper than a Condition (measured).
    """

    __slots__ = ("entry", "error", "lock", "since")

    def __init__(self, lock: Any, since: float) -> None:
        self.lock = lock
        # When the caller joined the line (for the wait-time histogram).
        self.since = since
        self.entry: Optional[Entry] = None
        self.error: Optional[BaseException] = None
