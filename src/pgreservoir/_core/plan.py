"""What a shell must carry out after a core call, outside the lock."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

from .records import Entry, Waiter

_NONE: Tuple[Any, ...] = ()


class Plan:
    """The actions one core call decided, for the shell to carry out.

    The slots of every connection in ``close`` are already free, every waiter
    in ``wake`` already has its outcome: the shell only performs the I/O and
    never decides anything again. The first four fields are for the caller
    that made the call; the rest are side effects any thread may carry out.
    """

    __slots__ = (
        "check",
        "clean",
        "close",
        "entry",
        "error",
        "events",
        "force",
        "interrupt",
        "open",
        "poll",
        "reconnect_failed",
        "ticket",
        "waiter",
        "wake",
    )

    def __init__(self) -> None:
        # A plan is made on every slow path: its lists start as one shared
        # empty tuple and become lists only when something is added.
        # -- for the calling thread
        self.entry: Optional[Entry] = None  # handed to the caller: check it, then use it
        self.waiter: Optional[Waiter] = None  # the caller is in line: wait on it
        self.ticket: Optional[Entry] = None  # a slot for the caller to open itself
        self.clean: Optional[Entry] = None  # reserved for the caller to clean, then cleaned()
        self.error: Optional[BaseException] = None  # raise it (after the side effects)
        # -- side effects
        self.wake: Sequence[Waiter] = _NONE  # outcome set: wake them
        self.close: Sequence[Entry] = _NONE  # CLOSED entries: close their connection
        self.interrupt: Sequence[Any] = _NONE  # a pool thread is using them: shut their socket
        self.force: Sequence[Any] = _NONE  # a caller holds them: close by force
        self.open = 0  # background opens requested
        self.check: Sequence[Entry] = _NONE  # reserved for a background check, then checked()
        self.poll: Sequence[Tuple[Entry, float]] = _NONE  # idle (entry, taken_at) to probe
        self.events: Sequence[Tuple[str, str]] = _NONE  # (kind, detail) to log
        self.reconnect_failed = False  # call the reconnect_failed callback

    def take_error(self) -> BaseException:
        """The error to raise, no longer referenced by the plan (see ``errors.throw``)."""
        error = self.error
        assert error is not None
        self.error = None
        return error

    def add(self, field: str, item: Any) -> None:
        """Append ``item`` to the list ``field`` (made on first use)."""
        items = getattr(self, field)
        if items is _NONE:
            setattr(self, field, [item])
        else:
            items.append(item)

    def __bool__(self) -> bool:
        """Whether there are side effects to carry out."""
        return bool(
            self.wake
            or self.close
            or self.interrupt
            or self.force
            or self.open
            or self.check
            or self.poll
            or self.events
            or self.reconnect_failed
        )

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in self.__slots__
            if getattr(self, name) not in (None, [], 0, False)
        )
        return f"Plan({fields})"
